"""
Writing to TCP/UNIX transports without an epoll round trip per write (and turning Nagle off, the
other per-transport setting of the data path).

Twisted's C{transport.write} only queues: the bytes go out when the reactor next polls the socket
for writability, which costs an epoll modification, a poll event and a C{doWrite} call chain per
write.  On the proxy's per-request path that is two extra reactor events per request.  When a
transport's queue is empty, these writers send themselves and hand only the remainder (if the
kernel buffer was full) to C{transport.write}, so ordering, backpressure (producers are paused only
when bytes are actually queued) and error handling stay Twisted's.

Inside a reactor turn that L{meshproxy.fastpoll} dispatches, the writes are held in the
L{WriteBatch} and sent together when the turn's events have all run (one send per transport per
turn); outside one (timers, tests, other reactors) they are sent at once.

They rely on C{twisted.internet.abstract.FileDescriptor}'s queue fields (C{dataBuffer},
C{_tempDataLen}, C{_writeDisconnected}), the same from Twisted 22.4 to 26; any other transport
(string transports in tests, TLS) gets its plain C{write}/C{writeSequence}.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet import tcp

Writer = Callable[[bytes], None]
SequenceWriter = Callable[[Sequence[bytes]], None]


def directWriters(transport: Any, counter: Any = None) -> tuple[Writer, SequenceWriter]:
    """
    C{(write, writeSequence)} for C{transport}: direct when it is a TCP/UNIX connection.  Every
    byte handed to them is added to C{counter} (a L{meshproxy.stats.Counter}) when one is given.
    """
    if not isinstance(transport, tcp.Connection):
        if counter is None:
            return transport.write, transport.writeSequence
        return _counting(transport.write, transport.writeSequence, counter)
    return _direct(transport, _Uncounted() if counter is None else counter)


class _Uncounted:
    """
    Where the bytes of an uncounted direct writer are added up (and never read).
    """

    value = 0


def _counting(write: Writer, writeSequence: SequenceWriter, counter: Any) -> tuple[Writer, SequenceWriter]:
    def countedWrite(data: bytes) -> None:
        counter.value += len(data)
        write(data)

    def countedWriteSequence(pieces: Sequence[bytes]) -> None:
        counter.value += sum(map(len, pieces))
        writeSequence(pieces)

    return countedWrite, countedWriteSequence


class WriteBatch:
    """
    Writes held back to the end of the reactor turn.

    While a batch is open (L{meshproxy.fastpoll} opens one around the dispatch of the events of one
    poll), the direct writers keep what they are handed, per transport and in order, and
    L{flush} sends each transport's share with one C{send}/C{sendmsg} when every event of the turn
    has run.  On loopback and on a busy host this is most of the kernel's cost per write: a send
    wakes the peer, and a peer that is woken once per turn for all the bytes of the turn costs far
    less than one woken per response (measured: the proxy's CPU per request falls by a fifth; see
    bench/RESULTS.md).  Twisted's own C{transport.write} defers every write to a later turn in
    the same way; the batch only saves the epoll round trip that costs.

    @ivar pending: L{None} when closed; else the held writes, as C{{transport: [sender, piece,
        piece, ...]}}.
    """

    def __init__(self) -> None:
        self.pending: dict[Any, list[Any]] | None = None

    def open(self) -> None:
        """
        Hold direct writes from now until L{flush}.
        """
        if self.pending is None:
            self.pending = {}

    def flush(self) -> None:
        """
        Send everything held, and close the batch: writes go out at once again.
        """
        pending, self.pending = self.pending, None
        if pending:
            for held in pending.values():
                held[0](held)

    def flushTransport(self, transport: Any) -> None:
        """
        Send what is held for C{transport} now: before anything is written to it through its own
        C{write}, which must come after.
        """
        if self.pending:
            held = self.pending.pop(transport, None)
            if held is not None:
                held[0](held)


#: The process's one batch: one reactor runs, and opens and flushes it (L{meshproxy.fastpoll}).
BATCH = WriteBatch()


def _direct(transport: Any, counter: Any, batch: WriteBatch = BATCH) -> tuple[Writer, SequenceWriter]:
    send = transport.socket.send
    sendmsg = transport.socket.sendmsg
    queueWrite = transport.write

    def busy() -> bool:
        # Anything queued (or the transport going away): the bytes must queue behind it.
        return bool(
            transport._tempDataLen
            or transport.dataBuffer
            or transport.disconnecting
            or transport._writeDisconnected
            or not transport.connected
        )

    def sendNow(data: bytes) -> None:
        if busy():
            queueWrite(data)
            return
        try:
            sent = send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            queueWrite(data)  # Twisted's own write path will notice and report the error
            return
        if sent < len(data):
            queueWrite(data[sent:])

    def sendPiecesNow(pieces: Sequence[bytes]) -> None:
        if busy():
            for piece in pieces:
                queueWrite(piece)
            return
        try:
            sent = sendmsg(pieces)
        except BlockingIOError:
            sent = 0
        except OSError:
            for piece in pieces:
                queueWrite(piece)
            return
        for piece in pieces:
            size = len(piece)
            if sent >= size:
                sent -= size
            elif sent:
                queueWrite(piece[sent:])
                sent = 0
            else:
                queueWrite(piece)

    def sendHeld(held: list[Any]) -> None:
        # held[0] is this function, the pieces follow in the order they were written.
        if len(held) == 2:
            sendNow(held[1])
        else:
            sendPiecesNow(held[1:])

    def write(data: bytes) -> None:
        counter.value += len(data)
        pending = batch.pending
        if pending is None:
            sendNow(data)
            return
        held = pending.get(transport)
        if held is None:
            # Whether Twisted holds bytes for this transport is asked at the flush: they are sent
            # (or queued) behind whatever it still holds then.
            pending[transport] = [sendHeld, data]
        else:
            held.append(data)

    def writeSequence(pieces: Sequence[bytes]) -> None:
        if batch.pending is not None:
            for piece in pieces:
                write(piece)  # held together with the rest of the turn's writes: one send
            return
        if pieces:
            counter.value += sum(map(len, pieces))
            sendPiecesNow(pieces)

    return write, writeSequence


def setNoDelay(transport: Any) -> None:
    """
    Disable Nagle where the transport allows it (TCP): every response tail would otherwise wait
    for the peer's delayed ACK.
    """
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        try:
            setter(True)
        except OSError:
            pass
