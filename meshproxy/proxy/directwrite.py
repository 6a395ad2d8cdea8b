"""
Writing to TCP/UNIX transports without waiting for the next reactor turn (and turning Nagle off,
the other per-transport setting of the data path).

Twisted's C{transport.write} only queues: the bytes go out when the reactor next polls the socket
for writability, which costs an epoll modification, a poll event and a C{doWrite} call chain per
write.  On the proxy's per-request path that is two extra reactor events per request.  When a
transport's queue is empty, these writers send at once and hand only the remainder (if the kernel
buffer was full) to C{transport.write}, so ordering, backpressure (producers are paused only when
bytes are actually queued) and error handling stay Twisted's.

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


def _direct(transport: Any, counter: Any) -> tuple[Writer, SequenceWriter]:
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

    def write(data: bytes) -> None:
        counter.value += len(data)
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

    def writeSequence(pieces: Sequence[bytes]) -> None:
        if not pieces:
            return
        counter.value += sum(map(len, pieces))
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
