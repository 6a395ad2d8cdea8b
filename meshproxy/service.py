"""
Config -> the running service tree.

The root L{MeshProxyService} owns one L{ClusterSet}, the admin endpoint and one
L{ListenerService} per listener.  Services start in order and stop in reverse, so the admin
endpoint is the first up and the last down: it reports readiness and the drain while listeners
stop.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import attrs

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from meshproxy import fastpoll
from meshproxy.accesslog import AccessLogs
from meshproxy.cluster.cluster import ClusterSet, checkClusterTLS
from meshproxy.cluster.pool import PoolSet
from meshproxy.config import Config, ConfigError, HTTPProxyConfig, Problem, TCPProxyConfig, parseConfig
from meshproxy.http import HTTPLimits
from meshproxy.interfaces import INetworkFilterFactory
from meshproxy.listeners import FilterChainRuntime, ListenerFactory, ListenerService
from meshproxy.proxy.httpfilter import HTTPProxyFilter
from meshproxy.proxy.httpsettings import HTTPSettings
from meshproxy.proxy.tcp import TCPProxyFilter
from meshproxy.proxy.upstream import dialerFor
from meshproxy.routing.table import RouteTable, RouteTables, routerProblems
from meshproxy.admin.gorouter import buildHealthSite, buildRoutesSite
from meshproxy.config.registry import RouterRegistryConfig
from meshproxy.gorouter import RouterRegistryRuntime
from meshproxy.stats import StatsStore
from meshproxy.tls import checkListenerTLS, loadListenerTLS

# MOSN's stage numbers, as /api/v1/states reports them.
STATE_RUNNING = 6
STATE_GRACEFUL_STOPPING = 8


def loadConfigFile(path: str) -> Config:
    """
    Read and parse the config file at C{path}; an unreadable file is a L{ConfigError} too.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError((Problem("$", f"cannot read config file {path!r}: {e.strerror}"),)) from e
    config = parseConfig(data)
    # Certificates and keys are read here too, so check-config and start-up report a broken file
    # by its JSON path; the service reads them again when it builds its contexts.
    problems = runtimeProblems(config) + checkListenerTLS(config) + checkClusterTLS(config)
    if problems:
        raise ConfigError(problems)
    return config


def runtimeProblems(config: Config) -> list[Problem]:
    """
    What the runtime refuses in a config the parser accepted (route tables that cannot be
    compiled), with JSON paths.
    """
    return [
        Problem(f"servers[{i}].routers[{j}].{path}", message)
        for i, server in enumerate(config.servers)
        for j, router in enumerate(server.routers)
        for path, message in routerProblems(router)
    ]


def httpSettings(config: HTTPProxyConfig) -> HTTPSettings:
    """
    The connection manager's settings for one C{proxy} filter (MOSN's C{extend_config.Http1}).
    """
    extend = config.extendConfig
    return HTTPSettings(
        limits=HTTPLimits(
            maxHeaderBytes=extend.maxHeaderSize, maxHeaders=config.maxHeaders, maxURIBytes=config.maxURISize
        ),
        headerTimeout=config.requestHeadersTimeout,
        idleTimeout=config.idleTimeout,
        bodyTimeout=config.streamIdleTimeout,
        maxRequestsPerConnection=config.maxRequestsPerConnection,
        maxRequestBodyBytes=extend.maxRequestBodySize,
        tunnelIdleTimeout=config.tunnelIdleTimeout,
    )


@attrs.frozen
class BuiltConfig:
    """
    The runtime objects of one configuration, before any listener binds.
    """

    config: Config
    clusters: ClusterSet
    routeTables: dict[str, RouteTable]
    chainTLS: dict[tuple[str, str], Any]
    listeners: list[tuple[Any, list[FilterChainRuntime]]]


def _follow(old: Any, new: list[FilterChainRuntime]) -> None:
    """
    Point the HTTP filters of a kept listener's old chains at the new chains' routes, so that open
    keep-alive connections route their next request with the new configuration.
    """
    newer = {(chain.name, i): f for chain in new for i, f in enumerate(chain.filters)}
    for chain in old:
        for i, f in enumerate(chain.filters):
            replacement = newer.get((chain.name, i))
            if isinstance(f, HTTPProxyFilter) and isinstance(replacement, HTTPProxyFilter):
                f.follow(replacement)


def _usesRegistry(listener: Any) -> bool:
    return any(
        isinstance(f, HTTPProxyConfig) and f.useRouterRegistry for chain in listener.filterChains for f in chain.filters
    )


class FilterBuilder:
    """
    Builds the runtime network filters of one configuration, sharing clusters and pools.
    """

    def __init__(
        self, clusters: ClusterSet, pools: PoolSet, reactor: Any, stats: StatsStore, registry: Any = None
    ) -> None:
        self.clusters = clusters
        self.pools = pools
        self.reactor = reactor
        self.stats = stats
        self.registry = registry
        self.tables: dict[tuple[int, str], RouteTable] = {}

    def build(self, config: object, serverIndex: int, server: Any, listenerName: str) -> INetworkFilterFactory:
        """
        The runtime network filter for one parsed filter config.
        """
        if isinstance(config, TCPProxyConfig):
            return TCPProxyFilter(config, self.clusters, self.reactor, self.stats)
        if isinstance(config, HTTPProxyConfig):
            table = self.tables[(serverIndex, config.routerConfigName)]
            return HTTPProxyFilter(
                config, table, self.clusters, self.pools, self.reactor, self.stats, listenerName, httpSettings(config),
                registry=self.registry if config.useRouterRegistry else None,
            )
        # The config layer rejects filters whose runtime does not exist yet; reaching here is a bug.
        raise TypeError(f"no runtime for network filter config {config!r}")


class MeshProxyService(MultiService):
    """
    The whole proxy for one configuration.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        stats: StatsStore | None = None,
        configPath: str = "",
        installSignalHandlers: bool = False,
        fastPoll: bool = False,
    ) -> None:
        super().__init__()
        self._installSignalHandlers = installSignalHandlers
        self._fastPoll = fastPoll
        # Imported here: the admin package imports this module's states.
        from meshproxy.admin.resources import buildAdminSite

        self.config = config
        self.configPath = configPath
        self.reactor = reactor
        self.stats = stats if stats is not None else StatsStore()
        self.state = "starting"
        #: Set by the admin's C{POST /healthcheck/fail} (Envoy's): report not ready, keep serving.
        self.healthcheckFailed = False
        self.pools = PoolSet(reactor, dialerFor(HTTPLimits()))
        self.accessLogs = AccessLogs(reactor)
        self.listenerServices: list[ListenerService] = []
        admin = StreamServerEndpointService(
            serverFromString(reactor, config.admin.endpoint), buildAdminSite(self)
        )
        admin._raiseSynchronously = True
        admin.setName("admin")
        admin.setServiceParent(self)
        self.adminService = admin
        self.registry: RouterRegistryRuntime | None = None
        if config.routerRegistry is not None:
            self.registry = self._startRegistry(config.routerRegistry)
        #: The outcome of the last reload, for C{/api/v1/config_dump}.
        self.lastReload: dict[str, Any] = {"status": "none"}
        self.reloads = self.stats.counter("config_reload_total", "Configuration reloads applied.")
        self.reloadFailures = self.stats.counter(
            "config_reload_failure_total", "Configuration reloads refused (the running one was kept)."
        )
        built = self._build(config, None)
        self._adopt(built)
        for listenerConfig, chains in built.listeners:
            self._addListener(listenerConfig, chains)

    def _build(self, config: Config, previous: ClusterSet | None) -> BuiltConfig:
        """
        Every runtime object of C{config} except listeners' sockets: clusters (those whose spec did
        not change are the running ones), route tables, TLS contexts, and each listener's chains.

        @raise ConfigError: a certificate or key cannot be loaded.
        """
        clusters = ClusterSet.fromConfig(config, self.reactor, self.stats, previous=previous)
        builder = FilterBuilder(clusters, self.pools, self.reactor, self.stats, self.registry)
        # Every router, by name (prefixed with its server when names repeat across servers).
        routeTables: dict[str, RouteTable] = {}
        for i, server in enumerate(config.servers):
            for name, table in RouteTables.fromServer(server).items():
                key = name if len(config.servers) == 1 else f"{server.name}/{name}"
                routeTables[key] = builder.tables[(i, name)] = table
        # Certificates are read here: a broken file is a ConfigError naming it and its JSON path.
        chainTLS = loadListenerTLS(config, self.reactor, self.stats)
        listeners = []
        for serverIndex, server in enumerate(config.servers):
            for listenerConfig in server.listeners:
                chains = [
                    FilterChainRuntime(
                        chain,
                        [builder.build(f, serverIndex, server, listenerConfig.name) for f in chain.filters],
                        chainTLS.get((listenerConfig.name, chain.name)),
                    )
                    for chain in listenerConfig.filterChains
                ]
                listeners.append((listenerConfig, chains))
        return BuiltConfig(config, clusters, routeTables, chainTLS, listeners)

    def _adopt(self, built: BuiltConfig) -> None:
        self.config = built.config
        self.clusters = built.clusters
        self.routeTables = built.routeTables
        self.chainTLS = built.chainTLS

    def _addListener(self, listenerConfig: Any, chains: list[FilterChainRuntime]) -> ListenerService:
        factory = ListenerFactory(
            listenerConfig, chains, self.reactor, self.stats, self.accessLogs.forListener(listenerConfig.accessLogs)
        )
        service = ListenerService(listenerConfig, serverFromString(self.reactor, listenerConfig.endpoint), factory)
        if self.registry is not None and _usesRegistry(listenerConfig):
            # gorouter opens its proxy port only after start_response_delay_interval.
            service.holdAccepting()
            self.registry.whenStarted(service.releaseAccepting)
        service.setServiceParent(self)
        self.listenerServices.append(service)
        return service

    def _startRegistry(self, config: RouterRegistryConfig) -> RouterRegistryRuntime:
        """
        The router registry and gorouter's two status listeners.
        """
        registry = RouterRegistryRuntime(config, self.reactor, self.stats, self.pools)
        registry.healthy = lambda: self.state == "running" and not self.healthcheckFailed  # type: ignore[method-assign]
        registry.setName("router-registry")
        registry.setServiceParent(self)
        for name, endpoint, site in (
            ("gorouter-status", config.status.endpoint, buildHealthSite(registry)),
            ("gorouter-routes", config.status.routesEndpoint,
             buildRoutesSite(registry, config.status.user, config.status.password)),
        ):
            status = StreamServerEndpointService(serverFromString(self.reactor, endpoint), site)
            status._raiseSynchronously = True
            status.setName(name)
            status.setServiceParent(self)
        return registry

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            if self.adminService._waitingForPort is None:
                raise type(e)(f"admin endpoint {self.config.admin.endpoint!r} could not listen: {e}") from e
            raise

    def startService(self) -> None:
        self.accessLogs.start()
        self.clusters.start()
        super().startService()
        self.state = "running"
        if self._fastPoll and fastpoll.install(self.reactor):
            self.log.debug("epoll events dispatched by meshproxy.fastpoll (no legacy log context, TCP reads "
                           "in the loop, one send per socket per turn)")
        if self._installSignalHandlers:
            # twistd's own handlers make the process exit *by* the signal once the reactor stops;
            # a drained, orderly stop is a success, so exit 0 instead.  The reactor installs its
            # handlers when it starts running, so ours go in after that.
            self.reactor.callWhenRunning(self._takeSignals)
        self.log.info(
            "meshproxy running: {listeners} listeners, {clusters} clusters, admin on {admin}, pid {pid}",
            listeners=len(self.listenerServices), clusters=len(self.clusters),
            admin=self.config.admin.endpoint, pid=os.getpid(),
        )

    def _takeSignals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stopSignal)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self.reload))
        signal.signal(signal.SIGUSR1, lambda signum, frame: self.reactor.callFromThread(self.reopenLogs))

    def reload(self) -> bool:
        """
        Re-read the config file and apply it: validate, build, then swap.  Listeners whose endpoint
        did not change stay bound and take new connections with the new chains; new ones bind;
        removed ones stop accepting and drain.  Connections and requests in flight finish on the
        objects they started with.  Clusters whose spec did not change keep their pools and health.
        A bad file (or one that changes what needs a restart) changes nothing; it is logged, counted
        and shown by C{/api/v1/config_dump}.
        """
        now = self.reactor.seconds()
        try:
            config = loadConfigFile(self.configPath)
            problems = []
            if config.admin != self.config.admin:
                problems.append(Problem("admin", "changing the admin endpoint needs a restart"))
            if config.routerRegistry != self.config.routerRegistry:
                problems.append(Problem("router_registry", "changing the router registry needs a restart"))
            if problems:
                raise ConfigError(tuple(problems))
            built = self._build(config, self.clusters)
        except ConfigError as e:
            self.reloadFailures.inc()
            self.lastReload = {"status": "failed", "at": now, "error": str(e).splitlines()}
            self.log.error(
                "reload: {path} refused; the running configuration is unchanged:\n{problems}",
                path=self.configPath, problems=str(e),
            )
            return False
        old = self.clusters
        self._adopt(built)
        for cluster in built.clusters:
            if cluster not in old:
                cluster.start()
        for cluster in old:
            if cluster not in built.clusters:
                cluster.stop()
                self.pools.remove(cluster.name)
        running = {service.config.name: service for service in self.listenerServices}
        kept = set()
        for listenerConfig, chains in built.listeners:
            service = running.get(listenerConfig.name)
            if service is not None and service.config.endpoint == listenerConfig.endpoint:
                service.config = listenerConfig
                factory = service.listenerFactory
                _follow(factory.chains, chains)
                factory.config = listenerConfig
                factory.chains = tuple(chains)
                factory.accessLog = self.accessLogs.forListener(listenerConfig.accessLogs)
                kept.add(listenerConfig.name)
            else:
                if service is not None:
                    self._removeListener(service)
                self._addListener(listenerConfig, chains)
                kept.add(listenerConfig.name)
        for name, service in running.items():
            if name not in kept:
                self._removeListener(service)
        self.accessLogs.start()
        self.reloads.inc()
        self.lastReload = {"status": "applied", "at": now}
        self.log.info(
            "reload: applied {path}: {listeners} listeners, {clusters} clusters",
            path=self.configPath, listeners=len(self.listenerServices), clusters=len(self.clusters),
        )
        return True

    def _removeListener(self, service: ListenerService) -> None:
        self.listenerServices.remove(service)
        # Detach it without MultiService.removeService, which would stop it a second time.
        self.services.remove(service)
        if service.name is not None:
            self.namedServices.pop(service.name, None)
        service.parent = None
        drained = service.stopService()  # stop accepting, drain for the listener's timeout
        if drained is not None:
            drained.addErrback(lambda f: self.log.failure("draining a removed listener", f))

    def reopenLogs(self) -> None:
        """
        SIGUSR1: reopen the access-log files (after logrotate moved them).
        """
        self.accessLogs.reopen()
        self.log.info("reopened access log files")

    def _stopSignal(self, signum: int, frame: object) -> None:
        self.log.info("received {signal}: stopping", signal=signal.Signals(signum).name)
        self.reactor.callFromThread(self.reactor.stop)

    def stopService(self) -> Any:
        """
        Stop accepting and drain every listener; only then stop the admin endpoint, so that
        readiness (503) and stats stay visible for the whole drain.
        """
        self.state = "draining"
        self.log.info("meshproxy stopping: no new connections, draining open ones")
        Service.stopService(self)
        drained = defer.DeferredList(
            [defer.maybeDeferred(s.stopService) for s in reversed(self.listenerServices)]
        )
        drained.addCallback(lambda _: self.pools.stop())
        drained.addCallback(lambda _: self.clusters.stop())
        drained.addCallback(lambda _: self.accessLogs.stop())
        drained.addCallback(lambda _: self.adminService.stopService())
        return drained

    def readiness(self) -> tuple[bool, list[str]]:
        """
        Whether the proxy should receive traffic, and if not, why.
        """
        reasons = [f"listener {s.config.name!r} is not bound" for s in self.listenerServices if not s.bound]
        if self.healthcheckFailed:
            reasons.insert(0, "taken out of rotation by POST /healthcheck/fail")
        if self.state != "running":
            reasons.insert(0, f"meshproxy is {self.state}")
        return (not reasons, reasons)

    def mosnState(self) -> int:
        """
        MOSN's stage number for C{/api/v1/states}.
        """
        return STATE_RUNNING if self.state == "running" else STATE_GRACEFUL_STOPPING
