"""
Cloud Foundry gorouter's route registry, pure: route keys to pools of endpoints, fed by C{router.register}
and C{router.unregister} messages, pruned by age, looked up per request.  Time is passed in (float
seconds); nothing here touches a reactor or does I/O.

Route keys.  A message's uri (C{host[/context/path]}, possibly C{*.}-prefixed) becomes a key by
gorouter's rules: one trailing C{/} is dropped, the whole uri is lower-cased, everything from the first
C{?} is cut, one more trailing C{/} and one leading C{/} are dropped.  So C{Example.COM/API/} and
C{example.com/api} are one route; the Host's port never takes part.  Each key has one L{Pool}.

Lookups (L{RouteRegistry.lookup}) take the Host and the request's path as sent.  The Host is cut at its
first C{:}, the path at C{?} (and re-escaped as Go's C{URL.EscapedPath} would when it holds characters
that must be escaped); the two are joined, lower-cased, stripped of up to two trailing C{/}, and split
into C{/}-separated segments.  The host segment is found in a dict; the path is walked one whole segment
at a time (so C{/api} matches C{/api/v1} but never C{/apix}), and the deepest route on the way that has
endpoints wins; if none has, an empty pool at the deepest node reached is returned (gorouter keeps empty
pools only with C{empty_pool_timeout}).  With no exact host route, wildcards are tried from the most to
the least specific: C{a.b.example.com} tries C{*.b.example.com}, then C{*.example.com}, then C{*.com};
an exact route always wins, and C{*.example.com} never matches C{example.com}.  Like gorouter, once the
host has no dots left the dots of the path are used too (C{localhost/app.js} tries C{*.js}).

Endpoints are identified by address (C{host:port}, the TLS port when there is one).  Registering one
already in the pool with the same data refreshes its heartbeat; with different data it is replaced in
place (same position), whatever its C{endpoint_updated_at_ns}: gorouter keeps the last message.
Unregistering removes it; a pool left empty is removed with its key.  L{RouteRegistry.prune} drops
endpoints whose last heartbeat is older than their threshold (C{stale_threshold_in_seconds}, which can
only shorten C{droplet_stale_threshold}); endpoints registered with a TLS port are never pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger

from meshproxy.routing.registrypool import (
    ADDED,
    REFRESHED,
    UNMODIFIED,
    UPDATED,
    Endpoint,
    Pool,
    PrunedRoute,
    RouteMatch,
    _match,
    _Node,
)
from meshproxy.routing.registrymsg import (
    EMPTY_HOST, INVALID_APP_INSTANCE_HEADER, INVALID_PROCESS_INSTANCE_HEADER, LOAD_BALANCING_ALGORITHMS, NO_ENDPOINTS,
    ROUND_ROBIN, UNKNOWN_APP_INSTANCE, UNKNOWN_PROCESS, UNKNOWN_PROCESS_INSTANCE, UNKNOWN_ROUTE, RegistryMessage,
    RouterReply, isEmptyHost, parseAppInstanceHeader, parseProcessInstanceHeader,
)

__all__ = [
    "ADDED", "NOT_UNREGISTERED", "OUT_OF_SHARD", "REFRESHED", "UNMODIFIED", "UNREGISTERED", "UPDATED",
    "Endpoint", "Pool", "PrunedRoute", "RouteMatch", "RouteRegistry", "routeKey",
]

#: What registering one uri did (gorouter's C{PoolPutResult}, plus the shard filter).
OUT_OF_SHARD = "out-of-shard"
#: What unregistering one uri did.
UNREGISTERED = "endpoint-unregistered"
NOT_UNREGISTERED = "endpoint-not-unregistered"

SHARDING_MODES = ("all", "segments", "shared-and-segments")

#: Bytes Go's C{URL.EscapedPath} keeps as they are; any other byte sends a path to L{_escapedPath}.
_PATH_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~!$&'()*+,;=:@[]%/"
_PATH_KEEP = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~$&+,/:;=@")
_INT64 = 1 << 64
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _asBytes(value: bytes | str) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)


def _lower(key: bytes) -> bytes:
    if key.isascii():
        return key.lower()
    return key.decode("utf-8", "replace").lower().encode("utf-8")


def routeKey(uri: str) -> str:
    """
    The route key of a registered uri, as gorouter stores it (and as C{/routes} shows it).
    """
    if uri.endswith("/"):
        uri = uri[:-1]
    key = uri.lower().partition("?")[0]
    if key.endswith("/"):
        key = key[:-1]
    return key[1:] if key.startswith("/") else key


def _escapedPath(path: bytes) -> bytes:
    """
    Go's C{URL.EscapedPath} for a path holding bytes that must be escaped: unescape, then escape again.
    A malformed escape (which Go's server refuses before routing) leaves the path as it is.
    """
    raw = bytearray()
    i, n = 0, len(path)
    while i < n:
        byte = path[i]
        if byte == 0x25:
            digits = path[i + 1 : i + 3]
            if len(digits) != 2 or not _HEX.issuperset(digits):
                return path
            raw.append(int(digits, 16))
            i += 3
        else:
            raw.append(byte)
            i += 1
    return b"".join(bytes((b,)) if b in _PATH_KEEP else b"%%%02X" % (b,) for b in raw)


PoolCallback = Callable[[Pool], None]


class RouteRegistry:
    """
    gorouter's route registry: route keys to L{Pool}s, changed by messages, pruned by age.

    Configuration (gorouter's keys, CF's deployed defaults): C{dropletStaleThreshold}
    (C{droplet_stale_threshold}, 120 s), C{defaultLoadBalancing} (C{balancing_algorithm}),
    C{emptyPoolResponseCode503} and C{emptyPoolTimeout} (an emptied pool is kept, answering 503, only
    when both are set, until a prune finds it older than the timeout), C{shardingMode} and
    C{isolationSegments} (C{routing_table_sharding_mode}: messages for other isolation segments are
    ignored), C{enableHTTP2} (without it a C{http2} endpoint is stored as C{http1}).
    C{ignoreOlderUpdates} is not gorouter's: it makes a changed registration whose
    C{endpoint_updated_at_ns} is older than the stored one's be ignored (no change, no heartbeat).

    C{onPoolChanged(pool)} is called after a pool is created or its endpoints or balancing algorithm
    change (its C{version} has grown); C{onPoolRemoved(pool)} after a pool and its key are gone.  They
    run once per pool per operation, after the whole operation; an exception they raise is logged.

    Pruning states: running; suspended (L{suspendPruning}: prune cycles do nothing, and remember that
    they were skipped); after L{resumePruning}, the first prune cycle that follows skipped ones first
    sets every endpoint's heartbeat to its C{now}, as gorouter does after a NATS outage.
    """

    log = Logger()

    def __init__(
        self,
        dropletStaleThreshold: float = 120.0,
        defaultLoadBalancing: str = ROUND_ROBIN,
        emptyPoolResponseCode503: bool = True,
        emptyPoolTimeout: float = 0.0,
        shardingMode: str = "all",
        isolationSegments: Iterable[str] = (),
        enableHTTP2: bool = True,
        ignoreOlderUpdates: bool = False,
        onPoolChanged: PoolCallback | None = None,
        onPoolRemoved: PoolCallback | None = None,
    ) -> None:
        if defaultLoadBalancing not in LOAD_BALANCING_ALGORITHMS:
            raise ValueError(f"unknown balancing algorithm {defaultLoadBalancing!r}")
        if shardingMode not in SHARDING_MODES:
            raise ValueError(f"unknown sharding mode {shardingMode!r}")
        if dropletStaleThreshold <= 0:
            raise ValueError("dropletStaleThreshold must be positive")
        self.dropletStaleThreshold = float(dropletStaleThreshold)
        self.defaultLoadBalancing = defaultLoadBalancing
        self.emptyPoolResponseCode503 = emptyPoolResponseCode503
        self.emptyPoolTimeout = emptyPoolTimeout
        self.shardingMode = shardingMode
        self.isolationSegments = frozenset(isolationSegments)
        self.enableHTTP2 = enableHTTP2
        self.ignoreOlderUpdates = ignoreOlderUpdates
        self.onPoolChanged = onPoolChanged
        self.onPoolRemoved = onPoolRemoved
        #: When the last register message was applied (gorouter's C{ms_since_last_registry_update}).
        self.lastUpdate: float | None = None
        self._exact: dict[bytes, _Node] = {}
        self._wild: dict[bytes, _Node] = {}  # "*.example.com" is stored under ".example.com"
        self._pools: dict[str, Pool] = {}
        self._addresses: dict[str, int] = {}  # endpoint address -> number of pools holding it
        self._version = 0
        self._suspended = False
        self._skippedPrune = False

    # -- reading

    @property
    def routeCount(self) -> int:
        """
        The number of route keys (C{/varz} C{urls}), empty kept pools included.
        """
        return len(self._pools)

    @property
    def endpointCount(self) -> int:
        """
        The number of distinct endpoint addresses over all pools (C{/varz} C{droplets}).
        """
        return len(self._addresses)

    @property
    def pruningSuspended(self) -> bool:
        """
        Whether L{suspendPruning} is in force.
        """
        return self._suspended

    def msSinceLastUpdate(self, now: float) -> int:
        """
        Milliseconds since the last register message, -1 if none yet.
        """
        return -1 if self.lastUpdate is None else int((now - self.lastUpdate) * 1000)

    def pools(self) -> list[Pool]:
        """
        Every pool, in no particular order.
        """
        return list(self._pools.values())

    def pool(self, uri: str) -> Pool | None:
        """
        The pool registered under exactly this uri (normalised to its route key), or L{None}.
        """
        return self._pools.get(routeKey(uri))

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """
        gorouter's C{/routes} body as JSON-ready data: route key -> endpoints, keys sorted as Go's
        encoder sorts them.  Encode with L{meshproxy.routing.registrymsg.encodeJSON}.
        """
        pools = self._pools
        return {key: [e.toJSON() for e in pools[key].endpoints] for key in sorted(pools)}

    def lookup(self, host: bytes | str, path: bytes | str) -> Pool | None:
        """
        The pool for a request's Host (port and all) and path (origin form, query allowed), or L{None}.

        The pool may be empty when gorouter would keep an empty one (see the class).  An empty Host
        gives L{None} (gorouter answers L{EMPTY_HOST} before looking up; see L{resolve}).
        """
        hostBytes = host if isinstance(host, bytes) else _asBytes(host)
        pathBytes = path if isinstance(path, bytes) else _asBytes(path)
        colon = hostBytes.find(b":")
        if colon >= 0:
            hostBytes = hostBytes[:colon]
        if not hostBytes:
            return None
        query = pathBytes.find(b"?")
        if query >= 0:
            pathBytes = pathBytes[:query]
        if pathBytes.translate(None, _PATH_BYTES):
            pathBytes = _escapedPath(pathBytes)
        key = hostBytes + pathBytes
        key = key.lower() if key.isascii() else _lower(key)
        if key[-1:] == b"/":
            key = key[:-1]
            if key[-1:] == b"/":
                key = key[:-1]
        if key[:1] == b"/":
            key = key[1:]
        segments = key.split(b"/")
        first = segments[0]
        wild = self._wild
        if first[:2] == b"*.":
            node, dots = wild.get(first[1:]), 2
        else:
            node, dots = self._exact.get(first), 0
        if node is not None:
            if node.children is None:
                if node.pool is not None:
                    return node.pool
            else:
                pool = _match(node, segments, 1)
                if pool is not None:
                    return pool
        if not wild:
            return None
        # gorouter's NextWildcard: "*" + the key from each following dot, the path's dots included.
        for index, segment in enumerate(segments):
            dot = segment.find(b".", dots)
            while dot >= 0:
                node = wild.get(segment[dot:])
                if node is not None:
                    pool = _match(node, segments, index + 1)
                    if pool is not None:
                        return pool
                dot = segment.find(b".", dot + 1)
            dots = 0
        return None

    def resolve(
        self,
        host: bytes | None,
        path: bytes,
        peerHost: str | None = None,
        appInstance: bytes | None = None,
        processInstance: bytes | None = None,
    ) -> RouteMatch | RouterReply:
        """
        gorouter's lookup handler: where a request goes, or the reply it gets instead.

        C{host} is the Host header as sent, C{peerHost} the client's IP address (a Host equal to it is
        refused as L{EMPTY_HOST}), C{appInstance} and C{processInstance} the values of
        C{X-CF-APP-INSTANCE} and C{X-CF-PROCESS-INSTANCE} if present (an empty value counts as absent).
        The caller still checks the endpoints' connection limits (L{CONNECTION_LIMIT_REACHED}) and
        must not forward C{X-CF-APP-INSTANCE}.
        """
        if host is None or isEmptyHost(host, peerHost):
            return EMPTY_HOST.reply()
        app = process = None
        if appInstance:
            app = parseAppInstanceHeader(appInstance)
            if app is None:
                return INVALID_APP_INSTANCE_HEADER.reply()
        elif processInstance:
            process = parseProcessInstanceHeader(processInstance)
            if process is None:
                return INVALID_PROCESS_INSTANCE_HEADER.reply()
        pool = self.lookup(host, path)
        if pool is not None:
            if app is not None:
                guid, index = app
                chosen = [e for e in pool.endpoints if e.appId == guid and e.privateInstanceIndex == index][-1:]
                if chosen:
                    return RouteMatch(pool, tuple(chosen))
            elif process is not None:
                guid, index = process
                found = tuple(
                    e for e in pool.endpoints
                    if e.processId == guid and (not index or e.privateInstanceIndex == index)
                )
                if found:
                    return RouteMatch(pool, found)
            elif pool.endpoints:
                return RouteMatch(pool, pool.endpoints)
            elif self.emptyPoolResponseCode503:
                return NO_ENDPOINTS.reply(host=host)
        error, guid, index = UNKNOWN_ROUTE, "", ""
        if appInstance:
            guid, index = parseAppInstanceHeader(appInstance) or ("", "")
            error = UNKNOWN_APP_INSTANCE
        if processInstance:  # gorouter checks it second, so its message wins when both are sent
            guid, index = parseProcessInstanceHeader(processInstance) or ("", "")
            error = UNKNOWN_PROCESS_INSTANCE if index else UNKNOWN_PROCESS
        return error.reply(host=host, guid=guid, index=index)

    # -- changing

    def endpointFor(self, message: RegistryMessage) -> Endpoint:
        """
        The endpoint a message describes, with this registry's effective stale threshold and protocol.
        """
        # Go multiplies the seconds into an int64 of nanoseconds, wrapping around on overflow.
        nanoseconds = (message.staleThresholdInSeconds * 1_000_000_000) % _INT64
        if nanoseconds >= _INT64 // 2:
            nanoseconds -= _INT64
        threshold = nanoseconds / 1e9
        if nanoseconds == 0 or threshold > self.dropletStaleThreshold:
            threshold = self.dropletStaleThreshold
        protocol = message.protocol or "http1"
        if protocol == "http2" and not self.enableHTTP2:
            protocol = "http1"
        return Endpoint(
            address=message.address,
            host=message.host,
            port=message.tlsPort or message.port,
            tls=message.tls,
            appId=message.app,
            privateInstanceId=message.privateInstanceId,
            privateInstanceIndex=message.privateInstanceIndex,
            tags=message.tags,
            loadBalancing=message.loadBalancing,
            staleThreshold=threshold,
            protocol=protocol,
            availabilityZone=message.availabilityZone,
            serverCertDomainSAN=message.serverCertDomainSAN,
            routeServiceUrl=message.routeServiceUrl,
            isolationSegment=message.isolationSegment,
            updatedAtNs=message.endpointUpdatedAtNs,
        )

    def _inShard(self, isolationSegment: str) -> bool:
        if self.shardingMode == "all":
            return True
        if self.shardingMode == "shared-and-segments" and not isolationSegment:
            return True
        return isolationSegment in self.isolationSegments

    def register(self, message: RegistryMessage, now: float) -> tuple[str, ...]:
        """
        Apply a C{router.register} message: put its endpoint into the pool of each of its uris.

        Returns what happened for each uri: L{ADDED}, L{UPDATED} (replaced in place), L{REFRESHED}
        (a heartbeat), L{UNMODIFIED} (only with C{ignoreOlderUpdates}) or L{OUT_OF_SHARD}.
        """
        if not self._inShard(message.isolationSegment):
            return (OUT_OF_SHARD,) * len(message.uris)
        endpoint = self.endpointFor(message)
        algorithm = endpoint.loadBalancing
        changed: dict[int, Pool] = {}
        results = []
        for uri in message.uris:
            key = routeKey(uri)
            pool = self._pools.get(key)
            if pool is None:
                pool = self._newPool(key, uri, now)
                changed[id(pool)] = pool
            result = pool._put(endpoint, now, self.ignoreOlderUpdates)
            if result == ADDED:
                self._addresses[endpoint.address] = self._addresses.get(endpoint.address, 0) + 1
            if result in (ADDED, UPDATED):
                changed[id(pool)] = pool
            if algorithm and algorithm != pool.loadBalancing and result != UNMODIFIED:
                if algorithm in LOAD_BALANCING_ALGORITHMS:
                    pool.loadBalancing = algorithm
                    changed[id(pool)] = pool
                else:
                    self.log.warn(
                        "invalid endpoint load balancing algorithm {algorithm!r} for {uri}: keeping {kept}",
                        algorithm=algorithm, uri=key, kept=pool.loadBalancing,
                    )
            results.append(result)
        self.lastUpdate = now
        self._notify(changed.values(), ())
        return tuple(results)

    def unregister(self, message: RegistryMessage, now: float) -> tuple[str, ...]:
        """
        Apply a C{router.unregister} message: remove the endpoint with its address from the pool of
        each of its uris (no other field is compared).  A pool left empty goes with its key, unless
        empty pools are kept (see the class).  Returns L{UNREGISTERED}, L{NOT_UNREGISTERED} or
        L{OUT_OF_SHARD} for each uri.
        """
        if not self._inShard(message.isolationSegment):
            return (OUT_OF_SHARD,) * len(message.uris)
        address = message.address
        changed: dict[int, Pool] = {}
        removed: list[Pool] = []
        results = []
        for uri in message.uris:
            pool = self._pools.get(routeKey(uri))
            if pool is None:
                results.append(NOT_UNREGISTERED)
                continue
            if self._removeFrom(pool, (address,), now):
                changed[id(pool)] = pool
                results.append(UNREGISTERED)
            else:
                results.append(NOT_UNREGISTERED)
            if not pool.endpoints and self._mayDrop(pool, now):
                changed.pop(id(pool), None)
                self._drop(pool)
                removed.append(pool)
        self._notify(changed.values(), removed)
        return tuple(results)

    def removeFailedEndpoint(self, pool: Pool, endpoint: Endpoint, now: float) -> bool:
        """
        Take an endpoint out of one pool after a failure that gorouter prunes for (a TLS endpoint that
        failed to dial or to handshake: C{prune-failed-endpoint}); its next heartbeat brings it back.
        Like gorouter, the endpoint is found by address.  The pool stays, even empty, until the next
        prune.  Returns whether it was there.
        """
        if self._pools.get(pool.routeKey) is not pool or endpoint.address not in pool._byAddress:
            return False
        self._removeFrom(pool, (endpoint.address,), now)
        self._notify((pool,), ())
        return True

    def suspendPruning(self) -> None:
        """
        Stop pruning (NATS is unreachable, so heartbeats cannot arrive): prune cycles do nothing.
        """
        self._suspended = True

    def resumePruning(self) -> None:
        """
        Prune again.  If a prune cycle was skipped meanwhile, the next one first refreshes every
        endpoint's heartbeat, so nothing is pruned for the outage.
        """
        self._suspended = False

    def prune(self, now: float) -> list[PrunedRoute]:
        """
        One prune cycle (gorouter runs one every C{prune_stale_droplets_interval}, 30 s): remove every
        non-TLS endpoint whose last heartbeat is older than C{now} minus its threshold, and the pools
        left empty (or, when empty pools are kept, those empty for longer than C{emptyPoolTimeout}).
        """
        if self._suspended:
            self._skippedPrune = True
            return []
        if self._skippedPrune:
            self._skippedPrune = False
            for pool in self._pools.values():
                heartbeat = pool._heartbeat
                for address in heartbeat:
                    heartbeat[address] = now
        pruned: list[PrunedRoute] = []
        changed: list[Pool] = []
        removed: list[Pool] = []
        for pool in list(self._pools.values()):
            heartbeat = pool._heartbeat
            stale = [
                e for e in pool.endpoints if not e.tls and heartbeat[e.address] < now - e.staleThreshold
            ]
            if stale:
                self._removeFrom(pool, [e.address for e in stale], now)
                pruned.append(PrunedRoute(pool.routeKey, tuple(stale)))
            if not pool.endpoints and self._mayDrop(pool, now):
                self._drop(pool)
                removed.append(pool)
            elif stale:
                changed.append(pool)
        self._notify(changed, removed)
        return pruned

    # -- internals

    def _newPool(self, key: str, uri: str, now: float) -> Pool:
        # gorouter's splitHostAndContextPath, on the uri as registered (its case kept)
        trimmed = uri[:-1] if uri.endswith("/") else uri
        hostPart, _, contextPath = (trimmed[1:] if trimmed.startswith("/") else trimmed).partition("/")
        pool = Pool(key, hostPart, "/" + contextPath.partition("?")[0], self.defaultLoadBalancing, now)
        segments = key.encode("utf-8").split(b"/")
        first = segments[0]
        roots, rootKey = (self._wild, first[1:]) if first[:2] == b"*." else (self._exact, first)
        node = roots.get(rootKey)
        if node is None:
            node = roots[rootKey] = _Node(first, None)
        for segment in segments[1:]:
            if node.children is None:
                node.children = {}
            child = node.children.get(segment)
            if child is None:
                child = node.children[segment] = _Node(segment, node)
            node = child
        node.pool = pool
        pool._node = node
        self._pools[key] = pool
        return pool

    def _drop(self, pool: Pool) -> None:
        """
        Remove an (empty) pool and its key, and the trie nodes nothing needs any more.
        """
        del self._pools[pool.routeKey]
        node = pool._node
        pool._node = None
        if node is None:
            return
        node.pool = None
        while node.pool is None and not node.children:
            parent = node.parent
            if parent is None:
                first = node.segment
                if first[:2] == b"*.":
                    del self._wild[first[1:]]
                else:
                    del self._exact[first]
                return
            del parent.children[node.segment]  # type: ignore[union-attr]
            if not parent.children:
                parent.children = None
            node = parent

    def _mayDrop(self, pool: Pool, now: float) -> bool:
        if self.emptyPoolResponseCode503 and self.emptyPoolTimeout > 0:
            return now - pool.updatedAt > self.emptyPoolTimeout
        return True

    def _removeFrom(self, pool: Pool, addresses: Iterable[str], now: float) -> bool:
        removed = pool._remove(addresses, now)
        for endpoint in removed:
            count = self._addresses[endpoint.address] - 1
            if count:
                self._addresses[endpoint.address] = count
            else:
                del self._addresses[endpoint.address]
        return bool(removed)

    def _notify(self, changed: Iterable[Pool], removed: Iterable[Pool]) -> None:
        for pool in changed:
            self._version += 1
            pool.version = self._version
        for callback, pools in ((self.onPoolChanged, changed), (self.onPoolRemoved, removed)):
            if callback is None:
                continue
            for pool in pools:
                try:
                    callback(pool)
                except Exception:
                    self.log.failure("pool callback {callback!r} failed for {pool!r}", callback=callback, pool=pool)
