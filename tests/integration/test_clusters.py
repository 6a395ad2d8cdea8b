"""
Cluster features end to end: a real meshproxy process in front of threaded upstreams on 127.0.0.1
that crash, hang, reset, hold requests or fail their health checks, while real clients load it.
Load balancing, active health checks, outlier ejection, panic mode, circuit breakers, retries,
sticky sessions, STRICT_DNS, the TCP relay's failover and what the admin endpoint shows of all that.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import time
from collections import Counter
from typing import Any

from tests.integration.clusterbackends import (
    GATED,
    HANG,
    RESET,
    ClusterBackend,
    LoadRun,
    cluster,
    clusters,
    hostView,
    httpHealthCheck,
    request,
    waitForHost,
)
from tests.integration.harness import MeshProxy, freePort, httpRoute, waitFor
from tests.integration.httpbackends import HTTPProxyTestCase, refusedAddress
from tests.support import configDocument, tcpListener

#: Every ejection in these tests lasts longer than the test: a host only comes back through a passing check.
LONG_EJECTION = {"base_ejection_time": "30s", "max_ejection_time": "60s"}


def unhealthy(host: dict[str, Any]) -> bool:
    """
    A C{/clusters} host entry that is out of load balancing (failed check or ejected).
    """
    return not host["healthy"]


def healthy(host: dict[str, Any]) -> bool:
    """
    A C{/clusters} host entry that is in load balancing.
    """
    return bool(host["healthy"])


class ClusterTestCase(HTTPProxyTestCase):
    """
    Upstreams (L{ClusterBackend}) and client connections that are cleaned up with the test.
    """

    def upstream(self, name: str, **kw: Any) -> ClusterBackend:
        """
        A L{ClusterBackend} stopped in cleanup.
        """
        backend = ClusterBackend(name, **kw)
        self.addCleanup(backend.stop)
        return backend

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        """
        A keep-alive client connection to the proxy's listener, closed in cleanup.
        """
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        self.addCleanup(conn.close)
        return conn

    def assertSettled(self, clusterName: str, proxy: MeshProxy | None = None) -> None:
        """
        Once the exchanges are over, C{/clusters} counts nothing in flight for C{clusterName}: no
        request or retry holds a place in the circuit breakers, no host has a request active.
        """
        proxy = proxy or self.meshproxy

        def active() -> list[Any]:
            view = clusters(proxy)[clusterName]
            return [view["requests_active"], view["retries_active"]] + [h["requests_active"] for h in view["hosts"]]

        self.assertTrue(waitFor(lambda: not any(active()), 5.0), active())

    def spread(self, conn: http.client.HTTPConnection, n: int, **kw: Any) -> Counter[str | None]:
        """
        C{n} requests on C{conn}, each answered 200; how many each backend answered.
        """
        seen: Counter[str | None] = Counter()
        for _ in range(n):
            answer = request(conn, **kw)
            self.assertEqual(answer.status, 200, answer)
            seen[answer.backend] += 1
        return seen


class FailoverTests(ClusterTestCase):
    """
    Hosts that crash, hang or reset while clients keep sending.
    """

    def test_crashUnderLoad(self) -> None:
        """
        A host that crashes under load (listener and connections closed at once) costs at most the
        requests in flight at that instant, none started more than a second later; it is marked
        unhealthy, and once it listens again on the same port its active check re-admits it.
        """
        a, b, c = (self.upstream(n, delay=0.005) for n in "abc")
        self.proxy([cluster(
            "backend", [a, b, c], health_check=httpHealthCheck(),
            outlier_detection={"consecutive_failures": 3, **LONG_EJECTION},
        )])
        load = LoadRun(self.port, clients=8, perClient=2000, duration=16.0)
        try:
            self.assertTrue(waitFor(lambda: load.count() >= 300 and a.count() >= 50, 10.0), "no load")
            with load.lock:  # nothing starts or ends while the host crashes
                inFlight = set(load.inFlight)
                killedAt = time.monotonic()
                a.crash()
            # Marked unhealthy, and the pool has let go of every connection the crash closed.
            waitForHost(self.meshproxy, "backend", a.address,
                        lambda h: not h["healthy"] and h["connections_active"] == h["requests_active"] == 0)
            self.assertTrue(waitFor(lambda: time.monotonic() > killedAt + 3.0, 5.0))
        finally:
            outcomes = load.stop()
        failed = [o for o in outcomes if not o.ok]
        self.assertLessEqual(len(failed), len(inFlight), failed)
        self.assertEqual([o for o in failed if o.number not in inFlight and o.started < killedAt], [])
        self.assertEqual([o for o in failed if o.started > killedAt + 1.0], [])
        after = Counter(o.answer.backend for o in outcomes if o.started > killedAt + 1.0)
        self.assertEqual(set(after), {"b", "c"}, after)
        self.assertGreater(sum(after.values()), 100)

        # Back on the same port: the active check passes and it gets traffic again.
        a = a.restarted()
        self.addCleanup(a.stop)
        entry = waitForHost(self.meshproxy, "backend", a.address, healthy)
        self.assertEqual(entry["health_flags"], ["healthy"])
        conn = self.connection()
        self.assertTrue(waitFor(lambda: request(conn).backend == "a", 10.0, 0.0))
        self.assertGreaterEqual(self.spread(conn, 30)["a"], 5)
        self.assertSettled("backend")

    def test_hangingHostTimesOutThenIsEjected(self) -> None:
        """
        A host that accepts and never answers gives 504 after the route timeout;
        C{consecutive_failures} such timeouts eject it, and the other hosts serve everything after.
        """
        hanging = self.upstream("hang", mode=HANG)
        b, c = self.upstream("b"), self.upstream("c")
        self.proxy(
            [cluster("backend", [hanging, b, c], outlier_detection={"consecutive_failures": 3, **LONG_EJECTION})],
            routes=[httpRoute(timeout="300ms")],
        )
        conn = self.connection()
        answers = [request(conn) for _ in range(9)]
        timeouts = [a for a in answers if a.status != 200]
        self.assertEqual([(a.status, a.headers.get("x-meshproxy-error")) for a in timeouts],
                         [(504, "upstream_timeout")] * 3)
        self.assertEqual(hanging.count(), 3)
        entry = waitForHost(self.meshproxy, "backend", hanging.address, unhealthy)
        self.assertEqual(entry["health_flags"], ["failed_outlier_check"])
        self.assertEqual(entry["reason"], "timeout")
        self.assertTrue(entry["outlier"]["ejected"])
        self.assertEqual(self.spread(conn, 12), Counter(b=6, c=6))
        self.assertEqual(hanging.count(), 3)
        self.assertEqual(self.stat("upstream_outlier_ejections_total", cluster="backend"), 1)
        self.assertSettled("backend")

    def test_bodyIsNeverSentTwice(self) -> None:
        """
        An upstream that resets after reading a request body gives the client 502, and saw that
        POST (or PUT) exactly once, although the route retries resets and 5xx and another host was
        there; a GET to the same hosts is retried (the policy is in force).
        """
        one, two = self.upstream("one", mode=RESET), self.upstream("two", mode=RESET)
        policy = {
            "retry_on": "connect-failure,reset,5xx,gateway-error,retriable-status-codes",
            "num_retries": 2, "status_codes": [503], "retry_back_off": {"base_interval": "10ms"},
        }
        self.proxy(
            [cluster("backend", [one, two], outlier_detection={"consecutive_failures": 0})],
            routes=[httpRoute(retry_policy=policy)],
        )
        conn = self.connection()
        self.assertEqual(self.spread(conn, 2), Counter(one=1, two=1))  # pooled connections to both
        for method in ("POST", "PUT"):
            answer = request(conn, method, "/upload", body=b"x" * 1000)
            self.assertEqual((answer.status, answer.headers.get("x-meshproxy-error")), (502, "upstream_reset"))
            self.assertEqual(one.count(method) + two.count(method), 1, (one.requests, two.requests))
        answer = request(conn, "GET", "/reset")
        self.assertEqual(answer.status, 502, answer)
        self.assertEqual(one.count("GET", "/reset") + two.count("GET", "/reset"), 3)
        self.assertSettled("backend")

    def test_retriesWithAnUnhealthyHost(self) -> None:
        """
        A host out of the candidates (failing its check) does not cut retries short: with two
        live hosts answering 503 (or hanging) and C{num_retries: 3}, four tries are made (hosts are
        tried again once every candidate was), then the last upstream 503 reaches the client (or
        a 504 for the timeouts).
        """
        a, b = self.upstream("a", status=503), self.upstream("b", status=503)
        h1, h2 = self.upstream("h1", mode=HANG), self.upstream("h2", mode=HANG)
        down = refusedAddress()
        checked: dict[str, Any] = {"health_check": httpHealthCheck(), "outlier_detection": {"consecutive_failures": 0}}
        policy = {"num_retries": 3, "retry_back_off": {"base_interval": "5ms"}}
        self.proxy(
            [cluster("statuses", [a, b, down], **checked), cluster("hanging", [h1, h2, down], **checked)],
            routes=[
                httpRoute("/hang", cluster="hanging",
                          retry_policy={"retry_on": "gateway-error", "retry_timeout": "200ms", **policy}),
                httpRoute("/", cluster="statuses", retry_policy={"retry_on": True, "status_codes": [503], **policy}),
            ],
        )
        for name in ("statuses", "hanging"):
            waitForHost(self.meshproxy, name, down, unhealthy)
        conn = self.connection()
        answer = request(conn)
        self.assertEqual((answer.status, answer.headers.get("x-meshproxy-error")), (503, None), answer)
        self.assertIn(answer.backend, ("a", "b"))
        self.assertEqual(a.count() + b.count(), 4)
        answer = request(conn, path="/hang")
        self.assertEqual((answer.status, answer.headers.get("x-meshproxy-error")), (504, "upstream_timeout"))
        self.assertEqual(h1.count() + h2.count(), 4)
        self.assertSettled("statuses")
        self.assertSettled("hanging")

    def test_tcpRelayFailsOverAndEjects(self) -> None:
        """
        A C{tcp_proxy} cluster with one dead host among three: every connection still reaches a
        live host (a refused connect is retried on another), and the dead host gets ejected.
        """
        live = [self.upstream(n) for n in ("a", "b")]
        dead = refusedAddress()
        workdir = self.mktemp()
        os.makedirs(workdir)
        port = freePort()
        proxy = MeshProxy(configDocument(
            listeners=[tcpListener(address=f"127.0.0.1:{port}")],
            clusters=[cluster("backend", [live[0], dead, live[1]],
                              outlier_detection={"consecutive_failures": 2, **LONG_EJECTION})],
        ), workdir)
        proxy.start()
        self.addCleanup(proxy.stop)
        seen: Counter[str | None] = Counter()
        for i in range(12):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % i)
                data = b""
                for _ in range(100):
                    piece = sock.recv(4096)
                    if not piece:
                        break
                    data += piece
            self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
            seen[data.rsplit(b"\r\n\r\n", 1)[1].decode()] += 1
        self.assertEqual(set(seen), {"a", "b"})
        entry = hostView(proxy, "backend", dead)
        self.assertEqual(entry["health_flags"], ["failed_outlier_check"])
        self.assertEqual(entry["reason"], "connect_failure")
        self.assertEqual(entry["connect_failures"], 2)
        self.assertSettled("backend", proxy)


class BalancingTests(ClusterTestCase):
    """
    Who gets the traffic: panic mode, least request, sticky sessions, circuit breakers.
    """

    def panicProxy(self, **keys: Any) -> list[ClusterBackend]:
        good = self.upstream("good")
        bad = [self.upstream(n, healthStatus=503) for n in ("bad1", "bad2")]
        self.proxy([cluster("backend", [good, *bad], health_check=httpHealthCheck(), **keys)])
        for backend in bad:
            waitForHost(self.meshproxy, "backend", backend.address, unhealthy)
        return [good, *bad]

    def test_panicSpreadsOverAllHosts(self) -> None:
        """
        With two of three hosts failing their checks (below the default 50 % panic threshold) the
        cluster balances over all three.
        """
        self.panicProxy()
        self.assertTrue(clusters(self.meshproxy)["backend"]["panic"])
        seen = self.spread(self.connection(), 30)
        self.assertEqual(set(seen), {"good", "bad1", "bad2"}, seen)
        self.assertGreaterEqual(min(seen.values()), 5, seen)
        self.assertGreater(self.stat("upstream_lb_healthy_panic_total", cluster="backend"), 0)

    def test_noPanicWithThresholdZero(self) -> None:
        """
        With C{healthy_panic_threshold: 0} only the healthy host gets traffic.
        """
        self.panicProxy(healthy_panic_threshold=0)
        self.assertFalse(clusters(self.meshproxy)["backend"]["panic"])
        self.assertEqual(self.spread(self.connection(), 30), Counter(good=30))

    def test_leastRequestAvoidsTheSlowHost(self) -> None:
        """
        C{LB_LEAST_REQUEST} under concurrency sends fewer requests to a slow host than to either
        fast one.
        """
        slow = self.upstream("slow", delay=0.2)
        fast = [self.upstream(n) for n in ("fast1", "fast2")]
        self.proxy([cluster("backend", [slow, *fast], "LB_LEAST_REQUEST")])
        load = LoadRun(self.port, clients=6, perClient=40, duration=30.0)
        self.assertTrue(waitFor(lambda: load.count() >= 240, 30.0))
        outcomes = load.stop()
        self.assertEqual([o for o in outcomes if not o.ok], [])
        seen = Counter(o.answer.backend for o in outcomes)
        self.assertLess(seen["slow"] * 2, min(seen["fast1"], seen["fast2"]), seen)

    def test_stickySessions(self) -> None:
        """
        C{LB_MAGLEV} with a cookie C{hash_policy} and a C{ttl}: the first answer sets the cookie;
        requests that send it back all reach one backend; when that backend dies they all reach
        one other backend.
        """
        backends = {n: self.upstream(n) for n in ("a", "b", "c")}
        self.proxy(
            [cluster("backend", backends.values(), "LB_MAGLEV", health_check=httpHealthCheck())],
            routes=[httpRoute(hash_policy=[{"cookie": {"name": "sticky", "ttl": "1h"}}])],
        )
        conn = self.connection()
        first = request(conn)
        self.assertEqual(first.status, 200)
        match = re.fullmatch(r"sticky=([0-9a-f]{16}); Max-Age=3600; Path=/; HttpOnly", first.headers.get("set-cookie", ""))
        self.assertIsNotNone(match, first.headers)
        assert match is not None
        cookie = {"Cookie": f"sticky={match.group(1)}"}
        seen = self.spread(conn, 20, headers=cookie)
        self.assertEqual(len(seen), 1, seen)
        answer = request(conn, headers=cookie)
        self.assertNotIn("set-cookie", answer.headers)
        [owner] = seen
        assert owner is not None
        backends[owner].crash()
        waitForHost(self.meshproxy, "backend", backends[owner].address, unhealthy)
        after = self.spread(conn, 20, headers=cookie)
        self.assertEqual(len(after), 1, after)
        self.assertNotIn(owner, after)

    def test_stickySessionMovesOnlyOnce(self) -> None:
        """
        When a sticky session's host dies, its requests move to one other host and stay there: the
        host a request fails over to while the dead host is still a candidate (its connects are
        refused) is the host the session keeps once the dead host is ejected.
        """
        backends = {n: self.upstream(n) for n in ("a", "b", "c", "d")}
        self.proxy(
            [cluster("backend", backends.values(), "LB_MAGLEV",
                     outlier_detection={"consecutive_failures": 20, **LONG_EJECTION})],
            routes=[httpRoute(hash_policy=[{"cookie": {"name": "sticky", "ttl": "1h"}}])],
        )
        conn = self.connection()
        owners = {f"s{i}": request(conn, headers={"Cookie": f"sticky=s{i}"}).backend for i in range(60)}
        doomed = [value for value, owner in owners.items() if owner == "a"][:10]
        self.assertGreaterEqual(len(doomed), 5, owners)
        backends["a"].crash()
        # Fewer refused connects than consecutive_failures: "a" is still a candidate.
        during = {value: request(conn, headers={"Cookie": f"sticky={value}"}).backend for value in doomed}
        self.assertNotIn("a", during.values())
        self.assertTrue(hostView(self.meshproxy, "backend", backends["a"].address)["healthy"])
        for _ in range(30):
            if not hostView(self.meshproxy, "backend", backends["a"].address)["healthy"]:
                break
            request(conn, headers={"Cookie": f"sticky={doomed[0]}"})
        waitForHost(self.meshproxy, "backend", backends["a"].address, unhealthy)
        after = {value: request(conn, headers={"Cookie": f"sticky={value}"}).backend for value in doomed}
        self.assertEqual(after, during)

    def test_circuitBreakerOverflow(self) -> None:
        """
        With C{max_requests: 2} and two requests held open upstream, a third gets 503
        C{upstream_overflow} and never reaches a backend; once they finish, requests pass again.
        """
        slow = self.upstream("slow", mode=GATED)
        self.proxy([cluster("backend", [slow], circuit_breakers=[{"max_requests": 2}])])
        held: list[Any] = []

        def hold() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            held.append(request(conn))
            conn.close()

        threads = [threading.Thread(target=hold, daemon=True) for _ in range(2)]
        for thread in threads:
            thread.start()
        self.addCleanup(slow.release)
        self.assertTrue(waitFor(lambda: slow.count() == 2, 10.0))
        answer = request(self.connection())
        self.assertEqual((answer.status, answer.headers.get("x-meshproxy-error")), (503, "upstream_overflow"))
        slow.release()
        for thread in threads:
            thread.join(20)
        self.assertEqual([a.status for a in held], [200, 200])
        self.assertEqual(slow.count(), 2)
        self.assertEqual(request(self.connection()).status, 200)
        self.assertEqual(slow.count(), 3)
        self.assertEqual(self.stat("upstream_rq_overflow_total", cluster="backend"), 1)
        self.assertSettled("backend")


class DiscoveryAndAdminTests(ClusterTestCase):
    """
    STRICT_DNS, and what the admin endpoint tells about clusters.
    """

    def test_strictDNS(self) -> None:
        """
        A C{STRICT_DNS} cluster with host C{localhost:PORT} resolves it and proxies to it;
        C{/clusters} shows the resolved address with the host name.
        """
        backend = self.upstream("dns")
        self.proxy([{
            "name": "backend", "type": "STRICT_DNS", "lb_type": "LB_ROUNDROBIN", "connect_timeout": "2s",
            "dns_refresh_rate": "1s", "dns_lookup_family": "V4_ONLY",
            "hosts": [{"address": f"localhost:{backend.port}"}],
        }])
        entry = waitForHost(self.meshproxy, "backend", backend.address, healthy)
        self.assertEqual(entry["hostname"], "localhost")
        view = clusters(self.meshproxy)["backend"]
        self.assertEqual(view["type"], "STRICT_DNS")
        self.assertEqual([h["address"] for h in view["hosts"]], [backend.address])
        self.assertEqual(self.spread(self.connection(), 3), Counter(dns=3))

    def test_reasonClearsWhenEjectionEnds(self) -> None:
        """
        A host back from an ejection is shown healthy without the failure that ejected it.
        """
        hanging, other = self.upstream("hang", mode=HANG), self.upstream("other")
        self.proxy(
            [cluster("backend", [hanging, other],
                     outlier_detection={"consecutive_failures": 1, "base_ejection_time": "300ms"})],
            routes=[httpRoute(timeout="200ms")],
        )
        conn = self.connection()
        self.assertEqual(sorted(request(conn).status for _ in range(2)), [200, 504])
        self.assertEqual(hostView(self.meshproxy, "backend", hanging.address)["reason"], "timeout")
        entry = waitForHost(self.meshproxy, "backend", hanging.address, healthy)
        self.assertEqual((entry["health_flags"], entry["outlier"]["ejected"]), (["healthy"], False))
        self.assertNotEqual(entry["reason"], "timeout")

    def test_adminViews(self) -> None:
        """
        C{/clusters} (JSON and C{?format=text}) and C{/stats/prometheus} show health flags,
        ejections with their reasons and live counters; C{POST /healthcheck/fail} makes C{/ready}
        503 while proxying goes on, C{/healthcheck/ok} makes it 200 again.
        """
        up, gated = self.upstream("up"), self.upstream("gated", mode=GATED)
        down = refusedAddress()
        failing = self.upstream("failing", mode=RESET)  # every request to /reset... is reset
        self.proxy(
            [
                cluster("checked", [up, down], health_check=httpHealthCheck()),
                cluster("busy", [gated]),
                cluster("passive", [failing, self.upstream("spare")],
                        outlier_detection={"consecutive_failures": 2, **LONG_EJECTION}),
            ],
            routes=[
                httpRoute("/reset", cluster="passive"), httpRoute("/held", cluster="busy"),
                httpRoute("/", cluster="checked"),
            ],
        )
        proxy = self.meshproxy
        waitForHost(proxy, "checked", down, unhealthy)
        conn = self.connection()
        for _ in range(4):
            request(conn, path="/reset")
        ejected = waitForHost(proxy, "passive", failing.address, unhealthy)
        self.assertEqual((ejected["health_flags"], ejected["reason"]), (["failed_outlier_check"], "reset"))
        self.assertTrue(ejected["outlier"]["ejected"])
        self.assertEqual(ejected["outlier"]["timesEjected"], 1)
        dead = hostView(proxy, "checked", down)
        self.assertEqual((dead["health_flags"], dead["reason"]), (["failed_active_hc"], "connect_refused"))
        self.assertFalse(dead["active_check"]["healthy"])

        # A request held upstream shows in the active counters.
        held: list[Any] = []
        heldConn = self.connection(20)
        holder = threading.Thread(target=lambda: held.append(request(heldConn, path="/held")), daemon=True)
        self.addCleanup(gated.release)
        holder.start()
        self.assertTrue(waitFor(lambda: gated.count() == 1, 10.0))
        busy = hostView(proxy, "busy", gated.address)
        self.assertEqual((busy["requests_active"], busy["connections_active"]), (1, 1))
        self.assertEqual(clusters(proxy)["busy"]["requests_active"], 1)

        status, text = proxy.admin("/clusters?format=text")
        lines = set(text.decode().splitlines())
        self.assertEqual(status, 200)
        for line in (
            f"checked::{down}::health_flags::failed_active_hc",
            f"checked::{up.address}::health_flags::healthy",
            f"busy::{gated.address}::requests_active::1",
            f"passive::{failing.address}::health_flags::failed_outlier_check",
            f"passive::{failing.address}::ejections::1",
            "busy::requests_active::1",
        ):
            self.assertIn(line, lines)
        gated.release()
        holder.join(20)
        self.assertEqual([a.status for a in held], [200])

        status, body = proxy.admin("/stats/prometheus")
        metrics = body.decode()
        for line in (
            f'meshproxy_upstream_host_healthy{{cluster="checked",host="{down}"}} 0',
            f'meshproxy_upstream_host_healthy{{cluster="checked",host="{up.address}"}} 1',
            f'meshproxy_upstream_host_ejected{{cluster="passive",host="{failing.address}"}} 1',
            'meshproxy_upstream_outlier_ejections_total{cluster="passive"} 1',
            'meshproxy_upstream_outlier_ejections_active{cluster="passive"} 1',
        ):
            self.assertIn(line, metrics.splitlines())

        self.assertEqual(proxy.admin("/healthcheck/fail", "POST"), (200, b"OK\n"))
        status, body = proxy.admin("/ready")
        self.assertEqual(status, 503, body)
        self.assertIn(b"/healthcheck/fail", body)
        self.assertEqual(request(conn).status, 200)
        self.assertEqual(proxy.admin("/healthcheck/ok", "POST"), (200, b"OK\n"))
        self.assertEqual(proxy.admin("/ready")[0], 200)
