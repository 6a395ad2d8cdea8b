"""
Tests for L{meshproxy.sniff} and the listener books in L{meshproxy.listeners}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.interfaces import IDownstreamConnection
from meshproxy.listeners import FilterChainRuntime, ListenerFactory
from meshproxy.sniff import UNRECOGNIZED_NAME_ALERT, SniffingProtocol, couldBeProxyHeader
from meshproxy.stats import StatsStore
from tests.support import HalfCloseTransport, makeConfig, tcpListener
from tests.test_clienthello import pyOpenSSLHello


@implementer(IHalfCloseableProtocol)
class RecordingProtocol(Protocol):
    """
    What a network filter would build: records what it is given.
    """

    def __init__(self, downstream: Any) -> None:
        self.downstream = downstream
        self.received: list[bytes] = []
        self.eof = False

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.eof = True

    def writeConnectionLost(self) -> None:
        pass


class RecordingFilter:
    name = "recording"

    def __init__(self, accepts: tuple[str, ...] = ("tls", "http1", "http2", "raw")) -> None:
        self.accepts = accepts
        self.built: list[RecordingProtocol] = []

    def acceptsProtocol(self, protocol: str) -> bool:
        return protocol in self.accepts

    def buildProtocol(self, downstream: Any) -> RecordingProtocol:
        protocol = RecordingProtocol(downstream)
        self.built.append(protocol)
        return protocol


class SniffTestMixin:
    def setUpListener(self, filterAccepts: tuple[str, ...] = ("tls", "http1", "http2", "raw"), **listener: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.stats = StatsStore()
        config = makeConfig(listeners=[tcpListener(**listener)]).listeners[0]
        self.filter = RecordingFilter(filterAccepts)
        chain = FilterChainRuntime(config.filterChains[0], [self.filter])
        self.listener = ListenerFactory(config, [chain], self.reactor, self.stats)

    def connect(self) -> tuple[SniffingProtocol, HalfCloseTransport]:
        sniffer = self.listener.buildProtocol(None)
        transport = HalfCloseTransport()
        transport.protocol = sniffer
        sniffer.makeConnection(transport)
        return sniffer, transport

    def feedBytewise(self, transport: HalfCloseTransport, data: bytes) -> None:
        for i in range(len(data)):
            transport.deliver(data[i : i + 1])


class SniffingProtocolTests(SniffTestMixin, SynchronousTestCase):
    """
    Classification, hand-off and replay.
    """

    def setUp(self) -> None:
        self.setUpListener()

    def test_httpHandOffBytewise(self) -> None:
        """
        An HTTP/1 request fed one byte at a time is handed off once its request line is complete,
        with every buffered byte replayed once, in order; later bytes go straight to the new
        protocol.
        """
        sniffer, transport = self.connect()
        self.feedBytewise(transport, b"GET /index.html HTTP/1.1\r\n")
        [protocol] = self.filter.built
        self.assertIs(transport.protocol, protocol)
        self.assertEqual(b"".join(protocol.received), b"GET /index.html HTTP/1.1\r\n")
        transport.deliver(b"Host: a\r\n\r\n")
        self.assertEqual(b"".join(protocol.received), b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(protocol.downstream.protocol, "http1")
        self.assertEqual(self.stats.value("sniff_verdict_total", listener="l1", protocol="http1"), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_rawHandOff(self) -> None:
        """
        Bytes that cannot be HTTP, TLS or a PROXY header are raw at once.
        """
        sniffer, transport = self.connect()
        transport.deliver(b"\x00\x01\x02binary")
        [protocol] = self.filter.built
        self.assertEqual(protocol.received, [b"\x00\x01\x02binary"])
        self.assertEqual(protocol.downstream.protocol, "raw")

    def test_silentClientGoesRawAtDeadline(self) -> None:
        """
        A client that sends nothing (a server-first protocol) is handed to the chain at the sniff
        deadline with nothing to replay and no EOF.
        """
        sniffer, transport = self.connect()
        self.reactor.advance(2.9)
        self.assertEqual(self.filter.built, [])
        self.reactor.advance(0.2)
        [protocol] = self.filter.built
        self.assertEqual((protocol.received, protocol.eof), ([], False))
        self.assertEqual(self.stats.value("sniff_timeout_total", listener="l1"), 1)

    def test_halfCloseBeforeVerdict(self) -> None:
        """
        A client that half-closes mid-prefix is classified with what it sent, and the FIN is
        passed on to the chain's protocol.
        """
        sniffer, transport = self.connect()
        transport.deliver(b"GE")
        transport.deliverEOF()
        [protocol] = self.filter.built
        self.assertEqual((protocol.received, protocol.eof), ([b"GE"], True))

    def test_noChainCloses(self) -> None:
        """
        A verdict no chain accepts closes the connection and is counted.
        """
        self.setUpListener(filterAccepts=("http1",))
        sniffer, transport = self.connect()
        transport.deliver(b"\x00binary")
        self.assertEqual(self.filter.built, [])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.stats.value("sniff_no_chain_total", listener="l1"), 1)
        sniffer.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.listener.connections, set())

    def test_downstreamInterface(self) -> None:
        """
        The connection record provides L{IDownstreamConnection} with the peer's address.
        """
        sniffer, transport = self.connect()
        self.assertTrue(verifyObject(IDownstreamConnection, sniffer.downstream))
        self.assertEqual(sniffer.downstream.clientAddress, ("10.0.0.1", 40000))


class ProxyProtocolTests(SniffTestMixin, SynchronousTestCase):
    """
    PROXY protocol headers on listeners that expect them.
    """

    def setUp(self) -> None:
        self.setUpListener(listener_filters=[{"type": "proxy_protocol"}])

    def test_v1HeaderStrippedBytewise(self) -> None:
        """
        A v1 header is stripped, its source becomes the client address, and the bytes after it
        are classified and replayed.
        """
        sniffer, transport = self.connect()
        self.feedBytewise(transport, b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\n\x00raw")
        [protocol] = self.filter.built
        self.assertEqual(b"".join(protocol.received), b"\x00raw")
        self.assertEqual(protocol.downstream.clientAddress, ("192.0.2.7", 5555))
        self.assertEqual(protocol.downstream.localAddress, ("198.51.100.1", 443))

    def test_missingHeaderRefused(self) -> None:
        """
        A listener that expects PROXY refuses a connection without it.
        """
        sniffer, transport = self.connect()
        transport.deliver(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(self.filter.built, [])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.stats.value("proxy_protocol_error_total", listener="l1"), 1)

    def test_headerDeadline(self) -> None:
        """
        An incomplete header at the deadline is refused.
        """
        sniffer, transport = self.connect()
        transport.deliver(b"PROXY TCP4 ")
        self.reactor.advance(3)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.stats.value("proxy_protocol_timeout_total", listener="l1"), 1)

    def test_allowMissing(self) -> None:
        """
        With allow_requests_without_proxy_protocol, a connection without a header is sniffed as
        usual and keeps its peer address.
        """
        self.setUpListener(listener_filters=[
            {"type": "proxy_protocol", "config": {"allow_requests_without_proxy_protocol": True}}
        ])
        sniffer, transport = self.connect()
        transport.deliver(b"\x00raw")
        [protocol] = self.filter.built
        self.assertEqual(protocol.downstream.clientAddress, ("10.0.0.1", 40000))

    def test_couldBeProxyHeader(self) -> None:
        """
        Prefixes of both signatures could be a header; other bytes could not.
        """
        for data in (b"", b"P", b"PROXY", b"PROXY TCP4", b"\r\n\r\n\x00", b"\r\n\r\n\x00\r\nQUIT\n\x21"):
            self.assertTrue(couldBeProxyHeader(data), data)
        for data in (b"GET /", b"PROXZ", b"\r\n\r\n\x01"):
            self.assertFalse(couldBeProxyHeader(data), data)


class ListenerBooksTests(SniffTestMixin, SynchronousTestCase):
    """
    Connection counting, the accept cap and draining.
    """

    def test_acceptPausesAtCapAndResumesBelowNinetyPercent(self) -> None:
        """
        At max_connections the listening port stops reading; it resumes below 90 %.
        """

        class FakePort:
            reading = True

            def stopReading(self) -> None:
                self.reading = False

            def startReading(self) -> None:
                self.reading = True

        self.setUpListener(max_connections=10)
        self.listener.port = port = FakePort()
        connections = [self.connect() for _ in range(10)]
        self.assertFalse(port.reading)
        self.assertEqual(self.stats.value("downstream_cx_overflow_total", listener="l1"), 1)
        connections[0][0].connectionLost(Failure(ConnectionDone()))
        self.assertFalse(port.reading)
        connections[1][0].connectionLost(Failure(ConnectionDone()))
        self.assertTrue(port.reading)
        self.assertEqual(self.stats.value("downstream_cx_active", listener="l1"), 8)

    def test_drainWaitsThenAborts(self) -> None:
        """
        Draining fires when the last connection ends; connections still open at the deadline are
        aborted.
        """
        self.setUpListener()
        (s1, t1), (s2, t2) = self.connect(), self.connect()
        drained = self.listener.drain(30)
        self.assertNoResult(drained)
        s1.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(drained)
        self.reactor.advance(30)
        self.assertTrue(t2.aborted)
        self.assertFalse(t1.aborted)
        # By now the sniff deadline handed s2 to its chain, whose protocol reports the end.
        s2.downstream.closed()
        self.successResultOf(drained)

    def test_drainNotifiesConnections(self) -> None:
        """
        Draining calls each connection's onDrain hook once (an idle HTTP connection closes).
        """
        self.setUpListener()
        (s1, t1), (s2, t2) = self.connect(), self.connect()
        calls: list[str] = []
        s1.downstream.onDrain = lambda: calls.append("first")
        self.listener.drain(30)
        self.assertEqual(calls, ["first"])
        self.assertTrue(s2.downstream.draining)

    def test_drainWithNothingOpen(self) -> None:
        """
        A listener with no connections drains at once.
        """
        self.setUpListener()
        self.successResultOf(self.listener.drain(30))


class TLSWithoutChainTests(SniffTestMixin, SynchronousTestCase):
    """
    TLS clients that no chain serves, and chains whose TLS was not built.
    """

    def setUp(self) -> None:
        self.setUpListener(filterAccepts=("http1", "raw"))

    def test_clientHelloGetsAlert(self) -> None:
        """
        A complete ClientHello (here fed one byte at a time) that no chain takes is answered with a
        fatal C{unrecognized_name} alert, then the connection closes.
        """
        sniffer, transport = self.connect()
        self.feedBytewise(transport, pyOpenSSLHello(b"nobody.example.com"))
        self.assertEqual(transport.value(), UNRECOGNIZED_NAME_ALERT)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.filter.built, [])
        self.assertEqual(self.stats.value("sniff_no_chain_total", listener="l1"), 1)

    def test_malformedTLSGetsNoAlert(self) -> None:
        """
        Bytes that merely start like TLS are closed without an alert.
        """
        sniffer, transport = self.connect()
        transport.deliver(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_terminatingChainNeedsItsTLS(self) -> None:
        """
        A chain configured to terminate TLS cannot be run without its built TLS.
        """
        doc = {"status": True, "cert_chain": "/c.pem", "private_key": "/c.key"}
        config = makeConfig(listeners=[tcpListener(filter_chains=[
            {"tls_context": doc, "filters": [{"type": "tcp_proxy", "config": {"cluster": "backend"}}]}])])
        error = self.assertRaises(ValueError, FilterChainRuntime, config.listeners[0].filterChains[0], [self.filter])
        self.assertIn("loadListenerTLS", str(error))
