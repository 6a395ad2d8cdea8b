"""
A NATS client on Twisted: one long-lived L{NATSClient} that keeps a connection to one of several
servers, and a L{NATSClientProtocol} per TCP connection.

The client reconnects for ever with exponential backoff and jitter, moving through the configured
servers and those the cluster advertises in C{INFO connect_urls}.  After every (re)connect it sends
C{CONNECT}, every live subscription again under its old sid, and a C{PING}; the server's C{PONG}
proves the connection (and the credentials) good, and only then does the client count as
connected, send what was published meanwhile, and call the connected callbacks (gorouter publishes
C{router.start} there).

Publishing while disconnected buffers the encoded C{PUB}s up to C{pendingLimit} bytes (8 MiB, like
nats.go's reconnect buffer) and sends them after the next handshake; beyond that a publish is
dropped and counted in C{messagesDropped}.  L{NATSClient.stop} drops the buffer.

The backoff counts attempts that did not reach "connected"; it is reset only by a completed
handshake, so a server that accepts TCP but refuses the credentials is retried ever more slowly.
(Twisted's C{ClientService} resets it when TCP connects, and takes one endpoint, not a changing
server list, so it is not used; its C{backoffPolicy} is the model for L{backoffDelay}.)
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, Callable, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConnector, IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from meshproxy.natsproto import (
    DEFAULT_MAX_PAYLOAD, MAX_PAYLOAD_CEILING, PING, PONG, Control, MessageCallback, NATSClosedError, NATSError,
    NATSMessage, NATSNotConnectedError, NATSParser, NATSPayloadTooLarge, NATSProtocolError, NATSTimeoutError,
    Server, ServerError, ServerInfo, ServerList, Subscription, backoffDelay, encodeConnect, encodePub,
    encodeSubject, encodeUnsub,
)

__all__ = [
    "NATSClient", "NATSClientProtocol", "NATSMessage", "NATSError", "NATSTimeoutError", "NATSClosedError",
    "NATSNotConnectedError", "NATSPayloadTooLarge",
]

VERSION = "0.1.0"

#: -ERR texts (lower case) after which the connection is dropped at once and retried.
_FATAL_ERRORS = ("authorization violation", "authentication", "stale connection")


class NATSClientProtocol(Protocol):
    """
    One connection to one NATS server, on behalf of a L{NATSClient}.

    States (C{state}): C{awaitingInfo} until the server's C{INFO}; C{handshaking} after sending
    C{CONNECT}, the subscriptions and a C{PING}, until its C{PONG}; C{connected}; C{closed}.  The
    handshake (both waits) is bounded by the client's C{connectTimeout}.  While connected a keepalive
    C{PING} goes out every C{pingInterval}; finding C{maxOutstandingPings} still unanswered at a tick
    means the connection is dead.  The server's C{PING} is answered at once in every state.
    """

    log = Logger()

    def __init__(self, client: NATSClient, server: Server) -> None:
        self.client = client
        self.server = server
        self.state = "awaitingInfo"
        self.parser = NATSParser()
        self.outstandingPings = 0
        # One entry per PING sent, in order: None (keepalive), a Deferred (flush) or _HANDSHAKE.
        self._pongWaiters: deque[Any] = deque()
        self._timer: IDelayedCall | None = None
        self.closing = False
        #: Deferreds fired once the connection is closed (see L{NATSClient.stop}).
        self.closedWaiters: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        self._timer = self.client.clock.callLater(self.client.connectTimeout, self._handshakeTimedOut)

    def write(self, data: bytes) -> None:
        """
        Send bytes unless the connection is being dropped.
        """
        if not self.closing:
            self.transport.write(data)  # type: ignore[union-attr]

    def ping(self, waiter: Any = None) -> None:
        """
        Send a C{PING}; C{waiter} is told of its C{PONG} (see C{_pongWaiters}).
        """
        self._pongWaiters.append(waiter)
        self.write(PING)

    def drop(self, abort: bool = True) -> None:
        """
        Close the connection; nothing more is sent or delivered on it.
        """
        if self.closing:
            return
        self.closing = True
        self._cancelTimer()
        if abort:
            self.transport.abortConnection()  # type: ignore[union-attr]
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        error = None
        try:
            operations = self.parser.feed(data)
        except NATSProtocolError as e:
            operations, error = e.operations, e
        client = self.client
        for op in operations:
            if self.closing:
                return
            if type(op) is NATSMessage:
                client._deliver(op)
            elif op is Control.PING:
                self.write(PONG)
            elif op is Control.PONG:
                self._pong()
            elif type(op) is ServerInfo:
                self._info(op.info)
            elif type(op) is ServerError:
                client._serverError(self, op.message)
        if error is not None and not self.closing:
            client.badMessages += 1
            self.log.error("NATS protocol error from {server}: {error}", server=self.server, error=str(error))
            self.drop()

    def _info(self, info: dict[str, Any]) -> None:
        client = self.client
        maxPayload = info.get("max_payload")
        if isinstance(maxPayload, int) and maxPayload > 0:
            self.parser.maxPayload = min(maxPayload, MAX_PAYLOAD_CEILING)
            client.maxPayload = self.parser.maxPayload
        client._learnServers(info.get("connect_urls"))
        if self.state != "awaitingInfo":
            return
        if info.get("tls_required"):
            client.errors += 1
            self.log.error("NATS server {server} requires TLS, which this client lacks", server=self.server)
            self.drop()
            return
        if info.get("auth_required") and not client.hasCredentials:
            self.log.warn("NATS server {server} requires auth; no credentials configured", server=self.server)
        self.state = "handshaking"
        self.write(client._connectLine + client._subscriptionLines())
        self.ping(_HANDSHAKE)

    def _pong(self) -> None:
        self.outstandingPings = 0
        waiter = self._pongWaiters.popleft() if self._pongWaiters else None
        if waiter is _HANDSHAKE:
            self._cancelTimer()
            self.state = "connected"
            self._timer = self.client.clock.callLater(self.client.pingInterval, self._keepalive)
            self.client._connectionReady(self)
        elif waiter is not None:
            waiter.callback(None)

    def _keepalive(self) -> None:
        self._timer = None
        if self.outstandingPings >= self.client.maxOutstandingPings:
            self.client.staleConnections += 1
            self.log.warn(
                "NATS server {server} did not answer {count} PINGs; dropping the connection",
                server=self.server,
                count=self.outstandingPings,
            )
            self.drop()
            return
        self.outstandingPings += 1
        self.ping(None)
        self._timer = self.client.clock.callLater(self.client.pingInterval, self._keepalive)

    def _handshakeTimedOut(self) -> None:
        self._timer = None
        self.log.warn("NATS server {server}: no handshake in {t}s", server=self.server, t=self.client.connectTimeout)
        self.drop()

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = True
        self._cancelTimer()
        wasState, self.state = self.state, "closed"
        waiters, self._pongWaiters = self._pongWaiters, deque()
        for waiter in waiters:
            if isinstance(waiter, Deferred):
                waiter.errback(Failure(NATSNotConnectedError("connection lost before PONG")))
        self.client._connectionLost(self, wasState, reason)
        closed, self.closedWaiters = self.closedWaiters, []
        for d in closed:
            d.callback(None)


_HANDSHAKE = object()


class _ConnectionFactory(ClientFactory):
    """
    The factory for one connection attempt; an attempt the client no longer waits for is ignored.
    """

    noisy = False

    def __init__(self, client: NATSClient, server: Server) -> None:
        self.client = client
        self.server = server

    def buildProtocol(self, addr: Any) -> NATSClientProtocol | None:  # type: ignore[override]
        return self.client._buildProtocol(self)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.client._connectFailed(self, reason)


class NATSClient(Service):
    """
    A NATS client that stays connected: subscriptions, publishing, request/reply, reconnection.

    States: stopped; connecting (a TCP attempt or a handshake under way); connected; waiting (for
    the backoff timer before the next attempt).  Counters are plain ints: C{messagesIn},
    C{messagesOut}, C{messagesDropped}, C{reconnects} (successful re-connections),
    C{connectFailures} (attempts that never became connected), C{errors} (C{-ERR} received),
    C{badMessages} (protocol violations by the server), C{staleConnections} (keepalive timeouts),
    C{callbackErrors}.  It is also a Twisted service: C{startService}/C{stopService} call
    L{start}/L{stop}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTCP,
        servers: list[Server],
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        name: str = "meshproxy",
        pingInterval: float = 20.0,
        maxOutstandingPings: int = 2,
        reconnectMin: float = 0.25,
        reconnectMax: float = 5.0,
        connectTimeout: float = 2.0,
        pendingLimit: int = 8 * 1024 * 1024,
        discoverServers: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if token is not None and user is not None:
            raise ValueError("give either user/password or a token, not both")
        self.reactor = reactor
        self.clock = cast(IReactorTime, reactor)
        self.serverList = ServerList(servers, discoverServers)
        self.hasCredentials = user is not None or token is not None
        self._connectLine = encodeConnect(name, VERSION, user, password, token)
        self.pingInterval = pingInterval
        self.maxOutstandingPings = maxOutstandingPings
        self.reconnectMin = reconnectMin
        self.reconnectMax = reconnectMax
        self.connectTimeout = connectTimeout
        self.pendingLimit = pendingLimit
        self._rng = rng if rng is not None else random.Random()
        self.maxPayload = DEFAULT_MAX_PAYLOAD
        self._started = False
        self._everConnected = False
        self._failures = 0
        self._factory: _ConnectionFactory | None = None
        self._connector: IConnector | None = None
        self._protocol: NATSClientProtocol | None = None
        self._retryCall: IDelayedCall | None = None
        self._subscriptions: dict[int, Subscription] = {}
        self._nextSid = 1
        self._pending: list[bytes] = []
        self._pendingBytes = 0
        self._requests: dict[int, tuple[Deferred[NATSMessage], IDelayedCall]] = {}
        self._connectedCallbacks: list[Callable[[], object]] = []
        self.messagesIn = self.messagesOut = self.messagesDropped = 0
        self.reconnects = self.connectFailures = self.errors = 0
        self.badMessages = self.staleConnections = self.callbackErrors = 0

    # -- life cycle

    def start(self) -> None:
        """
        Start connecting (to the first server, at once); a no-op if already started.
        """
        if self._started:
            return
        self._started = True
        self._failures = 0
        if self._protocol is not None and self._protocol.closing:
            self._protocol = None  # closed by an earlier stop(); its end no longer concerns us
        self._attempt()

    def stop(self) -> Deferred[None]:
        """
        Stop: no more reconnects, the connection closed, pending publishes dropped, waiting
        requests failed with L{NATSClosedError}.  Subscriptions are kept for a later L{start}.
        The Deferred fires once the connection is closed.
        """
        self._started = False
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None
        self.messagesDropped += len(self._pending)
        self._pending, self._pendingBytes = [], 0
        for sid, (request, timer) in list(self._requests.items()):
            timer.cancel()
            self._subscriptions.pop(sid, None)
            request.errback(Failure(NATSClosedError("NATS client stopped")))
        self._requests.clear()
        connector, self._connector, self._factory = self._connector, None, None
        if connector is not None:
            try:
                connector.stopConnecting()
            except Exception:
                pass
        protocol = self._protocol
        if protocol is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        protocol.closedWaiters.append(d)
        protocol.drop(abort=False)
        return d

    def startService(self) -> None:
        Service.startService(self)
        self.start()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        Service.stopService(self)
        return self.stop()

    def addConnectedCallback(self, callback: Callable[[], object]) -> None:
        """
        Call C{callback()} after every (re)connect, once C{CONNECT} and every subscription have
        been sent and the server answered the handshake's C{PING}; callbacks run in the order added.
        """
        self._connectedCallbacks.append(callback)

    # -- subscriptions and messages

    def subscribe(self, subject: str, callback: MessageCallback, queue: str | None = None) -> int:
        """
        Subscribe C{callback} to C{subject} (wildcards allowed), in a queue group if given; return
        the sid.  It lasts across reconnects until L{unsubscribe}.
        """
        sub = Subscription(encodeSubject(subject), None if queue is None else encodeSubject(queue), callback)
        sid = self._nextSid
        self._nextSid += 1
        self._subscriptions[sid] = sub
        self._sendControl(sub.lines(sid))
        return sid

    def unsubscribe(self, sid: int, maxMessages: int | None = None) -> None:
        """
        End subscription C{sid} now, or once it has received C{maxMessages} in all.
        """
        sub = self._subscriptions.get(sid)
        if sub is None:
            return
        if maxMessages is None or sub.received >= maxMessages:
            del self._subscriptions[sid]
            self._sendControl(encodeUnsub(sid))
        else:
            sub.maxMessages = maxMessages
            self._sendControl(encodeUnsub(sid, maxMessages))

    def publish(self, subject: str, payload: bytes, reply: str | None = None) -> None:
        """
        Publish C{payload} on C{subject}; while disconnected it is buffered (see the module doc).

        @raise NATSPayloadTooLarge: larger than the server's C{max_payload}.
        @raise ValueError: a subject that is empty or contains white space.
        """
        if len(payload) > self.maxPayload:
            raise NATSPayloadTooLarge("payload of %d bytes exceeds %d" % (len(payload), self.maxPayload))
        data = encodePub(encodeSubject(subject), payload, None if reply is None else encodeSubject(reply))
        protocol = self._protocol
        if protocol is not None and protocol.state == "connected" and not protocol.closing:
            self.messagesOut += 1
            protocol.write(data)
        elif self._pendingBytes + len(data) <= self.pendingLimit:
            self._pending.append(data)
            self._pendingBytes += len(data)
        else:
            self.messagesDropped += 1

    def request(self, subject: str, payload: bytes, timeout: float = 2.0) -> Deferred[NATSMessage]:
        """
        Publish with a fresh inbox as reply subject; fire with the first reply, or fail with
        L{NATSTimeoutError} after C{timeout} seconds (or L{NATSClosedError} on L{stop}).
        """
        inbox = "_INBOX.%016x%016x" % (self._rng.getrandbits(64), self._rng.getrandbits(64))
        if len(payload) > self.maxPayload:
            return fail(NATSPayloadTooLarge("payload of %d bytes exceeds %d" % (len(payload), self.maxPayload)))
        try:
            encodeSubject(subject)
        except ValueError as e:
            return fail(e)

        def replied(message: NATSMessage) -> None:
            entry = self._requests.pop(sid, None)
            if entry is not None:
                entry[1].cancel()
                entry[0].callback(message)

        def timedOut() -> None:
            entry = self._requests.pop(sid, None)
            self.unsubscribe(sid)
            if entry is not None:
                entry[0].errback(Failure(NATSTimeoutError("no reply on %s in %ss" % (subject, timeout))))

        def cancel(d: Deferred[NATSMessage]) -> None:
            entry = self._requests.pop(sid, None)
            self.unsubscribe(sid)
            if entry is not None:
                entry[1].cancel()

        d: Deferred[NATSMessage] = Deferred(cancel)
        sid = self.subscribe(inbox, replied)
        self.unsubscribe(sid, 1)
        self._requests[sid] = (d, self.clock.callLater(timeout, timedOut))
        self.publish(subject, payload, inbox)
        return d

    def flush(self) -> Deferred[None]:
        """
        Fire once the server has processed everything sent so far (a C{PING}/C{PONG} round trip);
        fail with L{NATSNotConnectedError} if not connected or the connection is lost first.
        """
        protocol = self._protocol
        if protocol is None or protocol.state != "connected" or protocol.closing:
            return fail(NATSNotConnectedError("not connected"))
        d: Deferred[None] = Deferred()
        protocol.ping(d)
        return d

    def _sendControl(self, data: bytes) -> None:
        # SUB/UNSUB go out on a connection past CONNECT; otherwise the next handshake sends the
        # subscriptions as they are then.
        protocol = self._protocol
        if protocol is not None and protocol.state in ("handshaking", "connected"):
            protocol.write(data)

    def _subscriptionLines(self) -> bytes:
        return b"".join(sub.lines(sid) for sid, sub in self._subscriptions.items())

    def _deliver(self, message: NATSMessage) -> None:
        self.messagesIn += 1
        sid = message.sid
        sub = self._subscriptions.get(sid)
        if sub is None:
            return
        sub.received += 1
        if sub.maxMessages is not None and sub.received >= sub.maxMessages:
            del self._subscriptions[sid]
        try:
            sub.callback(message)
        except Exception:
            self.callbackErrors += 1
            self.log.failure("NATS callback for {subject} (sid {sid}) failed", subject=message.subject, sid=sid)

    # -- servers and connections

    @property
    def connected(self) -> bool:
        """
        Whether a connection is up and past its handshake.
        """
        protocol = self._protocol
        return protocol is not None and protocol.state == "connected" and not protocol.closing

    @property
    def connectedServer(self) -> Server | None:
        """
        The C{(host, port)} of the server connected to, or L{None}.
        """
        return self._protocol.server if self.connected else None  # type: ignore[union-attr]

    @property
    def servers(self) -> list[Server]:
        """
        The servers tried in turn: configured, then discovered from C{connect_urls}.
        """
        return self.serverList.servers

    def _learnServers(self, urls: object) -> None:
        if self.serverList.learn(urls):
            self.log.info("NATS servers now {servers}", servers=self.servers)

    def _attempt(self) -> None:
        self._retryCall = None
        server = self.serverList.next()
        self._factory = factory = _ConnectionFactory(self, server)
        self._connector = self.reactor.connectTCP(server[0], server[1], factory, timeout=self.connectTimeout)

    def _buildProtocol(self, factory: _ConnectionFactory) -> NATSClientProtocol | None:
        if factory is not self._factory:
            return None
        self._factory = self._connector = None
        self._protocol = NATSClientProtocol(self, factory.server)
        return self._protocol

    def _connectFailed(self, factory: _ConnectionFactory, reason: Failure) -> None:
        if factory is not self._factory:
            return
        self._factory = self._connector = None
        self.connectFailures += 1
        self.log.info("NATS connect to {server} failed: {why}", server=factory.server, why=reason.getErrorMessage())
        self._scheduleRetry()

    def _connectionReady(self, protocol: NATSClientProtocol) -> None:
        self._failures = 0
        if self._everConnected:
            self.reconnects += 1
        self._everConnected = True
        self.log.info("NATS connected to {server}", server=protocol.server)
        if self._pending:
            pending, self._pending, self._pendingBytes = self._pending, [], 0
            self.messagesOut += len(pending)
            protocol.write(b"".join(pending))
        for callback in list(self._connectedCallbacks):
            if self._protocol is not protocol or protocol.closing:
                return
            try:
                callback()
            except Exception:
                self.callbackErrors += 1
                self.log.failure("NATS connected callback failed")

    def _serverError(self, protocol: NATSClientProtocol, message: str) -> None:
        self.errors += 1
        if any(fatal in message.lower() for fatal in _FATAL_ERRORS):
            self.log.error("NATS server {server}: -ERR {error}; reconnecting", server=protocol.server, error=message)
            protocol.drop()
        else:
            self.log.warn("NATS server {server}: -ERR {error}", server=protocol.server, error=message)

    def _connectionLost(self, protocol: NATSClientProtocol, state: str, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        if not self._started:
            return
        why = reason.getErrorMessage()
        if state == "connected":
            self.log.warn("NATS connection to {server} lost: {why}", server=protocol.server, why=why)
        else:
            self.connectFailures += 1
            self.log.info("NATS handshake with {server} failed: {why}", server=protocol.server, why=why)
        self._scheduleRetry()

    def _scheduleRetry(self) -> None:
        if not self._started:
            return
        delay = backoffDelay(self._failures, self.reconnectMin, self.reconnectMax, self._rng)
        self._failures += 1
        self._retryCall = self.clock.callLater(delay, self._attempt)
