"""
Transcript tests for responses parsed by L{meshproxy.http.parser.HTTP1Parser}
in the CLIENT role, each also fed one byte at a time and in random splits.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http import CLIENT, PAUSED, BodyData, EndOfMessage
from tests.test_http_parser import CLOSED, END, Switched, TranscriptMixin, drive, resp


class ResponseTranscriptTests(TranscriptMixin, SynchronousTestCase):
    """
    Responses parsed in the CLIENT role.
    """

    def test_contentLength(self) -> None:
        """
        A response with Content-Length is framed by it.
        """
        data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        head = resp(
            200, b"OK", [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")], contentLength=5
        )
        self.assertTranscript(CLIENT, data, [head, BodyData(b"hello"), END], methods=[b"GET"])

    def test_pipelinedWithHead(self) -> None:
        """
        Responses are framed by the method announced for each, in order: a
        response to HEAD has no body whatever its Content-Length says.
        """
        data = (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx"
        )
        self.assertTranscript(
            CLIENT,
            data,
            [
                resp(200, b"OK", [(b"Content-Length", b"2")], contentLength=2),
                BodyData(b"ok"),
                END,
                resp(200, b"OK", [(b"Content-Length", b"1000")], contentLength=1000),
                END,
                resp(404, b"Not Found", [(b"Content-Length", b"1")], contentLength=1),
                BodyData(b"x"),
                END,
            ],
            methods=[b"GET", b"HEAD", b"GET"],
        )

    def test_noBodyStatuses(self) -> None:
        """
        204 and 304 responses have no body, even with framing headers.
        """
        data = (
            b"HTTP/1.1 204 No Content\r\n\r\n"
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: \"x\"\r\n\r\n"
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.assertTranscript(
            CLIENT,
            data,
            [
                resp(204, b"No Content", []),
                END,
                resp(304, b"Not Modified", [(b"Content-Length", b"50"), (b"ETag", b'"x"')], contentLength=50),
                END,
                resp(204, b"No Content", [(b"Transfer-Encoding", b"chunked")], chunked=True),
                END,
            ],
            methods=[b"GET", b"GET", b"DELETE"],
        )

    def test_informational(self) -> None:
        """
        1xx responses come as heads of their own, then the final response to
        the same request.
        """
        data = (
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!"
        )
        self.assertTranscript(
            CLIENT,
            data,
            [
                resp(100, b"Continue", []),
                resp(103, b"Early Hints", [(b"Link", b"</s.css>; rel=preload")]),
                resp(201, b"Created", [(b"Content-Length", b"0")], contentLength=0),
                END,
                resp(200, b"OK", [(b"Content-Length", b"1")], contentLength=1),
                BodyData(b"!"),
                END,
            ],
            methods=[b"PUT", b"GET"],
        )

    def test_closeDelimited(self) -> None:
        """
        A response without Content-Length or chunked runs until EOF, and
        says the connection cannot be reused.
        """
        data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this\r\n\r\nis body"
        head = resp(200, b"OK", [(b"Content-Type", b"text/plain")], keepAlive=False)
        self.assertTranscript(
            CLIENT,
            data,
            [head, BodyData(b"all of this\r\n\r\nis body"), END, CLOSED],
            methods=[b"GET"],
            eof=True,
        )

    def test_closeDelimitedWaitsForEOF(self) -> None:
        """
        Without EOF, a close-delimited body is never complete.
        """
        events, error = drive(CLIENT, [b"HTTP/1.0 200 OK\r\n\r\nabc"], methods=[b"GET"])
        self.assertIsNone(error)
        self.assertEqual(events, [resp(200, b"OK", [], version=b"1.0"), BodyData(b"abc")])

    def test_chunkedTrailers(self) -> None:
        """
        A chunked response hands out its data and trailers.
        """
        data = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"3\r\nabc\r\n1;ext\r\nd\r\n0\r\nX-Sum: 42\r\n\r\n"
        )
        head = resp(
            200, b"OK", [(b"Transfer-Encoding", b"chunked"), (b"Trailer", b"X-Sum")], chunked=True
        )
        self.assertTranscript(
            CLIENT,
            data,
            [head, BodyData(b"abcd"), EndOfMessage([(b"X-Sum", b"42")])],
            methods=[b"GET"],
        )

    def test_switchingProtocols(self) -> None:
        """
        101 pauses the parser; the bytes after it belong to the new protocol.
        """
        data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi"
        head = resp(
            101,
            b"Switching Protocols",
            [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")],
            keepAlive=False,
            connectionTokens=frozenset([b"upgrade"]),
        )
        self.assertTranscript(
            CLIENT, data, [head, PAUSED, Switched(b"\x81\x02hi")], methods=[b"GET"], pauses=["switch"]
        )

    def test_connectEstablished(self) -> None:
        """
        A 2xx answer to CONNECT opens the tunnel: no body, pause, leftover.
        """
        data = b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x03"
        head = resp(200, b"Connection Established", [], keepAlive=False)
        self.assertTranscript(
            CLIENT, data, [head, PAUSED, Switched(b"\x16\x03\x03")], methods=[b"CONNECT"], pauses=["switch"]
        )

    def test_tunnelRefusedByOwner(self) -> None:
        """
        Resuming after a 101 ends the response and the connection with it.
        """
        data = b"HTTP/1.1 101 Switching Protocols\r\n\r\nxyz"
        head = resp(101, b"Switching Protocols", [], keepAlive=False)
        self.assertTranscript(
            CLIENT, data, [head, PAUSED, END, CLOSED], methods=[b"GET"], pauses=["resume"], eof=True
        )

    def test_connectRefused(self) -> None:
        """
        A non-2xx answer to CONNECT is an ordinary response with a body.
        """
        data = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\nnope"
        head = resp(407, b"Proxy Authentication Required", [(b"Content-Length", b"4")], contentLength=4)
        self.assertTranscript(CLIENT, data, [head, BodyData(b"nope"), END], methods=[b"CONNECT"])

    def test_http10Response(self) -> None:
        """
        An HTTP/1.0 response is the last on its connection unless it says
        keep-alive.
        """
        data = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.0 200 OK\r\n\r\n"
        head = resp(200, b"OK", [(b"Content-Length", b"2")], version=b"1.0", contentLength=2)
        self.assertTranscript(
            CLIENT, data, [head, BodyData(b"ok"), END, CLOSED], methods=[b"GET", b"GET"], eof=True
        )
        data = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\nHTTP/1.0 204 \r\n\r\n"
        self.assertTranscript(
            CLIENT,
            data,
            [
                resp(
                    200,
                    b"OK",
                    [(b"Connection", b"keep-alive"), (b"Content-Length", b"0")],
                    version=b"1.0",
                    contentLength=0,
                    keepAlive=True,
                    connectionTokens=frozenset([b"keep-alive"]),
                ),
                END,
                resp(204, b"", [], version=b"1.0"),
                END,
                CLOSED,
            ],
            methods=[b"GET", b"GET"],
            eof=True,
        )

    def test_missingReasonPhrase(self) -> None:
        """
        A status line without a reason phrase (or its space) is accepted.
        """
        data = b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"
        head = resp(200, b"", [(b"Content-Length", b"0")], contentLength=0)
        self.assertTranscript(CLIENT, data, [head, END], methods=[b"GET"])

    def test_closeBeforeResponse(self) -> None:
        """
        EOF before any byte of an expected response is a clean close: the
        owner decides whether the request can be retried.
        """
        self.assertEqual(drive(CLIENT, [], methods=[b"GET"], eof=True), ([CLOSED], None))

    def test_truncated(self) -> None:
        """
        EOF inside a response head or a framed body is a 502.
        """
        self.assertRejected(CLIENT, b"HTTP/1.1 200 OK\r\n", 502, "truncated-head", methods=[b"GET"], eof=True)
        events = self.assertRejected(
            CLIENT,
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
            502,
            "truncated-body",
            methods=[b"GET"],
            eof=True,
        )
        self.assertEqual(events[1:], [BodyData(b"abc")])
        self.assertRejected(
            CLIENT,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            502,
            "truncated-body",
            methods=[b"GET"],
            eof=True,
        )

    def test_unsolicited(self) -> None:
        """
        Bytes from upstream when no response is expected are an error.
        """
        self.assertRejected(CLIENT, b"HTTP/1.1 200 OK\r\n\r\n", 502, "unsolicited-response")
        events = self.assertRejected(
            CLIENT,
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            502,
            "unsolicited-response",
            methods=[b"GET"],
        )
        self.assertEqual(events, [resp(204, b"No Content", []), END])
