"""
Bodies through the HTTP proxy end to end: large downloads and uploads stream with bounded proxy
memory, a client that stops reading pauses the upstream (and an upstream that stops reading
pauses the client), and neither direction waits for a whole body before forwarding.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from typing import Callable

from twisted.python import log

from tests.integration.harness import waitFor
from tests.integration.httpbackends import PATTERN_BLOCK, HTTPProxyTestCase, chunked, echo, gatedBodyReader, huge
from tests.integration.httpwire import parseResponseHead, readResponse

MiB = 1 << 20
GiB = 1 << 30


def patternDigest(size: int) -> str:
    """
    The SHA-256 of C{size} bytes of the backends' repeating pattern.
    """
    digest = hashlib.sha256()
    full, rest = divmod(size, len(PATTERN_BLOCK))
    for _ in range(full):
        digest.update(PATTERN_BLOCK)
    digest.update(PATTERN_BLOCK[:rest])
    return digest.hexdigest()


def stalled(counter: Callable[[], int], quiet: float = 0.5) -> Callable[[], bool]:
    """
    A predicate: C{counter()} did not move for C{quiet} seconds (and is not zero).
    """

    def check() -> bool:
        first = counter()
        time.sleep(quiet)
        return first > 0 and counter() == first

    return check


class DownloadTests(HTTPProxyTestCase):
    """
    Responses larger than any buffer.
    """

    def test_oneGiBDownloadBoundedMemory(self) -> None:
        """
        1 GiB streams through the proxy intact (the pattern checked at every read) while the
        proxy's peak RSS grows by far less than the transfer.
        """
        backend = self.backend(huge(GiB))
        proxy = self.proxy({"backend": [backend.address]})
        before = proxy.memory()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        self.addCleanup(conn.close)
        started = time.monotonic()
        conn.request("GET", "/big")
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        self.assertEqual(response.getheader("Content-Length"), str(GiB))
        buffer = bytearray(MiB)
        view = memoryview(buffer)
        total = 0
        deadline = started + 60
        while time.monotonic() < deadline:
            n = response.readinto(view)
            if not n:
                break
            if buffer[0] != total % 256 or buffer[n - 1] != (total + n - 1) % 256:
                self.fail(f"corrupt body near offset {total}")
            total += n
        elapsed = time.monotonic() - started
        after = proxy.memory()
        growth = after["VmHWM"] - before["VmHWM"]
        message = (f"1 GiB download: {total / elapsed / MiB:.0f} MiB/s in {elapsed:.1f} s, proxy RSS KiB "
                   f"{before} -> {after} (peak growth {growth / 1024:.1f} MiB)")
        log.msg(message)
        self.assertEqual(total, GiB)
        [request] = backend.requests
        self.assertEqual((request.target, request.headerValues("Via")), ("/big", ["1.1 meshproxy"]))
        self.assertLess(growth, 32 << 10, message)

    def test_chunkedDownload(self) -> None:
        """
        A 64 MiB chunked response is relayed chunked and whole.
        """
        size = 64 * MiB
        backend = self.backend(huge(size, chunkedFraming=True))
        proxy = self.proxy({"backend": [backend.address]})
        before = proxy.memory()
        sock, wire = self.rawConnection(timeout=30)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        response = readResponse(wire)
        self.assertEqual(response.tokens("Transfer-Encoding"), ["chunked"])
        self.assertEqual(response.bodyLength, size)
        self.assertEqual(response.bodySha256, patternDigest(size))
        self.assertLess(proxy.memory()["VmHWM"] - before["VmHWM"], 32 << 10)

    def test_slowReaderPausesUpstream(self) -> None:
        """
        A client that stops reading stops the backend's writes once buffers fill (a few MiB,
        not the body), the proxy's memory stays bounded, and reading again resumes the flow.
        """
        backend = self.backend(huge(GiB))
        proxy = self.proxy({"backend": [backend.address]})
        baseline = proxy.memory()["VmRSS"]
        sock, wire = self.rawConnection(timeout=20)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
        head = wire.readHead()
        assert head is not None
        self.assertEqual(parseResponseHead(head).status, 200)
        received = len(wire.buf)
        self.assertTrue(waitFor(stalled(lambda: backend.sent), timeout=20, interval=0))
        stalledAt = backend.sent
        self.assertLess(stalledAt, 48 * MiB)
        self.assertLess(proxy.memory()["VmRSS"] - baseline, 16 << 10)
        for _ in range(10_000):
            if received >= stalledAt + 32 * MiB:
                break
            data = sock.recv(MiB)
            self.assertTrue(data)
            received += len(data)
        self.assertGreater(backend.sent, stalledAt + 16 * MiB)
        log.msg(f"slow reader: upstream stalled after {stalledAt / MiB:.1f} MiB")

    def test_responseStreamsBeforeItEnds(self) -> None:
        """
        The first chunk of a response reaches the client while the backend still holds the rest.
        """
        gate = threading.Event()
        self.addCleanup(gate.set)
        backend = self.backend(chunked([b"first part", b"second part"], gate=gate))
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection(timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        head = wire.readHead()
        assert head is not None
        self.assertEqual(parseResponseHead(head).tokens("Transfer-Encoding"), ["chunked"])
        self.assertEqual(wire.readLine(), b"a")
        first = bytearray()
        wire.readExactly(10, first.extend)
        self.assertEqual(bytes(first), b"first part")
        self.assertFalse(gate.is_set())
        gate.set()
        self.assertEqual(wire.readLine(), b"")
        self.assertEqual(wire.readLine(), b"b")


class UploadTests(HTTPProxyTestCase):
    """
    Request bodies: streamed, paused by a slow upstream, and uploaded by curl.
    """

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        if shutil.which("curl") is None:
            self.fail("curl is not installed (make test installs it)")
        return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "30", *args],
                              capture_output=True, text=True, timeout=40)

    def payloadFile(self, size: int) -> tuple[str, str]:
        path = self.mktemp()
        data = os.urandom(size)
        with open(path, "wb") as f:
            f.write(data)
        return path, hashlib.sha256(data).hexdigest()

    def test_requestStreamsBeforeItEnds(self) -> None:
        """
        The first half of a Content-Length body reaches the backend before the client sends the
        second half.
        """
        backend = self.backend(echo)
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n" + b"a" * 1000)
        self.assertTrue(waitFor(lambda: backend.rawBytes().endswith(b"a" * 1000), timeout=5))
        sock.sendall(b"b" * 1000)
        response = readResponse(wire)
        self.assertEqual(response.json()["bodyLength"], 2000)
        self.assertEqual(response.json()["bodySha256"], hashlib.sha256(b"a" * 1000 + b"b" * 1000).hexdigest())

    def test_slowUpstreamPausesClient(self) -> None:
        """
        While the backend does not read a 128 MiB upload, the client's sends stall after a bounded
        amount and the proxy's memory stays bounded; once it reads, the whole body arrives
        intact.
        """
        size = 128 * MiB
        gate = threading.Event()
        self.addCleanup(gate.set)
        backend = self.backend(gatedBodyReader(gate))
        proxy = self.proxy({"backend": [backend.address]})
        baseline = proxy.memory()["VmRSS"]
        sock, wire = self.rawConnection(timeout=30)
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
        sock.settimeout(0.5)
        sent = 0
        quietSince: float | None = None
        deadline = time.monotonic() + 20
        block = memoryview(PATTERN_BLOCK)
        while sent < size and time.monotonic() < deadline:
            offset = sent % len(PATTERN_BLOCK)
            try:
                sent += sock.send(block[offset:])
                quietSince = None
            except socket.timeout:
                quietSince = quietSince or time.monotonic()
                if time.monotonic() - quietSince > 1.0:
                    break
        stalledAt = sent
        self.assertLess(stalledAt, 48 * MiB)
        self.assertLess(proxy.memory()["VmRSS"] - baseline, 16 << 10)
        gate.set()
        sock.settimeout(30)
        while sent < size:
            offset = sent % len(PATTERN_BLOCK)
            sent += sock.send(block[offset: offset + min(len(PATTERN_BLOCK) - offset, size - sent)])
        response = readResponse(wire)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json()["bodyLength"], size)
        self.assertEqual(response.json()["bodySha256"], patternDigest(size))
        log.msg(f"slow upstream: client stalled after {stalledAt / MiB:.1f} MiB")

    def test_curlChunkedUpload(self) -> None:
        """
        curl's chunked upload of 3 MiB arrives chunked and intact.
        """
        backend = self.backend(echo)
        self.proxy({"backend": [backend.address]})
        path, digest = self.payloadFile(3 * MiB)
        result = self.curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{path}", self.url("/chunked"))
        self.assertEqual(result.returncode, 0, result.stderr)
        seen = json.loads(result.stdout)
        self.assertEqual((seen["bodyLength"], seen["bodySha256"]), (3 * MiB, digest))
        self.assertEqual([r.headerValues("Transfer-Encoding") for r in backend.requests], [["chunked"]])

    def test_curlExpectContinueUpload(self) -> None:
        """
        curl's C{Expect: 100-continue} upload of 5 MiB gets the proxy's 100 Continue (curl is told
        to wait 10 s for it, so a missing one shows as a stall) and arrives intact.
        """
        backend = self.backend(echo)
        self.proxy({"backend": [backend.address]})
        path, digest = self.payloadFile(5 * MiB)
        started = time.monotonic()
        result = self.curl("-v", "--expect100-timeout", "10", "-H", "Expect: 100-continue",
                           "--data-binary", f"@{path}", self.url("/expect"))
        elapsed = time.monotonic() - started
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("< HTTP/1.1 100 Continue", result.stderr)
        self.assertLess(elapsed, 8)
        seen = json.loads(result.stdout)
        self.assertEqual((seen["bodyLength"], seen["bodySha256"]), (5 * MiB, digest))

    def test_expectContinueRawSocket(self) -> None:
        """
        A client that waits for 100 Continue before sending its body gets it, then the final
        response.
        """
        backend = self.backend(echo)
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection(timeout=5)
        sock.sendall(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
        interim = wire.readHead()
        self.assertEqual(interim, b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"z" * 1000)
        response = readResponse(wire, "PUT")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.informational, [])
        self.assertEqual(response.json()["bodyLength"], 1000)

    def test_largeUploadHTTPClient(self) -> None:
        """
        A 64 MiB upload from http.client (streamed from a file object) arrives intact.
        """
        backend = self.backend(echo)
        proxy = self.proxy({"backend": [backend.address]})
        before = proxy.memory()
        path, digest = self.payloadFile(64 * MiB)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        self.addCleanup(conn.close)
        with open(path, "rb") as body:
            conn.request("POST", "/file", body=body, headers={"Content-Length": str(64 * MiB)})
            response = conn.getresponse()
            seen = json.loads(response.read())
        self.assertEqual((seen["bodyLength"], seen["bodySha256"]), (64 * MiB, digest))
        self.assertLess(proxy.memory()["VmHWM"] - before["VmHWM"], 32 << 10)
