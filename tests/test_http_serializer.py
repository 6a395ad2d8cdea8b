"""
Tests for L{meshproxy.http.serialize} and L{meshproxy.http.fields.hopByHopNames}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http import (
    REASON_PHRASES,
    SERVER,
    HTTP1Parser,
    RequestHead,
    checkedLastChunk,
    checkedRequestHead,
    checkedResponseHead,
    checkFields,
    chunk,
    fieldLines,
    hopByHopNames,
    lastChunk,
    reasonPhrase,
    requestHead,
    responseHead,
    responseHasBody,
)


class HeadTests(SynchronousTestCase):
    """
    Request and response heads.
    """

    def test_requestHead(self) -> None:
        """
        A request head is the request line, one line per field in order with
        C{": "} after the name, and an empty line.
        """
        self.assertEqual(
            requestHead(b"GET", b"/x?y", [(b"Host", b"a"), (b"x-dup", b"1"), (b"X-Dup", b"")]),
            b"GET /x?y HTTP/1.1\r\nHost: a\r\nx-dup: 1\r\nX-Dup: \r\n\r\n",
        )

    def test_requestHeadWithoutFields(self) -> None:
        """
        Without fields the head ends right after the request line.
        """
        self.assertEqual(requestHead(b"GET", b"/", [], b"1.0"), b"GET / HTTP/1.0\r\n\r\n")

    def test_responseHead(self) -> None:
        """
        A response head is the status line, the fields and an empty line.
        """
        self.assertEqual(
            responseHead(404, b"Not Found", [(b"Content-Length", b"0")]),
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        )
        self.assertEqual(responseHead(200, b"OK", [], b"1.0"), b"HTTP/1.0 200 OK\r\n\r\n")

    def test_unusualStatus(self) -> None:
        """
        Statuses without a standard phrase and empty phrases are written as
        given.
        """
        self.assertEqual(responseHead(299, b"", []), b"HTTP/1.1 299 \r\n\r\n")
        self.assertEqual(responseHead(599, b"Custom", [(b"A", b"b")]), b"HTTP/1.1 599 Custom\r\nA: b\r\n\r\n")

    def test_rebuildsParsedRequest(self) -> None:
        """
        A parsed request serialized from its parsed form parses back to the
        same head, with whitespace normalized.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(b"POST /p HTTP/1.1\r\nHost:a\r\nX-A:\t v  \r\nContent-Length: 0\r\n\r\n")
        head = parser.nextEvent()
        assert isinstance(head, RequestHead)
        wire = requestHead(head.method, head.target, head.headers, head.version)
        self.assertEqual(wire, b"POST /p HTTP/1.1\r\nHost: a\r\nX-A: v\r\nContent-Length: 0\r\n\r\n")
        again = HTTP1Parser(SERVER)
        again.feed(wire)
        self.assertEqual(again.nextEvent(), head)

    def test_reasonPhrases(self) -> None:
        """
        Standard phrases are known; unknown statuses get an empty phrase.
        """
        self.assertEqual(reasonPhrase(200), b"OK")
        self.assertEqual(reasonPhrase(431), b"Request Header Fields Too Large")
        self.assertEqual(reasonPhrase(502), b"Bad Gateway")
        self.assertEqual(reasonPhrase(299), b"")
        self.assertEqual(REASON_PHRASES[413], b"Content Too Large")


class ChunkTests(SynchronousTestCase):
    """
    Chunked framing.
    """

    def test_chunk(self) -> None:
        """
        A chunk is its hex size line, the data object itself, and CRLF.
        """
        data = b"x" * 300
        pieces = chunk(data)
        self.assertEqual(pieces, (b"12c\r\n", data, b"\r\n"))
        self.assertIs(pieces[1], data)

    def test_emptyChunk(self) -> None:
        """
        Empty data makes no chunk: an empty chunk would end the body.
        """
        self.assertEqual(chunk(b""), ())

    def test_lastChunk(self) -> None:
        """
        The last chunk carries the trailers, if any.
        """
        self.assertEqual(lastChunk(), b"0\r\n\r\n")
        self.assertEqual(lastChunk([(b"X-Sum", b"1"), (b"B", b"2")]), b"0\r\nX-Sum: 1\r\nB: 2\r\n\r\n")

    def test_fieldLines(self) -> None:
        """
        Field lines each end with CRLF; none makes nothing.
        """
        self.assertEqual(fieldLines([(b"A", b"1"), (b"B", b"2")]), b"A: 1\r\nB: 2\r\n")
        self.assertEqual(fieldLines([]), b"")


class CheckedTests(SynchronousTestCase):
    """
    The checked variants refuse anything that could split a message.
    """

    def test_checkedHeadsAccept(self) -> None:
        """
        Valid parts give the same bytes as the plain functions.
        """
        fields = [(b"Host", b"a"), (b"X-Forwarded-For", b"10.0.0.1, 10.0.0.2"), (b"Empty", b"")]
        self.assertEqual(
            checkedRequestHead(b"GET", b"http://a/b", fields), requestHead(b"GET", b"http://a/b", fields)
        )
        self.assertEqual(
            checkedResponseHead(503, b"Service Unavailable", fields),
            responseHead(503, b"Service Unavailable", fields),
        )
        self.assertEqual(checkedLastChunk([(b"T", b"v")]), lastChunk([(b"T", b"v")]))

    def test_injectionInValues(self) -> None:
        """
        CR, LF, NUL and other controls in values are refused, as are
        surrounding spaces (they would not round-trip).
        """
        for value in [b"a\r\nX-Evil: 1", b"a\nb", b"a\rb", b"a\x00", b"\x7f", b" a", b"a\t", "é"]:
            self.assertRaises(ValueError, checkFields, [(b"X", value)])  # type: ignore[list-item]
            self.assertRaises(ValueError, checkedRequestHead, b"GET", b"/", [(b"X", value)])
            self.assertRaises(ValueError, checkedResponseHead, 200, b"OK", [(b"X", value)])
            self.assertRaises(ValueError, checkedLastChunk, [(b"X", value)])

    def test_badNames(self) -> None:
        """
        Names must be tokens: no colon, space, CRLF or emptiness.
        """
        for name in [b"X:Y", b"X Y", b"X\r\nY", b"", "X"]:
            self.assertRaises(ValueError, checkFields, [(name, b"v")])  # type: ignore[list-item]

    def test_badStartLines(self) -> None:
        """
        Methods, targets, versions, statuses and phrases are checked too.
        """
        self.assertRaises(ValueError, checkedRequestHead, b"G T", b"/", [])
        self.assertRaises(ValueError, checkedRequestHead, b"GET", b"/a b", [])
        self.assertRaises(ValueError, checkedRequestHead, b"GET", b"/\r\nX: y", [])
        self.assertRaises(ValueError, checkedRequestHead, b"GET", b"/#f", [])
        self.assertRaises(ValueError, checkedRequestHead, b"GET", b"/", [], b"2.0")
        self.assertRaises(ValueError, checkedResponseHead, 99, b"X", [])
        self.assertRaises(ValueError, checkedResponseHead, 600, b"X", [])
        self.assertRaises(ValueError, checkedResponseHead, 200, b"OK\r\nX: y", [])
        self.assertRaises(ValueError, checkedResponseHead, 200, b"OK", [], b"1.2")


class ProxyHelperTests(SynchronousTestCase):
    """
    hopByHopNames and responseHasBody.
    """

    def test_hopByHop(self) -> None:
        """
        The standard hop-by-hop names are always there, plus whatever
        Connection names.
        """
        standard = {
            b"connection",
            b"keep-alive",
            b"proxy-connection",
            b"te",
            b"trailer",
            b"transfer-encoding",
            b"upgrade",
        }
        self.assertEqual(hopByHopNames(frozenset()), standard)
        self.assertEqual(hopByHopNames(frozenset([b"x-secret", b"close"])), standard | {b"x-secret", b"close"})

    def test_responseHasBody(self) -> None:
        """
        HEAD, 1xx, 204, 304 and successful CONNECT responses have no body.
        """
        self.assertTrue(responseHasBody(b"GET", 200))
        self.assertTrue(responseHasBody(b"CONNECT", 407))
        self.assertTrue(responseHasBody(b"POST", 205))
        for method, status in [(b"HEAD", 200), (b"GET", 100), (b"GET", 204), (b"GET", 304), (b"CONNECT", 200)]:
            self.assertFalse(responseHasBody(method, status))
