"""
Tests for L{meshproxy.config.routers}: MOSN's C{servers[].routers[]} into the route table model.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config.routepolicy import MOSN_RETRY_ON
from meshproxy.config import (
    DirectResponseActionConfig,
    HeaderValueConfig,
    RedirectActionConfig,
    RetryPolicyConfig,
    RouteActionConfig,
    RouterConfig,
    WeightedClusterConfig,
)
from tests.test_config import ConfigAssertions, cluster, document

ROUTER = "servers[0].routers[0]"
VHOST = ROUTER + ".virtual_hosts[0]"
ENTRY = VHOST + ".routers[0]"


def routerDocument(*entries: Any, vhost: Any = None, router: Any = None) -> dict[str, Any]:
    """
    A document whose one server has router C{web} with one virtual host holding C{entries}.
    """
    virtualHost = {"name": "site", "domains": ["*"], "routers": list(entries), **(vhost or {})}
    routerDocument = {"router_config_name": "web", "virtual_hosts": [virtualHost], **(router or {})}
    return document(clusters=[cluster(), cluster(name="canary")], server={"routers": [routerDocument]})


def forward(**route: Any) -> dict[str, Any]:
    """
    A route entry matching everything under C{/} that forwards with C{route} (default: to C{backend}).
    """
    return {"match": {"prefix": "/"}, "route": route or {"cluster_name": "backend"}}


class RouterModelTests(ConfigAssertions, SynchronousTestCase):
    """
    Every part of a router is read into the model.
    """

    def routers(self, doc: dict[str, Any]) -> tuple[RouterConfig, ...]:
        """
        The first server's routers.
        """
        return self.load(doc).servers[0].routers

    def test_routeEntry(self) -> None:
        """
        A forwarding entry keeps its match, cluster, rewrites, timeout, retries and header edits.
        """
        route = {
            "cluster_name": "backend",
            "prefix_rewrite": "/v2/",
            "host_rewrite": "internal",
            "timeout": "5s",
            "retry_policy": {
                "retry_on": True,
                "retry_timeout": "1s",
                "num_retries": 2,
                "status_codes": [503],
            },
            "request_headers_to_add": [{"header": {"key": "X-From", "value": "%downstream_remote_address%"}}],
            "response_headers_to_remove": ["Server"],
        }
        entry = {
            "match": {"path": "/v1/", "headers": [{"name": "X-Env", "value": "pro.*", "regex": True}]},
            "route": route,
        }
        [router] = self.routers(
            routerDocument(entry, vhost={"domains": ["Example.COM", "*.example.org", "api-*"]})
        )
        [vhost] = router.virtualHosts
        self.assertEqual((router.routerConfigName, vhost.name), ("web", "site"))
        self.assertEqual(vhost.domains, ("example.com", "*.example.org", "api-*"))
        [parsed] = vhost.routes
        self.assertEqual((parsed.match.path, parsed.match.prefix, parsed.match.regex), ("/v1/", None, None))
        [header] = parsed.match.headers
        self.assertEqual((header.name, header.value, header.regex), ("X-Env", "pro.*", True))
        assert header.pattern is not None
        self.assertTrue(header.pattern.fullmatch("production"))
        action = parsed.action
        assert isinstance(action, RouteActionConfig)
        self.assertEqual(
            (action.clusterName, action.prefixRewrite, action.hostRewrite, action.timeout),
            ("backend", "/v2/", "internal", 5.0),
        )
        self.assertEqual(action.retryPolicy, RetryPolicyConfig(True, 1.0, 2, (503,), MOSN_RETRY_ON))
        self.assertEqual(
            action.headerEdits.requestHeadersToAdd,
            (HeaderValueConfig("X-From", "%downstream_remote_address%"),),
        )
        self.assertEqual(action.headerEdits.responseHeadersToRemove, ("Server",))

    def test_defaults(self) -> None:
        """
        The route timeout defaults to MOSN's 60 s; a virtual host is named after its router and index.
        """
        doc = routerDocument(forward())
        del doc["servers"][0]["routers"][0]["virtual_hosts"][0]["name"]
        [vhost] = self.routers(doc)[0].virtualHosts
        action = vhost.routes[0].action
        assert isinstance(action, RouteActionConfig)
        self.assertEqual(
            (vhost.name, action.timeout, action.retryPolicy, action.autoHostRewrite),
            ("web#0", 60.0, None, False),
        )

    def test_otherActions(self) -> None:
        """
        Weighted clusters, cluster headers, regex rewrites, redirects and direct responses.
        """
        weighted = {
            "weighted_clusters": [
                {"cluster": {"name": "backend", "weight": 90}},
                {"cluster": {"name": "canary", "weight": 10}},
            ]
        }
        rewrite = {
            "cluster_header": "X-Cluster",
            "regex_rewrite": {"pattern": {"regex": "^/old/(.*)$"}, "substitution": "/new/\\1"},
        }
        entries = [
            forward(**weighted),
            forward(**rewrite),
            {"match": {"regex": "/r/.*"}, "redirect": {"response_code": 308, "scheme_redirect": "https"}},
            {"direct_response": {"status": 200, "body": "ok"}},
        ]
        routes = self.routers(routerDocument(*entries))[0].virtualHosts[0].routes
        first, second, third, fourth = (route.action for route in routes)
        assert isinstance(first, RouteActionConfig) and isinstance(second, RouteActionConfig)
        self.assertEqual(
            first.weightedClusters,
            (WeightedClusterConfig("backend", 90), WeightedClusterConfig("canary", 10)),
        )
        self.assertEqual(second.clusterHeader, "X-Cluster")
        assert second.regexRewrite is not None
        self.assertEqual(
            second.regexRewrite.pattern.sub(second.regexRewrite.substitution, "/old/x"), "/new/x"
        )
        self.assertEqual(third, RedirectActionConfig(responseCode=308, schemeRedirect="https"))
        self.assertIsInstance(routes[2].match.regex, re.Pattern)
        self.assertEqual(fourth, DirectResponseActionConfig(status=200, body="ok"))
        self.assertEqual(routes[3].match.prefix, None)

    def test_headerEditsAtEveryLevel(self) -> None:
        """
        Routers and virtual hosts carry their own header additions and removals.
        """
        add = [{"header": {"key": "X-Level", "value": "router"}, "append": True}]
        doc = routerDocument(
            forward(),
            vhost={"response_headers_to_add": [{"header": {"key": "X-Level", "value": "vhost"}}]},
            router={"request_headers_to_add": add, "request_headers_to_remove": ["X-Debug"]},
        )
        [router] = self.routers(doc)
        self.assertEqual(
            router.headerEdits.requestHeadersToAdd, (HeaderValueConfig("X-Level", "router", True),)
        )
        self.assertEqual(router.headerEdits.requestHeadersToRemove, ("X-Debug",))
        self.assertEqual(
            router.virtualHosts[0].headerEdits.responseHeadersToAdd, (HeaderValueConfig("X-Level", "vhost"),)
        )


class RouterErrorTests(ConfigAssertions, SynchronousTestCase):
    """
    Each mistake in a router is reported at its path.
    """

    def test_badRegexes(self) -> None:
        """
        Regular expressions are compiled at load; a bad one is an error with its path.
        """
        cases = [
            ({"match": {"regex": "(unclosed"}, "route": {"cluster_name": "backend"}}, ENTRY + ".match.regex"),
            (
                {
                    "match": {"headers": [{"name": "X", "value": "[", "regex": True}]},
                    "route": {"cluster_name": "backend"},
                },
                ENTRY + ".match.headers[0].value",
            ),
            (
                forward(cluster_name="backend", regex_rewrite={"pattern": {"regex": "*"}}),
                ENTRY + ".route.regex_rewrite.pattern.regex",
            ),
        ]
        for entry, path in cases:
            self.assertOnlyProblem(routerDocument(entry), path, "is not a valid regular expression")
        literal = {"match": {"headers": [{"name": "X", "value": "["}]}, "route": {"cluster_name": "backend"}}
        self.assertEqual(len(self.load(routerDocument(literal)).servers[0].routers), 1)

    def test_actions(self) -> None:
        """
        Exactly one of route, redirect and direct_response; exactly one cluster choice per route.
        """
        both = {
            "match": {"prefix": "/"},
            "route": {"cluster_name": "backend"},
            "redirect": {"host_redirect": "x"},
        }
        self.assertOnlyProblem(
            routerDocument(both),
            ENTRY,
            "exactly one of 'route', 'redirect' and 'direct_response' (given: route, redirect)",
        )
        self.assertOnlyProblem(routerDocument({"match": {"prefix": "/"}}), ENTRY, "(given: none)")
        self.assertOnlyProblem(
            routerDocument(forward(cluster_name="backend", cluster_header="X-C")),
            ENTRY + ".route",
            "exactly one of 'cluster_name', 'weighted_clusters' and 'cluster_header' "
            "(given: cluster_name, cluster_header)",
        )

    def test_clusters(self) -> None:
        """
        Clusters named by routes must exist.
        """
        self.assertOnlyProblem(
            routerDocument(forward(cluster_name="canry")),
            ENTRY + ".route.cluster_name",
            "unknown cluster 'canry' (did you mean 'canary'?)",
        )
        weighted = {"weighted_clusters": [{"cluster": {"name": "nope", "weight": 1}}]}
        self.assertOnlyProblem(
            routerDocument(forward(**weighted)),
            ENTRY + ".route.weighted_clusters[0].cluster.name",
            "unknown cluster 'nope'",
        )
        zero = {"weighted_clusters": [{"cluster": {"name": "backend", "weight": 0}}]}
        self.assertOnlyProblem(
            routerDocument(forward(**zero)), ENTRY + ".route.weighted_clusters", "add up to 0"
        )

    def test_domains(self) -> None:
        """
        A domain may appear once per router; malformed domains are errors.
        """
        doc = routerDocument(forward())
        doc["servers"][0]["routers"][0]["virtual_hosts"].append(
            {"name": "again", "domains": ["a.com", "*"], "routers": [forward()]}
        )
        self.assertOnlyProblem(
            doc,
            ROUTER + ".virtual_hosts[1].domains[1]",
            "domain '*' is listed twice in router 'web' (also " + VHOST + ".domains[0])",
        )
        for bad in ("a*b.com", "*.*", "a.com:99999", "[zz]:80", ""):
            self.assertOnlyProblem(
                routerDocument(forward(), vhost={"domains": [bad]}),
                VHOST + ".domains[0]",
                "is not a valid domain",
            )
        self.load(
            routerDocument(forward(), vhost={"domains": ["a.com:8080", "[::1]:8080", "*.b.com", "c-*"]})
        )

    def test_matches(self) -> None:
        """
        At most one of prefix, path and regex; paths start with a slash.
        """
        self.assertOnlyProblem(
            routerDocument({"match": {"prefix": "/", "path": "/a"}, "route": {"cluster_name": "backend"}}),
            ENTRY + ".match",
            "(given: prefix, path)",
        )
        self.assertOnlyProblem(
            routerDocument({"match": {"prefix": "api"}, "route": {"cluster_name": "backend"}}),
            ENTRY + ".match.prefix",
            "'api' does not start with '/'",
        )

    def test_values(self) -> None:
        """
        Redirect codes, statuses, header names, timeouts and retries are checked.
        """
        cases = [
            (
                {"match": {"prefix": "/"}, "redirect": {"response_code": 305}},
                ENTRY + ".redirect.response_code",
                "305 is not a redirect status",
            ),
            (
                {"match": {"prefix": "/"}, "redirect": {"scheme_redirect": "ftp"}},
                ENTRY + ".redirect.scheme_redirect",
                "'ftp'",
            ),
            ({"direct_response": {"status": 600}}, ENTRY + ".direct_response.status", "from 100 to 599"),
            (
                {"direct_response": {"body": "x"}},
                ENTRY + ".direct_response.status",
                "required key 'status' is missing",
            ),
            (forward(cluster_name="backend", timeout="-1s"), ENTRY + ".route.timeout", "'-1s' is negative"),
            (forward(cluster_name="backend", timeout="0s"), ENTRY + ".route.timeout", "'0s' is zero"),
            (
                forward(cluster_name="backend", retry_policy={"num_retries": 11}),
                ENTRY + ".route.retry_policy.num_retries",
                "from 0 to 10",
            ),
            (
                forward(
                    cluster_name="backend",
                    request_headers_to_add=[{"header": {"key": "Bad Name", "value": "x"}}],
                ),
                ENTRY + ".route.request_headers_to_add[0].header.key",
                "is not a valid header name",
            ),
            (
                forward(
                    cluster_name="backend",
                    request_headers_to_add=[{"header": {"key": "X", "value": "a\r\nb"}}],
                ),
                ENTRY + ".route.request_headers_to_add[0].header.value",
                "line break",
            ),
            (
                forward(cluster_name="backend", response_headers_to_remove=[""]),
                ENTRY + ".route.response_headers_to_remove[0]",
                "not a valid header name",
            ),
        ]
        for entry, path, fragment in cases:
            self.assertOnlyProblem(routerDocument(entry), path, fragment)

    def test_notSupported(self) -> None:
        """
        MOSN router features meshproxy does not implement yet are named.
        """
        cases = [
            (
                {**forward(), "request_mirror_policies": {"cluster": "canary", "percent": 10}},
                ENTRY + ".request_mirror_policies",
                "'request_mirror_policies'",
            ),
            (
                {"match": {"variables": [{"name": "x"}]}, "route": {"cluster_name": "backend"}},
                ENTRY + ".match.variables",
                "'variables'",
            ),
        ]
        for entry, path, fragment in cases:
            self.assertOnlyProblem(
                routerDocument(entry), path, fragment + " is a MOSN key that meshproxy does not support yet"
            )
        self.assertOnlyProblem(
            routerDocument(forward(), router={"router_configs": "/etc/routers"}),
            ROUTER + ".router_configs",
            "'router_configs' is a MOSN key",
        )

    def test_routerNames(self) -> None:
        """
        Router names are required and unique within a server.
        """
        doc = routerDocument(forward())
        doc["servers"][0]["routers"].append(doc["servers"][0]["routers"][0])
        self.assertOnlyProblem(
            doc,
            "servers[0].routers[1].router_config_name",
            "duplicate router name 'web' (also servers[0].routers[0])",
        )
        doc = routerDocument(forward())
        del doc["servers"][0]["routers"][0]["router_config_name"]
        self.assertOnlyProblem(
            doc, ROUTER + ".router_config_name", "required key 'router_config_name' is missing"
        )
