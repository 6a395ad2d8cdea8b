"""
Tests for L{meshproxy.cluster.cluster}: candidate lists, panic mode, subsets, membership changes,
circuit breakers, outlier and health wiring, and L{meshproxy.cluster.dns}.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.test.proto_helpers import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.cluster.cluster import Cluster, ClusterSet, UpstreamHost
from meshproxy.cluster.dns import DNSRefresher
from meshproxy.config import HostConfig, parseConfigObject
from meshproxy.interfaces import ICluster, IUpstreamHost
from meshproxy.stats import StatsStore
from tests.test_config import cluster as clusterDocument
from tests.test_config import document


def makeCluster(reactor: Any = None, resolver: Any = None, **overrides: Any) -> tuple[Cluster, StatsStore]:
    """
    A runtime cluster from a config document's cluster with C{overrides} (three hosts by default).
    """
    overrides.setdefault(
        "hosts", [{"address": "127.0.0.1:9001"}, {"address": "127.0.0.1:9002"}, {"address": "127.0.0.1:9003"}]
    )
    config = parseConfigObject(document(clusters=[clusterDocument(**overrides)]))
    stats = StatsStore()
    cluster = Cluster(config.clusters[0], reactor or MemoryReactorClock(), stats, random.Random(1), resolver=resolver)
    return cluster, stats


def picks(cluster: Cluster, count: int, **kwargs: Any) -> list[str | None]:
    chosen = [cluster.chooseHost(**kwargs) for _ in range(count)]
    return [h.address if h is not None else None for h in chosen]


class CandidateTests(SynchronousTestCase):
    """
    Unhealthy hosts leave the candidate list; too few healthy ones put the cluster in panic.
    """

    def test_interfaces(self) -> None:
        """
        The cluster and its hosts provide their interfaces.
        """
        cluster, _ = makeCluster()
        verifyObject(ICluster, cluster)
        verifyObject(IUpstreamHost, cluster.hosts[0])

    def test_unhealthySkipped(self) -> None:
        """
        A host failing its active check, or ejected, is not chosen; it is again once it recovers.
        """
        cluster, stats = makeCluster()
        a, b, c = cluster.hosts
        cluster.activeHealthChanged(a, False, "timeout")
        self.assertNotIn("127.0.0.1:9001", picks(cluster, 6))
        self.assertEqual(stats.value("upstream_host_healthy", cluster="backend", host=a.address), 0)
        cluster.activeHealthChanged(a, True, "passed")
        cluster.ejectionChanged(b, True, "consecutive failures")
        self.assertEqual(set(picks(cluster, 4)), {"127.0.0.1:9001", "127.0.0.1:9003"})
        cluster.ejectionChanged(b, False, "time up")
        self.assertEqual(set(picks(cluster, 6)), {"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"})

    def test_bothFlags(self) -> None:
        """
        A host is healthy only when neither the active check nor the outlier detector holds it out.
        """
        cluster, _ = makeCluster()
        host = cluster.hosts[0]
        cluster.activeHealthChanged(host, False, "x")
        cluster.ejectionChanged(host, True, "y")
        cluster.activeHealthChanged(host, True, "passed")
        self.assertFalse(host.healthy)
        cluster.ejectionChanged(host, False, "z")
        self.assertTrue(host.healthy)

    def test_panic(self) -> None:
        """
        Below 50 % healthy, every host is a candidate again, and the picks are counted as panic.
        """
        cluster, stats = makeCluster()
        a, b, c = cluster.hosts
        cluster.activeHealthChanged(a, False, "x")
        self.assertFalse(cluster.panicking)
        cluster.activeHealthChanged(b, False, "x")
        self.assertTrue(cluster.panicking)
        self.assertEqual(set(picks(cluster, 6)), {a.address, b.address, c.address})
        self.assertEqual(stats.value("upstream_lb_healthy_panic_total", cluster="backend"), 6)
        cluster.activeHealthChanged(b, True, "passed")
        self.assertFalse(cluster.panicking)

    def test_panicOff(self) -> None:
        """
        With C{healthy_panic_threshold: 0}, no healthy host means no host: counted.
        """
        cluster, stats = makeCluster(healthy_panic_threshold=0)
        for host in cluster.hosts:
            cluster.activeHealthChanged(host, False, "x")
        self.assertIsNone(cluster.chooseHost())
        self.assertEqual(stats.value("upstream_cx_none_healthy_total", cluster="backend"), 1)


class SubsetTests(SynchronousTestCase):
    """
    Subset load balancing by host metadata and the route's labels.
    """

    def setUp(self) -> None:
        def host(port: int, **labels: str) -> dict[str, Any]:
            return {"address": f"127.0.0.1:{port}", "metadata": {"filter_metadata": {"mosn.lb": labels}}}

        self.hosts = [host(9001, version="v1"), host(9002, version="v2"), host(9003, version="v2", zone="b")]

    def test_selected(self) -> None:
        """
        A route asking for labels whose keys are a selector gets exactly the matching hosts.
        """
        cluster, _ = makeCluster(
            hosts=self.hosts, lb_subset_config={"subset_selectors": [["version"], ["version", "zone"]]}
        )
        self.assertEqual(set(picks(cluster, 4, metadataMatch=(("version", "v2"),))), {"127.0.0.1:9002", "127.0.0.1:9003"})
        self.assertEqual(
            set(picks(cluster, 2, metadataMatch=(("version", "v2"), ("zone", "b")))), {"127.0.0.1:9003"}
        )

    def test_fallbacks(self) -> None:
        """
        No subset (or an empty one): none under NO_FALLBACK, all under ANY_ENDPOINT, the default subset
        under DEFAULT_SUBSET.
        """
        selectors = [["version"]]
        none, _ = makeCluster(hosts=self.hosts, lb_subset_config={"subset_selectors": selectors})
        self.assertEqual(picks(none, 1, metadataMatch=(("version", "v9"),)), [None])
        self.assertEqual(picks(none, 1), [None])
        anyHost, _ = makeCluster(hosts=self.hosts, lb_subset_config={"subset_selectors": selectors, "fall_back_policy": 1})
        self.assertEqual(len(set(picks(anyHost, 6, metadataMatch=(("zone", "b"),)))), 3)
        default, stats = makeCluster(hosts=self.hosts, lb_subset_config={
            "subset_selectors": selectors, "fall_back_policy": 2, "default_subset": {"version": "v1"},
        })
        self.assertEqual(set(picks(default, 3)), {"127.0.0.1:9001"})
        self.assertEqual(stats.value("upstream_lb_subsets_fallback_total", cluster="backend"), 3)

    def test_healthRespected(self) -> None:
        """
        A subset only holds candidates: an unhealthy host of the subset is skipped.
        """
        cluster, _ = makeCluster(hosts=self.hosts, lb_subset_config={"subset_selectors": [["version"]]})
        cluster.activeHealthChanged(cluster.hosts[1], False, "x")
        self.assertEqual(set(picks(cluster, 3, metadataMatch=(("version", "v2"),))), {"127.0.0.1:9003"})


class MembershipTests(SynchronousTestCase):
    """
    L{Cluster.setHosts}: kept hosts keep their state; removed ones are dropped everywhere.
    """

    def test_keepsState(self) -> None:
        """
        A host listed again keeps its object, counters and health; a new one is added healthy.
        """
        cluster, stats = makeCluster()
        a = cluster.hosts[0]
        cluster.activeHealthChanged(a, False, "x")
        a.connectionsTotal.inc(5)
        removed: list[list[UpstreamHost]] = []
        cluster.onHostsRemoved(removed.append)
        configs = [a.config, HostConfig("127.0.0.1:9009", "127.0.0.1", 9009, "ipv4")]
        gone = cluster.hosts[1:]
        cluster.setHosts(configs)
        self.assertIs(cluster.hosts[0], a)
        self.assertFalse(a.healthy)
        self.assertEqual(a.connectionsTotal.value, 5)
        self.assertEqual([h.address for h in cluster.hosts], ["127.0.0.1:9001", "127.0.0.1:9009"])
        self.assertEqual(removed, [gone])
        self.assertTrue(all(not h.healthy for h in gone))
        self.assertEqual(picks(cluster, 2), ["127.0.0.1:9009", "127.0.0.1:9009"])
        self.assertNotIn(
            "127.0.0.1:9002",
            {labels.get("host") for family in stats.asDict().values() for labels in
             (series["labels"] for series in family["series"])},  # type: ignore[index]
        )


class BreakerTests(SynchronousTestCase):
    """
    C{max_requests} and C{max_retries} are counted in flight.
    """

    def test_requests(self) -> None:
        """
        Past C{max_requests} in flight, admission fails and is counted until one ends.
        """
        cluster, stats = makeCluster(circuit_breakers=[{"max_requests": 2, "max_retries": 1}])
        self.assertTrue(cluster.admitRequest())
        self.assertTrue(cluster.admitRequest())
        self.assertFalse(cluster.admitRequest())
        self.assertEqual(stats.value("upstream_rq_overflow_total", cluster="backend"), 1)
        cluster.requestDone()
        self.assertTrue(cluster.admitRequest())
        self.assertTrue(cluster.admitRetry())
        self.assertFalse(cluster.admitRetry())
        cluster.retryDone()
        self.assertTrue(cluster.admitRetry())
        self.assertEqual(stats.value("upstream_rq_retry_overflow_total", cluster="backend"), 1)


class OutlierWiringTests(SynchronousTestCase):
    """
    The cluster feeds its outlier detector and follows its verdicts.
    """

    def test_connectFailuresEject(self) -> None:
        """
        Five consecutive connect failures eject the host for 30 s; it is a candidate again after.
        """
        reactor = MemoryReactorClock()
        cluster, _ = makeCluster(reactor)
        host = cluster.hosts[0]
        for _ in range(5):
            cluster.connectFailed(host)
        self.assertTrue(host.ejected)
        self.assertNotIn(host, cluster.candidates)
        self.assertEqual(cluster.describe()["hosts"][0]["health_flags"], ["failed_outlier_check"])
        reactor.advance(30)
        self.assertFalse(host.ejected)
        self.assertIn(host, cluster.candidates)

    def test_successResets(self) -> None:
        """
        A success between failures starts the count again.
        """
        cluster, _ = makeCluster()
        host = cluster.hosts[0]
        for _ in range(4):
            cluster.hostFailed(host, "status_5xx")
        cluster.hostSucceeded(host)
        for _ in range(4):
            cluster.hostFailed(host, "status_5xx")
        self.assertFalse(host.ejected)

    def test_off(self) -> None:
        """
        With C{consecutive_failures: 0} nothing is ejected.
        """
        cluster, _ = makeCluster(outlier_detection={"consecutive_failures": 0})
        host = cluster.hosts[0]
        for _ in range(20):
            cluster.connectFailed(host)
        self.assertTrue(host.healthy)


class HealthWiringTests(SynchronousTestCase):
    """
    A cluster with C{health_check} runs a checker on its clock from L{Cluster.start} to L{Cluster.stop}.
    """

    def test_tcpChecks(self) -> None:
        """
        The first failed TCP check marks a host unhealthy; stopping cancels every timer.
        """
        reactor = MemoryReactorClock()
        cluster, _ = makeCluster(reactor, health_check={"protocol": "TCP", "interval": "1s", "timeout": "1s"})
        clusters = ClusterSet({"backend": cluster})
        clusters.start()
        reactor.advance(1.5)
        self.assertEqual(len(reactor.tcpClients), 3)
        host, port, factory, _, _ = reactor.tcpClients[0]
        from twisted.internet.error import ConnectionRefusedError
        from twisted.python.failure import Failure

        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertFalse(cluster.hosts[0].healthy)
        self.assertTrue(cluster.hosts[0].activeFailed)
        clusters.stop()
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.active()], [])


class FakeResolver:
    """
    An C{IHostnameResolver} answering from a dictionary, or holding answers until told.
    """

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[tuple[str, Any]] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, addressTypes: Any = None,
                        transportSemantics: str = "TCP") -> Any:
        self.lookups.append((hostName, addressTypes))
        receiver.resolutionBegan(None)
        for ip in self.answers.get(hostName, []):
            kind = IPv6Address if ":" in ip else IPv4Address
            receiver.addressResolved(kind("TCP", ip, portNumber))
        receiver.resolutionComplete()
        return receiver


class StrictDNSTests(SynchronousTestCase):
    """
    C{STRICT_DNS}: every address answered is a host; a failed lookup keeps the last good answer.
    """

    def test_resolvedHosts(self) -> None:
        """
        Names become one host per address, refreshed on the clock; IP hosts stay as they are.
        """
        reactor = MemoryReactorClock()
        resolver = FakeResolver({"svc.local": ["10.0.0.1", "10.0.0.2"]})
        cluster, _ = makeCluster(
            reactor, resolver, type="STRICT_DNS", dns_refresh_rate="2s",
            hosts=[{"address": "svc.local:8080", "weight": 3}, {"address": "127.0.0.1:9001"}],
        )
        self.assertEqual([h.address for h in cluster.hosts], ["127.0.0.1:9001"])
        cluster.start()
        self.assertEqual(
            [(h.address, h.weight, h.config.hostname) for h in cluster.hosts],
            [("10.0.0.1:8080", 3, "svc.local"), ("10.0.0.2:8080", 3, "svc.local"), ("127.0.0.1:9001", 1, None)],
        )
        first = cluster.hosts[0]
        resolver.answers["svc.local"] = ["10.0.0.2", "::1"]
        reactor.advance(2)
        self.assertEqual(
            [h.address for h in cluster.hosts], ["10.0.0.2:8080", "[::1]:8080", "127.0.0.1:9001"]
        )
        self.assertFalse(first.healthy)  # removed
        resolver.answers["svc.local"] = []
        reactor.advance(2)
        self.assertEqual(len(cluster.hosts), 3)
        cluster.stop()
        self.assertEqual([c for c in reactor.getDelayedCalls() if c.active()], [])

    def test_family(self) -> None:
        """
        C{V4_ONLY} asks the resolver for IPv4 addresses only.
        """
        clock = Clock()
        resolver = FakeResolver({"svc.local": ["10.0.0.1"]})
        found: list[list[HostConfig]] = []
        refresher = DNSRefresher(
            "c", [HostConfig("svc.local:80", "svc.local", 80, "dns")], "V4_ONLY", 5.0, clock, resolver, found.append
        )
        refresher.start()
        self.assertEqual(resolver.lookups, [("svc.local", [IPv4Address])])
        self.assertEqual([h.address for h in found[-1]], ["10.0.0.1:80"])
        refresher.stop()


class ReloadReuseTests(SynchronousTestCase):
    """
    On reload, clusters whose spec did not change are the running objects; the others are new.
    """

    def test_reuse(self) -> None:
        """
        An unchanged cluster keeps its object (and so its health); a changed one is rebuilt.
        """
        reactor = MemoryReactorClock()
        stats = StatsStore()
        first = parseConfigObject(document(clusters=[clusterDocument(), clusterDocument(name="other")]))
        running = ClusterSet.fromConfig(first, reactor, stats)
        backend = running.get("backend")
        backend.activeHealthChanged(backend.hosts[0], False, "x")
        second = parseConfigObject(document(clusters=[
            clusterDocument(), clusterDocument(name="other", connect_timeout="1s"),
        ]))
        reloaded = ClusterSet.fromConfig(second, reactor, stats, previous=running)
        self.assertIs(reloaded.get("backend"), backend)
        self.assertFalse(reloaded.get("backend").hosts[0].healthy)
        self.assertIsNot(reloaded.get("other"), running.get("other"))
        self.assertIn(backend, reloaded)
        self.assertNotIn(running.get("other"), reloaded)
