"""
Listeners: the factory behind each listening endpoint, the connections it tracks, and the service
that binds it.

A listener counts its connections, stops accepting at C{max_connections} (it stops reading the
listening socket, so the excess waits in the kernel backlog) and accepts again below 90 %.  On
shutdown it stops listening, lets open connections finish for up to the drain timeout, then aborts
what is left.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.accesslog import AccessLog
from meshproxy.chains import selectChain
from meshproxy.classify import Verdict
from meshproxy.config import FilterChainConfig, ListenerConfig
from meshproxy.interfaces import IDownstreamConnection, INetworkFilterFactory
from meshproxy.sniff import SniffingProtocol
from meshproxy.stats import Counter, StatsStore


def _address(address: Any) -> tuple[str, int] | None:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return (host, port)
    return None


@implementer(IDownstreamConnection)
class DownstreamConnection:
    """
    What is known about one accepted connection; shared by the sniffer and the network filter.

    When a filter chain terminates TLS, the TLS facts are filled in once the handshake completes and
    C{protocol} becomes the decrypted stream's (C{http1}, C{raw}, ...).
    """

    def __init__(self, listener: ListenerFactory, transport: Any, acceptedAt: float) -> None:
        self.listener = listener
        self.transport = transport
        self.listenerName = listener.config.name
        self.chainName = ""
        self.clientAddress = _address(transport.getPeer())
        self.localAddress = _address(transport.getHost())
        self.protocol = ""
        self.serverName: str | None = None
        self.alpn: tuple[str, ...] = ()
        self.tls = False
        self.tlsVersion: str | None = None
        self.tlsCipher: str | None = None
        self.tlsALPN: str | None = None
        self.peerCertificateSubject: str | None = None
        self.peerCertificateURIs: tuple[str, ...] = ()
        self.peerCertificateDNSNames: tuple[str, ...] = ()
        self.peerCertificateHash: str | None = None
        self.peerCertificatePEM: bytes | None = None
        self.acceptedAt = acceptedAt
        self.proxyHeader: object = None
        self.isClosed = False
        self.bytesReceived = listener.bytesReceived
        self.bytesSent = listener.bytesSent
        self.accessLog = listener.accessLog
        self.onDrain: Any = None
        #: Whether the listener drains (set with L{drainStarted}, read on every response).
        self.draining = listener.draining

    def closed(self) -> None:
        """
        Report the end of this connection to the listener (idempotent).
        """
        if not self.isClosed:
            self.isClosed = True
            self.listener.connectionClosed(self)

    def abort(self) -> None:
        """
        Drop the connection at once (drain deadline).
        """
        self.transport.abortConnection()

    def drainStarted(self) -> None:
        """
        Tell the network filter the listener is draining (an HTTP connection closes when idle).
        """
        self.draining = True
        if self.onDrain is not None:
            self.onDrain()


class FilterChainRuntime:
    """
    One filter chain of a listener with its built network filters.

    A chain of C{[proxy (fallback_for_unknown_protocol), tcp_proxy]} sends HTTP to the first and
    everything else to the second, as MOSN's fallback does.

    @ivar tls: the chain's TLS termination (a L{meshproxy.tls.ChainTLS}, built from its certificates
        by L{meshproxy.tls.loadListenerTLS}), or L{None} for a chain that does not terminate TLS.
    """

    def __init__(
        self, config: FilterChainConfig, filters: Sequence[INetworkFilterFactory], tls: Any = None
    ) -> None:
        self.config = config
        self.name = config.name
        self.match = config.match
        self.filters = tuple(filters)
        if config.tls is not None and tls is None:
            raise ValueError(f"filter chain {config.name!r} terminates TLS: build its TLS with loadListenerTLS")
        self.tls = tls

    @property
    def terminatesTLS(self) -> bool:
        """
        Whether this chain decrypts TLS (and so takes only TLS connections).
        """
        return self.tls is not None

    def acceptsProtocol(self, protocol: str) -> bool:
        """
        Whether this chain's network filters can serve a connection sniffed as C{protocol}.
        """
        return any(_filterAccepts(f, protocol) for f in self.filters)

    def buildProtocol(self, downstream: IDownstreamConnection) -> Any:
        """
        The protocol for C{downstream}: the first filter that accepts its sniffed protocol.
        """
        for f in self.filters:
            if _filterAccepts(f, downstream.protocol):
                return f.buildProtocol(downstream)
        return self.filters[0].buildProtocol(downstream)


def _filterAccepts(networkFilter: INetworkFilterFactory, protocol: str) -> bool:
    accepts = getattr(networkFilter, "acceptsProtocol", None)
    return True if accepts is None else bool(accepts(protocol))


class ListenerFactory(Factory):
    """
    Builds a L{SniffingProtocol} per accepted connection and keeps the listener's books.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        config: ListenerConfig,
        chains: Sequence[FilterChainRuntime],
        clock: IReactorTime,
        stats: StatsStore,
        accessLog: AccessLog | None = None,
    ) -> None:
        self.config = config
        self.chains = tuple(chains)
        self.accessLog = accessLog if accessLog is not None else AccessLog([])
        self.clock = clock
        self.port: Any = None
        self.draining = False
        self.connections: set[DownstreamConnection] = set()
        self._acceptPaused = False
        self._drained: defer.Deferred[None] | None = None
        self._stats = stats
        self._verdicts: dict[str, Counter] = {}
        labels = {"listener": config.name}
        self.connectionsTotal = stats.counter("downstream_cx_total", "Connections accepted.", **labels)
        self.connectionsActive = stats.gauge("downstream_cx_active", "Connections open now.", **labels)
        self.bytesReceived = stats.counter("downstream_cx_rx_bytes_total", "Bytes received from clients.", **labels)
        self.bytesSent = stats.counter("downstream_cx_tx_bytes_total", "Bytes sent to clients.", **labels)
        self.sniffTimeouts = stats.counter(
            "sniff_timeout_total", "Connections whose sniff deadline passed before a verdict.", **labels
        )
        self.noChain = stats.counter("sniff_no_chain_total", "Connections no filter chain could take.", **labels)
        self.acceptPauses = stats.counter(
            "downstream_cx_overflow_total", "Times accepting paused at max_connections.", **labels
        )

    def buildProtocol(self, addr: Any) -> SniffingProtocol:
        return SniffingProtocol(self)

    # -- connection books ----------------------------------------------------------------------

    def connectionOpened(self, transport: Any) -> DownstreamConnection:
        """
        Record a new connection; pause accepting if the listener is now full.
        """
        downstream = DownstreamConnection(self, transport, self.clock.seconds())
        self.connections.add(downstream)
        self.connectionsTotal.value += 1
        self.connectionsActive.value += 1
        if len(self.connections) >= self.config.maxConnections and self.port is not None and not self._acceptPaused:
            stopReading = getattr(self.port, "stopReading", None)
            if stopReading is not None:
                self._acceptPaused = True
                self.acceptPauses.inc()
                stopReading()
        return downstream

    def connectionClosed(self, downstream: DownstreamConnection) -> None:
        """
        Forget a finished connection; resume accepting below 90 % of the limit.
        """
        self.connections.discard(downstream)
        self.connectionsActive.value -= 1
        if self._acceptPaused and len(self.connections) < 0.9 * self.config.maxConnections:
            self._acceptPaused = False
            if not self.draining:
                self.port.startReading()
        if self._drained is not None and not self.connections:
            drained, self._drained = self._drained, None
            drained.callback(None)

    # -- sniff outcomes --------------------------------------------------------------------------

    def chooseChain(self, verdict: Verdict, downstream: DownstreamConnection) -> FilterChainRuntime | None:
        """
        Count the verdict and pick the chain for it; count and log when none fits.
        """
        counter = self._verdicts.get(verdict.protocol)
        if counter is None:
            counter = self._verdicts[verdict.protocol] = self._stats.counter(
                "sniff_verdict_total", "Sniff verdicts by detected protocol.", listener=self.config.name,
                protocol=verdict.protocol,
            )
        counter.value += 1
        downstream.protocol = verdict.protocol
        downstream.serverName = verdict.serverName
        downstream.alpn = verdict.alpn
        chain = selectChain(self.chains, verdict)
        if chain is None:
            self.noChain.inc()
            self.log.info(
                "listener {listener}: no filter chain for {protocol} connection from {client} "
                "(sni={sni}, alpn={alpn}, {why})",
                listener=self.config.name, protocol=verdict.protocol, client=downstream.clientAddress,
                sni=verdict.serverName, alpn=",".join(verdict.alpn), why=verdict.reason,
            )
            return None
        downstream.chainName = chain.name
        return chain

    def rejected(self, counter: str, reason: str, downstream: DownstreamConnection | None) -> None:
        """
        Count and log a connection refused before the hand-off (bad PROXY header and the like).
        """
        self._stats.counter(
            counter + "_total", "Connections refused while sniffing, by cause.", listener=self.config.name
        ).inc()
        self.log.info(
            "listener {listener}: refused connection from {client}: {reason}",
            listener=self.config.name,
            client=None if downstream is None else downstream.clientAddress,
            reason=reason,
        )

    # -- shutdown --------------------------------------------------------------------------------

    def drain(self, timeout: float) -> defer.Deferred[None]:
        """
        Fire once every connection has ended, or abort the rest after C{timeout} seconds.
        """
        self.draining = True
        for downstream in list(self.connections):
            downstream.drainStarted()
        if not self.connections:
            return defer.succeed(None)
        drained: defer.Deferred[None] = defer.Deferred()
        self._drained = drained
        self.log.info(
            "listener {listener}: draining {count} connections for up to {timeout}s",
            listener=self.config.name, count=len(self.connections), timeout=timeout,
        )

        def deadline() -> None:
            if self._drained is None:
                return
            self.log.info(
                "listener {listener}: drain timeout, aborting {count} connections",
                listener=self.config.name, count=len(self.connections),
            )
            for downstream in list(self.connections):
                downstream.abort()

        call = self.clock.callLater(timeout, deadline)

        def done(result: None) -> None:
            if call.active():
                call.cancel()

        drained.addCallback(done)
        return drained


class ListenerBindError(Exception):
    """
    A listener's endpoint could not be bound; the message names the listener and the endpoint.
    """


class ListenerService(StreamServerEndpointService):
    """
    Binds one listener's endpoint (in C{privilegedStartService}, so ports below 1024 work before
    twistd drops privileges) and drains it on stop.
    """

    _raiseSynchronously = True

    def __init__(self, config: ListenerConfig, endpoint: Any, factory: ListenerFactory) -> None:
        super().__init__(endpoint, factory)
        self.config = config
        self.listenerFactory = factory
        self.bound = False
        self._held = False
        self.setName("listener:" + config.name)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            raise ListenerBindError(
                f"listener {self.config.name!r} could not listen on {self.config.endpoint!r}: {e}"
            ) from e
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: Any) -> Any:
        self.bound = True
        self.listenerFactory.port = port
        if self._held:
            port.stopReading()
        return port

    def holdAccepting(self) -> None:
        """
        Bind, but leave new connections in the listen backlog until L{releaseAccepting}.
        """
        self._held = True
        port = self.listenerFactory.port
        if port is not None:
            port.stopReading()

    def releaseAccepting(self) -> None:
        """
        Start accepting (unless the listener is full or draining, which resume by themselves).
        """
        self._held = False
        factory = self.listenerFactory
        if factory.port is not None and not factory._acceptPaused and not factory.draining:
            factory.port.startReading()

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop accepting, then wait for open connections up to the drain timeout.
        """
        stopped = super().stopService()
        self.bound = False
        stopped.addCallback(lambda _: self.listenerFactory.drain(self.config.drainTimeout))
        return stopped
