"""
Building the heads a proxy forwards: the upstream request from the client's parsed request, and
the client's response from the upstream's parsed response.

Forwarded heads are rebuilt from the parsed form, never copied from the received bytes. One pass
over the received fields drops hop-by-hop fields (the standard ones and every option named in
Connection), the route's removals and the fields the proxy owns (framing, Host, the forwarding
headers); then the proxy's own fields and the route's additions are appended.
"""

from __future__ import annotations

import os
import random
import re
from typing import Any, Callable, Mapping, Sequence

from meshproxy.http import RequestHead, ResponseHead, hopByHopNames

Fields = list[tuple[bytes, bytes]]

# Request fields the proxy writes itself (the values of some are combined with what came in).
_REQUEST_OWNED = frozenset(
    [b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
     b"via", b"x-request-id"]
)
# Received request fields whose values the proxy combines into its own.
_COMBINED = frozenset([b"x-forwarded-for", b"via", b"x-request-id"])
_RESPONSE_OWNED = frozenset([b"content-length"])
_RESPONSE_DROP = hopByHopNames(frozenset()) | _RESPONSE_OWNED
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._\-]{1,128}\Z")
VIA = b"1.1 meshproxy"
CHUNKED = (b"Transfer-Encoding", b"chunked")


class RequestIds:
    """
    UUID-formatted request ids (version 4 layout): 74 random bits chosen once per generator,
    then a 48-bit counter in the last group.  Request ids need to be unique, not unpredictable;
    this makes one with a single format operation instead of drawing 128 random bits each time.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        bits = (rng or random.Random(os.urandom(32))).getrandbits
        self._prefix = b"%08x-%04x-4%03x-%04x-" % (
            bits(32) & 0xFFFFFFFF, bits(16) & 0xFFFF, bits(12) & 0xFFF, 0x8000 | (bits(14) & 0x3FFF)
        )
        self._counter = bits(47) & 0x7FFFFFFFFFFF

    def new(self) -> bytes:
        """
        A fresh request id.
        """
        self._counter = counter = (self._counter + 1) & 0xFFFFFFFFFFFF
        return b"%s%012x" % (self._prefix, counter)


def clientRequestId(head: RequestHead) -> bytes | None:
    """
    The client's own X-Request-Id when it is acceptable (1-128 of letters, digits, '.', '_', '-').
    """
    for value in head.headerValues(b"x-request-id"):
        if _REQUEST_ID.match(value):
            return value
    return None


class RequestDropSets:
    """
    The names to drop from forwarded requests for each route, computed once per route.
    """

    def __init__(self, extra: frozenset[bytes] = frozenset()) -> None:
        self._byRoute: dict[int, frozenset[bytes]] = {}
        self._extra = extra

    def forRoute(self, route: Any) -> frozenset[bytes]:
        key = id(route)
        drop = self._byRoute.get(key)
        if drop is None:
            drop = self._byRoute[key] = (
                hopByHopNames(frozenset()) | _REQUEST_OWNED | route.requestHeadersToRemove | self._extra
            )
        return drop


XFCC = b"x-forwarded-client-cert"
#: Envoy's C{forward_client_cert_details} modes.
XFCC_MODES = ("SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY")


def clientCertValue(downstream: Any) -> bytes | None:
    """
    The C{X-Forwarded-Client-Cert} element for a connection's verified client certificate
    (Envoy's format: C{Hash=...;Subject="...";URI=...;DNS=...}), or L{None} without one.
    """
    digest = getattr(downstream, "peerCertificateHash", None)
    if not digest:
        return None
    parts = [f"Hash={digest}"]
    subject = downstream.peerCertificateSubject
    if subject:
        parts.append('Subject="' + subject.replace("\\", "\\\\").replace('"', '\\"') + '"')
    parts.extend(f"URI={uri}" for uri in downstream.peerCertificateURIs or ())
    parts.extend(f"DNS={name}" for name in downstream.peerCertificateDNSNames or ())
    return ";".join(parts).encode("utf-8", "replace")


def upstreamRequestFields(
    head: RequestHead,
    drop: frozenset[bytes],
    host: bytes,
    clientIP: bytes,
    scheme: bytes,
    adds: Sequence[Any],
    variables: Mapping[str, bytes],
    bodyFraming: tuple[bytes, bytes] | None,
    newRequestId: Callable[[], bytes],
    forwardedHost: bytes | None,
    upgrade: bool = False,
) -> tuple[Fields, bytes]:
    """
    The header fields of the upstream request for C{head}, and the request id used.

    C{bodyFraming} is the single framing field to send (C{Content-Length} or
    C{Transfer-Encoding: chunked}), or C{None} for no body.  C{forwardedHost} is the host the client
    asked for (the authority of an absolute-form target, else its Host), for X-Forwarded-Host.
    """
    if head.connectionTokens:
        drop = drop | head.connectionTokens
    xff: bytes | None = None
    via: bytes | None = None
    requestId: bytes | None = None
    lnames = head.lnames
    if _COMBINED.isdisjoint(lnames):
        out: Fields = [f for f, lname in zip(head.headers, lnames) if lname not in drop]
    else:
        out = []
        for field, lname in zip(head.headers, lnames):
            if lname in drop:
                value = field[1]
                if lname == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                elif lname == b"via":
                    via = value if via is None else via + b", " + value
                elif lname == b"x-request-id" and requestId is None and _REQUEST_ID.match(value):
                    requestId = value
                continue
            out.append(field)
    if requestId is None:
        requestId = newRequestId()
    out.append((b"Host", host))
    out.append((b"X-Forwarded-For", clientIP if xff is None else xff + b", " + clientIP))
    out.append((b"X-Forwarded-Proto", scheme))
    if forwardedHost:
        out.append((b"X-Forwarded-Host", forwardedHost))
    out.append((b"Via", VIA if via is None else via + b", " + VIA))
    out.append((b"X-Request-Id", requestId))
    if upgrade and head.upgrade is not None:
        out.append((b"Connection", b"upgrade"))
        out.append((b"Upgrade", head.upgrade))
    if adds:
        applyAdds(out, adds, dict(variables, request_id=requestId))
    if bodyFraming is not None:
        out.append(bodyFraming)
    return out, requestId


def applyAdds(fields: Fields, adds: Sequence[Any], variables: Mapping[str, bytes]) -> None:
    """
    Apply a route's header additions: replace all current values unless C{append}.
    """
    for add in adds:
        if not add.append:
            lname = add.lowerName
            fields[:] = [f for f in fields if f[0].lower() != lname]
        fields.append((add.name, add.value(variables)))


def clientResponseFields(
    head: ResponseHead,
    removals: frozenset[bytes],
    adds: Sequence[Any],
    variables: Mapping[str, bytes],
    framing: tuple[bytes, bytes] | None,
    connection: bytes | None,
    upgrade: bool = False,
) -> Fields:
    """
    The header fields of the response to the client: upstream fields minus hop-by-hop ones and
    the route's removals, plus the route's additions, the framing field and C{Connection}.
    """
    drop = _RESPONSE_DROP
    tokens = head.connectionTokens
    if tokens and not tokens.issubset(drop):  # "keep-alive" and "close" are dropped anyway
        drop = drop | tokens
    if removals:
        drop = drop | removals
    out: Fields = [f for f, lname in zip(head.headers, head.lnames) if lname not in drop]
    if upgrade:
        for value in head.headerValues(b"upgrade"):
            out.append((b"Upgrade", value))
        out.append((b"Connection", b"upgrade"))
    if adds:
        applyAdds(out, adds, variables)
    if framing is not None:
        out.append(framing)
    if connection is not None:
        out.append((b"Connection", connection))
    return out
