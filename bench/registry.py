"""
Micro-benchmark of the gorouter route registry on one core: route lookups per second with 100,000
registered URIs, and registrations per second (decoding NATS payloads included).

The table mixes what a Cloud Foundry foundation carries: 60,000 host-only app routes, 25,000 routes
with context paths (5,000 hosts with five paths each), 10,000 wildcard hosts and 5,000 wildcard routes
with a path; one endpoint each, registered from route-emitter style JSON payloads.

Run: .venv/bin/python bench/registry.py [--seconds N]
Prints one line per case; no assertion, timing goals live here, not in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import measure  # noqa: E402

from meshproxy.routing.registry import RouteMatch, RouteRegistry  # noqa: E402
from meshproxy.routing.registrymsg import RegistryMessage, parseRegistryMessage  # noqa: E402


def payload(uri: str, index: int) -> bytes:
    """
    A route-emitter style register payload for one uri.
    """
    guid = f"{index:08x}-7d3f-4e2a-9b1c-0f6e5d4c3b2a"
    return json.dumps({
        "host": f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}",
        "port": 61000 + index % 1000,
        "uris": [uri],
        "protocol": "http1",
        "app": guid,
        "private_instance_id": f"a1b2c3d4-e5f6-4a7b-8c9d-{index:012x}",
        "private_instance_index": "0",
        "endpoint_updated_at_ns": 1763761409123456789 + index,
        "tags": {"component": "route-emitter", "app_id": guid, "process_id": guid, "process_type": "web",
                 "instance_id": "0", "source_id": guid},
        "availability_zone": "z1",
    }).encode()


def uris() -> list[str]:
    """
    The 100,000 registered URIs.
    """
    table = [f"app-{i}.apps.example.com" for i in range(60000)]
    table += [f"api-{i}.sys.example.com/v{p % 3}/svc{p}" for i in range(5000) for p in range(5)]
    table += [f"*.tenant-{i}.example.com" for i in range(10000)]
    table += [f"*.t-{i}.example.org/static" for i in range(5000)]
    return table


#: (case name, Host, path, expected route key or None).
CASES: list[tuple[str, bytes, bytes, str | None]] = [
    ("exact host, host-only route", b"app-12345.apps.example.com:443", b"/index.html?lang=en", "app-12345.apps.example.com"),
    ("exact host, context path (3 segments)", b"api-42.sys.example.com", b"/v1/svc1/items/7", "api-42.sys.example.com/v1/svc1"),
    ("wildcard host", b"shop.tenant-77.example.com", b"/cart", "*.tenant-77.example.com"),
    ("wildcard host with path", b"a.b.t-9.example.org", b"/static/app.css", "*.t-9.example.org/static"),
    ("miss (404)", b"nope-1.unknown.test", b"/x/y", None),
]


def main() -> None:
    """
    Print the numbers.
    """
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--seconds", type=float, default=0.5)
    seconds = options.parse_args().seconds
    registry = RouteRegistry()
    payloads = [payload(uri, index) for index, uri in enumerate(uris())]

    start = time.process_time()
    for data in payloads:
        registry.register(parseRegistryMessage(data), 0.0)  # type: ignore[arg-type]
    elapsed = time.process_time() - start
    print(f"load   {len(payloads):,} routes from JSON (parse + register)  {len(payloads) / elapsed:12,.0f} /s"
          f"  {1e6 * elapsed / len(payloads):6.2f} us")
    print(f"       routes {registry.routeCount:,}, endpoints {registry.endpointCount:,}")

    lookup = registry.lookup
    for name, host, path, expected in CASES:
        found = lookup(host, path)
        assert (None if found is None else found.routeKey) == expected, (name, found)

        def lookups(n: int, host: bytes = host, path: bytes = path) -> None:
            for _ in range(n):
                lookup(host, path)

        rate = measure(lookups, seconds)
        print(f"lookup {name:44} {rate:12,.0f} /s  {1e6 / rate:6.2f} us")

    rng = random.Random(1)
    mixed = [(c[1], c[2]) for c in rng.choices(CASES, weights=[60, 25, 8, 4, 3], k=4096)]

    def mixedLookups(n: int) -> None:
        for i in range(n):
            host, path = mixed[i & 4095]
            lookup(host, path)

    rate = measure(mixedLookups, seconds)
    print(f"lookup {'mix 60/25/8/4/3 (as listed above)':44} {rate:12,.0f} /s  {1e6 / rate:6.2f} us")

    resolve = registry.resolve

    def resolves(n: int) -> None:
        for _ in range(n):
            resolve(b"app-12345.apps.example.com", b"/index.html", "10.9.9.9")

    assert isinstance(resolve(b"app-12345.apps.example.com", b"/index.html", "10.9.9.9"), RouteMatch)
    rate = measure(resolves, seconds)
    print(f"resolve {'exact host (empty-host check + lookup)':43} {rate:12,.0f} /s  {1e6 / rate:6.2f} us")

    heartbeat = payloads[12345]

    def parses(n: int) -> None:
        for _ in range(n):
            parseRegistryMessage(heartbeat)

    rate = measure(parses, seconds)
    print(f"parse  {'route-emitter payload':44} {rate:12,.0f} /s  {1e6 / rate:6.2f} us")

    def heartbeats(n: int) -> None:
        for i in range(n):
            registry.register(parseRegistryMessage(heartbeat), float(i))  # type: ignore[arg-type]

    rate = measure(heartbeats, seconds)
    print(f"register {'heartbeat (parse + refresh)':42} {rate:12,.0f} /s  {1e6 / rate:6.2f} us")

    fresh = [parseRegistryMessage(payload(f"new-{i}.apps.example.com/p", 200000 + i)) for i in range(4096)]

    def churn(n: int) -> None:
        for i in range(n):
            message: RegistryMessage = fresh[i & 4095]  # type: ignore[assignment]
            registry.register(message, 1.0)
            registry.unregister(message, 1.0)

    rate = measure(churn, seconds)
    print(f"register {'new route + unregister it (pairs)':42} {rate:12,.0f} /s  {1e6 / rate:6.2f} us")

    for name, action in (("prune cycle, nothing stale", lambda: registry.prune(60.0)),
                         ("snapshot (/routes data)", registry.snapshot)):
        start = time.process_time()
        action()
        print(f"once   {name:44} {1000 * (time.process_time() - start):12,.1f} ms")


if __name__ == "__main__":
    main()
