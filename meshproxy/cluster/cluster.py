"""
Runtime clusters: hosts with live counters, a load balancer, and the way to dial a host.

Connections are opened with C{reactor.connectTCP}/C{connectUNIX} directly rather than through
client endpoints: endpoints wrap every protocol in a forwarding wrapper, which would cost a Python
call per received chunk on the data path.
"""

from __future__ import annotations

import random
from typing import Collection, Iterator

from twisted.internet.interfaces import IConnector, IReactorTCP, IReactorUNIX
from twisted.internet.protocol import ClientFactory
from zope.interface import implementer

from meshproxy.cluster.lb import balancerFor
from meshproxy.config import ClusterConfig, Config, HostConfig
from meshproxy.interfaces import ICluster, IUpstreamHost
from meshproxy.stats import StatsStore


@implementer(IUpstreamHost)
class UpstreamHost:
    """
    One configured host and its live counters.
    """

    def __init__(self, config: HostConfig, clusterName: str, stats: StatsStore) -> None:
        self.config = config
        self.address = config.address
        self.weight = config.weight
        self.family = config.family
        self.host = config.host
        self.port = config.port
        self.healthy = True
        self.activeConnections = 0
        self.activeRequests = 0
        labels = {"cluster": clusterName, "host": config.address}
        self.connectFailures = stats.counter(
            "upstream_host_cx_connect_fail_total", "Failed connection attempts to one upstream host.", **labels
        )
        self.connectionsTotal = stats.counter(
            "upstream_host_cx_total", "Connections opened to one upstream host.", **labels
        )

    def __repr__(self) -> str:
        return f"<UpstreamHost {self.address}>"


@implementer(ICluster)
class Cluster:
    """
    A named set of L{UpstreamHost}s with a load balancer and a connect timeout.
    """

    def __init__(
        self,
        config: ClusterConfig,
        reactor: IReactorTCP,
        stats: StatsStore,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.connectTimeout = config.connectTimeout
        self.bufferLimit = config.connBufferLimitBytes
        self.hosts = [UpstreamHost(h, config.name, stats) for h in config.hosts]
        self._reactor = reactor
        self._balancer = balancerFor(config.lbType, rng)
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

    def chooseHost(self, exclude: Collection[object] = ()) -> UpstreamHost | None:
        """
        The load balancer's pick among healthy hosts not in C{exclude}.
        """
        host = self._balancer.pick(self.hosts, exclude)
        if host is None and not exclude:
            self.noHealthyHost.inc()
        return host  # type: ignore[return-value]

    def connect(self, host: IUpstreamHost, factory: ClientFactory) -> IConnector:
        """
        Dial C{host}; success and failure reach C{factory} as usual.
        """
        assert isinstance(host, UpstreamHost)
        if host.family == "unix":
            assert IReactorUNIX.providedBy(self._reactor)
            return self._reactor.connectUNIX(host.host, factory, timeout=self.connectTimeout)  # type: ignore[attr-defined]
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
        Count a failed (refused, unreachable or timed out) attempt to reach C{host}.
        """
        host.connectFailures.value += 1
        self.connectFailures.value += 1


class ClusterSet:
    """
    All clusters of one configuration, by name.
    """

    def __init__(self, clusters: dict[str, Cluster]) -> None:
        self._clusters = clusters

    @classmethod
    def fromConfig(
        cls, config: Config, reactor: IReactorTCP, stats: StatsStore, rng: random.Random | None = None
    ) -> ClusterSet:
        """
        Build a L{Cluster} for every configured cluster.
        """
        return cls({c.name: Cluster(c, reactor, stats, rng) for c in config.clusters})

    def get(self, name: str) -> Cluster:
        """
        The cluster called C{name}; the config layer guarantees every referenced name exists.
        """
        return self._clusters[name]

    def __iter__(self) -> Iterator[Cluster]:
        return iter(self._clusters.values())

    def __len__(self) -> int:
        return len(self._clusters)
