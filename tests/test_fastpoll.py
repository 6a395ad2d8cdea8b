"""
L{meshproxy.fastpoll}: the epoll reactor's dispatch without the per-event log context, on a real
epoll reactor instance and real sockets.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from meshproxy import fastpoll


class Reader:
    """
    The least a selectable must be for the reactor: reads what arrives, records the close.
    """

    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock = sock
        self.fail = fail
        self.received: list[bytes] = []
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "Reader"

    def doRead(self) -> Any:
        self.received.append(self.sock.recv(100))
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
