"""
The HTTP/1.1 pull parser for both roles: bytes in through L{HTTP1Parser.feed},
events out of L{HTTP1Parser.nextEvent}.

Heads are found with one C{find} for the empty line and parsed in place with
compiled patterns (L{meshproxy.http.heads}); bodies are read by the states of
L{meshproxy.http.body.BodyParser}.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Final

from meshproxy.http.body import CLOSED, BodyParser, State, take
from meshproxy.http.events import (
    CLIENT,
    NEED_DATA,
    PAUSED,
    SERVER,
    Event,
    HTTPLimits,
    HTTPParseError,
    RequestHead,
    ResponseHead,
    Role,
)
from meshproxy.http.fields import badByteReason
from meshproxy.http.heads import parseRequestHead, parseResponseHead, targetTooLong

_CRLFS: Final = re.compile(rb"(?:\r\n)+")


def responseHasBody(method: bytes, status: int) -> bool:
    """
    Whether a response with C{status} to a C{method} request can carry a
    body at all (RFC 9112 section 6.3): not for HEAD, 1xx, 204, 304, nor a
    2xx answer to CONNECT (the tunnel follows instead).
    """
    if method == b"HEAD" or status < 200 or status == 204 or status == 304:
        return False
    return not (method == b"CONNECT" and status < 300)


class HTTP1Parser(BodyParser):
    """
    A strict, incremental HTTP/1.1 parser for one connection.

    In the L{SERVER} role it parses requests (pipelined ones one after the
    other); in the L{CLIENT} role it parses the responses to the requests
    announced with L{expectResponse}.  Call L{nextEvent} until it returns
    L{NEED_DATA}; not calling it is how the owner applies backpressure (fed
    bytes just stay buffered, see L{bufferedBytes}).

    States (C{_state} holds the method that handles each):
      - C{_readHead}: between messages, waiting for a start line and fields.
      - C{_readLength}, C{_readChunkLine}, C{_readChunkData},
        C{_readChunkEnd}, C{_readTrailers}, C{_readUntilClose}: reading a
        body (see L{BodyParser}).
      - C{_paused}: a head that switches protocols was delivered; waiting
        for L{switchedProtocols} or L{resume}.
      - C{_finished}: the connection cannot carry another message (the last
        one was not keep-alive, or EOF came); input is discarded and
        L{ConnectionClosed} reported once EOF is fed.
      - C{_switched}: the bytes belong to another protocol now.
      - C{_dead}: an L{HTTPParseError} was raised; it is raised again.
    """

    __slots__ = ("_maxURI", "_resumeState", "_tunnel", "_methods")

    def __init__(self, role: Role, limits: HTTPLimits = HTTPLimits()) -> None:
        super().__init__(role, limits)
        self._maxURI = limits.maxURIBytes
        self._resumeState: State = HTTP1Parser._readLength
        self._tunnel = False
        self._methods: deque[bytes] = deque()

    @property
    def role(self) -> Role:
        """
        The role this parser was created for.
        """
        return self._role

    def expectResponse(self, method: bytes) -> None:
        """
        Announce that a request with C{method} was (or is about to be) sent,
        so that its response is framed right.  Responses are matched to
        announcements in order (pipelining).  L{CLIENT} role only.

        Call it before pulling events for that response: bytes from upstream
        while nothing is expected make L{nextEvent} raise 502
        C{unsolicited-response}.
        """
        if self._role is not CLIENT:
            raise RuntimeError("expectResponse() is for the CLIENT role")
        self._methods.append(method)

    def nextEvent(self) -> Event:
        """
        Parse as far as the next event and return it.

        @return: L{RequestHead} or L{ResponseHead}, L{BodyData},
            L{EndOfMessage}, L{ConnectionClosed}, L{NEED_DATA} or L{PAUSED}.
        @raise HTTPParseError: the input is invalid or ambiguous; the parser
            is dead from then on and raises the same error again.
        """
        try:
            return self._state(self)
        except HTTPParseError as e:
            self._error = e
            self._state = HTTP1Parser._dead
            self._feedMode = 1
            self._drop()
            raise

    def switchedProtocols(self) -> bytes:
        """
        Accept the protocol switch the parser is L{PAUSED} on: the parser is
        done, and every byte fed after the head is returned for the relay.
        """
        if self._state is not HTTP1Parser._paused:
            raise RuntimeError("switchedProtocols() outside PAUSED")
        leftover = take(self._buf, self._pos, len(self._buf))
        if self._more:
            leftover = b"".join([leftover, *self._more])
        self._drop()
        self._state = HTTP1Parser._switched
        self._feedMode = 2
        return leftover

    def resume(self) -> None:
        """
        Refuse the protocol switch the parser is L{PAUSED} on and go on in
        HTTP/1.1.  A request's body is then read as its head framed it (a
        refused CONNECT has none, and the connection must close after it).
        In the L{CLIENT} role the response is taken as complete and the
        connection as not reusable.
        """
        if self._state is not HTTP1Parser._paused:
            raise RuntimeError("resume() outside PAUSED")
        if self._tunnel:
            self._keepAlive = False
        self._state = self._resumeState

    def _readHead(self) -> Event:
        buf = self._buf
        pos = self._pos
        if self._role is SERVER:
            if buf.startswith(b"\r\n", pos):
                # RFC 9112 section 2.2: ignore empty lines before a request.
                m = _CRLFS.match(buf, pos)
                assert m is not None
                pos = self._pos = m.end()
                self._scanned = 0
        elif not self._methods:
            if len(buf) > pos or self._more:
                raise HTTPParseError(502, "unsolicited-response")
            return CLOSED if self._eof else NEED_DATA
        scanned = self._scanned
        end = buf.find(b"\r\n\r\n", pos + scanned - 3 if scanned > 3 else pos, pos + self._maxHead)
        if end < 0:
            if self._more:
                self._gather()
                return self._readHead()
            if len(buf) == pos:
                if self._eof:
                    self._state = HTTP1Parser._finished
                    return CLOSED
                return NEED_DATA
            return self._incompleteHead(buf, pos)
        if type(buf) is bytes:
            data = buf
            start = pos
        else:
            data = bytes(memoryview(buf)[pos : end + 4])
            start = 0
            end -= pos
        self._pos = pos + end + 4 - start
        self._scanned = 0
        if self._role is SERVER:
            return self._requestFraming(
                parseRequestHead(data, start, end, self._maxURI, self._maxHeaders)
            )
        return self._responseFraming(parseResponseHead(data, start, end, self._maxHeaders))

    def _incompleteHead(self, buf: bytes | bytearray, pos: int) -> Event:
        available = len(buf) - pos
        if available >= self._maxHead:
            raise self._headTooLarge(buf, pos)
        reason = badByteReason(buf, pos + self._scanned - 1 if self._scanned else pos, len(buf))
        if reason is not None:
            raise HTTPParseError(400, reason)
        self._scanned = available
        if self._eof:
            raise self._truncated("truncated-head")
        return NEED_DATA

    def _headTooLarge(self, buf: bytes | bytearray, pos: int) -> HTTPParseError:
        if self._role is SERVER:
            lineEnd = buf.find(b"\r\n", pos, pos + self._maxHead)
            if lineEnd < 0 or targetTooLong(take(buf, pos, lineEnd), self._maxURI):
                return HTTPParseError(414, "uri-too-long")
        return HTTPParseError(431, "header-too-large")

    def _requestFraming(self, head: RequestHead) -> RequestHead:
        self._keepAlive = head.keepAlive
        if head.chunked:
            state = HTTP1Parser._readChunkLine
        else:
            self._remaining = head.contentLength or 0
            state = HTTP1Parser._readLength
        if head.upgrade is not None or head.method == b"CONNECT":
            self._tunnel = head.method == b"CONNECT"
            self._resumeState = state
            self._state = HTTP1Parser._paused
        else:
            self._state = state
        return head

    def _responseFraming(self, head: ResponseHead) -> ResponseHead:
        status = head.status
        if status < 200 and status != 101:
            # Informational: the final response to the same request follows.
            return head
        method = self._methods.popleft()
        if status == 101 or (method == b"CONNECT" and status < 300):
            head.keepAlive = self._keepAlive = False
            self._tunnel = True
            self._remaining = 0
            self._resumeState = HTTP1Parser._readLength
            self._state = HTTP1Parser._paused
            return head
        if not responseHasBody(method, status):
            self._remaining = 0
            self._state = HTTP1Parser._readLength
        elif head.chunked:
            self._state = HTTP1Parser._readChunkLine
        elif head.contentLength is not None:
            self._remaining = head.contentLength
            self._state = HTTP1Parser._readLength
        else:
            head.keepAlive = False
            self._state = HTTP1Parser._readUntilClose
        self._keepAlive = head.keepAlive
        return head

    def _paused(self) -> Event:
        return PAUSED

    def _switched(self) -> Event:
        raise RuntimeError("nextEvent() after switchedProtocols()")


__all__ = ["HTTP1Parser", "responseHasBody"]
