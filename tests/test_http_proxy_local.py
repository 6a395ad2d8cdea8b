"""
Tests for L{meshproxy.proxy.http}: answers meshproxy makes itself (routing outcomes, malformed
requests, limits), draining, and read flow control.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.proxy.httpsettings import HTTPSettings
from tests.proxyharness import OK, ONE_HOST, ProxyHarness, errorReply, forwarded, request

ENTRIES: list[dict[str, Any]] = [
    {"match": {"prefix": "/api"}, "route": {"cluster_name": "backend", "timeout": "2s"}},
    {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": "hi"}},
    {"match": {"prefix": "/old"}, "redirect": {"path_redirect": "/new", "response_code": 302}},
]
NOT_FOUND = errorReply(b"404 Not Found", b"no_route")


class LocalReplyTests(ProxyHarness, SynchronousTestCase):
    """
    404s, direct responses and redirects: keep-alive for bodyless requests, close otherwise.
    """

    def setUp(self) -> None:
        self.setUpProxy(ENTRIES, clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()

    def test_noRoute(self) -> None:
        """
        A request no route matches gets a 404 naming the reason; the connection stays open for the
        next request, which is served; the local reply is counted.
        """
        self.client.deliver(request(target=b"/x"))
        self.assertEqual(self.client.value(), NOT_FOUND)
        self.assertFalse(self.client.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        self.client.clear()
        self.client.deliver(request(target=b"/api/1", requestId=b"r2"))
        _, upT = self.connectUpstream()
        self.assertEqual(upT.value(), forwarded(target=b"/api/1", requestId=b"r2"))
        self.assertEqual(self.counter("http_local_reply_total", listener="l1", reason="no_route"), 1)
        self.assertEqual(self.counter("http_downstream_rq_xx_total", listener="l1", code_class="4xx"), 1)

    def test_directResponse(self) -> None:
        """
        A direct response has its configured status and body, no error field, and keeps the
        connection.
        """
        self.client.deliver(request(target=b"/direct"))
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertFalse(self.client.disconnecting)
        self.assertEqual(self.counter("http_downstream_rq_xx_total", listener="l1", code_class="2xx"), 1)

    def test_redirect(self) -> None:
        """
        A redirect carries its Location and an empty body, and keeps the connection.
        """
        self.client.deliver(request(target=b"/old?q=1"))
        self.assertEqual(self.client.value(),
                         b"HTTP/1.1 302 Found\r\nLocation: http://a/new?q=1\r\nContent-Length: 0\r\n\r\n")
        self.assertFalse(self.client.disconnecting)

    def test_headRequest(self) -> None:
        """
        The answer to HEAD has the fields of the GET answer and no body.
        """
        self.client.deliver(request(b"HEAD", target=b"/x"))
        self.assertEqual(self.client.value(), NOT_FOUND[: NOT_FOUND.index(b"\r\n\r\n") + 4])
        self.assertFalse(self.client.disconnecting)

    def test_unreadBodyCloses(self) -> None:
        """
        A request whose body was not read cannot be told from the next request: the answer says
        Connection: close and the connection is closed.
        """
        self.client.deliver(request(b"POST", target=b"/x", fields=b"Content-Length: 5\r\n"))
        self.assertEqual(self.client.value(), errorReply(b"404 Not Found", b"no_route", close=True))
        self.assertTrue(self.client.disconnecting)

    def test_clientAsksClose(self) -> None:
        """
        A client that said Connection: close is closed after the local reply, which says so.
        """
        self.client.deliver(request(target=b"/direct", fields=b"Connection: close\r\n"))
        self.assertEqual(self.client.value(),
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        self.assertTrue(self.client.disconnecting)

    def test_clusterHeader(self) -> None:
        """
        A route that takes its cluster from a header answers 404 without the header and 503 when it
        names no cluster; with a good one the request is forwarded.
        """
        self.setUpProxy([{"match": {"prefix": "/"}, "route": {"cluster_header": "X-Cluster"}}], clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request())
        client.deliver(request(fields=b"X-Cluster: nope\r\n"))
        self.assertEqual(client.value(), errorReply(b"404 Not Found", b"no_cluster_header")
                         + errorReply(b"503 Service Unavailable", b"cluster_not_found"))
        client.deliver(request(fields=b"X-Cluster: backend\r\n"))
        _, upT = self.connectUpstream()
        self.assertEqual(upT.value(), forwarded(fields=b"X-Cluster: backend\r\n"))

    def test_connectRefused(self) -> None:
        """
        CONNECT is not supported: 405 and close.
        """
        self.client.deliver(b"CONNECT b.com:443 HTTP/1.1\r\nHost: b.com:443\r\n\r\n")
        self.assertEqual(self.client.value(),
                         errorReply(b"405 Method Not Allowed", b"connect_not_supported", close=True))
        self.assertTrue(self.client.disconnecting)


class MalformedRequestTests(ProxyHarness, SynchronousTestCase):
    """
    Malformed requests get 400 (or their codec status) and a close, and nothing goes upstream.
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()

    def assertRejected(self, reply: bytes, reason: str) -> None:
        self.assertEqual(self.client.value(), reply)
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.counter("http_downstream_rq_rejected_total", listener="l1", reason=reason), 1)

    def test_contentLengthAndChunked(self) -> None:
        """
        Content-Length with Transfer-Encoding is refused before anything is dialled.
        """
        self.client.deliver(request(b"POST", fields=b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n"))
        self.assertRejected(errorReply(b"400 Bad Request", b"cl-and-te", close=True), "cl-and-te")

    def test_bytewise(self) -> None:
        """
        The same request fed one byte at a time is refused the same way.
        """
        data = request(b"POST", fields=b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n")
        for i in range(len(data)):
            self.client.deliver(data[i : i + 1])
        self.assertRejected(errorReply(b"400 Bad Request", b"cl-and-te", close=True), "cl-and-te")

    def test_missingHost(self) -> None:
        """
        An HTTP/1.1 request without Host is refused.
        """
        self.client.deliver(b"GET / HTTP/1.1\r\n\r\n")
        self.assertRejected(errorReply(b"400 Bad Request", b"missing-host", close=True), "missing-host")

    def test_notHTTP(self) -> None:
        """
        Bytes that are not HTTP get a 400 too.
        """
        self.client.deliver(b"\x16\x03\x01garbage\r\n\r\n")
        self.assertRejected(errorReply(b"400 Bad Request", b"bad-request-line", close=True), "bad-request-line")

    def test_badBodyWithHead(self) -> None:
        """
        A bad chunk that arrived with its head is found before the request is dispatched.
        """
        self.client.deliver(request(b"POST", fields=b"Transfer-Encoding: chunked\r\n") + b"zz\r\n")
        self.assertRejected(errorReply(b"400 Bad Request", b"bad-chunk-size", close=True), "bad-chunk-size")

    def test_badBodyAfterHeadSent(self) -> None:
        """
        A bad chunk after the head went upstream resets the upstream connection; the garbage is
        not forwarded.
        """
        self.client.deliver(request(b"POST", fields=b"Transfer-Encoding: chunked\r\n") + b"1\r\na\r\n")
        _, upT = self.connectUpstream()
        self.client.deliver(b"zz\r\n")
        self.assertEqual(self.client.value(), errorReply(b"400 Bad Request", b"bad-chunk-size", close=True))
        self.assertEqual(upT.value(), forwarded(b"POST", framing=b"Transfer-Encoding: chunked\r\n") + b"1\r\na\r\n")
        self.assertTrue(upT.aborted)

    def test_pipelinedAfterGoodRequest(self) -> None:
        """
        A malformed request pipelined after a good one is answered, after the good one's response,
        with a 400 and a close; only the good one went upstream.
        """
        self.client.deliver(request() + request(fields=b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n"))
        _, upT = self.connectUpstream()
        self.assertEqual(self.client.value(), b"")
        upT.deliver(OK)
        self.assertEqual(upT.value(), forwarded())
        self.assertEqual(self.client.value(), OK + errorReply(b"400 Bad Request", b"cl-and-te", close=True))
        self.assertTrue(self.client.disconnecting)


class LimitTests(ProxyHarness, SynchronousTestCase):
    """
    Request body size and requests per connection.
    """

    def test_declaredBodyTooLarge(self) -> None:
        """
        A Content-Length over the limit is refused with 413 before anything is dialled.
        """
        self.setUpProxy(settings=HTTPSettings(maxRequestBodyBytes=4), clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request(b"POST", fields=b"Content-Length: 10\r\n") + b"abc")
        self.assertEqual(client.value(), errorReply(b"413 Content Too Large", b"request_body_too_large", close=True))
        self.assertEqual(self.reactor.tcpClients, [])

    def test_streamedBodyTooLarge(self) -> None:
        """
        A chunked body that grows over the limit aborts the upstream request and gets 413.
        """
        self.setUpProxy(settings=HTTPSettings(maxRequestBodyBytes=4), clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request(b"POST", fields=b"Transfer-Encoding: chunked\r\n") + b"3\r\nabc\r\n")
        _, upT = self.connectUpstream()
        client.deliver(b"3\r\ndef\r\n")
        self.assertEqual(client.value(), errorReply(b"413 Content Too Large", b"request_body_too_large", close=True))
        self.assertTrue(upT.aborted)

    def test_requestsPerConnection(self) -> None:
        """
        The last request a connection may carry gets Connection: close.
        """
        self.setUpProxy(settings=HTTPSettings(maxRequestsPerConnection=2), clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request())
        _, upT = self.connectUpstream()
        upT.deliver(OK)
        self.assertFalse(client.disconnecting)
        client.deliver(request(requestId=b"r2"))
        upT.deliver(OK)
        self.assertEqual(client.value(), OK + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        self.assertTrue(client.disconnecting)


class DrainTests(ProxyHarness, SynchronousTestCase):
    """
    While the listener drains, idle connections close at once and busy ones after their response,
    which says Connection: close.
    """

    def setUp(self) -> None:
        self.setUpProxy(ENTRIES, clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()

    def test_idleClosed(self) -> None:
        """
        A kept-alive connection with no request in flight is closed when the drain starts, and
        the drain completes once it is gone.
        """
        self.client.deliver(request(target=b"/direct"))
        self.client.clear()
        drained = self.listener.drain(30)
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.client.value(), b"")
        self.assertNoResult(drained)
        self.closed(self.client)
        self.successResultOf(drained)

    def test_proxiedResponse(self) -> None:
        """
        A response relayed during the drain closes the client connection; the upstream connection
        is still pooled.
        """
        self.client.deliver(request(target=b"/api"))
        upstream, upT = self.connectUpstream()
        self.listener.drain(30)
        self.assertFalse(self.client.disconnecting)
        upT.deliver(OK)
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.pool().idle[upstream.host], [upstream])

    def test_partialHead(self) -> None:
        """
        A request whose head was arriving when the drain started is answered, with Connection: close.
        """
        self.client.deliver(b"GET /direct HTTP/1.1\r\n")
        self.listener.drain(30)
        self.assertFalse(self.client.disconnecting)
        self.client.deliver(b"Host: a\r\n\r\n")
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        self.assertTrue(self.client.disconnecting)


class BookkeepingTests(ProxyHarness, SynchronousTestCase):
    """
    Reading from the client pauses while too much is buffered; connections and bytes are counted.
    """

    def test_pipelineBufferBounded(self) -> None:
        """
        Pipelined requests beyond the buffer limit pause the client until the backlog halves.
        """
        self.setUpProxy(settings=HTTPSettings(bufferLimit=64), clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request() * 4)
        self.assertEqual(client.producerState, "paused")
        _, upT = self.connectUpstream()
        states = []
        for _ in range(3):
            upT.deliver(b"HTTP/1.1 204 No Content\r\n\r\n")
            states.append(client.producerState)
        self.assertEqual(states, ["paused", "paused", "producing"])

    def test_connectionBooks(self) -> None:
        """
        A closed client connection is reported to the listener, and a request cut off mid-flight
        is no longer counted as active.
        """
        self.setUpProxy(clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request())
        self.assertEqual(self.counter("http_downstream_rq_active", listener="l1"), 1)
        self.closed(client)
        self.assertEqual(self.counter("downstream_cx_active", listener="l1"), 0)
        self.assertEqual(self.counter("http_downstream_rq_active", listener="l1"), 0)

    def test_byteCounters(self) -> None:
        """
        The listener's and the cluster's byte counters count the bytes on each wire, framing and
        interim responses included.
        """
        self.setUpProxy(clusters=ONE_HOST)
        _, client = self.connectClient()
        sent = request(b"POST", fields=b"Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n")
        client.deliver(sent)
        _, upT = self.connectUpstream()
        client.deliver(b"3;x=y\r\nabc\r\n0\r\n\r\n")
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        upT.deliver(answer)
        self.assertEqual(
            [self.counter("downstream_cx_rx_bytes_total", listener="l1"),
             self.counter("downstream_cx_tx_bytes_total", listener="l1"),
             self.counter("upstream_cx_tx_bytes_total", cluster="backend"),
             self.counter("upstream_cx_rx_bytes_total", cluster="backend")],
            [len(sent) + 17, len(client.value()), len(upT.value()), len(answer)],
        )


class HalfCloseTests(ProxyHarness, SynchronousTestCase):
    """
    Clients that send FIN right after their requests (netcat, some HTTP/1.0 clients).
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)

    def test_answeredThenClosed(self) -> None:
        """
        A request followed by FIN is still forwarded and answered; then the connection closes.
        """
        connection, client = self.connectClient()
        client.deliver(request())
        client.deliverEOF()
        self.assertFalse(client.disconnecting)
        _, upT = self.connectUpstream()
        upT.deliver(OK)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(client.disconnecting)

    def test_pipelinedBeforeFIN(self) -> None:
        """
        Every request buffered before the FIN is answered, in order.
        """
        connection, client = self.connectClient()
        client.deliver(request(target=b"/1") + request(target=b"/2"))
        client.deliverEOF()
        _, upT = self.connectUpstream()
        upT.deliver(OK)
        self.assertFalse(client.disconnecting)
        upT.deliver(OK)
        self.assertEqual(client.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertTrue(client.disconnecting)

    def test_idleFIN(self) -> None:
        """
        A FIN between requests closes the connection.
        """
        connection, client = self.connectClient()
        client.deliverEOF()
        self.assertTrue(client.disconnecting)

    def test_truncatedHead(self) -> None:
        """
        A FIN in the middle of a head is a malformed request: 400, closed, nothing dialled.
        """
        connection, client = self.connectClient()
        client.deliver(b"GET / HTTP/1.1\r\nHost: a\r\n")
        client.deliverEOF()
        self.assertTrue(client.value().startswith(b"HTTP/1.1 400"))
        self.assertTrue(client.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
