"""
The response half of the HTTP connection manager: what the upstream connection calls as the
response arrives (head, body, end, failure, protocol switch), relaying it to the client; the retry
decisions; and what the connection's one deadline does when it passes.

Functions of the connection (its methods: L{meshproxy.proxy.http.HTTPServerConnection} binds them
as class attributes), kept apart so that each file reads in one sitting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshproxy.http import EndOfMessage, ResponseHead, chunk, lastChunk, reasonPhrase, responseHasBody
from meshproxy.http import responseHead as serializeResponseHead
from meshproxy.proxy.forward import CHUNKED, clientResponseFields
from meshproxy.proxy.tunnel import startTunnel

if TYPE_CHECKING:
    from meshproxy.proxy.http import HTTPServerConnection

IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])


def responseHead(conn: HTTPServerConnection, head: ResponseHead) -> None:
    """
    The upstream's response head (or a 1xx before it): forward it to the client; its body
    follows through L{responseBody} and L{responseEnd}.
    """
    headBytes = _startResponse(conn, head)
    if headBytes is None:
        return
    if conn._responseHasBody:
        # Held back so that it leaves with the first body bytes in one send; L{responseFlush}
        # sends it if the body is slower.
        conn._pendingHead = headBytes
        conn.transport.registerProducer(conn.upstream.transport, True)  # type: ignore[union-attr]
        conn._deadline.expect("body", conn._lastActivity + conn.settings.bodyTimeout)
    else:
        conn._write(headBytes)


def responseWhole(conn: HTTPServerConnection, head: ResponseHead, body: bytes) -> None:
    """
    A final response that arrived whole (its head and its entire length-framed body): forward
    it in one send and finish the exchange, as L{responseHead}, L{responseBody} and
    L{responseEnd} would one after the other.
    """
    headBytes = _startResponse(conn, head)
    if headBytes is None:
        return
    if body and conn._responseHasBody:
        conn._responseBytes += len(body)
        if len(body) <= 16384:
            conn._write(headBytes + body)
        else:
            conn._writeSequence((headBytes, body))
    else:
        conn._write(headBytes)
    upstream, conn.upstream = conn.upstream, None
    upstream.finished(conn._requestDone, paused=False)  # never a producer: reading never paused
    conn._finishExchange()


def _startResponse(conn: HTTPServerConnection, head: ResponseHead) -> bytes | None:
    """
    What a response head does to the exchange (outlier reports, retries on status, the switch
    to a tunnel, framing and headers for the client): the serialized head to send, or L{None}
    when there is nothing more to do with this response (an interim one that was forwarded or
    dropped, a retry, a refused switch).
    """
    status = head.status
    if status < 200 or status == 101 or status >= 500 or conn._awaitingSwitch:
        if not _unusualResponse(conn, head):
            return None
    else:
        conn.cluster.hostSucceeded(conn.host)
    request = conn.head
    assert request is not None
    conn._responseStarted = True
    conn._responseAt = conn._lastActivity = conn.clock.seconds()
    conn.state = conn.RESPONDING
    conn._status = status
    route = conn.route
    hasBody = status != 101 and responseHasBody(request.method, status)
    conn._responseHasBody = hasBody
    contentLength = head.contentLength
    framing: tuple[bytes, bytes] | None = None
    if not hasBody:
        if contentLength is not None and status != 101:
            framing = (b"Content-Length", b"%d" % contentLength)
    elif contentLength is not None and not head.chunked:
        framing = (b"Content-Length", b"%d" % contentLength)
    elif request.version == b"1.1":
        framing = CHUNKED
        conn._responseChunked = True
    else:
        conn._keepAlive = False  # an HTTP/1.0 client reads to the close
    if not conn._requestDone or conn.downstream.draining:
        conn._keepAlive = False
    if status == 101:
        connection = None
    elif not conn._keepAlive:
        connection = b"close"
    elif request.version == b"1.0":
        connection = b"keep-alive"
    else:
        connection = None
    adds = route.responseHeadersToAdd
    fields = clientResponseFields(
        head, route.responseHeadersToRemove, adds, conn._variables() if adds else {}, framing, connection,
        upgrade=status == 101,
    )
    if conn._setCookie is not None:
        fields.append((b"Set-Cookie", conn._setCookie))
    if conn._decision is not None:
        fields.extend(conn.filter.registry.responseFields(conn._decision, conn.host, head.headers, conn._vcapRequestId))
    conn.stats.responded(status)
    return serializeResponseHead(status, head.reason or reasonPhrase(status), fields)


def _unusualResponse(conn: HTTPServerConnection, head: ResponseHead) -> bool:
    """
    The statuses that need more than forwarding (interim, 101, 5xx) and the answer to a proposed
    switch: outlier reports, retries, interim heads; whether the response goes on to the client
    as the final one.
    """
    request = conn.head
    assert request is not None
    status = head.status
    if status == 101 and not conn._awaitingSwitch:
        # A switch nobody proposed: the upstream must not take over this connection.
        conn._abortUpstream()
        conn._localReply(502, "upstream_protocol_error", close=not conn._requestDone)
        return False
    if status >= 200 or status == 101:
        host = conn.host
        # A registry route's answers are the app's own: gorouter never marks an endpoint for them.
        if 502 <= status <= 504 and conn._decision is None:
            conn.cluster.hostFailed(host, "status_5xx")
        else:
            conn.cluster.hostSucceeded(host)
    if (
        status >= 500
        and conn.route.retryPolicy is not None
        and conn.retryAllowed("status", status)
        and (conn._retryAdmitted or conn.cluster.admitRetry())
    ):
        # A status the route retries (and the cluster has room for a retry): drop this answer and
        # its connection, try again.  Without room, the answer is forwarded as it is.
        conn._retryAdmitted = True
        conn._abortUpstream()
        conn.retry("upstream_status_%d" % status)
        return False
    if status < 200 and status != 101:
        if request.version != b"1.0" and not (status == 100 and request.expectContinue):
            conn._write(serializeResponseHead(status, head.reason, clientResponseFields(
                head, frozenset(), (), {}, None, None)))
        return False
    if conn._awaitingSwitch and status != 101:
        # Refused: the request (it has no body) is complete; HTTP/1.1 goes on after it.
        conn._awaitingSwitch = False
        conn.parser.resume()
        if type(conn.parser.nextEvent()) is EndOfMessage:
            conn._requestDone = True
    return True


def responseBody(conn: HTTPServerConnection, data: bytes) -> None:
    """
    Response body bytes: straight to the client (re-chunked when the client gets chunked).
    """
    conn._lastActivity = conn.clock.seconds()
    conn._responseBytes += len(data)
    pending = conn._pendingHead
    if pending:
        conn._pendingHead = b""
        if conn._responseChunked:
            conn._writeSequence((pending, *chunk(data)))
        else:
            conn._writeSequence((pending, data))
    elif conn._responseChunked:
        conn._writeSequence(chunk(data))
    else:
        conn._write(data)

def responseFlush(conn: HTTPServerConnection) -> None:
    """
    The upstream has nothing more for now: send a held-back response head.
    """
    pending = conn._pendingHead
    if pending:
        conn._pendingHead = b""
        conn._write(pending)

def responseEnd(conn: HTTPServerConnection, trailers: list[tuple[bytes, bytes]]) -> None:
    """
    The response is complete: release the upstream connection and go on with the next request.
    """
    pending, conn._pendingHead = conn._pendingHead, b""
    if conn._responseChunked:
        conn._write(pending + lastChunk(trailers))
    elif pending:
        conn._write(pending)
    if conn._responseHasBody:
        conn.transport.unregisterProducer()  # type: ignore[union-attr]
    upstream, conn.upstream = conn.upstream, None
    upstream.finished(conn._requestDone)
    conn._finishExchange()

def upstreamFailed(conn: HTTPServerConnection, reason: str, responseStarted: bool, detail: str) -> None:
    """
    The upstream connection broke or sent garbage mid-exchange.
    """
    upstream, conn.upstream = conn.upstream, None
    if conn.state == conn.CLOSED:
        return
    conn._failure = reason
    if responseStarted:
        conn.log.info(
            "{listener}: upstream {host} failed mid-response ({reason}: {detail}); aborting client",
            listener=conn.downstream.listenerName, host=conn.host.address if conn.host else "-",
            reason=reason, detail=detail,
        )
        conn.transport.abortConnection()  # type: ignore[union-attr]
        return
    head = conn.head
    assert head is not None
    if (
        reason == "upstream_reset"
        and conn._reused
        and head.method in IDEMPOTENT
        and not conn._requestHasBody
        and len(conn._tried) <= conn.settings.maxConnectRetries
    ):
        # A pooled connection the host had already closed: retry once on a fresh one.  Not the
        # host's fault, so not an outlier failure.
        conn.stats.retries.inc()
        conn._tried.pop()
        conn._reused = False
        assert conn.host is not None
        conn.filter.pools.get(conn.cluster).acquire(conn.host, conn, True)
        return
    if conn.host is not None:
        conn.cluster.hostFailed(conn.host, "reset")
    if conn.retryAllowed("reset"):
        conn.retry(reason)
        return
    if upstream is not None and conn._requestHasBody and not conn._requestDone:
        upstream.transport.unregisterProducer()
    conn._localReply(502, reason, close=not conn._requestDone)

def upstreamUpgraded(conn: HTTPServerConnection, leftover: bytes) -> None:
    """
    The upstream agreed to switch protocols (101, already forwarded): relay raw bytes.
    """
    upstream, conn.upstream = conn.upstream, None
    conn.state = conn.TUNNEL
    conn._deadline.cancel()
    clientBytes = conn.parser.switchedProtocols() if conn._awaitingSwitch else b""
    conn.stats.active.value -= 1
    if conn._logsAccess:
        conn._logAccess()
    conn.head = None
    conn._settle()
    startTunnel(conn, upstream, clientBytes, leftover, conn.clock, conn.settings.tunnelIdleTimeout)


def tryTimeout(conn: HTTPServerConnection) -> float:
    """
    How long one try waits for its response head: the retry policy's C{retry_timeout} when
    set, else the route C{timeout}.
    """
    policy = conn.route.retryPolicy
    if policy is not None and policy.retryOn and policy.retryTimeout:
        return float(policy.retryTimeout)
    return float(conn.route.timeout)

#: Which of the policy's conditions retry each kind of failure (Envoy's meanings: C{5xx} and
#: C{gateway-error} include an upstream that resets or does not answer in time; MOSN's
#: C{retry_on: true} is C{reset} with its C{status_codes}).
_RETRIED_BY = {
    "reset": frozenset(("reset", "5xx", "gateway-error")),
    "timeout": frozenset(("reset", "5xx", "gateway-error")),
}


def retryAllowed(conn: HTTPServerConnection, kind: str, status: int = 0) -> bool:
    """
    Whether the route's C{retry_policy} retries this failure (C{kind} C{"reset"}, C{"timeout"} or
    C{"status"} with C{status}) now: the condition is in the policy, retries are left, and the
    request is idempotent, without a body, and not yet answered.
    """
    policy = conn.route.retryPolicy if conn.route is not None else None
    head = conn.head
    if (
        policy is None
        or not policy.retryOn
        or conn._retries >= policy.numRetries
        or head is None
        or head.method not in IDEMPOTENT
        or conn._requestHasBody
        or conn._responseStarted
    ):
        return False
    conditions = policy.conditions
    if kind == "status":
        return (
            ("retriable-status-codes" in conditions and status in policy.statusCodes)
            or ("5xx" in conditions and status >= 500)
            or ("gateway-error" in conditions and 502 <= status <= 504)
        )
    return not conditions.isdisjoint(_RETRIED_BY[kind])


def retry(conn: HTTPServerConnection, reason: str) -> None:
    """
    Send the request again after the policy's back-off, to a host not tried yet when there is one,
    unless the cluster's C{max_retries} are already in flight (then the failure is answered).
    """
    cluster = conn.cluster
    if not conn._retryAdmitted:
        if not cluster.admitRetry():
            conn._localReply(503 if reason.startswith("upstream_status_") else 502, "upstream_retry_overflow")
            return
        conn._retryAdmitted = True
    conn._retries += 1
    conn._lastFailure = reason
    conn.stats.retries.inc()
    conn.upstream = None
    conn.state = conn.UPSTREAM
    policy = conn.route.retryPolicy
    ceiling = min(policy.backoffMax, policy.backoffBase * (2 ** (conn._retries - 1)))
    delay = conn.filter.rng.uniform(0, ceiling) if ceiling > 0 else 0.0
    if delay <= 0:
        conn._dispatch()
        return
    conn._backoff = conn.clock.callLater(delay, _backedOff, conn)


def _backedOff(conn: HTTPServerConnection) -> None:
    conn._backoff = None
    if conn.state == conn.UPSTREAM and conn.upstream is None:
        conn._dispatch()


def timedOut(conn: HTTPServerConnection, kind: str) -> None:
    """
    The connection's one deadline passed; C{kind} says which: idle keep-alive (close), request head
    (408), response head (504, or a retry), body inactivity (408, or abort mid-response).
    """
    if kind == "idle":
        conn.state = conn.CLOSED
        conn.transport.loseConnection()  # type: ignore[union-attr]
    elif kind == "header":
        conn.stats.rejected("header_timeout")
        conn._localReply(408, "request_header_timeout", close=True)
    elif kind == "response":
        conn._abortUpstream()
        if conn.host is not None:
            conn.cluster.hostFailed(conn.host, "timeout")
        # gorouter's endpoint_timeout bounds the whole request: a registry route never retries it.
        if conn._decision is None and conn.retryAllowed("timeout"):
            conn.retry("upstream_timeout")
            return
        conn._localReply(504, "upstream_timeout", close=not conn._requestDone)
    elif kind == "body":
        remaining = conn._lastActivity + conn.settings.bodyTimeout - conn.clock.seconds()
        if remaining > 0.001:
            conn._deadline.arm(remaining, "body")
            return
        conn._abortUpstream()
        if conn._responseStarted:
            conn.transport.abortConnection()  # type: ignore[union-attr]
        else:
            conn._localReply(408, "request_body_timeout", close=True)
