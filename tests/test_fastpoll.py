"""
L{meshproxy.fastpoll}: the epoll reactor's dispatch without the per-event log context, on a real
epoll reactor instance and real sockets.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
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
