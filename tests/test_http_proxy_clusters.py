"""
The HTTP connection manager with issue 5's cluster features: circuit breakers, hash policies and
sticky cookies, outlier reports, retry conditions and back-off, subsets.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.proxyharness import OK, ProxyHarness, errorReply, request

BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"


def forwardWith(**route: Any) -> list[dict[str, Any]]:
    return [{"match": {"prefix": "/"}, "route": {"cluster_name": "backend", "timeout": "2s", **route}}]


class CircuitBreakerTests(ProxyHarness, SynchronousTestCase):
    """
    C{max_requests} overflow is a 503 that never reaches an upstream.
    """

    def test_maxRequests(self) -> None:
        """
        With one request in flight and C{max_requests: 1}, the next is refused without dialling; once
        the first finishes, requests flow again.
        """
        self.setUpProxy(circuit_breakers=[{"max_requests": 1}])
        _, first = self.connectClient()
        first.deliver(request())
        self.assertEqual(len(self.reactor.tcpClients), 1)
        _, second = self.connectClient()
        second.deliver(request())
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(second.value(), errorReply(b"503 Service Unavailable", b"upstream_overflow"))
        self.assertEqual(self.counter("upstream_rq_overflow_total", cluster="backend"), 1)
        _, up = self.connectUpstream(0)
        up.deliver(OK)
        self.assertTrue(first.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(self.clusters.get("backend").activeRequests, 0)
        _, third = self.connectClient()
        third.deliver(request())
        self.assertEqual(self.clusters.get("backend").activeRequests, 1)
        self.assertEqual(self.counter("upstream_rq_overflow_total", cluster="backend"), 1)

    def test_clientGoneReleases(self) -> None:
        """
        A client that leaves mid-request gives its place back.
        """
        self.setUpProxy(circuit_breakers=[{"max_requests": 1}])
        _, first = self.connectClient()
        first.deliver(request())
        self.closed(first, clean=False)
        self.assertEqual(self.clusters.get("backend").activeRequests, 0)

    def test_hostActiveRequests(self) -> None:
        """
        The host's active-request count (least-request balancing) follows the exchange.
        """
        self.setUpProxy()
        _, client = self.connectClient()
        client.deliver(request())
        _, up = self.connectUpstream(0)
        host = self.clusters.get("backend").hosts[0]
        self.assertEqual((host.activeRequests, host.requestsTotal.value), (1, 1))
        up.deliver(OK)
        self.assertEqual(host.activeRequests, 0)


class StickyTests(ProxyHarness, SynchronousTestCase):
    """
    A cookie hash policy with a TTL on a Maglev cluster is a sticky session.
    """

    def setUp(self) -> None:
        hosts = [{"address": f"127.0.0.1:{9001 + i}"} for i in range(4)]
        self.setUpProxy(
            forwardWith(hash_policy=[{"cookie": {"name": "mp_sticky", "path": "/", "ttl": "1h"}}]),
            clusters=[{"name": "backend", "lb_type": "LB_MAGLEV", "hosts": hosts, "max_request_per_conn": 1}],
        )

    def exchange(self, fields: bytes = b"", client: str = "10.0.0.1") -> tuple[int, bytes]:
        _, downstream = self.connectClient(client)
        downstream.deliver(request(fields=fields))
        port = self.reactor.tcpClients[-1][1]
        _, up = self.connectUpstream()
        up.deliver(OK)
        return port, downstream.value()

    def test_generatedCookie(self) -> None:
        """
        A first request gets a C{Set-Cookie}; sending it back lands on the same host, whatever the
        client address, and gets no new cookie.
        """
        port, answer = self.exchange()
        cookie = [line for line in answer.split(b"\r\n") if line.startswith(b"Set-Cookie: ")]
        self.assertEqual(len(cookie), 1)
        value = cookie[0][len(b"Set-Cookie: "):].split(b";")[0]
        self.assertIn(b"Max-Age=3600", cookie[0])
        for client in ("10.9.9.9", "10.8.8.8", "10.7.7.7"):
            again, answer = self.exchange(b"Cookie: other=1; " + value + b"\r\n", client)
            self.assertEqual(again, port)
            self.assertNotIn(b"Set-Cookie", answer)

    def test_hostGone(self) -> None:
        """
        When the cookie's host is unhealthy the request goes elsewhere, and keeps going to one place.
        """
        port, answer = self.exchange()
        value = [line for line in answer.split(b"\r\n") if line.startswith(b"Set-Cookie: ")][0][12:].split(b";")[0]
        cluster = self.clusters.get("backend")
        [host] = [h for h in cluster.hosts if h.port == port]
        cluster.activeHealthChanged(host, False, "test")
        ports = {self.exchange(b"Cookie: " + value + b"\r\n")[0] for _ in range(3)}
        self.assertEqual(len(ports), 1)
        self.assertNotIn(port, ports)


class OutlierTests(ProxyHarness, SynchronousTestCase):
    """
    Responses and failures reach the outlier detector.
    """

    def test_gatewayErrorsEject(self) -> None:
        """
        Five 502 answers in a row from one host eject it; the others take the traffic.
        """
        # A header hash on a Maglev cluster sends every request to one host.
        self.setUpProxy(forwardWith(hash_policy=[{"header": {"key": "x-user"}}]), clusters=[{
            "name": "backend", "lb_type": "LB_MAGLEV", "max_request_per_conn": 1,
            "hosts": [{"address": "127.0.0.1:9001"}, {"address": "127.0.0.1:9002"}, {"address": "127.0.0.1:9003"}],
        }])
        cluster = self.clusters.get("backend")
        ports = []
        for _ in range(5):
            _, client = self.connectClient()
            client.deliver(request(fields=b"X-User: alice\r\n"))
            ports.append(self.reactor.tcpClients[-1][1])
            _, up = self.connectUpstream()
            up.deliver(BAD_GATEWAY)
            self.assertTrue(client.value().startswith(b"HTTP/1.1 502"))
        self.assertEqual(len(set(ports)), 1)
        [bad] = [h for h in cluster.hosts if h.port == ports[0]]
        self.assertTrue(bad.ejected)
        self.assertNotIn(bad, cluster.candidates)
        _, client = self.connectClient()
        client.deliver(request(fields=b"X-User: alice\r\n"))
        self.assertNotEqual(self.reactor.tcpClients[-1][1], ports[0])

    def test_timeoutCounts(self) -> None:
        """
        A response timeout is a failure of that host.
        """
        self.setUpProxy(outlier_detection={"consecutive_failures": 1, "max_ejection_percent": 50})
        _, client = self.connectClient()
        client.deliver(request())
        self.connectUpstream(0)
        self.reactor.advance(2.0)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 504"))
        self.assertTrue(self.clusters.get("backend").hosts[0].ejected)


class RetryConditionTests(ProxyHarness, SynchronousTestCase):
    """
    Envoy's C{retry_on} conditions and the back-off between tries.
    """

    def test_gatewayError(self) -> None:
        """
        C{gateway-error} retries a 502 after a back-off of at most the base interval; nothing is
        dialled before the back-off ends.
        """
        self.setUpProxy(forwardWith(retry_policy={
            "retry_on": "gateway-error", "num_retries": 1,
            "retry_back_off": {"base_interval": "100ms", "max_interval": "1s"},
        }))
        self.filter.rng.random = lambda: 1.0  # type: ignore[method-assign]
        self.filter.rng.uniform = lambda a, b: b  # type: ignore[method-assign]
        _, client = self.connectClient()
        client.deliver(request())
        _, first = self.connectUpstream(0)
        first.deliver(BAD_GATEWAY)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.099)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.001)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        _, second = self.connectUpstream(1)
        second.deliver(OK)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK"))

    def test_5xxNotRetriedWithout(self) -> None:
        """
        C{reset} alone does not retry a 500 answer.
        """
        self.setUpProxy(forwardWith(retry_policy={"retry_on": "reset", "num_retries": 2}))
        _, client = self.connectClient()
        client.deliver(request())
        _, first = self.connectUpstream(0)
        first.deliver(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 500"))

    def test_retryOverflow(self) -> None:
        """
        With C{max_retries: 0} no retry is made: the upstream's own answer is forwarded, and the
        overflow counted.
        """
        self.setUpProxy(
            forwardWith(retry_policy={"retry_on": "5xx", "num_retries": 2}),
            circuit_breakers=[{"max_retries": 0}],
        )
        _, client = self.connectClient()
        client.deliver(request())
        _, first = self.connectUpstream(0)
        first.deliver(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(client.value(), b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.counter("upstream_rq_retry_overflow_total", cluster="backend"), 1)

    def test_clientGoneDuringBackoff(self) -> None:
        """
        A client that leaves while a retry waits cancels it.
        """
        self.setUpProxy(forwardWith(retry_policy={"retry_on": "5xx", "num_retries": 2}))
        _, client = self.connectClient()
        client.deliver(request())
        _, first = self.connectUpstream(0)
        first.deliver(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        self.closed(client, clean=False)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.clusters.get("backend").activeRetries, 0)


class SubsetRouteTests(ProxyHarness, SynchronousTestCase):
    """
    A route's C{metadata_match} picks the subset its requests go to.
    """

    def test_metadataMatch(self) -> None:
        """
        Requests go only to hosts labelled as the route asks.
        """
        def host(port: int, version: str) -> dict[str, Any]:
            return {"address": f"127.0.0.1:{port}", "metadata": {"filter_metadata": {"mosn.lb": {"version": version}}}}

        match = {"filter_metadata": {"mosn.lb": {"version": "v2"}}}
        self.setUpProxy(forwardWith(metadata_match=match), clusters=[{
            "name": "backend", "lb_subset_config": {"subset_selectors": [["version"]]}, "max_request_per_conn": 1,
            "hosts": [host(9001, "v1"), host(9002, "v2"), host(9003, "v1")],
        }])
        for _ in range(3):
            _, client = self.connectClient()
            client.deliver(request())
            self.assertEqual(self.reactor.tcpClients[-1][1], 9002)
            _, up = self.connectUpstream()
            up.deliver(OK)
