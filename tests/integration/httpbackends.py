"""
HTTP/1.1 peers for the integration tests: threaded, blocking backends that record every byte they
receive and answer in one of several modes; a WebSocket echo server (the C{websockets} package, on
its own event loop in a thread); and the test case that starts backends and a meshproxy HTTP
listener in front of them.

Everything is bounded: sockets have timeouts, loops have counts and deadlines, threads are joined
with a timeout, and processes are stopped by PID in cleanup.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Iterable

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.harness import Backend, MeshProxy, freePort, httpProxyDocument, httpRoute
from tests.integration.httpwire import ProtocolError, Request, Wire, contentLength, parseRequestHead, readBody

RAW_KEEP = 8 << 20
MAX_REQUESTS_PER_CONNECTION = 10_000
PATTERN_BLOCK = bytes(range(256)) * 1024  # 256 KiB; the byte at offset n is n % 256


# -- backends ---------------------------------------------------------------------------------------

Responder = Callable[["BackendConnection", Request], bool]
"""
A backend mode: answers one request (reading its body first, as it likes) and says whether the
connection may carry another one.
"""


class BackendConnection:
    """
    One connection accepted by an L{HTTPBackend}.
    """

    def __init__(self, backend: HTTPBackend, sock: socket.socket, wire: Wire, index: int) -> None:
        self.backend = backend
        self.sock = sock
        self.wire = wire
        self.index = index

    def readRequest(self, sequence: int) -> Request | None:
        head = self.wire.readHead()
        if head is None:
            return None
        request = parseRequestHead(head)
        request.connection = self.index
        request.sequence = sequence
        request.backend = self.backend.name
        with self.backend.lock:
            self.backend.requests.append(request)
        return request

    def readBody(self, request: Request) -> None:
        """
        Read the request's body (after a 100 Continue if it asked for one).
        """
        if request.bodyRead:
            return
        request.bodyRead = True
        chunked = "chunked" in request.tokens("transfer-encoding")
        length = contentLength(request)
        if "100-continue" in request.tokens("expect") and (chunked or length):
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        readBody(self.wire, request, chunked, length)

    def send(self, data: bytes | memoryview) -> None:
        self.sock.sendall(data)
        with self.backend.lock:
            self.backend.sent += len(data)

    def respond(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        close: bool = False,
        reason: str = "OK",
        withBody: bool = True,
    ) -> None:
        """
        Send a whole response framed by Content-Length.
        """
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{n}: {v}" for n, v in headers]
        if status >= 200 and status not in (204, 304):
            lines.append(f"Content-Length: {len(body)}")
        if close:
            lines.append("Connection: close")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body if withBody else b""))


class HTTPBackend(Backend):
    """
    A threaded HTTP/1.1 server on 127.0.0.1 answering with C{responder}; it records every byte
    received per connection (C{raw}) and every request head (C{requests}).
    """

    def __init__(self, responder: Responder, name: str = "backend") -> None:
        self.name = name
        self.responder = responder
        self.raw: list[bytearray] = []
        self.requests: list[Request] = []
        self.errors: list[str] = []
        super().__init__(self._serveHTTP)

    def _serveHTTP(self, sock: socket.socket, backend: Backend) -> None:
        with self.lock:
            index = len(self.raw)
            record = bytearray()
            self.raw.append(record)

        def onData(data: bytes) -> None:
            with self.lock:
                self.received += len(data)
                if len(record) < RAW_KEEP:
                    record.extend(data[: RAW_KEEP - len(record)])

        connection = BackendConnection(self, sock, Wire(sock, onData), index)
        try:
            for sequence in range(MAX_REQUESTS_PER_CONNECTION):
                request = connection.readRequest(sequence)
                if request is None or not self.responder(connection, request):
                    return
                connection.readBody(request)
        except ProtocolError as e:
            self.errors.append(str(e))

    def rawBytes(self) -> bytes:
        """
        Everything received, on all connections, in connection order.
        """
        with self.lock:
            return b"".join(bytes(r) for r in self.raw)


def refusedAddress() -> str:
    """
    An address on 127.0.0.1 where nothing listens (connections are refused).
    """
    return f"127.0.0.1:{freePort()}"


# -- modes ----------------------------------------------------------------------------------------------


def echo(connection: BackendConnection, request: Request) -> bool:
    """
    Answer with the request as JSON (L{Request.describe}); HEAD gets the same head, no body.
    """
    connection.readBody(request)
    body = json.dumps(request.describe()).encode()
    connection.respond(200, body, [("Content-Type", "application/json"), ("X-Backend", request.backend)],
                       close=not request.keepAlive, withBody=request.method != "HEAD")
    return request.keepAlive


def fixed(
    status: int = 200, body: bytes = b"", headers: Iterable[tuple[str, str]] = (), close: bool = False,
    reason: str = "OK",
) -> Responder:
    """
    The same Content-Length response to every request.
    """
    headers = list(headers)

    def respond(connection: BackendConnection, request: Request) -> bool:
        connection.readBody(request)
        connection.respond(status, body, headers, close, reason, withBody=request.method != "HEAD")
        return not close and request.keepAlive

    return respond


def raw(data: bytes, close: bool = True) -> Responder:
    """
    Send C{data} as it is (any framing, or garbage) to every request.
    """

    def respond(connection: BackendConnection, request: Request) -> bool:
        connection.readBody(request)
        connection.send(data)
        return not close

    return respond


def chunked(
    chunks: list[bytes], trailers: Iterable[tuple[str, str]] = (), gate: threading.Event | None = None,
    gateAfter: int = 1, headers: Iterable[tuple[str, str]] = (),
) -> Responder:
    """
    A chunked response of C{chunks}; with C{gate}, the chunks after the first C{gateAfter} wait
    (at most 20 s) until the gate is set.
    """
    trailers = list(trailers)
    headers = list(headers)

    def respond(connection: BackendConnection, request: Request) -> bool:
        connection.readBody(request)
        lines = ["HTTP/1.1 200 OK", "Transfer-Encoding: chunked"] + [f"{n}: {v}" for n, v in headers]
        connection.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        for i, data in enumerate(chunks):
            if gate is not None and i == gateAfter:
                gate.wait(20)
            connection.send(b"%x\r\n%s\r\n" % (len(data), data))
        connection.send(b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in trailers) + b"\r\n")
        return request.keepAlive

    return respond


def closeDelimited(body: bytes, version: str = "1.1") -> Responder:
    """
    A response without Content-Length or chunking: its body ends when the backend closes.
    """

    def respond(connection: BackendConnection, request: Request) -> bool:
        connection.readBody(request)
        connection.send(f"HTTP/{version} 200 OK\r\nContent-Type: text/plain\r\n\r\n".encode() + body)
        return False

    return respond


def huge(size: int, chunkedFraming: bool = False) -> Responder:
    """
    A C{size}-byte body of the repeating byte pattern 0..255, streamed in 256 KiB blocks and
    counted in C{backend.sent} as the kernel accepts it; stops when the backend stops.
    """

    def respond(connection: BackendConnection, request: Request) -> bool:
        connection.readBody(request)
        framing = "Transfer-Encoding: chunked" if chunkedFraming else f"Content-Length: {size}"
        connection.send(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{framing}\r\n\r\n".encode())
        remaining = size
        block = memoryview(PATTERN_BLOCK)
        while remaining > 0 and not connection.backend._stopping:
            n = min(remaining, len(block))
            if chunkedFraming:
                connection.send(b"%x\r\n" % n + block[:n] + b"\r\n")
            else:
                connection.send(block[:n])
            remaining -= n
        if chunkedFraming and remaining == 0:
            connection.send(b"0\r\n\r\n")
        return remaining == 0 and request.keepAlive

    return respond


def hang(seconds: float = 20.0) -> Responder:
    """
    Read the request and never answer: wait until the peer closes, the backend stops or
    C{seconds} pass, then close.
    """

    def respond(connection: BackendConnection, request: Request) -> bool:
        connection.readBody(request)
        sock = connection.sock
        sock.settimeout(0.1)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not connection.backend._stopping:
            try:
                if not sock.recv(65536):
                    break
            except socket.timeout:
                continue
        return False

    return respond


def closeMidResponse(total: int, partial: int) -> Responder:
    """
    Promise C{total} body bytes, send C{partial} of them, then close.
    """

    def respond(connection: BackendConnection, request: Request) -> bool:
        connection.readBody(request)
        connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total + PATTERN_BLOCK[:partial])
        return False

    return respond


def closeWithoutResponse(connection: BackendConnection, request: Request) -> bool:
    """
    Read the request, then close without a word.
    """
    connection.readBody(request)
    return False


def answerFirstOnly(connection: BackendConnection, request: Request) -> bool:
    """
    Echo the first request of each connection; close the connection on any later one, as a
    server whose keep-alive timer just fired does.
    """
    if request.sequence > 0:
        return False
    return echo(connection, request)


def gatedBodyReader(gate: threading.Event) -> Responder:
    """
    Read the head, then wait (at most 30 s) for C{gate} before reading the body; then echo.
    """

    def respond(connection: BackendConnection, request: Request) -> bool:
        gate.wait(30)
        return echo(connection, request)

    return respond


# -- WebSocket ------------------------------------------------------------------------------------------


class WebSocketServer:
    """
    A C{websockets} server on 127.0.0.1 in a thread with its own event loop (works with
    websockets 10.4 and newer).  On connect it sends C{"hello <path>"}; it answers a text
    message with C{"echo:" + text}, a binary one with the bytes reversed, and C{"close"} by
    closing with code 4000.  It records the paths, request headers and messages it saw.
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.requestHeaders: list[dict[str, str]] = []
        self.received: list[str | bytes] = []
        self.closedCodes: list[int | None] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("the WebSocket server did not start")
        if self._error is not None:
            raise AssertionError(f"the WebSocket server failed: {self._error!r}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # reported to the starting thread
            self._error = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        import websockets

        self._stopped = asyncio.Event()
        server = await websockets.serve(self._handler, "127.0.0.1", 0, max_size=None)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopped.wait()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)

    async def _handler(self, ws: Any, path: str | None = None) -> None:
        request = getattr(ws, "request", None)
        if request is not None:  # websockets >= 13 (new implementation)
            path, headers = request.path, request.headers
        else:
            path, headers = ws.path, ws.request_headers
        self.paths.append(path)
        self.requestHeaders.append({k.lower(): v for k, v in headers.raw_items()})
        await ws.send(f"hello {path}")
        try:
            for _ in range(100_000):
                message = await ws.recv()
                self.received.append(message)
                if message == "close":
                    await ws.close(code=4000, reason="asked to")
                    break
                if isinstance(message, str):
                    await ws.send("echo:" + message)
                else:
                    await ws.send(bytes(reversed(message)))
        except Exception:
            pass
        self.closedCodes.append(getattr(ws, "close_code", None))

    def stop(self) -> None:
        if self._stopped is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:
                pass
        self._thread.join(10)


# -- the test case ------------------------------------------------------------------------------------


class HTTPProxyTestCase(SynchronousTestCase):
    """
    Starts HTTP backends and a meshproxy C{proxy} listener in front of them, all stopped in
    cleanup (the proxy first).
    """

    listenerName = "web"

    def backend(self, responder: Responder = echo, name: str = "backend") -> HTTPBackend:
        backend = HTTPBackend(responder, name)
        self.addCleanup(backend.stop)
        return backend

    def proxy(
        self,
        clusters: dict[str, list[str]] | list[dict[str, Any]],
        routes: list[dict[str, Any]] | None = None,
        virtualHosts: list[dict[str, Any]] | None = None,
        **kw: Any,
    ) -> MeshProxy:
        """
        Start meshproxy; C{self.port} is its HTTP listener.  C{clusters} maps names to host
        addresses (or is a list of whole cluster dicts); without C{routes} or C{virtualHosts}
        everything goes to the first cluster with a 5 s route timeout.
        """
        workdir = self.mktemp()
        os.makedirs(workdir)
        self.port = freePort()
        if routes is None and virtualHosts is None:
            first = clusters[0]["name"] if isinstance(clusters, list) else next(iter(clusters))
            routes = [httpRoute(cluster=first)]
        doc = httpProxyDocument(self.port, clusters, routes=routes, virtualHosts=virtualHosts,
                                listenerName=self.listenerName, **kw)
        proxy = MeshProxy(doc, workdir)
        proxy.start()
        self.addCleanup(proxy.stop)
        self.meshproxy = proxy
        return proxy

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rawConnection(self, timeout: float = 10.0) -> tuple[socket.socket, Wire]:
        """
        A raw client socket to the proxy, closed in cleanup, with a L{Wire} to read responses.
        """
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        self.addCleanup(sock.close)
        return sock, Wire(sock)

    def stat(self, name: str, **labels: str) -> Any:
        """
        One series of the proxy's stats (C{meshproxy_} prefix added, labels sorted), or C{None}.
        """
        key = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return self.meshproxy.stats().get(f"meshproxy_{name}{{{key}}}")
