"""
L{meshproxy.fastpoll}: the epoll reactor's dispatch without the per-event log context, on a real
epoll reactor instance and real sockets.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.protocol import ClientCreator, Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from meshproxy import fastpoll
from meshproxy.proxy.directwrite import BATCH, directWriters


class Reader:
    """
    The least a selectable must be for the reactor: reads what arrives, records the close.
    """

    def __init__(self, sock: socket.socket, fail: bool = False, onRead: Any = None) -> None:
        self.sock = sock
        self.fail = fail
        self.onRead = onRead
        self.received: list[bytes] = []
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "Reader"

    def doRead(self) -> Any:
        self.received.append(self.sock.recv(100))
        if self.onRead is not None:
            self.onRead()
        if self.fail:
            raise ValueError("broken protocol")
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class FastPollTests(SynchronousTestCase):
    def setUp(self) -> None:
        if fastpoll.EPollReactor is None:
            raise self.skipTest("no epoll here")
        self.reactor = fastpoll.EPollReactor()
        self.addCleanup(self.reactor._poller.close)

    def pair(self) -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        a.setblocking(False)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        return a, b

    def test_installedOnEpollOnly(self) -> None:
        """
        Installed on an epoll reactor, not on any other.
        """
        self.assertTrue(fastpoll.install(self.reactor))
        self.assertIs(self.reactor.doIteration.__func__, fastpoll.doPoll)
        self.assertFalse(fastpoll.install(MemoryReactorClock()))
        self.assertNotIn("doIteration", vars(MemoryReactorClock()))

    def test_dispatchesReads(self) -> None:
        """
        Every ready descriptor gets its C{doRead}, in one iteration.
        """
        fastpoll.install(self.reactor)
        (a, b), (c, d) = self.pair(), self.pair()
        first, second = Reader(a), Reader(c)
        self.reactor.addReader(first)
        self.reactor.addReader(second)
        b.send(b"one")
        d.send(b"two")
        self.reactor.doIteration(0)
        self.assertEqual((first.received, second.received), ([b"one"], [b"two"]))
        self.reactor.doIteration(0)
        self.assertEqual((first.received, second.received), ([b"one"], [b"two"]))
        self.reactor.removeAll()

    def test_errorDisconnectsOnlyThatSelectable(self) -> None:
        """
        An exception in one selectable's C{doRead} is logged and disconnects that one; the others
        are still served.
        """
        fastpoll.install(self.reactor)
        (a, b), (c, d) = self.pair(), self.pair()
        broken, fine = Reader(a, fail=True), Reader(c)
        self.reactor.addReader(broken)
        self.reactor.addReader(fine)
        b.send(b"x")
        d.send(b"y")
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(broken.lost), 1)
        self.assertEqual((fine.received, fine.lost), ([b"y"], []))
        self.assertNotIn(broken, self.reactor.getReaders())
        self.reactor.removeAll()

    def test_writesLeaveAfterTheTurn(self) -> None:
        """
        Direct writes made while the turn's events run are held, and sent once every event has
        run, even when a selectable's C{doRead} raised; outside a turn, writes go out at once.
        """
        fastpoll.install(self.reactor)
        (a, b), (c, d), (out, outPeer) = self.pair(), self.pair(), self.pair()
        outPeer.setblocking(False)
        transport = tcp.Connection(out, Protocol(), self.reactor)
        transport.connected = True
        write, _ = directWriters(transport)
        seenByLater: list[bytes] = []

        def peek() -> None:
            try:
                seenByLater.append(outPeer.recv(100))
            except BlockingIOError:
                seenByLater.append(b"")

        first = Reader(a, fail=True, onRead=lambda: write(b"answer"))
        self.reactor.addReader(first)
        b.send(b"x")
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(outPeer.recv(100), b"answer")
        self.assertIsNone(BATCH.pending)
        self.reactor.removeAll()
        def writeThenPeek(name: bytes) -> Any:
            return lambda: (write(name), peek())

        one, two = Reader(a, onRead=writeThenPeek(b"1")), Reader(c, onRead=writeThenPeek(b"2"))
        self.reactor.addReader(one)
        self.reactor.addReader(two)
        b.send(b"y")
        d.send(b"z")
        self.reactor.doIteration(0)
        # Both ran in the one turn (in whichever order epoll gave), each wrote and then looked:
        # nothing had left yet.  Then both writes left, in one send.
        self.assertEqual((one.received[-1:], two.received, seenByLater), ([b"y"], [b"z"], [b"", b""]))
        self.assertIn(outPeer.recv(100), (b"12", b"21"))
        write(b"now")
        self.assertEqual(outPeer.recv(100), b"now")
        self.reactor.removeAll()


class Recorder(Protocol):
    """
    Records what arrives and how the connection ended; can be told to fail or to abort a peer.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.fail = False
        self.onData: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if self.onData is not None:
            self.onData()
        if self.fail:
            raise ValueError("broken protocol")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


class TCPReadTests(SynchronousTestCase):
    """
    Read events of real TCP connections on an epoll reactor instance with L{fastpoll.doPoll}:
    handled in the loop with Twisted's semantics.
    """

    def setUp(self) -> None:
        if fastpoll.EPollReactor is None:
            raise self.skipTest("no epoll here")
        self.reactor = fastpoll.EPollReactor()
        fastpoll.install(self.reactor)
        self.servers: list[Recorder] = []
        factory = Factory.forProtocol(Recorder)
        factory.buildProtocol = lambda addr: self._server()  # type: ignore[method-assign]
        self.port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self._close)

    def _server(self) -> Recorder:
        protocol = Recorder()
        self.servers.append(protocol)
        return protocol

    def _close(self) -> None:
        for selectable in self.reactor.removeAll():
            if selectable is not self.port:
                selectable.connectionLost(Failure(ConnectionDone()))
        self.port.connectionLost(Failure(ConnectionDone()))
        waker = self.reactor.waker
        if waker is not None:
            waker.connectionLost(None)
        self.reactor._poller.close()

    def spin(self, until: Any, turns: int = 200) -> None:
        for _ in range(turns):
            if until():
                return
            self.reactor.iterate(0.01)
        self.fail("condition not reached")

    def client(self) -> tuple[Recorder, Any]:
        """
        A connected client and the server side's transport.
        """
        protocol = Recorder()
        count = len(self.servers)
        creator = ClientCreator(self.reactor, lambda: protocol)
        creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.spin(lambda: protocol.transport is not None and len(self.servers) > count)
        self.assertIsInstance(protocol.transport, tcp.Client)
        self.assertIsInstance(self.servers[-1].transport, tcp.Server)
        return protocol, self.servers[-1].transport

    def test_bytesBothWays(self) -> None:
        """
        Bytes reach the protocol on either side.
        """
        client, serverTransport = self.client()
        dispatched: list[Any] = []
        dispatch = self.reactor._doReadOrWrite
        self.reactor._doReadOrWrite = lambda *args: (dispatched.append(args), dispatch(*args))
        client.transport.write(b"ping")
        self.spin(lambda: self.servers[0].received)
        serverTransport.write(b"pong")
        self.spin(lambda: client.received)
        self.assertEqual((self.servers[0].received, client.received), ([b"ping"], [b"pong"]))
        # The reads were handled in the loop; only the write events (Twisted's queued writes)
        # went through Twisted's dispatch.
        self.assertEqual([event & fastpoll.EPOLLIN for _, _, event in dispatched], [0] * len(dispatched))

    def test_eofIsConnectionDone(self) -> None:
        """
        An empty read (the peer's FIN) ends the connection cleanly.
        """
        client, _ = self.client()
        client.transport.loseConnection()
        self.spin(lambda: self.servers[0].lost)
        self.assertTrue(self.servers[0].lost[0].check(ConnectionDone))

    def test_errorDisconnectsOnlyThatConnection(self) -> None:
        """
        An exception from C{dataReceived} is logged and ends that connection with it as the
        reason; another connection served in the same turn is not disturbed.
        """
        first, _ = self.client()
        second, _ = self.client()
        self.servers[0].fail = True
        first.transport.write(b"boom")
        second.transport.write(b"fine")
        self.spin(lambda: self.servers[0].lost and self.servers[1].received)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertTrue(self.servers[0].lost[0].check(ValueError))
        self.assertEqual((self.servers[1].received, self.servers[1].lost), ([b"fine"], []))

    def test_abortedInTheSameTurn(self) -> None:
        """
        A connection aborted by another connection's handler earlier in the same turn gets no
        more bytes, even though its read event was already polled: the abort took it out of the
        reactor's selectables, and the loop skips events of descriptors no longer there.
        """
        first, _ = self.client()
        second, _ = self.client()
        protocols = self.servers[:2]

        def abortTheOther(index: int) -> Any:
            return lambda: protocols[1 - index].transport.abortConnection()

        protocols[0].onData = abortTheOther(0)
        protocols[1].onData = abortTheOther(1)
        first.transport.write(b"a")
        second.transport.write(b"b")
        for _ in range(3):
            self.reactor.iterate(0.05)  # both writes are polled in one turn or in two
        # Whichever ran first aborted the other, which never saw its bytes.
        self.assertEqual(sorted(len(p.received) for p in protocols), [0, 1])
        self.assertTrue(any(p.lost and p.lost[0].check(ConnectionAborted) for p in protocols))

    def test_instanceDoReadIsTwisteds(self) -> None:
        """
        A connection whose instance replaced C{doRead} (a client still connecting has
        C{doConnect} there, an aborted connection a no-op) has its read events go through
        Twisted's dispatch to that C{doRead}: the loop does not read its socket.
        """
        client, serverTransport = self.client()
        calls: list[str] = []
        serverTransport.doRead = lambda: calls.append("instance doRead")  # type: ignore[method-assign]
        real = self.reactor._poller
        fd = serverTransport.fileno()

        class OneReadEvent:
            def poll(self, timeout: float, maxEvents: int) -> list[tuple[int, int]]:
                return [(fd, fastpoll.EPOLLIN)]

        client.transport.write(b"unread")
        self.spin(lambda: not client.transport.dataBuffer and not client.transport._tempDataBuffer)
        self.reactor._poller = OneReadEvent()
        try:
            self.reactor.doIteration(0)
        finally:
            self.reactor._poller = real
        self.assertEqual((calls, self.servers[0].received), (["instance doRead"], []))
