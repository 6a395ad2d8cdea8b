"""
The C{tcp_proxy} network filter: an L4 relay between a client and one upstream host.

Both directions stream with backpressure: each transport is registered as the other's streaming
producer and its write-buffer high watermark is the cluster's C{conn_buffer_limit_bytes}, so a
slow reader pauses the fast writer and memory stays bounded by two buffers per session.  Half-close
is relayed both ways (a client that sends FIN can still read the answer), and an idle timer ends
sessions in which no byte moved for C{idle_timeout}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.accesslog import formatAddress, responseFlag, startTime
from meshproxy.cluster.cluster import Cluster, ClusterSet, UpstreamHost
from meshproxy.config import TCPProxyConfig
from meshproxy.interfaces import IDownstreamConnection, INetworkFilterFactory
from meshproxy.proxy.directwrite import setNoDelay
from meshproxy.routing.hashpolicy import hash64
from meshproxy.routing.tcp import selectTCPCluster
from meshproxy.stats import StatsStore

accessLog = Logger(namespace="meshproxy.access")



@implementer(INetworkFilterFactory)
class TCPProxyFilter:
    """
    Builds a L{TCPProxySession} for each connection that reaches a C{tcp_proxy} filter chain.
    """

    name = "tcp_proxy"

    def __init__(self, config: TCPProxyConfig, clusters: ClusterSet, clock: IReactorTime, stats: StatsStore) -> None:
        self.config = config
        self.clusters = clusters
        self.clock = clock
        self.noRoute = stats.counter("tcp_proxy_no_route_total", "Sessions that matched no tcp_proxy route.")

    def buildProtocol(self, downstream: IDownstreamConnection) -> TCPProxySession:
        """
        A new relay session for C{downstream}.
        """
        return TCPProxySession(self, downstream)


@implementer(IHalfCloseableProtocol)
class TCPProxySession(Protocol):
    """
    The downstream half of one relayed session; owns the L{UpstreamProtocol}.

    States:
      - CONNECTING: the client's reads are paused and its bytes (at most the sniffed prefix plus
        one read) wait in C{_pending} while hosts are tried, up to C{max_connect_attempts}.
      - RELAYING: bytes flow both ways; FINs are forwarded; the idle timer runs.
      - CLOSED: the client connection is gone; the upstream one is closing or closed.
    The access-log event is emitted once both connections have ended.
    """

    CONNECTING, RELAYING, CLOSED = "CONNECTING", "RELAYING", "CLOSED"

    def __init__(self, filter: TCPProxyFilter, downstream: IDownstreamConnection) -> None:
        self.filter = filter
        self.downstream = downstream
        self.state = self.CONNECTING
        self.cluster: Cluster | None = None
        self.host: UpstreamHost | None = None
        self.upstream: UpstreamProtocol | None = None
        self.bytesIn = 0
        self.bytesOut = 0
        self.closeReason: str | None = None
        self._pending: list[bytes] = []
        self._tried: list[UpstreamHost] = []
        self._connector: Any = None
        self._downstreamEOF = False
        self._upstreamEOF = False
        self._downstreamDone = False
        self._upstreamDone = True  # until an upstream connection exists
        self._clock = filter.clock
        self._seconds: Callable[[], float] = filter.clock.seconds
        self.lastActivity = 0.0
        self._idleTimer: IDelayedCall | None = None
        self._closeTimer: IDelayedCall | None = None
        self._logged = False
        self._rx = downstream.bytesReceived
        self.tx = downstream.bytesSent
        self._admitted = False
        self._hostActive = False

    # -- downstream (client) side --------------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]
        setNoDelay(self.transport)
        config = self.filter.config
        name = selectTCPCluster(config, self.downstream.clientAddress, self.downstream.localAddress)
        if name is None:
            self.filter.noRoute.inc()
            self._fail("no_route")
            return
        cluster = self.cluster = self.filter.clusters.get(name)
        if not cluster.admitRequest():
            self._fail("upstream_overflow")
            return
        self._admitted = True
        self._attempt()

    def dataReceived(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None:
            self._pending.append(data)
            return
        size = len(data)
        self.bytesIn += size
        self._rx.value += size
        self.cluster.bytesSent.value += size  # type: ignore[union-attr]
        self.lastActivity = self._seconds()
        upstream.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        """
        The client sent FIN: forward it upstream, keep relaying the other direction.
        """
        self._downstreamEOF = True
        if self.upstream is not None:
            self.upstream.transport.loseWriteConnection()  # type: ignore[union-attr]
            if self._upstreamEOF:
                self._closeBoth("closed")

    def writeConnectionLost(self) -> None:
        """
        Our FIN to the client went out; nothing more to do until the client closes too.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.state = self.CLOSED
        self._downstreamDone = True
        self._cancelIdle()
        if self.closeReason is None:
            self.closeReason = "downstream_close"
        if self._connector is not None:
            self._connector.stopConnecting()
            self._connector = None
        if self.upstream is not None and not self._upstreamDone:
            self.upstream.transport.loseConnection()  # type: ignore[union-attr]
            self._armCloseTimer()
        if self._admitted:
            self._admitted = False
            self.cluster.requestDone()  # type: ignore[union-attr]
        self.downstream.closed()
        self._maybeLog()

    # -- connecting --------------------------------------------------------------------------------

    def _attempt(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        key = None
        if cluster.config.lbType == "LB_MAGLEV" and self.downstream.clientAddress is not None:
            key = hash64(self.downstream.clientAddress[0].encode())  # source-IP affinity, as Envoy's tcp_proxy
        host = cluster.chooseHost(self._tried, key)
        if host is None:
            self._fail("no_healthy_host" if not self._tried else "connect_failed")
            return
        self._tried.append(host)
        self._connector = cluster.connect(host, _UpstreamFactory(self, host))

    def upstreamConnected(self, upstream: UpstreamProtocol) -> None:
        """
        The upstream connection is up: start relaying (or drop it if the client already left).
        """
        self._connector = None
        assert self.cluster is not None
        host = upstream.host
        self.cluster.connectionOpened(host)
        self.cluster.hostSucceeded(host)
        self._upstreamDone = False
        if self.state == self.CLOSED:
            upstream.transport.loseConnection()  # type: ignore[union-attr]
            return
        host.activeRequests += 1
        host.requestsTotal.value += 1
        self._hostActive = True
        self.state = self.RELAYING
        self.upstream = upstream
        self.host = upstream.host
        up, down = upstream.transport, self.transport
        setNoDelay(up)
        limit = self.cluster.bufferLimit
        up.bufferSize = limit  # type: ignore[union-attr]
        down.bufferSize = limit  # type: ignore[union-attr]
        # Each side's writes pause the other side's reads when its buffer passes the watermark.
        up.registerProducer(down, True)  # type: ignore[union-attr]
        down.registerProducer(up, True)  # type: ignore[union-attr]
        pending, self._pending = self._pending, []
        for chunk in pending:
            self.dataReceived(chunk)
        if self._downstreamEOF:
            up.loseWriteConnection()  # type: ignore[union-attr]
        else:
            down.resumeProducing()  # type: ignore[union-attr]
        self.lastActivity = self._seconds()
        self._armIdle(self.filter.config.idleTimeout)

    def upstreamConnectFailed(self, host: UpstreamHost, reason: Failure) -> None:
        """
        One attempt failed: try another host while attempts remain, else close the client.
        """
        self._connector = None
        assert self.cluster is not None
        self.cluster.connectFailed(host)
        if self.state == self.CLOSED:
            return
        if len(self._tried) < self.filter.config.maxConnectAttempts:
            self._attempt()
        else:
            self._fail("connect_failed")

    def _fail(self, reason: str) -> None:
        self.closeReason = reason
        self.transport.loseConnection()  # type: ignore[union-attr]

    # -- upstream side -----------------------------------------------------------------------------

    def upstreamEOF(self) -> None:
        """
        The upstream sent FIN: forward it to the client.
        """
        self._upstreamEOF = True
        if self.state == self.RELAYING:
            self.transport.loseWriteConnection()  # type: ignore[union-attr]
            if self._downstreamEOF:
                self._closeBoth("closed")

    def upstreamLost(self, upstream: UpstreamProtocol) -> None:
        """
        The upstream connection ended: close the client once what it was sent has been flushed.
        """
        assert self.cluster is not None
        self.cluster.connectionClosed(upstream.host)
        if self._hostActive:
            self._hostActive = False
            upstream.host.activeRequests -= 1
        self._upstreamDone = True
        if self.closeReason is None:
            self.closeReason = "upstream_close"
        if self.state != self.CLOSED:
            self.transport.loseConnection()  # type: ignore[union-attr]
            self._armCloseTimer()
        self._maybeLog()

    # -- timers and teardown -----------------------------------------------------------------------

    def _armIdle(self, timeout: float | None) -> None:
        if timeout is not None:
            self._idleTimer = self._clock.callLater(timeout, self._idleCheck)

    def _idleCheck(self) -> None:
        timeout = self.filter.config.idleTimeout
        assert timeout is not None
        self._idleTimer = None
        remaining = self.lastActivity + timeout - self._seconds()
        if remaining > 0:
            self._idleTimer = self._clock.callLater(remaining, self._idleCheck)
            return
        self.closeReason = "idle_timeout"
        self._closeBoth("idle_timeout")

    def _cancelIdle(self) -> None:
        if self._idleTimer is not None:
            self._idleTimer.cancel()
            self._idleTimer = None

    def abort(self, reason: str) -> None:
        """
        End the session now, discarding buffered bytes (idle timeout, drain deadline).
        """
        if self.closeReason is None or self.closeReason in ("closed",):
            self.closeReason = reason
        self._cancelIdle()
        if self.upstream is not None:
            self.upstream.transport.abortConnection()  # type: ignore[union-attr]
        if self.state != self.CLOSED:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def _closeBoth(self, reason: str) -> None:
        if self.closeReason is None:
            self.closeReason = reason
        self.transport.loseConnection()  # type: ignore[union-attr]
        if self.upstream is not None:
            self.upstream.transport.loseConnection()  # type: ignore[union-attr]
        self._armCloseTimer()

    def _armCloseTimer(self) -> None:
        """
        A graceful close flushes first; a peer that never reads would keep it open for ever, so
        abort whatever is still open after the filter's C{delayed_close_timeout} (default 1 s).
        """
        if self._closeTimer is None:
            self._closeTimer = self._clock.callLater(
                self.filter.config.delayedCloseTimeout, self._closeTimedOut
            )

    def _closeTimedOut(self) -> None:
        self._closeTimer = None
        if self.upstream is not None and not self._upstreamDone:
            self.upstream.transport.abortConnection()  # type: ignore[union-attr]
        if self.state != self.CLOSED:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def _maybeLog(self) -> None:
        if self._logged or not (self._downstreamDone and self._upstreamDone):
            return
        self._logged = True
        d = self.downstream
        if d.accessLog:
            now = self._seconds()
            d.accessLog.record({
                "start_time": startTime(d.acceptedAt),
                "duration": round((now - d.acceptedAt) * 1000, 3),
                "bytes_received": self.bytesIn,
                "bytes_sent": self.bytesOut,
                "protocol": "tcp",
                "response_flag": responseFlag(
                    "" if self.closeReason in (None, "closed", "downstream_close", "upstream_close")
                    else str(self.closeReason)
                ),
                "downstream_remote_address": formatAddress(d.clientAddress),
                "downstream_local_address": formatAddress(d.localAddress),
                "upstream_host": self.host.address if self.host is not None else None,
                "upstream_cluster": self.cluster.name if self.cluster is not None else None,
                "listener_name": d.listenerName,
                "close_reason": self.closeReason,
            })
        if self._closeTimer is not None:
            self._closeTimer.cancel()
            self._closeTimer = None
        d = self.downstream
        accessLog.info(
            "tcp {client} {listener}/{chain} -> {cluster}/{upstreamHost} "
            "in={bytesIn} out={bytesOut} {duration:.3f}s {reason}",
            client=formatAddress(d.clientAddress) or "-",
            listener=d.listenerName,
            chain=d.chainName,
            cluster=self.cluster.name if self.cluster is not None else "-",
            upstreamHost=self.host.address if self.host is not None else "-",
            bytesIn=self.bytesIn,
            bytesOut=self.bytesOut,
            duration=self._seconds() - d.acceptedAt,
            reason=self.closeReason,
            attempts=len(self._tried),
        )


@implementer(IHalfCloseableProtocol)
class UpstreamProtocol(Protocol):
    """
    The upstream half of a relayed session: writes what the host sends straight to the client.
    """

    def __init__(self, session: TCPProxySession, host: UpstreamHost) -> None:
        self.session = session
        self.host = host

    def connectionMade(self) -> None:
        self.session.upstreamConnected(self)
        session = self.session
        if session.state == session.RELAYING:
            self._peerWrite = session.transport.write  # type: ignore[union-attr]
            self._counter = session.cluster.bytesReceived  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        size = len(data)
        session.bytesOut += size
        self._counter.value += size
        session.tx.value += size
        session.lastActivity = session._seconds()
        self._peerWrite(data)

    def readConnectionLost(self) -> None:
        self.session.upstreamEOF()

    def writeConnectionLost(self) -> None:
        """
        Our FIN to the upstream went out.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.session.upstreamLost(self)


class _UpstreamFactory(ClientFactory):
    """
    One connection attempt to one host for one session.
    """

    noisy = False

    def __init__(self, session: TCPProxySession, host: UpstreamHost) -> None:
        self.session = session
        self.host = host

    def buildProtocol(self, addr: object) -> UpstreamProtocol:
        return UpstreamProtocol(self.session, self.host)

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.session.upstreamConnectFailed(self.host, reason)

