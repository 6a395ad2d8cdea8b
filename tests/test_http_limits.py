"""
Size limits of L{meshproxy.http.parser.HTTP1Parser} at their boundaries:
exactly at a limit passes, one byte (or field) over fails with the right
status, however the bytes are cut.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http import CLIENT, SERVER, BodyData, EndOfMessage, HTTPLimits, RequestHead
from tests.test_http_parser import END, TranscriptMixin, drive, req, resp

SMALL = HTTPLimits(maxHeaderBytes=512, maxHeaders=10, maxURIBytes=128, maxChunkLineBytes=64)


def headOfSize(size: int, start: bytes = b"GET / HTTP/1.1") -> bytes:
    """
    A request head of exactly C{size} bytes (start line through the final
    empty line), padded with an X-Pad field.
    """
    fixed = start + b"\r\nHost: a\r\nX-Pad: \r\n\r\n"
    return start + b"\r\nHost: a\r\nX-Pad: " + b"p" * (size - len(fixed)) + b"\r\n\r\n"


def paddedHead(data: bytes) -> RequestHead:
    """
    The head that L{headOfSize} built for C{data}.
    """
    pad = data.split(b"X-Pad: ")[1].split(b"\r\n")[0]
    return req(b"GET", b"/", [(b"Host", b"a"), (b"X-Pad", pad)])


class HeaderSectionTests(TranscriptMixin, SynchronousTestCase):
    """
    maxHeaderBytes and maxHeaders.
    """

    def test_defaultHeadSize(self) -> None:
        """
        The default limit is 64 KiB: a head of exactly 65536 bytes parses,
        one more byte is a 431.
        """
        data = headOfSize(65536)
        self.assertEqual(len(data), 65536)
        self.assertTranscript(SERVER, data, [paddedHead(data), END])
        self.assertEqual(
            self.assertRejected(SERVER, headOfSize(65537), 431, "header-too-large"), []
        )

    def test_headSize(self) -> None:
        """
        A configured limit is applied the same way.
        """
        data = headOfSize(512)
        self.assertTranscript(SERVER, data, [paddedHead(data), END], limits=SMALL)
        self.assertRejected(SERVER, headOfSize(513), 431, "header-too-large", limits=SMALL)

    def test_neverEndingHead(self) -> None:
        """
        A head that never ends fails as soon as the limit is reached, without
        waiting for more.
        """
        start = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
        events, error = drive(SERVER, [start + b"a" * (512 - len(start))], limits=SMALL)
        assert error is not None
        self.assertEqual((events, error.status, error.reason), ([], 431, "header-too-large"))
        events, error = drive(SERVER, [start + b"a" * (511 - len(start))], limits=SMALL)
        self.assertEqual((events, error), ([], None))

    def test_leadingEmptyLinesDoNotCount(self) -> None:
        """
        Empty lines skipped before a request are not part of its head.
        """
        data = headOfSize(512)
        self.assertTranscript(SERVER, b"\r\n" * 300 + data, [paddedHead(data), END], limits=SMALL)

    def test_fieldCount(self) -> None:
        """
        The default allows 100 fields; 101 is a 431.
        """
        fields = b"Host: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99))
        head = req(b"GET", b"/", [(b"Host", b"a")] + [(b"X-%d" % i, b"v") for i in range(99)])
        self.assertTranscript(SERVER, b"GET / HTTP/1.1\r\n" + fields + b"\r\n", [head, END])
        self.assertRejected(
            SERVER, b"GET / HTTP/1.1\r\n" + fields + b"X-Last: v\r\n\r\n", 431, "too-many-headers"
        )

    def test_responseHeadSize(self) -> None:
        """
        Response heads have the same limits.
        """
        fixed = b"HTTP/1.1 204 No Content\r\nX-Pad: \r\n\r\n"
        data = b"HTTP/1.1 204 No Content\r\nX-Pad: " + b"p" * (512 - len(fixed)) + b"\r\n\r\n"
        self.assertEqual(len(data), 512)
        head = resp(204, b"No Content", [(b"X-Pad", b"p" * (512 - len(fixed)))])
        self.assertTranscript(CLIENT, data, [head, END], methods=[b"GET"], limits=SMALL)
        self.assertRejected(
            CLIENT, data[:30] + b"p" + data[30:], 431, "header-too-large", methods=[b"GET"], limits=SMALL
        )
        many = b"HTTP/1.1 204 No Content\r\n" + b"X: v\r\n" * 11 + b"\r\n"
        self.assertRejected(CLIENT, many, 431, "too-many-headers", methods=[b"GET"], limits=SMALL)


class URITests(TranscriptMixin, SynchronousTestCase):
    """
    maxURIBytes.
    """

    def test_defaultURILength(self) -> None:
        """
        The default allows an 8192-byte target; 8193 is a 414.
        """
        target = b"/" + b"u" * 8191
        data = b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"
        self.assertTranscript(SERVER, data, [req(b"GET", target, [(b"Host", b"a")]), END])
        self.assertRejected(
            SERVER, b"GET " + target + b"u HTTP/1.1\r\nHost: a\r\n\r\n", 414, "uri-too-long"
        )

    def test_uriBeyondHeadLimit(self) -> None:
        """
        A target so long that the head cannot fit is still a 414, not a 431,
        whether or not its line has ended.
        """
        limits = HTTPLimits(maxHeaderBytes=256, maxURIBytes=1024)
        line = b"GET /" + b"u" * 300 + b" HTTP/1.1\r\n"
        self.assertRejected(SERVER, line + b"Host: a\r\n\r\n", 414, "uri-too-long", limits=limits)
        events, error = drive(SERVER, [line[:280]], limits=limits)
        assert error is not None
        self.assertEqual((events, error.status, error.reason), ([], 414, "uri-too-long"))

    def test_longFieldsAreNotURI(self) -> None:
        """
        A short target with too large a field section is a 431.
        """
        limits = HTTPLimits(maxHeaderBytes=256, maxURIBytes=1024)
        self.assertRejected(SERVER, headOfSize(257), 431, "header-too-large", limits=limits)


class ChunkLimitTests(TranscriptMixin, SynchronousTestCase):
    """
    maxChunkLineBytes, and trailer sections under the head limits.
    """

    HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    PARSED = req(b"POST", b"/", [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")], chunked=True)

    def chunkLine(self, size: int) -> bytes:
        """
        A chunk-size line for 3 bytes of exactly C{size} bytes with its CRLF.
        """
        return b"3;x=" + b"e" * (size - 6) + b"\r\n"

    def test_chunkLineLength(self) -> None:
        """
        A chunk-size line (with extensions and CRLF) of exactly the limit
        passes; one byte longer is refused.
        """
        line = self.chunkLine(64)
        self.assertEqual(len(line), 64)
        self.assertTranscript(
            SERVER,
            self.HEAD + line + b"abc\r\n0\r\n\r\n",
            [self.PARSED, BodyData(b"abc"), END],
            limits=SMALL,
        )
        self.assertRejected(
            SERVER, self.HEAD + self.chunkLine(65) + b"abc\r\n0\r\n\r\n", 400, "chunk-ext-too-long", limits=SMALL
        )

    def test_neverEndingChunkLine(self) -> None:
        """
        A chunk-size line that has not ended within the limit fails at once.
        """
        events, error = drive(SERVER, [self.HEAD, b"3;x=" + b"e" * 60], limits=SMALL)
        assert error is not None
        self.assertEqual((events, error.status, error.reason), ([self.PARSED], 400, "chunk-ext-too-long"))
        events, error = drive(SERVER, [self.HEAD, b"3;x=" + b"e" * 59], limits=SMALL)
        self.assertEqual((events, error), ([self.PARSED], None))

    def test_defaultChunkLineLength(self) -> None:
        """
        The default chunk-line limit is 4 KiB.
        """
        self.assertTranscript(
            SERVER,
            self.HEAD + self.chunkLine(4096) + b"abc\r\n0\r\n\r\n",
            [self.PARSED, BodyData(b"abc"), END],
        )
        self.assertRejected(
            SERVER, self.HEAD + self.chunkLine(4097) + b"abc\r\n0\r\n\r\n", 400, "chunk-ext-too-long"
        )

    def test_trailerSection(self) -> None:
        """
        A trailer section may be as large as a head and no larger, with as
        many fields.
        """
        fixed = b"X-Pad: \r\n\r\n"
        pad = b"p" * (512 - len(fixed))
        trailers = b"X-Pad: " + pad + b"\r\n\r\n"
        self.assertTranscript(
            SERVER,
            self.HEAD + b"0\r\n" + trailers,
            [self.PARSED, EndOfMessage([(b"X-Pad", pad)])],
            limits=SMALL,
        )
        self.assertRejected(
            SERVER, self.HEAD + b"0\r\nX" + trailers, 431, "header-too-large", limits=SMALL
        )
        self.assertRejected(
            SERVER, self.HEAD + b"0\r\n" + b"T: v\r\n" * 11 + b"\r\n", 431, "too-many-headers", limits=SMALL
        )
