"""
Values the HTTP/1 codec hands out: roles, limits, events and the parse error.

Heads are created once per message on the hot path, so they are plain
``__slots__`` classes with a positional ``__init__`` rather than attrs classes
(attrs' frozen ``__init__`` costs several times more per instance).  They
compare by value, which is what the transcript tests need.  Treat them as
read-only.
"""

from __future__ import annotations

import enum
from typing import Final, Union

import attrs

Headers = list[tuple[bytes, bytes]]
"""
Header or trailer fields in received order, duplicates kept, names as
received (case preserved), values with surrounding whitespace removed.
"""


class Role(enum.Enum):
    """
    Which side of a connection a parser sits on.

    ``SERVER`` parses requests arriving from clients; ``CLIENT`` parses
    responses arriving from upstream servers.
    """

    SERVER = "server"
    CLIENT = "client"


SERVER: Final = Role.SERVER
CLIENT: Final = Role.CLIENT


class Signal(enum.Enum):
    """
    Sentinels returned by L{HTTP1Parser.nextEvent} that carry no data.

    ``NEED_DATA``: nothing more can be parsed until more bytes (or EOF) are
    fed.  ``PAUSED``: the previous head switches protocols (Upgrade, CONNECT,
    101); the parser waits for C{switchedProtocols()} or C{resume()}.
    """

    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"


NEED_DATA: Final = Signal.NEED_DATA
PAUSED: Final = Signal.PAUSED


@attrs.frozen
class HTTPLimits:
    """
    Size limits applied while parsing (see reference/defaults.md).

    @ivar maxHeaderBytes: the largest head accepted, start line through the
        empty line that ends it; also the largest trailer section.  Over it:
        431 (or 414 when the request target is what is too long).
    @ivar maxHeaders: the most header (or trailer) fields; over it: 431.
    @ivar maxURIBytes: the longest request target; over it: 414.
    @ivar maxChunkLineBytes: the longest chunk-size line including its
        extensions and CRLF; over it: 400.
    """

    maxHeaderBytes: int = 65536
    maxHeaders: int = 100
    maxURIBytes: int = 8192
    maxChunkLineBytes: int = 4096


class HTTPParseError(Exception):
    """
    The input cannot be parsed safely; the parser that raised it is dead.

    @ivar status: the HTTP status to answer a client with (400, 413, 414,
        431, 501, 505; 502 for a truncated upstream response).  For errors
        raised in the L{CLIENT} role the proxy answers its own client 502
        whatever this says; the status still classifies the fault.
    @ivar reason: a short stable slug for logs and counters, such as
        C{"cl-and-te"} or C{"obs-fold"}.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class _Value:
    """
    Equality by value over C{__slots__}, no hashing (the fields are lists), and a repr naming the
    fields (keyword form when L{_keywordRepr}, else positional).
    """

    __slots__: tuple[str, ...] = ()
    _keywordRepr = False

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self._keywordRepr:
            parts = [f"{n}={getattr(self, n)!r}" for n in self.__slots__]
        else:
            parts = [repr(getattr(self, n)) for n in self.__slots__]
        return f"{type(self).__name__}({', '.join(parts)})"


class _Head(_Value):
    """
    What request and response heads share: header lookup, and the lower-cased
    field names (C{lnames}, parallel to C{headers}), which the parser computes
    once and everything downstream reuses.  C{lnames} is derived, so it takes
    no part in equality or the repr (they use the subclass's own slots).
    """

    __slots__: tuple[str, ...] = ("lnames",)
    headers: Headers
    lnames: list[bytes]
    _keywordRepr = True

    def headerValues(self, name: bytes) -> list[bytes]:
        """
        The values of every header named C{name} (case-insensitive), in order.
        """
        lowered = name.lower()
        if lowered not in self.lnames:
            return []
        return [v for n, (_, v) in zip(self.lnames, self.headers) if n == lowered]


class RequestHead(_Head):
    """
    A parsed request line and header section, with the derived facts a proxy
    needs computed once by the parser.

    @ivar method: the method token, case preserved (methods are
        case-sensitive).
    @ivar target: the request target exactly as received.
    @ivar version: C{b"1.1"} or C{b"1.0"}.
    @ivar headers: see L{Headers}.
    @ivar contentLength: the body length from Content-Length, or L{None}.
    @ivar chunked: the body is chunked.
    @ivar keepAlive: the connection may carry another request after this
        one (HTTP/1.1 without C{close}, or HTTP/1.0 with C{keep-alive}).
    @ivar connectionTokens: the Connection header's options, lower-cased.
    @ivar host: the Host header's value, or L{None} if absent.
    @ivar upgrade: the Upgrade header's value when the request asks to
        upgrade (HTTP/1.1 and C{upgrade} in Connection), else L{None}.
    @ivar expectContinue: the client waits for C{100 Continue} (HTTP/1.1).
    """

    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "contentLength",
        "chunked",
        "keepAlive",
        "connectionTokens",
        "host",
        "upgrade",
        "expectContinue",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: Headers,
        contentLength: int | None = None,
        chunked: bool = False,
        keepAlive: bool = True,
        connectionTokens: frozenset[bytes] = frozenset(),
        host: bytes | None = None,
        upgrade: bytes | None = None,
        expectContinue: bool = False,
        lnames: list[bytes] | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.contentLength = contentLength
        self.chunked = chunked
        self.keepAlive = keepAlive
        self.connectionTokens = connectionTokens
        self.host = host
        self.upgrade = upgrade
        self.expectContinue = expectContinue
        self.lnames = [n.lower() for n, _ in headers] if lnames is None else lnames



class ResponseHead(_Head):
    """
    A parsed status line and header section.

    A 1xx head other than 101 is informational: the final response for the
    same request follows it.

    @ivar status: the status code (100..599).
    @ivar reason: the reason phrase as received (may be empty).
    @ivar version: C{b"1.1"} or C{b"1.0"}.
    @ivar headers: see L{Headers}.
    @ivar contentLength: the Content-Length value, or L{None}.  It does not
        frame a response to HEAD, nor a 1xx, 204 or 304 response.
    @ivar chunked: the header says chunked (same caveat).
    @ivar keepAlive: the connection may carry another response after this
        one; L{False} for close-delimited bodies and protocol switches.
    @ivar connectionTokens: the Connection header's options, lower-cased.
    """

    __slots__ = (
        "status",
        "reason",
        "version",
        "headers",
        "contentLength",
        "chunked",
        "keepAlive",
        "connectionTokens",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        headers: Headers,
        contentLength: int | None = None,
        chunked: bool = False,
        keepAlive: bool = True,
        connectionTokens: frozenset[bytes] = frozenset(),
        lnames: list[bytes] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.contentLength = contentLength
        self.chunked = chunked
        self.keepAlive = keepAlive
        self.connectionTokens = connectionTokens
        self.lnames = [n.lower() for n, _ in headers] if lnames is None else lnames



class BodyData(_Value):
    """
    Some body bytes of the current message, in order.

    C{data} is always L{bytes} (Twisted transports accept nothing else): the
    very object that was fed when all of it is body, otherwise one slice of it.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data



class EndOfMessage(_Value):
    """
    The current message is complete; C{trailers} holds the chunked trailer
    fields (empty otherwise).
    """

    __slots__ = ("trailers",)

    def __init__(self, trailers: Headers | None = None) -> None:
        self.trailers: Headers = [] if trailers is None else trailers



class ConnectionClosed(_Value):
    """
    The peer closed the connection cleanly, between messages.
    """

    __slots__ = ()


Event = Union[RequestHead, ResponseHead, BodyData, EndOfMessage, ConnectionClosed, Signal]
"""
Anything L{HTTP1Parser.nextEvent} returns.
"""
