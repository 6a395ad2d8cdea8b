"""
Transcript tests for L{meshproxy.http.parser.HTTP1Parser}: every feature on
exact bytes, each transcript also fed one byte at a time and in random splits.

The driving helpers at the top are shared by the other C{test_http_*} modules.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import attrs
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http import (
    NEED_DATA,
    PAUSED,
    SERVER,
    BodyData,
    ConnectionClosed,
    EndOfMessage,
    HTTP1Parser,
    HTTPLimits,
    HTTPParseError,
    RequestHead,
    ResponseHead,
    Role,
)


@attrs.frozen
class Switched:
    """
    Transcript marker: the owner accepted a protocol switch and got
    C{leftover} (what the parser held plus every byte fed after it).
    """

    leftover: bytes


def drive(
    role: Role,
    chunks: Iterable[bytes],
    methods: Sequence[bytes] = (),
    eof: bool = False,
    pauses: Sequence[str] = (),
    limits: HTTPLimits = HTTPLimits(),
) -> tuple[list[object], HTTPParseError | None]:
    """
    Feed C{chunks} one by one, draining events after each, and return the
    events (consecutive L{BodyData} joined) and the error that stopped
    parsing, if any.

    @param methods: announced with C{expectResponse} before anything is fed.
    @param eof: call C{feedEOF} after the last chunk and drain again.
    @param pauses: what to do at each L{PAUSED}, in order: C{"switch"}
        (records L{Switched} and stops) or C{"resume"}.
    """
    parser = HTTP1Parser(role, limits)
    for method in methods:
        parser.expectResponse(method)
    events: list[object] = []
    actions = list(pauses)
    pending = [c for c in chunks if c]

    def drain() -> str:
        while True:
            event = parser.nextEvent()
            if event is NEED_DATA:
                return "more"
            if event is PAUSED:
                events.append(PAUSED)
                if actions.pop(0) == "switch":
                    return "switched"
                parser.resume()
                continue
            if isinstance(event, BodyData):
                assert type(event.data) is bytes and event.data
                if events and isinstance(events[-1], BodyData):
                    event = BodyData(events[-1].data + event.data)
                    events.pop()
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return "closed"

    try:
        while pending:
            parser.feed(pending.pop(0))
            if drain() == "switched":
                events.append(Switched(parser.switchedProtocols() + b"".join(pending)))
                return events, None
        if eof:
            parser.feedEOF()
            if drain() == "switched":
                events.append(Switched(parser.switchedProtocols()))
    except HTTPParseError as e:
        return events, e
    return events, None


def splits(data: bytes, seed: int = 0) -> list[list[bytes]]:
    """
    Ways to cut C{data} into fed chunks: whole, one byte at a time, and a few
    random cuttings (deterministic per seed).
    """
    rng = random.Random(seed)
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    for _ in range(4):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8))))
        edges = [0, *cuts, len(data)]
        ways.append([data[a:b] for a, b in zip(edges, edges[1:])])
    return ways


class TranscriptMixin:
    """
    Assertions that run one transcript under every way of cutting its bytes.
    """

    def assertTranscript(
        self, role: Role, data: bytes, expected: list[object], **kwargs: object
    ) -> None:
        """
        Parsing C{data} gives exactly C{expected}, however it is cut.
        """
        for chunks in splits(data):
            events, error = drive(role, chunks, **kwargs)  # type: ignore[arg-type]
            self.assertIsNone(error, f"cut as {[len(c) for c in chunks]}")  # type: ignore[attr-defined]
            self.assertEqual(events, expected, f"cut as {[len(c) for c in chunks]}")  # type: ignore[attr-defined]

    def assertRejected(
        self, role: Role, data: bytes, status: int, reason: str, **kwargs: object
    ) -> list[object]:
        """
        Parsing C{data} fails with exactly C{status} and C{reason}, however it
        is cut, after the same events; return those events.
        """
        first: list[object] | None = None
        for chunks in splits(data):
            events, error = drive(role, chunks, **kwargs)  # type: ignore[arg-type]
            where = f"cut as {[len(c) for c in chunks]}"
            self.assertIsNotNone(error, where)  # type: ignore[attr-defined]
            assert error is not None
            self.assertEqual((error.status, error.reason), (status, reason), where)  # type: ignore[attr-defined]
            if first is None:
                first = events
            self.assertEqual(events, first, where)  # type: ignore[attr-defined]
        assert first is not None
        return first


def req(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    version: bytes = b"1.1",
    **derived: object,
) -> RequestHead:
    """
    The L{RequestHead} expected for these fields; C{host} defaults to the
    Host header and C{keepAlive} to the version's default.
    """
    hosts = [v for n, v in headers if n.lower() == b"host"]
    derived.setdefault("host", hosts[0] if hosts else None)
    derived.setdefault("keepAlive", version == b"1.1")
    return RequestHead(method, target, version, headers, **derived)  # type: ignore[arg-type]


def resp(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    version: bytes = b"1.1",
    **derived: object,
) -> ResponseHead:
    """
    The L{ResponseHead} expected for these fields.
    """
    derived.setdefault("keepAlive", version == b"1.1")
    return ResponseHead(status, reason, version, headers, **derived)  # type: ignore[arg-type]


END = EndOfMessage([])
CLOSED = ConnectionClosed()
GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
GET_HEAD = req(b"GET", b"/", [(b"Host", b"example.com")])


class RequestTranscriptTests(TranscriptMixin, SynchronousTestCase):
    """
    Requests parsed in the SERVER role.
    """

    def test_simpleGet(self) -> None:
        """
        A GET yields its head with every field, in order and case as
        received, then the end of the message.
        """
        data = (
            b"GET /a/b?c=d HTTP/1.1\r\n"
            b"Host: example.com:8080\r\n"
            b"User-Agent: curl/8.0\r\n"
            b"accept: */*\r\n"
            b"X-Dup: 1\r\n"
            b"x-dup: 2\r\n"
            b"\r\n"
        )
        head = req(
            b"GET",
            b"/a/b?c=d",
            [
                (b"Host", b"example.com:8080"),
                (b"User-Agent", b"curl/8.0"),
                (b"accept", b"*/*"),
                (b"X-Dup", b"1"),
                (b"x-dup", b"2"),
            ],
        )
        self.assertTranscript(SERVER, data, [head, END])

    def test_fieldValueWhitespace(self) -> None:
        """
        Whitespace around a value is not part of it, inner whitespace is, an
        empty value is allowed, and obs-text bytes pass through.
        """
        data = (
            b"GET / HTTP/1.1\r\nHost: h\r\n"
            b"A:\t  spaced  out \t\r\n"
            b"B:\r\n"
            b"C: \t \r\n"
            b"D: caf\xc3\xa9\r\n\r\n"
        )
        head = req(
            b"GET",
            b"/",
            [(b"Host", b"h"), (b"A", b"spaced  out"), (b"B", b""), (b"C", b""), (b"D", b"caf\xc3\xa9")],
        )
        self.assertTranscript(SERVER, data, [head, END])

    def test_contentLengthBody(self) -> None:
        """
        A Content-Length body is handed out whole and exactly.
        """
        data = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world"
        head = req(
            b"POST", b"/upload", [(b"Host", b"h"), (b"Content-Length", b"11")], contentLength=11
        )
        self.assertTranscript(SERVER, data, [head, BodyData(b"hello world"), END])

    def test_zeroContentLength(self) -> None:
        """
        C{Content-Length: 0} ends the message right after the head.
        """
        data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n" + GET
        head = req(b"POST", b"/", [(b"Host", b"h"), (b"Content-Length", b"0")], contentLength=0)
        self.assertTranscript(SERVER, data, [head, END, GET_HEAD, END])

    def test_identicalContentLengths(self) -> None:
        """
        Repeated Content-Length fields and lists naming the same length are
        one length (RFC 9112 section 6.3).
        """
        data = (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\ncontent-length: 3, 003\r\n\r\nabc"
        )
        head = req(
            b"POST",
            b"/",
            [(b"Host", b"h"), (b"Content-Length", b"3"), (b"content-length", b"3, 003")],
            contentLength=3,
        )
        self.assertTranscript(SERVER, data, [head, BodyData(b"abc"), END])

    def test_chunkedWithExtensionsAndTrailers(self) -> None:
        """
        Chunk extensions are accepted and dropped, chunk data is handed out
        in order, and trailer fields come with the end of the message.
        """
        data = (
            b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
            b"4;name=value\r\nWiki\r\n"
            b'5 ; q="a \\"b\\"" ;flag\r\npedia\r\n'
            b"E\r\n in\r\n\r\nchunks.\r\n"
            b"000;last\r\n"
            b"Expires: never\r\n"
            b"X-Checksum:  abc \r\n"
            b"\r\n"
        )
        head = req(b"POST", b"/c", [(b"Host", b"h"), (b"Transfer-Encoding", b"Chunked")], chunked=True)
        self.assertTranscript(
            SERVER,
            data,
            [
                head,
                BodyData(b"Wikipedia in\r\n\r\nchunks."),
                EndOfMessage([(b"Expires", b"never"), (b"X-Checksum", b"abc")]),
            ],
        )

    def test_chunkedWithoutTrailers(self) -> None:
        """
        An empty chunked body ends at C{0 CRLF CRLF}, and the next pipelined
        request follows.
        """
        data = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + GET
        head = req(b"POST", b"/", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")], chunked=True)
        self.assertTranscript(SERVER, data, [head, END, GET_HEAD, END])

    def test_pipelined(self) -> None:
        """
        Several requests arriving together are parsed one after the other,
        each body framed by its own head.
        """
        data = (
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n12345"
            b"PUT /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
            b"DELETE /4 HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        self.assertTranscript(
            SERVER,
            data,
            [
                req(b"GET", b"/1", [(b"Host", b"h")]),
                END,
                req(b"POST", b"/2", [(b"Host", b"h"), (b"Content-Length", b"5")], contentLength=5),
                BodyData(b"12345"),
                END,
                req(b"PUT", b"/3", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")], chunked=True),
                BodyData(b"ab"),
                END,
                req(b"DELETE", b"/4", [(b"Host", b"h")]),
                END,
            ],
        )

    def test_leadingEmptyLines(self) -> None:
        """
        Empty lines before a request line are ignored (RFC 9112 section 2.2),
        as some clients send one after a body.
        """
        self.assertTranscript(SERVER, b"\r\n\r\n" + GET + b"\r\n" + GET, [GET_HEAD, END, GET_HEAD, END])

    def test_expectContinue(self) -> None:
        """
        C{Expect: 100-continue} is reported (case-insensitively) so the owner
        can answer 100 before the body arrives.
        """
        data = b"PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\nok"
        head = req(
            b"PUT",
            b"/f",
            [(b"Host", b"h"), (b"Expect", b"100-Continue"), (b"Content-Length", b"2")],
            contentLength=2,
            expectContinue=True,
        )
        self.assertTranscript(SERVER, data, [head, BodyData(b"ok"), END])

    def test_otherExpectation(self) -> None:
        """
        Any other expectation is not 100-continue; the field is kept for the
        owner to answer 417 if it likes.
        """
        data = b"PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue-ish\r\n\r\n"
        head = req(b"PUT", b"/f", [(b"Host", b"h"), (b"Expect", b"100-continue-ish")])
        self.assertTranscript(SERVER, data, [head, END])
        self.assertFalse(head.expectContinue)

    def test_expectContinueIgnoredInHTTP10(self) -> None:
        """
        An HTTP/1.0 client cannot expect 100-continue (RFC 9110 10.1.1).
        """
        data = b"PUT /f HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"
        head = req(b"PUT", b"/f", [(b"Expect", b"100-continue")], version=b"1.0")
        self.assertTranscript(SERVER, data, [head, END])
        self.assertFalse(head.expectContinue)

    def test_targetForms(self) -> None:
        """
        Absolute-form, asterisk-form (OPTIONS) and authority-form (CONNECT)
        targets are accepted as they are.
        """
        data = (
            b"GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n"
            b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        self.assertTranscript(
            SERVER,
            data,
            [
                req(b"GET", b"http://example.com/x?y", [(b"Host", b"example.com")]),
                END,
                req(b"OPTIONS", b"*", [(b"Host", b"example.com")]),
                END,
            ],
        )

    def test_http10NotKeepAlive(self) -> None:
        """
        An HTTP/1.0 request without keep-alive needs no Host, and is the last
        one on its connection: bytes after it are discarded, and EOF is
        reported as a clean close.
        """
        data = b"GET /old HTTP/1.0\r\nUser-Agent: x\r\n\r\n" + GET
        head = req(b"GET", b"/old", [(b"User-Agent", b"x")], version=b"1.0", keepAlive=False)
        self.assertTranscript(SERVER, data, [head, END])
        self.assertTranscript(SERVER, data, [head, END, CLOSED], eof=True)
        parser = HTTP1Parser(SERVER)
        parser.feed(data)
        self.assertEqual([parser.nextEvent(), parser.nextEvent()], [head, END])
        self.assertEqual(parser.bufferedBytes, 0)
        parser.feed(GET)
        self.assertEqual((parser.nextEvent(), parser.bufferedBytes), (NEED_DATA, 0))

    def test_http10KeepAlive(self) -> None:
        """
        HTTP/1.0 with C{Connection: keep-alive} keeps the connection for the
        next request.
        """
        data = b"GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n" + GET
        head = req(
            b"GET",
            b"/a",
            [(b"Connection", b"Keep-Alive")],
            version=b"1.0",
            keepAlive=True,
            connectionTokens=frozenset([b"keep-alive"]),
        )
        self.assertTranscript(SERVER, data, [head, END, GET_HEAD, END])

    def test_connectionClose(self) -> None:
        """
        C{Connection: close} on HTTP/1.1 makes the request the last one; a
        request pipelined after it is not parsed (RFC 9112 section 9.6).
        """
        data = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n" + GET
        head = req(
            b"GET",
            b"/",
            [(b"Host", b"h"), (b"Connection", b"keep-alive, Close")],
            keepAlive=False,
            connectionTokens=frozenset([b"keep-alive", b"close"]),
        )
        self.assertTranscript(SERVER, data, [head, END, CLOSED], eof=True)

    def test_connectionTokens(self) -> None:
        """
        Connection options from every Connection field are collected
        lower-cased, ignoring empty list elements.
        """
        data = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Foo,, TE\r\nconnection: x-bar\r\n\r\n"
        head = req(
            b"GET",
            b"/",
            [(b"Host", b"h"), (b"Connection", b"X-Foo,, TE"), (b"connection", b"x-bar")],
            connectionTokens=frozenset([b"x-foo", b"te", b"x-bar"]),
        )
        self.assertTranscript(SERVER, data, [head, END])

    def test_cleanClose(self) -> None:
        """
        EOF between requests is a clean close.
        """
        self.assertTranscript(SERVER, GET, [GET_HEAD, END, CLOSED], eof=True)

    def test_closeBeforeAnything(self) -> None:
        """
        EOF on a connection that sent nothing is a clean close too.
        """
        events, error = drive(SERVER, [], eof=True)
        self.assertEqual((events, error), ([CLOSED], None))

    def test_truncatedHead(self) -> None:
        """
        EOF in the middle of a head is an error: the request is incomplete.
        """
        self.assertRejected(SERVER, b"GET / HTTP/1.1\r\nHo", 400, "truncated-head", eof=True)

    def test_truncatedBody(self) -> None:
        """
        EOF before the end of a Content-Length or chunked body is an error
        after the data that did arrive.
        """
        events = self.assertRejected(
            SERVER,
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",
            400,
            "truncated-body",
            eof=True,
        )
        self.assertEqual(events[1:], [BodyData(b"abc")])
        events = self.assertRejected(
            SERVER,
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
            400,
            "truncated-body",
            eof=True,
        )
        self.assertEqual(events[1:], [BodyData(b"abc")])

    def test_headerValues(self) -> None:
        """
        C{headerValues} finds every value of a name whatever its case.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\nVia: a\r\nX: 1\r\nVIA: b\r\n\r\n")
        head = parser.nextEvent()
        assert isinstance(head, RequestHead)
        self.assertEqual(head.headerValues(b"via"), [b"a", b"b"])
        self.assertEqual(head.headerValues(b"Missing"), [])
