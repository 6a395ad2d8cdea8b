"""
Tests for L{meshproxy.routing.explain} through L{RouteTable.explain}: the admin's account of a routing
decision.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.routing.table import RouteTable
from tests.test_routing_table import forward, parseRouter, vhost


def siteTable(rng: random.Random | None = None) -> RouteTable:
    """
    A router with an exact, a wildcard and a catch-all-free layout, and entries failing in every way.
    """
    site = vhost(
        forward({"prefix": "/api", "headers": [{"name": "X-Env", "value": "prod"}]}, "api"),
        forward({"prefix": "/api", "headers": [{"name": "x-beta", "value": "y.*", "regex": True}]}, "canary"),
        forward({"path": "/exact"}, "static"),
        forward({"regex": "/users/[0-9]+"}, "admin"),
        forward(
            {"prefix": "/api/"},
            "backend",
            prefix_rewrite="/v2/",
            host_rewrite="internal",
            timeout="3s",
            retry_policy={"retry_on": True, "num_retries": 2, "status_codes": [503]},
            request_headers_to_add=[{"header": {"key": "X-Peer", "value": "%downstream_remote_address%"}}],
        ),
        {
            "match": {"prefix": "/split"},
            "route": {
                "weighted_clusters": [
                    {"cluster": {"name": "backend", "weight": 3}},
                    {"cluster": {"name": "canary", "weight": 1}},
                ]
            },
        },
        {"match": {"prefix": "/by-header"}, "route": {"cluster_header": "X-Cluster"}},
        {"match": {"prefix": "/old"}, "redirect": {"path_redirect": "/new", "scheme_redirect": "https"}},
        {"match": {"path": "/ping"}, "direct_response": {"status": 200, "body": "pong"}},
        name="site",
        domains=["www.example.com", "*.example.com"],
    )
    return RouteTable(parseRouter(site), rng)


class ExplainTests(SynchronousTestCase):
    """
    Which virtual host and why, every entry tried with why it failed, and what the match does.
    """

    def test_matched(self) -> None:
        """
        A forwarded request lists the failed entries with their reasons, then the match and its action.
        """
        result = siteTable().explain("www.example.com:8080", "/api/items?x=1", "POST", [("X-Beta", "no")])
        self.assertEqual(
            result["virtualHost"],
            {
                "name": "site",
                "domain": "www.example.com",
                "precedence": "exact",
                "reason": "host 'www.example.com:8080' matches exact domain 'www.example.com' "
                "(the domain names no port, so any port matches)",
            },
        )
        self.assertEqual(
            [(entry["index"], entry["matched"], entry["reason"]) for entry in result["routes"]],
            [
                (0, False, "header 'x-env' missing"),
                (1, False, "header 'x-beta' value 'no' does not satisfy header 'x-beta' ~ regex 'y.*'"),
                (2, False, "path '/exact' is not '/api/items' (query ignored)"),
                (3, False, "regex '/users/[0-9]+' does not fully match '/api/items' (query ignored)"),
                (4, True, "prefix '/api/' matches '/api/items?x=1'"),
            ],
        )
        self.assertEqual(result["routes"][0]["match"], "prefix '/api' and header 'x-env' = 'prod'")
        action = result["action"]
        self.assertEqual(
            {
                key: action[key]
                for key in ("kind", "index", "cluster", "upstreamTarget", "hostRewrite", "timeout")
            },
            {
                "kind": "cluster",
                "index": 4,
                "cluster": "backend",
                "upstreamTarget": "/v2/items?x=1",
                "hostRewrite": "internal",
                "timeout": 3.0,
            },
        )
        self.assertEqual(
            action["retryPolicy"],
            {"retryOn": True, "retryTimeout": None, "numRetries": 2, "statusCodes": [503]},
        )
        self.assertEqual(
            action["requestHeadersToAdd"],
            [{"name": "X-Peer", "value": "%downstream_remote_address%", "append": False}],
        )
        self.assertEqual((result["status"], result["outcome"]), (None, "route 4 matches: forward to backend"))
        self.assertEqual(result["request"]["method"], "POST")
        json.dumps(result)

    def test_headerValueMatches(self) -> None:
        """
        A satisfied header condition is reported with the value that satisfied it.
        """
        result = siteTable().explain("a.example.com", "/api", headers=[("x-env", "dev"), ("X-ENV", "prod")])
        self.assertEqual(result["virtualHost"]["precedence"], "suffix wildcard")
        self.assertEqual(
            result["routes"],
            [
                {
                    "index": 0,
                    "match": "prefix '/api' and header 'x-env' = 'prod'",
                    "matched": True,
                    "reason": "prefix '/api' matches '/api'; header 'x-env' value 'dev', 'prod' satisfies "
                    "header 'x-env' = 'prod'",
                }
            ],
        )
        self.assertEqual(result["action"]["cluster"], "api")

    def test_noVirtualHost(self) -> None:
        """
        A Host no domain matches: no entries tried, 404.
        """
        result = siteTable().explain("example.org", "/api")
        self.assertEqual((result["virtualHost"], result["routes"], result["action"]), (None, [], None))
        self.assertEqual(result["status"], 404)
        self.assertEqual(
            result["outcome"],
            "no virtual host of router 'web' has a domain matching host 'example.org': the proxy answers 404",
        )

    def test_noRoute(self) -> None:
        """
        Every entry tried and failed: 404.
        """
        result = siteTable().explain("www.example.com", "/nothing")
        self.assertEqual(len(result["routes"]), 9)
        self.assertFalse(any(entry["matched"] for entry in result["routes"]))
        self.assertEqual(result["routes"][8]["reason"], "path '/ping' is not '/nothing' (query ignored)")
        self.assertEqual((result["action"], result["status"]), (None, 404))
        self.assertIn("no route entry of virtual host 'site' matches", result["outcome"])

    def test_weightedSplit(self) -> None:
        """
        A weighted split is shown with shares, without drawing from the table's generator.
        """
        rng = random.Random(7)
        table = siteTable(rng)
        state = rng.getstate()
        action = table.explain("www.example.com", "/split")["action"]
        self.assertEqual(
            action["weightedClusters"],
            [
                {"name": "backend", "weight": 3, "percent": 75.0},
                {"name": "canary", "weight": 1, "percent": 25.0},
            ],
        )
        self.assertIsNone(action["cluster"])
        self.assertEqual(rng.getstate(), state)

    def test_clusterHeader(self) -> None:
        """
        The cluster header's value is shown; without it the proxy answers 404.
        """
        table = siteTable()
        found = table.explain("www.example.com", "/by-header", headers=[("x-cluster", "canary")])
        self.assertEqual(
            (found["action"]["clusterHeader"], found["action"]["cluster"]), ("x-cluster", "canary")
        )
        missing = table.explain("www.example.com", "/by-header")
        self.assertEqual((missing["action"]["cluster"], missing["status"]), (None, 404))
        self.assertIn("the cluster header is missing", missing["outcome"])

    def test_answeredByProxy(self) -> None:
        """
        Redirects show their location for a plain http request; direct responses their status and body.
        """
        table = siteTable()
        redirect = table.explain("www.example.com:80", "/old?q=1")
        self.assertEqual(
            (redirect["action"]["location"], redirect["status"]), ("https://www.example.com/new?q=1", 301)
        )
        self.assertEqual(redirect["outcome"], "route 7 matches: answer redirect 301")
        direct = table.explain("www.example.com", "/ping")["action"]
        self.assertEqual((direct["kind"], direct["status"], direct["body"]), ("direct", 200, "pong"))

    def test_absoluteForm(self) -> None:
        """
        An absolute-form path's authority replaces the host, as for a proxied request.
        """
        result = siteTable().explain("", "http://www.example.com/ping")
        self.assertEqual(
            (result["request"]["host"], result["request"]["target"]), ("www.example.com", "/ping")
        )
        self.assertEqual(result["action"]["body"], "pong")
        self.assertIsNone(siteTable().explain("", "/ping")["virtualHost"])

    def test_agreesWithRoute(self) -> None:
        """
        Explaining a request picks the same entry as routing it.
        """
        table = siteTable()
        hosts = ["www.example.com", "A.example.com:81", "example.com", ""]
        targets = [
            "/api",
            "/api/",
            "/api/x?y",
            "/exact",
            "/exact?z",
            "/users/9",
            "/users/x",
            "/split",
            "/by-header",
            "/old",
            "/ping",
            "/",
        ]
        headerSets: list[list[tuple[str, str]]] = [
            [],
            [("x-env", "prod")],
            [("x-beta", "yes")],
            [("x-env", "dev")],
        ]
        seen = set()
        for host in hosts:
            for target in targets:
                for headers in headerSets:
                    found = table.route(
                        host.encode() or None,
                        target.encode(),
                        b"GET",
                        [(name.encode(), value.encode()) for name, value in headers],
                    )
                    action: Any = table.explain(host, target, headers=headers)["action"]
                    explained = None if action is None else (action["virtualHost"], action["index"])
                    routed = None if found is None else (found.virtualHost, found.index)
                    self.assertEqual((host, target, headers, explained), (host, target, headers, routed))
                    seen.add(routed)
        self.assertEqual(len(seen), 10, seen)
