"""
Tests for L{meshproxy.proxy.tcp}: the L4 relay's state machine on a memory reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.cluster.cluster import ClusterSet
from meshproxy.interfaces import INetworkFilterFactory
from meshproxy.listeners import ListenerFactory
from meshproxy.proxy import tcp
from meshproxy.proxy.tcp import TCPProxyFilter
from meshproxy.stats import StatsStore
from tests.support import HalfCloseTransport, makeConfig, tcpListener


class RelayTestMixin:
    """
    Builds a relay session on a memory reactor with a two-host cluster.
    """

    def setUpRelay(self, **tcpProxy: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.stats = StatsStore()
        self.config = makeConfig(listeners=[tcpListener(tcp_proxy=tcpProxy)])
        listenerConfig = self.config.listeners[0]
        self.clusters = ClusterSet.fromConfig(self.config, self.reactor, self.stats)
        self.filter = TCPProxyFilter(listenerConfig.filterChains[0].filters[0], self.clusters, self.reactor, self.stats)
        self.listener = ListenerFactory(listenerConfig, [], self.reactor, self.stats)
        self.events: list[dict[str, Any]] = []
        self.patch(tcp, "accessLog", Logger(namespace="test", observer=self.events.append))
        self.client = HalfCloseTransport()
        self.downstream = self.listener.connectionOpened(self.client)
        self.session = self.filter.buildProtocol(self.downstream)
        self.client.protocol = self.session
        self.session.makeConnection(self.client)

    def connectUpstream(self, index: int = -1) -> tuple[Any, HalfCloseTransport]:
        """
        Complete the pending connection attempt number C{index}.
        """
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        upstream = factory.buildProtocol(None)
        transport = HalfCloseTransport("127.0.0.1", port)
        transport.protocol = upstream
        upstream.makeConnection(transport)
        return upstream, transport

    def failAttempt(self, index: int = -1, exc: Exception | None = None) -> None:
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(self.reactor.connectors[index], Failure(exc or ConnectionRefusedError()))


class TCPProxyFilterTests(RelayTestMixin, SynchronousTestCase):
    """
    The relay from connect to close.
    """

    def setUp(self) -> None:
        self.setUpRelay()

    def test_interface(self) -> None:
        """
        The filter provides L{INetworkFilterFactory}.
        """
        self.assertTrue(verifyObject(INetworkFilterFactory, self.filter))

    def test_connectsWhileClientPaused(self) -> None:
        """
        The client is paused while the first host is dialled with the cluster's connect timeout;
        bytes that arrive meanwhile wait and are sent first once connected.
        """
        self.assertEqual(self.client.producerState, "paused")
        host, port, _, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 9001, 5.0))
        self.session.dataReceived(b"early ")
        upstream, upT = self.connectUpstream()
        self.assertEqual(upT.value(), b"early ")
        self.assertEqual(self.client.producerState, "producing")
        self.client.deliver(b"later")
        self.assertEqual(upT.value(), b"early later")

    def test_backpressureWiring(self) -> None:
        """
        Each transport is the other's streaming producer, with the cluster's buffer limit as the
        high watermark.
        """
        upstream, upT = self.connectUpstream()
        self.assertIs(upT.producer, self.client)
        self.assertIs(self.client.producer, upT)
        self.assertTrue(upT.streaming and self.client.streaming)
        self.assertEqual((upT.bufferSize, self.client.bufferSize), (65536, 65536))

    def test_relaysBothWaysAndCounts(self) -> None:
        """
        Bytes flow both ways and are counted per listener and per cluster.
        """
        upstream, upT = self.connectUpstream()
        self.client.deliver(b"ping")
        upT.deliver(b"pong!")
        self.assertEqual((upT.value(), self.client.value()), (b"ping", b"pong!"))
        self.assertEqual(self.stats.value("downstream_cx_rx_bytes_total", listener="l1"), 4)
        self.assertEqual(self.stats.value("downstream_cx_tx_bytes_total", listener="l1"), 5)
        self.assertEqual(self.stats.value("upstream_cx_tx_bytes_total", cluster="backend"), 4)
        self.assertEqual(self.stats.value("upstream_cx_rx_bytes_total", cluster="backend"), 5)
        self.assertEqual(self.stats.value("upstream_cx_active", cluster="backend"), 1)

    def test_halfCloseFromClient(self) -> None:
        """
        A client FIN is forwarded upstream and the answer still reaches the client; the
        upstream's FIN then ends the session.
        """
        upstream, upT = self.connectUpstream()
        self.client.deliverEOF()
        self.assertTrue(upT.writeClosed)
        self.assertFalse(self.client.disconnecting)
        upT.deliver(b"answer")
        self.assertEqual(self.client.value(), b"answer")
        upT.deliverEOF()
        self.assertTrue(self.client.disconnecting)
        self.assertTrue(upT.disconnecting)

    def test_halfCloseFromUpstream(self) -> None:
        """
        An upstream FIN is forwarded to the client, who may go on sending.
        """
        upstream, upT = self.connectUpstream()
        upT.deliverEOF()
        self.assertTrue(self.client.writeClosed)
        self.assertFalse(upT.disconnecting)
        self.client.deliver(b"more")
        self.assertEqual(upT.value(), b"more")

    def test_clientFINBeforeConnect(self) -> None:
        """
        A FIN that arrives while connecting is forwarded right after the queued bytes.
        """
        self.session.dataReceived(b"all of it")
        self.session.readConnectionLost()
        upstream, upT = self.connectUpstream()
        self.assertEqual(upT.value(), b"all of it")
        self.assertTrue(upT.writeClosed)

    def test_connectFailureTriesNextHost(self) -> None:
        """
        A refused connection is retried on the next host, and counted on the first.
        """
        self.failAttempt(0)
        self.assertEqual(self.reactor.tcpClients[1][:2], ("127.0.0.1", 9002))
        self.assertEqual(self.stats.value("upstream_host_cx_connect_fail_total", cluster="backend",
                                          host="127.0.0.1:9001"), 1)
        upstream, upT = self.connectUpstream(1)
        self.assertIs(self.session.host, upstream.host)

    def test_allHostsFail(self) -> None:
        """
        When every host has failed the client is closed and the access log says why.
        """
        self.failAttempt(0)
        self.failAttempt(1, TimeoutError())
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertTrue(self.client.disconnecting)
        self.session.connectionLost(Failure(ConnectionDone()))
        [event] = self.events
        self.assertEqual(event["reason"], "connect_failed")
        self.assertEqual(event["attempts"], 2)
        self.assertEqual(self.stats.value("upstream_cx_connect_fail_total", cluster="backend"), 2)

    def test_clientLeavesWhileConnecting(self) -> None:
        """
        A client that disconnects while a host is being dialled stops the attempt.
        """
        self.session.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.stats.value("downstream_cx_active", listener="l1"), 0)

    def test_lateConnectAfterClientLeft(self) -> None:
        """
        An upstream connection completing after the client left is closed at once.
        """
        factory = self.reactor.tcpClients[0][2]
        self.session.connectionLost(Failure(ConnectionDone()))
        upstream = factory.buildProtocol(None)
        upT = HalfCloseTransport()
        upstream.makeConnection(upT)
        self.assertTrue(upT.disconnecting)

    def test_accessLog(self) -> None:
        """
        One access-log event per session, after both sides closed, with bytes and duration.
        """
        upstream, upT = self.connectUpstream()
        self.client.deliver(b"abc")
        upT.deliver(b"de")
        self.reactor.advance(2.5)
        upstream.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.events, [])
        self.session.connectionLost(Failure(ConnectionDone()))
        [event] = self.events
        self.assertEqual(
            {k: event[k] for k in ("client", "listener", "cluster", "upstreamHost", "bytesIn", "bytesOut",
                                   "duration", "reason")},
            {"client": "10.0.0.1:40000", "listener": "l1", "cluster": "backend",
             "upstreamHost": "127.0.0.1:9001", "bytesIn": 3, "bytesOut": 2, "duration": 2.5,
             "reason": "upstream_close"},
        )
        self.assertEqual(self.stats.value("upstream_cx_active", cluster="backend"), 0)


class IdleTimeoutTests(RelayTestMixin, SynchronousTestCase):
    """
    The idle timer, on the memory reactor's clock.
    """

    def test_idleSessionClosed(self) -> None:
        """
        With no bytes either way for idle_timeout, both connections are closed gracefully; what
        has not closed a second later (a peer that does not read) is aborted.
        """
        self.setUpRelay(idle_timeout=10_000_000_000)  # MOSN: integer nanoseconds
        upstream, upT = self.connectUpstream()
        self.reactor.advance(9.9)
        self.assertFalse(self.client.disconnecting)
        self.reactor.advance(0.2)
        self.assertTrue(self.client.disconnecting and upT.disconnecting)
        self.assertFalse(self.client.aborted or upT.aborted)
        self.assertEqual(self.session.closeReason, "idle_timeout")
        self.reactor.advance(1)
        self.assertTrue(self.client.aborted and upT.aborted)

    def test_configuredDelayedClose(self) -> None:
        """
        delayed_close_timeout sets how long the graceful close may take before the abort.
        """
        self.setUpRelay(idle_timeout=10_000_000_000, delayed_close_timeout="3s")
        upstream, upT = self.connectUpstream()
        self.reactor.advance(10)
        self.assertTrue(self.client.disconnecting)
        self.reactor.advance(2.9)
        self.assertFalse(self.client.aborted)
        self.reactor.advance(0.1)
        self.assertTrue(self.client.aborted and upT.aborted)

    def test_gracefulIdleCloseCancelsAbort(self) -> None:
        """
        When both sides close within the grace period nothing is aborted and no timer is left.
        """
        self.setUpRelay(idle_timeout=10_000_000_000)
        upstream, upT = self.connectUpstream()
        self.reactor.advance(10)
        upstream.connectionLost(Failure(ConnectionDone()))
        self.session.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.events[0]["reason"], "idle_timeout")

    def test_activityPostponesIdle(self) -> None:
        """
        Any byte in either direction restarts the idle period.
        """
        self.setUpRelay(idle_timeout=10_000_000_000)
        upstream, upT = self.connectUpstream()
        self.reactor.advance(6)
        upT.deliver(b"x")
        self.reactor.advance(6)
        self.assertFalse(self.client.aborted)
        self.reactor.advance(4.1)
        self.assertTrue(self.client.disconnecting)

    def test_disabledIdle(self) -> None:
        """
        idle_timeout 0 disables the timer.
        """
        self.setUpRelay(idle_timeout=0)
        self.connectUpstream()
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class MaxConnectAttemptsTests(RelayTestMixin, SynchronousTestCase):
    """
    The attempt limit.
    """

    def test_singleAttempt(self) -> None:
        """
        max_connect_attempts 1 gives up after the first failure although another host exists.
        """
        self.setUpRelay(max_connect_attempts=1)
        self.failAttempt(0)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(self.client.disconnecting)
