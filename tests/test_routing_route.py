"""
Tests for L{meshproxy.routing.route}: what a matched entry does (clusters, redirects, direct responses) and
the target it sends upstream.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config.routepolicy import MOSN_RETRY_ON
from meshproxy.config import RetryPolicyConfig
from meshproxy.routing.route import CLUSTER, DIRECT, REDIRECT, Route
from meshproxy.routing.table import RouteTable
from tests.test_routing_table import forward, makeTable, routeOf


class ClusterTests(SynchronousTestCase):
    """
    A forwarding entry names its cluster statically, by weighted choice, or through a request header.
    """

    def test_static(self) -> None:
        """
        The static cluster and the entry's forwarding settings.
        """
        route = routeOf(
            makeTable(
                forward(
                    cluster="api",
                    host_rewrite="internal.example",
                    timeout="2.5s",
                    retry_policy={"retry_on": True, "num_retries": 2, "status_codes": [503]},
                )
            ),
            b"/",
        )
        self.assertEqual(
            (route.kind, route.clusterFor([]), route.clusters, route.clusterHeader),
            (CLUSTER, "api", ("api",), None),
        )
        self.assertEqual(
            (route.hostRewrite, route.autoHostRewrite, route.timeout, route.status, route.body),
            (b"internal.example", False, 2.5, 0, b""),
        )
        self.assertEqual(route.retryPolicy, RetryPolicyConfig(True, None, 2, (503,), MOSN_RETRY_ON))
        auto = routeOf(makeTable(forward(auto_host_rewrite=True)), b"/")
        self.assertEqual((auto.hostRewrite, auto.autoHostRewrite, auto.timeout), (None, True, 60.0))

    def test_weightedDistribution(self) -> None:
        """
        Weighted choices follow the weights with the table's generator, and a seed makes them repeatable.
        """
        entry = forward(
            cluster="",
            weighted_clusters=[
                {"cluster": {"name": "backend", "weight": 90}},
                {"cluster": {"name": "canary", "weight": 10}},
            ],
        )
        del entry["route"]["cluster_name"]
        route = routeOf(makeTable(entry, rng=random.Random(1234)), b"/")
        picks = [route.clusterFor([]) for _ in range(10000)]
        self.assertEqual(set(picks), {"backend", "canary"})
        self.assertTrue(850 <= picks.count("canary") <= 1150, picks.count("canary"))
        again = routeOf(makeTable(entry, rng=random.Random(1234)), b"/")
        self.assertEqual([again.clusterFor([]) for _ in range(10000)], picks)
        self.assertEqual(route.clusters, ("backend", "canary"))

    def test_weightedBoundaries(self) -> None:
        """
        Each cluster owns its share of the generator's range; a zero weight is never chosen.
        """

        class FixedRandom(random.Random):
            value = 0.0

            def random(self) -> float:
                return self.value

        rng = FixedRandom()
        weighted = [
            {"cluster": {"name": "backend", "weight": 1}},
            {"cluster": {"name": "admin", "weight": 0}},
            {"cluster": {"name": "canary", "weight": 3}},
        ]
        route = routeOf(
            makeTable({"match": {"prefix": "/"}, "route": {"weighted_clusters": weighted}}, rng=rng), b"/"
        )
        cases = [(0.0, "backend"), (0.2499, "backend"), (0.25, "canary"), (0.9999999, "canary")]
        for value, expected in cases:
            rng.value = value
            self.assertEqual((value, route.clusterFor([])), (value, expected))

    def test_clusterHeader(self) -> None:
        """
        The cluster header's first value names the cluster; a missing or empty header gives C{None}.
        """
        route = routeOf(makeTable({"match": {"prefix": "/"}, "route": {"cluster_header": "X-Cluster"}}), b"/")
        self.assertEqual(route.clusterHeader, b"x-cluster")
        cases: list[tuple[list[tuple[bytes, bytes]], str | None]] = [
            ([(b"X-CLUSTER", b"canary")], "canary"),
            ([(b"x-cluster", b"api"), (b"x-cluster", b"canary")], "api"),
            ([(b"x-clusters", b"api")], None),
            ([(b"x-cluster", b"")], None),
            ([], None),
        ]
        for headers, expected in cases:
            self.assertEqual((headers, route.clusterFor(headers)), (headers, expected))


class ResponseActionTests(SynchronousTestCase):
    """
    Redirects and direct responses are answered by the proxy itself.
    """

    def redirect(self, **redirect: Any) -> Route:
        """
        The route of a table whose only entry redirects with C{redirect}.
        """
        return routeOf(makeTable({"match": {"prefix": "/"}, "redirect": redirect}), b"/")

    def test_location(self) -> None:
        """
        Scheme, host and path are each replaced when configured and kept otherwise.
        """
        cases = [
            ({}, b"http", b"a.com", b"/x?q=1", b"http://a.com/x?q=1"),
            ({"scheme_redirect": "https"}, b"http", b"a.com", b"/x?q=1", b"https://a.com/x?q=1"),
            ({"scheme_redirect": "https"}, b"http", b"a.com:80", b"/x", b"https://a.com/x"),
            ({"scheme_redirect": "https"}, b"http", b"[::1]:80", b"/x", b"https://[::1]/x"),
            ({"scheme_redirect": "https"}, b"http", b"a.com:8080", b"/x", b"https://a.com:8080/x"),
            ({"scheme_redirect": "http"}, b"https", b"a.com:443", b"/x", b"http://a.com/x"),
            ({"scheme_redirect": "https"}, b"https", b"a.com:443", b"/x", b"https://a.com:443/x"),
            ({"host_redirect": "b.com"}, b"http", b"a.com:8080", b"/x", b"http://b.com/x"),
            ({"host_redirect": "b.com:81"}, b"https", b"a.com", b"/x", b"https://b.com:81/x"),
            ({"path_redirect": "/new"}, b"http", b"a.com", b"/old?q=1", b"http://a.com/new?q=1"),
            ({"path_redirect": "/new?v=2"}, b"http", b"a.com", b"/old?q=1", b"http://a.com/new?v=2"),
            ({"path_redirect": "/new"}, b"http", b"", b"/old", b"/new"),
        ]
        for config, scheme, host, target, expected in cases:
            route = self.redirect(**config)
            self.assertEqual((config, route.location(scheme, host, target)), (config, expected))

    def test_redirectFields(self) -> None:
        """
        A redirect has its status and forwards nowhere.
        """
        route = self.redirect(response_code=308)
        self.assertEqual(
            (route.kind, route.status, route.clusterFor([]), route.timeout), (REDIRECT, 308, None, 0.0)
        )
        self.assertEqual(self.redirect().status, 301)

    def test_direct(self) -> None:
        """
        A direct response has its status and encoded body, and forwards nowhere.
        """
        table = makeTable(
            {"match": {"path": "/t"}, "direct_response": {"status": 503, "body": "d\u00e9j\u00e0"}}
        )
        route = routeOf(table, b"/t")
        self.assertEqual(
            (route.kind, route.status, route.body, route.clusterFor([]), route.clusters),
            (DIRECT, 503, "d\u00e9j\u00e0".encode(), None, ()),
        )
        self.assertIs(route.rewriteTarget(b"/t"), b"/t")


class RewriteTests(SynchronousTestCase):
    """
    The target sent upstream: prefix rewrites with a sane joint, whole-path rewrites, regex rewrites.
    """

    def rewrite(
        self, match: dict[str, Any], target: bytes, headers: Sequence[tuple[bytes, bytes]] = (), **route: Any
    ) -> bytes:
        """
        The upstream target for C{target} through an entry with C{match} and rewrite settings C{route}.
        """
        table = makeTable(forward(match, **route))
        return routeOf(table, target, headers).rewriteTarget(target)

    def test_noRewrite(self) -> None:
        """
        Without a rewrite the very same target comes back.
        """
        target = b"/api/x?y=1"
        self.assertIs(routeOf(makeTable(forward()), target).rewriteTarget(target), target)

    def test_prefix(self) -> None:
        """
        The matched prefix is replaced; a slash at the joint is neither doubled nor lost; the query stays.
        """
        cases = [
            ("/api", "/", b"/api/x", b"/x"),
            ("/api", "/", b"/api", b"/"),
            ("/api", "/", b"/api?q=1", b"/?q=1"),
            ("/api", "/", b"/api//x", b"//x"),
            ("/api/", "/", b"/api/x", b"/x"),
            ("/api/", "/", b"/api//x", b"//x"),
            ("/api/", "/v2", b"/api/x", b"/v2/x"),
            ("/api/", "/v2", b"/api/", b"/v2/"),
            ("/api/", "/v2/", b"/api/x?q", b"/v2/x?q"),
            ("/api", "/v2", b"/api/x", b"/v2/x"),
            ("/api", "/v2", b"/apix", b"/v2x"),
            ("/api", "/v2/", b"/api/x", b"/v2/x"),
            ("/api", "/v2/", b"/api", b"/v2/"),
            ("/", "/v2", b"/x", b"/v2/x"),
            ("/", "/v2", b"/", b"/v2/"),
            ("/", "/", b"/x?q", b"/x?q"),
            ("/api", "", b"/api/x", b"/x"),
            ("/api", "", b"/api", b"/"),
            ("/api", "", b"/api?q", b"/?q"),
            ("/api/", "", b"/api/x", b"/x"),
        ]
        for prefix, rewrite, target, expected in cases:
            result = self.rewrite({"prefix": prefix}, target, prefix_rewrite=rewrite)
            self.assertEqual((prefix, rewrite, target, result), (prefix, rewrite, target, expected))

    def test_wholePath(self) -> None:
        """
        With a path or regex match, a prefix rewrite replaces the whole path and keeps the query; with no
        path condition it is prepended.
        """
        self.assertEqual(self.rewrite({"path": "/old"}, b"/old?q=1", prefix_rewrite="/new"), b"/new?q=1")
        self.assertEqual(self.rewrite({"path": "/old"}, b"/old", prefix_rewrite="/new"), b"/new")
        self.assertEqual(self.rewrite({"regex": "/u/[0-9]+"}, b"/u/7?x", prefix_rewrite="/user"), b"/user?x")
        self.assertEqual(self.rewrite({"path": "/old"}, b"/old", prefix_rewrite=""), b"/")
        headerOnly = {"headers": [{"name": "a", "value": "b"}]}
        self.assertEqual(self.rewrite(headerOnly, b"/x", [(b"a", b"b")], prefix_rewrite="/v2"), b"/v2/x")

    def rewriteTable(self, **regexRewrite: Any) -> RouteTable:
        """
        A table whose only entry rewrites with C{regex_rewrite}.
        """
        pattern, substitution = regexRewrite["regex"], regexRewrite["substitution"]
        rewrite = {"pattern": {"regex": pattern}, "substitution": substitution}
        return makeTable(forward(regex_rewrite=rewrite))

    def test_regex(self) -> None:
        """
        Every match within the path is substituted, group references work, the query is kept untouched.
        """
        table = self.rewriteTable(regex="^/users/([0-9]+)/avatar$", substitution="/avatars/\\1.png")
        self.assertEqual(
            routeOf(table, b"/users/42/avatar?s=1").rewriteTarget(b"/users/42/avatar?s=1"),
            b"/avatars/42.png?s=1",
        )
        every = self.rewriteTable(regex="-", substitution="_")
        self.assertEqual(routeOf(every, b"/").rewriteTarget(b"/a-b-c?x=a-b"), b"/a_b_c?x=a-b")

    def test_regexNoChange(self) -> None:
        """
        A regex that matches nothing leaves the very same target.
        """
        table = self.rewriteTable(regex="^/old/", substitution="/new/")
        target = b"/other/x?old/"
        self.assertIs(routeOf(table, target).rewriteTarget(target), target)

    def test_regexLeadingSlash(self) -> None:
        """
        A substitution that eats the leading slash still gives an origin-form target.
        """
        table = self.rewriteTable(regex="^/api/", substitution="")
        self.assertEqual(routeOf(table, b"/api/x").rewriteTarget(b"/api/x"), b"/x")
