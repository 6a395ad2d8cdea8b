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
