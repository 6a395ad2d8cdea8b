"""
Sans-io strict HTTP/1.1 codec for both roles (pure, no I/O).

L{HTTP1Parser} turns bytes into events (heads, body data, ends of messages)
for the server side (requests from clients) or the client side (responses
from upstreams); the functions of L{meshproxy.http.serialize} turn heads and
chunks back into bytes.  Nothing here imports Twisted or does I/O: the
connection manager feeds the parser and writes what the serializer returns.

Strictness decisions (RFC 9112 leaves these to the recipient; we take the
side that leaves no two readings of a message):

  - Lines end in CRLF only: a bare LF (or CR) anywhere in a head, chunk line
    or trailer section is a 400, detected as soon as it arrives.  Empty lines
    before a request line are skipped (section 2.2); before a status line
    they are an error.
  - Content-Length: repeated fields or lists are accepted only when all
    elements are the same number (section 6.3); more than 18 significant
    digits is a 413.
  - Transfer-Encoding: only a single final C{chunked}; other codings before
    it are a 501, anything else a 400, in requests and responses alike; any
    Transfer-Encoding in an HTTP/1.0 message is a 400.
  - Host: exactly one on HTTP/1.1 requests, at most one on HTTP/1.0; its
    value must be uri-host[:port] without commas.
  - Request targets are visible ASCII in one of the four forms of
    section 3.2, without a fragment; CONNECT needs host:port and no body.
  - Trailers may not carry Content-Length, Transfer-Encoding or Host.
  - Versions other than 1.0 and 1.1 are a 505; statuses outside 100..599
    a 400.
  - Errors in the CLIENT role keep their classifying status (400, 431...)
    but mean 502 to the proxy's own client; a truncated response is 502.
"""

from __future__ import annotations

from meshproxy.http.events import (
    CLIENT,
    NEED_DATA,
    PAUSED,
    SERVER,
    BodyData,
    ConnectionClosed,
    EndOfMessage,
    Event,
    Headers,
    HTTPLimits,
    HTTPParseError,
    RequestHead,
    ResponseHead,
    Role,
    Signal,
)
from meshproxy.http.fields import hopByHopNames
from meshproxy.http.parser import HTTP1Parser, responseHasBody
from meshproxy.http.serialize import (
    REASON_PHRASES,
    checkedLastChunk,
    checkedRequestHead,
    checkedResponseHead,
    checkFields,
    chunk,
    fieldLines,
    lastChunk,
    reasonPhrase,
    requestHead,
    responseHead,
)

__all__ = [
    "BodyData",
    "CLIENT",
    "ConnectionClosed",
    "EndOfMessage",
    "Event",
    "HTTP1Parser",
    "HTTPLimits",
    "HTTPParseError",
    "Headers",
    "NEED_DATA",
    "PAUSED",
    "REASON_PHRASES",
    "RequestHead",
    "ResponseHead",
    "Role",
    "SERVER",
    "Signal",
    "checkFields",
    "checkedLastChunk",
    "checkedRequestHead",
    "checkedResponseHead",
    "chunk",
    "fieldLines",
    "hopByHopNames",
    "lastChunk",
    "reasonPhrase",
    "requestHead",
    "responseHead",
    "responseHasBody",
]
