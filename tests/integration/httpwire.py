"""
HTTP/1.1 messages on blocking sockets for the integration tests: a buffered reader that can
record every byte, and strict little parsers for the requests a backend receives and the
responses a raw-socket client reads.  Bodies are streamed (hashed and counted, only their first
bytes kept), and every loop is bounded.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from typing import Any, Callable

MAX_HEAD = 1 << 17
BODY_KEEP = 1 << 16
MAX_CHUNKS = 1 << 20


class ProtocolError(Exception):
    """
    The peer sent something that is not the HTTP/1.1 these helpers accept.
    """


class Wire:
    """
    Buffered reads from a blocking socket; C{onData} sees every received byte first.
    """

    def __init__(self, sock: socket.socket, onData: Callable[[bytes], None] | None = None) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.onData = onData
        self.eof = False

    def fill(self, size: int = 65536) -> bool:
        """
        Receive once into the buffer; C{False} at EOF.
        """
        if self.eof:
            return False
        data = self.sock.recv(size)
        if not data:
            self.eof = True
            return False
        if self.onData is not None:
            self.onData(data)
        self.buf += data
        return True

    def readHead(self) -> bytes | None:
        """
        The next head up to and including its empty line; C{None} on a clean EOF before it.
        """
        scanned = 0
        while True:
            end = self.buf.find(b"\r\n\r\n", max(scanned - 3, 0))
            if end >= 0:
                head = bytes(self.buf[: end + 4])
                del self.buf[: end + 4]
                return head
            scanned = len(self.buf)
            if scanned > MAX_HEAD:
                raise ProtocolError("head too large")
            if not self.fill():
                if not self.buf:
                    return None
                raise ProtocolError(f"EOF inside a head: {bytes(self.buf[:200])!r}")

    def readLine(self) -> bytes:
        """
        One CRLF-terminated line, without its CRLF.
        """
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                return line
            if len(self.buf) > MAX_HEAD:
                raise ProtocolError("line too long")
            if not self.fill():
                raise ProtocolError("EOF inside a line")

    def readExactly(self, n: int, sink: Callable[[bytes], None]) -> None:
        """
        Pass exactly C{n} bytes to C{sink}, in pieces as they arrive.
        """
        while n > 0:
            if not self.buf and not self.fill(min(max(n, 65536), 1 << 20)):
                raise ProtocolError(f"EOF with {n} body bytes to go")
            piece = bytes(self.buf[:n])
            del self.buf[: len(piece)]
            n -= len(piece)
            sink(piece)

    def readToEOF(self, sink: Callable[[bytes], None]) -> None:
        """
        Pass everything up to EOF to C{sink}.
        """
        while True:
            if self.buf:
                sink(bytes(self.buf))
                self.buf.clear()
            if not self.fill(1 << 20):
                return


class Message:
    """
    A parsed request or response head, and what its body was (length, digest, first bytes).
    """

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self.version = ""
        self.bodyLength = 0
        self._digest = hashlib.sha256()
        self.body = b""
        self.trailers: list[tuple[str, str]] = []
        self.complete = False

    def header(self, name: str) -> str | None:
        """
        The first value of header C{name} (any case), or C{None}.
        """
        values = self.headerValues(name)
        return values[0] if values else None

    def headerValues(self, name: str) -> list[str]:
        """
        Every value of header C{name} (any case), in order.
        """
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def tokens(self, name: str) -> list[str]:
        """
        The comma-separated, lower-cased elements of every value of header C{name}.
        """
        return [t.strip().lower() for v in self.headerValues(name) for t in v.split(",") if t.strip()]

    @property
    def bodySha256(self) -> str:
        return self._digest.hexdigest()

    def _bodyPiece(self, data: bytes) -> None:
        self.bodyLength += len(data)
        self._digest.update(data)
        if len(self.body) < BODY_KEEP:
            self.body += data[: BODY_KEEP - len(self.body)]


class Request(Message):
    """
    A request as a backend received it.
    """

    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]) -> None:
        super().__init__(headers)
        self.method = method
        self.target = target
        self.version = version
        self.connection = -1
        self.sequence = -1
        self.backend = ""
        self.bodyRead = False

    @property
    def keepAlive(self) -> bool:
        tokens = self.tokens("connection")
        if self.version == "1.1":
            return "close" not in tokens
        return "keep-alive" in tokens and "close" not in tokens

    def describe(self) -> dict[str, Any]:
        """
        What the echo mode sends back, as JSON.
        """
        return {
            "backend": self.backend,
            "connection": self.connection,
            "sequence": self.sequence,
            "method": self.method,
            "target": self.target,
            "version": self.version,
            "headers": [[n, v] for n, v in self.headers],
            "bodyLength": self.bodyLength,
            "bodySha256": self.bodySha256,
            "trailers": [[n, v] for n, v in self.trailers],
        }


class Response(Message):
    """
    A response as a raw-socket client read it; C{informational} holds any 1xx heads before it.
    """

    def __init__(self, version: str, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        super().__init__(headers)
        self.version = version
        self.status = status
        self.reason = reason
        self.informational: list[Response] = []
        self.closeDelimited = False

    def json(self) -> Any:
        return json.loads(self.body)


def parseHeaders(lines: list[bytes]) -> list[tuple[str, str]]:
    """
    Field lines into (name, value) pairs; strict: a line without a colon, a folded line or
    whitespace before the colon is a L{ProtocolError}.
    """
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise ProtocolError(f"bad field line {line!r}")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return headers


def parseRequestHead(head: bytes) -> Request:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise ProtocolError(f"bad request line {lines[0]!r}")
    return Request(parts[0].decode("latin-1"), parts[1].decode("latin-1"), parts[2][5:].decode(),
                   parseHeaders(lines[1:]))


def parseResponseHead(head: bytes) -> Response:
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/") or not (code.isdigit() and len(code) == 3):
        raise ProtocolError(f"bad status line {lines[0]!r}")
    return Response(version[5:].decode(), int(code), reason.decode("latin-1"), parseHeaders(lines[1:]))


def contentLength(message: Message) -> int | None:
    values = message.headerValues("content-length")
    if not values:
        return None
    if len(values) != 1 or not values[0].isdigit():
        raise ProtocolError(f"Content-Length {values!r} is not one number")
    return int(values[0])


def readBody(wire: Wire, message: Message, chunked: bool, length: int | None, toEOF: bool = False) -> None:
    """
    Read a body framed as given into C{message} (streaming: only the first bytes are kept).
    """
    sink = message._bodyPiece
    if chunked:
        for _ in range(MAX_CHUNKS):
            line = wire.readLine()
            size = line.split(b";", 1)[0].strip()
            if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
                raise ProtocolError(f"bad chunk size line {line!r}")
            n = int(size, 16)
            if n == 0:
                trailers = []
                for _ in range(1000):
                    trailer = wire.readLine()
                    if not trailer:
                        break
                    trailers.append(trailer)
                message.trailers = parseHeaders(trailers)
                break
            wire.readExactly(n, sink)
            if wire.readLine() != b"":
                raise ProtocolError("chunk data not followed by CRLF")
        else:
            raise ProtocolError("too many chunks")
    elif length is not None:
        wire.readExactly(length, sink)
    elif toEOF:
        wire.readToEOF(sink)
    message.complete = True


def readResponse(wire: Wire, method: str = "GET") -> Response:
    """
    Read one response to a C{method} request (1xx heads are collected on it), body included.
    """
    informational = []
    for _ in range(10):
        head = wire.readHead()
        if head is None:
            raise ProtocolError("connection closed before a response")
        response = parseResponseHead(head)
        if 100 <= response.status < 200 and response.status != 101:
            informational.append(response)
            continue
        break
    else:
        raise ProtocolError("too many 1xx responses")
    response.informational = informational
    chunked = "chunked" in response.tokens("transfer-encoding")
    length = contentLength(response)
    if method == "HEAD" or response.status in (101, 204, 304):
        response.complete = True
    elif not chunked and length is None:
        response.closeDelimited = True
        readBody(wire, response, False, None, toEOF=True)
    else:
        readBody(wire, response, chunked, length)
    return response


def closedByPeer(sock: socket.socket, wire: Wire | None = None, timeout: float = 5.0) -> bool:
    """
    Whether the peer closes C{sock} within C{timeout} without sending anything more (a reset
    counts as closed).
    """
    if wire is not None and wire.buf:
        return False
    deadline = time.monotonic() + timeout
    previous = sock.gettimeout()
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
            return not data
        return False
    finally:
        sock.settimeout(previous)
