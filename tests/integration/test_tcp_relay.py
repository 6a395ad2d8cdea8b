"""
The L4 relay end to end: a real meshproxy process, real sockets, real backends on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.harness import (
    Backend,
    MeshProxy,
    connect,
    echoHandler,
    firehoseHandler,
    freePort,
    recvAll,
    sinkThenReportHandler,
    sourceHandler,
    waitFor,
)
from tests.support import configDocument, tcpListener


class RelayTestCase(SynchronousTestCase):
    """
    Starts backends and a meshproxy relaying one listener to them.
    """

    def backend(self, handler: Any) -> Backend:
        backend = Backend(handler)
        self.addCleanup(backend.stop)
        return backend

    def proxy(self, hosts: list[str], lbType: str = "LB_ROUNDROBIN", **listener: Any) -> tuple[MeshProxy, int]:
        workdir = self.mktemp()
        os.makedirs(workdir)
        port = freePort()
        doc = configDocument(
            listeners=[tcpListener(address=f"127.0.0.1:{port}", **listener)],
            clusters=[{
                "name": "backend", "type": "SIMPLE", "lb_type": lbType, "connect_timeout": "2s",
                "hosts": [{"address": h} for h in hosts],
            }],
        )
        proxy = MeshProxy(doc, workdir)
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy, port


class RelayTests(RelayTestCase):
    """
    Bytes, half-close, failures and timeouts through the relay.
    """

    def test_echoRoundTrips(self) -> None:
        """
        Several messages on one connection come back intact, and the session is counted.
        """
        echo = self.backend(echoHandler)
        proxy, port = self.proxy([echo.address])
        with connect(port) as sock:
            for i in range(5):
                message = b"\x00message %d\n" % i
                sock.sendall(message)
                received = b""
                while len(received) < len(message):
                    received += sock.recv(100)
                self.assertEqual(received, message)
        self.assertTrue(waitFor(lambda: proxy.stats().get("meshproxy_downstream_cx_active{listener=l1}") == 0))
        stats = proxy.stats()
        self.assertEqual(stats["meshproxy_downstream_cx_total{listener=l1}"], 1)
        self.assertEqual(stats["meshproxy_sniff_verdict_total{listener=l1,protocol=raw}"], 1)
        self.assertEqual(stats["meshproxy_upstream_cx_total{cluster=backend}"], 1)

    def test_halfCloseBothWays(self) -> None:
        """
        The client's FIN reaches the backend, whose answer after it still reaches the client,
        followed by the backend's FIN.
        """
        sink = self.backend(sinkThenReportHandler)
        proxy, port = self.proxy([sink.address])
        with connect(port) as sock:
            payload = b"\x01" + b"z" * (1 << 20)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(sock), b"received %d\n" % len(payload))

    def test_largeTransferBoundedMemory(self) -> None:
        """
        64 MiB stream through the relay intact while the proxy's peak RSS grows by far less than
        the transfer.
        """
        size = 64 << 20
        source = self.backend(sourceHandler(size))
        proxy, port = self.proxy([source.address])
        before = proxy.memory()
        started = time.monotonic()
        with connect(port, timeout=60) as sock:
            sock.sendall(b"\x00")
            total = 0
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                total += len(data)
        elapsed = time.monotonic() - started
        after = proxy.memory()
        log.msg(f"64 MiB relay: {size / elapsed / (1 << 20):.0f} MiB/s, RSS {before} -> {after} KiB")
        self.assertEqual(total, size)
        self.assertLess(after["VmHWM"] - before["VmHWM"], 16 << 10)

    def test_stoppedReaderPausesUpstream(self) -> None:
        """
        A client that stops reading stops the backend's writes (after kernel buffers fill), the
        proxy's memory stays bounded, and reading again resumes the flow.
        """
        hose = self.backend(firehoseHandler)
        proxy, port = self.proxy([hose.address])
        baseline = proxy.memory()["VmRSS"]
        sock = connect(port)
        self.addCleanup(sock.close)
        sock.sendall(b"\x00start")

        def stalled() -> bool:
            first = hose.sent
            time.sleep(0.5)
            return first > 0 and hose.sent == first

        self.assertTrue(waitFor(stalled, timeout=20, interval=0))
        stalledAt = hose.sent
        # Only kernel socket buffers and the proxy's two watermarks hold the difference.
        self.assertLess(stalledAt, 48 << 20)
        self.assertLess(proxy.memory()["VmRSS"] - baseline, 16 << 10)
        received = 0
        while received < stalledAt + (8 << 20):
            received += len(sock.recv(1 << 20))
        self.assertGreater(hose.sent, stalledAt)

    def test_deadHostSkipped(self) -> None:
        """
        A host that refuses connections is skipped: every session reaches the live host, and the
        dead one's failures are counted.
        """
        dead = f"127.0.0.1:{freePort()}"
        echo = self.backend(echoHandler)
        proxy, port = self.proxy([dead, echo.address])
        for i in range(4):
            with connect(port) as sock:
                sock.sendall(b"\x00hello")
                self.assertEqual(sock.recv(100), b"\x00hello")
        self.assertEqual(echo.connections, 4)
        stats = proxy.stats()
        self.assertGreaterEqual(stats[f"meshproxy_upstream_host_cx_connect_fail_total{{cluster=backend,host={dead}}}"], 2)

    def test_allHostsDeadClosesClient(self) -> None:
        """
        When no host can be reached the client's connection is closed, not left hanging.
        """
        proxy, port = self.proxy([f"127.0.0.1:{freePort()}", f"127.0.0.1:{freePort()}"])
        with connect(port, timeout=10) as sock:
            sock.sendall(b"\x00hello")
            self.assertEqual(recvAll(sock), b"")
        self.assertTrue(waitFor(lambda: proxy.stats().get("meshproxy_upstream_cx_connect_fail_total{cluster=backend}") == 2))

    def test_idleTimeout(self) -> None:
        """
        A session with no traffic for idle_timeout is closed by the proxy.
        """
        echo = self.backend(echoHandler)
        proxy, port = self.proxy([echo.address], tcp_proxy={"idle_timeout": 500_000_000})
        with connect(port, timeout=10) as sock:
            sock.sendall(b"\x00ping")
            self.assertEqual(sock.recv(100), b"\x00ping")
            started = time.monotonic()
            self.assertEqual(recvAll(sock), b"")
            self.assertLess(time.monotonic() - started, 5)

    def test_serverFirstProtocol(self) -> None:
        """
        A client that waits for the server to speak first (SMTP-style) is relayed once the sniff
        deadline passes, and gets the banner.
        """

        def banner(sock: socket.socket, backend: Backend) -> None:
            sock.sendall(b"220 smtp.example ESMTP\r\n")
            sock.recv(100)

        smtp = self.backend(banner)
        proxy, port = self.proxy([smtp.address], sniff_timeout="300ms")
        with connect(port, timeout=10) as sock:
            self.assertEqual(sock.recv(100), b"220 smtp.example ESMTP\r\n")

    def test_proxyProtocolClientAddress(self) -> None:
        """
        Behind a PROXY-protocol-speaking balancer the header is stripped before the backend sees
        the bytes.
        """
        echo = self.backend(echoHandler)
        proxy, port = self.proxy([echo.address], listener_filters=[{"type": "proxy_protocol"}])
        with connect(port) as sock:
            sock.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 80\r\n\x00payload")
            self.assertEqual(sock.recv(100), b"\x00payload")
