"""
Tests for the deadlines of L{meshproxy.proxy.http.HTTPServerConnection}: every timer, driven on a memory
reactor's clock.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.proxy.httpsettings import HTTPSettings
from tests.proxyharness import ONE_HOST, ProxyHarness, forwarded, request

HEADER_408 = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"x-meshproxy-error: request_header_timeout\r\nContent-Length: 44\r\nConnection: close\r\n\r\n"
    b"408 Request Timeout: request_header_timeout\n"
)
BODY_408 = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"x-meshproxy-error: request_body_timeout\r\nContent-Length: 42\r\nConnection: close\r\n\r\n"
    b"408 Request Timeout: request_body_timeout\n"
)
GATEWAY_504 = (
    b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"x-meshproxy-error: upstream_timeout\r\nContent-Length: 38\r\n\r\n504 Gateway Timeout: upstream_timeout\n"
)


class HeaderDeadlineTests(ProxyHarness, SynchronousTestCase):
    """
    A request head must be complete within 10 s of its first byte.
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()

    def test_partialHead(self) -> None:
        """
        A head still incomplete 10 s after its first byte gets a 408 and a close; nothing was
        dialled; the rejection is counted.
        """
        self.reactor.advance(5)
        self.client.deliver(b"GET / HTTP/1.1\r\n")
        self.reactor.advance(9.875)
        self.client.deliver(b"Host: a\r\n")
        self.assertEqual(self.client.value(), b"")
        self.reactor.advance(0.125)
        self.assertEqual(self.client.value(), HEADER_408)
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.counter("http_downstream_rq_rejected_total", listener="l1", reason="header_timeout"), 1)
        self.assertEqual(
            self.counter("http_local_reply_total", listener="l1", reason="request_header_timeout"), 1)

    def test_silentConnection(self) -> None:
        """
        A connection that sends nothing gets the same 408 10 s after it opened.
        """
        self.reactor.advance(9.875)
        self.assertEqual(self.client.value(), b"")
        self.reactor.advance(0.125)
        self.assertEqual(self.client.value(), HEADER_408)

    def test_completeHead(self) -> None:
        """
        Once the head is complete its deadline no longer applies: a request waiting for its
        upstream connection gets no 408.
        """
        self.client.deliver(b"GET / HTTP/1.1\r\n")
        self.client.deliver(b"Host: a\r\nX-Request-Id: r1\r\n\r\n")
        self.reactor.advance(30)
        self.assertEqual(self.client.value(), b"")
        self.assertFalse(self.client.disconnecting)
        _, upT = self.connectUpstream()
        self.assertEqual(upT.value(), forwarded())

    def test_nextHeadOnKeepAlive(self) -> None:
        """
        On a kept-alive connection the deadline counts from the first byte of the next head.
        """
        self.client.deliver(request())
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.client.clear()
        self.reactor.advance(30)
        self.client.deliver(b"GET /next HTTP/1.1\r\n")
        self.reactor.advance(9.875)
        self.assertEqual(self.client.value(), b"")
        self.reactor.advance(0.125)
        self.assertEqual(self.client.value(), HEADER_408)

    def test_configuredDeadline(self) -> None:
        """
        The deadline is the settings' C{headerTimeout}.
        """
        self.setUpProxy(settings=HTTPSettings(headerTimeout=2.0), clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(b"GET")
        self.reactor.advance(1.875)
        self.assertEqual(client.value(), b"")
        self.reactor.advance(0.125)
        self.assertEqual(client.value(), HEADER_408)


class IdleTests(ProxyHarness, SynchronousTestCase):
    """
    A kept-alive connection idle for 60 s is closed.
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()
        self.client.deliver(request())
        _, self.upT = self.connectUpstream()
        self.reactor.advance(1)
        self.upT.deliver(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.client.clear()

    def test_idleClose(self) -> None:
        """
        60 s after the last response the connection is closed without a word.
        """
        self.reactor.advance(59.875)
        self.assertFalse(self.client.disconnecting)
        self.reactor.advance(0.125)
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.client.value(), b"")

    def test_requestRestartsIdle(self) -> None:
        """
        Another exchange restarts the idle period from its end.
        """
        self.reactor.advance(20)
        self.client.deliver(request(requestId=b"r2"))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.upT.deliver(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.reactor.advance(59.875)
        self.assertFalse(self.client.disconnecting)
        self.reactor.advance(0.125)
        self.assertTrue(self.client.disconnecting)


class ResponseDeadlineTests(ProxyHarness, SynchronousTestCase):
    """
    The route timeout (2 s here) bounds the wait for the response head.
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()

    def test_gatewayTimeout(self) -> None:
        """
        No response head within the route timeout after the request was sent: 504, the upstream
        connection is aborted (it is mid-exchange), and the client connection stays usable.
        """
        self.client.deliver(request())
        self.reactor.advance(1)
        upstream, upT = self.connectUpstream()
        self.reactor.advance(1.875)
        self.assertEqual(self.client.value(), b"")
        self.reactor.advance(0.125)
        self.assertEqual(self.client.value(), GATEWAY_504)
        self.assertTrue(upT.aborted)
        self.assertIsNone(upstream.exchange)
        self.assertFalse(self.client.disconnecting)
        self.assertEqual(self.counter("http_local_reply_total", listener="l1", reason="upstream_timeout"), 1)
        self.assertEqual(self.counter("http_downstream_rq_xx_total", listener="l1", code_class="5xx"), 1)

    def test_lateResponseIgnored(self) -> None:
        """
        Bytes the aborted upstream still delivers reach nobody.
        """
        self.client.deliver(request())
        _, upT = self.connectUpstream()
        self.reactor.advance(2)
        upT.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.client.value(), GATEWAY_504)

    def test_countsFromRequestEnd(self) -> None:
        """
        While a request body streams the body deadline applies; the route timeout starts when the
        body has been sent.
        """
        self.client.deliver(request(b"POST", fields=b"Content-Length: 2\r\n") + b"a")
        _, upT = self.connectUpstream()
        self.reactor.advance(30)
        self.client.deliver(b"b")
        self.reactor.advance(1.875)
        self.assertEqual(self.client.value(), b"")
        self.reactor.advance(0.125)
        self.assertEqual(self.client.value(), GATEWAY_504)

    def test_notAfterResponseHead(self) -> None:
        """
        A response whose head arrived in time may take longer than the route timeout to finish.
        """
        self.client.deliver(request())
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\na")
        self.reactor.advance(30)
        upT.deliver(b"b")
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab")
        self.assertFalse(self.client.disconnecting)


class BodyInactivityTests(ProxyHarness, SynchronousTestCase):
    """
    A body stalled for 60 s in either direction ends the exchange.
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()

    def test_requestBodyStalled(self) -> None:
        """
        A request body stalled for 60 s (counted from its last byte) gets a 408 and a close; the
        half-sent upstream request is aborted.
        """
        self.client.deliver(request(b"POST", fields=b"Content-Length: 10\r\n") + b"abc")
        _, upT = self.connectUpstream()
        self.reactor.advance(30)
        self.client.deliver(b"d")
        self.reactor.advance(59.875)
        self.assertEqual(self.client.value(), b"")
        self.reactor.advance(0.125)
        self.assertEqual(self.client.value(), BODY_408)
        self.assertTrue(self.client.disconnecting)
        self.assertTrue(upT.aborted)

    def test_responseBodyStalled(self) -> None:
        """
        A response body stalled for 60 s aborts both connections (a status was already sent).
        """
        self.client.deliver(request())
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.reactor.advance(30)
        upT.deliver(b"d")
        self.reactor.advance(59.875)
        self.assertFalse(self.client.aborted)
        self.reactor.advance(0.125)
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd")
        self.assertTrue(self.client.aborted)
        self.assertTrue(upT.aborted)

    def test_countsFromResponseHead(self) -> None:
        """
        A response head that took longer than the inactivity limit (the route allows 120 s) starts
        a fresh inactivity period: the body has 60 s from the head.
        """
        slow = {"match": {"prefix": "/"}, "route": {"cluster_name": "backend", "timeout": "120s"}}
        self.setUpProxy([slow], clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request())
        _, upT = self.connectUpstream()
        self.reactor.advance(100)
        upT.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        self.reactor.advance(59.875)
        self.assertFalse(client.aborted or upT.aborted)
        self.reactor.advance(0.125)
        self.assertTrue(client.aborted)

    def test_configuredInactivity(self) -> None:
        """
        The limit is the settings' C{bodyTimeout}.
        """
        self.setUpProxy(settings=HTTPSettings(bodyTimeout=5.0), clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request())
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        self.reactor.advance(4.875)
        self.assertFalse(client.aborted)
        self.reactor.advance(0.125)
        self.assertTrue(client.aborted)


class TimerHygieneTests(ProxyHarness, SynchronousTestCase):
    """
    A closed connection leaves no timer behind.
    """

    def test_noTimerAfterClose(self) -> None:
        """
        After the client connection is lost (and the pools' sweeps are stopped) nothing is scheduled.
        """
        self.setUpProxy(clusters=ONE_HOST)
        connection, client = self.connectClient()
        client.deliver(request())
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.closed(client)
        self.pools.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
