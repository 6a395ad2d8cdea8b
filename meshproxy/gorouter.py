"""
The router registry at run time: gorouter's NATS conversation, the route table it feeds, and the
routes the HTTP proxy gets from it.

L{RouterRegistryRuntime} subscribes to C{router.register}, C{router.unregister} and C{router.greet}
through L{meshproxy.nats.NATSClient}, publishes C{router.start} at every (re)connect, prunes stale
endpoints on a timer (suspended while NATS is unreachable), and keeps, for each route that receives
traffic, a L{meshproxy.cluster.cluster.Cluster} whose hosts are the route's endpoints, so registry
routes get the same pooling, balancing, outlier handling and retries as static ones.  Those clusters
count into their own L{StatsStore}: a hundred thousand routes must not become Prometheus series.
"""

from __future__ import annotations

import ipaddress
import os
import time
import uuid
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from meshproxy.cluster.cluster import Cluster
from meshproxy.cluster.pool import PoolSet
from meshproxy.config import ClusterConfig, HostConfig, OutlierDetectionConfig, RetryPolicyConfig
from meshproxy.config.registry import RouterRegistryConfig
from meshproxy.config.tlsmodel import TLSContextConfig
from meshproxy.nats import NATSClient, NATSMessage
from meshproxy.routing.registry import Pool, RouteMatch, RouteRegistry
from meshproxy.routing.registrymsg import (
    CONNECTION_LIMIT_REACHED,
    ENDPOINT_FAILURE,
    LEAST_CONNECTION,
    ROUTE_SERVICE_UNSUPPORTED,
    InvalidMessage,
    RouterReply,
    newRouterId,
    parseRegistryMessage,
    routerStartPayload,
    stickySessionId,
)
from meshproxy.routing.route import CLUSTER
from meshproxy.stats import StatsStore

VCAP_ID = b"__VCAP_ID__"
_DROP = frozenset([b"x-cf-app-instance", b"x-cf-process-instance", b"x-vcap-request-id"])


class RegistryDecision:
    """
    Where the registry sends one request: its route and cluster, a host it must or should go to
    first (an instance header, a sticky session), and the C{__VCAP_ID__} it asked for.
    """

    __slots__ = ("route", "cluster", "preferred", "only", "sticky", "maxConns", "connectRetries")

    def __init__(
        self, route: RegistryRoute, cluster: Cluster, preferred: Any, only: bool, sticky: bytes | None,
        maxConns: int = 0, connectRetries: int = 2,
    ):
        self.route = route
        self.cluster = cluster
        self.preferred = preferred
        self.only = only
        self.sticky = sticky
        #: gorouter's C{backends.max_conns} (0: none) and C{max_attempts - 1}.
        self.maxConns = maxConns
        self.connectRetries = connectRetries


class RegistryRoute:
    """
    What the HTTP proxy routes a request with when the registry answers it: one per route key, kept
    while the route exists (the proxy caches per route object).
    """

    kind = CLUSTER
    gorouter = True
    status = 0
    body = b""
    hostRewrite = None
    autoHostRewrite = False
    hashPolicy: tuple[Any, ...] = ()
    requestHeadersToAdd: tuple[Any, ...] = ()
    requestHeadersToRemove = _DROP
    responseHeadersToAdd: tuple[Any, ...] = ()
    responseHeadersToRemove: frozenset[bytes] = frozenset()

    def __init__(self, pool: Pool, clusterName: str, timeout: float, retryPolicy: RetryPolicyConfig) -> None:
        self.pool = pool
        self.clusterName = clusterName
        self.timeout = timeout
        self.retryPolicy = retryPolicy
        path = pool.contextPath or ""
        self.cookiePath = ("/" + path.lstrip("/")).encode("utf-8", "replace") if path else b"/"

    def clusterFor(self, headers: Any) -> str:
        return self.clusterName

    def rewriteTarget(self, target: bytes) -> bytes:
        return target  # gorouter passes the request target through verbatim

    def metadataFor(self, cluster: str) -> tuple[tuple[str, str], ...]:
        return ()

    def location(self, scheme: bytes, host: bytes, target: bytes) -> bytes:  # never a redirect
        raise AssertionError("a registry route does not redirect")


def endpointHost(endpoint: Any) -> HostConfig:
    """
    The cluster host for one registered endpoint; its gorouter identity rides in the metadata.
    """
    try:
        family = "ipv6" if ipaddress.ip_address(endpoint.host).version == 6 else "ipv4"
    except ValueError:
        family = "ipv4"  # a name: connectTCP resolves it
    instanceId = endpoint.privateInstanceId or endpoint.address
    return HostConfig(
        address=endpoint.address,
        host=endpoint.host,
        port=endpoint.port,
        family=family,
        hostname=endpoint.serverCertDomainSAN or None,
        tlsDisable=not endpoint.tls,
        metadata=(
            ("app_id", endpoint.appId or ""),
            ("instance_id", instanceId),
            ("instance_index", endpoint.privateInstanceIndex or ""),
            ("private_instance_id", endpoint.privateInstanceId or ""),
        ),
    )


class RouterRegistryRuntime(Service):
    """
    The registry's live half.  States: starting (until C{start_response_delay_interval} has passed:
    gorouter's C{/health} says 503 and registry listeners hold their backlog), running, stopped.
    """

    log = Logger()

    def __init__(
        self,
        config: RouterRegistryConfig,
        reactor: Any,
        stats: StatsStore,
        pools: PoolSet,
        nats: Any = None,
        routerId: str | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.pools = pools
        self.clusterStats = StatsStore()
        self.registry = RouteRegistry(
            dropletStaleThreshold=config.dropletStaleThreshold,
            defaultLoadBalancing=config.balancingAlgorithm,
            onPoolChanged=self._poolChanged,
            onPoolRemoved=self._poolRemoved,
        )
        self.nats = nats if nats is not None else NATSClient(
            reactor, list(config.nats.hosts), user=config.nats.user or None,
            password=config.nats.password or None, token=config.nats.token or None,
            pingInterval=config.nats.pingInterval,
        )
        self.nats.addConnectedCallback(self._connected)
        self.routerId = routerId or newRouterId(config.index, str(uuid.uuid4()))
        self.started = False
        self.startedAt = 0.0
        self._onStarted: list[Any] = []
        self._routes: dict[str, RegistryRoute] = {}
        self._clusters: dict[str, Cluster] = {}
        self._prune = LoopingCall(self.prune)
        self._prune.clock = reactor
        self._delay: Any = None
        self._stickyNames = tuple(name.encode("utf-8") for name in config.stickyCookieNames)
        self._retryPolicy = RetryPolicyConfig(
            retryOn=config.maxAttempts > 1, numRetries=max(config.maxAttempts - 1, 0),
            conditions=frozenset(["reset"]), backoffBase=0.0, backoffMax=0.0,
        )
        self.messages = stats.counter("router_registry_messages_total", "Route registry messages handled.")
        self.badMessages = stats.counter(
            "router_registry_bad_messages_total", "Route registry messages dropped as invalid."
        )
        self.pruned = stats.counter("router_registry_pruned_total", "Endpoints pruned for not re-registering.")
        stats.liveGauge("router_registry_routes", "Routes in the registry.", lambda: self.registry.routeCount)
        stats.liveGauge("router_registry_endpoints", "Endpoints in the registry.", lambda: self.registry.endpointCount)
        stats.liveGauge("router_registry_nats_connected", "1 while connected to NATS.", lambda: int(self.nats.connected))
        self.requests = 0
        self.badGateways = 0

    # -- lifecycle --------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.nats.subscribe("router.register", self._register)
        self.nats.subscribe("router.unregister", self._unregister)
        self.nats.subscribe("router.greet", self._greet)
        self.nats.start()
        self.startedAt = self.reactor.seconds()
        self._prune.start(self.config.pruneInterval, now=False)
        self._delay = self.reactor.callLater(self.config.startResponseDelay, self._startDelayOver)

    def whenStarted(self, callback: Any) -> None:
        """
        Call C{callback()} once the start delay is over (at once if it is).
        """
        if self.started:
            callback()
        else:
            self._onStarted.append(callback)

    def _startDelayOver(self) -> None:
        self._delay = None
        self.started = True
        self.log.info(
            "router registry: start delay over, {routes} routes from {endpoints} endpoints",
            routes=self.registry.routeCount, endpoints=self.registry.endpointCount,
        )
        callbacks, self._onStarted = self._onStarted, []
        for callback in callbacks:
            callback()

    def stopService(self) -> Any:
        super().stopService()
        if self._delay is not None and self._delay.active():
            self._delay.cancel()
        if self._prune.running:
            self._prune.stop()
        for cluster in self._clusters.values():
            cluster.stop()
            self.pools.remove(cluster.name)
        self._clusters.clear()
        return self.nats.stop()

    # -- NATS -------------------------------------------------------------------------------------

    def _startPayload(self) -> bytes:
        # gorouter: hosts = its own IP; the interval = start_response_delay_interval (at least 1 s:
        # route-emitter cannot take 0); the threshold = droplet_stale_threshold.
        return routerStartPayload(
            self.routerId, [self.config.localIP], max(self.config.startResponseDelay, 1.0),
            self.config.dropletStaleThreshold,
        )

    def _connected(self) -> None:
        self.nats.publish("router.start", self._startPayload())

    def _greet(self, message: NATSMessage) -> None:
        if message.reply:
            self.nats.publish(message.reply, self._startPayload())

    def _parsed(self, message: NATSMessage) -> Any:
        self.messages.value += 1
        parsed = parseRegistryMessage(message.payload)
        if isinstance(parsed, InvalidMessage):
            self.badMessages.value += 1
            self.log.warn("router registry: dropped {subject}: {reason}", subject=message.subject, reason=parsed.reason)
            return None
        return parsed

    def _register(self, message: NATSMessage) -> None:
        parsed = self._parsed(message)
        if parsed is not None:
            self.registry.register(parsed, self.reactor.seconds())

    def _unregister(self, message: NATSMessage) -> None:
        parsed = self._parsed(message)
        if parsed is not None:
            self.registry.unregister(parsed, self.reactor.seconds())

    def prune(self) -> None:
        """
        One prune cycle; while NATS is unreachable (and C{suspend_pruning_if_nats_unavailable}) pruning
        is suspended, and the first cycle after it returns counts every endpoint as freshly seen.
        """
        if self.config.suspendPruningIfNATSUnavailable:
            if not self.nats.connected:
                if not self.registry.pruningSuspended:
                    self.log.warn("router registry: NATS unreachable, pruning suspended")
                    self.registry.suspendPruning()
            elif self.registry.pruningSuspended:
                self.log.info("router registry: NATS back, pruning resumed")
                self.registry.resumePruning()
        for route in self.registry.prune(self.reactor.seconds()):
            self.pruned.value += len(route.endpoints)
            self.log.info(
                "router registry: pruned {count} stale endpoints of {route}",
                count=len(route.endpoints), route=route.routeKey,
            )

    # -- the route table's changes ----------------------------------------------------------------

    def _clusterConfig(self, pool: Pool) -> ClusterConfig:
        failMark = self.config.dropletStaleThreshold / 4  # gorouter skips a failed endpoint this long
        tls = any(endpoint.tls for endpoint in pool.endpoints)
        return ClusterConfig(
            name="registry:" + pool.routeKey,
            hosts=tuple(endpointHost(endpoint) for endpoint in pool.endpoints),
            lbType="LB_LEAST_CONNECTION" if pool.loadBalancing == LEAST_CONNECTION else "LB_ROUNDROBIN",
            connectTimeout=self.config.endpointDialTimeout,
            outlierDetection=OutlierDetectionConfig(
                consecutiveFailures=1, baseEjectionTime=failMark, maxEjectionTime=failMark, maxEjectionPercent=100,
            ),
            healthyPanicThreshold=0,
            tls=TLSContextConfig(status=True) if tls else None,
        )

    def _poolChanged(self, pool: Pool) -> None:
        cluster = self._clusters.get(pool.routeKey)
        if cluster is None:
            return
        config = self._clusterConfig(pool)
        if config.lbType != cluster.config.lbType:
            self._poolRemoved(pool)  # rebuilt with the new balancer on the next request
            return
        cluster.setHosts(config.hosts)

    def _poolRemoved(self, pool: Pool) -> None:
        self._routes.pop(pool.routeKey, None)
        cluster = self._clusters.pop(pool.routeKey, None)
        if cluster is not None:
            cluster.stop()
            self.pools.remove(cluster.name)

    def cluster(self, name: str) -> Cluster:
        """
        The runtime cluster of a registry route (by the name its L{RegistryRoute} gives).
        """
        return self._clusters[name[len("registry:"):]]

    # -- requests ---------------------------------------------------------------------------------

    def resolve(
        self, host: bytes | None, target: bytes, headers: Any, clientIP: str | None
    ) -> RouterReply | RegistryDecision:
        """
        Where a request no static route took goes: a L{RouterReply} gorouter would answer with, or a
        L{RegistryDecision}.
        """
        self.requests += 1
        appInstance = processInstance = None
        cookies = []
        for name, value in headers:
            lower = name.lower()
            if lower == b"cookie":
                cookies.append(value)
            elif lower == b"x-cf-app-instance":
                appInstance = value
            elif lower == b"x-cf-process-instance":
                processInstance = value
        path = target.split(b"?", 1)[0]
        result = self.registry.resolve(host, path, clientIP, appInstance, processInstance)
        if isinstance(result, RouterReply):
            return result
        assert isinstance(result, RouteMatch)
        pool = result.pool
        if pool.routeServiceUrl:
            return ROUTE_SERVICE_UNSUPPORTED.reply()  # gorouter with route services disabled
        route = self._routes.get(pool.routeKey)
        cluster = self._clusters.get(pool.routeKey)
        if route is None or cluster is None:
            cluster = self._clusters[pool.routeKey] = Cluster(
                self._clusterConfig(pool), self.reactor, self.clusterStats
            )
            route = self._routes[pool.routeKey] = RegistryRoute(
                pool, cluster.name, self.config.endpointTimeout, self._retryPolicy
            )
        if self.config.maxConns and cluster.hosts and all(
            h.activeRequests >= self.config.maxConns for h in cluster.hosts
        ):
            return CONNECTION_LIMIT_REACHED.reply(host=(host or b"").decode("latin-1"))
        preferred = None
        only = False
        sticky = None
        if len(result.endpoints) != len(pool.endpoints):
            # X-CF-APP-INSTANCE / X-CF-PROCESS-INSTANCE: that instance only.
            addresses = {endpoint.address for endpoint in result.endpoints}
            preferred = next((h for h in cluster.hosts if h.address in addresses), None)
            only = True
        elif cookies:
            sticky = stickySessionId(cookies, self._stickyNames)
            if sticky is not None:
                endpoint = pool.findById(sticky)
                if endpoint is not None:
                    preferred = next((h for h in cluster.hosts if h.address == endpoint.address and h.healthy), None)
                if preferred is not None and self.config.maxConns and preferred.activeRequests >= self.config.maxConns:
                    preferred = None  # gorouter: an overloaded sticky instance is skipped
        return RegistryDecision(
            route, cluster, preferred, only, sticky, self.config.maxConns, max(self.config.maxAttempts - 1, 0)
        )

    def endpointFields(self, host: Any) -> list[tuple[bytes, bytes]]:
        """
        The per-endpoint request headers gorouter adds.
        """
        metadata = host.metadata
        return [
            (b"X-CF-ApplicationID", metadata.get("app_id", "").encode("utf-8", "replace")),
            (b"X-CF-InstanceIndex", metadata.get("instance_index", "").encode("utf-8", "replace")),
            (b"X-CF-InstanceID", metadata.get("instance_id", "").encode("utf-8", "replace")),
        ]

    def requestFields(self, headers: Any) -> list[tuple[bytes, bytes]]:
        """
        The per-request headers gorouter adds: a fresh C{X-Vcap-Request-Id} (first), and
        C{X-Request-Start} (epoch milliseconds) unless the request has one.
        """
        fields = [(b"X-Vcap-Request-Id", str(uuid.UUID(bytes=os.urandom(16), version=4)).encode("ascii"))]
        if not any(name.lower() == b"x-request-start" for name, _ in headers):
            fields.append((b"X-Request-Start", b"%d" % int(time.time() * 1000)))
        return fields

    def responseFields(
        self, decision: RegistryDecision, host: Any, responseFields: Any, requestId: bytes
    ) -> list[tuple[bytes, bytes]]:
        """
        What gorouter adds to a response: the sticky cookie, and the request id when the backend did
        not send one.
        """
        extra = []
        cookie = self.stickyCookie(decision.route, host, responseFields, decision.sticky)
        if cookie is not None:
            extra.append((b"Set-Cookie", cookie))
        if requestId and not any(name.lower() == b"x-vcap-request-id" for name, _ in responseFields):
            extra.append((b"X-Vcap-Request-Id", requestId))
        return extra

    def stickyCookie(
        self, route: RegistryRoute, host: Any, responseFields: Any, requestedId: bytes | None
    ) -> bytes | None:
        """
        The C{Set-Cookie: __VCAP_ID__} gorouter adds to a response, or L{None}: when the response sets
        a session cookie (attributes copied from it), or when a sticky request landed elsewhere.
        """
        instanceId = host.metadata.get("private_instance_id", "")
        if not instanceId:
            return None
        session = None
        for name, value in responseFields:
            if name.lower() != b"set-cookie":
                continue
            cookieName = value.split(b"=", 1)[0].strip()
            if cookieName == VCAP_ID:
                return None
            if cookieName in self._stickyNames and session is None:
                session = value
        if session is None and (requestedId is None or requestedId == instanceId.encode()):
            return None
        cookie = VCAP_ID + b"=" + instanceId.encode("utf-8", "replace") + b"; Path=" + route.cookiePath
        if session is not None:
            for attribute in session.split(b";")[1:]:
                key = attribute.split(b"=", 1)[0].strip().lower()
                if key in (b"expires", b"samesite", b"partitioned"):
                    cookie += b"; " + attribute.strip()
                elif key == b"max-age" and attribute.split(b"=", 1)[-1].strip().startswith((b"-", b"0")):
                    cookie += b"; Max-Age=0"
            cookie += b"; HttpOnly"
            if any(a.strip().lower() == b"secure" for a in session.split(b";")[1:]):
                cookie += b"; Secure"
            return cookie
        return cookie + b"; HttpOnly"

    def limitReply(self, head: Any) -> RouterReply:
        """
        gorouter's 503 when every endpoint of the route is at C{max_conns}.
        """
        return CONNECTION_LIMIT_REACHED.reply(host=(head.host or b"").decode("latin-1"))

    def failureReply(self, reason: str) -> RouterReply:
        """
        gorouter's answer when the endpoints failed a request (C{endpoint_failure}).
        """
        self.badGateways += 1
        return ENDPOINT_FAILURE.reply(reason)  # always 502 in gorouter, timeouts included

    # -- gorouter's status endpoints --------------------------------------------------------------

    def routerHealthy(self) -> bool:
        return self.started and bool(self.running) and self.healthy()

    def healthy(self) -> bool:
        """
        Whether the rest of meshproxy is serving (the service replaces this: not draining, not
        taken out by C{/healthcheck/fail}).
        """
        return True

    def routesSnapshot(self) -> dict[str, Any]:
        return self.registry.snapshot()

    def varz(self) -> dict[str, Any]:
        now = self.reactor.seconds()
        uptime = int(now - self.startedAt)
        return {
            "type": "Router",
            "index": self.config.index,
            "uuid": self.routerId,
            "num_cores": os.cpu_count() or 1,
            "uptime": f"{uptime // 86400}d:{uptime // 3600 % 24}h:{uptime // 60 % 60}m:{uptime % 60}s",
            "urls": self.registry.routeCount,
            "droplets": self.registry.endpointCount,
            "requests": self.requests,
            "bad_gateways": self.badGateways,
            "ms_since_last_registry_update": self.registry.msSinceLastUpdate(now),
            "nats_connected": self.nats.connected,
        }
