"""
Tests for L{meshproxy.proxy.tunnel}: the raw relay after a 101, alone and as the HTTP proxy sets it up.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.proxy.tunnel import TunnelSide
from meshproxy.stats import Counter
from tests.proxyharness import ONE_HOST, ProxyHarness, forwarded, request
from tests.support import HalfCloseTransport

UPGRADE = request(target=b"/ws", fields=b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n")
SWITCHED = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: x\r\n\r\n")


class TunnelSideTests(SynchronousTestCase):
    """
    Two sides joined by hand over string transports.
    """

    def setUp(self) -> None:
        self.lost: list[tuple[str, Any]] = []
        self.counters = {name: Counter() for name in ("aIn", "aOut", "bIn", "bOut")}
        c = self.counters
        self.a = TunnelSide(lambda reason: self.lost.append(("a", reason)), c["aIn"], c["bOut"])
        self.b = TunnelSide(lambda reason: self.lost.append(("b", reason)), c["bIn"], c["aOut"])
        self.a.peer, self.b.peer = self.b, self.a
        self.aT, self.bT = HalfCloseTransport(), HalfCloseTransport()
        self.aT.protocol, self.bT.protocol = self.a, self.b
        self.a.makeConnection(self.aT)
        self.b.makeConnection(self.bT)

    def test_interfaces(self) -> None:
        """
        A side is a half-closeable protocol.
        """
        self.assertTrue(verifyObject(IHalfCloseableProtocol, self.a))
        self.assertTrue(verifyObject(IProtocol, self.a))

    def test_relay(self) -> None:
        """
        What one side receives is written to the other side's transport.
        """
        self.aT.deliver(b"to b")
        self.bT.deliver(b"to a!")
        self.assertEqual((self.aT.value(), self.bT.value()), (b"to a!", b"to b"))

    def test_counted(self) -> None:
        """
        What a side receives is counted as received on its side and as sent on its peer's.
        """
        self.aT.deliver(b"to b")
        self.bT.deliver(b"to a!")
        self.assertEqual({name: c.value for name, c in self.counters.items()},
                         {"aIn": 4, "bOut": 4, "bIn": 5, "aOut": 5})

    def test_halfClose(self) -> None:
        """
        A FIN is passed on as a half-close; the other direction keeps working.
        """
        self.aT.deliverEOF()
        self.assertTrue(self.bT.writeClosed)
        self.assertFalse(self.aT.disconnecting or self.bT.disconnecting)
        self.bT.deliver(b"still")
        self.assertEqual(self.aT.value(), b"still")

    def test_bothFINs(self) -> None:
        """
        Once both sides have sent FIN, both connections are closed.
        """
        self.aT.deliverEOF()
        self.bT.deliverEOF()
        self.assertTrue(self.aT.disconnecting and self.bT.disconnecting)

    def test_finAfterPeerClosed(self) -> None:
        """
        A FIN from a side whose peer is already gone closes it.
        """
        self.b.connectionLost(Failure(ConnectionDone()))
        self.aT.disconnecting = False
        self.aT.deliverEOF()
        self.assertTrue(self.aT.disconnecting)

    def test_lostClosesPeer(self) -> None:
        """
        A side that is lost closes its peer and reports the loss once; the peer's own loss then
        closes nothing more.
        """
        reason = Failure(ConnectionDone())
        self.a.connectionLost(reason)
        self.assertTrue(self.bT.disconnecting)
        self.assertEqual(self.lost, [("a", reason)])
        self.a.connectionLost(reason)
        self.assertEqual(self.lost, [("a", reason)])
        self.aT.disconnecting = False
        self.b.connectionLost(reason)
        self.assertFalse(self.aT.disconnecting)
        self.assertEqual(self.lost, [("a", reason), ("b", reason)])


class UpgradeTests(ProxyHarness, SynchronousTestCase):
    """
    A WebSocket upgrade through the HTTP proxy.
    """

    def setUp(self) -> None:
        self.setUpProxy(clusters=ONE_HOST)
        self.connection, self.client = self.connectClient()
        self.client.deliver(UPGRADE + b"early")
        self.upstream, self.upT = self.connectUpstream()

    def switch(self) -> None:
        self.upT.deliver(SWITCHED + b"hello")

    def test_upgradeForwarded(self) -> None:
        """
        The request goes upstream with Connection and Upgrade; bytes the client sent after it wait.
        """
        self.assertEqual(
            self.upT.value(),
            forwarded(target=b"/ws", fields=b"Sec-WebSocket-Key: k\r\n").replace(
                b"\r\n\r\n", b"\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
        )

    def test_switched(self) -> None:
        """
        The 101 is forwarded with its Upgrade; then both transports dispatch to tunnel sides, each
        the other's producer, and the bytes each parser held are delivered first.
        """
        sent = self.upT.value()
        self.switch()
        self.assertEqual(
            self.client.value(),
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\nUpgrade: websocket\r\n"
            b"Connection: upgrade\r\n\r\nhello",
        )
        self.assertEqual(self.upT.value(), sent + b"early")
        self.assertIsInstance(self.client.protocol, TunnelSide)
        self.assertIsInstance(self.upT.protocol, TunnelSide)
        self.assertIs(self.client.producer, self.upT)
        self.assertIs(self.upT.producer, self.client)
        self.assertEqual(self.counter("http_downstream_rq_active", listener="l1"), 0)
        self.assertEqual(self.counter("http_downstream_rq_xx_total", listener="l1", code_class="1xx"), 1)

    def test_bytesFlow(self) -> None:
        """
        After the switch, bytes flow both ways untouched.
        """
        self.switch()
        self.client.clear()
        self.upT.clear()
        self.client.deliver(b"\x81\x02hi")
        self.upT.deliver(b"\x81\x03yes")
        self.assertEqual((self.upT.value(), self.client.value()), (b"\x81\x02hi", b"\x81\x03yes"))

    def test_bytesCounted(self) -> None:
        """
        Relayed bytes are counted on the listener and the cluster, as the L4 relay counts them.
        """
        self.switch()
        counters = [("downstream_cx_rx_bytes_total", {"listener": "l1"}),
                    ("downstream_cx_tx_bytes_total", {"listener": "l1"}),
                    ("upstream_cx_tx_bytes_total", {"cluster": "backend"}),
                    ("upstream_cx_rx_bytes_total", {"cluster": "backend"})]
        before = [self.counter(name, **labels) for name, labels in counters]
        self.client.deliver(b"\x81\x02hi")
        self.upT.deliver(b"\x81\x03yes")
        after = [self.counter(name, **labels) for name, labels in counters]
        self.assertEqual([a - b for a, b in zip(after, before)], [4, 5, 4, 5])

    def test_noHTTPTimers(self) -> None:
        """
        The HTTP deadlines stop at the switch: the route timeout does not fire on a tunnel.
        """
        self.switch()
        self.client.clear()
        self.reactor.advance(100)
        self.assertEqual(self.client.value(), b"")
        self.assertFalse(self.client.disconnecting or self.upT.disconnecting)

    def test_finsCloseBoth(self) -> None:
        """
        The client's FIN half-closes the upstream; the upstream's FIN then closes both.
        """
        self.switch()
        self.client.deliverEOF()
        self.assertTrue(self.upT.writeClosed)
        self.assertFalse(self.client.disconnecting or self.upT.disconnecting)
        self.upT.deliverEOF()
        self.assertTrue(self.client.disconnecting and self.upT.disconnecting)

    def test_upstreamLost(self) -> None:
        """
        The upstream's end closes the client and is booked in the pool and cluster; the client's
        end is booked in the listener.
        """
        self.switch()
        self.closed(self.upT)
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.pool().open, 0)
        self.assertEqual(self.counter("upstream_cx_active", cluster="backend"), 0)
        self.assertEqual(self.counter("downstream_cx_active", listener="l1"), 1)
        self.closed(self.client)
        self.assertEqual(self.counter("downstream_cx_active", listener="l1"), 0)

    def test_clientLost(self) -> None:
        """
        The client's end closes the upstream connection.
        """
        self.switch()
        self.closed(self.client)
        self.assertTrue(self.upT.disconnecting)
        self.assertEqual(self.counter("downstream_cx_active", listener="l1"), 0)

    def test_refused(self) -> None:
        """
        Any other answer is a normal response: the connection stays HTTP, the bytes that followed
        the request are read as the next request, and the upstream connection is reused.
        """
        self.setUpProxy(clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(UPGRADE + request(requestId=b"r2"))
        _, upT = self.connectUpstream()
        upT.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
        self.assertEqual(client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
        self.assertFalse(client.disconnecting)
        self.assertTrue(upT.value().endswith(forwarded(requestId=b"r2")))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertIsNot(type(client.protocol), TunnelSide)

    def test_upgradeWithBody(self) -> None:
        """
        An upgrade request with a body is forwarded as a plain request (no protocol switch with a
        body), without the Upgrade field.
        """
        self.setUpProxy(clusters=ONE_HOST)
        _, client = self.connectClient()
        client.deliver(request(b"POST", fields=b"Connection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 1\r\n")
                       + b"x")
        _, upT = self.connectUpstream()
        self.assertEqual(upT.value(), forwarded(b"POST", framing=b"Content-Length: 1\r\n") + b"x")


class TunnelIdleTests(SynchronousTestCase):
    """
    The idle timeout of an upgraded connection.
    """

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from meshproxy.proxy.tunnel import TunnelIdle, TunnelSide
        from meshproxy.stats import Counter
        from tests.support import HalfCloseTransport

        self.clock = Clock()
        self.idle = TunnelIdle(self.clock, 40.0)
        counters = [Counter() for _ in range(4)]
        self.lost: list[object] = []
        self.down = TunnelSide(self.lost.append, counters[0], counters[1], self.idle)
        self.up = TunnelSide(self.lost.append, counters[2], counters[3], self.idle)
        self.down.peer, self.up.peer = self.up, self.down
        self.idle.sides = (self.down, self.up)
        self.downT, self.upT = HalfCloseTransport(), HalfCloseTransport()
        self.down.makeConnection(self.downT)
        self.up.makeConnection(self.upT)

    def test_idleCloses(self) -> None:
        """
        With no byte either way the tunnel closes between 1 and 1.25 times the timeout.
        """
        self.clock.advance(30)
        self.assertFalse(self.downT.disconnecting)
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertTrue(self.downT.disconnecting and self.upT.disconnecting)

    def test_trafficKeepsOpen(self) -> None:
        """
        Bytes in either direction restart the idle period; the timer stops when a side is lost.
        """
        for _ in range(10):
            self.clock.advance(20)
            self.up.dataReceived(b"ping")
        self.assertFalse(self.downT.disconnecting)
        self.assertEqual(self.downT.value(), b"ping" * 10)
        self.down.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])
