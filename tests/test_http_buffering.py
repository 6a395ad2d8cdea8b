"""
How L{meshproxy.http.parser.HTTP1Parser} keeps and hands out bytes: body
data passed through without copies, backpressure by not pulling events, and
the feeding rules around EOF.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http import (
    CLIENT,
    NEED_DATA,
    SERVER,
    BodyData,
    ConnectionClosed,
    EndOfMessage,
    HTTP1Parser,
    RequestHead,
)

POST = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"


class ZeroCopyTests(SynchronousTestCase):
    """
    Body bytes are the fed objects themselves whenever possible.
    """

    def test_wholeChunkIsBody(self) -> None:
        """
        A fed chunk that is all body comes back as the very same object.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(POST)
        self.assertIsInstance(parser.nextEvent(), RequestHead)
        self.assertIs(parser.nextEvent(), NEED_DATA)
        chunks = [b"a" * 40000, b"b" * 40000]
        for data in chunks:
            parser.feed(data)
            event = parser.nextEvent()
            assert isinstance(event, BodyData)
            self.assertIs(event.data, data)

    def test_headAndBodyTogether(self) -> None:
        """
        Body bytes that arrive with the head are handed out as one slice.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(POST + b"x" * 5000)
        parser.nextEvent()
        self.assertEqual(parser.nextEvent(), BodyData(b"x" * 5000))
        self.assertIs(parser.nextEvent(), NEED_DATA)

    def test_bodyEndsInsideChunk(self) -> None:
        """
        When a chunk holds the end of one body and the next request, only
        the body's part is handed out and the rest is parsed next.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
        parser.nextEvent()
        parser.nextEvent()
        parser.feed(b"abcGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(parser.nextEvent(), BodyData(b"abc"))
        self.assertEqual(parser.nextEvent(), EndOfMessage())
        head = parser.nextEvent()
        assert isinstance(head, RequestHead)
        self.assertEqual(head.method, b"GET")

    def test_closeDelimitedPassThrough(self) -> None:
        """
        A close-delimited body is passed through chunk by chunk, unchanged.
        """
        parser = HTTP1Parser(CLIENT)
        parser.expectResponse(b"GET")
        parser.feed(b"HTTP/1.1 200 OK\r\n\r\n")
        parser.nextEvent()
        data = b"z" * 70000
        parser.feed(data)
        event = parser.nextEvent()
        assert isinstance(event, BodyData)
        self.assertIs(event.data, data)


class BackpressureTests(SynchronousTestCase):
    """
    Not calling nextEvent keeps bytes buffered, unprocessed and counted.
    """

    def test_bufferedBytes(self) -> None:
        """
        Every fed byte counts until handed out.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(POST)
        parser.feed(b"a" * 10)
        parser.feed(b"b" * 20)
        self.assertEqual(parser.bufferedBytes, len(POST) + 30)
        parser.nextEvent()
        self.assertEqual(parser.bufferedBytes, 30)
        self.assertEqual(parser.nextEvent(), BodyData(b"a" * 10))
        self.assertEqual(parser.bufferedBytes, 20)
        self.assertEqual(parser.nextEvent(), BodyData(b"b" * 20))
        self.assertEqual(parser.bufferedBytes, 0)

    def test_queuedChunksKeepIdentity(self) -> None:
        """
        Body chunks fed while the owner was not pulling come out as the same
        objects, in order.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(POST)
        chunks = [bytes([65 + i]) * 1000 for i in range(5)]
        for data in chunks:
            parser.feed(data)
        parser.nextEvent()
        for data in chunks:
            event = parser.nextEvent()
            assert isinstance(event, BodyData)
            self.assertIs(event.data, data)

    def test_pipelinedRequestsWait(self) -> None:
        """
        Pipelined requests stay buffered until pulled, however they arrived.
        """
        parser = HTTP1Parser(SERVER)
        request = b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n"
        stream = b"".join(request % i for i in range(3))
        for i in range(0, len(stream), 10):
            parser.feed(stream[i : i + 10])
        self.assertEqual(parser.bufferedBytes, len(stream))
        targets = []
        while (event := parser.nextEvent()) is not NEED_DATA:
            if isinstance(event, RequestHead):
                targets.append(event.target)
        self.assertEqual(targets, [b"/0", b"/1", b"/2"])
        self.assertEqual(parser.bufferedBytes, 0)

    def test_emptyFeed(self) -> None:
        """
        Feeding nothing changes nothing.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(b"")
        self.assertEqual((parser.nextEvent(), parser.bufferedBytes), (NEED_DATA, 0))

    def test_bytesLikeFeed(self) -> None:
        """
        A bytearray or memoryview is taken as bytes (copied, since the
        caller may reuse it).
        """
        parser = HTTP1Parser(SERVER)
        source = bytearray(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        parser.feed(source)  # type: ignore[arg-type]
        source[:3] = b"PUT"
        head = parser.nextEvent()
        assert isinstance(head, RequestHead)
        self.assertEqual(head.method, b"GET")


class EOFTests(SynchronousTestCase):
    """
    Feeding rules around EOF.
    """

    def test_feedAfterEOF(self) -> None:
        """
        Feeding after EOF is a bug in the owner.
        """
        parser = HTTP1Parser(SERVER)
        parser.feedEOF()
        self.assertRaises(RuntimeError, parser.feed, b"x")

    def test_closedIsRepeated(self) -> None:
        """
        Once the connection is closed every call says so.
        """
        parser = HTTP1Parser(SERVER)
        parser.feedEOF()
        self.assertEqual(parser.nextEvent(), ConnectionClosed())
        self.assertEqual(parser.nextEvent(), ConnectionClosed())

    def test_bodyThenEOF(self) -> None:
        """
        EOF after a complete message is a clean close.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
        parser.feedEOF()
        events = [parser.nextEvent() for _ in range(4)]
        self.assertEqual(events[1:], [BodyData(b"x"), EndOfMessage(), ConnectionClosed()])


class TakeBodyTests(SynchronousTestCase):
    """
    L{HTTP1Parser.takeBody} hands out a whole length-framed body in one call when it is already
    buffered, and otherwise changes nothing.
    """

    def test_wholeBody(self) -> None:
        """
        A response whose body arrived with its head: the body, and the parser is between
        messages (a pipelined one after it parses next).
        """
        parser = HTTP1Parser(CLIENT)
        parser.expectResponse(b"GET")
        parser.expectResponse(b"GET")
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(parser.nextEvent().status, 200)  # type: ignore[union-attr]
        self.assertEqual(parser.takeBody(), b"abc")
        self.assertEqual(parser.nextEvent().status, 204)  # type: ignore[union-attr]
        self.assertEqual(parser.takeBody(), b"")
        self.assertIs(parser.nextEvent(), NEED_DATA)
        self.assertEqual(parser.bufferedBytes, 0)

    def test_sameObject(self) -> None:
        """
        A fed chunk that is exactly the body comes back as the same object.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        parser.nextEvent()
        self.assertIsNone(parser.takeBody())
        body = b"hello"
        parser.feed(body)
        self.assertIs(parser.takeBody(), body)

    def test_notWhole(self) -> None:
        """
        A partial body, a chunked one, or no message at all: L{None}, and the events that follow
        are the ones there would have been.
        """
        parser = HTTP1Parser(SERVER)
        self.assertIsNone(parser.takeBody())
        parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
        parser.nextEvent()
        self.assertIsNone(parser.takeBody())
        self.assertEqual(parser.nextEvent(), BodyData(b"ab"))
        parser.feed(b"cde")
        self.assertEqual(parser.takeBody(), b"cde")
        parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n")
        parser.nextEvent()
        self.assertIsNone(parser.takeBody())
        self.assertEqual(parser.nextEvent(), BodyData(b"a"))
        self.assertEqual(parser.nextEvent(), EndOfMessage([]))

    def test_lastMessage(self) -> None:
        """
        The body of a message after which the connection closes: taken, and the parser is
        finished (it reports the close once EOF comes).
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nokGET")
        parser.nextEvent()
        self.assertEqual(parser.takeBody(), b"ok")
        self.assertEqual(parser.bufferedBytes, 0)
        parser.feedEOF()
        self.assertIsInstance(parser.nextEvent(), ConnectionClosed)
