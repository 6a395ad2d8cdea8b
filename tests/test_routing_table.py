"""
Tests for L{meshproxy.routing.table}: virtual host selection and entry matching, with routers read through
the real configuration parser.  The helpers here build routers for the other routing tests too.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.config import RouterConfig, parseConfigObject
from meshproxy.interfaces import IRouter
from meshproxy.routing.route import CLUSTER, Route
from meshproxy.routing.table import (
    RouteTable,
    RouteTables,
    routerProblems,
    splitTarget,
    unknownHeaderVariables,
)
from tests.test_config import cluster, document

CLUSTERS = ("backend", "canary", "api", "static", "admin")


def parseServer(*routers: dict[str, Any]) -> Any:
    """
    The server of a parsed document holding C{routers} and clusters named after L{CLUSTERS}.
    """
    doc = document(clusters=[cluster(name=name) for name in CLUSTERS], server={"routers": list(routers)})
    return parseConfigObject(doc).servers[0]


def parseRouter(*virtualHosts: dict[str, Any], **router: Any) -> RouterConfig:
    """
    Router C{web} with C{virtualHosts} (and router-level keys C{router}), read by the parser.
    """
    routerDocument = {"router_config_name": "web", "virtual_hosts": list(virtualHosts), **router}
    result: RouterConfig = parseServer(routerDocument).routers[0]
    return result


def vhost(
    *entries: dict[str, Any], name: str = "site", domains: Sequence[str] = ("*",), **keys: Any
) -> dict[str, Any]:
    """
    A virtual host document.
    """
    return {"name": name, "domains": list(domains), "routers": list(entries), **keys}


def forward(match: dict[str, Any] | None = None, cluster: str = "backend", **route: Any) -> dict[str, Any]:
    """
    An entry forwarding C{match} (default: everything under C{/}) to C{cluster}.
    """
    return {"match": {"prefix": "/"} if match is None else match, "route": {"cluster_name": cluster, **route}}


def makeTable(*entries: dict[str, Any], rng: random.Random | None = None, **router: Any) -> RouteTable:
    """
    A table with one catch-all virtual host holding C{entries}.
    """
    return RouteTable(parseRouter(vhost(*entries), **router), rng)


def routeOf(
    table: RouteTable, target: bytes, headers: Sequence[tuple[bytes, bytes]] = (), host: bytes = b"h"
) -> Route:
    """
    The route C{table} gives a GET of C{target}, which must exist.
    """
    found = table.route(host, target, b"GET", headers)
    assert found is not None, target
    return found


def indexOf(table: RouteTable, target: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> int | None:
    """
    The index of the entry C{table} chooses, or C{None}.
    """
    found = table.route(b"h", target, b"GET", headers)
    return None if found is None else found.index


class VirtualHostTests(SynchronousTestCase):
    """
    The Host picks the virtual host whose entries are tried.
    """

    def test_interface(self) -> None:
        """
        L{RouteTable} provides L{IRouter}.
        """
        self.assertTrue(verifyObject(IRouter, makeTable(forward())))

    def test_selection(self) -> None:
        """
        Exact beats wildcard beats C{*}; an unknown Host without C{*} gets no route.
        """
        router = parseRouter(
            vhost(forward(), name="exact", domains=["www.example.com"]),
            vhost(forward(), name="wild", domains=["*.example.com"]),
            vhost(forward(), name="any", domains=["*"]),
        )
        table = RouteTable(router)
        cases = [
            (b"www.example.com", "exact"),
            (b"WWW.example.com:8080", "exact"),
            (b"a.example.com", "wild"),
            (b"example.com", "any"),
            (None, "any"),
        ]
        for host, expected in cases:
            found = table.route(host, b"/", b"GET", [])
            self.assertEqual((host, found and found.virtualHost), (host, expected))
        strict = RouteTable(parseRouter(vhost(forward(), domains=["www.example.com"])))
        self.assertIsNone(strict.route(b"other.example.com", b"/", b"GET", []))
        self.assertIsNone(strict.route(None, b"/", b"GET", []))

    def test_cachedPerTable(self) -> None:
        """
        The table answers a Host it has seen from its cache, with the same route object.
        """
        table = makeTable(forward())
        first = table.route(b"a.test", b"/", b"GET", [])
        self.assertEqual(table.domains.cacheSize, 1)
        self.patch(table.domains, "lookup", lambda host: self.fail(f"matched {host!r} again"))
        self.assertIs(table.route(b"a.test", b"/x", b"GET", []), first)


class MatchTests(SynchronousTestCase):
    """
    Entries are tried in order and the first whose conditions all hold wins.
    """

    def test_order(self) -> None:
        """
        An earlier entry shadows a later one it overlaps; a later one is reached when earlier ones fail.
        """
        table = makeTable(
            forward({"prefix": "/api/"}, "api"),
            forward({"prefix": "/api/v2"}, "canary"),
            forward({"prefix": "/"}),
            forward({"prefix": "/static/"}, "static"),
        )
        cases = [(b"/api/v2/x", 0), (b"/api/x", 0), (b"/apix", 2), (b"/static/a.css", 2), (b"/", 2)]
        for target, expected in cases:
            self.assertEqual((target, indexOf(table, target)), (target, expected))

    def test_prefix(self) -> None:
        """
        A prefix is compared with the whole target, query included, case-sensitively.
        """
        table = makeTable(forward({"prefix": "/search?q="}), forward({"prefix": "/api"}))
        cases = [
            (b"/search?q=x", 0),
            (b"/search", None),
            (b"/search?p=1&q=x", None),
            (b"/api", 1),
            (b"/api?x=1", 1),
            (b"/apiary", 1),
            (b"/API", None),
            (b"*", None),
        ]
        for target, expected in cases:
            self.assertEqual((target, indexOf(table, target)), (target, expected))

    def test_path(self) -> None:
        """
        A path must equal the target's path, the query string being ignored.
        """
        table = makeTable(forward({"path": "/a"}))
        cases = [(b"/a", 0), (b"/a?x=1", 0), (b"/a?", 0), (b"/a/", None), (b"/ab", None), (b"/A", None)]
        for target, expected in cases:
            self.assertEqual((target, indexOf(table, target)), (target, expected))

    def test_regex(self) -> None:
        """
        A regex must match the whole path, the query string being ignored; inline flags still work.
        """
        table = makeTable(forward({"regex": "/users/[0-9]+"}), forward({"regex": "(?i)/caps/.*"}))
        cases = [
            (b"/users/42", 0),
            (b"/users/42?tab=x", 0),
            (b"/users/42/x", None),
            (b"/x/users/42", None),
            (b"/users/", None),
            (b"/CAPS/x", 1),
        ]
        for target, expected in cases:
            self.assertEqual((target, indexOf(table, target)), (target, expected))

    def test_noPathCondition(self) -> None:
        """
        An entry with no prefix, path or regex matches any target, and its header conditions still apply.
        """
        table = makeTable(
            {"match": {"headers": [{"name": "X-Env", "value": "dev"}]}, "direct_response": {"status": 200}},
            {"direct_response": {"status": 404}},
        )
        self.assertEqual(indexOf(table, b"*", [(b"x-env", b"dev")]), 0)
        self.assertEqual(indexOf(table, b"/anything?at=all"), 1)

    def test_headers(self) -> None:
        """
        Header names are case-insensitive, exact values case-sensitive, regexes fully matched; every
        matcher must hold; a header sent several times matches when any of its values does.
        """
        table = makeTable(
            forward(
                {
                    "prefix": "/",
                    "headers": [
                        {"name": "X-Env", "value": "prod"},
                        {"name": "x-version", "value": "v[0-9]+", "regex": True},
                    ],
                }
            ),
            forward({"prefix": "/", "headers": [{"name": "x-env", "value": ""}]}),
        )
        cases: list[tuple[list[tuple[bytes, bytes]], int | None]] = [
            ([(b"x-env", b"prod"), (b"X-Version", b"v2")], 0),
            ([(b"X-ENV", b"prod"), (b"x-version", b"v10")], 0),
            ([(b"x-env", b"Prod"), (b"x-version", b"v2")], None),
            ([(b"x-env", b"prod"), (b"x-version", b"v2-beta")], None),
            ([(b"x-env", b"prod"), (b"x-version", b"xv2")], None),
            ([(b"x-env", b"prod")], None),
            ([(b"x-env", b"dev"), (b"x-version", b"v2"), (b"x-env", b"prod")], 0),
            ([(b"x-version", b"beta"), (b"x-env", b"prod"), (b"x-version", b"v3")], 0),
            ([(b"x-env", b"")], 1),
            ([(b"x-envy", b"prod"), (b"x-version", b"v2")], None),
            ([], None),
        ]
        for headers, expected in cases:
            self.assertEqual((headers, indexOf(table, b"/", headers)), (headers, expected))

    def test_noRoute(self) -> None:
        """
        A virtual host with no matching entry gives C{None}.
        """
        self.assertIsNone(makeTable(forward({"prefix": "/api"})).route(b"h", b"/web", b"GET", []))

    def test_routeBuiltOnce(self) -> None:
        """
        Each request matching an entry gets the very same L{Route}, describing that entry.
        """
        table = makeTable(forward({"prefix": "/a"}), forward({"prefix": "/"}, "canary"))
        first = routeOf(table, b"/x")
        self.assertIs(routeOf(table, b"/y", host=b"other"), first)
        self.assertEqual(
            (first.routerName, first.virtualHost, first.index, first.kind), ("web", "site", 1, CLUSTER)
        )
        self.assertIs(first.config, table.config.virtualHosts[0].routes[1])


def headerAdd(name: str, value: str, append: bool = False) -> dict[str, Any]:
    """
    One C{*_headers_to_add} element.
    """
    return {"header": {"key": name, "value": value}, "append": append}


class HeaderEditTests(SynchronousTestCase):
    """
    Each route carries the header edits of its router, virtual host and own level, merged once.
    """

    def test_levels(self) -> None:
        """
        The most specific replacing addition wins, removals accumulate, and entries without a C{route}
        (redirects, direct responses) get the router and virtual host levels.
        """
        router = parseRouter(
            vhost(
                forward(
                    {"prefix": "/api"},
                    request_headers_to_add=[
                        headerAdd("X-Level", "route"),
                        headerAdd("X-Peer", "%downstream_remote_address%"),
                    ],
                    response_headers_to_remove=["X-Powered-By"],
                ),
                {"match": {"prefix": "/"}, "direct_response": {"status": 200}},
                request_headers_to_add=[headerAdd("X-Level", "vhost"), headerAdd("X-Tag", "vhost", True)],
                response_headers_to_add=[headerAdd("X-Served-By", "%downstream_local_address%")],
            ),
            request_headers_to_add=[headerAdd("x-level", "router")],
            request_headers_to_remove=["X-Debug"],
            response_headers_to_remove=["Server"],
        )
        table = RouteTable(router)
        api, direct = routeOf(table, b"/api"), routeOf(table, b"/")
        variables = {
            "downstream_remote_address": b"10.0.0.1:5555",
            "downstream_local_address": b"10.0.0.2:80",
        }
        self.assertEqual(
            [(add.name, add.value(variables)) for add in api.requestHeadersToAdd],
            [(b"X-Tag", b"vhost"), (b"X-Level", b"route"), (b"X-Peer", b"10.0.0.1:5555")],
        )
        self.assertEqual(
            [(add.name, add.value(variables)) for add in direct.requestHeadersToAdd],
            [(b"X-Level", b"vhost"), (b"X-Tag", b"vhost")],
        )
        self.assertEqual(api.requestHeadersToRemove, frozenset({b"x-debug"}))
        self.assertEqual(api.responseHeadersToRemove, frozenset({b"server", b"x-powered-by"}))
        self.assertEqual(direct.responseHeadersToRemove, frozenset({b"server"}))
        self.assertEqual([add.value(variables) for add in direct.responseHeadersToAdd], [b"10.0.0.2:80"])
        self.assertEqual(api.headerEdits.requestVariables, frozenset({"downstream_remote_address"}))
        self.assertEqual(direct.headerEdits.responseVariables, frozenset({"downstream_local_address"}))


class RouterProblemTests(SynchronousTestCase):
    """
    What the parser accepts but a table cannot use is listed with paths, and refused at build time.
    """

    def test_unknownVariables(self) -> None:
        """
        Unknown variables at every level are named with their path relative to the router.
        """
        router = parseRouter(
            vhost(
                forward(
                    request_headers_to_add=[headerAdd("A", "%request_id%"), headerAdd("B", "%upstream_host%")]
                ),
                response_headers_to_add=[headerAdd("C", "x%hostname%y")],
            ),
            request_headers_to_add=[headerAdd("D", "%Downstream_Protocol% %nope%")],
        )
        expected = [
            ("request_headers_to_add[0].header.value", "nope"),
            ("virtual_hosts[0].response_headers_to_add[0].header.value", "hostname"),
            ("virtual_hosts[0].routers[0].route.request_headers_to_add[1].header.value", "upstream_host"),
        ]
        self.assertEqual(unknownHeaderVariables(router), expected)
        problems = routerProblems(router)
        self.assertEqual([path for path, _ in problems], [path for path, _ in expected])
        self.assertIn("unknown variable %nope% in a header value: expected one of", problems[0][1])
        self.assertIn("%downstream_remote_address%", problems[0][1])
        error = self.assertRaises(ValueError, RouteTable, router)
        self.assertIn(
            "router 'web' cannot be built: request_headers_to_add[0].header.value: unknown", str(error)
        )

    def test_patterns(self) -> None:
        """
        Patterns that only work on text, and substitutions naming missing groups, are refused.
        """
        router = parseRouter(
            vhost(
                forward({"regex": "/caf\\u00e9"}),
                forward({"prefix": "/", "headers": [{"name": "x", "value": "\\w\\u0041", "regex": True}]}),
                forward(regex_rewrite={"pattern": {"regex": "^/(a)/"}, "substitution": "/\\2/"}),
            )
        )
        problems = routerProblems(router)
        self.assertEqual(
            [path for path, _ in problems],
            [
                "virtual_hosts[0].routers[0].match.regex",
                "virtual_hosts[0].routers[1].match.headers[0].value",
                "virtual_hosts[0].routers[2].route.regex_rewrite.substitution",
            ],
        )
        self.assertIn("cannot be used on raw request bytes", problems[0][1])
        self.assertIn("invalid group reference 2", problems[2][1])
        self.assertRaises(ValueError, RouteTable, router)

    def test_clean(self) -> None:
        """
        A router using only known variables and byte-safe patterns has no problems.
        """
        router = parseRouter(
            vhost(
                forward(
                    {"regex": "/(x|y)[0-9]+"},
                    request_headers_to_add=[headerAdd("A", "%request_id% 100%%")],
                    regex_rewrite={"pattern": {"regex": "^/(x)"}, "substitution": "/\\1\\g<1>"},
                )
            )
        )
        self.assertEqual(routerProblems(router), [])
        self.assertEqual(routeOf(RouteTable(router), b"/x1").rewriteTarget(b"/x1"), b"/xx1")


class SplitTargetTests(SynchronousTestCase):
    """
    L{splitTarget} turns an absolute-form target into an authority and an origin-form target.
    """

    def test_forms(self) -> None:
        """
        Absolute-form targets of either scheme are split; others are passed through.
        """
        cases = [
            (b"/a?b", (None, b"/a?b")),
            (b"http://h.com/p?q=1", (b"h.com", b"/p?q=1")),
            (b"HTTPS://h.com:8443", (b"h.com:8443", b"/")),
            (b"http://h.com?q", (b"h.com", b"/?q")),
            (b"http://user:pw@h.com/p", (b"h.com", b"/p")),
            (b"http://[::1]:8080/p", (b"[::1]:8080", b"/p")),
            (b"*", (None, b"*")),
            (b"h.com:443", (None, b"h.com:443")),
            (b"ftp://h.com/p", (None, b"ftp://h.com/p")),
        ]
        for target, expected in cases:
            self.assertEqual((target, splitTarget(target)), (target, expected))


class RouteTablesTests(SynchronousTestCase):
    """
    L{RouteTables} holds one table per router of a server.
    """

    def test_byName(self) -> None:
        """
        Tables are looked up by C{router_config_name} and share one generator.
        """
        server = parseServer(
            {"router_config_name": "web", "virtual_hosts": [vhost(forward(), domains=["*"])]},
            {"router_config_name": "api", "virtual_hosts": [vhost(forward(cluster="api"), domains=["*"])]},
        )
        tables = RouteTables.fromServer(server, random.Random(0))
        self.assertEqual(sorted(tables), ["api", "web"])
        self.assertEqual(len(tables), 2)
        self.assertEqual(routeOf(tables["api"], b"/").clusterFor([]), "api")
        self.assertEqual(tables["web"].name, "web")
        self.assertIsNone(tables.get("nope"))
        self.assertRaises(KeyError, lambda: tables["nope"])
