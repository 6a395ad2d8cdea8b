"""
One pooled HTTP/1.1 connection to an upstream host.

It parses responses with the strict codec (client role) and hands their events to the current
exchange, the downstream request that owns the connection for the moment.  Between requests it
sits idle in its cluster's pool; data arriving while idle (a server that talks out of turn) or a
close while idle just drops it from the pool.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.error import TimeoutError
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshproxy.cluster.cluster import Cluster, UpstreamHost
from meshproxy.proxy.directwrite import directWriters, setNoDelay
from meshproxy.http import (
    CLIENT,
    NEED_DATA,
    PAUSED,
    BodyData,
    EndOfMessage,
    HTTP1Parser,
    HTTPLimits,
    HTTPParseError,
    ResponseHead,
)


class UpstreamConnection(Protocol):
    """
    An HTTP/1.1 client connection owned by a L{meshproxy.cluster.pool.ClusterPool}.

    States:
      - CONNECTING: dialled, not yet connected.
      - IDLE: in the pool, no exchange.
      - BUSY: an exchange sent a request and receives the response events.
      - UPGRADED: a 101 switched it to a raw tunnel; the exchange owns the transport now.
      - CLOSED
    """

    log = Logger()

    CONNECTING, IDLE, BUSY, UPGRADED, CLOSED = "CONNECTING", "IDLE", "BUSY", "UPGRADED", "CLOSED"

    # Slots for the per-request state (Protocol has no __slots__: anything else goes to the dict).
    __slots__ = (
        "pool", "host", "cluster", "state", "parser", "exchange", "requestsSent", "idleSince",
        "responseStarted", "responseKeepAlive", "_onReady", "write", "writeSequence",
    )

    def __init__(self, pool: Any, host: UpstreamHost, cluster: Cluster, limits: HTTPLimits) -> None:
        self.pool = pool
        self.host = host
        self.cluster = cluster
        self.state = self.CONNECTING
        self.parser = HTTP1Parser(CLIENT, limits)
        self.exchange: Any = None
        self.requestsSent = 0
        self.idleSince = 0.0
        self.responseStarted = False
        self.responseKeepAlive = True
        self._onReady: Any = None

    def connectionMade(self) -> None:
        setNoDelay(self.transport)
        self.transport.bufferSize = self.cluster.bufferLimit  # type: ignore[union-attr]
        self.cluster.connectionOpened(self.host)
        self.write, self.writeSequence = directWriters(self.transport, self.cluster.bytesSent)
        self.state = self.IDLE
        ready, self._onReady = self._onReady, None
        ready(self)

    def send(self, exchange: Any, method: bytes, head: bytes) -> None:
        """
        Start a request: C{head} is the serialized request head; body bytes follow through
        C{transport.write} by the exchange.
        """
        self.state = self.BUSY
        self.exchange = exchange
        self.requestsSent += 1
        self.responseStarted = False
        self.responseKeepAlive = True
        self.parser.expectResponse(method)
        self.write(head)

    def dataReceived(self, data: bytes) -> None:
        self.cluster.bytesReceived.value += len(data)
        exchange = self.exchange
        if exchange is None:
            # Nothing was asked: a server speaking out of turn cannot be trusted with the next request.
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        parser = self.parser
        parser.feed(data)
        try:
            while self.exchange is exchange:
                event = parser.nextEvent()
                kind = type(event)
                if kind is BodyData:
                    exchange.responseBody(event.data)  # type: ignore[union-attr]
                elif event is NEED_DATA:
                    exchange.responseFlush()
                    return
                elif kind is ResponseHead:
                    status = event.status  # type: ignore[union-attr]
                    if status >= 200 or status == 101:
                        self.responseStarted = True  # interim 1xx heads do not start the response
                        self.responseKeepAlive = event.keepAlive  # type: ignore[union-attr]
                        body = parser.takeBody()
                        if body is not None:
                            # The whole response is here (the usual small one): head, body and
                            # end in one call, with no body deadline or producer to set up.
                            self.exchange = None
                            exchange.responseWhole(event, body)
                            continue
                    exchange.responseHead(event)
                elif kind is EndOfMessage:
                    self.exchange = None
                    exchange.responseEnd(event.trailers)  # type: ignore[union-attr]
                elif event is PAUSED:
                    self.state = self.UPGRADED
                    self.exchange = None
                    exchange.upstreamUpgraded(parser.switchedProtocols())
                    return
                else:
                    return
        except HTTPParseError as e:
            self.exchange = None
            self.transport.abortConnection()  # type: ignore[union-attr]
            exchange.upstreamFailed("upstream_protocol_error", self.responseStarted, e.reason)

    def finished(self, reusable: bool, paused: bool = True) -> None:
        """
        The exchange is done with this connection: back to the pool (or closed).  C{paused}: the
        exchange may have paused the transport (it was the producer of a streamed body), so
        reading must be resumed.
        """
        if self.state != self.BUSY:
            return
        self.state = self.IDLE
        self.exchange = None
        if paused:
            self.transport.resumeProducing()  # type: ignore[union-attr]
        # A response that ends the connection (Connection: close, HTTP/1.0) is never pooled.
        self.pool.release(self, reusable and self.responseKeepAlive and self.parser.bufferedBytes == 0)

    def close(self) -> None:
        """
        Close the connection (idle expiry, pool shrink, or an unusable state).
        """
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        wasIdle = self.state == self.IDLE
        previous = self.state
        self.state = self.CLOSED
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            # A close-delimited body ends here; anything else is a reset mid-exchange.
            try:
                self.parser.feedEOF()
                while True:
                    event = self.parser.nextEvent()
                    if type(event) is BodyData:
                        exchange.responseBody(event.data)  # type: ignore[union-attr]
                    elif type(event) is EndOfMessage:
                        exchange.responseEnd(event.trailers)  # type: ignore[union-attr]
                        exchange = None
                        break
                    else:
                        break
            except HTTPParseError:
                pass
            if exchange is not None:
                if reason.check(SSL.Error) and not self.responseStarted:
                    # The TLS handshake failed (a certificate that does not verify, no shared
                    # protocol): nothing was sent, and retrying the same host would fail alike.
                    exchange.upstreamFailed("upstream_tls_failed", False, str(reason.value))
                else:
                    exchange.upstreamFailed("upstream_reset", self.responseStarted, "connection closed")
        if previous != self.CONNECTING:
            self.cluster.connectionClosed(self.host)
        self.pool.connectionLost(self, wasIdle)


class UpstreamConnectionFactory(ClientFactory):
    """
    Dials one L{UpstreamConnection} and reports success or failure to the pool's callbacks.
    """

    noisy = False

    def __init__(self, connection: UpstreamConnection, ready: Any, failed: Any) -> None:
        self.connection = connection
        connection._onReady = ready
        self.failed = failed

    def buildProtocol(self, addr: object) -> UpstreamConnection:
        return self.connection

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.connection.cluster.connectFailed(self.connection.host)
        self.failed("upstream_connect_timeout" if reason.check(TimeoutError) else "upstream_connect_failed")


def dialerFor(limits: HTTPLimits) -> Any:
    """
    The C{connect(pool, host, ready, failed)} callable pools use to open HTTP/1.1 connections.
    """

    def connect(pool: Any, host: UpstreamHost, ready: Any, failed: Any) -> None:
        connection = UpstreamConnection(pool, host, pool.cluster, limits)
        pool.cluster.connect(host, UpstreamConnectionFactory(connection, ready, failed))

    return connect
