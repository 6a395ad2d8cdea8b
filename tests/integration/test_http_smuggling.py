"""
Request smuggling and malformed requests, end to end: each ambiguous or malformed request is sent
on a raw socket to a real meshproxy, and each test proves three things: the right 4xx (or 501/505)
with the codec's reason in C{x-meshproxy-error}, the client connection closed, and nothing of it
reaching the upstream (a backend that records every byte it receives got none, then a control
request proves that it records).
"""

from __future__ import annotations

from tests.integration.httpbackends import HTTPProxyTestCase
from tests.integration.httpwire import Response, closedByPeer, readResponse

VALID = b"GET /control HTTP/1.1\r\nHost: h\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"


class SmugglingTestCase(HTTPProxyTestCase):
    """
    A meshproxy in front of one recording echo backend; L{reject} sends one bad request and
    L{assertNothingUpstream} checks the backend afterwards.
    """

    def setUp(self) -> None:
        self.recorder = self.backend()
        self.proxy({"backend": [self.recorder.address]})
        self.rejections: dict[str, int] = {}

    def reject(self, request: bytes, status: int, reason: str) -> Response:
        """
        Send C{request} in one write; expect C{status} with C{reason}, C{Connection: close} and the
        connection closed.
        """
        sock, wire = self.rawConnection()
        sock.sendall(request)
        response = readResponse(wire)
        self.assertEqual((response.status, response.header("x-meshproxy-error")), (status, reason), request)
        self.assertIn("close", response.tokens("Connection"), request)
        self.assertTrue(closedByPeer(sock, wire), f"connection left open after {request!r}")
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        return response

    def assertNothingUpstream(self) -> None:
        """
        The backend received no byte of the rejected requests: a control request sent afterwards
        is the first thing it ever received, and each rejection was counted by reason.
        """
        sock, wire = self.rawConnection()
        sock.sendall(VALID)
        self.assertEqual(readResponse(wire).json()["target"], "/control")
        received = self.recorder.rawBytes()
        self.assertEqual(received[: len(b"GET /control HTTP/1.1\r\n")], b"GET /control HTTP/1.1\r\n", received[:500])
        self.assertNotIn(b"smuggled", received)
        self.assertEqual([r.target for r in self.recorder.requests], ["/control"])
        for reason, count in self.rejections.items():
            self.assertEqual(self.stat("http_downstream_rq_rejected_total", listener="web", reason=reason), count)


class FramingTests(SmugglingTestCase):
    """
    Content-Length and Transfer-Encoding: every combination two parsers could read two ways.
    """

    def test_contentLengthAndTransferEncoding(self) -> None:
        """
        CL and TE together (in either order) are refused: 400 C{cl-and-te}.
        """
        self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"0\r\n\r\n" + SMUGGLED, 400, "cl-and-te")
        self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
                    b"0\r\n\r\n" + SMUGGLED, 400, "cl-and-te")
        self.assertNothingUpstream()

    def test_conflictingContentLengths(self) -> None:
        """
        Two different Content-Length values, as two fields or as a list: 400
        C{conflicting-content-length}.
        """
        self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 44\r\n\r\nhello" + SMUGGLED,
                    400, "conflicting-content-length")
        self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 44\r\n\r\nhello" + SMUGGLED,
                    400, "conflicting-content-length")
        self.assertNothingUpstream()

    def test_malformedContentLength(self) -> None:
        """
        A Content-Length that is not a plain decimal number: 400 C{bad-content-length}.
        """
        for value in (b"+5", b"-1", b"0x5", b"5 5", b"5;"):
            self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + value + b"\r\n\r\nhello", 400,
                        "bad-content-length")
        self.assertNothingUpstream()

    def test_transferEncodingNotFinalChunked(self) -> None:
        """
        Transfer-Encoding whose last coding is not C{chunked} (in one field or across two), or
        with C{chunked} twice: 400.
        """
        for te in (b"Transfer-Encoding: chunked, identity", b"Transfer-Encoding: identity",
                   b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity", b"Transfer-Encoding: xchunked"):
            self.reject(b"POST / HTTP/1.1\r\nHost: h\r\n" + te + b"\r\n\r\n0\r\n\r\n" + SMUGGLED, 400,
                        "te-not-chunked-last")
        self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400,
                    "te-chunked-twice")
        self.assertNothingUpstream()

    def test_unknownTransferCoding(self) -> None:
        """
        A coding meshproxy does not implement before the final C{chunked}: 501 C{unknown-te}.
        """
        self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501,
                    "unknown-te")
        self.assertNothingUpstream()

    def test_transferEncodingInHTTP10(self) -> None:
        """
        Transfer-Encoding in an HTTP/1.0 request (which has no chunking): 400 C{te-in-http10}.
        """
        self.reject(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400,
                    "te-in-http10")
        self.assertNothingUpstream()


class ChunkedBodyTests(SmugglingTestCase):
    """
    Malformed chunked bodies.  The whole request is written at once, so the proxy holds the bad
    bytes before any upstream connection is ready: none of the request may be forwarded.
    """

    def test_badChunkSize(self) -> None:
        """
        A chunk-size that is not hex digits: 400 C{bad-chunk-size}.
        """
        for size in (b"ZZ", b"0x5", b"+5", b"-1", b"5x"):
            self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + size
                        + b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 400, "bad-chunk-size")
        self.assertNothingUpstream()

    def test_chunkSizeOverflow(self) -> None:
        """
        A chunk-size of more than 64 bits: 413 C{chunk-too-large}.
        """
        self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1" + b"0" * 16
                    + b"\r\nhello\r\n0\r\n\r\n", 413, "chunk-too-large")
        self.assertNothingUpstream()

    def test_badChunkEnd(self) -> None:
        """
        Chunk data longer than its size (no CRLF where the chunk should end): 400
        C{bad-chunk-end}.
        """
        self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
                    400, "bad-chunk-end")
        self.assertNothingUpstream()

    def test_forbiddenTrailer(self) -> None:
        """
        A trailer that would change framing or routing (Content-Length, Host): 400
        C{forbidden-trailer}.
        """
        for trailer in (b"Content-Length: 5", b"Host: other"):
            self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n" + trailer
                        + b"\r\n\r\n", 400, "forbidden-trailer")
        self.assertNothingUpstream()


class FieldSyntaxTests(SmugglingTestCase):
    """
    Field lines and request lines that lenient parsers repair in different ways.
    """

    def test_obsFold(self) -> None:
        """
        A folded header line (obs-fold), including a folded Transfer-Encoding: 400 C{obs-fold}.
        """
        self.reject(b"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n", 400, "obs-fold")
        self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 3\r\n\r\n"
                    b"0\r\n\r\n", 400, "obs-fold")
        self.assertNothingUpstream()

    def test_whitespaceBeforeColon(self) -> None:
        """
        Whitespace between a field name and its colon: 400 C{space-before-colon}.
        """
        self.reject(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\n"
                    b"0\r\n\r\n", 400, "space-before-colon")
        self.reject(b"GET / HTTP/1.1\r\nHost\t: h\r\n\r\n", 400, "space-before-colon")
        self.assertNothingUpstream()

    def test_bareCR(self) -> None:
        """
        A CR not followed by LF, in a field value or ending a line: 400 C{bare-cr}.
        """
        self.reject(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rX-B: b\r\n\r\n", 400, "bare-cr")
        self.reject(b"GET / HTTP/1.1\rHost: h\r\n\r\n", 400, "bare-cr")
        self.assertNothingUpstream()

    def test_bareLF(self) -> None:
        """
        Lines ending in a bare LF: 400 C{bare-lf}.
        """
        self.reject(b"GET / HTTP/1.1\nHost: h\n\n", 400, "bare-lf")
        self.reject(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nTransfer-Encoding: chunked\r\n\r\n", 400, "bare-lf")
        self.assertNothingUpstream()

    def test_nul(self) -> None:
        """
        A NUL byte in a field value or in the request target: 400 C{nul}.
        """
        self.reject(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", 400, "nul")
        self.reject(b"GET /a\x00b HTTP/1.1\r\nHost: h\r\n\r\n", 400, "nul")
        self.assertNothingUpstream()

    def test_invalidTokens(self) -> None:
        """
        A method or field name with characters outside the token set: 400 C{bad-token}.
        """
        self.reject(b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "bad-token")
        self.reject(b"GET / HTTP/1.1\r\nHost: h\r\nX@Name: 1\r\n\r\n", 400, "bad-token")
        self.reject(b"GET / HTTP/1.1\r\nHost: h\r\n: empty-name\r\n\r\n", 400, "bad-token")
        self.reject(b"GET / HTTP/1.1\r\nHost: h\r\nTransfer Encoding: chunked\r\n\r\n", 400, "bad-token")
        self.assertNothingUpstream()

    def test_missingHost(self) -> None:
        """
        An HTTP/1.1 request without Host: 400 C{missing-host}.
        """
        self.reject(b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400, "missing-host")
        self.assertNothingUpstream()

    def test_repeatedHost(self) -> None:
        """
        Two Host fields, different or equal: 400 C{duplicate-host}.
        """
        self.reject(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400, "duplicate-host")
        self.reject(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n", 400, "duplicate-host")
        self.assertNothingUpstream()

    def test_badHost(self) -> None:
        """
        A Host that is a list or holds characters a host cannot have: 400 C{bad-host}.
        """
        for host in (b"a.example,b.example", b"a b", b"user@a.example"):
            self.reject(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", 400, "bad-host")
        self.assertNothingUpstream()

    def test_badTargetAndVersion(self) -> None:
        """
        A fragment in the target is 400 C{bad-target}; an unknown HTTP version 505
        C{bad-version}.
        """
        self.reject(b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n", 400, "bad-target")
        self.reject(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505, "bad-version")
        self.assertNothingUpstream()


class LimitTests(SmugglingTestCase):
    """
    Oversized heads and targets are refused before routing.
    """

    def test_oversizedHeads(self) -> None:
        """
        A target over 8 KiB is 414 C{uri-too-long}; a head over 64 KiB 431 C{header-too-large};
        more than 100 fields 431 C{too-many-headers}.
        """
        self.reject(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414, "uri-too-long")
        self.reject(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 70000 + b"\r\n\r\n", 431, "header-too-large")
        self.reject(b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
                    431, "too-many-headers")
        self.assertNothingUpstream()


class PipelineTests(SmugglingTestCase):
    """
    A bad request behind a good one on the same connection.
    """

    def test_badRequestAfterGoodOne(self) -> None:
        """
        A valid request followed, in the same write, by a CL+TE request: the first is answered,
        the second refused with 400 and the connection closed; the backend got only the first.
        """
        sock, wire = self.rawConnection()
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n"
                     b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"0\r\n\r\n" + SMUGGLED)
        first = readResponse(wire)
        self.assertEqual((first.status, first.json()["target"]), (200, "/first"))
        second = readResponse(wire)
        self.assertEqual((second.status, second.header("x-meshproxy-error")), (400, "cl-and-te"))
        self.assertTrue(closedByPeer(sock, wire))
        self.assertEqual([r.target for r in self.recorder.requests], ["/first"])
        self.assertNotIn(b"smuggled", self.recorder.rawBytes())
        self.assertEqual(self.recorder.rawBytes().count(b" HTTP/1.1\r\n"), 1)


class AcceptedTests(SmugglingTestCase):
    """
    What the strict parser accepts, forwarded in one normalised form (so the rejection tests
    above are not passing because everything is refused).
    """

    def test_equalContentLengthsNormalised(self) -> None:
        """
        A repeated, equal Content-Length is accepted and forwarded as a single field.
        """
        sock, wire = self.rawConnection()
        sock.sendall(b"POST /same HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")
        response = readResponse(wire)
        self.assertEqual(response.status, 200)
        [request] = self.recorder.requests
        self.assertEqual(request.headerValues("Content-Length"), ["5"])
        self.assertEqual(request.body, b"hello")

    def test_chunkedForwardedCanonically(self) -> None:
        """
        C{Transfer-Encoding: Chunked} with chunk extensions and a trailer is forwarded with one
        lower-case C{chunked} field and the same body.
        """
        sock, wire = self.rawConnection()
        sock.sendall(b"POST /chunks HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
                     b"5;name=value\r\nhello\r\n1\r\n!\r\n0\r\nX-Sum: 6\r\n\r\n")
        response = readResponse(wire)
        self.assertEqual(response.status, 200)
        [request] = self.recorder.requests
        self.assertEqual(request.headerValues("Transfer-Encoding"), ["chunked"])
        self.assertEqual(request.body, b"hello!")
        self.assertEqual(response.json()["bodyLength"], 6)
