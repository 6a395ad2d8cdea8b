"""
Tests for L{meshproxy.proxy.directwrite}: writes that go straight to the socket when Twisted's queue is
empty, and through C{transport.write} otherwise.  A real L{tcp.Connection} is built around one end of a
socket pair with a memory reactor (nothing is registered with a real reactor); a scripted socket stands
in where the kernel's answer must be chosen (partial sends, errors).
"""

from __future__ import annotations

import socket
from typing import Any, Sequence

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.proxy.directwrite import BATCH, directWriters
from meshproxy.stats import Counter


class ScriptedSocket:
    """
    A socket whose C{send}/C{sendmsg} accept as many bytes as told, or raise what they are told.
    C{calls} records each call's name and the pieces it was given.
    """

    def __init__(self, accept: int | None = None, error: Exception | None = None) -> None:
        self.accept = accept
        self.error = error
        self.sent: list[bytes] = []
        self.calls: list[tuple[str, list[bytes]]] = []

    def _take(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        count = len(data) if self.accept is None else min(self.accept, len(data))
        self.sent.append(data[:count])
        return count

    def send(self, data: bytes) -> int:
        self.calls.append(("send", [data]))
        return self._take(data)

    def sendmsg(self, pieces: Sequence[bytes]) -> int:
        self.calls.append(("sendmsg", list(pieces)))
        return self._take(b"".join(pieces))


class DirectWriteTestMixin:
    def connection(self) -> tuple[tcp.Connection, socket.socket]:
        """
        A connected L{tcp.Connection} on one end of a socket pair, and the other end.
        """
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)  # type: ignore[attr-defined]
        self.addCleanup(peer.close)  # type: ignore[attr-defined]
        peer.setblocking(False)
        self.reactor = MemoryReactor()
        transport = tcp.Connection(ours, Protocol(), self.reactor)
        transport.connected = True
        return transport, peer

    def scripted(self, socket: ScriptedSocket) -> tuple[tcp.Connection, Any, Any]:
        """
        A connection whose socket is C{socket}, with its direct writers.
        """
        transport, _ = self.connection()
        transport.socket = socket  # type: ignore[assignment]
        write, writeSequence = directWriters(transport)
        return transport, write, writeSequence

    def queued(self, transport: tcp.Connection) -> list[bytes]:
        """
        What Twisted's queue holds, in order.
        """
        return ([bytes(transport.dataBuffer)] if transport.dataBuffer else []) + list(transport._tempDataBuffer)

    def receive(self, peer: socket.socket) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = peer.recv(1 << 20)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


class OtherTransportTests(SynchronousTestCase):
    """
    Transports that are not TCP/UNIX connections keep their own methods.
    """

    def test_plainMethods(self) -> None:
        """
        A string transport (or TLS) gets its own C{write} and C{writeSequence}.
        """
        transport = StringTransport()
        self.assertEqual(directWriters(transport), (transport.write, transport.writeSequence))

    def test_counted(self) -> None:
        """
        With a counter, every byte handed over is counted and still written.
        """
        transport, counter = StringTransport(), Counter()
        write, writeSequence = directWriters(transport, counter)
        write(b"abc")
        writeSequence([b"de", b"", b"f"])
        self.assertEqual((transport.value(), counter.value), (b"abcdef", 6))


class SocketPairTests(DirectWriteTestMixin, SynchronousTestCase):
    """
    A real connection over a socket pair.
    """

    def test_emptyQueueWrite(self) -> None:
        """
        With nothing queued, bytes go to the socket at once: nothing is queued and the reactor is
        not asked to watch for writability.
        """
        transport, peer = self.connection()
        write, _ = directWriters(transport)
        write(b"hello")
        self.assertEqual(self.receive(peer), b"hello")
        self.assertEqual((self.queued(transport), self.reactor.getWriters()), ([], []))

    def test_emptyQueueWriteSequence(self) -> None:
        """
        A sequence goes out in one send, in order.
        """
        transport, peer = self.connection()
        _, writeSequence = directWriters(transport)
        writeSequence([b"a", b"bc", b"", b"def"])
        writeSequence([])
        self.assertEqual(self.receive(peer), b"abcdef")
        self.assertEqual(self.queued(transport), [])

    def test_queueNotEmpty(self) -> None:
        """
        Once Twisted holds bytes, everything goes through C{transport.write}, after them, and leaves
        in order when the transport writes.
        """
        transport, peer = self.connection()
        write, writeSequence = directWriters(transport)
        transport.write(b"1")
        write(b"2")
        writeSequence([b"3", b"4"])
        self.assertEqual(self.receive(peer), b"")
        self.assertEqual(self.queued(transport), [b"1", b"2", b"3", b"4"])
        self.assertEqual(self.reactor.getWriters(), [transport])
        transport.doWrite()
        self.assertEqual(self.receive(peer), b"1234")

    def test_partialSendOverSocket(self) -> None:
        """
        What the kernel does not take is queued, and arrives after the part it took.
        """
        transport, peer = self.connection()
        write, _ = directWriters(transport)
        data = bytes(range(256)) * 40000
        write(data)
        queued = b"".join(self.queued(transport))
        self.assertTrue(0 < len(queued) < len(data))
        received = [self.receive(peer)]
        while transport._tempDataLen or transport.dataBuffer:
            transport.doWrite()
            received.append(self.receive(peer))
        self.assertEqual(b"".join(received), data)

    def test_counted(self) -> None:
        """
        The direct path counts what it is handed, sent at once or queued.
        """
        transport, peer = self.connection()
        counter = Counter()
        write, writeSequence = directWriters(transport, counter)
        write(b"abc")
        transport.write(b"queued ")
        writeSequence([b"de", b"f"])
        self.assertEqual(counter.value, 6)
        transport.doWrite()
        self.assertEqual(self.receive(peer), b"abcqueued def")

    def test_closingGoesThroughTwisted(self) -> None:
        """
        A transport that is disconnecting, half-closed or not connected is left to Twisted.
        """
        for attribute in ("disconnecting", "_writeDisconnected"):
            transport, peer = self.connection()
            write, _ = directWriters(transport)
            setattr(transport, attribute, True)
            write(b"x")
            self.assertEqual(self.receive(peer), b"", attribute)
        transport, peer = self.connection()
        write, _ = directWriters(transport)
        transport.connected = False
        write(b"x")
        self.assertEqual((self.receive(peer), self.queued(transport)), (b"", []))


class ScriptedSendTests(DirectWriteTestMixin, SynchronousTestCase):
    """
    Partial sends and errors, chosen.
    """

    def test_partialWrite(self) -> None:
        """
        The unsent tail of a write is queued.
        """
        transport, write, _ = self.scripted(ScriptedSocket(accept=2))
        write(b"abcde")
        self.assertEqual(transport.socket.sent, [b"ab"])  # type: ignore[attr-defined]
        self.assertEqual(self.queued(transport), [b"cde"])

    def test_blockedWrite(self) -> None:
        """
        A send that would block queues everything.
        """
        transport, write, writeSequence = self.scripted(ScriptedSocket(error=BlockingIOError()))
        write(b"abc")
        self.assertEqual(self.queued(transport), [b"abc"])

    def test_errorWrite(self) -> None:
        """
        Any other socket error queues the bytes, for Twisted's write path to report.
        """
        transport, write, writeSequence = self.scripted(ScriptedSocket(error=ConnectionResetError()))
        write(b"abc")
        self.assertEqual(self.queued(transport), [b"abc"])

    def test_sequenceSplit(self) -> None:
        """
        After a partial C{sendmsg} the rest is queued piece by piece: the piece the send ended in
        from where it ended, the later pieces whole; an end on a piece boundary queues whole pieces.
        """
        cases = [
            (5, [b"fg", b"hi"]),
            (3, [b"defg", b"hi"]),
            (0, [b"abc", b"defg", b"hi"]),
            (1, [b"bc", b"defg", b"hi"]),
            (8, [b"i"]),
            (9, []),
        ]
        for accept, rest in cases:
            transport, _, writeSequence = self.scripted(ScriptedSocket(accept=accept))
            writeSequence([b"abc", b"defg", b"hi"])
            self.assertEqual(self.queued(transport), rest, accept)

    def test_errorSequence(self) -> None:
        """
        A failing or blocked C{sendmsg} queues every piece.
        """
        for error in (BlockingIOError(), BrokenPipeError()):
            transport, _, writeSequence = self.scripted(ScriptedSocket(error=error))
            writeSequence([b"abc", b"de"])
            self.assertEqual(self.queued(transport), [b"abc", b"de"])

    def test_backpressureAfterQueueing(self) -> None:
        """
        Queued remainders count toward the transport's buffer, so a registered producer is paused.
        """
        transport, write, _ = self.scripted(ScriptedSocket(accept=0))
        producer = StringTransport()
        transport.bufferSize = 4
        transport.registerProducer(producer, True)
        write(b"abcdef")
        self.assertEqual(producer.producerState, "paused")


class BatchTests(DirectWriteTestMixin, SynchronousTestCase):
    """
    While L{BATCH} is open (a reactor turn dispatched by L{meshproxy.fastpoll}), direct writes are
    held per transport and sent together by C{flush}.
    """

    def setUp(self) -> None:
        BATCH.open()
        self.addCleanup(BATCH.flush)

    def test_heldUntilFlush(self) -> None:
        """
        Nothing reaches the socket before the flush; then everything does, in order, in one call.
        """
        transport, write, writeSequence = self.scripted(ScriptedSocket())
        write(b"head ")
        writeSequence([b"body", b" tail"])
        write(b"!")
        self.assertEqual(transport.socket.calls, [])  # type: ignore[attr-defined]
        BATCH.flush()
        self.assertEqual(transport.socket.calls,  # type: ignore[attr-defined]
                         [("sendmsg", [b"head ", b"body", b" tail", b"!"])])
        self.assertEqual(self.queued(transport), [])

    def test_singleWriteIsPlainSend(self) -> None:
        """
        One held write goes out with C{send}; after the flush, writes are sent at once again.
        """
        transport, write, _ = self.scripted(ScriptedSocket())
        write(b"one")
        BATCH.flush()
        write(b"two")
        self.assertEqual(transport.socket.calls, [("send", [b"one"]), ("send", [b"two"])])  # type: ignore[attr-defined]

    def test_perTransport(self) -> None:
        """
        Each transport gets its own bytes over a real socket pair.
        """
        (first, firstPeer), (second, secondPeer) = self.connection(), self.connection()
        writeFirst, _ = directWriters(first)
        writeSecond, writeSecondSequence = directWriters(second)
        writeFirst(b"a1")
        writeSecond(b"b1")
        writeFirst(b"a2")
        writeSecondSequence([b"b2", b"b3"])
        self.assertEqual((self.receive(firstPeer), self.receive(secondPeer)), (b"", b""))
        BATCH.flush()
        self.assertEqual((self.receive(firstPeer), self.receive(secondPeer)), (b"a1a2", b"b1b2b3"))

    def test_countedWhenHeld(self) -> None:
        """
        Bytes are counted when they are handed over, held or not.
        """
        transport, _ = self.connection()
        counter = Counter()
        write, writeSequence = directWriters(transport, counter)
        write(b"abc")
        writeSequence([b"de"])
        self.assertEqual(counter.value, 5)

    def test_busyTransportQueuesBehind(self) -> None:
        """
        Bytes held for a transport whose Twisted queue is not empty at the flush are queued behind
        what Twisted holds, and leave after it.
        """
        transport, peer = self.connection()
        write, writeSequence = directWriters(transport)
        transport.write(b"1")
        write(b"2")
        writeSequence([b"3"])
        self.assertEqual(self.queued(transport), [b"1"])
        BATCH.flush()
        self.assertEqual(self.queued(transport), [b"1", b"2", b"3"])
        transport.doWrite()
        self.assertEqual(self.receive(peer), b"123")

    def test_queueDrainedDuringTheTurn(self) -> None:
        """
        When Twisted's queue empties later in the same turn (the transport's write event came after
        the write), the held bytes are sent directly at the flush, after the queued ones.
        """
        transport, peer = self.connection()
        write, _ = directWriters(transport)
        transport.write(b"first ")
        write(b"second")
        transport.doWrite()
        self.assertEqual(self.queued(transport), [])
        BATCH.flush()
        self.assertEqual(self.receive(peer), b"first second")

    def test_flushTransport(self) -> None:
        """
        C{flushTransport} sends one transport's held bytes now, so that bytes written next through
        its own C{write} follow them; the other transports stay held.
        """
        (first, firstPeer), (second, secondPeer) = self.connection(), self.connection()
        writeFirst, _ = directWriters(first)
        writeSecond, _ = directWriters(second)
        writeFirst(b"head")
        writeSecond(b"other")
        BATCH.flushTransport(first)
        first.write(b"+relay")
        first.doWrite()
        self.assertEqual((self.receive(firstPeer), self.receive(secondPeer)), (b"head+relay", b""))
        BATCH.flushTransport(first)  # nothing held any more: nothing sent twice
        BATCH.flush()
        self.assertEqual((self.receive(firstPeer), self.receive(secondPeer)), (b"", b"other"))

    def test_closedBeforeFlush(self) -> None:
        """
        A transport that started closing after its bytes were held gets them through Twisted's
        queue, which sends them before it closes; one that is gone drops them.
        """
        transport, peer = self.connection()
        write, _ = directWriters(transport)
        write(b"last words")
        transport.loseConnection()
        BATCH.flush()
        self.assertEqual(self.queued(transport), [b"last words"])
        transport.doWrite()
        self.assertEqual(self.receive(peer), b"last words")
        BATCH.open()
        gone, gonePeer = self.connection()
        write, _ = directWriters(gone)
        write(b"lost")
        gone.connected = False
        BATCH.flush()
        self.assertEqual((self.receive(gonePeer), self.queued(gone)), (b"", []))

    def test_partialSendAtFlush(self) -> None:
        """
        What the kernel does not take at the flush is queued, from where it stopped.
        """
        transport, write, writeSequence = self.scripted(ScriptedSocket(accept=3))
        write(b"ab")
        writeSequence([b"cd", b"ef"])
        BATCH.flush()
        self.assertEqual(self.queued(transport), [b"d", b"ef"])

    def test_openTwice(self) -> None:
        """
        Opening an open batch keeps what it holds.
        """
        transport, write, _ = self.scripted(ScriptedSocket())
        write(b"held")
        BATCH.open()
        BATCH.flush()
        self.assertEqual(transport.socket.sent, [b"held"])  # type: ignore[attr-defined]
