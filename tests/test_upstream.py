"""
Tests for L{meshproxy.proxy.upstream}: one pooled HTTP/1.1 upstream connection, its factory and dialer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.cluster.cluster import ClusterSet
from meshproxy.http import HTTPLimits, ResponseHead
from meshproxy.proxy.upstream import UpstreamConnection, UpstreamConnectionFactory, dialerFor, setNoDelay
from meshproxy.stats import StatsStore
from tests.proxyharness import httpDocument
from tests.support import HalfCloseTransport, makeConfig


class RecordingPool:
    """
    The pool methods an upstream connection calls, recorded.
    """

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.calls: list[tuple[Any, ...]] = []

    def release(self, connection: Any, reusable: bool) -> None:
        self.calls.append(("release", connection, reusable))

    def connectionLost(self, connection: Any, wasIdle: bool) -> None:
        self.calls.append(("connectionLost", connection, wasIdle))


class RecordingExchange:
    """
    The exchange methods an upstream connection calls, recorded as C{(name, argument)}.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def responseHead(self, head: ResponseHead) -> None:
        self.events.append(("head", head.status))

    def responseWhole(self, head: ResponseHead, body: bytes) -> None:
        self.events.append(("whole", (head.status, body)))

    def responseBody(self, data: bytes) -> None:
        self.events.append(("body", data))

    def responseFlush(self) -> None:
        self.events.append(("flush", None))

    def responseEnd(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("end", trailers))

    def upstreamFailed(self, reason: str, responseStarted: bool, detail: str) -> None:
        self.events.append(("failed", (reason, responseStarted, detail)))

    def upstreamUpgraded(self, leftover: bytes) -> None:
        self.events.append(("upgraded", leftover))


class UpstreamTestMixin:
    def setUpConnection(self) -> None:
        self.reactor = MemoryReactorClock()
        self.stats = StatsStore()
        config = makeConfig(httpDocument(conn_buffer_limit_bytes=4096))
        self.cluster = ClusterSet.fromConfig(config, self.reactor, self.stats).get("backend")
        self.host = self.cluster.hosts[0]
        self.pool = RecordingPool(self.cluster)
        self.ready: list[Any] = []
        self.failed: list[str] = []
        self.connection = UpstreamConnection(self.pool, self.host, self.cluster, HTTPLimits())
        self.factory = UpstreamConnectionFactory(self.connection, self.ready.append, self.failed.append)
        self.transport = HalfCloseTransport("127.0.0.1", 9001)
        self.transport.protocol = self.connection
        self.exchange = RecordingExchange()

    def connect(self) -> None:
        self.factory.buildProtocol(None).makeConnection(self.transport)


class UpstreamConnectionTests(UpstreamTestMixin, SynchronousTestCase):
    """
    The connection's life: connect, send, parse the response for the exchange, go back or close.
    """

    def setUp(self) -> None:
        self.setUpConnection()

    def test_interface(self) -> None:
        """
        An upstream connection is a protocol.
        """
        self.assertTrue(verifyObject(IProtocol, self.connection))

    def test_connected(self) -> None:
        """
        Once connected it is idle, counted on its host and cluster, its transport has the cluster's
        buffer limit, and the pool's ready callback gets it.
        """
        self.assertEqual(self.connection.state, UpstreamConnection.CONNECTING)
        self.connect()
        self.assertEqual(self.ready, [self.connection])
        self.assertEqual(self.connection.state, UpstreamConnection.IDLE)
        self.assertEqual(self.transport.bufferSize, 4096)
        self.assertEqual((self.host.activeConnections, self.stats.value("upstream_cx_active", cluster="backend")),
                         (1, 1))
        self.assertEqual(self.stats.value("upstream_host_cx_total", cluster="backend", host="127.0.0.1:9001"), 1)

    def test_sendAndResponse(self) -> None:
        """
        C{send} writes the head; the response's events go to the exchange in order, a flush when
        the received bytes are used up, and the end frees the connection from the exchange.
        """
        self.connect()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((self.transport.value(), self.connection.state, self.connection.requestsSent),
                         (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", UpstreamConnection.BUSY, 1))
        self.transport.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        self.transport.deliver(b"cde")
        self.assertEqual(self.exchange.events, [("head", 200), ("body", b"ab"), ("flush", None), ("body", b"cde"),
                                                ("end", [])])
        self.assertIsNone(self.connection.exchange)

    def test_bytewise(self) -> None:
        """
        A chunked response fed one byte at a time gives the same body and trailers.
        """
        self.connect()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
        for i in range(len(data)):
            self.transport.deliver(data[i : i + 1])
        events = [e for e in self.exchange.events if e[0] != "flush"]
        self.assertEqual(events, [("head", 200), ("body", b"a"), ("body", b"b"), ("body", b"c"),
                                  ("end", [(b"X-T", b"1")])])

    def test_headResponse(self) -> None:
        """
        The response to HEAD is framed by the method: it ends after its head.
        """
        self.connect()
        self.connection.send(self.exchange, b"HEAD", b"HEAD / HTTP/1.1\r\n\r\n")
        self.transport.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(self.exchange.events, [("whole", (200, b""))])

    def test_wholeResponse(self) -> None:
        """
        A length-framed response that arrives in one read goes to the exchange in one call with its
        whole body, and ends the exchange; a response arriving in pieces still streams as events.
        A chunked one always streams.
        """
        self.connect()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        self.transport.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde")
        self.assertEqual(self.exchange.events, [("whole", (200, b"abcde"))])
        self.assertIsNone(self.connection.exchange)
        self.assertTrue(self.connection.responseKeepAlive)
        self.connection.finished(True)
        self.exchange.events.clear()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        self.transport.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc")
        self.transport.deliver(b"de")
        self.assertEqual(self.exchange.events, [("head", 200), ("body", b"abc"), ("flush", None), ("body", b"de"),
                                                ("end", [])])
        self.connection.finished(True)
        self.exchange.events.clear()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        self.transport.deliver(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n")
        self.assertEqual(self.exchange.events, [("head", 200), ("body", b"a"), ("end", [])])
        self.assertEqual([c[0] for c in self.pool.calls], ["release", "release"])

    def test_finished(self) -> None:
        """
        C{finished} hands the connection back to the pool, reusable as the exchange says and only
        if nothing extra arrived; a second call does nothing.
        """
        self.connect()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        self.transport.deliver(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.connection.finished(True)
        self.connection.finished(True)
        self.assertEqual(self.pool.calls, [("release", self.connection, True)])
        self.assertEqual(self.connection.state, UpstreamConnection.IDLE)

    def test_finishedWithExtraBytes(self) -> None:
        """
        Bytes after the response make the connection unusable.
        """
        self.connect()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        self.transport.deliver(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n")
        self.connection.finished(True)
        self.assertEqual(self.pool.calls, [("release", self.connection, False)])

    def test_finishedAfterCloseResponse(self) -> None:
        """
        A response that said Connection: close leaves the connection unusable, whatever the
        exchange says.
        """
        self.connect()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        self.transport.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.connection.finished(True)
        self.assertEqual(self.pool.calls, [("release", self.connection, False)])

    def test_unsolicitedData(self) -> None:
        """
        Bytes while idle (nothing was asked) close the connection.
        """
        self.connect()
        self.transport.deliver(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_garbage(self) -> None:
        """
        An unparseable response aborts the connection and fails the exchange.
        """
        self.connect()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        self.transport.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        self.assertTrue(self.transport.aborted)
        [(name, (reason, started, _))] = self.exchange.events
        self.assertEqual((name, reason, started), ("failed", "upstream_protocol_error", False))

    def test_closeDelimited(self) -> None:
        """
        A close-delimited body ends at the close, which the exchange sees as the response's end.
        """
        self.connect()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        self.transport.deliver(b"HTTP/1.1 200 OK\r\n\r\nabc")
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.exchange.events, [("head", 200), ("body", b"abc"), ("flush", None), ("end", [])])
        self.assertEqual(self.pool.calls, [("connectionLost", self.connection, False)])

    def test_resetBeforeResponse(self) -> None:
        """
        A close before any response byte is a reset with no response started.
        """
        self.connect()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        self.connection.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.exchange.events, [("failed", ("upstream_reset", False, "connection closed"))])
        self.assertEqual(self.connection.state, UpstreamConnection.CLOSED)
        self.assertEqual(self.host.activeConnections, 0)

    def test_resetMidResponse(self) -> None:
        """
        A close inside a Content-Length body is a reset with the response started.
        """
        self.connect()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        self.transport.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        self.connection.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.exchange.events[-1], ("failed", ("upstream_reset", True, "connection closed")))

    def test_lostWhileIdle(self) -> None:
        """
        An idle connection's end is reported to the pool as idle.
        """
        self.connect()
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.pool.calls, [("connectionLost", self.connection, True)])
        self.assertEqual(self.stats.value("upstream_cx_active", cluster="backend"), 0)

    def test_upgrade(self) -> None:
        """
        A 101 hands the exchange the bytes after it and leaves the connection upgraded.
        """
        self.connect()
        self.connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        self.transport.deliver(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nraw")
        self.assertEqual(self.exchange.events, [("head", 101), ("upgraded", b"raw")])
        self.assertEqual(self.connection.state, UpstreamConnection.UPGRADED)
        self.assertIsNone(self.connection.exchange)

    def test_close(self) -> None:
        """
        C{close} loses the connection; before it is connected it does nothing.
        """
        self.connection.close()
        self.connect()
        self.connection.close()
        self.assertTrue(self.transport.disconnecting)


class FactoryTests(UpstreamTestMixin, SynchronousTestCase):
    """
    The factory and the dialer.
    """

    def setUp(self) -> None:
        self.setUpConnection()

    def test_buildProtocol(self) -> None:
        """
        The factory builds its one connection.
        """
        self.assertIs(self.factory.buildProtocol(None), self.connection)

    def test_failed(self) -> None:
        """
        A refused attempt is counted and reported as a connect failure; a timed-out one as a
        connect timeout.
        """
        self.factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.factory.clientConnectionFailed(None, Failure(TimeoutError()))
        self.assertEqual(self.failed, ["upstream_connect_failed", "upstream_connect_timeout"])
        self.assertEqual(self.stats.value("upstream_host_cx_connect_fail_total", cluster="backend",
                                          host="127.0.0.1:9001"), 2)
        self.assertEqual(self.stats.value("upstream_cx_connect_fail_total", cluster="backend"), 2)

    def test_lostBeforeConnected(self) -> None:
        """
        A connection that never connected is not counted as closed on its host.
        """
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.host.activeConnections, 0)
        self.assertEqual(self.pool.calls, [("connectionLost", self.connection, False)])

    def test_dialerFor(self) -> None:
        """
        The dialer connects to the host with the cluster's connect timeout, and the factory it
        uses builds an upstream connection for the pool with the given limits.
        """
        connect = dialerFor(HTTPLimits(maxHeaders=3))
        connect(self.pool, self.cluster.hosts[1], self.ready.append, self.failed.append)
        [(host, port, factory, timeout, _)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 9002, 5.0))
        connection = factory.buildProtocol(None)
        assert isinstance(connection, UpstreamConnection)
        self.assertEqual((connection.pool, connection.host), (self.pool, self.cluster.hosts[1]))
        connection.makeConnection(HalfCloseTransport())
        self.assertEqual(self.ready, [connection])
        connection.send(self.exchange, b"GET", b"GET / HTTP/1.1\r\n\r\n")
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n")
        self.assertEqual(self.exchange.events, [("failed", ("upstream_protocol_error", False, "too-many-headers"))])


class SetNoDelayTests(SynchronousTestCase):
    """
    L{setNoDelay} where the transport allows it.
    """

    def test_setNoDelay(self) -> None:
        """
        TCP transports get TCP_NODELAY; an error is ignored; others are left alone.
        """
        calls: list[bool] = []

        class TCPish:
            def setTcpNoDelay(self, enabled: bool) -> None:
                calls.append(enabled)

        class Failing:
            def setTcpNoDelay(self, enabled: bool) -> None:
                raise OSError("closed")

        setNoDelay(TCPish())
        setNoDelay(Failing())
        setNoDelay(HalfCloseTransport())
        self.assertEqual(calls, [True])
