"""
The buffering and body-framing half of the HTTP/1.1 parser: how fed bytes are
kept, and the states that read Content-Length, chunked and close-delimited
bodies.  L{meshproxy.http.parser.HTTP1Parser} adds heads and hand-offs.

Buffering is built so that the usual case copies nothing: a fed chunk is kept
as it is, and body bytes are handed out as the fed object itself (or one slice
of it).  Bytes are only joined when a head, chunk-size line or trailer section
straddles two fed chunks.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Callable, Final

from meshproxy.http.events import (
    CLIENT,
    NEED_DATA,
    BodyData,
    ConnectionClosed,
    EndOfMessage,
    Event,
    Headers,
    HTTPLimits,
    HTTPParseError,
    Role,
)
from meshproxy.http.fields import (
    FORBIDDEN_TRAILERS,
    TOKEN,
    badByteReason,
    fieldSectionError,
    splitFields,
)

_QUOTED: Final = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*"
    + TOKEN
    + rb"+(?:[ \t]*=[ \t]*(?:"
    + TOKEN
    + rb"+|"
    + _QUOTED
    + rb"))?)*"
)
_CHUNK_SIZE: Final = re.compile(rb"[0-9A-Fa-f]+")
CLOSED: Final = ConnectionClosed()

State = Callable[[Any], Event]
"""
A parser state: an unbound method of the parser class, called with the
parser.  (Bound methods stored on the instance would make reference cycles.)
"""


def take(buf: bytes | bytearray, start: int, stop: int) -> bytes:
    """
    C{buf[start:stop]} as L{bytes}; the object itself when that is all of it.
    """
    if type(buf) is bytes:
        return buf[start:stop]
    return bytes(memoryview(buf)[start:stop])


class BodyParser:
    """
    Buffering and body states shared by both roles; see
    L{meshproxy.http.parser.HTTP1Parser} for the whole state list.

    Body states (C{_state} holds the method that handles each):
      - C{_readLength}: a Content-Length body, C{_remaining} bytes to go; at
        zero it ends the message.
      - C{_readChunkLine}, C{_readChunkData}, C{_readChunkEnd},
        C{_readTrailers}: the parts of a chunked body.
      - C{_readUntilClose}: a close-delimited response body (until EOF).
      - C{_finished}: the connection cannot carry another message; input is
        discarded and L{ConnectionClosed} reported once EOF is fed.
      - C{_dead}: an L{HTTPParseError} was raised; it is raised again.
    """

    __slots__ = (
        "_role",
        "_maxHead",
        "_maxHeaders",
        "_maxChunkLine",
        "_buf",
        "_pos",
        "_more",
        "_moreBytes",
        "_scanned",
        "_eof",
        "_feedMode",
        "_state",
        "_remaining",
        "_keepAlive",
        "_error",
    )

    def __init__(self, role: Role, limits: HTTPLimits) -> None:
        self._role = role
        self._maxHead = limits.maxHeaderBytes
        self._maxHeaders = limits.maxHeaders
        self._maxChunkLine = limits.maxChunkLineBytes
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._more: deque[bytes] = deque()
        self._moreBytes = 0
        # How much of the incomplete head (or trailers, or chunk line) at
        # _pos was already searched, so trickled input is scanned once.
        self._scanned = 0
        self._eof = False
        # 0: buffer fed bytes; 1: discard them; 2: feeding is a bug.
        self._feedMode = 0
        self._state: State = type(self)._readHead
        self._remaining = 0
        self._keepAlive = True
        self._error: HTTPParseError | None = None

    @property
    def bufferedBytes(self) -> int:
        """
        How many fed bytes have not been handed out yet.
        """
        return len(self._buf) - self._pos + self._moreBytes

    def feed(self, data: bytes) -> None:
        """
        Add bytes received from the peer.  The object is kept (not copied)
        and may be handed out again as L{BodyData}.

        @raise RuntimeError: after L{feedEOF} or L{switchedProtocols}.
        """
        if self._feedMode:
            if self._feedMode == 2:
                raise RuntimeError("feed() after EOF or protocol switch")
            return
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        if self._more or self._pos != len(self._buf):
            self._more.append(data)
            self._moreBytes += len(data)
        else:
            self._buf = data
            self._pos = 0

    def feedEOF(self) -> None:
        """
        The peer closed its sending side; no more bytes will be fed.
        """
        self._eof = True
        if self._feedMode == 0:
            self._feedMode = 2

    def _readHead(self) -> Event:
        """
        The state between messages; the subclass parses heads.
        """
        raise NotImplementedError()

    def _drop(self) -> None:
        self._buf = b""
        self._pos = 0
        self._more.clear()
        self._moreBytes = 0

    def _gather(self) -> None:
        """
        Make C{_buf[_pos:]} hold everything buffered, contiguously.
        """
        more = self._more
        buf = self._buf
        pos = self._pos
        if pos == len(buf):
            first = more.popleft()
            if not more:
                self._buf = first
                self._pos = 0
                self._moreBytes = 0
                return
            merged = bytearray(first)
        elif type(buf) is bytearray:
            merged = buf
            del merged[:pos]
        else:
            merged = bytearray(memoryview(buf)[pos:])
        for data in more:
            merged += data
        more.clear()
        self._moreBytes = 0
        self._buf = merged
        self._pos = 0

    def _endMessage(self, trailers: Headers | None) -> EndOfMessage:
        self._ended()
        return EndOfMessage(trailers)

    def _ended(self) -> None:
        self._scanned = 0
        if self._keepAlive:
            self._state = type(self)._readHead
        else:
            self._state = BodyParser._finished
            self._feedMode = 2 if self._eof else 1
            self._drop()

    def takeBody(self) -> bytes | None:
        """
        Take the rest of the current message's body at once when it is framed by a length (or
        empty) and already buffered whole in the current chunk, and end the message: what the
        L{BodyData} (if any) and L{EndOfMessage} events would have carried, in one call.  Else
        L{None}, and nothing changes: pull events as usual.

        This is the common case of a small message that arrived in one read, without an event
        object per part.
        """
        if self._state is not BodyParser._readLength:
            return None
        remaining = self._remaining
        buf = self._buf
        pos = self._pos
        if remaining == 0:
            data = b""
        elif len(buf) - pos < remaining:
            return None
        else:
            data = take(buf, pos, pos + remaining)
            self._remaining = 0
            if len(buf) == pos + remaining:
                self._buf = b""
                self._pos = 0
            else:
                self._pos = pos + remaining
        self._ended()
        return data

    def _truncated(self, what: str) -> HTTPParseError:
        return HTTPParseError(502 if self._role is CLIENT else 400, what)

    def _nextBuffer(self) -> bool:
        """
        Move to the next fed chunk once the current one is used up.
        """
        if not self._more:
            return False
        data = self._buf = self._more.popleft()
        self._moreBytes -= len(data)
        self._pos = 0
        return True

    def _body(self, remaining: int) -> bytes | None:
        """
        Take up to C{remaining} body bytes from the current chunk.
        """
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available == 0:
            if not self._nextBuffer():
                return None
            buf = self._buf
            pos = 0
            available = len(buf)
        if available <= remaining:
            data = take(buf, pos, len(buf))
            self._buf = b""
            self._pos = 0
            self._remaining = remaining - available
        else:
            data = take(buf, pos, pos + remaining)
            self._pos = pos + remaining
            self._remaining = 0
        return data

    def _readLength(self) -> Event:
        remaining = self._remaining
        if remaining == 0:
            return self._endMessage(None)
        data = self._body(remaining)
        if data is None:
            if self._eof:
                raise self._truncated("truncated-body")
            return NEED_DATA
        return BodyData(data)

    def _readUntilClose(self) -> Event:
        buf = self._buf
        if len(buf) == self._pos and not self._nextBuffer():
            if self._eof:
                return self._endMessage(None)
            return NEED_DATA
        data = take(self._buf, self._pos, len(self._buf))
        self._buf = b""
        self._pos = 0
        return BodyData(data)

    def _readChunkLine(self) -> Event:
        buf = self._buf
        pos = self._pos
        limit = self._maxChunkLine
        scanned = self._scanned
        lineEnd = buf.find(b"\r\n", pos + scanned - 1 if scanned else pos, pos + limit)
        if lineEnd < 0:
            if self._more:
                self._gather()
                return self._readChunkLine()
            available = len(buf) - pos
            reason = badByteReason(buf, pos + scanned - 1 if scanned else pos, len(buf))
            if reason is not None:
                raise HTTPParseError(400, reason)
            if available >= limit:
                raise HTTPParseError(400, "chunk-ext-too-long")
            if self._eof:
                raise self._truncated("truncated-body")
            self._scanned = available
            return NEED_DATA
        m = _CHUNK_LINE.fullmatch(buf, pos, lineEnd)
        if m is None:
            raise self._chunkLineError(buf, pos, lineEnd)
        digits = m.group(1)
        if len(digits) > 16:
            digits = digits.lstrip(b"0")
            if len(digits) > 16:
                raise HTTPParseError(413, "chunk-too-large")
        size = int(digits, 16)
        self._pos = lineEnd + 2
        self._scanned = 0
        if size == 0:
            self._state = BodyParser._readTrailers
            return self._readTrailers()
        self._remaining = size
        self._state = BodyParser._readChunkData
        return self._readChunkData()

    def _chunkLineError(self, buf: bytes | bytearray, pos: int, lineEnd: int) -> HTTPParseError:
        reason = badByteReason(buf, pos, lineEnd)
        if reason is not None:
            return HTTPParseError(400, reason)
        m = _CHUNK_SIZE.match(buf, pos, lineEnd)
        if m is None or buf[m.end() : m.end() + 1] not in (b";", b" ", b"\t"):
            return HTTPParseError(400, "bad-chunk-size")
        return HTTPParseError(400, "bad-chunk-ext")

    def _readChunkData(self) -> Event:
        data = self._body(self._remaining)
        if data is None:
            if self._eof:
                raise self._truncated("truncated-body")
            return NEED_DATA
        if self._remaining == 0:
            self._state = BodyParser._readChunkEnd
        return BodyData(data)

    def _readChunkEnd(self) -> Event:
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available < 2 and self._more:
            self._gather()
            return self._readChunkEnd()
        if available >= 2:
            if not buf.startswith(b"\r\n", pos):
                raise HTTPParseError(400, "bad-chunk-end")
            self._pos = pos + 2
            self._state = BodyParser._readChunkLine
            return self._readChunkLine()
        if available == 1 and buf[pos] != 13:
            raise HTTPParseError(400, "bad-chunk-end")
        if self._eof:
            raise self._truncated("truncated-body")
        return NEED_DATA

    def _readTrailers(self) -> Event:
        buf = self._buf
        pos = self._pos
        if buf.startswith(b"\r\n", pos):
            self._pos = pos + 2
            return self._endMessage(None)
        scanned = self._scanned
        end = buf.find(b"\r\n\r\n", pos + scanned - 3 if scanned > 3 else pos, pos + self._maxHead)
        if end < 0:
            if self._more:
                self._gather()
                return self._readTrailers()
            available = len(buf) - pos
            if available >= self._maxHead:
                raise HTTPParseError(431, "header-too-large")
            reason = badByteReason(buf, pos + scanned - 1 if scanned else pos, len(buf))
            if reason is not None:
                raise HTTPParseError(400, reason)
            if self._eof:
                raise self._truncated("truncated-body")
            self._scanned = available
            return NEED_DATA
        section = take(buf, pos, end + 2)
        trailers = splitFields(section)
        if trailers is None:
            raise fieldSectionError(section)
        if len(trailers) > self._maxHeaders:
            raise HTTPParseError(431, "too-many-headers")
        if not FORBIDDEN_TRAILERS.isdisjoint([name.lower() for name, _ in trailers]):
            raise HTTPParseError(400, "forbidden-trailer")
        self._pos = end + 4
        self._scanned = 0
        return self._endMessage(trailers)

    def _finished(self) -> Event:
        return CLOSED if self._eof else NEED_DATA

    def _dead(self) -> Event:
        assert self._error is not None
        raise self._error
