"""
Tests for L{meshproxy.routing.registry}: gorouter's route keys, lookups, registration semantics,
pruning, C{/routes}, sticky and instance lookups, change callbacks.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.routing.registry import (
    ADDED, NOT_UNREGISTERED, OUT_OF_SHARD, REFRESHED, UNMODIFIED, UNREGISTERED, UPDATED, Pool, PrunedRoute,
    RouteMatch, RouteRegistry, routeKey,
)
from meshproxy.routing.registrymsg import RegistryMessage, RouterReply, encodeJSON, parseRegistryMessage

APP = "5c8a2e1b-7d3f-4e2a-9b1c-0f6e5d4c3b2a"


def message(*uris: str, host: str = "10.0.0.1", port: int = 8080, **fields: Any) -> RegistryMessage:
    """
    A register message for C{uris}.
    """
    return RegistryMessage(host=host, port=port, uris=uris, **fields)


class Recorder:
    """
    A registry with callbacks that record what they were told.
    """

    def __init__(self, **options: Any) -> None:
        self.changed: list[tuple[str, int]] = []
        self.removed: list[str] = []
        self.registry = RouteRegistry(
            onPoolChanged=lambda p: self.changed.append((p.routeKey, p.version)),
            onPoolRemoved=lambda p: self.removed.append(p.routeKey),
            **options,
        )

    def clear(self) -> None:
        """
        Forget what was recorded.
        """
        del self.changed[:], self.removed[:]


class RouteKeyTests(SynchronousTestCase):
    """
    How a registered uri becomes a route key.
    """

    def test_normalisation(self) -> None:
        """
        Lower case (path included), query cut, up to two trailing slashes and one leading slash dropped.
        """
        cases = {
            "Example.COM": "example.com", "example.com/": "example.com", "Example.com/API/": "example.com/api",
            "example.com/api?x=1": "example.com/api", "example.com/api/?x=1": "example.com/api",
            "example.com/api//": "example.com/api", "/example.com": "example.com", "*.Example.com": "*.example.com",
            "example.com/a/b": "example.com/a/b",
        }
        for uri, key in cases.items():
            self.assertEqual(routeKey(uri), key, uri)


class LookupTests(SynchronousTestCase):
    """
    Request to pool, gorouter's way.
    """

    def setUp(self) -> None:
        self.registry = RouteRegistry()
        for uri in ("app.example.com", "App.Example.com/API", "app.example.com/api/v2", "*.example.com",
                    "*.b.example.com", "*.example.com/static", "other.example.org", "localhost/x",
                    "*.js", "plain"):
            self.registry.register(message(uri, port=hash(uri) % 60000 + 1), 0.0)

    def key(self, host: bytes | str, path: bytes | str) -> str | None:
        """
        The route key the lookup found, or L{None}.
        """
        pool = self.registry.lookup(host, path)
        return None if pool is None else pool.routeKey

    def test_caseAndPort(self) -> None:
        """
        Hosts and paths are case-insensitive and the Host's port is ignored.
        """
        self.assertEqual(self.key(b"APP.example.COM:8443", b"/"), "app.example.com")
        self.assertEqual(self.key(b"app.example.com", b"/Api"), "app.example.com/api")
        self.assertEqual(self.key("app.example.com:80", "/API/V2/x"), "app.example.com/api/v2")

    def test_wholeSegments(self) -> None:
        """
        A context path matches whole segments only: C{/api} covers C{/api/x}, not C{/apix}.
        """
        self.assertEqual(self.key(b"app.example.com", b"/apix"), "app.example.com")
        self.assertEqual(self.key(b"app.example.com", b"/api/x"), "app.example.com/api")
        self.assertEqual(self.key(b"app.example.com", b"/api/v2"), "app.example.com/api/v2")
        self.assertEqual(self.key(b"app.example.com", b"/api/v22"), "app.example.com/api")
        self.assertEqual(self.key(b"app.example.com", b"/x/api"), "app.example.com")

    def test_trailingSlashAndQuery(self) -> None:
        """
        Up to two trailing slashes and the query are ignored.
        """
        self.assertEqual(self.key(b"app.example.com", b"/api/"), "app.example.com/api")
        self.assertEqual(self.key(b"app.example.com", b"/api//"), "app.example.com/api")
        self.assertEqual(self.key(b"app.example.com", b"/api?v2=/api/v2"), "app.example.com/api")
        self.assertEqual(self.key(b"app.example.com", b"/api/v2?x"), "app.example.com/api/v2")
        self.assertEqual(self.key(b"app.example.com", b""), "app.example.com")

    def test_wildcards(self) -> None:
        """
        C{*.example.com} matches any depth below C{example.com} but not C{example.com}; the most
        specific wildcard wins and an exact host always beats a wildcard.
        """
        self.assertEqual(self.key(b"x.example.com", b"/"), "*.example.com")
        self.assertEqual(self.key(b"x.y.example.com", b"/"), "*.example.com")
        self.assertEqual(self.key(b"x.b.example.com", b"/"), "*.b.example.com")
        self.assertEqual(self.key(b"app.example.com", b"/"), "app.example.com")
        self.assertIsNone(self.key(b"example.com", b"/"))
        self.assertIsNone(self.key(b"x.example.org", b"/"))

    def test_wildcardWithPath(self) -> None:
        """
        The path is carried along to the wildcard routes.
        """
        self.assertEqual(self.key(b"x.example.com", b"/static/app.css"), "*.example.com/static")
        self.assertEqual(self.key(b"x.example.com", b"/staticx"), "*.example.com")

    def test_pathDots(self) -> None:
        """
        gorouter's quirk: once the host has no dots left, the dots of the path make wildcards too.
        """
        self.assertEqual(self.key(b"localhost", b"/x"), "localhost/x")
        self.assertEqual(self.key(b"nohost", b"/app.js"), "*.js")
        self.assertEqual(self.key(b"a.com", b"/lib/app.js"), "*.js")
        self.assertEqual(self.key(b"nohost", b"/.js"), "*.js")
        self.assertIsNone(self.key(b"nohost", b"/app"))

    def test_literalWildcardHost(self) -> None:
        """
        A Host that is itself C{*.example.com} finds that route directly, as gorouter's first try does.
        """
        self.assertEqual(self.key(b"*.example.com", b"/"), "*.example.com")
        self.assertEqual(self.key(b"*.x.b.example.com", b"/"), "*.b.example.com")

    def test_misses(self) -> None:
        """
        Unknown hosts, an empty Host and a Host that is only a port find nothing.
        """
        self.assertIsNone(self.key(b"unknown.test", b"/"))
        self.assertIsNone(self.key(b"", b"/plain"))
        self.assertIsNone(self.key(b":8080", b"/"))

    def test_hostCutAtFirstColon(self) -> None:
        """
        Like gorouter the Host is cut at its first colon (so an IPv6 literal becomes C{[}).
        """
        self.registry.register(message("["), 0.0)
        self.assertEqual(self.key(b"[::1]:8080", b"/"), "[")

    def test_escapedPath(self) -> None:
        """
        The path is matched in escaped form: percent escapes as sent (any case), and characters Go
        escapes are escaped before matching.
        """
        self.registry.register(message("app.example.com/caf%C3%A9", "app.example.com/a%20b", "app.example.com/x%7By"), 0.0)
        self.assertEqual(self.key(b"app.example.com", b"/caf%c3%a9/x"), "app.example.com/caf%c3%a9")
        self.assertEqual(self.key(b"app.example.com", b"/a b"), "app.example.com/a%20b")
        self.assertEqual(self.key(b"app.example.com", b"/x{y"), "app.example.com/x%7by")
        self.assertEqual(self.key(b"app.example.com", b"/caf\xc3\xa9"), "app.example.com/caf%c3%a9")
        self.assertEqual(self.key(b"app.example.com", b"/a%zz{"), "app.example.com")

    def test_nonASCIIHost(self) -> None:
        """
        Upper-case non-ASCII letters are lowered as Go lowers them.
        """
        self.registry.register(message("\u00e9t\u00e9.example.com"), 0.0)
        self.assertEqual(self.key("\u00c9T\u00c9.example.com".encode(), b"/"), "\u00e9t\u00e9.example.com")

    def test_strArguments(self) -> None:
        """
        C{str} arguments work like C{bytes}.
        """
        self.assertEqual(self.key("x.example.com", "/static"), "*.example.com/static")


class EmptyPoolTests(SynchronousTestCase):
    """
    gorouter keeps an emptied pool only with C{empty_pool_response_code_503} and an
    C{empty_pool_timeout}.
    """

    def test_removedByDefault(self) -> None:
        """
        Without a timeout the last unregistration removes the key: 404 from then on.
        """
        recorder = Recorder(emptyPoolTimeout=0.0)
        registry = recorder.registry
        registry.register(message("a.com"), 0.0)
        self.assertEqual(registry.unregister(message("a.com"), 1.0), (UNREGISTERED,))
        self.assertIsNone(registry.lookup(b"a.com", b"/"))
        self.assertEqual(recorder.removed, ["a.com"])

    def test_keptUntilTimeout(self) -> None:
        """
        With both set, the empty pool stays (a lookup returns it, C{resolve} answers 503) until a prune
        finds it empty for longer than the timeout.
        """
        recorder = Recorder(emptyPoolTimeout=10.0)
        registry = recorder.registry
        registry.register(message("a.com"), 0.0)
        registry.register(message("*.com", port=1), 0.0)
        registry.unregister(message("a.com"), 5.0)
        pool = registry.lookup(b"a.com", b"/")
        self.assertEqual((pool.routeKey, pool.endpoints), ("a.com", ()))  # type: ignore[union-attr]
        reply = registry.resolve(b"a.com", b"/")
        self.assertIsInstance(reply, RouterReply)
        self.assertEqual(reply.status, 503)  # type: ignore[union-attr]
        self.assertEqual(registry.snapshot()["a.com"], [])
        self.assertEqual(recorder.removed, [])
        registry.prune(15.0)
        self.assertIsNotNone(registry.lookup(b"a.com", b"/"))
        registry.prune(15.1)
        self.assertEqual(registry.lookup(b"a.com", b"/").routeKey, "*.com")  # type: ignore[union-attr]
        self.assertEqual(recorder.removed, ["a.com"])

    def test_deeperEmptyPoolDoesNotShadow(self) -> None:
        """
        A kept empty pool on a longer path does not hide a shorter route that has endpoints.
        """
        registry = RouteRegistry(emptyPoolTimeout=10.0)
        registry.register(message("a.com", "a.com/api"), 0.0)
        registry.unregister(message("a.com/api"), 1.0)
        self.assertEqual(registry.lookup(b"a.com", b"/api/x").routeKey, "a.com")  # type: ignore[union-attr]

    def test_unregisterAfterTimeout(self) -> None:
        """
        An unregistration for a pool already empty for longer than the timeout removes it.
        """
        registry = RouteRegistry(emptyPoolTimeout=10.0)
        registry.register(message("a.com"), 0.0)
        registry.unregister(message("a.com"), 1.0)
        registry.unregister(message("a.com"), 5.0)
        self.assertIsNotNone(registry.pool("a.com"))
        self.assertEqual(registry.unregister(message("a.com"), 11.5), (NOT_UNREGISTERED,))
        self.assertIsNone(registry.pool("a.com"))

    def test_404WithoutFlag(self) -> None:
        """
        With the 503 flag off, pools are never kept and a missing route is a 404.
        """
        registry = RouteRegistry(emptyPoolTimeout=10.0, emptyPoolResponseCode503=False)
        registry.register(message("a.com"), 0.0)
        registry.unregister(message("a.com"), 1.0)
        self.assertEqual(registry.resolve(b"a.com", b"/").status, 404)  # type: ignore[union-attr]


class RegisterTests(SynchronousTestCase):
    """
    Registration: endpoint identity, heartbeats, updates in place.
    """

    def setUp(self) -> None:
        self.recorder = Recorder()
        self.registry = self.recorder.registry

    def test_added(self) -> None:
        """
        A new endpoint goes into a new pool that remembers the registered case of host and path.
        """
        self.assertEqual(self.registry.register(message("App.com/Api/"), 1.0), (ADDED,))
        pool = self.registry.pool("app.com/api")
        assert pool is not None
        self.assertEqual((pool.routeKey, pool.host, pool.contextPath), ("app.com/api", "App.com", "/Api"))
        [endpoint] = pool.endpoints
        self.assertEqual((endpoint.address, endpoint.host, endpoint.port, endpoint.tls), ("10.0.0.1:8080", "10.0.0.1", 8080, False))
        self.assertEqual(pool.lastUpdate(endpoint), 1.0)
        self.assertEqual(self.recorder.changed, [("app.com/api", pool.version)])
        self.assertEqual(self.registry.pool("app.com").contextPath if self.registry.pool("app.com") else "/", "/")

    def test_hostOnlyContextPath(self) -> None:
        """
        A route without a path has context path C{/}.
        """
        self.registry.register(message("/app.com?x=1"), 0.0)
        self.assertEqual((self.registry.pool("app.com").host, self.registry.pool("app.com").contextPath),  # type: ignore[union-attr]
                         ("app.com?x=1", "/"))

    def test_refresh(self) -> None:
        """
        The same endpoint again is a heartbeat: same object, same version, no callback.
        """
        self.registry.register(message("a.com"), 1.0)
        pool = self.registry.pool("a.com")
        assert pool is not None
        endpoint, version = pool.endpoints[0], pool.version
        self.recorder.clear()
        self.assertEqual(self.registry.register(message("a.com"), 5.0), (REFRESHED,))
        self.assertIs(pool.endpoints[0], endpoint)
        self.assertEqual((pool.version, pool.lastUpdate(endpoint), pool.updatedAt), (version, 5.0, 5.0))
        self.assertEqual(self.recorder.changed, [])

    def test_updateInPlace(self) -> None:
        """
        The same address with other data replaces the endpoint in its position, bumps the version and
        calls back.
        """
        self.registry.register(message("a.com", host="10.0.0.1"), 0.0)
        self.registry.register(message("a.com", host="10.0.0.2", app="old"), 0.0)
        self.registry.register(message("a.com", host="10.0.0.3"), 0.0)
        pool = self.registry.pool("a.com")
        assert pool is not None
        version = pool.version
        self.recorder.clear()
        self.assertEqual(self.registry.register(message("a.com", host="10.0.0.2", app="new"), 3.0), (UPDATED,))
        self.assertEqual([(e.host, e.appId) for e in pool.endpoints], [("10.0.0.1", ""), ("10.0.0.2", "new"), ("10.0.0.3", "")])
        self.assertGreater(pool.version, version)
        self.assertEqual(self.recorder.changed, [("a.com", pool.version)])
        self.assertEqual(pool.lastUpdate(pool.endpoints[1]), 3.0)

    def test_olderUpdateStillWins(self) -> None:
        """
        gorouter keeps the last message whatever its C{endpoint_updated_at_ns}.
        """
        self.registry.register(message("a.com", app="new", endpointUpdatedAtNs=200), 0.0)
        self.assertEqual(self.registry.register(message("a.com", app="old", endpointUpdatedAtNs=100), 1.0), (UPDATED,))
        self.assertEqual(self.registry.pool("a.com").endpoints[0].appId, "old")  # type: ignore[union-attr]

    def test_timestampAloneIsUpdate(self) -> None:
        """
        gorouter's endpoint equality includes C{endpoint_updated_at_ns}: a new timestamp alone replaces
        the endpoint (and calls back).
        """
        self.registry.register(message("a.com", endpointUpdatedAtNs=1), 0.0)
        self.recorder.clear()
        self.assertEqual(self.registry.register(message("a.com", endpointUpdatedAtNs=2), 1.0), (UPDATED,))
        self.assertEqual(self.registry.pool("a.com").endpoints[0].updatedAtNs, 2)  # type: ignore[union-attr]
        self.assertEqual([k for k, _ in self.recorder.changed], ["a.com"])

    def test_ignoreOlderUpdates(self) -> None:
        """
        With C{ignoreOlderUpdates} an older changed registration is ignored (no heartbeat either); a
        newer one, or one without a timestamp, replaces.
        """
        registry = RouteRegistry(ignoreOlderUpdates=True)
        registry.register(message("a.com", app="new", endpointUpdatedAtNs=200), 0.0)
        self.assertEqual(registry.register(message("a.com", app="old", endpointUpdatedAtNs=100), 1.0), (UNMODIFIED,))
        pool = registry.pool("a.com")
        assert pool is not None
        self.assertEqual((pool.endpoints[0].appId, pool.lastUpdate(pool.endpoints[0])), ("new", 0.0))
        self.assertEqual(registry.register(message("a.com", app="newer", endpointUpdatedAtNs=300), 2.0), (UPDATED,))
        self.assertEqual(registry.register(message("a.com", app="untimed"), 3.0), (UPDATED,))
        self.assertEqual(pool.endpoints[0].appId, "untimed")

    def test_availabilityZoneAloneIsRefresh(self) -> None:
        """
        gorouter's endpoint equality ignores the availability zone: changing only it is a heartbeat.
        """
        self.registry.register(message("a.com", availabilityZone="z1"), 0.0)
        self.assertEqual(self.registry.register(message("a.com", availabilityZone="z2"), 1.0), (REFRESHED,))
        self.assertEqual(self.registry.pool("a.com").endpoints[0].availabilityZone, "z1")  # type: ignore[union-attr]

    def test_tlsPortIdentity(self) -> None:
        """
        The TLS port, when given, is the endpoint's port and identity.
        """
        self.registry.register(message("a.com", port=8080, tlsPort=8443), 0.0)
        self.registry.register(message("a.com", port=8080), 0.0)
        pool = self.registry.pool("a.com")
        assert pool is not None
        self.assertEqual([(e.address, e.tls) for e in pool.endpoints], [("10.0.0.1:8443", True), ("10.0.0.1:8080", False)])

    def test_severalUris(self) -> None:
        """
        One message puts one endpoint into the pool of each uri; duplicates after normalising refresh.
        """
        results = self.registry.register(message("a.com", "b.com/x", "A.com/"), 0.0)
        self.assertEqual(results, (ADDED, ADDED, REFRESHED))
        self.assertIs(self.registry.pool("a.com").endpoints[0], self.registry.pool("b.com/x").endpoints[0])  # type: ignore[union-attr]
        self.assertEqual(sorted(k for k, _ in self.recorder.changed), ["a.com", "b.com/x"])

    def test_noUris(self) -> None:
        """
        A message without uris changes nothing.
        """
        self.assertEqual(self.registry.register(message(), 0.0), ())
        self.assertEqual(self.registry.routeCount, 0)

    def test_loadBalancing(self) -> None:
        """
        A valid C{options.loadbalancing} sets the pool's algorithm (last one wins, and stays when later
        messages name none); an invalid one is ignored and logged.
        """
        self.registry.register(message("a.com"), 0.0)
        pool = self.registry.pool("a.com")
        assert pool is not None
        self.assertEqual(pool.loadBalancing, "round-robin")
        version = pool.version
        self.registry.register(message("a.com", port=2, loadBalancing="least-connection"), 0.0)
        self.assertEqual(pool.loadBalancing, "least-connection")
        self.registry.register(message("a.com", port=3), 0.0)
        self.assertEqual(pool.loadBalancing, "least-connection")
        events: list[dict[str, Any]] = []
        self.registry.log = Logger(observer=events.append)  # type: ignore[misc]
        self.registry.register(message("a.com", port=3, loadBalancing="hash"), 0.0)
        self.assertEqual(pool.loadBalancing, "least-connection")
        self.assertEqual(pool.endpoints[2].loadBalancing, "hash")
        self.assertEqual([(e["algorithm"], e["kept"]) for e in events], [("hash", "least-connection")])
        self.registry.register(message("a.com", loadBalancing="round-robin"), 0.0)
        self.assertEqual(pool.loadBalancing, "round-robin")
        self.assertGreater(pool.version, version)

    def test_defaultLoadBalancing(self) -> None:
        """
        New pools take the registry's default algorithm, which must be a known one.
        """
        registry = RouteRegistry(defaultLoadBalancing="least-connection")
        registry.register(message("a.com"), 0.0)
        self.assertEqual(registry.pool("a.com").loadBalancing, "least-connection")  # type: ignore[union-attr]
        self.assertRaises(ValueError, RouteRegistry, defaultLoadBalancing="random")

    def test_routeServiceUrl(self) -> None:
        """
        The pool's route service URL is the last added or updated endpoint's.
        """
        self.registry.register(message("a.com", routeServiceUrl="https://rs1"), 0.0)
        self.registry.register(message("a.com", port=2, routeServiceUrl="https://rs2"), 0.0)
        self.assertEqual(self.registry.pool("a.com").routeServiceUrl, "https://rs2")  # type: ignore[union-attr]

    def test_staleThreshold(self) -> None:
        """
        The effective threshold: 0 or more than the droplet threshold gives the droplet threshold; a
        negative one stays (Go's comparison), an overflowing one wraps as Go's int64 nanoseconds do.
        """
        cases = {0: 120.0, 30: 30.0, 120: 120.0, 300: 120.0, -5: -5.0, 9223372037: -9223372036.709552}
        for seconds, threshold in cases.items():
            endpoint = self.registry.endpointFor(message("a.com", staleThresholdInSeconds=seconds))
            self.assertAlmostEqual(endpoint.staleThreshold, threshold, places=3)

    def test_protocol(self) -> None:
        """
        No protocol is C{http1}; C{http2} is kept only when HTTP/2 is enabled.
        """
        self.assertEqual(self.registry.endpointFor(message()).protocol, "http1")
        self.assertEqual(self.registry.endpointFor(message(protocol="http2")).protocol, "http2")
        self.assertEqual(RouteRegistry(enableHTTP2=False).endpointFor(message(protocol="http2")).protocol, "http1")

    def test_sharding(self) -> None:
        """
        Outside the router's shard, registrations and unregistrations are ignored.
        """
        segments = RouteRegistry(shardingMode="segments", isolationSegments=["iso"])
        self.assertEqual(segments.register(message("a.com"), 0.0), (OUT_OF_SHARD,))
        self.assertEqual(segments.register(message("b.com", isolationSegment="iso"), 0.0), (ADDED,))
        self.assertEqual(segments.unregister(message("b.com"), 0.0), (OUT_OF_SHARD,))
        shared = RouteRegistry(shardingMode="shared-and-segments", isolationSegments=["iso"])
        self.assertEqual(shared.register(message("a.com", "b.com"), 0.0), (ADDED, ADDED))
        self.assertEqual(shared.register(message("c.com", isolationSegment="other"), 0.0), (OUT_OF_SHARD,))
        self.assertEqual(RouteRegistry().register(message("a.com", isolationSegment="any"), 0.0), (ADDED,))
        self.assertRaises(ValueError, RouteRegistry, shardingMode="some")

    def test_fromParsedMessage(self) -> None:
        """
        A parsed payload registers as is.
        """
        parsed = parseRegistryMessage(b'{"host":"127.0.0.1","port":4567,"uris":["my_first_url.localhost.routing.cf-app.com"],'
                                      b'"tags":{"some_key":"some_value"},"app":"some_app_guid","stale_threshold_in_seconds":120,'
                                      b'"private_instance_id":"some_app_instance_id","private_instance_index":"0"}')
        assert isinstance(parsed, RegistryMessage)
        self.registry.register(parsed, 0.0)
        pool = self.registry.lookup(b"my_first_url.localhost.routing.cf-app.com", b"/")
        self.assertEqual(pool.endpoints[0].tags, {"some_key": "some_value"})  # type: ignore[union-attr]


class UnregisterTests(SynchronousTestCase):
    """
    Unregistration by address.
    """

    def setUp(self) -> None:
        self.recorder = Recorder()
        self.registry = self.recorder.registry

    def test_oneOfTwo(self) -> None:
        """
        Removing one endpoint leaves the pool with the other, a new version and a callback.
        """
        self.registry.register(message("a.com", port=1), 0.0)
        self.registry.register(message("a.com", port=2), 0.0)
        pool = self.registry.pool("a.com")
        assert pool is not None
        version = pool.version
        self.recorder.clear()
        self.assertEqual(self.registry.unregister(message("a.com", port=1, app="ignored"), 1.0), (UNREGISTERED,))
        self.assertEqual([e.address for e in pool.endpoints], ["10.0.0.1:2"])
        self.assertEqual(self.recorder.changed, [("a.com", pool.version)])
        self.assertGreater(pool.version, version)
        self.assertEqual(self.recorder.removed, [])

    def test_last(self) -> None:
        """
        Removing the last endpoint removes the route: lookups, C{/routes} and the callback agree.
        """
        self.registry.register(message("a.com"), 0.0)
        self.recorder.clear()
        self.registry.unregister(message("a.com"), 1.0)
        self.assertIsNone(self.registry.lookup(b"a.com", b"/"))
        self.assertEqual((self.registry.snapshot(), self.registry.routeCount, self.registry.endpointCount), ({}, 0, 0))
        self.assertEqual((self.recorder.changed, self.recorder.removed), ([], ["a.com"]))

    def test_unknown(self) -> None:
        """
        An unknown route or address changes nothing.
        """
        self.registry.register(message("a.com"), 0.0)
        self.recorder.clear()
        self.assertEqual(self.registry.unregister(message("b.com", "a.com", port=9), 1.0), (NOT_UNREGISTERED,) * 2)
        self.assertEqual(self.registry.unregister(message("a.com", tlsPort=8443), 1.0), (NOT_UNREGISTERED,))
        self.assertEqual((self.recorder.changed, self.recorder.removed), ([], []))
        self.assertEqual(len(self.registry.pool("a.com").endpoints), 1)  # type: ignore[union-attr]

    def test_nestedRoutes(self) -> None:
        """
        Removing a route keeps its parent and children routes working, and drops trie nodes no longer
        needed (the same key can be registered again).
        """
        self.registry.register(message("a.com", "a.com/x", "a.com/x/y/z"), 0.0)
        self.registry.unregister(message("a.com/x"), 1.0)
        self.assertEqual(self.registry.lookup(b"a.com", b"/x/y/z/w").routeKey, "a.com/x/y/z")  # type: ignore[union-attr]
        self.assertEqual(self.registry.lookup(b"a.com", b"/x/y").routeKey, "a.com")  # type: ignore[union-attr]
        self.registry.unregister(message("a.com/x/y/z", "a.com"), 1.0)
        self.assertEqual(self.registry._exact, {})
        self.registry.register(message("*.a.com/p"), 0.0)
        self.registry.unregister(message("*.a.com/p"), 0.0)
        self.assertEqual(self.registry._wild, {})
        self.registry.register(message("a.com/x"), 0.0)
        self.assertEqual(self.registry.lookup(b"a.com", b"/x").routeKey, "a.com/x")  # type: ignore[union-attr]


class PruneTests(SynchronousTestCase):
    """
    Pruning stale endpoints.
    """

    def setUp(self) -> None:
        self.recorder = Recorder()
        self.registry = self.recorder.registry

    def test_globalThreshold(self) -> None:
        """
        An endpoint is pruned once its last heartbeat is more than 120 s old (strictly), with its pool.
        """
        self.registry.register(message("a.com"), 0.0)
        self.assertEqual(self.registry.prune(120.0), [])
        self.registry.register(message("a.com"), 10.0)
        self.assertEqual(self.registry.prune(130.0), [])
        self.recorder.clear()
        pruned = self.registry.prune(130.5)
        self.assertEqual([(p.routeKey, [e.address for e in p.endpoints]) for p in pruned], [("a.com", ["10.0.0.1:8080"])])
        self.assertIsInstance(pruned[0], PrunedRoute)
        self.assertIsNone(self.registry.lookup(b"a.com", b"/"))
        self.assertEqual(self.recorder.removed, ["a.com"])

    def test_perEndpointThreshold(self) -> None:
        """
        C{stale_threshold_in_seconds} shortens one endpoint's life; the pool stays for the others.
        """
        self.registry.register(message("a.com", port=1, staleThresholdInSeconds=10), 0.0)
        self.registry.register(message("a.com", port=2, staleThresholdInSeconds=500), 0.0)
        self.recorder.clear()
        self.assertEqual(self.registry.prune(10.0), [])
        [pruned] = self.registry.prune(10.5)
        self.assertEqual([e.port for e in pruned.endpoints], [1])
        pool = self.registry.pool("a.com")
        self.assertEqual([e.port for e in pool.endpoints], [2])  # type: ignore[union-attr]
        self.assertEqual(self.recorder.changed, [("a.com", pool.version)])  # type: ignore[union-attr]
        self.registry.prune(120.5)
        self.assertIsNone(self.registry.pool("a.com"))

    def test_tlsNeverPruned(self) -> None:
        """
        Endpoints registered with a TLS port are never pruned for age.
        """
        self.registry.register(message("a.com", tlsPort=8443, staleThresholdInSeconds=1), 0.0)
        self.assertEqual(self.registry.prune(10000.0), [])
        self.assertEqual(len(self.registry.pool("a.com").endpoints), 1)  # type: ignore[union-attr]

    def test_negativeThreshold(self) -> None:
        """
        A negative threshold (kept, as by Go) prunes at the next cycle.
        """
        self.registry.register(message("a.com", staleThresholdInSeconds=-1), 0.0)
        self.assertEqual(len(self.registry.prune(0.0)), 1)

    def test_heartbeatsPerPool(self) -> None:
        """
        A heartbeat counts for the uris it names only.
        """
        self.registry.register(message("a.com", "b.com"), 0.0)
        self.registry.register(message("a.com"), 100.0)
        self.assertEqual([p.routeKey for p in self.registry.prune(121.0)], ["b.com"])
        self.assertEqual(self.registry.endpointCount, 1)


class SuspendTests(SynchronousTestCase):
    """
    Suspending pruning while NATS is unreachable.
    """

    def setUp(self) -> None:
        self.registry = RouteRegistry()
        self.registry.register(message("a.com"), 0.0)

    def test_suspended(self) -> None:
        """
        While suspended a prune cycle removes nothing.
        """
        self.registry.suspendPruning()
        self.assertTrue(self.registry.pruningSuspended)
        self.assertEqual(self.registry.prune(1000.0), [])
        self.assertIsNotNone(self.registry.pool("a.com"))

    def test_resumeFreshens(self) -> None:
        """
        The first cycle after skipped ones sets every heartbeat to its time, so pruning starts afresh.
        """
        self.registry.suspendPruning()
        self.registry.prune(1000.0)
        self.registry.resumePruning()
        self.assertFalse(self.registry.pruningSuspended)
        self.assertEqual(self.registry.prune(1030.0), [])
        pool = self.registry.pool("a.com")
        self.assertEqual(pool.lastUpdate(pool.endpoints[0]), 1030.0)  # type: ignore[union-attr]
        self.assertEqual(self.registry.prune(1150.0), [])
        self.assertEqual(len(self.registry.prune(1150.5)), 1)

    def test_noSkippedCycle(self) -> None:
        """
        An outage between two cycles skips none, so nothing is refreshed (gorouter notices the outage
        only in a prune cycle).
        """
        self.registry.suspendPruning()
        self.registry.resumePruning()
        self.assertEqual(len(self.registry.prune(121.0)), 1)

    def test_registrationsWhileSuspended(self) -> None:
        """
        Messages still apply while pruning is suspended.
        """
        self.registry.suspendPruning()
        self.assertEqual(self.registry.register(message("b.com"), 5.0), (ADDED,))
        self.assertEqual(self.registry.unregister(message("a.com"), 5.0), (UNREGISTERED,))
        self.assertEqual(self.registry.routeCount, 1)


class SnapshotTests(SynchronousTestCase):
    """
    C{/routes} data and the C{/varz} counts.
    """

    def test_shape(self) -> None:
        """
        Keys sorted; each endpoint in Go's field order, optional fields only when set, tags sorted or
        C{null}.
        """
        registry = RouteRegistry()
        registry.register(message("nats-py.example.com", "nats-py.example.com/api", host="127.0.0.1", port=61002,
                                  availabilityZone="z1", protocol="http1", tags={"z": "1", "component": "route-emitter"},
                                  privateInstanceId="aaaa", serverCertDomainSAN="aaaa", loadBalancing="least-connection",
                                  routeServiceUrl="https://rs", isolationSegment="iso"), 0.0)
        registry.register(message("*.w.example.com", host="127.0.0.1", port=61003, tlsPort=61004,
                                  staleThresholdInSeconds=30), 0.0)
        registry.register(message("a.example.com", tags={}), 0.0)
        full = (b'{"address":"127.0.0.1:61002","availability_zone":"z1","protocol":"http1","tls":false,"ttl":120,'
                b'"route_service_url":"https://rs","tags":{"component":"route-emitter","z":"1"},"isolation_segment":"iso",'
                b'"private_instance_id":"aaaa","server_cert_domain_san":"aaaa","load_balancing_algorithm":"least-connection"}')
        self.assertEqual(
            encodeJSON(registry.snapshot()),
            b'{"*.w.example.com":[{"address":"127.0.0.1:61004","availability_zone":"","protocol":"http1","tls":true,'
            b'"ttl":30,"tags":null}],'
            b'"a.example.com":[{"address":"10.0.0.1:8080","availability_zone":"","protocol":"http1","tls":false,'
            b'"ttl":120,"tags":{}}],'
            b'"nats-py.example.com":[' + full + b'],"nats-py.example.com/api":[' + full + b']}',
        )

    def test_counts(self) -> None:
        """
        C{urls} counts route keys, C{droplets} distinct addresses; the time since the last registration
        is in milliseconds, -1 before any.
        """
        registry = RouteRegistry()
        self.assertEqual(registry.msSinceLastUpdate(5.0), -1)
        registry.register(message("a.com", "b.com"), 1.0)
        registry.register(message("a.com", port=2), 2.0)
        self.assertEqual((registry.routeCount, registry.endpointCount), (2, 2))
        self.assertEqual(registry.msSinceLastUpdate(2.5), 500)
        registry.unregister(message("a.com"), 3.0)
        self.assertEqual(registry.endpointCount, 2)
        registry.unregister(message("b.com"), 3.0)
        self.assertEqual((registry.routeCount, registry.endpointCount), (1, 1))
        self.assertEqual(sorted(p.routeKey for p in registry.pools()), ["a.com"])


class StickyTests(SynchronousTestCase):
    """
    Finding the endpoint a C{__VCAP_ID__} cookie names.
    """

    def setUp(self) -> None:
        self.registry = RouteRegistry()
        self.registry.register(message("a.com", port=1, privateInstanceId="id-1"), 0.0)
        self.registry.register(message("a.com", port=2, privateInstanceId="id-2"), 0.0)
        self.pool: Pool = self.registry.pool("a.com")  # type: ignore[assignment]

    def test_byInstanceIdOrAddress(self) -> None:
        """
        The value may be the instance id or C{host:port}; empty or unknown values find nothing.
        """
        self.assertEqual(self.pool.findById(b"id-2").port, 2)  # type: ignore[union-attr]
        self.assertEqual(self.pool.findById("10.0.0.1:1").port, 1)  # type: ignore[union-attr]
        self.assertIsNone(self.pool.findById(b""))
        self.assertIsNone(self.pool.findById("id-3"))

    def test_followsChanges(self) -> None:
        """
        A new instance id replaces the old one; a removed endpoint is no longer found.
        """
        self.registry.register(message("a.com", port=1, privateInstanceId="id-9"), 0.0)
        self.assertIsNone(self.pool.findById("id-1"))
        self.assertEqual(self.pool.findById("id-9").port, 1)  # type: ignore[union-attr]
        self.registry.unregister(message("a.com", port=2), 0.0)
        self.assertIsNone(self.pool.findById("id-2"))

    def test_sharedInstanceId(self) -> None:
        """
        With two endpoints claiming one instance id, the last registered is found, then the other once
        it is gone.
        """
        self.registry.register(message("a.com", port=3, privateInstanceId="id-1"), 0.0)
        self.assertEqual(self.pool.findById("id-1").port, 3)  # type: ignore[union-attr]
        self.registry.unregister(message("a.com", port=3), 0.0)
        self.assertEqual(self.pool.findById("id-1").port, 1)  # type: ignore[union-attr]


class ResolveTests(SynchronousTestCase):
    """
    gorouter's lookup handler: routing decisions and error replies.
    """

    def setUp(self) -> None:
        self.registry = RouteRegistry()
        for port, index in ((1, "0"), (2, "1"), (3, "1")):
            self.registry.register(message("a.com", port=port, app=APP, privateInstanceIndex=index,
                                           tags={"process_id": APP}), 0.0)
        self.registry.register(message("a.com", port=4, app="other", privateInstanceIndex="0"), 0.0)

    def ports(self, result: RouteMatch | RouterReply) -> list[int]:
        """
        The ports of the endpoints a result allows.
        """
        assert isinstance(result, RouteMatch), result
        return [e.port for e in result.endpoints]

    def test_plain(self) -> None:
        """
        A known route gives its pool and all its endpoints.
        """
        result = self.registry.resolve(b"a.com:80", b"/x", "10.1.1.1")
        self.assertEqual(self.ports(result), [1, 2, 3, 4])
        self.assertIs(result.pool, self.registry.pool("a.com"))  # type: ignore[union-attr]

    def test_emptyHost(self) -> None:
        """
        No Host, or the client's own address as Host, is a 400.
        """
        for host, peer in ((None, "1.1.1.1"), (b"", None), (b"10.1.1.1:80", "10.1.1.1")):
            self.assertEqual(self.registry.resolve(host, b"/", peer).status, 400)  # type: ignore[union-attr]

    def test_unknownRoute(self) -> None:
        """
        A 404 naming the Host as sent.
        """
        reply = self.registry.resolve(b"b.com:8080", b"/", "10.1.1.1")
        self.assertEqual((reply.status, reply.body),  # type: ignore[union-attr]
                         (404, b"404 Not Found: Requested route ('b.com:8080') does not exist.\n"))

    def test_appInstance(self) -> None:
        """
        C{X-CF-APP-INSTANCE} narrows to the endpoint with that app and index (the last one registered).
        """
        self.assertEqual(self.ports(self.registry.resolve(b"a.com", b"/", appInstance=APP.encode() + b":1")), [3])
        self.assertEqual(self.ports(self.registry.resolve(b"a.com", b"/", appInstance=APP.encode() + b":0")), [1])

    def test_appInstanceErrors(self) -> None:
        """
        A malformed value is a 400 C{invalid_cf_app_instance_header}; a well-formed one matching nothing
        (or on an unknown route) is a 400 C{unknown_route} naming it.
        """
        reply = self.registry.resolve(b"a.com", b"/", appInstance=b"nope:1")
        self.assertEqual((reply.status, dict(reply.headers)[b"X-Cf-Routererror"]),  # type: ignore[union-attr]
                         (400, b"invalid_cf_app_instance_header"))
        for host in (b"a.com", b"b.com"):
            reply = self.registry.resolve(host, b"/", appInstance=APP.encode() + b":7")
            self.assertEqual(reply.body, (  # type: ignore[union-attr]
                f"400 Bad Request: Requested instance ('7') with guid ('{APP}') does not exist for route "
                f"('{host.decode()}')\n").encode())

    def test_processInstance(self) -> None:
        """
        C{X-CF-PROCESS-INSTANCE} narrows to the process's endpoints, all of them without an index.
        """
        self.assertEqual(self.ports(self.registry.resolve(b"a.com", b"/", processInstance=APP.encode())), [1, 2, 3])
        self.assertEqual(self.ports(self.registry.resolve(b"a.com", b"/", processInstance=APP.encode() + b":1")), [2, 3])
        reply = self.registry.resolve(b"a.com", b"/", processInstance=b"bad")
        self.assertEqual(dict(reply.headers)[b"X-Cf-Routererror"], b"invalid_cf_process_instance_header")  # type: ignore[union-attr]
        reply = self.registry.resolve(b"a.com", b"/", processInstance=APP.encode() + b":5")
        self.assertIn(b"Requested instance ('5') with process guid", reply.body)  # type: ignore[union-attr]

    def test_bothHeaders(self) -> None:
        """
        The app instance header is the one used; when it matches nothing the reply still speaks of the
        process header, as gorouter's does.
        """
        both = {"appInstance": APP.encode() + b":0", "processInstance": b"not-a-guid"}
        self.assertEqual(self.ports(self.registry.resolve(b"a.com", b"/", **both)), [1])  # type: ignore[arg-type]
        both["appInstance"] = APP.encode() + b":9"
        reply = self.registry.resolve(b"a.com", b"/", **both)  # type: ignore[arg-type]
        self.assertEqual(reply.body, b"400 Bad Request: Requested instance with process guid ('') does not exist "  # type: ignore[union-attr]
                                     b"for route ('a.com')\n")

    def test_emptyHeaderValues(self) -> None:
        """
        Empty header values count as absent.
        """
        self.assertEqual(self.ports(self.registry.resolve(b"a.com", b"/", appInstance=b"", processInstance=b"")), [1, 2, 3, 4])


class CallbackTests(SynchronousTestCase):
    """
    Change notification.
    """

    def test_versionsGrowAcrossPools(self) -> None:
        """
        Versions grow registry-wide, so a pool created again after removal is newer than the old one.
        """
        recorder = Recorder()
        registry = recorder.registry
        registry.register(message("a.com"), 0.0)
        registry.register(message("b.com"), 0.0)
        registry.unregister(message("a.com"), 0.0)
        registry.register(message("a.com"), 0.0)
        self.assertEqual(recorder.changed, [("a.com", 1), ("b.com", 2), ("a.com", 3)])
        self.assertEqual(recorder.removed, ["a.com"])

    def test_failingCallbackLogged(self) -> None:
        """
        A callback that raises is logged; the registry stays consistent and other pools are notified.
        """
        seen: list[str] = []

        def changed(pool: Pool) -> None:
            seen.append(pool.routeKey)
            raise RuntimeError("boom")

        registry = RouteRegistry(onPoolChanged=changed)
        self.assertEqual(registry.register(message("a.com", "b.com"), 0.0), (ADDED, ADDED))
        self.assertEqual(seen, ["a.com", "b.com"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(registry.routeCount, 2)

    def test_removeFailedEndpoint(self) -> None:
        """
        A failed TLS endpoint leaves one pool (kept even empty until the next prune) and comes back
        with its next heartbeat.
        """
        recorder = Recorder()
        registry = recorder.registry
        registry.register(message("a.com", "b.com", tlsPort=8443), 0.0)
        pool = registry.pool("a.com")
        assert pool is not None
        endpoint = pool.endpoints[0]
        recorder.clear()
        self.assertTrue(registry.removeFailedEndpoint(pool, endpoint, 1.0))
        self.assertFalse(registry.removeFailedEndpoint(pool, endpoint, 1.0))
        self.assertEqual((pool.endpoints, recorder.changed), ((), [("a.com", pool.version)]))
        self.assertIs(registry.lookup(b"a.com", b"/"), pool)
        self.assertEqual(registry.endpointCount, 1)
        registry.prune(2.0)
        self.assertEqual(recorder.removed, ["a.com"])
        self.assertEqual(registry.register(message("a.com", tlsPort=8443), 3.0), (ADDED,))
