"""
HTTP/1.1 serialization: heads built with one C{bytes.join}, chunks framed
for C{transport.writeSequence} without copying their data.

The plain functions validate nothing: they are for fields that came out of
the parser (already validated) and constants.  Anything the proxy creates
from other sources (configuration, computed values) goes through the
C{checked*} variants, which refuse CR, LF, NUL and other characters that
could split or smuggle a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

from meshproxy.http.fields import FIELD_VALUE_RE, TOKEN_RE

FieldPairs = Sequence[tuple[bytes, bytes]]

_CRLF: Final = b"\r\n"
_COLON_SP: Final = b": "
_TARGET: Final = re.compile(rb"[\x21-\x7e]+")
_REASON: Final = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")
_VERSIONS: Final = frozenset([b"1.1", b"1.0"])

REASON_PHRASES: Final[dict[int, bytes]] = {
    100: b"Continue",
    101: b"Switching Protocols",
    102: b"Processing",
    103: b"Early Hints",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    203: b"Non-Authoritative Information",
    204: b"No Content",
    205: b"Reset Content",
    206: b"Partial Content",
    207: b"Multi-Status",
    208: b"Already Reported",
    226: b"IM Used",
    300: b"Multiple Choices",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    305: b"Use Proxy",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    402: b"Payment Required",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    406: b"Not Acceptable",
    407: b"Proxy Authentication Required",
    408: b"Request Timeout",
    409: b"Conflict",
    410: b"Gone",
    411: b"Length Required",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    416: b"Range Not Satisfiable",
    417: b"Expectation Failed",
    421: b"Misdirected Request",
    422: b"Unprocessable Content",
    423: b"Locked",
    424: b"Failed Dependency",
    425: b"Too Early",
    426: b"Upgrade Required",
    428: b"Precondition Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    451: b"Unavailable For Legal Reasons",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    506: b"Variant Also Negotiates",
    507: b"Insufficient Storage",
    508: b"Loop Detected",
    511: b"Network Authentication Required",
}
"""
Standard reason phrases (RFC 9110 section 15 and the IANA registry).
"""

# "HTTP/1.1 200 " and friends, built once.
_STATUS_PREFIX: Final = {
    (version, status): b"HTTP/%s %d " % (version, status)
    for version in _VERSIONS
    for status in REASON_PHRASES
}


def reasonPhrase(status: int) -> bytes:
    """
    The standard reason phrase for C{status}, or C{b""} for an unknown one
    (the phrase is optional on the wire).
    """
    return REASON_PHRASES.get(status, b"")


def fieldLines(fields: FieldPairs) -> bytes:
    """
    C{fields} as field lines, each C{name: value} ending in CRLF, without the
    empty line that ends a section.
    """
    if not fields:
        return b""
    return b"\r\n".join(map(_COLON_SP.join, fields)) + _CRLF


def requestHead(
    method: bytes, target: bytes, headers: FieldPairs, version: bytes = b"1.1"
) -> bytes:
    """
    A request line and header section, ending with the empty line.
    """
    if headers:
        return b"".join(
            (
                method,
                b" ",
                target,
                b" HTTP/",
                version,
                b"\r\n",
                b"\r\n".join(map(_COLON_SP.join, headers)),
                b"\r\n\r\n",
            )
        )
    return b"".join((method, b" ", target, b" HTTP/", version, b"\r\n\r\n"))


def responseHead(
    status: int, reason: bytes, headers: FieldPairs, version: bytes = b"1.1"
) -> bytes:
    """
    A status line and header section, ending with the empty line.
    """
    prefix = _STATUS_PREFIX.get((version, status))
    if prefix is None:
        prefix = b"HTTP/%s %d " % (version, status)
    if headers:
        return b"".join(
            (prefix, reason, b"\r\n", b"\r\n".join(map(_COLON_SP.join, headers)), b"\r\n\r\n")
        )
    return b"".join((prefix, reason, b"\r\n\r\n"))


def chunk(data: bytes) -> tuple[bytes, ...]:
    """
    One chunk of a chunked body, as pieces for C{transport.writeSequence}:
    size line, the data itself (not copied), CRLF.  Empty data gives no
    pieces, since an empty chunk would end the body.
    """
    if not data:
        return ()
    return (b"%x\r\n" % len(data), data, _CRLF)


def lastChunk(trailers: FieldPairs = ()) -> bytes:
    """
    The last chunk and trailer section that end a chunked body.
    """
    if not trailers:
        return b"0\r\n\r\n"
    return b"".join((b"0\r\n", fieldLines(trailers), _CRLF))


def checkFields(fields: Iterable[tuple[bytes, bytes]]) -> None:
    """
    Refuse fields that would not parse back as themselves: names that are not
    tokens, values with control characters (CR, LF, NUL...) or surrounding
    whitespace.

    @raise ValueError: naming the first bad field.
    """
    for name, value in fields:
        if type(name) is not bytes or TOKEN_RE.fullmatch(name) is None:
            raise ValueError(f"invalid header name {name!r}")
        if type(value) is not bytes or FIELD_VALUE_RE.fullmatch(value) is None:
            raise ValueError(f"invalid value for header {name!r}: {value!r}")


def checkedRequestHead(
    method: bytes, target: bytes, headers: FieldPairs, version: bytes = b"1.1"
) -> bytes:
    """
    L{requestHead} for values the proxy made itself: every part is checked.

    @raise ValueError: a part could split or smuggle the message.
    """
    if TOKEN_RE.fullmatch(method) is None:
        raise ValueError(f"invalid method {method!r}")
    if _TARGET.fullmatch(target) is None or b"#" in target:
        raise ValueError(f"invalid request target {target!r}")
    if version not in _VERSIONS:
        raise ValueError(f"unsupported version {version!r}")
    checkFields(headers)
    return requestHead(method, target, headers, version)


def checkedResponseHead(
    status: int, reason: bytes, headers: FieldPairs, version: bytes = b"1.1"
) -> bytes:
    """
    L{responseHead} for values the proxy made itself: every part is checked.

    @raise ValueError: a part could split or smuggle the message.
    """
    if type(status) is not int or not 100 <= status <= 599:
        raise ValueError(f"invalid status {status!r}")
    if _REASON.fullmatch(reason) is None:
        raise ValueError(f"invalid reason phrase {reason!r}")
    if version not in _VERSIONS:
        raise ValueError(f"unsupported version {version!r}")
    checkFields(headers)
    return responseHead(status, reason, headers, version)


def checkedLastChunk(trailers: FieldPairs = ()) -> bytes:
    """
    L{lastChunk} with every trailer field checked.

    @raise ValueError: a trailer could split or smuggle the message.
    """
    checkFields(trailers)
    return lastChunk(trailers)
