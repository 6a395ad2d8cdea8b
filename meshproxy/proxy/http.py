"""
The C{proxy} network filter: an HTTP/1.1 connection manager for one client connection.

Requests are parsed with the strict codec, routed, and forwarded on a pooled keep-alive upstream
connection; bodies stream both ways with backpressure (each transport is the other's producer for
the length of a body) and nothing buffers a whole body.  Pipelined requests are answered in
order: the parser keeps the next request buffered (bounded) until the current response is done.
A 101 answer to an Upgrade switches both sides to a raw relay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.accesslog import httpRecord
from meshproxy.cluster.cluster import UpstreamHost
from meshproxy.http import (
    NEED_DATA,
    SERVER,
    BodyData,
    ConnectionClosed,
    EndOfMessage,
    HTTP1Parser,
    HTTPParseError,
    RequestHead,
    reasonPhrase,
    responseHead,
)
from meshproxy.interfaces import IDownstreamConnection
from meshproxy.proxy.deadline import Deadline
from meshproxy.proxy import httprequest, httpresponse
from meshproxy.proxy.directwrite import directWriters, setNoDelay
from meshproxy.proxy.forward import CHUNKED, clientCertValue, clientRequestId, upstreamRequestFields
from meshproxy.routing.hashpolicy import hashKey
from meshproxy.routing.table import splitTarget

if TYPE_CHECKING:
    from meshproxy.proxy.httpfilter import HTTPProxyFilter

_SLASH = ord("/")


@implementer(IHalfCloseableProtocol)
class HTTPServerConnection(Protocol):
    """
    One client connection: at most one exchange (request and its response) at a time.

    States:
      - IDLE: between requests (keep-alive idle timer running).
      - HEAD: part of a request head has arrived (head deadline running: 408).
      - UPSTREAM: a request is routed and waits for, or is being sent on, an upstream connection.
      - RESPONDING: the response is streaming to the client.
      - TUNNEL: a 101 switched the connection to a raw relay.
      - CLOSED
    """

    log = Logger()
    IDLE, HEAD, UPSTREAM, RESPONDING, TUNNEL, CLOSED = "IDLE", "HEAD", "UPSTREAM", "RESPONDING", "TUNNEL", "CLOSED"

    # Slots for the state read and written on every request: faster to reach than a dict of ~60
    # entries, and kept together in the object.  (Protocol has no __slots__, so an attribute not
    # listed still works: it goes to the instance dict.)
    __slots__ = (
        "filter", "downstream", "settings", "stats", "clock", "parser", "state", "requestCount",
        "head", "route", "cluster", "host", "upstream",
        "_deadline", "_readPaused", "_pumping", "_clientEOF", "_clientIP", "_rx", "_tx", "_scheme", "_xfcc",
        "_logsAccess", "_admitted", "_retryAdmitted", "_activeHost", "_backoff", "_write", "_writeSequence",
        "_tried", "_requestDone", "_requestBodySent", "_requestChunked", "_requestHasBody", "_awaitingSwitch",
        "_responseStarted", "_responseChunked", "_responseHasBody", "_keepAlive", "_status", "_started",
        "_lastActivity", "_requestId", "_pendingHead", "_needDispatch", "_queued", "_queuedBytes",
        "_queuedTrailers", "_lastFailure", "_retries", "_failure", "_responseBytes", "_responseAt", "_reused",
        "_upstreamFields", "_upstreamTarget", "_hashKey", "_setCookie", "_decision", "_preferred",
        "_vcapRequestId", "_metadata",
    )

    def __init__(self, filter: HTTPProxyFilter, downstream: IDownstreamConnection) -> None:
        self.filter = filter
        self.downstream = downstream
        self.settings = filter.settings
        self.stats = filter.stats
        self.clock = filter.clock
        self.parser = HTTP1Parser(SERVER, filter.settings.limits)
        self.state = self.IDLE
        self.requestCount = 0
        self._deadline = Deadline(filter.clock, self._timedOut)
        self._readPaused = False
        self._pumping = False
        self._clientEOF = False
        client = downstream.clientAddress
        self._clientIP = client[0].encode() if client is not None else b"unix"
        self._rx = downstream.bytesReceived
        self._tx = downstream.bytesSent
        self._scheme = b"https" if getattr(downstream, "tls", False) else b"http"
        self._xfcc = clientCertValue(downstream) if filter.setXFCC else None
        # Whether this listener writes access logs (its log object is fixed for the connection).
        self._logsAccess = bool(downstream.accessLog)
        self._admitted = False
        self._retryAdmitted = False
        self._activeHost: UpstreamHost | None = None
        self._backoff: Any = None
        self._resetExchange()

    def _settle(self) -> None:
        """
        Give back what the exchange held: its place in the cluster's request and retry limits, its
        count on the host, a pending retry back-off.
        """
        host = self._activeHost
        if host is not None:
            self._activeHost = None
            host.activeRequests -= 1
        if self._admitted:
            self._admitted = False
            self.cluster.requestDone()
        if self._retryAdmitted:
            self._retryAdmitted = False
            self.cluster.retryDone()
        if self._backoff is not None:
            if self._backoff.active():
                self._backoff.cancel()
            self._backoff = None

    def _resetExchange(self) -> None:
        if self._admitted or self._activeHost is not None or self._retryAdmitted or self._backoff is not None:
            self._settle()
        self.head: RequestHead | None = None
        self.route: Any = None
        self.cluster: Any = None
        self.host: UpstreamHost | None = None
        self.upstream: Any = None
        self._tried: list[UpstreamHost] = []
        self._requestDone = False
        self._requestBodySent = 0
        self._requestChunked = False
        self._requestHasBody = False
        self._awaitingSwitch = False
        self._responseStarted = False
        self._responseChunked = False
        self._responseHasBody = True
        self._keepAlive = True
        self._status = 0
        self._started = 0.0
        self._lastActivity = 0.0
        self._requestId = b""
        self._pendingHead = b""
        self._needDispatch = False
        self._queued: list[bytes] = []
        self._queuedBytes = 0
        self._queuedTrailers: list[tuple[bytes, bytes]] = []
        self._lastFailure = ""
        self._retries = 0
        self._failure = ""
        self._responseBytes = 0
        self._responseAt = 0.0
        self._reused = False
        self._upstreamFields: list[tuple[bytes, bytes]] = []
        self._upstreamTarget = b""
        self._hashKey: int | None = None
        self._setCookie: bytes | None = None
        self._decision: Any = None
        self._preferred: Any = None
        self._vcapRequestId = b""
        self._metadata: tuple[tuple[str, str], ...] = ()

    # -- connection ---------------------------------------------------------------------------

    def connectionMade(self) -> None:
        setNoDelay(self.transport)
        self.transport.bufferSize = self.settings.bufferLimit  # type: ignore[union-attr]
        self._write, self._writeSequence = directWriters(self.transport, self._tx)
        self.downstream.onDrain = self._drainStarted
        self._deadline.arm(self.settings.headerTimeout, "header")

    # The response half (called by the upstream connection), in meshproxy.proxy.httpresponse.
    responseHead = httpresponse.responseHead
    responseWhole = httpresponse.responseWhole
    responseBody = httpresponse.responseBody
    responseFlush = httpresponse.responseFlush
    responseEnd = httpresponse.responseEnd
    upstreamFailed = httpresponse.upstreamFailed
    upstreamUpgraded = httpresponse.upstreamUpgraded
    tryTimeout = httpresponse.tryTimeout
    retryAllowed = httpresponse.retryAllowed
    retry = httpresponse.retry

    def _drainStarted(self) -> None:
        """
        The listener is draining: an idle connection closes now; a busy one after its response
        (which says C{Connection: close} when its head is still to be written).
        """
        self._keepAlive = False
        if self.state == self.IDLE:
            self.state = self.CLOSED
            self._deadline.cancel()
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._rx.value += len(data)
        if self.state == self.IDLE:
            self.state = self.HEAD
            self.parser.feed(data)
            self._pump()
            if self.state == self.HEAD:
                # Only a head that did not arrive whole needs its deadline.
                self._deadline.arm(self.settings.headerTimeout, "header")
            return
        self.parser.feed(data)
        self._pump()

    def readConnectionLost(self) -> None:
        """
        The client half-closed (sent FIN after its request, as netcat and some HTTP/1.0 clients
        do): answer what it sent, buffered pipelined requests included, then close.
        """
        self._clientEOF = True
        self.parser.feedEOF()
        if self.state in (self.IDLE, self.HEAD):
            self._pump()

    def writeConnectionLost(self) -> None:
        """
        Not used: meshproxy closes the whole connection.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        previous = self.state
        self.state = self.CLOSED
        self._deadline.cancel()
        upstream, self.upstream = self.upstream, None
        if upstream is not None and previous in (self.UPSTREAM, self.RESPONDING):
            upstream.exchange = None
            upstream.close()
        elif previous == self.UPSTREAM and self.cluster is not None:
            self.filter.pools.get(self.cluster).cancel(self)
        self._settle()
        if self.head is not None:
            self.stats.active.value -= 1
            if self._logsAccess:
                self._failure = self._failure or "downstream_reset"
                self._logAccess()
            self.head = None
        self.downstream.closed()

    # -- reading requests --------------------------------------------------------------------------

    def _pump(self) -> None:
        """
        Pull parser events while the current exchange can take them.

        Body bytes already buffered are pulled (into a bounded queue) before the request is
        dispatched, so a malformed body that arrived with its head is refused before anything is
        sent upstream.
        """
        if self._pumping:
            return
        self._pumping = True
        parser = self.parser
        limit = self.settings.bufferLimit
        try:
            while self.state != self.CLOSED:
                if self.head is not None and (
                    self._requestDone
                    or self._awaitingSwitch
                    or (self.upstream is None and self._queuedBytes >= limit)
                ):
                    break
                event = parser.nextEvent()
                kind = type(event)
                if kind is BodyData:
                    self._requestBody(event.data)  # type: ignore[union-attr]
                elif event is NEED_DATA:
                    break
                elif kind is RequestHead:
                    head: RequestHead = event  # type: ignore[assignment]
                    if head.upgrade is not None or head.method == b"CONNECT":
                        parser.nextEvent()  # PAUSED: the parser waits for our decision
                        if head.chunked or head.contentLength:
                            parser.resume()  # no protocol switch with a request body
                        else:
                            self._awaitingSwitch = True
                    if not (head.chunked or head.contentLength or self._awaitingSwitch):
                        parser.takeBody()  # a request without a body ends with its head
                        self._requestDone = True
                    self._startRequest(head)
                elif kind is EndOfMessage:
                    self._requestEnd(event.trailers)  # type: ignore[union-attr]
                elif kind is ConnectionClosed:
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    break
        except HTTPParseError as e:
            self._needDispatch = False
            self._reject(e)
        finally:
            self._pumping = False
        if self._needDispatch and self.state == self.UPSTREAM:
            self._needDispatch = False
            self._dispatch()
        buffered = parser.bufferedBytes
        if buffered > limit:
            if not self._readPaused:
                self._readPaused = True
                self.transport.pauseProducing()  # type: ignore[union-attr]
        elif self._readPaused and buffered <= limit // 2:
            self._readPaused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def _reject(self, error: HTTPParseError) -> None:
        self.stats.rejected(error.reason)
        self.log.info(
            "{listener}: rejected request from {client}: {status} {reason}",
            listener=self.downstream.listenerName, client=self.downstream.clientAddress,
            status=error.status, reason=error.reason,
        )
        # The request was already on its way: reset the upstream connection, so that it never
        # sees an orderly end of a half-forwarded request.
        self._abortUpstream()
        if self._responseStarted:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._localReply(error.status, error.reason, close=True)

    def _startRequest(self, head: RequestHead) -> None:
        self.requestCount += 1
        self.head = head
        now = self._started = self._lastActivity = self.clock.seconds()
        stats = self.stats
        stats.requests.value += 1
        stats.active.value += 1
        self.state = self.UPSTREAM
        settings = self.settings
        self._keepAlive = head.keepAlive and self.requestCount < settings.maxRequestsPerConnection
        contentLength = head.contentLength
        self._requestHasBody = head.chunked or bool(contentLength)
        # Until the request is sent, the pool's queue and connect timeouts bound the wait.
        self._deadline.expect("wait", now + 3600.0)
        if contentLength is not None and settings.maxRequestBodyBytes and contentLength > settings.maxRequestBodyBytes:
            self._localReply(413, "request_body_too_large", close=True)
            return
        method = head.method
        if method == b"CONNECT":
            self._localReply(405, "connect_not_supported", close=True)
            return
        target = head.target
        if target[0] == _SLASH:
            host = head.host
        else:
            authority, target = splitTarget(target)
            host = authority if authority is not None else head.host
        filter = self.filter
        headers = head.headers
        if self._xfcc is not None or (filter.routesUseXFCC and filter.sanitizeXFCC):
            headers = self._routingHeaders(headers)
        route = filter.routes.route(host, target, method, headers)
        decision = None
        if route is None:
            if filter.registry is None:
                self._localReply(404, "no_route")
                return
            decision = self._fromRegistry(host, target, head)
            if decision is None:
                return
            route = decision.route
        self.route = route
        kind = route.kind
        if kind == "direct":
            self._localReply(route.status, "", body=route.body, error=False)
            return
        if kind == "redirect":
            location = route.location(self._scheme, host or b"", target)
            self._localReply(route.status, "", extra=[(b"Location", location)], error=False)
            return
        clusterName = route.clusterFor(head.headers)
        if clusterName is None:
            self._localReply(404, "no_cluster_header")
            return
        if decision is not None:
            cluster = self.cluster = decision.cluster
        else:
            try:
                cluster = self.cluster = filter.clusters.get(clusterName)
            except KeyError:
                self._localReply(503, "cluster_not_found")
                return
        if not cluster.admitRequest():
            self._localReply(503, "upstream_overflow")
            return
        self._admitted = True
        if route.hashPolicy:
            clientIP = self._clientIP if self.downstream.clientAddress is not None else None
            self._hashKey, self._setCookie = hashKey(route.hashPolicy, head.headers, clientIP, filter.rng)
        if cluster.config.subsets is not None:
            self._metadata = route.metadataFor(clusterName)
        framing: tuple[bytes, bytes] | None = None
        if head.chunked:
            framing = CHUNKED
            self._requestChunked = True
        elif contentLength is not None:
            framing = (b"Content-Length", b"%d" % contentLength)
        adds = route.requestHeadersToAdd
        fields, self._requestId = upstreamRequestFields(
            head, filter.dropSets.forRoute(route), route.hostRewrite or host or b"", self._clientIP, self._scheme,
            adds, self._variables() if adds else {}, framing, filter.requestIds.new, host,
            upgrade=self._awaitingSwitch,
        )
        if self._xfcc is not None:
            fields.append((b"X-Forwarded-Client-Cert", self._xfcc))
        if decision is not None:
            added = filter.registry.requestFields(head.headers)
            self._vcapRequestId = added[0][1]
            fields.extend(added)
        self._upstreamFields = fields
        self._upstreamTarget = route.rewriteTarget(target)
        self._needDispatch = True

    _fromRegistry = httprequest.fromRegistry
    _routingHeaders = httprequest.routingHeaders

    def _variables(self) -> dict[str, bytes]:
        client = self.downstream.clientAddress
        local = self.downstream.localAddress
        return {
            "downstream_remote_address": (f"{client[0]}:{client[1]}" if client else "").encode(),
            "downstream_local_address": (f"{local[0]}:{local[1]}" if local else "").encode(),
            "downstream_protocol": b"HTTP/1.1",
            "request_id": self._requestId,
        }

    # -- upstream: the request half, in meshproxy.proxy.httprequest -------------------------------

    _dispatch = httprequest.dispatch
    connectionReady = httprequest.connectionReady
    connectionFailed = httprequest.connectionFailed
    _requestBody = httprequest.requestBody
    _sendBody = httprequest.sendBody
    _sendEnd = httprequest.sendEnd
    _requestEnd = httprequest.requestEnd

    def _logAccess(self) -> None:
        head = self.head
        assert head is not None
        self.downstream.accessLog.record(httpRecord(
            self.downstream, head, self._started, self.clock.seconds(), self._responseAt,
            self._requestBodySent, self._responseBytes, self._status, self._failure,
            self.host, self.cluster, self._requestId or clientRequestId(head) or b"",
        ))

    def _abortUpstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.transport.abortConnection()

    # -- answers meshproxy makes itself ------------------------------------------------------------

    def _localReply(
        self,
        status: int,
        reason: str,
        close: bool = False,
        body: bytes | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
        error: bool = True,
    ) -> None:
        if self.state == self.CLOSED:
            return
        if body is None and error and self._decision is not None and status >= 502:
            # gorouter's own answer when a registered endpoint failed (X-Cf-Routererror), and
            # nothing of meshproxy's: clients must not tell the two apart.
            reply = self.filter.registry.failureReply(reason)
            status, body, extra = reply.status, reply.body, list(reply.headers) + (extra or [])
            self._failure = reason
            self.stats.localReply(reason)
            error = False
        if body is None:
            body = (f"{status} {reasonPhrase(status).decode()}: {reason}\n" if error else "").encode()
        fields: list[tuple[bytes, bytes]] = []
        if error:
            self._failure = reason
            fields.append((b"Content-Type", b"text/plain; charset=utf-8"))
            fields.append((b"x-meshproxy-error", reason.encode()))
            self.stats.localReply(reason)
        if extra:
            fields.extend(extra)
        fields.append((b"Content-Length", b"%d" % len(body)))
        if close or self.head is None or self.downstream.draining or not self._requestDone:
            # A request body we have not read cannot be told from the next request: close.
            self._keepAlive = False
        if not self._keepAlive:
            fields.append((b"Connection", b"close"))
        head = self.head
        withBody = head is None or head.method != b"HEAD"
        self._write(responseHead(status, reasonPhrase(status), fields) + (body if withBody else b""))
        self._status = status
        self.stats.responded(status)
        self._finishExchange()

    def _finishExchange(self) -> None:
        keepAlive = self._keepAlive and not self.downstream.draining
        if self.head is not None:
            self.stats.active.value -= 1
            if self._logsAccess:
                self._logAccess()
        self._resetExchange()
        if not keepAlive:
            self.state = self.CLOSED
            self._deadline.cancel()
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if self.parser.bufferedBytes or self._clientEOF:
            self.state = self.HEAD
            self._deadline.arm(self.settings.headerTimeout, "header")
            self._pump()
        else:
            self.state = self.IDLE
            self._deadline.arm(self.settings.idleTimeout, "idle")
            if self._readPaused:
                self._readPaused = False
                self.transport.resumeProducing()  # type: ignore[union-attr]

    # -- deadlines: in meshproxy.proxy.httpresponse ----------------------------------------------

    _timedOut = httpresponse.timedOut
