"""
Runtime clusters: hosts with live counters and health, the candidate lists the load balancer picks
from, circuit breakers, and the way to dial a host.

A host is I{healthy} unless its active health check failed or the outlier detector ejected it.
The cluster keeps the list of candidates (the healthy hosts, or every host in panic mode) and
rebuilds it only when health or membership changes, so a pick costs one balancer call.

Connections are opened with C{reactor.connectTCP}/C{connectUNIX}/C{connectSSL} directly rather than
through client endpoints: endpoints wrap every protocol in a forwarding wrapper, which would cost a
Python call per received chunk on the data path.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Collection, Iterator, Sequence

from twisted.internet.interfaces import IConnector, IHostnameResolver, IReactorTCP, IReactorUNIX
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from meshproxy.cluster.dns import DNSRefresher
from meshproxy.cluster.health import ActiveHealthChecker
from meshproxy.cluster.lb import balancerFor
from meshproxy.cluster.outlier import OutlierDetector
from meshproxy.config import ClusterConfig, Config, ConfigError, HostConfig, Problem
from meshproxy.interfaces import ICluster, IUpstreamHost
from meshproxy.stats import StatsStore
from meshproxy.tlsclient import ClientTLS
from meshproxy.tlscontext import TLSLoadError

Labels = tuple[tuple[str, str], ...]
_FACTORY_TAKES_CLOCK = "clock" in TLSMemoryBIOFactory.__init__.__code__.co_varnames


@implementer(IUpstreamHost)
class UpstreamHost:
    """
    One host and its live state.

    @ivar activeFailed: its active health check says it is down.
    @ivar ejected: the outlier detector has taken it out for a while.
    @ivar healthy: neither of those (kept as a plain attribute: the hot path reads it).
    """

    def __init__(self, config: HostConfig, clusterName: str, stats: StatsStore) -> None:
        self.config = config
        self.address = config.address
        self.weight = config.weight
        self.family = config.family
        self.host = config.host
        self.port = config.port
        self.metadata = dict(config.metadata)
        self.healthy = True
        self.removed = False
        self.activeFailed = False
        self.ejected = False
        self.healthReason = ""
        self.activeReason = ""
        self.ejectionReason = ""
        self.activeConnections = 0
        self.activeRequests = 0
        labels = {"cluster": clusterName, "host": config.address}
        self.connectFailures = stats.counter(
            "upstream_host_cx_connect_fail_total", "Failed connection attempts to one upstream host.", **labels
        )
        self.connectionsTotal = stats.counter(
            "upstream_host_cx_total", "Connections opened to one upstream host.", **labels
        )
        self.requestsTotal = stats.counter(
            "upstream_host_rq_total", "Requests and sessions sent to one upstream host.", **labels
        )
        stats.liveGauge(
            "upstream_host_healthy", "1 while the host is healthy (not failing checks, not ejected).",
            lambda: int(self.healthy), **labels,
        )
        stats.liveGauge(
            "upstream_host_ejected", "1 while the outlier detector has ejected the host.",
            lambda: int(self.ejected), **labels,
        )
        stats.liveGauge(
            "upstream_host_rq_active", "Requests and sessions in flight on one host.",
            lambda: self.activeRequests, **labels,
        )
        stats.liveGauge(
            "upstream_host_cx_active", "Open connections to one host.", lambda: self.activeConnections, **labels
        )

    def __repr__(self) -> str:
        return f"<UpstreamHost {self.address}>"


@implementer(ICluster)
class Cluster:
    """
    A named set of L{UpstreamHost}s with a load balancer, health, limits and a connect timeout.

    Health comes from an active checker and an outlier detector when the cluster has them
    (L{attachHealth}); each reports transitions here.
    """

    log = Logger()

    def __init__(
        self,
        config: ClusterConfig,
        reactor: IReactorTCP,
        stats: StatsStore,
        rng: random.Random | None = None,
        resolver: IHostnameResolver | None = None,
    ) -> None:
        """
        @raise TLSLoadError: the cluster's C{tls_context} names a file that cannot be loaded.
        """
        self.config = config
        self.name = config.name
        self.connectTimeout = config.connectTimeout
        self.bufferLimit = config.connBufferLimitBytes
        self._reactor = reactor
        self._stats = self.stats = stats
        self._rng = rng
        self._clientTLS: ClientTLS | None = None
        self._creators: dict[str, Any] = {}
        if config.tls is not None:
            self._clientTLS = ClientTLS.load(config.tls)
            if config.tls.insecureSkip:
                self.log.warn(
                    "cluster {cluster}: insecure_skip is set: upstream TLS certificates are NOT verified",
                    cluster=config.name,
                )
        # The configured host count fixes Maglev's table size, so that every process of a fleet maps
        # keys alike whatever the health of the hosts when it first picks.
        self._balancer = balancerFor(config.lbType, rng, config.lbConfig, len(config.hosts))
        self._subsetBalancers: dict[Labels, Any] = {}
        self._subsetCandidates: dict[Labels, list[UpstreamHost]] = {}
        self.hosts: list[UpstreamHost] = []
        self.candidates: list[UpstreamHost] = []
        self.panicking = False
        self.activeRequests = 0
        self.activeRetries = 0
        self._hostListeners: list[Callable[[list[UpstreamHost]], None]] = []
        self.outlier: OutlierDetector | None = None
        if config.outlierDetection is not None:
            self.outlier = OutlierDetector(
                config.name, config.outlierDetection, reactor, self.ejectionChanged, stats,  # type: ignore[arg-type]
                lambda: len(self.hosts), self.healthyCount,
            )
        self.checker: ActiveHealthChecker | None = None
        if config.healthCheck is not None:
            self.checker = ActiveHealthChecker(
                config.name, config.healthCheck, reactor, self.activeHealthChanged, stats, rng,  # type: ignore[arg-type]
                onPass=self._activePassed,
            )
        self._dns: DNSRefresher | None = None
        if config.type == "STRICT_DNS":
            self._dns = DNSRefresher(
                config.name, config.hosts, config.dnsLookupFamily, config.dnsRefreshRate, reactor,  # type: ignore[arg-type]
                resolver or reactor.nameResolver, self.setHosts,  # type: ignore[attr-defined]
            )
        breakers = config.circuitBreakers
        self.maxRequests = breakers.maxRequests
        self.maxRetries = breakers.maxRetries
        labels = {"cluster": config.name}
        self.connectionsTotal = stats.counter("upstream_cx_total", "Upstream connections opened.", **labels)
        self.connectionsActive = stats.gauge("upstream_cx_active", "Upstream connections open now.", **labels)
        self.connectFailures = stats.counter(
            "upstream_cx_connect_fail_total", "Upstream connection attempts that failed or timed out.", **labels
        )
        self.noHealthyHost = stats.counter(
            "upstream_cx_none_healthy_total", "Times no eligible upstream host could be chosen.", **labels
        )
        self.bytesSent = stats.counter("upstream_cx_tx_bytes_total", "Bytes sent to upstream hosts.", **labels)
        self.bytesReceived = stats.counter(
            "upstream_cx_rx_bytes_total", "Bytes received from upstream hosts.", **labels
        )
        self.requestOverflow = stats.counter(
            "upstream_rq_overflow_total", "Requests refused because max_requests were in flight.", **labels
        )
        self.retryOverflow = stats.counter(
            "upstream_rq_retry_overflow_total", "Retries not made because max_retries were in flight.", **labels
        )
        self.panicPicks = stats.counter(
            "upstream_lb_healthy_panic_total", "Hosts chosen among all hosts because too few were healthy.", **labels
        )
        self.subsetFallbacks = stats.counter(
            "upstream_lb_subsets_fallback_total", "Requests whose metadata subset was empty or unnamed.", **labels
        )
        stats.liveGauge("upstream_rq_active", "Requests and sessions in flight to the cluster.",
                        lambda: self.activeRequests, **labels)
        stats.liveGauge("upstream_hosts_healthy", "Healthy hosts in the cluster.",
                        lambda: sum(1 for h in self.hosts if h.healthy), **labels)
        stats.liveGauge("upstream_hosts", "Hosts in the cluster.", lambda: len(self.hosts), **labels)
        stats.liveGauge("upstream_lb_panic", "1 while the cluster balances over all hosts (panic mode).",
                        lambda: int(self.panicking), **labels)
        self.setHosts([h for h in config.hosts if h.family != "dns"])

    # -- membership and health ------------------------------------------------------------------------

    def setHosts(self, configs: Sequence[HostConfig]) -> None:
        """
        Make C{configs} the cluster's hosts: hosts with an address already known keep their object
        (counters, health, pooled connections); the others are added or removed.
        """
        known = {h.address: h for h in self.hosts}
        hosts = []
        for config in configs:
            host = known.pop(config.address, None)
            if host is None or host.config != config:
                host = UpstreamHost(config, self.name, self._stats) if host is None else self._refreshed(host, config)
            hosts.append(host)
        removed = list(known.values())
        self.hosts = hosts
        for host in removed:
            host.healthy = False  # never handed out again; its pooled connections are not kept
            host.removed = True
            if self.outlier is not None:
                self.outlier.forget(host)
            self._stats.forget(cluster=self.name, host=host.address)
        if self.checker is not None:
            self.checker.setHosts(self.hosts)
        self._rebuild()
        for listener in self._hostListeners:
            listener(removed)

    def _refreshed(self, host: UpstreamHost, config: HostConfig) -> UpstreamHost:
        # Same address, new settings (weight, metadata): keep the live state.
        host.config = config
        host.weight = config.weight
        host.metadata = dict(config.metadata)
        return host

    def onHostsRemoved(self, listener: Callable[[list[UpstreamHost]], None]) -> None:
        """
        Call C{listener(removedHosts)} whenever the membership changes (the pool closes their idle
        connections).
        """
        self._hostListeners.append(listener)

    def start(self) -> None:
        """
        Start health checking and, for C{STRICT_DNS}, resolving.
        """
        if self.checker is not None:
            self.checker.start(self.hosts)
        if self._dns is not None:
            self._dns.start()

    def stop(self) -> None:
        """
        Stop every timer of the cluster (checks, ejections, DNS refreshes).
        """
        if self.checker is not None:
            self.checker.stop()
        if self.outlier is not None:
            self.outlier.stop()
        if self._dns is not None:
            self._dns.stop()

    def _activePassed(self, host: UpstreamHost) -> None:
        if self.outlier is not None:
            self.outlier.activeCheckPassed(host)

    def activeHealthChanged(self, host: UpstreamHost, healthy: bool, reason: str) -> None:
        """
        The active health checker's verdict on C{host} changed.
        """
        host.activeFailed = not healthy
        host.activeReason = "" if healthy else reason
        self._hostChanged(host, "active health check", reason)

    def ejectionChanged(self, host: UpstreamHost, ejected: bool, reason: str) -> None:
        """
        The outlier detector ejected C{host}, or let it back.
        """
        host.ejected = ejected
        host.ejectionReason = reason if ejected else ""
        self._hostChanged(host, "outlier detection", reason)

    def _hostChanged(self, host: UpstreamHost, source: str, reason: str) -> None:
        healthy = not host.activeFailed and not host.ejected
        # Why the host is out now (the active check's reason first), or nothing once it is back.
        host.healthReason = host.activeReason or host.ejectionReason
        if healthy != host.healthy:
            host.healthy = healthy
            self.log.info(
                "cluster {cluster}: host {host} is now {state} ({source}: {reason})",
                cluster=self.name, host=host.address, state="healthy" if healthy else "unhealthy",
                source=source, reason=reason,
            )
        self._rebuild()

    def healthyCount(self) -> int:
        """
        How many hosts are healthy now.
        """
        return sum(1 for h in self.hosts if h.healthy)

    def _rebuild(self) -> None:
        healthy = [h for h in self.hosts if h.healthy]
        threshold = self.config.healthyPanicThreshold
        panicking = bool(self.hosts) and threshold > 0 and len(healthy) * 100 < threshold * len(self.hosts)
        if panicking != self.panicking:
            self.log.warn(
                "cluster {cluster}: {healthy} of {total} hosts healthy; {what}",
                cluster=self.name, healthy=len(healthy), total=len(self.hosts),
                what="panic mode: balancing over all hosts" if panicking else "leaving panic mode",
            )
        self.panicking = panicking
        self.candidates = list(self.hosts) if panicking else healthy
        self._subsetCandidates = {}

    # -- choosing -------------------------------------------------------------------------------------

    def chooseHost(
        self, exclude: Collection[object] = (), hashKey: int | None = None, metadataMatch: Labels = ()
    ) -> UpstreamHost | None:
        """
        The load balancer's pick among the candidates (of the request's subset, when the cluster has
        subsets) not in C{exclude}; C{hashKey} drives consistent-hashing balancers.
        """
        if self.config.subsets is None:
            candidates, balancer = self.candidates, self._balancer
        else:
            candidates, balancer = self._subset(metadataMatch)
        host = balancer.pick(candidates, exclude, hashKey)
        if host is None:
            if not exclude:
                self.noHealthyHost.inc()
        elif self.panicking:
            self.panicPicks.value += 1
        return host  # type: ignore[no-any-return]

    def _subset(self, match: Labels) -> tuple[list[UpstreamHost], Any]:
        subsets = self.config.subsets
        assert subsets is not None
        keys = tuple(sorted(k for k, _ in match))
        target: Labels | None = match if match and keys in subsets.selectors else None
        if target is not None:
            hosts = self._subsetHosts(target)
            if hosts:
                return hosts, self._subsetBalancer(target)
        self.subsetFallbacks.value += 1
        policy = subsets.fallbackPolicy
        if policy == "ANY_ENDPOINT":
            return self.candidates, self._balancer
        if policy == "DEFAULT_SUBSET":
            return self._subsetHosts(subsets.defaultSubset), self._subsetBalancer(subsets.defaultSubset)
        return [], self._balancer

    def _subsetHosts(self, labels: Labels) -> list[UpstreamHost]:
        hosts = self._subsetCandidates.get(labels)
        if hosts is None:
            hosts = self._subsetCandidates[labels] = [
                h for h in self.candidates if all(h.metadata.get(k) == v for k, v in labels)
            ]
        return hosts

    def _subsetBalancer(self, labels: Labels) -> Any:
        balancer = self._subsetBalancers.get(labels)
        if balancer is None:
            balancer = self._subsetBalancers[labels] = balancerFor(
                self.config.lbType, self._rng, self.config.lbConfig, len(self.config.hosts)
            )
        return balancer

    # -- circuit breakers -----------------------------------------------------------------------------

    def admitRequest(self) -> bool:
        """
        Count one more request (or TCP session) in flight, unless C{max_requests} already are.
        """
        if self.activeRequests >= self.maxRequests:
            self.requestOverflow.value += 1
            return False
        self.activeRequests += 1
        return True

    def requestDone(self) -> None:
        """
        One request admitted by L{admitRequest} ended.
        """
        self.activeRequests -= 1

    def admitRetry(self) -> bool:
        """
        Count one more retry in flight, unless C{max_retries} already are.
        """
        if self.activeRetries >= self.maxRetries:
            self.retryOverflow.value += 1
            return False
        self.activeRetries += 1
        return True

    def retryDone(self) -> None:
        """
        A request that had retried (L{admitRetry}) ended.
        """
        self.activeRetries -= 1

    # -- outcomes (for outlier detection) -------------------------------------------------------------

    def hostSucceeded(self, host: UpstreamHost) -> None:
        """
        C{host} answered (a response that is not 502/503/504, or a TCP session that connected).
        """
        if self.outlier is not None:
            self.outlier.success(host)

    def hostFailed(self, host: UpstreamHost, reason: str) -> None:
        """
        C{host} failed: C{"connect_failure"}, C{"reset"}, C{"timeout"} or C{"status_5xx"}.
        """
        if self.outlier is not None and not host.removed:
            self.outlier.failure(host, reason)

    # -- connections ----------------------------------------------------------------------------------

    def connect(self, host: IUpstreamHost, factory: ClientFactory) -> IConnector:
        """
        Dial C{host}; success and failure reach C{factory} as usual.  With a C{tls_context} (and the
        host not C{tls_disable}) the connection is TLS, verified against the host's name.
        """
        assert isinstance(host, UpstreamHost)
        if host.family == "unix":
            assert IReactorUNIX.providedBy(self._reactor)
            return self._reactor.connectUNIX(host.host, factory, timeout=self.connectTimeout)  # type: ignore[attr-defined]
        if self._clientTLS is not None and not host.config.tlsDisable:
            creator = self._creators.get(host.address)
            if creator is None:
                tls = self._clientTLS.config
                serverName = tls.serverName or host.config.hostname or host.host
                creator = self._creators[host.address] = self._clientTLS.creatorFor(serverName)
            tlsFactory: Any
            if _FACTORY_TAKES_CLOCK:
                tlsFactory = TLSMemoryBIOFactory(creator, True, factory, clock=self._reactor)  # type: ignore[arg-type]
            else:  # Twisted 22.4
                tlsFactory = TLSMemoryBIOFactory(creator, True, factory)
            return self._reactor.connectTCP(host.host, host.port, tlsFactory, timeout=self.connectTimeout)
        return self._reactor.connectTCP(host.host, host.port, factory, timeout=self.connectTimeout)

    def connectionOpened(self, host: UpstreamHost) -> None:
        """
        Count a new established connection to C{host}.
        """
        host.activeConnections += 1
        host.connectionsTotal.value += 1
        self.connectionsTotal.value += 1
        self.connectionsActive.value += 1

    def connectionClosed(self, host: UpstreamHost) -> None:
        """
        Count the end of an established connection to C{host}.
        """
        host.activeConnections -= 1
        self.connectionsActive.value -= 1

    def connectFailed(self, host: UpstreamHost) -> None:
        """
        Count a failed (refused, unreachable or timed out) attempt to reach C{host}, and tell the
        outlier detector.
        """
        host.connectFailures.value += 1
        self.connectFailures.value += 1
        if self.outlier is not None and not host.removed:
            self.outlier.failure(host, "connect_failure")

    def describe(self) -> dict[str, Any]:
        """
        JSON-ready state for the admin's C{/clusters}.
        """
        hosts = []
        for h in self.hosts:
            entry: dict[str, Any] = {
                "address": h.address,
                "weight": h.weight,
                "healthy": h.healthy,
                "health_flags": _flags(h),
                "reason": h.healthReason,
                "connections_active": h.activeConnections,
                "connections_total": h.connectionsTotal.value,
                "connect_failures": h.connectFailures.value,
                "requests_active": h.activeRequests,
                "requests_total": h.requestsTotal.value,
            }
            if h.metadata:
                entry["metadata"] = dict(h.metadata)
            if h.config.hostname:
                entry["hostname"] = h.config.hostname
            if self.checker is not None:
                entry["active_check"] = self.checker.state(h)
            if self.outlier is not None:
                entry["outlier"] = self.outlier.state(h)
            hosts.append(entry)
        return {
            "type": self.config.type,
            "lb_type": self.config.lbType,
            "panic": self.panicking,
            "healthy_hosts": self.healthyCount(),
            "requests_active": self.activeRequests,
            "retries_active": self.activeRetries,
            "connections_active": self.connectionsActive.value,
            "connections_total": self.connectionsTotal.value,
            "connect_failures": self.connectFailures.value,
            "hosts": hosts,
        }


def checkClusterTLS(config: Config) -> list[Problem]:
    """
    Load every cluster's TLS files once and say, by JSON path, which cannot be loaded.
    """
    problems = []
    for i, cluster in enumerate(config.clusters):
        if cluster.tls is not None:
            try:
                ClientTLS.load(cluster.tls)
            except TLSLoadError as e:
                problems.append(Problem(f"cluster_manager.clusters[{i}].tls_context.{e.key}", e.message))
    return problems


def _flags(host: UpstreamHost) -> list[str]:
    # Envoy's health flags, as its /clusters shows them.
    flags = []
    if host.activeFailed:
        flags.append("failed_active_hc")
    if host.ejected:
        flags.append("failed_outlier_check")
    return flags or ["healthy"]


class ClusterSet:
    """
    All clusters of one configuration, by name.
    """

    def __init__(self, clusters: dict[str, Cluster]) -> None:
        self._clusters = clusters

    @classmethod
    def fromConfig(
        cls,
        config: Config,
        reactor: IReactorTCP,
        stats: StatsStore,
        rng: random.Random | None = None,
        previous: ClusterSet | None = None,
    ) -> ClusterSet:
        """
        Build a L{Cluster} for every configured cluster; a cluster of C{previous} (the running set,
        on reload) whose spec is unchanged is kept, with its hosts' health and counters.

        @raise ConfigError: a cluster's C{tls_context} names a file that cannot be loaded.
        """
        problems = checkClusterTLS(config)
        if problems:
            raise ConfigError(problems)
        clusters = {}
        for c in config.clusters:
            kept = previous._clusters.get(c.name) if previous is not None else None
            clusters[c.name] = kept if kept is not None and kept.config == c else Cluster(c, reactor, stats, rng)
        return cls(clusters)

    def __contains__(self, cluster: object) -> bool:
        return any(cluster is c for c in self._clusters.values())

    def get(self, name: str) -> Cluster:
        """
        The cluster called C{name}; the config layer guarantees every referenced name exists.
        """
        return self._clusters[name]

    def __iter__(self) -> Iterator[Cluster]:
        return iter(self._clusters.values())

    def __len__(self) -> int:
        return len(self._clusters)

    def start(self) -> None:
        """
        Start every cluster's health checks and DNS refreshes.
        """
        for cluster in self._clusters.values():
            cluster.start()

    def stop(self) -> None:
        """
        Stop every cluster's timers.
        """
        for cluster in self._clusters.values():
            cluster.stop()
