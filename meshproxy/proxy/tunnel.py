"""
The raw relay an HTTP connection becomes after a 101 Switching Protocols (WebSocket and other
upgrades): both transports are re-pointed at two small relay protocols, each the other's
producer, with half-close relayed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.proxy.directwrite import BATCH
from meshproxy.sniff import switchProtocol


@implementer(IHalfCloseableProtocol)
class TunnelSide(Protocol):
    """
    One side of an upgraded connection: what it receives goes to the peer's transport.
    """

    def __init__(self, onLost: Any, received: Any, sentByPeer: Any, idle: TunnelIdle | None = None) -> None:
        self.peer: TunnelSide | None = None
        self.idle = idle
        self._received = received
        self._sentByPeer = sentByPeer
        self._onLost = onLost
        self.closed = False
        self.eof = False

    def dataReceived(self, data: bytes) -> None:
        size = len(data)
        if self.idle is not None:
            self.idle.moved += size
        self._received.value += size
        self._sentByPeer.value += size
        self.peer.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        """
        This side sent FIN: pass it on; once both sides have, close both (Twisted does not end a
        half-closeable connection by itself).
        """
        self.eof = True
        peer = self.peer
        assert peer is not None
        if peer.closed:
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif peer.eof:
            self.transport.loseConnection()  # type: ignore[union-attr]
            peer.transport.loseConnection()  # type: ignore[union-attr]
        else:
            peer.transport.loseWriteConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if self.idle is not None:
            self.idle.stop()
        assert self.peer is not None
        if not self.peer.closed:
            self.peer.transport.loseConnection()  # type: ignore[union-attr]
        onLost, self._onLost = self._onLost, None
        if onLost is not None:
            onLost(reason)


class TunnelIdle:
    """
    Closes a tunnel in which no byte moved for C{timeout} seconds.

    The sides only add to L{moved}; a check every quarter of the timeout notes when it last
    changed, so an idle tunnel closes between 1 and 1.25 times the timeout after its last byte,
    without a clock read per chunk.
    """

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.moved = 0
        self._clock = clock
        self._timeout = timeout
        self._seen = 0
        self._changedAt = clock.seconds()
        self._call: IDelayedCall | None = clock.callLater(timeout / 4, self._check)
        self.sides: tuple[TunnelSide, ...] = ()

    def _check(self) -> None:
        now = self._clock.seconds()
        if self.moved != self._seen:
            self._seen = self.moved
            self._changedAt = now
        elif now - self._changedAt >= self._timeout:
            self._call = None
            for side in self.sides:
                if not side.closed:
                    side.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._call = self._clock.callLater(self._timeout / 4, self._check)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()


def startTunnel(
    server: Any,
    upstream: Any,
    clientBytes: bytes,
    upstreamBytes: bytes,
    clock: IReactorTime | None = None,
    idleTimeout: float | None = None,
) -> None:
    """
    Turn the client connection of C{server} (an L{HTTPServerConnection}) and C{upstream} (an
    L{UpstreamConnection}) into a raw relay, first delivering bytes each parser already held; with
    C{clock} and C{idleTimeout}, the relay closes after that long without a byte either way.
    """
    listener, cluster = server.downstream, upstream.cluster
    idle = TunnelIdle(clock, idleTimeout) if clock is not None and idleTimeout else None
    # Bytes the client sends are received on the listener and sent to the cluster, and back.
    down = TunnelSide(lambda reason: server.downstream.closed(), listener.bytesReceived, cluster.bytesSent, idle)
    up = TunnelSide(upstream.connectionLost, cluster.bytesReceived, listener.bytesSent, idle)
    if idle is not None:
        idle.sides = (down, up)
    down.peer, up.peer = up, down
    downTransport, upTransport = server.transport, upstream.transport
    # The 101 (and the upgrade request) may still be held for this reactor turn: out before the
    # relay writes through the transports' own queues.
    BATCH.flushTransport(downTransport)
    BATCH.flushTransport(upTransport)
    switchProtocol(downTransport, server, down)
    switchProtocol(upTransport, upstream, up)
    down.makeConnection(downTransport)
    up.makeConnection(upTransport)
    upTransport.registerProducer(downTransport, True)
    downTransport.registerProducer(upTransport, True)
    downTransport.resumeProducing()
    upTransport.resumeProducing()
    if upstreamBytes:
        listener.bytesSent.value += len(upstreamBytes)
        downTransport.write(upstreamBytes)
    if clientBytes:
        cluster.bytesSent.value += len(clientBytes)
        upTransport.write(clientBytes)
