"""
Every input that two HTTP parsers could read two ways is refused by
L{meshproxy.http.parser.HTTP1Parser} with an exact status and reason, before
any part of the message is handed out; each case fed whole, one byte at a
time and in random splits.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http import CLIENT, SERVER, BodyData, HTTP1Parser, HTTPParseError, RequestHead
from tests.test_http_parser import TranscriptMixin


def request(*fields: bytes, start: bytes = b"POST / HTTP/1.1", body: bytes = b"") -> bytes:
    """
    A request with these raw field lines (a Host first unless C{start} is
    HTTP/1.0 or a field line names one).
    """
    if start.endswith(b"1.1") and not any(f.lower().startswith(b"host:") for f in fields):
        fields = (b"Host: example.com", *fields)
    return start + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


class RejectionMixin(TranscriptMixin):
    """
    Assertions for refused heads.
    """

    def assertHeadRejected(self, data: bytes, status: int, reason: str) -> None:
        """
        Parsing the request C{data} fails with C{status} and C{reason} before
        its head is handed out.
        """
        self.assertEqual(self.assertRejected(SERVER, data, status, reason), [])  # type: ignore[attr-defined]


class FramingTests(RejectionMixin, SynchronousTestCase):
    """
    Content-Length and Transfer-Encoding: only one unambiguous framing.
    """

    def test_contentLengthAndChunked(self) -> None:
        """
        Content-Length with Transfer-Encoding is refused, in either order.
        """
        for fields in [
            (b"Content-Length: 5", b"Transfer-Encoding: chunked"),
            (b"Transfer-Encoding: chunked", b"Content-Length: 5"),
            (b"Transfer-Encoding: chunked", b"Content-Length: 0"),
        ]:
            self.assertHeadRejected(request(*fields), 400, "cl-and-te")

    def test_conflictingContentLength(self) -> None:
        """
        Two different lengths, in two fields or one list, are refused.
        """
        self.assertHeadRejected(
            request(b"Content-Length: 5", b"Content-Length: 6"), 400, "conflicting-content-length"
        )
        self.assertHeadRejected(request(b"Content-Length: 5, 6"), 400, "conflicting-content-length")

    def test_malformedContentLength(self) -> None:
        """
        Anything but digits (signs, hex, spaces inside, empty) is refused.
        """
        for value in [b"abc", b"-1", b"+5", b"0x10", b"5 5", b"1_000", b"", b"5,", b"5.0", b"\xd9\xa5"]:
            self.assertHeadRejected(
                request(b"Content-Length: " + value), 400, "bad-content-length"
            )

    def test_hugeContentLength(self) -> None:
        """
        A length beyond 18 significant digits is refused as too large, while
        leading zeros do not count.
        """
        self.assertHeadRejected(request(b"Content-Length: 1" + b"0" * 18), 413, "body-too-large")
        parser = HTTP1Parser(SERVER)
        parser.feed(request(b"Content-Length: " + b"0" * 30 + b"1"))
        head = parser.nextEvent()
        assert isinstance(head, RequestHead)
        self.assertEqual(head.contentLength, 1)

    def test_chunkedNotLast(self) -> None:
        """
        A Transfer-Encoding whose final coding is not chunked is refused.
        """
        for value in [b"chunked, gzip", b"gzip", b"identity", b"xchunked", b"chunked;q=1", b"chunked-x"]:
            self.assertHeadRejected(
                request(b"Transfer-Encoding: " + value), 400, "te-not-chunked-last"
            )

    def test_chunkedTwice(self) -> None:
        """
        chunked applied twice, in one field or two, is refused.
        """
        self.assertHeadRejected(request(b"Transfer-Encoding: chunked, chunked"), 400, "te-chunked-twice")
        self.assertHeadRejected(
            request(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 400, "te-chunked-twice"
        )

    def test_unknownCoding(self) -> None:
        """
        A coding we do not implement before the final chunked is a 501.
        """
        for value in [b"gzip, chunked", b"foo, chunked", b"identity, chunked"]:
            self.assertHeadRejected(request(b"Transfer-Encoding: " + value), 501, "unknown-te")
        self.assertHeadRejected(
            request(b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"), 501, "unknown-te"
        )

    def test_malformedTransferEncoding(self) -> None:
        """
        Empty list elements and non-tokens in Transfer-Encoding are refused.
        """
        for value in [b"", b", chunked", b"chunked,", b"chun ked", b'"chunked"']:
            self.assertHeadRejected(
                request(b"Transfer-Encoding: " + value), 400, "bad-transfer-encoding"
            )

    def test_transferEncodingInHTTP10(self) -> None:
        """
        Transfer-Encoding in an HTTP/1.0 message is faulty framing.
        """
        self.assertHeadRejected(
            request(b"Transfer-Encoding: chunked", start=b"POST / HTTP/1.0"), 400, "te-in-http10"
        )

    def test_connectWithBody(self) -> None:
        """
        A CONNECT request cannot have a body.
        """
        self.assertHeadRejected(
            request(b"Host: a:1", b"Content-Length: 3", start=b"CONNECT a:1 HTTP/1.1", body=b"abc"),
            400,
            "connect-with-body",
        )


class FieldSyntaxTests(RejectionMixin, SynchronousTestCase):
    """
    Field lines must follow the grammar exactly.
    """

    def test_obsFold(self) -> None:
        """
        A continuation line (obs-fold), with space or tab, is refused.
        """
        self.assertHeadRejected(request(b"X-A: one", b" two"), 400, "obs-fold")
        self.assertHeadRejected(request(b"X-A: one", b"\ttwo"), 400, "obs-fold")

    def test_whitespaceAfterStartLine(self) -> None:
        """
        Whitespace before the first field line is refused too.
        """
        self.assertHeadRejected(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "obs-fold")

    def test_spaceBeforeColon(self) -> None:
        """
        Whitespace between a field name and its colon is refused.
        """
        self.assertHeadRejected(request(b"Content-Length : 5", body=b"abcde"), 400, "space-before-colon")
        self.assertHeadRejected(request(b"Transfer-Encoding\t: chunked"), 400, "space-before-colon")

    def test_bareCR(self) -> None:
        """
        A CR not followed by LF is refused wherever it is.
        """
        self.assertHeadRejected(request(b"X-A: a\rb"), 400, "bare-cr")
        self.assertHeadRejected(b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare-cr")
        self.assertHeadRejected(b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400, "bare-cr")

    def test_bareLF(self) -> None:
        """
        Lines ending in a bare LF are refused (RFC 9112 section 2.2 allows
        accepting them; we do not), even when no CRLF CRLF ever comes.
        """
        self.assertHeadRejected(b"GET / HTTP/1.1\nHost: a\n\n", 400, "bare-lf")
        self.assertHeadRejected(request(b"X-A: a\nX-B: b"), 400, "bare-lf")
        self.assertHeadRejected(b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400, "bare-lf")

    def test_nul(self) -> None:
        """
        NUL is refused in names, values and the request line.
        """
        self.assertHeadRejected(request(b"X-A: a\x00b"), 400, "nul")
        self.assertHeadRejected(request(b"X\x00A: a"), 400, "nul")
        self.assertHeadRejected(b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "nul")

    def test_controlCharactersInValue(self) -> None:
        """
        Other control characters and DEL in a value are refused.
        """
        for char in [b"\x01", b"\x0b", b"\x0c", b"\x1f", b"\x7f"]:
            self.assertHeadRejected(request(b"X-A: a" + char + b"b"), 400, "bad-field-value")

    def test_badTokens(self) -> None:
        """
        Field names and methods must be tokens.
        """
        for name in [b"X@A", b"X(A)", b"X/A", b"\xc3\xa9", b"X\"A", b"X{A}"]:
            self.assertHeadRejected(request(name + b": a"), 400, "bad-token")
        self.assertHeadRejected(request(b": empty name"), 400, "bad-token")
        self.assertHeadRejected(b"G(ET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-token")

    def test_missingColon(self) -> None:
        """
        A field line without a colon is refused.
        """
        self.assertHeadRejected(request(b"X-A a"), 400, "missing-colon")


class RequestLineTests(RejectionMixin, SynchronousTestCase):
    """
    The request line, the version and Host.
    """

    def test_malformed(self) -> None:
        """
        Extra or missing parts, or a lower-case protocol name, are refused.
        """
        for line in [
            b"GET  / HTTP/1.1",
            b"GET / HTTP/1.1 ",
            b" GET / HTTP/1.1",
            b"GET /",
            b"GET / http/1.1",
            b"GET / HTTP/1",
            b"GET / HTTP/1.1x",
        ]:
            self.assertHeadRejected(line + b"\r\nHost: a\r\n\r\n", 400, "bad-request-line")

    def test_badVersion(self) -> None:
        """
        Versions other than 1.0 and 1.1 get 505.
        """
        for version in [b"2.0", b"1.2", b"0.9", b"10.1"]:
            self.assertHeadRejected(b"GET / HTTP/" + version + b"\r\nHost: a\r\n\r\n", 505, "bad-version")

    def test_badTarget(self) -> None:
        """
        Targets outside the four RFC 9112 forms, with a fragment, or with
        bytes beyond visible ASCII are refused.
        """
        for start in [
            b"GET foo HTTP/1.1",
            b"GET /a#frag HTTP/1.1",
            b"GET * HTTP/1.1",
            b"GET /caf\xc3\xa9 HTTP/1.1",
            b"GET /\x7f HTTP/1.1",
            b"CONNECT / HTTP/1.1",
            b"CONNECT example.com HTTP/1.1",
            b"CONNECT :443 HTTP/1.1",
            b"GET ://x/ HTTP/1.1",
        ]:
            self.assertHeadRejected(request(start=start), 400, "bad-target")

    def test_missingHost(self) -> None:
        """
        HTTP/1.1 requires Host.
        """
        self.assertHeadRejected(b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n", 400, "missing-host")
        self.assertHeadRejected(b"GET / HTTP/1.1\r\n\r\n", 400, "missing-host")

    def test_duplicateHost(self) -> None:
        """
        Two Host fields are refused, even with the same value or in HTTP/1.0.
        """
        self.assertHeadRejected(request(b"Host: a", b"host: a"), 400, "duplicate-host")
        self.assertHeadRejected(
            request(b"Host: a", b"Host: b", start=b"GET / HTTP/1.0"), 400, "duplicate-host"
        )

    def test_badHost(self) -> None:
        """
        A Host that is not a uri-host with an optional port is refused.
        """
        for value in [b"a b", b"user@host", b"a/b", b"[::1", b"a:b:c", b"a,b"]:
            self.assertHeadRejected(request(b"Host: " + value), 400, "bad-host")


class ChunkedBodyTests(RejectionMixin, SynchronousTestCase):
    """
    Chunk framing errors are refused after the data that preceded them.
    """

    HEAD = request(b"Transfer-Encoding: chunked")

    def assertChunkedRejected(self, body: bytes, status: int, reason: str) -> list[object]:
        """
        A chunked request with C{body} fails with C{status} and C{reason}
        after its head; return the body data handed out before.
        """
        events = self.assertRejected(SERVER, self.HEAD + body, status, reason)
        self.assertIsInstance(events[0], RequestHead)
        return events[1:]

    def test_malformedChunkSize(self) -> None:
        """
        Chunk sizes must be hex digits and nothing else.
        """
        for line in [b"zz", b"-1", b"0x5", b" 5", b"", b"+5", b"5\x0bx", b"\xef\xbc\x95"]:
            self.assertEqual(
                self.assertChunkedRejected(line + b"\r\nabcde\r\n0\r\n\r\n", 400, "bad-chunk-size"), []
            )

    def test_malformedChunkExtension(self) -> None:
        """
        Chunk extensions must be ;name or ;name=token/quoted-string.
        """
        for line in [b"5;", b"5;=x", b'5;a="open', b"5;a=b c", b"5 ", b"5;a=\x01"]:
            self.assertChunkedRejected(line + b"\r\nabcde\r\n0\r\n\r\n", 400, "bad-chunk-ext")

    def test_hugeChunkSize(self) -> None:
        """
        A chunk size beyond 16 significant hex digits is too large.
        """
        self.assertChunkedRejected(b"1" + b"0" * 16 + b"\r\n", 413, "chunk-too-large")

    def test_missingChunkCRLF(self) -> None:
        """
        Chunk data must be followed by exactly CRLF.
        """
        self.assertEqual(
            self.assertChunkedRejected(b"3\r\nabcd\r\n0\r\n\r\n", 400, "bad-chunk-end"), [BodyData(b"abc")]
        )
        self.assertChunkedRejected(b"3\r\nabc\n0\r\n\r\n", 400, "bad-chunk-end")
        self.assertChunkedRejected(b"3\r\nabc\r\r\n0\r\n\r\n", 400, "bad-chunk-end")

    def test_chunkLineBareLF(self) -> None:
        """
        A chunk-size line ending in a bare LF is refused.
        """
        self.assertChunkedRejected(b"3\nabc\r\n0\r\n\r\n", 400, "bare-lf")
        self.assertChunkedRejected(b"3\r\nabc\r\n0\n\r\n", 400, "bare-lf")

    def test_badTrailers(self) -> None:
        """
        Trailers follow the field grammar.
        """
        self.assertChunkedRejected(b"0\r\nX-A: a\r\n b\r\n\r\n", 400, "obs-fold")
        self.assertChunkedRejected(b"0\r\nX-A : a\r\n\r\n", 400, "space-before-colon")
        self.assertChunkedRejected(b"0\r\nX-A: a\rb\r\n\r\n", 400, "bare-cr")
        self.assertChunkedRejected(b"0\r\nX-A: a\n\r\n", 400, "bare-lf")

    def test_framingTrailers(self) -> None:
        """
        Trailers cannot carry framing or routing fields that a downstream
        might merge into the head.
        """
        for field in [b"Content-Length: 5", b"transfer-encoding: chunked", b"Host: evil"]:
            self.assertChunkedRejected(b"0\r\n" + field + b"\r\n\r\n", 400, "forbidden-trailer")


class ResponseRejectionTests(TranscriptMixin, SynchronousTestCase):
    """
    The same strictness applies to responses from upstreams.
    """

    def assertResponseRejected(self, data: bytes, status: int, reason: str) -> None:
        """
        Parsing the response C{data} to a GET fails before its head.
        """
        self.assertEqual(self.assertRejected(CLIENT, data, status, reason, methods=[b"GET"]), [])

    def test_framing(self) -> None:
        """
        Ambiguous response framing is refused like request framing.
        """
        self.assertResponseRejected(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "cl-and-te"
        )
        self.assertResponseRejected(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            400,
            "conflicting-content-length",
        )
        self.assertResponseRejected(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "te-not-chunked-last"
        )
        self.assertResponseRejected(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", 400, "obs-fold")

    def test_statusLine(self) -> None:
        """
        Status codes are three digits from 100 to 599; versions 1.0 or 1.1.
        """
        for code in [b"2000", b"20", b"099", b"600", b"abc"]:
            self.assertResponseRejected(b"HTTP/1.1 " + code + b" X\r\n\r\n", 400, "bad-status")
        self.assertResponseRejected(b"HTTP/2.0 200 OK\r\n\r\n", 505, "bad-version")
        self.assertResponseRejected(b"HTTP/1.1 200 O\x7fK\r\n\r\n", 400, "bad-status-line")
        self.assertResponseRejected(b"HTTP/1.1  200 OK\r\n\r\n", 400, "bad-status")
        self.assertResponseRejected(b"ICY 200 OK\r\n\r\n", 400, "bad-status-line")

    def test_deadAfterError(self) -> None:
        """
        After an error the parser stays dead: it raises the same error again
        and ignores further input.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(request(b"Content-Length: 1", b"Transfer-Encoding: chunked"))
        error = self.assertRaises(HTTPParseError, parser.nextEvent)
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIs(self.assertRaises(HTTPParseError, parser.nextEvent), error)
        self.assertEqual(parser.bufferedBytes, 0)
        self.assertEqual(str(error), "400 cl-and-te")
