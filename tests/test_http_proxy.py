"""
Tests for L{meshproxy.proxy.http}: forwarding, framing and pooled reuse, as exact transcripts on a memory
reactor (timers, failures and local replies are in the C{test_http_proxy_*} modules).
"""

from __future__ import annotations

import re

import attrs
from twisted.internet.interfaces import IProtocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.interfaces import INetworkFilterFactory
from tests.proxyharness import OK, ONE_HOST, ProxyHarness, forwarded, request


class HTTPProxyFilterTests(ProxyHarness, SynchronousTestCase):
    """
    The filter factory.
    """

    def setUp(self) -> None:
        self.setUpProxy()

    def test_interfaces(self) -> None:
        """
        The filter provides L{INetworkFilterFactory}; what it builds is a protocol.
        """
        self.assertTrue(verifyObject(INetworkFilterFactory, self.filter))
        connection, _ = self.connectClient()
        self.assertTrue(verifyObject(IProtocol, connection))

    def test_acceptsProtocol(self) -> None:
        """
        HTTP/1 is taken always, TLS never; other protocols (which then get a 400) only when the
        chain has no fallback filter.
        """
        self.assertEqual([self.filter.acceptsProtocol(p) for p in ("http1", "tls", "raw")], [True, False, True])
        self.filter.config = attrs.evolve(self.filter.config, fallbackForUnknownProtocol=True)
        self.assertEqual([self.filter.acceptsProtocol(p) for p in ("http1", "tls", "raw")], [True, False, False])


class ForwardingTests(ProxyHarness, SynchronousTestCase):
    """
    A request goes upstream with a rebuilt head; the response comes back; the connection is reused.
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()

    def test_getForwarded(self) -> None:
        """
        Hop-by-hop fields are dropped, Host and the forwarding fields rebuilt (X-Forwarded-For and
        Via appended to), the client's request id kept; the response loses its hop-by-hop fields,
        leaves in one write, and the upstream connection goes back to the pool.
        """
        self.client.deliver(
            b"GET /a?b HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
            b"Keep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nVia: 1.0 edge\r\n"
            b"X-Forwarded-Proto: https\r\nX-Request-Id: abc-123\r\nAccept: */*\r\n\r\n"
        )
        [(host, port, _, timeout, _)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 9001, 5.0))
        upstream, upT = self.connectUpstream()
        self.assertEqual(
            upT.value(),
            b"GET /a?b HTTP/1.1\r\nAccept: */*\r\nHost: example.com\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\n"
            b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: example.com\r\nVia: 1.0 edge, 1.1 meshproxy\r\n"
            b"X-Request-Id: abc-123\r\n\r\n",
        )
        upT.deliver(b"HTTP/1.1 200 Fine\r\nConnection: keep-alive, X-Opt\r\nX-Opt: 1\r\nKeep-Alive: timeout=5\r\n"
                    b"Server: s\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(self.client.writes, [b"HTTP/1.1 200 Fine\r\nServer: s\r\nContent-Length: 5\r\n\r\nhello"])
        self.assertEqual(self.pool().idle[upstream.host], [upstream])
        self.assertFalse(upT.disconnecting or self.client.disconnecting)
        self.assertIsNone(self.client.producer)
        self.assertEqual(self.counter("http_downstream_rq_total", listener="l1"), 1)
        self.assertEqual(self.counter("http_downstream_rq_xx_total", listener="l1", code_class="2xx"), 1)
        self.assertEqual(self.counter("http_downstream_rq_active", listener="l1"), 0)

    def test_requestIdGenerated(self) -> None:
        """
        A request without an acceptable X-Request-Id gets a fresh UUID upstream.
        """
        self.client.deliver(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: not valid!\r\n\r\n")
        _, upT = self.connectUpstream()
        [requestId] = re.findall(rb"X-Request-Id: (.*)\r\n", upT.value())
        self.assertRegex(requestId, rb"\A[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
        self.assertEqual(upT.value(), forwarded(requestId=requestId))

    def test_reusedForNextRequest(self) -> None:
        """
        The next request on the client connection goes on the same upstream connection, taken from
        the pool without dialling; the reuse is counted.
        """
        self.client.deliver(request())
        upstream, upT = self.connectUpstream()
        upT.deliver(OK)
        upT.clear()
        self.client.deliver(request(requestId=b"r2"))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(upT.value(), forwarded(requestId=b"r2"))
        upT.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes")
        self.assertEqual(self.client.value(), OK + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes")
        self.assertEqual(self.counter("upstream_cx_pool_reuse_total", cluster="backend"), 1)
        self.assertEqual(upstream.requestsSent, 2)

    def test_reusedByAnotherClient(self) -> None:
        """
        A pooled connection serves any client of the cluster.
        """
        self.client.deliver(request())
        _, upT = self.connectUpstream()
        upT.deliver(OK)
        upT.clear()
        _, other = self.connectClient("10.0.0.2")
        other.deliver(request(requestId=b"r2"))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(upT.value(), forwarded(requestId=b"r2").replace(b"10.0.0.1", b"10.0.0.2"))

    def test_headFlushedWhenBodyLate(self) -> None:
        """
        A response head whose body has not arrived yet is sent on its own when the upstream's data
        is used up; body bytes follow as they come.
        """
        self.client.deliver(request())
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        upT.deliver(b"ab")
        upT.deliver(b"cd")
        self.assertEqual(self.client.writes, [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", b"ab", b"cd"])

    def test_chunkedHeadWithFirstChunk(self) -> None:
        """
        A chunked response's head leaves with its first chunk in one write.
        """
        self.client.deliver(request())
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        self.assertEqual(self.client.writes, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"])

    def test_pipelinedInOrder(self) -> None:
        """
        Requests pipelined in one segment are forwarded one at a time: the second only once the
        first response has ended, on the same connection; the answers come back in order.
        """
        self.client.deliver(request() + request(requestId=b"r2"))
        _, upT = self.connectUpstream()
        self.assertEqual(upT.value(), forwarded())
        upT.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\na")
        self.assertEqual(upT.value(), forwarded())
        upT.deliver(b"b")
        self.assertEqual(upT.value(), forwarded() + forwarded(requestId=b"r2"))
        upT.deliver(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(
            self.client.value(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab" + b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        )
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.counter("http_downstream_rq_total", listener="l1"), 2)

    def test_pipelinedBytewise(self) -> None:
        """
        The same requests fed one byte at a time are forwarded the same way.
        """
        data = request() + request(requestId=b"r2")
        for i in range(len(data)):
            self.client.deliver(data[i : i + 1])
        _, upT = self.connectUpstream()
        self.assertEqual(upT.value(), forwarded())
        upT.deliver(OK)
        self.assertEqual(upT.value(), forwarded() + forwarded(requestId=b"r2"))

    def test_absoluteFormTarget(self) -> None:
        """
        An absolute-form target is routed by its authority and forwarded in origin form, with the
        authority as Host and as X-Forwarded-Host (RFC 9112 section 3.2.2: the Host field is ignored).
        """
        self.client.deliver(b"GET http://b.com/x?y HTTP/1.1\r\nHost: a\r\nX-Request-Id: r1\r\n\r\n")
        _, upT = self.connectUpstream()
        self.assertEqual(upT.value(), forwarded(target=b"/x?y", host=b"b.com"))


class FramingTests(ProxyHarness, SynchronousTestCase):
    """
    Bodies are re-framed for each side.
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()

    def test_http10ContentLength(self) -> None:
        """
        An HTTP/1.0 client without keep-alive gets a Content-Length response with Connection: close
        and is closed after it; the upstream connection is still pooled.
        """
        self.client.deliver(request(version=b"1.0"))
        upstream, upT = self.connectUpstream()
        self.assertEqual(upT.value(), forwarded())
        upT.deliver(OK)
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.pool().idle[upstream.host], [upstream])

    def test_http10KeepAlive(self) -> None:
        """
        An HTTP/1.0 client asking for keep-alive is told so and kept.
        """
        self.client.deliver(request(version=b"1.0", fields=b"Connection: keep-alive\r\n"))
        _, upT = self.connectUpstream()
        upT.deliver(OK)
        self.assertEqual(self.client.value(),
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        self.assertFalse(self.client.disconnecting)

    def test_http10CloseDelimited(self) -> None:
        """
        A close-delimited response reaches an HTTP/1.0 client as such: no chunking, Connection:
        close, and the client is closed once the upstream closes; that connection is not pooled.
        """
        self.client.deliver(request(version=b"1.0", fields=b"Connection: keep-alive\r\n"))
        upstream, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\n\r\nabc")
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
        self.assertFalse(self.client.disconnecting)
        upT.deliver(b"def")
        self.closed(upT)
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabcdef")
        self.assertTrue(self.client.disconnecting)
        self.assertEqual((self.pool().idle[upstream.host], self.pool().open), ([], 0))

    def test_closeDelimitedToChunked(self) -> None:
        """
        A close-delimited response is chunked for an HTTP/1.1 client, which stays connected.
        """
        self.client.deliver(request())
        upstream, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\n\r\nabc")
        self.closed(upT)
        self.assertEqual(self.client.value(),
                         b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        self.assertFalse(self.client.disconnecting)
        self.assertEqual((self.pool().idle[upstream.host], self.pool().open), ([], 0))

    def test_chunkedRequestRechunked(self) -> None:
        """
        A chunked request body is re-chunked upstream as it arrives (extensions dropped, trailers
        kept), with the client transport as the upstream's producer until the body ends.
        """
        self.client.deliver(request(b"POST", fields=b"Transfer-Encoding: chunked\r\n") + b"3;ext=1\r\nabc\r\n")
        _, upT = self.connectUpstream()
        head = forwarded(b"POST", framing=b"Transfer-Encoding: chunked\r\n")
        self.assertEqual(upT.value(), head + b"3\r\nabc\r\n")
        self.assertIs(upT.producer, self.client)
        self.client.deliver(b"2\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
        self.assertEqual(upT.value(), head + b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
        self.assertIsNone(upT.producer)

    def test_contentLengthBodyStreamed(self) -> None:
        """
        A Content-Length body is queued while the connection is dialled, then streamed as is.
        """
        self.client.deliver(request(b"PUT", fields=b"Content-Length: 6\r\n") + b"ab")
        self.client.deliver(b"cd")
        _, upT = self.connectUpstream()
        head = forwarded(b"PUT", framing=b"Content-Length: 6\r\n")
        self.assertEqual(upT.value(), head + b"abcd")
        self.client.deliver(b"ef")
        self.assertEqual(upT.value(), head + b"abcdef")
        upT.deliver(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.client.value(), b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")

    def test_emptyBodyKeepsContentLength(self) -> None:
        """
        A POST with Content-Length: 0 keeps it upstream (RFC 9110 section 8.6: it is normally sent
        even when 0; servers may answer 411 without it).
        """
        self.client.deliver(request(b"POST", fields=b"Content-Length: 0\r\n"))
        _, upT = self.connectUpstream()
        self.assertEqual(upT.value(), forwarded(b"POST", framing=b"Content-Length: 0\r\n"))

    def test_chunkedResponseRechunked(self) -> None:
        """
        A chunked response is re-chunked for an HTTP/1.1 client: extensions dropped, trailers kept.
        """
        self.client.deliver(request())
        upstream, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nhi\r\n")
        upT.deliver(b"1\r\n!\r\n0\r\nX-Trail: z\r\n\r\n")
        self.assertEqual(
            self.client.value(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n1\r\n!\r\n0\r\nX-Trail: z\r\n\r\n",
        )
        self.assertEqual(self.pool().idle[upstream.host], [upstream])

    def test_chunkedResponseTo10Client(self) -> None:
        """
        An HTTP/1.0 client cannot read chunks: it gets the body until the close.
        """
        self.client.deliver(request(version=b"1.0", fields=b"Connection: keep-alive\r\n"))
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhi")
        self.assertTrue(self.client.disconnecting)

    def test_headResponse(self) -> None:
        """
        The response to HEAD keeps its Content-Length, has no body, and frees the connection.
        """
        self.client.deliver(request(b"HEAD"))
        upstream, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(self.client.writes, [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"])
        self.assertEqual(self.pool().idle[upstream.host], [upstream])

    def test_noContentStatuses(self) -> None:
        """
        204 and 304 responses have no body and no framing field, whatever the upstream said.
        """
        self.client.deliver(request())
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
        self.client.deliver(request(requestId=b"r2"))
        upT.deliver(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nETag: e\r\n\r\n")
        self.assertEqual(self.client.writes, [b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
                                              b"HTTP/1.1 304 Not Modified\r\nETag: e\r\n\r\n"])

    def test_routeHeaderEdits(self) -> None:
        """
        The route's rewrites and header edits apply to both directions.
        """
        route = {
            "cluster_name": "backend", "host_rewrite": "internal", "prefix_rewrite": "/v2/",
            "request_headers_to_add": [{"header": {"key": "X-From", "value": "%downstream_remote_address%"}}],
            "request_headers_to_remove": ["X-Debug"],
            "response_headers_to_add": [{"header": {"key": "X-Served", "value": "mp"}}],
            "response_headers_to_remove": ["Server"],
        }
        self.setUpProxy([{"match": {"prefix": "/"}, "route": route}], clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request(target=b"/a", fields=b"X-Debug: 1\r\n"))
        _, upT = self.connectUpstream()
        self.assertEqual(
            upT.value(),
            b"GET /v2/a HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"
            b"X-Forwarded-Host: a\r\nVia: 1.1 meshproxy\r\nX-Request-Id: r1\r\nX-From: 10.0.0.1:40000\r\n\r\n",
        )
        upT.deliver(b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 1\r\n\r\nx")
        self.assertEqual(client.value(), b"HTTP/1.1 200 OK\r\nX-Served: mp\r\nContent-Length: 1\r\n\r\nx")

    def test_autoHostRewrite(self) -> None:
        """
        auto_host_rewrite sets Host to the chosen upstream: its hostname when configured, else its
        address; X-Forwarded-Host keeps what the client asked for.
        """
        clusters = [{"name": "backend", "type": "SIMPLE", "lb_type": "LB_ROUNDROBIN", "hosts": [
            {"address": "127.0.0.1:9001", "hostname": "api.internal"}, {"address": "127.0.0.1:9002"}]}]
        route = {"cluster_name": "backend", "auto_host_rewrite": True}
        self.setUpProxy([{"match": {"prefix": "/"}, "route": route}], clusters=clusters)
        sent = []
        for index in range(2):
            _, client = self.connectClient()
            client.deliver(request(target=b"/a"))
            _, upT = self.connectUpstream()
            sent.append(upT.value())
        self.assertIn(b"\r\nHost: api.internal\r\n", sent[0])
        self.assertIn(b"\r\nHost: 127.0.0.1:9002\r\n", sent[1])
        self.assertIn(b"\r\nX-Forwarded-Host: a\r\n", sent[1])


class ContinueTests(ProxyHarness, SynchronousTestCase):
    """
    Expect: 100-continue and other informational responses.
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()

    def test_continueWhenUpstreamReady(self) -> None:
        """
        The proxy answers 100 Continue once the upstream connection is ready (not before), does not
        forward Expect, and does not repeat the upstream's own 100.
        """
        self.client.deliver(request(b"POST", fields=b"Expect: 100-continue\r\nContent-Length: 3\r\n"))
        self.assertEqual(self.client.value(), b"")
        _, upT = self.connectUpstream()
        self.assertEqual(self.client.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(upT.value(), forwarded(b"POST", framing=b"Content-Length: 3\r\n"))
        upT.deliver(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.client.deliver(b"abc")
        self.assertEqual(upT.value(), forwarded(b"POST", framing=b"Content-Length: 3\r\n") + b"abc")
        upT.deliver(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.client.value(),
                         b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")

    def test_noContinueWhenBodyArrived(self) -> None:
        """
        A client that sent its body without waiting gets no 100.
        """
        self.client.deliver(request(b"POST", fields=b"Expect: 100-continue\r\nContent-Length: 3\r\n") + b"abc")
        _, upT = self.connectUpstream()
        self.assertEqual(self.client.value(), b"")
        self.assertEqual(upT.value(), forwarded(b"POST", framing=b"Content-Length: 3\r\n") + b"abc")

    def test_informationalForwarded(self) -> None:
        """
        Other 1xx responses reach an HTTP/1.1 client without their hop-by-hop fields.
        """
        self.client.deliver(request())
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\nConnection: X-A\r\nX-A: 1\r\n\r\n" + OK)
        self.assertEqual(self.client.value(), b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK)

    def test_noInformationalTo10Client(self) -> None:
        """
        An HTTP/1.0 client gets no 1xx response (RFC 9110 section 15.2), only the final one.
        """
        self.client.deliver(request(version=b"1.0"))
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK)
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
