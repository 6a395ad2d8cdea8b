"""
Per-host pools of keep-alive upstream HTTP/1.1 connections for one cluster.

The hot path is synchronous: a request that finds an idle connection gets it in the same call,
with no Deferred and no timer.  Limits come from the cluster's circuit breakers: at most
C{max_connections} open (idle, busy or connecting) across the cluster, and at most
C{max_pending_requests} requests waiting for a connection, each for at most the queue timeout
(then 503).  Idle connections are closed after the cluster's C{idle_timeout} by one coarse sweep
per cluster, not one timer per connection.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from meshproxy.cluster.cluster import Cluster, UpstreamHost
from meshproxy.stats import StatsStore

DEFAULT_POOL_IDLE_TIMEOUT = 30.0


class PooledConnection(Protocol):
    """
    What the pool needs of an upstream connection.
    """

    host: UpstreamHost
    idleSince: float
    requestsSent: int

    def close(self) -> None: ...


class Requester(Protocol):
    """
    Who asked for a connection: told exactly once, synchronously or later.
    """

    def connectionReady(self, connection: Any, reused: bool) -> None: ...

    def connectionFailed(self, host: UpstreamHost | None, reason: str) -> None: ...


class _Waiter:
    __slots__ = ("requester", "host", "timer")

    def __init__(self, requester: Requester, host: UpstreamHost) -> None:
        self.requester = requester
        self.host = host
        self.timer: IDelayedCall | None = None

    def cancel(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


class ClusterPool:
    """
    The connection pools of one cluster.

    C{connect(pool, host, ready, failed)} is given by the owner: it dials C{host} and calls
    C{ready(conn)} or C{failed(reason)}; the pool only counts and hands out.
    """

    log = Logger()

    def __init__(
        self,
        cluster: Cluster,
        clock: IReactorTime,
        stats: StatsStore,
        connect: Callable[[ClusterPool, UpstreamHost, Callable[[Any], None], Callable[[str], None]], None],
    ) -> None:
        self.cluster = cluster
        self.clock = clock
        self._connect = connect
        breakers = cluster.config.circuitBreakers
        self.maxConnections = breakers.maxConnections
        self.maxPending = breakers.maxPendingRequests
        self.maxRequestsPerConnection = cluster.config.maxRequestPerConn
        self.idleTimeout = cluster.config.idleTimeout or DEFAULT_POOL_IDLE_TIMEOUT
        self.queueTimeout = cluster.config.queueTimeout
        self.idle: dict[UpstreamHost, list[Any]] = {h: [] for h in cluster.hosts}
        cluster.onHostsRemoved(self._hostsRemoved)
        self.open = 0  # connected (idle or busy) plus connecting
        self.waiters: deque[_Waiter] = deque()
        self.stopped = False
        labels = {"cluster": cluster.name}
        self.reused = stats.counter("upstream_cx_pool_reuse_total", "Requests sent on a reused pooled connection.", **labels)
        self.overflow = stats.counter(
            "upstream_rq_pending_overflow_total", "Requests refused because the pool's wait queue was full.", **labels
        )
        self.queueTimeouts = stats.counter(
            "upstream_rq_pending_timeout_total", "Requests that waited too long for a pooled connection.", **labels
        )
        self.idleGauge = stats.gauge("upstream_cx_idle", "Idle pooled upstream connections.", **labels)
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock
        self._sweeper.start(max(self.idleTimeout / 4, 0.5), now=False)

    def stop(self) -> None:
        """
        Stop sweeping and close every idle connection (the cluster is being removed); connections
        still busy are closed when their exchange ends.
        """
        self.stopped = True
        if self._sweeper.running:
            self._sweeper.stop()
        for connections in self.idle.values():
            while connections:
                connections.pop().close()
        self.idleGauge.value = 0

    def acquire(self, host: UpstreamHost, requester: Requester, fresh: bool = False) -> None:
        """
        Give C{requester} a connection to C{host}: an idle one now (unless C{fresh}), a new one
        when dialled, or one that frees up while it waits in the bounded queue.
        """
        idle = self.idle.get(host)
        if idle and not fresh:
            connection = idle.pop()  # most recently used: the warmest, least likely stale
            self.idleGauge.value -= 1
            self.reused.value += 1
            requester.connectionReady(connection, True)
            return
        if self.open < self.maxConnections:
            self._dial(host, requester)
            return
        # At the limit: close an idle connection to another host to make room, else wait.
        for other, connections in self.idle.items():
            if connections:
                connections.pop(0).close()
                self.idleGauge.value -= 1
                self._dial(host, requester)
                return
        if len(self.waiters) >= self.maxPending:
            self.overflow.inc()
            requester.connectionFailed(host, "upstream_overflow")
            return
        waiter = _Waiter(requester, host)
        waiter.timer = self.clock.callLater(self.queueTimeout, self._waitTimedOut, waiter)
        self.waiters.append(waiter)

    def _dial(self, host: UpstreamHost, requester: Requester) -> None:
        self.open += 1

        def ready(connection: Any) -> None:
            requester.connectionReady(connection, False)

        def failed(reason: str) -> None:
            self.open -= 1
            requester.connectionFailed(host, reason)
            self._serveWaiter()

        self._connect(self, host, ready, failed)

    def cancel(self, requester: Requester) -> None:
        """
        Forget a waiting C{requester} (its client went away).
        """
        for waiter in self.waiters:
            if waiter.requester is requester:
                self.waiters.remove(waiter)
                waiter.cancel()
                return

    def _waitTimedOut(self, waiter: _Waiter) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return
        self.queueTimeouts.inc()
        waiter.requester.connectionFailed(waiter.host, "upstream_queue_timeout")

    def _serveWaiter(self) -> bool:
        """
        A slot freed up: dial for the oldest waiter (the room is counted in L{open}).
        """
        if not self.waiters or self.open >= self.maxConnections:
            return False
        waiter = self.waiters.popleft()
        waiter.cancel()
        self._dial(waiter.host, waiter.requester)
        return True

    def release(self, connection: Any, reusable: bool) -> None:
        """
        A request on C{connection} finished: keep it for reuse, hand it to a waiter for the same
        host, or close it.
        """
        if (
            reusable
            and not self.stopped
            and connection.requestsSent < self.maxRequestsPerConnection
            and connection.host.healthy
        ):
            for waiter in self.waiters:
                if waiter.host is connection.host:
                    self.waiters.remove(waiter)
                    waiter.cancel()
                    self.reused.value += 1
                    waiter.requester.connectionReady(connection, True)
                    return
            if not self.waiters:
                connection.idleSince = self.clock.seconds()
                idle = self.idle.get(connection.host)
                if idle is None:
                    idle = self.idle[connection.host] = []  # a host added at run time (DNS)
                idle.append(connection)
                self.idleGauge.value += 1
                return
        connection.close()

    def connectionLost(self, connection: Any, wasIdle: bool) -> None:
        """
        An open connection ended (closed by us, by the host, or broken).
        """
        self.open -= 1
        if wasIdle:
            connections = self.idle.get(connection.host)
            if connections is not None and connection in connections:
                connections.remove(connection)
                self.idleGauge.value -= 1
        self._serveWaiter()

    def _hostsRemoved(self, removed: list[UpstreamHost]) -> None:
        """
        Hosts left the cluster: close their idle connections and forget them (busy ones close when
        their exchange ends, since a removed host is never handed out again).
        """
        for host in removed:
            for connection in self.idle.pop(host, []):
                self.idleGauge.value -= 1
                connection.close()

    def _sweep(self) -> None:
        deadline = self.clock.seconds() - self.idleTimeout
        for connections in self.idle.values():
            while connections and connections[0].idleSince <= deadline:
                connections.pop(0).close()
                self.idleGauge.value -= 1


class PoolSet:
    """
    One L{ClusterPool} per cluster, built on first use.
    """

    def __init__(self, clock: IReactorTime, connect: Any) -> None:
        self._clock = clock
        self._connect = connect
        self._pools: dict[str, ClusterPool] = {}

    def get(self, cluster: Cluster) -> ClusterPool:
        """
        The pool of C{cluster} (its counters go where the cluster's own do).
        """
        pool = self._pools.get(cluster.name)
        if pool is None:
            pool = self._pools[cluster.name] = ClusterPool(cluster, self._clock, cluster.stats, self._connect)
        return pool

    def remove(self, name: str) -> None:
        """
        Stop and forget the pool of the cluster called C{name} (a registry route that went away).
        """
        pool = self._pools.pop(name, None)
        if pool is not None:
            pool.stop()

    def stop(self) -> None:
        """
        Stop every pool.
        """
        for pool in self._pools.values():
            pool.stop()
