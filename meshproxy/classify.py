"""
Classification of a connection's first bytes: TLS, HTTP/1, HTTP/2 with prior knowledge, or raw.

The sniffer calls L{classify} on its growing buffer each time bytes arrive, until it returns a L{Verdict}.
It is pure, never raises, and costs a few compiled-pattern scans per call.  Once it has returned a verdict
for some bytes, more bytes never change the verdict's protocol (the tests check this property), so it does
not matter how TCP split the stream.  A PROXY protocol header is not its business: the sniffer strips it with
L{meshproxy.proxyproto.parseProxyHeader} first.

The rules, in order:

  - A first byte of 0x16 (a TLS handshake record) or one with the high bit set (an SSLv2-format hello) is
    handed to L{meshproxy.clienthello.parseClientHello}.  A complete ClientHello gives C{"tls"} with its
    server name and ALPN offer (reason C{"clienthello"}).  Bytes that began as TLS but are malformed or
    unsupported give C{"tls"} without a name (C{"malformed-clienthello"} or C{"sslv2-clienthello"}) so that a
    TLS library answers them with an alert; bytes that are not TLS after all give C{"raw"} (C{"not-tls"}).
  - A buffer that is the HTTP/2 connection preface gives C{"http2"} (C{"h2-preface"}); a prefix of it waits.
    It is checked before HTTP/1 because its first line also looks like a request line.
  - A first line C{method SP request-target SP HTTP/1.0|HTTP/1.1 CRLF} gives C{"http1"}
    (C{"request-line"}).  The method is an RFC 9110 token of at most L{MAX_METHOD_LENGTH} characters (the
    longest registered method has 17, and a cap lets a long run of token characters from some other protocol
    be called raw quickly); case is not checked, so C{get} is HTTP (the HTTP layer answers 501).  The target
    starts with C{/}, C{*}, a letter or digit (absolute and authority forms) or C{[}, and goes on with any
    visible ASCII or non-ASCII byte: deliberately wider than the HTTP codec, so that a broken request is
    answered with an HTTP 400 instead of being relayed raw.  A bare LF ending an otherwise valid line gives
    C{"http1"} too (C{"request-line-lf"}, RFC 9112 lets a server accept it); the strict codec then judges it,
    and the separate reason lets operators count such clients.  Leading empty lines, double spaces, control
    characters, other versions (C{HTTP/1.2}, C{HTTP/0.9} lines without a version, lower-case C{http/1.1}) make
    the buffer C{"raw"} (C{"not-http"}) as soon as they appear.
  - Anything else is C{"raw"} (C{"not-http"}) as soon as no continuation could match a rule above.

At C{maxBytes} (larger buffers are cut to it first, so verdicts stay consistent) a buffer that is still
undecided gets a verdict with reason C{"buffer-full"}: C{"tls"} if a plausible handshake record header has
been seen (the TLS layer rejects the overlong hello), C{"http1"} for a prefix of a request line (a very long
URI: the HTTP layer answers 414), else C{"raw"}.

With C{eof=True} no more bytes will come (the client half-closed or the sniff deadline passed), so an
undecided buffer is decided with reason C{"eof"}: empty gives C{"raw"}; a plausible TLS record header gives
C{"tls"} (the TLS layer times the client out or alerts it); a prefix of a request line (or of the HTTP/2
preface) that already holds the method and its space gives C{"http1"}, because an operator expects a slow
or truncated HTTP client on an HTTP port to get an HTTP error (408 or 400) rather than have its bytes relayed
to a raw backend; anything shorter (a lone word, one byte) gives C{"raw"}, as server-first protocols need.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from meshproxy.clienthello import ClientHello, NotClientHello, parseClientHello
from meshproxy.needmore import NEED_MORE, NeedMore

__all__ = [
    "NEED_MORE",
    "NeedMore",
    "Verdict",
    "PROTOCOLS",
    "H2_PREFACE",
    "MAX_METHOD_LENGTH",
    "DEFAULT_MAX_BYTES",
    "classify",
]

PROTOCOLS: Final = ("tls", "http1", "http2", "raw")
H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_METHOD_LENGTH: Final = 32
DEFAULT_MAX_BYTES: Final = 16384

_TCHAR: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_METHOD: Final = _TCHAR + rb"{1,%d}" % (MAX_METHOD_LENGTH,)
_TARGET: Final = rb"[/*A-Za-z0-9\[][\x21-\x7e\x80-\xff]*"


def _nestedPrefix(pieces: list[bytes]) -> bytes:
    """
    A pattern matching every prefix of the concatenation of C{pieces} that ends between two pieces.
    """
    pattern = b""
    for piece in reversed(pieces):
        pattern = piece + (b"(?:" + pattern + b")?" if pattern else b"")
    return pattern


_REQUEST_LINE: Final = re.compile(_METHOD + b" " + _TARGET + rb" HTTP/1\.[01](\r?)\n")
# Each strict prefix of a request line: the pieces are the units after which the line may be cut.
_REQUEST_LINE_PREFIX: Final = re.compile(
    _nestedPrefix(
        [_METHOD, b" ", _TARGET, b" "]
        + [re.escape(bytes([c])) for c in b"HTTP/1."]
        + [rb"[01]", rb"\r"]
    )
)


@attrs.frozen
class Verdict:
    """
    What a connection's first bytes turned out to be.

    @ivar protocol: C{"tls"}, C{"http1"}, C{"http2"} or C{"raw"}.
    @ivar serverName: the TLS server name (SNI), lower-case; L{None} if not TLS or not sent.
    @ivar alpn: the TLS ALPN offer, in the client's order.
    @ivar reason: why, as a short fixed word for logs and counters: C{"clienthello"},
        C{"malformed-clienthello"}, C{"sslv2-clienthello"}, C{"not-tls"}, C{"h2-preface"},
        C{"request-line"}, C{"request-line-lf"}, C{"not-http"}, C{"buffer-full"} or C{"eof"}.
    @ivar detail: for a rejected ClientHello, the parser's own explanation; otherwise empty.
    @ivar clientHello: the parsed ClientHello when C{reason} is C{"clienthello"}.
    """

    protocol: str = attrs.field(validator=attrs.validators.in_(PROTOCOLS))
    serverName: str | None = None
    alpn: tuple[str, ...] = ()
    reason: str = ""
    detail: str = ""
    clientHello: ClientHello | None = None


def classify(
    data: bytes | bytearray, *, eof: bool = False, maxBytes: int = DEFAULT_MAX_BYTES
) -> NeedMore | Verdict:
    """
    Decide what protocol a connection speaks from its first bytes.

    @param data: everything received so far on the connection (after any PROXY protocol header).
    @param eof: no more bytes will come: decide with what is there.
    @param maxBytes: the sniffing buffer's size; at this many bytes an undecided buffer is decided.
    @return: L{NEED_MORE} until the bytes decide, then a L{Verdict}.
    """
    maxBytes = max(maxBytes, 0)
    if isinstance(data, bytes) and len(data) <= maxBytes:
        return _classify(data, eof, len(data) == maxBytes)
    # Only the first maxBytes count, so that a verdict at maxBytes holds for any longer buffer.
    data = bytes(data[:maxBytes])
    return _classify(data, eof, len(data) == maxBytes)


def _classify(data: bytes, eof: bool, full: bool) -> NeedMore | Verdict:
    """
    Classify at most C{maxBytes} bytes; C{full} says whether there are that many.
    """
    if not data:
        if eof:
            return Verdict("raw", reason="eof")
        if full:
            return Verdict("raw", reason="buffer-full")
        return NEED_MORE
    first = data[0]
    if first == 0x16 or first & 0x80:
        return _classifyTLS(data, eof, full)
    return _classifyHTTP(data, eof, full)


def _classifyTLS(data: bytes, eof: bool, full: bool) -> NeedMore | Verdict:
    """
    Classify bytes that start like a TLS or SSLv2 handshake record.
    """
    hello = parseClientHello(data)
    if isinstance(hello, ClientHello):
        return Verdict("tls", hello.serverName, hello.alpn, "clienthello", clientHello=hello)
    if isinstance(hello, NotClientHello):
        if not hello.looksLikeTLS:
            return Verdict("raw", reason="not-tls", detail=hello.reason)
        reason = "malformed-clienthello" if data[0] == 0x16 else "sslv2-clienthello"
        return Verdict("tls", reason=reason, detail=hello.reason)
    if not (full or eof):
        return NEED_MORE
    # The parser has already vetted the record header once five bytes are in.
    protocol = "tls" if data[0] == 0x16 and len(data) >= 5 else "raw"
    return Verdict(protocol, reason="buffer-full" if full else "eof")


def _classifyHTTP(data: bytes, eof: bool, full: bool) -> NeedMore | Verdict:
    """
    Classify bytes that may be an HTTP/2 preface, an HTTP/1 request line, or neither.
    """
    if H2_PREFACE.startswith(data[: len(H2_PREFACE)]):
        if len(data) >= len(H2_PREFACE):
            return Verdict("http2", reason="h2-preface")
        return _undecidedHTTP(data, eof, full)
    # Without a LF there is no line to match, and memchr is cheaper than a second scan of a long target.
    line = _REQUEST_LINE.match(data) if b"\n" in data else None
    if line is not None:
        return Verdict("http1", reason="request-line" if line.group(1) else "request-line-lf")
    if _REQUEST_LINE_PREFIX.fullmatch(data) is not None:
        return _undecidedHTTP(data, eof, full)
    return Verdict("raw", reason="not-http")


def _undecidedHTTP(data: bytes, eof: bool, full: bool) -> NeedMore | Verdict:
    """
    Answer for a strict prefix of a request line or of the HTTP/2 preface.
    """
    if full:
        return Verdict("http1", reason="buffer-full")
    if eof:
        return Verdict("http1" if b" " in data else "raw", reason="eof")
    return NEED_MORE
