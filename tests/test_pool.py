"""
Tests for L{meshproxy.cluster.pool}: per-host keep-alive pools with a connection limit and a bounded,
timed wait queue, driven with a fake dialer on a memory clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.cluster.cluster import ClusterSet, UpstreamHost
from meshproxy.cluster.pool import ClusterPool, PoolSet
from meshproxy.stats import StatsStore
from tests.proxyharness import httpDocument
from tests.support import makeConfig


class FakeConnection:
    """
    A pooled connection: records closes and reports them to the pool as a transport would.
    """

    def __init__(self, pool: ClusterPool, host: UpstreamHost) -> None:
        self.pool = pool
        self.host = host
        self.idleSince = 0.0
        self.requestsSent = 1
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def lost(self, wasIdle: bool) -> None:
        """
        The transport reports the end (later than C{close}, as a real one does).
        """
        self.pool.connectionLost(self, wasIdle)


class Requester:
    """
    Records what the pool tells it.
    """

    def __init__(self, name: str, log: list[tuple[str, str, Any]]) -> None:
        self.name = name
        self.log = log

    def connectionReady(self, connection: Any, reused: bool) -> None:
        self.log.append((self.name, "ready", (connection, reused)))

    def connectionFailed(self, host: UpstreamHost | None, reason: str) -> None:
        self.log.append((self.name, "failed", (host, reason)))


class PoolTestMixin:
    def setUpPool(self, **cluster: Any) -> None:
        self.clock = MemoryReactorClock()
        self.stats = StatsStore()
        config = makeConfig(httpDocument(**cluster))
        self.clusters = ClusterSet.fromConfig(config, self.clock, self.stats)
        self.cluster = self.clusters.get("backend")
        self.a, self.b = self.cluster.hosts
        self.dials: list[tuple[UpstreamHost, Any, Any]] = []
        self.pools = PoolSet(self.clock, self.dial)
        self.pool = self.pools.get(self.cluster)
        self.log: list[tuple[str, str, Any]] = []

    def dial(self, pool: ClusterPool, host: UpstreamHost, ready: Any, failed: Any) -> None:
        self.dials.append((host, ready, failed))

    def requester(self, name: str) -> Requester:
        return Requester(name, self.log)

    def opened(self, index: int = -1) -> FakeConnection:
        """
        Complete dial number C{index}.
        """
        host, ready, _ = self.dials[index]
        connection = FakeConnection(self.pool, host)
        ready(connection)
        return connection

    def pooled(self, host: UpstreamHost) -> FakeConnection:
        """
        A connection to C{host} dialled, used and released to the pool.
        """
        self.pool.acquire(host, self.requester("setup"))
        connection = self.opened()
        self.pool.release(connection, True)
        del self.log[:]
        return connection

    def counter(self, name: str) -> int:
        return self.stats.value(name, cluster="backend")


class AcquireTests(PoolTestMixin, SynchronousTestCase):
    """
    Handing out connections.
    """

    def setUp(self) -> None:
        self.setUpPool()

    def test_dial(self) -> None:
        """
        With nothing idle the host is dialled; the new connection is handed over as not reused.
        """
        self.pool.acquire(self.a, self.requester("r"))
        self.assertEqual([d[0] for d in self.dials], [self.a])
        self.assertEqual(self.pool.open, 1)
        connection = self.opened()
        self.assertEqual(self.log, [("r", "ready", (connection, False))])

    def test_idleHitSynchronous(self) -> None:
        """
        An idle connection is handed over within the call, reused, without dialling; the gauges
        and reuse counter follow.
        """
        connection = self.pooled(self.a)
        self.assertEqual(self.counter("upstream_cx_idle"), 1)
        self.pool.acquire(self.a, self.requester("r"))
        self.assertEqual(self.log, [("r", "ready", (connection, True))])
        self.assertEqual(len(self.dials), 1)
        self.assertEqual((self.counter("upstream_cx_idle"), self.counter("upstream_cx_pool_reuse_total")), (0, 1))

    def test_perHost(self) -> None:
        """
        An idle connection to one host does not serve another.
        """
        self.pooled(self.a)
        self.pool.acquire(self.b, self.requester("r"))
        self.assertEqual([d[0] for d in self.dials], [self.a, self.b])

    def test_lifo(self) -> None:
        """
        The most recently released connection is handed out first.
        """
        self.pool.acquire(self.a, self.requester("1"))
        self.pool.acquire(self.a, self.requester("2"))
        first, second = self.opened(0), self.opened(1)
        self.pool.release(first, True)
        self.pool.release(second, True)
        self.pool.acquire(self.a, self.requester("r"))
        self.assertEqual(self.log[-1], ("r", "ready", (second, True)))

    def test_fresh(self) -> None:
        """
        A fresh connection is dialled even when one is idle.
        """
        self.pooled(self.a)
        self.pool.acquire(self.a, self.requester("r"), fresh=True)
        self.assertEqual(len(self.dials), 2)
        self.assertEqual(self.log, [])

    def test_dialFailed(self) -> None:
        """
        A failed dial frees its slot and tells the requester why.
        """
        self.pool.acquire(self.a, self.requester("r"))
        self.dials[0][2]("upstream_connect_failed")
        self.assertEqual(self.log, [("r", "failed", (self.a, "upstream_connect_failed"))])
        self.assertEqual(self.pool.open, 0)


class ReleaseTests(PoolTestMixin, SynchronousTestCase):
    """
    Taking connections back.
    """

    def test_notReusable(self) -> None:
        """
        A connection the exchange calls unusable is closed.
        """
        self.setUpPool()
        self.pool.acquire(self.a, self.requester("r"))
        connection = self.opened()
        self.pool.release(connection, False)
        self.assertTrue(connection.closed)
        self.assertEqual(self.pool.idle[self.a], [])

    def test_maxRequestsPerConnection(self) -> None:
        """
        A connection that has carried C{max_request_per_conn} requests is closed, not pooled.
        """
        self.setUpPool(max_request_per_conn=2)
        self.pool.acquire(self.a, self.requester("r"))
        connection = self.opened()
        self.pool.release(connection, True)
        self.assertFalse(connection.closed)
        self.pool.acquire(self.a, self.requester("r"))
        connection.requestsSent = 2
        self.pool.release(connection, True)
        self.assertTrue(connection.closed)
        self.assertEqual(self.pool.idle[self.a], [])

    def test_unhealthyHost(self) -> None:
        """
        A connection to a host that turned unhealthy is closed.
        """
        self.setUpPool()
        self.pool.acquire(self.a, self.requester("r"))
        connection = self.opened()
        self.a.healthy = False
        self.pool.release(connection, True)
        self.assertTrue(connection.closed)

    def test_lostWhileIdle(self) -> None:
        """
        An idle connection that ends leaves the pool and frees its slot.
        """
        self.setUpPool()
        connection = self.pooled(self.a)
        connection.lost(True)
        self.assertEqual((self.pool.idle[self.a], self.pool.open, self.counter("upstream_cx_idle")), ([], 0, 0))


class LimitTests(PoolTestMixin, SynchronousTestCase):
    """
    At most one connection, at most two waiting requests, each for at most 5 s.
    """

    def setUp(self) -> None:
        self.setUpPool(circuit_breakers=[{"max_connections": 1, "max_pending_requests": 2}])
        self.pool.acquire(self.a, self.requester("first"))
        self.connection = self.opened()
        del self.log[:]

    def test_waitersServedInOrder(self) -> None:
        """
        Requests over the limit wait; each release hands the connection to the oldest waiter for
        that host, as reused.
        """
        self.pool.acquire(self.a, self.requester("w1"))
        self.pool.acquire(self.a, self.requester("w2"))
        self.assertEqual((len(self.dials), self.log), (1, []))
        self.pool.release(self.connection, True)
        self.pool.release(self.connection, True)
        served = [("w1", "ready", (self.connection, True)), ("w2", "ready", (self.connection, True))]
        self.assertEqual(self.log, served)
        self.clock.advance(10)
        self.assertEqual(self.log, served)
        self.assertEqual(self.counter("upstream_cx_pool_reuse_total"), 2)

    def test_queueFull(self) -> None:
        """
        A request finding the queue full is refused at once and counted.
        """
        for name in ("w1", "w2", "w3"):
            self.pool.acquire(self.a, self.requester(name))
        self.assertEqual(self.log, [("w3", "failed", (self.a, "upstream_overflow"))])
        self.assertEqual(self.counter("upstream_rq_pending_overflow_total"), 1)

    def test_queueTimeout(self) -> None:
        """
        A waiter not served within 5 s is refused and counted; the queue then has room again.
        """
        self.pool.acquire(self.a, self.requester("w1"))
        self.clock.advance(4.875)
        self.assertEqual(self.log, [])
        self.clock.advance(0.125)
        self.assertEqual(self.log, [("w1", "failed", (self.a, "upstream_queue_timeout"))])
        self.assertEqual(self.counter("upstream_rq_pending_timeout_total"), 1)
        self.assertEqual(len(self.pool.waiters), 0)

    def test_configuredQueueTimeout(self) -> None:
        """
        The cluster's queue_timeout replaces the 5 s default.
        """
        self.setUpPool(circuit_breakers=[{"max_connections": 1}], queue_timeout="2s")
        self.pool.acquire(self.a, self.requester("first"))
        self.opened()
        del self.log[:]
        self.pool.acquire(self.a, self.requester("w1"))
        self.clock.advance(1.9)
        self.assertEqual(self.log, [])
        self.clock.advance(0.1)
        self.assertEqual(self.log, [("w1", "failed", (self.a, "upstream_queue_timeout"))])

    def test_cancel(self) -> None:
        """
        A cancelled waiter is forgotten: its timer stops and the connection goes to the pool.
        """
        w1 = self.requester("w1")
        self.pool.acquire(self.a, w1)
        self.pool.cancel(w1)
        self.pool.release(self.connection, True)
        self.clock.advance(10)
        self.assertEqual(self.log, [])
        self.assertEqual(self.pool.idle[self.a], [self.connection])

    def test_freedSlotDials(self) -> None:
        """
        A waiter for another host is served when a connection ends: the pool dials for it.
        """
        self.pool.acquire(self.b, self.requester("w1"))
        self.pool.release(self.connection, True)
        self.assertTrue(self.connection.closed)
        self.assertEqual(len(self.dials), 1)
        self.connection.lost(False)
        self.assertEqual([d[0] for d in self.dials], [self.a, self.b])
        other = self.opened()
        self.assertEqual(self.log, [("w1", "ready", (other, False))])

    def test_failedDialServesWaiter(self) -> None:
        """
        A failed dial frees the slot for the next waiter.
        """
        self.connection.lost(False)
        self.pool.acquire(self.a, self.requester("d"))
        self.pool.acquire(self.a, self.requester("w1"))
        self.dials[-1][2]("upstream_connect_failed")
        self.assertEqual(self.log, [("d", "failed", (self.a, "upstream_connect_failed"))])
        self.assertEqual(len(self.dials), 3)

    def test_idleToOtherHostMakesRoom(self) -> None:
        """
        At the limit, an idle connection to another host is closed to dial the one asked for.
        """
        self.pool.release(self.connection, True)
        self.pool.acquire(self.b, self.requester("r"))
        self.assertTrue(self.connection.closed)
        self.assertEqual([d[0] for d in self.dials], [self.a, self.b])
        self.assertEqual(self.counter("upstream_cx_idle"), 0)


class SweepTests(PoolTestMixin, SynchronousTestCase):
    """
    Idle connections are closed after the cluster's idle timeout by a periodic sweep.
    """

    def test_sweep(self) -> None:
        """
        A sweep every quarter of the idle timeout closes connections idle at least that long,
        oldest first, and keeps the others.
        """
        self.setUpPool(idle_timeout="10s")
        self.clock.advance(1)
        old = self.pooled(self.a)
        self.clock.advance(4)
        self.pool.acquire(self.a, self.requester("r"), fresh=True)
        recent = self.opened()
        self.pool.release(recent, True)
        self.clock.advance(5)
        self.assertFalse(old.closed)
        self.clock.advance(2.5)
        self.assertEqual((old.closed, recent.closed), (True, False))
        self.assertEqual(self.pool.idle[self.a], [recent])
        self.assertEqual(self.counter("upstream_cx_idle"), 1)
        old.lost(True)
        self.assertEqual((self.counter("upstream_cx_idle"), self.pool.open), (1, 1))
        self.clock.advance(2.5)
        self.assertTrue(recent.closed)

    def test_defaultIdleTimeout(self) -> None:
        """
        Without an idle timeout the pool's default of 30 s applies.
        """
        self.setUpPool()
        connection = self.pooled(self.a)
        self.clock.advance(22.5)
        self.assertFalse(connection.closed)
        self.clock.advance(7.5)
        self.assertTrue(connection.closed)

    def test_stop(self) -> None:
        """
        Stopping closes every idle connection and the sweep.
        """
        self.setUpPool()
        connection = self.pooled(self.a)
        self.pools.stop()
        self.assertTrue(connection.closed)
        self.assertEqual((self.counter("upstream_cx_idle"), self.clock.getDelayedCalls()), (0, []))


class PoolSetTests(PoolTestMixin, SynchronousTestCase):
    """
    One pool per cluster.
    """

    def test_onePerCluster(self) -> None:
        """
        The same cluster always gets the same pool, built on first use with the cluster's limits.
        """
        self.setUpPool(circuit_breakers=[{"max_connections": 7, "max_pending_requests": 3}], max_request_per_conn=9)
        self.assertIs(self.pools.get(self.cluster), self.pool)
        self.assertEqual((self.pool.maxConnections, self.pool.maxPending, self.pool.maxRequestsPerConnection),
                         (7, 3, 9))
