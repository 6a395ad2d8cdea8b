"""
Tests for L{meshproxy.proxy.http} with failing upstreams and busy pools: connect failures and retries,
stale pooled connections, garbage, resets, and the pool's limits as a client sees them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionLost, TimeoutError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.proxyharness import OK, ONE_HOST, ProxyHarness, errorReply, forwarded, oneHost, request

#: The longest a first retry waits by default (Envoy's back-off: at most 250 ms).
BACKOFF_MAX = 0.25

class ConnectFailureTests(ProxyHarness, SynchronousTestCase):
    """
    Connect failures are retried on the other host, then answered with 502; no host at all is 503.
    """

    def setUp(self) -> None:
        self.setUpProxy()
        self.connection, self.client = self.connectClient()
        self.client.deliver(request())

    def test_retriedOnOtherHost(self) -> None:
        """
        A refused connection is retried on the other host, where the request goes.
        """
        self.failAttempt(0)
        self.assertEqual([attempt[:2] for attempt in self.reactor.tcpClients],
                         [("127.0.0.1", 9001), ("127.0.0.1", 9002)])
        _, upT = self.connectUpstream(1)
        self.assertEqual(upT.value(), forwarded())
        self.assertEqual(self.counter("http_upstream_rq_retry_total", listener="l1"), 1)
        self.assertEqual(
            self.counter("upstream_host_cx_connect_fail_total", cluster="backend", host="127.0.0.1:9001"), 1)

    def test_allHostsFail(self) -> None:
        """
        When every host refused, the client gets a 502 naming the failure, and keeps its connection.
        """
        self.failAttempt(0)
        self.failAttempt(1)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.client.value(), errorReply(b"502 Bad Gateway", b"upstream_connect_failed"))
        self.assertFalse(self.client.disconnecting)
        self.assertEqual(
            self.counter("http_local_reply_total", listener="l1", reason="upstream_connect_failed"), 1)
        self.assertEqual(self.pool().open, 0)

    def test_connectTimeout(self) -> None:
        """
        Timed-out attempts say so.
        """
        self.failAttempt(0, TimeoutError())
        self.failAttempt(1, TimeoutError())
        self.assertEqual(self.client.value(), errorReply(b"502 Bad Gateway", b"upstream_connect_timeout"))

    def test_noHealthyHost(self) -> None:
        """
        With no healthy host (and panic mode off) nothing is dialled and the answer is 503.
        """
        self.setUpProxy(healthy_panic_threshold=0)
        cluster = self.clusters.get("backend")
        for host in cluster.hosts:
            cluster.activeHealthChanged(host, False, "test")
        _, client = self.connectClient()
        client.deliver(request())
        self.assertEqual(len(self.reactor.tcpClients), 0)
        self.assertEqual(client.value(), errorReply(b"503 Service Unavailable", b"no_healthy_upstream"))
        self.assertEqual(self.counter("upstream_cx_none_healthy_total", cluster="backend"), 1)


class BrokenUpstreamTests(ProxyHarness, SynchronousTestCase):
    """
    Garbage and resets from a freshly connected upstream.
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()
        self.client.deliver(request())
        self.upstream, self.upT = self.connectUpstream()

    def test_garbage(self) -> None:
        """
        An unparseable response is a 502 and the upstream connection is aborted, not pooled.
        """
        self.upT.deliver(b"HTTP/1.1 2000 OK\r\n\r\n")
        self.assertEqual(self.client.value(), errorReply(b"502 Bad Gateway", b"upstream_protocol_error"))
        self.assertTrue(self.upT.aborted)
        self.assertFalse(self.client.disconnecting)
        self.closed(self.upT, clean=False)
        self.assertEqual((self.pool().idle[self.upstream.host], self.pool().open), ([], 0))

    def test_resetBeforeResponse(self) -> None:
        """
        A fresh connection closed before any response byte is a 502 and is not retried.
        """
        self.closed(self.upT, clean=False)
        self.assertEqual(self.client.value(), errorReply(b"502 Bad Gateway", b"upstream_reset"))
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_resetMidResponse(self) -> None:
        """
        An upstream lost in the middle of a response body aborts the client connection.
        """
        self.upT.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.closed(self.upT, clean=False)
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.assertTrue(self.client.aborted)

    def test_resetAfterContinue(self) -> None:
        """
        An interim 100 is not the response: a reset after it still gets the client a 502, not an
        abort.
        """
        self.setUpProxy(clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request(b"POST", fields=b"Expect: 100-continue\r\nContent-Length: 3\r\n"))
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 100 Continue\r\n\r\n")
        client.deliver(b"abc")
        self.closed(upT, clean=False)
        self.assertEqual(client.value(),
                         b"HTTP/1.1 100 Continue\r\n\r\n" + errorReply(b"502 Bad Gateway", b"upstream_reset"))
        self.assertFalse(client.aborted)

    def test_garbageMidResponse(self) -> None:
        """
        A bad chunk in the middle of a response aborts both connections.
        """
        self.upT.deliver(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
        self.assertEqual(self.client.value(), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        self.assertTrue(self.client.aborted)
        self.assertTrue(self.upT.aborted)

    def test_switchNotAsked(self) -> None:
        """
        A 101 to a request that asked for no upgrade is a protocol error (502), not a tunnel.
        """
        self.upT.deliver(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
        self.assertEqual(self.client.value(), errorReply(b"502 Bad Gateway", b"upstream_protocol_error"))
        self.assertIs(self.client.protocol, self.connection)
        self.assertTrue(self.upT.aborted)


class StaleConnectionTests(ProxyHarness, SynchronousTestCase):
    """
    A pooled connection the host closed before answering: idempotent requests are retried once.
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()
        self.client.deliver(request())
        self.upstream, self.upT = self.connectUpstream()
        self.upT.deliver(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.client.clear()

    def test_idempotentRetried(self) -> None:
        """
        A GET whose reused connection closes before any response byte is sent again on a fresh
        connection, and its response reaches the client.
        """
        self.client.deliver(request(requestId=b"r2"))
        self.assertEqual(self.upT.value(), forwarded() + forwarded(requestId=b"r2"))
        self.closed(self.upT)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        _, fresh = self.connectUpstream()
        self.assertEqual(fresh.value(), forwarded(requestId=b"r2"))
        fresh.deliver(OK)
        self.assertEqual(self.client.value(), OK)
        self.assertEqual(self.counter("http_upstream_rq_retry_total", listener="l1"), 1)

    def test_retriedOnce(self) -> None:
        """
        If the fresh connection fails the same way, the answer is 502.
        """
        self.client.deliver(request(requestId=b"r2"))
        self.closed(self.upT)
        _, fresh = self.connectUpstream()
        self.closed(fresh)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.client.value(), errorReply(b"502 Bad Gateway", b"upstream_reset"))

    def test_postWithBodyNotRetried(self) -> None:
        """
        A request with a body is not sent twice: 502.
        """
        self.client.deliver(request(b"POST", fields=b"Content-Length: 3\r\n") + b"abc")
        self.closed(self.upT)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.client.value(), errorReply(b"502 Bad Gateway", b"upstream_reset"))

    def test_closedWhileIdle(self) -> None:
        """
        A pooled connection the host closes while idle leaves the pool; the next request dials.
        """
        self.closed(self.upT)
        self.assertEqual((self.pool().idle[self.upstream.host], self.pool().open), ([], 0))
        self.client.deliver(request(requestId=b"r2"))
        self.assertEqual(len(self.reactor.tcpClients), 2)


class PoolLimitTests(ProxyHarness, SynchronousTestCase):
    """
    The cluster's circuit breakers as clients see them (one connection, two waiting requests).
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=oneHost(circuit_breakers=[{"max_connections": 1, "max_pending_requests": 2}]))
        self.clients = [self.connectClient("10.0.0.%d" % (i + 1)) for i in range(4)]
        for i, (_, client) in enumerate(self.clients[:3]):
            client.deliver(request(requestId=b"r%d" % (i + 1)))

    def test_waitersServedInOrder(self) -> None:
        """
        Requests over the connection limit wait and get the connection, in arrival order, as each
        response ends; nothing else is dialled.
        """
        self.assertEqual(len(self.reactor.tcpClients), 1)
        _, upT = self.connectUpstream()
        for i in range(3):
            self.assertEqual(upT.value().count(b"X-Request-Id"), i + 1)
            self.assertIn(b"X-Request-Id: r%d\r\n\r\n" % (i + 1), upT.value())
            upT.deliver(OK)
            self.assertEqual(self.clients[i][1].value(), OK)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.counter("upstream_cx_pool_reuse_total", cluster="backend"), 2)

    def test_queueFull(self) -> None:
        """
        A request finding the wait queue full is refused at once with 503.
        """
        _, fourth = self.clients[3]
        fourth.deliver(request())
        self.assertEqual(fourth.value(), errorReply(b"503 Service Unavailable", b"upstream_overflow"))
        self.assertEqual(self.counter("upstream_rq_pending_overflow_total", cluster="backend"), 1)

    def test_queueTimeout(self) -> None:
        """
        A request that waited 5 s gets a 503.
        """
        self.reactor.advance(4.875)
        self.assertEqual(self.clients[1][1].value(), b"")
        self.reactor.advance(0.125)
        for _, client in self.clients[1:3]:
            self.assertEqual(client.value(), errorReply(b"503 Service Unavailable", b"upstream_queue_timeout"))
        self.assertEqual(self.counter("upstream_rq_pending_timeout_total", cluster="backend"), 2)

    def test_waiterLeaves(self) -> None:
        """
        A waiting client that disconnects leaves the queue: the connection goes to the next waiter
        and nobody is answered for the one that left.
        """
        self.closed(self.clients[1][1])
        _, upT = self.connectUpstream()
        upT.deliver(OK)
        self.assertIn(b"X-Request-Id: r3\r\n", upT.value())
        self.assertNotIn(b"X-Request-Id: r2\r\n", upT.value())
        self.reactor.advance(10)
        self.assertEqual(self.clients[1][1].value(), b"")


class PoolReleaseTests(ProxyHarness, SynchronousTestCase):
    """
    When an upstream connection goes back to the pool, and when it does not.
    """

    def exchange(self, response: bytes, **cluster: Any) -> tuple[Any, Any]:
        self.setUpProxy(clusters=oneHost(**cluster))
        _, self.client = self.connectClient()
        self.client.deliver(request())
        upstream, upT = self.connectUpstream()
        upT.deliver(response)
        return upstream, upT

    def test_maxRequestsPerConnection(self) -> None:
        """
        A connection that carried C{max_request_per_conn} requests is closed instead of pooled.
        """
        upstream, upT = self.exchange(OK, max_request_per_conn=1)
        self.assertTrue(upT.disconnecting)
        self.assertEqual(self.pool().idle[upstream.host], [])
        self.client.deliver(request(requestId=b"r2"))
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_connectionCloseResponse(self) -> None:
        """
        A response that says Connection: close ends that connection's use: it is closed, not pooled,
        and the next request dials.
        """
        upstream, upT = self.exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        self.assertEqual(self.client.value(), OK)
        self.assertEqual(self.pool().idle[upstream.host], [])
        self.assertTrue(upT.disconnecting)
        self.client.deliver(request(requestId=b"r2"))
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_http10Response(self) -> None:
        """
        An HTTP/1.0 response without keep-alive is not pooled either.
        """
        upstream, upT = self.exchange(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.pool().idle[upstream.host], [])
        self.assertTrue(upT.disconnecting)

    def test_clientLeavesMidResponse(self) -> None:
        """
        A client gone in the middle of a response takes the upstream connection with it.
        """
        self.setUpProxy(clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request())
        upstream, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.closed(client, clean=False)
        self.assertTrue(upT.disconnecting)
        self.assertEqual(self.pool().idle[upstream.host], [])
        self.assertIsNone(upstream.exchange)

    def test_clientLeavesWhileDialling(self) -> None:
        """
        A connection that completes after its client left is pooled for the next request.
        """
        self.setUpProxy(clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request())
        self.closed(client)
        upstream, upT = self.connectUpstream()
        self.assertEqual(upT.value(), b"")
        self.assertEqual(self.pool().idle[upstream.host], [upstream])


class RetryPolicyTests(ProxyHarness, SynchronousTestCase):
    """
    The route's retry_policy (MOSN's retry_on, retry_timeout, num_retries, status_codes).
    """

    def setUpPolicy(self, **policy: object) -> None:
        route = {"cluster_name": "backend", "timeout": "10s",
                 "retry_policy": dict({"retry_on": True, "num_retries": 2}, **policy)}
        self.setUpProxy([{"match": {"prefix": "/"}, "route": route}])

    def test_statusCodeRetriedOnOtherHost(self) -> None:
        """
        A listed status is dropped and the request sent again to the other host; that answer
        reaches the client, and the retry is counted.
        """
        self.setUpPolicy(status_codes=[503])
        _, client = self.connectClient()
        client.deliver(request())
        _, first = self.connectUpstream(0)
        first.deliver(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(first.aborted)
        self.reactor.advance(BACKOFF_MAX)
        self.assertEqual(self.reactor.tcpClients[1][:2], ("127.0.0.1", 9002))
        _, second = self.connectUpstream(1)
        second.deliver(OK)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(self.counter("http_upstream_rq_retry_total", listener="l1"), 1)

    def test_retriesExhausted(self) -> None:
        """
        When every retry got a listed status, the last answer is forwarded as it is.
        """
        self.setUpPolicy(status_codes=[503], num_retries=1)
        _, client = self.connectClient()
        client.deliver(request())
        for index in range(2):
            _, upT = self.connectUpstream(index)
            upT.deliver(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            self.reactor.advance(BACKOFF_MAX)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 503 Service Unavailable"))
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_perTryTimeout(self) -> None:
        """
        retry_timeout bounds each try; a try that times out is retried instead of answered 504.
        """
        self.setUpPolicy(retry_timeout="1s")
        _, client = self.connectClient()
        client.deliver(request())
        _, first = self.connectUpstream(0)
        self.reactor.advance(1.0)
        self.assertTrue(first.aborted)
        self.reactor.advance(BACKOFF_MAX)
        _, second = self.connectUpstream(1)
        second.deliver(OK)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK"))

    def test_resetRetried(self) -> None:
        """
        A fresh connection reset before any response byte is retried under the policy.
        """
        self.setUpPolicy()
        _, client = self.connectClient()
        client.deliver(request())
        upstream, first = self.connectUpstream(0)
        upstream.connectionLost(Failure(ConnectionLost()))
        self.reactor.advance(BACKOFF_MAX)
        _, second = self.connectUpstream(1)
        second.deliver(OK)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK"))

    def test_postNotRetried(self) -> None:
        """
        A request with a body is never sent twice: the listed status is forwarded.
        """
        self.setUpPolicy(status_codes=[503])
        _, client = self.connectClient()
        client.deliver(request(b"POST", fields=b"Content-Length: 2\r\n") + b"hi")
        _, first = self.connectUpstream(0)
        first.deliver(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 503"))
