"""
Micro-benchmark of the HTTP route table: lookups per second for a realistic router (four virtual hosts,
exact, wildcard and catch-all domains, eleven entries on the busy host mixing prefixes, exact paths, a
regex and header matchers), on one core.

Run: .venv/bin/python bench/routing.py [--seconds N]
Prints one line per case; no assertion, timing goals live here, not in tests.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import measure  # noqa: E402

from meshproxy.config import RouterConfig, parseConfigObject  # noqa: E402
from meshproxy.routing.table import RouteTable  # noqa: E402

HEADERS = [
    (b"Host", b"www.example.com"),
    (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0"),
    (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"Accept-Language", b"en-US,en;q=0.5"),
    (b"Accept-Encoding", b"gzip, deflate, br"),
    (b"Connection", b"keep-alive"),
    (b"Cookie", b"session=abcdef0123456789; theme=dark"),
    (b"Cache-Control", b"max-age=0"),
    (b"X-Request-Id", b"7f1c2a9e-1b2c-4d5e-8f90-123456789abc"),
    (b"X-Env", b"canary"),
]


def _forward(match: dict[str, Any], cluster: str = "web", **route: Any) -> dict[str, Any]:
    return {"match": match, "route": {"cluster_name": cluster, **route}}


def router() -> RouterConfig:
    """
    The benchmark's router, read through the real configuration parser.
    """
    www = [
        _forward({"path": "/healthz"}, "health"),
        _forward({"prefix": "/static/"}, "static", prefix_rewrite="/"),
        _forward({"prefix": "/api/v1/", "headers": [{"name": "x-env", "value": "canary"}]}, "canary"),
        _forward(
            {"prefix": "/api/v1/", "headers": [{"name": "x-beta", "value": "1|yes", "regex": True}]}, "beta"
        ),
        {
            "match": {"prefix": "/api/v1/"},
            "route": {
                "weighted_clusters": [
                    {"cluster": {"name": "api", "weight": 90}},
                    {"cluster": {"name": "canary", "weight": 10}},
                ],
                "timeout": "5s",
                "retry_policy": {"retry_on": True, "num_retries": 2},
            },
        },
        _forward({"prefix": "/api/v2/"}, "api", prefix_rewrite="/v2/"),
        _forward(
            {"regex": "/users/[0-9]+/avatar"},
            "static",
            regex_rewrite={"pattern": {"regex": "^/users/([0-9]+)/avatar$"}, "substitution": "/avatars/\\1"},
        ),
        {"match": {"path": "/old"}, "redirect": {"path_redirect": "/new", "response_code": 308}},
        _forward({"prefix": "/admin", "headers": [{"name": "x-admin-token", "value": "s3cret"}]}, "admin"),
        {"match": {"prefix": "/robots.txt"}, "direct_response": {"status": 200, "body": "User-agent: *\n"}},
        _forward(
            {"prefix": "/"},
            "web",
            request_headers_to_add=[{"header": {"key": "X-Peer", "value": "%downstream_remote_address%"}}],
        ),
    ]
    virtualHosts = [
        {"name": "www", "domains": ["www.example.com", "example.com"], "routers": www},
        {
            "name": "tenants",
            "domains": ["*.tenants.example.com", "*.example.org"],
            "routers": [_forward({"prefix": "/"}, "tenants")],
        },
        {
            "name": "internal",
            "domains": ["internal-*", "admin.example.com:8443"],
            "routers": [_forward({"prefix": "/"}, "admin")],
        },
        {
            "name": "fallback",
            "domains": ["*"],
            "routers": [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}],
        },
    ]
    clusters = [
        {"name": name, "hosts": [{"address": "127.0.0.1:9000"}]}
        for name in ("web", "api", "canary", "beta", "static", "health", "admin", "tenants")
    ]
    listener = {
        "name": "front",
        "address": "127.0.0.1:8080",
        "filter_chains": [{"filters": [{"type": "tcp_proxy", "config": {"cluster": "web"}}]}],
    }
    document = {
        "servers": [
            {
                "listeners": [listener],
                "routers": [{"router_config_name": "web", "virtual_hosts": virtualHosts}],
            }
        ],
        "cluster_manager": {"clusters": clusters},
    }
    return parseConfigObject(document).servers[0].routers[0]


#: (case name, Host, target, headers, what the route should be).
CASES: list[tuple[str, bytes | None, bytes, list[tuple[bytes, bytes]], str]] = [
    ("exact host, 1st entry (path)", b"www.example.com", b"/healthz", HEADERS, "www[0]"),
    ("exact host+port, header match", b"www.example.com:8080", b"/api/v1/items?id=1", HEADERS, "www[2]"),
    (
        "exact host, 5th entry (2 header misses)",
        b"www.example.com",
        b"/api/v1/items?id=1",
        HEADERS[:-1],
        "www[4]",
    ),
    ("exact host, regex entry", b"www.example.com", b"/users/42/avatar", HEADERS, "www[6]"),
    ("exact host, last entry", b"www.example.com", b"/index.html?lang=en", HEADERS, "www[10]"),
    ("suffix wildcard host", b"acme.tenants.example.com", b"/x", HEADERS, "tenants[0]"),
    ("catch-all host", b"unknown.test", b"/x", HEADERS, "fallback[0]"),
]


def main() -> None:
    """
    Print lookups per second (and microseconds per lookup) for each case, then for the whole per-request
    use of a route: lookup, cluster choice and target rewrite.
    """
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--seconds", type=float, default=1.0)
    seconds = options.parse_args().seconds
    table = RouteTable(router(), random.Random(0))
    route = table.route
    for name, host, target, headers, expected in CASES:
        found = route(host, target, b"GET", headers)
        assert found is not None and f"{found.virtualHost}[{found.index}]" == expected, (name, found)

        def lookups(
            n: int, host: bytes | None = host, target: bytes = target, headers: Any = headers
        ) -> None:
            for _ in range(n):
                route(host, target, b"GET", headers)

        rate = measure(lookups, seconds)
        print(f"route  {name:40} {rate:12,.0f} lookups/s  {1e6 / rate:6.2f} us")

    hosts = [b"t%d.tenants.example.com:8080" % (index,) for index in range(100000)]

    def coldHosts(n: int) -> None:
        for index in range(n):
            route(hosts[index % 100000], b"/x", b"GET", HEADERS)

    rate = measure(coldHosts, seconds)
    print(f"route  {'cache miss (new wildcard host)':40} {rate:12,.0f} lookups/s  {1e6 / rate:6.2f} us")

    def fullUse(n: int) -> None:
        for _ in range(n):
            found = route(b"www.example.com", b"/api/v2/items?id=1", b"GET", HEADERS)
            found.clusterFor(HEADERS)  # type: ignore[union-attr]
            found.rewriteTarget(b"/api/v2/items?id=1")  # type: ignore[union-attr]

    rate = measure(fullUse, seconds)
    print(f"route+clusterFor+rewriteTarget {'(prefix rewrite)':15} {rate:12,.0f} /s  {1e6 / rate:6.2f} us")


if __name__ == "__main__":
    main()
