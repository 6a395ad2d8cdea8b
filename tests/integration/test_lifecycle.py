"""
Start-up, configuration errors, readiness and graceful shutdown of a real meshproxy process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.harness import (
    Backend,
    MeshProxy,
    childEnv,
    connect,
    echoHandler,
    freePort,
    recvAll,
    runTwistd,
    waitFor,
)
from tests.support import configDocument, tcpListener


class StartupTests(SynchronousTestCase):
    """
    What an operator sees when the config or the ports are wrong.
    """

    def writeConfig(self, doc: object) -> str:
        workdir = self.mktemp()
        os.makedirs(workdir)
        path = os.path.abspath(os.path.join(workdir, "meshproxy.json"))
        with open(path, "w") as f:
            json.dump(doc, f)
        return path

    def badDocument(self) -> dict[str, object]:
        doc = configDocument(listeners=[tcpListener(address="127.0.0.1:99999", cluster="nope")])
        doc["cluster_manager"]["clusters"][0]["hosts"][0]["wieght"] = 2  # type: ignore[index]
        return doc

    def test_badConfigExitsNonZeroWithEveryProblem(self) -> None:
        """
        twistd with a bad file exits non-zero and names every problem's JSON path.
        """
        result = runTwistd(self.writeConfig(self.badDocument()))
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        for expected in ("servers[0].listeners[0].address", "'127.0.0.1:99999'",
                         "cluster_manager.clusters[0].hosts[0]", "wieght", "weight",
                         "servers[0].listeners[0].filter_chains[0].filters[0].config.cluster"):
            self.assertIn(expected, output)

    def test_checkConfig(self) -> None:
        """
        C{meshproxy check-config} exits 1 listing the problems, or 0 with a summary.
        """
        bad = subprocess.run(
            [sys.executable, "-m", "meshproxy.cli", "check-config", self.writeConfig(self.badDocument())],
            env=childEnv(), capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(bad.returncode, 1)
        self.assertIn("servers[0].listeners[0].address", bad.stderr)
        good = subprocess.run(
            [sys.executable, "-m", "meshproxy.cli", "check-config", self.writeConfig(configDocument())],
            env=childEnv(), capture_output=True, text=True, timeout=30,
        )
        self.assertEqual(good.returncode, 0, good.stderr)
        self.assertIn("OK (1 listeners, 1 clusters)", good.stdout)

    def test_portInUse(self) -> None:
        """
        A port that cannot be bound fails start-up with the listener's name and endpoint.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            doc = configDocument(listeners=[tcpListener(name="web", address=f"127.0.0.1:{port}")])
            doc["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": freePort()}}}
            result = runTwistd(self.writeConfig(doc))
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertIn("listener 'web' could not listen on", output)
        self.assertIn(f"tcp:{port}:interface=127.0.0.1", output)


class ShutdownTests(SynchronousTestCase):
    """
    SIGTERM: stop accepting, drain, exit 0.
    """

    def start(self, gracefulTimeout: str = "30s") -> tuple[MeshProxy, int, Backend]:
        echo = Backend(echoHandler)
        self.addCleanup(echo.stop)
        workdir = self.mktemp()
        os.makedirs(workdir)
        port = freePort()
        doc = configDocument(
            listeners=[tcpListener(address=f"127.0.0.1:{port}")],
            clusters=[{"name": "backend", "type": "SIMPLE", "hosts": [{"address": echo.address}]}],
        )
        doc["servers"][0]["graceful_timeout"] = gracefulTimeout  # type: ignore[index]
        proxy = MeshProxy(doc, workdir)
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy, port, echo

    def test_drainLetsOpenSessionsFinish(self) -> None:
        """
        After SIGTERM, readiness turns 503 and new connections are refused, but an open session
        keeps working; the process exits 0 once it closes.
        """
        proxy, port, echo = self.start()
        sock = connect(port)
        sock.sendall(b"\x00one")
        self.assertEqual(sock.recv(100), b"\x00one")
        proxy.signal(signal.SIGTERM)
        self.assertTrue(waitFor(lambda: proxy.admin("/ready")[0] == 503, timeout=5))
        self.assertIn(b"draining", proxy.admin("/ready")[1])
        self.assertRaises(OSError, connect, port, 2)
        sock.sendall(b"\x00two")
        self.assertEqual(sock.recv(100), b"\x00two")
        self.assertIsNone(proxy.process.poll())  # type: ignore[union-attr]
        sock.close()
        assert proxy.process is not None
        self.assertEqual(proxy.process.wait(10), 0)

    def test_drainTimeoutClosesStragglers(self) -> None:
        """
        Sessions still open at graceful_timeout are closed and the process exits 0.
        """
        proxy, port, echo = self.start(gracefulTimeout="1s")
        sock = connect(port)
        self.addCleanup(sock.close)
        sock.sendall(b"\x00one")
        self.assertEqual(sock.recv(100), b"\x00one")
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert proxy.process is not None
        self.assertEqual(proxy.process.wait(10), 0)
        self.assertLess(time.monotonic() - started, 8)
        try:
            self.assertEqual(recvAll(sock), b"")
        except ConnectionResetError:
            pass


class SignalTests(SynchronousTestCase):
    """
    SIGHUP reloads the config file; SIGUSR1 reopens log files. Neither stops the process or disturbs
    open sessions.
    """

    start = ShutdownTests.start

    def test_hangupReloads(self) -> None:
        """
        A broken file is refused (logged, counted, the old config kept); SIGUSR1 reopens logs; the
        proxy keeps relaying an open session throughout.
        """
        proxy, port, echo = self.start()
        sock = connect(port)
        with open(proxy.configPath, "w") as f:
            f.write('{"servers": []}')
        proxy.signal(signal.SIGHUP)
        self.assertTrue(waitFor(lambda: "refused; the running configuration is unchanged" in proxy.log(), timeout=5))
        self.assertIn("servers: [] is empty", proxy.log())
        self.assertEqual(proxy.stats().get("meshproxy_config_reload_failure_total{}"), 1)
        code, body = proxy.admin("/api/v1/config_dump")
        self.assertEqual(json.loads(body)["last_reload"]["status"], "failed")
        proxy.signal(signal.SIGUSR1)
        self.assertTrue(waitFor(lambda: "reopened access log files" in proxy.log(), timeout=5))
        sock.sendall(b"\x00still")
        self.assertEqual(sock.recv(100), b"\x00still")
        self.assertIsNone(proxy.process.poll())  # type: ignore[union-attr]
        self.assertEqual(proxy.admin("/ready")[0], 200)
