"""
The request half of the HTTP connection manager: choosing a host, taking a pooled connection,
sending the request head and streaming its body upstream.

Functions of the connection (its methods: L{meshproxy.proxy.http.HTTPServerConnection} binds them
as class attributes), kept apart so that each file reads in one sitting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshproxy.cluster.cluster import UpstreamHost
from meshproxy.http import RequestHead, chunk, lastChunk, requestHead
from meshproxy.proxy.forward import XFCC
from meshproxy.routing.registrymsg import RouterReply

if TYPE_CHECKING:
    from meshproxy.proxy.http import HTTPServerConnection

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def fromRegistry(conn: HTTPServerConnection, host: bytes | None, target: bytes, head: RequestHead) -> Any:
    """
    Ask the router registry for a request no static route took: its decision, or L{None} when
    it answered by itself (gorouter's 404 C{unknown_route}, 400 C{empty_host}, ...).
    """
    client = conn.downstream.clientAddress
    found = conn.filter.registry.resolve(host, target, head.headers, client[0] if client else None)
    if isinstance(found, RouterReply):
        conn._failure = "registry_" + str(found.status)
        conn.stats.localReply("registry_%d" % found.status)
        conn._localReply(found.status, "", body=found.body, extra=list(found.headers), error=False)
        return None
    conn._decision = found
    conn._preferred = found.preferred
    return found


def routingHeaders(conn: HTTPServerConnection, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """
    The headers routes see: without a client-supplied X-Forwarded-Client-Cert when it is
    sanitized, plus the one meshproxy sets from the verified client certificate.
    """
    if conn.filter.sanitizeXFCC:
        headers = [(name, value) for name, value in headers if name.lower() != XFCC]
    if conn._xfcc is not None:
        headers = headers + [(XFCC, conn._xfcc)]
    return headers


def dispatch(conn: HTTPServerConnection, fresh: bool = False) -> None:
    """
    Choose a host for the routed request and ask its pool for a connection (C{fresh}: not a
    pooled one); with no host left, answer 502/504 (after tries) or 503.
    """
    cluster = conn.cluster
    decision = conn._decision
    exclude: Any = conn._tried
    overloaded: list[Any] = []
    if decision is not None and decision.maxConns:
        # gorouter's max_conns: an endpoint with that many requests in flight is skipped.
        overloaded = [h for h in cluster.hosts if h.activeRequests >= decision.maxConns and h is not conn._activeHost]
        exclude = conn._tried + overloaded
    preferred = conn._preferred
    if preferred is not None or (decision is not None and decision.only):
        # A registry route's instance header (that host only) or sticky session (that host first).
        conn._preferred = None
        if preferred is not None and preferred not in exclude:
            host = preferred
        elif decision.only:
            host = None
        else:
            host = cluster.chooseHost(exclude, conn._hashKey, conn._metadata)
    else:
        host = cluster.chooseHost(exclude, conn._hashKey, conn._metadata)
    if host is None and conn._retries and conn._tried and not (decision is not None and decision.only):
        # A policy retry after every candidate was tried: go round them again.
        conn._tried = []
        host = cluster.chooseHost(overloaded, conn._hashKey, conn._metadata)
    if host is None:
        if conn._tried:
            failure = conn._lastFailure or "upstream_connect_failed"
            conn._localReply(504 if failure == "upstream_timeout" else 502, failure)
        elif overloaded:
            reply = conn.filter.registry.limitReply(conn.head)
            conn._localReply(reply.status, "upstream_max_conns", body=reply.body, extra=list(reply.headers))
        else:
            conn._localReply(503, "no_healthy_upstream")
        return
    conn._tried.append(host)
    conn.host = host
    # Counted when chosen, so that balancing and limits see requests still waiting for a connection.
    if conn._activeHost is not host:
        if conn._activeHost is not None:
            conn._activeHost.activeRequests -= 1
        conn._activeHost = host
        host.activeRequests += 1
        host.requestsTotal.value += 1
    conn.filter.pools.get(cluster).acquire(host, conn, fresh)


def connectionReady(conn: HTTPServerConnection, upstream: Any, reused: bool) -> None:
    """
    The pool's answer: send the request on C{upstream}.
    """
    if conn.state != conn.UPSTREAM or conn.upstream is not None:
        upstream.pool.release(upstream, True)  # the client went away meanwhile
        return
    assert conn.head is not None
    conn.upstream = upstream
    conn._reused = reused
    head = conn.head
    fields = conn._upstreamFields
    if conn.route.autoHostRewrite:
        # Host names the chosen upstream (its configured hostname, else its address).
        config = upstream.host.config
        hostValue = (config.hostname or config.address).encode("idna" if config.hostname else "ascii")
        fields = [(b"Host", hostValue) if n == b"Host" else (n, v) for n, v in fields]
    if conn._decision is not None:
        fields = fields + conn.filter.registry.endpointFields(upstream.host)
    upstream.send(conn, head.method, requestHead(head.method, conn._upstreamTarget, fields))
    queued, conn._queued = conn._queued, []
    conn._queuedBytes = 0
    for data in queued:
        conn._sendBody(data)
    if conn._requestDone:
        if conn._requestHasBody:
            conn._sendEnd(conn._queuedTrailers)
        conn._deadline.arm(conn.tryTimeout(), "response")
    else:
        if conn._requestHasBody:
            upstream.transport.registerProducer(conn.transport, True)
            if head.expectContinue:
                conn._write(_CONTINUE)
            conn._deadline.arm(conn.settings.bodyTimeout, "body")
        conn._pump()


def connectionFailed(conn: HTTPServerConnection, host: UpstreamHost | None, reason: str) -> None:
    """
    The pool could not give a connection: try another host, or answer 502/503.
    """
    if conn.state != conn.UPSTREAM:
        return
    if reason in ("upstream_connect_failed", "upstream_connect_timeout"):
        conn._lastFailure = reason
        retries = conn._decision.connectRetries if conn._decision is not None else conn.settings.maxConnectRetries
        if len(conn._tried) <= retries:
            conn.stats.retries.inc()
            conn._dispatch()
            return
        conn._localReply(502, reason)
        return
    conn._localReply(503, reason)


def requestBody(conn: HTTPServerConnection, data: bytes) -> None:
    """
    Request body bytes from the client: upstream now, or queued until a connection is ready.
    """
    conn._requestBodySent += len(data)
    limit = conn.settings.maxRequestBodyBytes
    if limit and conn._requestBodySent > limit:
        conn._abortUpstream()
        conn._localReply(413, "request_body_too_large", close=True)
        return
    conn._lastActivity = conn.clock.seconds()
    if conn.upstream is None:
        conn._queued.append(data)
        conn._queuedBytes += len(data)
    else:
        conn._sendBody(data)


def sendBody(conn: HTTPServerConnection, data: bytes) -> None:
    """
    Write body bytes upstream, re-chunked when the request is chunked.
    """
    if conn._requestChunked:
        conn.upstream.writeSequence(chunk(data))
    else:
        conn.upstream.write(data)


def sendEnd(conn: HTTPServerConnection, trailers: list[tuple[bytes, bytes]]) -> None:
    """
    End a chunked request body (with its trailers).
    """
    if conn._requestChunked:
        conn.upstream.write(lastChunk(trailers))


def requestEnd(conn: HTTPServerConnection, trailers: list[tuple[bytes, bytes]]) -> None:
    """
    The client finished its request: end the body upstream and start the response deadline.
    """
    conn._requestDone = True
    upstream = conn.upstream
    if upstream is None:
        conn._queuedTrailers = trailers
        return
    conn._sendEnd(trailers)
    if conn._requestHasBody:
        upstream.transport.unregisterProducer()
        if not conn._readPaused:
            conn.transport.resumeProducing()  # type: ignore[union-attr]
    if not conn._responseStarted:
        conn._deadline.arm(conn.tryTimeout(), "response")
