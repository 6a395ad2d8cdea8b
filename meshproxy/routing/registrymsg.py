"""
Cloud Foundry gorouter's wire texts, pure: the NATS route messages, the header values it reads and the
error replies it writes.

 - L{parseRegistryMessage} decodes a C{router.register} / C{router.unregister} payload the way gorouter's
   Go C{json.Unmarshal} into its C{RegistryMessage} struct does: unknown keys are ignored, keys match
   their field case-insensitively (the last occurrence wins), C{null} leaves a field as it is, and any
   type mismatch (a number for a string, C{"8080"} or C{8080.5} or C{70000} for a C{uint16} port, a
   number for C{private_instance_index}, a non-string tag value) rejects the whole message; then, like
   gorouter's C{ValidateMessage}, a C{route_service_url} that does not start with C{https} rejects it
   too.  A rejected payload gives an L{InvalidMessage} with a reason for the log line and the counter;
   nothing raises.
 - L{routerStartPayload} is the C{router.start} message and the C{router.greet} reply (they are the
   same bytes), encoded as Go's C{json.Marshal} does.
 - L{parseAppInstanceHeader}, L{parseProcessInstanceHeader}, L{stickySessionId} and L{isEmptyHost} read
   what a request carries the way gorouter's handlers do.
 - L{RouterError} and the constants after it are gorouter's error catalogue: status, C{X-Cf-Routererror}
   value and body, rendered by L{RouterError.reply}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

#: The NATS subjects.  gorouter subscribes C{router.*} (one token) and C{router.greet}.
ROUTER_START = "router.start"
ROUTER_GREET = "router.greet"
ROUTER_REGISTER = "router.register"
ROUTER_UNREGISTER = "router.unregister"
ROUTER_SUBJECTS = "router.*"

#: The balancing algorithms a message's C{options.loadbalancing} may name; others are ignored.
ROUND_ROBIN = "round-robin"
LEAST_CONNECTION = "least-connection"
LOAD_BALANCING_ALGORITHMS = frozenset((ROUND_ROBIN, LEAST_CONNECTION))

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


@attrs.frozen
class RegistryMessage:
    """
    One decoded C{router.register} / C{router.unregister} message, field for field as gorouter reads it
    (absent fields have Go's zero values).  C{tags} is L{None} when the message had none, and must not
    be mutated.
    """

    host: str = ""
    port: int = 0
    tlsPort: int = 0
    uris: tuple[str, ...] = ()
    tags: Mapping[str, str] | None = None
    app: str = ""
    staleThresholdInSeconds: int = 0
    routeServiceUrl: str = ""
    privateInstanceId: str = ""
    privateInstanceIndex: str = ""
    serverCertDomainSAN: str = ""
    isolationSegment: str = ""
    endpointUpdatedAtNs: int = 0
    protocol: str = ""
    availabilityZone: str = ""
    loadBalancing: str = ""

    @property
    def tls(self) -> bool:
        """
        Whether the backend is spoken to over TLS: a non-zero C{tls_port} wins over C{port}.
        """
        return self.tlsPort != 0

    @property
    def address(self) -> str:
        """
        The endpoint's identity, gorouter's C{CanonicalAddr}: C{host:port} with the TLS port if there
        is one (no brackets around an IPv6 host, as Go's C{%s:%d} writes it).
        """
        return f"{self.host}:{self.tlsPort or self.port}"


@attrs.frozen
class InvalidMessage:
    """
    A payload gorouter would drop (logging C{validation-error}), and why.
    """

    reason: str


class _Object(list):  # type: ignore[type-arg]
    """
    A JSON object as its (key, value) pairs in document order, told apart from a JSON array.
    """

    __slots__ = ()


class _NegativeZero(int):
    """
    The literal C{-0}: Go's C{ParseUint} refuses it, C{ParseInt} takes it.
    """


_NEGATIVE_ZERO = _NegativeZero(0)


def _parseInt(text: str) -> int:
    return _NEGATIVE_ZERO if text == "-0" else int(text)


def _refuseConstant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_Object, parse_int=_parseInt, parse_constant=_refuseConstant)
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Mismatch(Exception):
    """
    A JSON value of the wrong type for a field: Go's C{UnmarshalTypeError}.
    """

    def __init__(self, value: Any, field: str, goType: str) -> None:
        super().__init__(
            f"json: cannot unmarshal {_kind(value)} into Go struct field RegistryMessage.{field} of type {goType}"
        )


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return f"number {'-0' if value is _NEGATIVE_ZERO else value!r}"
    if isinstance(value, _Object):
        return "object"
    return "array" if isinstance(value, list) else "string"


def _text(value: str) -> str:
    """
    A decoded JSON string as Go holds it: an unpaired surrogate escape becomes U+FFFD.
    """
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATE.sub("\ufffd", value)
    return value


def _string(value: Any, field: str) -> str:
    if value.__class__ is not str:
        raise _Mismatch(value, field, "string")
    return _text(value)


def _integer(value: Any, field: str, goType: str, low: int, high: int) -> int:
    if value.__class__ not in (int, _NegativeZero) or not low <= value <= high:
        raise _Mismatch(value, field, goType)
    if value is _NEGATIVE_ZERO and low == 0:
        raise _Mismatch(value, field, goType)
    return int(value)


def _uris(value: Any, field: str) -> tuple[str, ...]:
    if value.__class__ is not list:
        raise _Mismatch(value, field, "[]route.Uri")
    return tuple("" if item is None else _string(item, field) for item in value)


def _tags(value: Any, field: str, into: dict[str, str] | None) -> dict[str, str]:
    if value.__class__ is not _Object:
        raise _Mismatch(value, field, "map[string]string")
    tags = {} if into is None else into  # Go decodes a repeated key into the map it already has
    for key, item in value:
        if item.__class__ is str and item.isascii() and key.isascii():
            tags[key] = item
        else:
            tags[_text(key)] = "" if item is None else _string(item, f"{field}.{key}")
    return tags


def _options(value: Any, field: str, current: str) -> str:
    if value.__class__ is not _Object:
        raise _Mismatch(value, field, "mbus.RegistryMessageOpts")
    for key, item in value:
        if item is not None and (key == "loadbalancing" or key.casefold() == "loadbalancing"):
            current = _string(item, f"{field}.loadbalancing")
    return current


_UINT16 = ("uint16", 0, 0xFFFF)
_INT64 = ("int64", _INT64_MIN, _INT64_MAX)
_GO_INT = ("int", _INT64_MIN, _INT64_MAX)

#: JSON key -> (RegistryMessage attribute, decoder: "string", "uris", "tags", "options" or an integer spec).
_FIELDS: dict[str, tuple[str, Any]] = {
    "host": ("host", "string"),
    "port": ("port", _UINT16),
    "tls_port": ("tlsPort", _UINT16),
    "uris": ("uris", "uris"),
    "tags": ("tags", "tags"),
    "app": ("app", "string"),
    "stale_threshold_in_seconds": ("staleThresholdInSeconds", _GO_INT),
    "route_service_url": ("routeServiceUrl", "string"),
    "private_instance_id": ("privateInstanceId", "string"),
    "private_instance_index": ("privateInstanceIndex", "string"),
    "server_cert_domain_san": ("serverCertDomainSAN", "string"),
    "isolation_segment": ("isolationSegment", "string"),
    "endpoint_updated_at_ns": ("endpointUpdatedAtNs", _INT64),
    "protocol": ("protocol", "string"),
    "availability_zone": ("availabilityZone", "string"),
    "options": ("loadBalancing", "options"),
}


def parseRegistryMessage(payload: bytes | str) -> RegistryMessage | InvalidMessage:
    """
    Decode and validate a C{router.register} or C{router.unregister} payload as gorouter does.

    Never raises: a payload gorouter would drop gives an L{InvalidMessage}.  A JSON C{null} payload is
    an empty message (no uris), as for Go.
    """
    try:
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        document = _DECODER.decode(text)
    except (ValueError, RecursionError) as e:
        return InvalidMessage(f"invalid JSON: {e}")
    if document is None:
        return RegistryMessage()
    if document.__class__ is not _Object:
        return InvalidMessage(f"json: cannot unmarshal {_kind(document)} into Go value of type mbus.RegistryMessage")
    values: dict[str, Any] = {}
    try:
        for key, value in document:
            spec = _FIELDS.get(key)
            if spec is None:
                key = key.casefold()
                spec = _FIELDS.get(key)
                if spec is None:
                    continue
            attribute, decoder = spec
            if value.__class__ is str and decoder == "string":
                values[attribute] = value if value.isascii() else _text(value)
            elif value is None:
                if decoder == "uris" or decoder == "tags":
                    values.pop(attribute, None)  # Go sets a slice or a map to nil; other fields keep their value
            elif decoder == "string":
                raise _Mismatch(value, key, "string")
            elif decoder == "uris":
                values[attribute] = _uris(value, key)
            elif decoder == "tags":
                values[attribute] = _tags(value, key, values.get(attribute))
            elif decoder == "options":
                values[attribute] = _options(value, key, values.get(attribute, ""))
            else:
                values[attribute] = _integer(value, key, *decoder)
    except _Mismatch as e:
        return InvalidMessage(str(e))
    message = RegistryMessage(**values)
    if message.routeServiceUrl and not message.routeServiceUrl.startswith("https"):
        return InvalidMessage("Unable to validate message. route_service_url must be https")
    return message


_GO_ESCAPED = "<>&\u2028\u2029"


def encodeJSON(value: Any) -> bytes:
    """
    Compact JSON as Go's C{json.Marshal} writes it: no spaces, UTF-8, and C{<}, C{>}, C{&}, U+2028 and
    U+2029 escaped.  Keys keep the order of the mapping (Go sorts map keys; pass them sorted).
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for raw in _GO_ESCAPED:
        if raw in text:
            text = text.replace(raw, f"\\u{ord(raw):04x}")
    return text.encode("utf-8")


def newRouterId(index: int, uuid: str) -> str:
    """
    The router's C{id} in C{router.start}: C{"<config index>-<uuid v4>"}, fixed for the process lifetime.
    """
    return f"{index}-{uuid}"


def routerStartPayload(
    routerId: str, hosts: Sequence[str], minimumRegisterInterval: float, pruneThreshold: float
) -> bytes:
    """
    The C{router.start} payload, which is also the reply to every C{router.greet} request.

    C{minimumRegisterInterval} is gorouter's C{start_response_delay_interval} and C{pruneThreshold} its
    C{droplet_stale_threshold}, both in seconds, sent as whole seconds (truncated, as Go's
    C{int(d.Seconds())}).  Route emitters use the first as the period of their full re-emission and
    crash on 0, so an interval below one second raises L{ValueError} (a configuration error).
    """
    interval, prune = int(minimumRegisterInterval), int(pruneThreshold)
    if interval < 1:
        raise ValueError(f"minimumRegisterIntervalInSeconds must be at least 1, not {minimumRegisterInterval!r}")
    return encodeJSON(
        {
            "id": routerId,
            "hosts": list(hosts),
            "minimumRegisterIntervalInSeconds": interval,
            "pruneThresholdInSeconds": prune,
        }
    )


# -- what a request carries

_GUID = rb"[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}"
_APP_INSTANCE = re.compile(rb"(" + _GUID + rb"):([0-9]+)")
_PROCESS_INSTANCE = re.compile(rb"(" + _GUID + rb")(?::([0-9]+))?")


def parseAppInstanceHeader(value: bytes) -> tuple[str, str] | None:
    """
    C{X-CF-APP-INSTANCE: <app guid>:<index>} as C{(guid, index)}, or L{None} when malformed (gorouter
    answers L{INVALID_APP_INSTANCE_HEADER}).  The guid is lower-case hex only, as gorouter's pattern.
    """
    match = _APP_INSTANCE.fullmatch(value)
    return None if match is None else (match.group(1).decode("ascii"), match.group(2).decode("ascii"))


def parseProcessInstanceHeader(value: bytes) -> tuple[str, str] | None:
    """
    C{X-CF-PROCESS-INSTANCE: <process guid>[:<index>]} as C{(guid, index)} (index C{""} when absent:
    any instance), or L{None} when malformed (L{INVALID_PROCESS_INSTANCE_HEADER}).
    """
    match = _PROCESS_INSTANCE.fullmatch(value)
    if match is None:
        return None
    return match.group(1).decode("ascii"), (match.group(2) or b"").decode("ascii")


VCAP_COOKIE = b"__VCAP_ID__"
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_COOKIE_VALUE_REFUSED = frozenset(b'";\\')


def _cookies(cookieHeaders: Iterable[bytes]) -> Iterable[tuple[bytes, bytes]]:
    """
    The (name, value) pairs of C{Cookie} header values as Go's C{readCookies} keeps them.
    """
    for line in cookieHeaders:
        for part in line.split(b";"):
            part = part.strip(b" \t")
            if not part:
                continue
            name, _, value = part.partition(b"=")
            name = name.strip(b" \t")
            if not name or not _TOKEN.issuperset(name):
                continue
            if len(value) > 1 and value[:1] == b'"' and value[-1:] == b'"':
                value = value[1:-1]
            if all(0x20 <= byte < 0x7F and byte not in _COOKIE_VALUE_REFUSED for byte in value):
                yield name, value


def stickySessionId(
    cookieHeaders: Iterable[bytes], sessionCookieNames: Iterable[bytes] = (b"JSESSIONID",)
) -> bytes | None:
    """
    The sticky instance a request asks for: the first C{__VCAP_ID__} cookie's value, but only when the
    request also carries one of the session cookies (gorouter ignores C{__VCAP_ID__} alone).  L{None}
    when the request is not sticky (an empty value is returned as it is; it matches no endpoint).
    """
    names = set(sessionCookieNames)
    vcapId: bytes | None = None
    session = False
    for name, value in _cookies(cookieHeaders):
        if name == VCAP_COOKIE and vcapId is None:
            vcapId = value
        if name in names:
            session = True
    return vcapId if session else None


def isEmptyHost(host: bytes | None, peerHost: str | None) -> bool:
    """
    Whether gorouter answers L{EMPTY_HOST}: no Host, or a Host whose part before the first C{:} equals
    the client's address cut the same way (Go's C{hostWithoutPort(RemoteAddr)}, which for an IPv6 client
    is just C{[}).  C{peerHost} is the client's IP address, or L{None} when there is none (UNIX sockets).
    """
    if not host:
        return True
    if peerHost is None:
        return False
    remote = "[" if ":" in peerHost else peerHost
    return host.split(b":", 1)[0] == remote.encode("ascii", "replace")


# -- the error catalogue

_STATUS_TEXT = {
    400: "Bad Request",
    404: "Not Found",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@attrs.frozen
class RouterReply:
    """
    A complete response gorouter writes itself: status, headers (canonical Go spelling) and body.
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@attrs.frozen
class RouterError:
    """
    One entry of gorouter's error catalogue.

    C{body} is the whole text before the final newline, with C{{host}} (the Host header as the client
    sent it, port included), C{{guid}} and C{{index}} filled in by L{reply}; L{None} means an empty
    body.  C{routerError} is the C{X-Cf-Routererror} value.
    """

    name: str
    status: int
    routerError: str
    body: str | None
    cacheControl: str | None = None

    def reply(self, detail: str | None = None, **fields: bytes | str) -> RouterReply:
        """
        Render the response.  C{detail} is appended to the C{X-Cf-Routererror} value in parentheses
        (gorouter does that for C{endpoint_failure (<error>)}).
        """
        routerError = self.routerError if detail is None else f"{self.routerError} ({detail})"
        headers = [(b"X-Cf-Routererror", routerError.encode("utf-8", "replace"))]
        if self.cacheControl is not None:
            headers.append((b"Cache-Control", self.cacheControl.encode("ascii")))
        body = b""
        if self.body is not None:
            values = {k: v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v for k, v in fields.items()}
            body = (self.body.format(**values) + "\n").encode("utf-8", "surrogateescape")
            headers.append((b"Content-Type", b"text/plain; charset=utf-8"))
            headers.append((b"X-Content-Type-Options", b"nosniff"))
        return RouterReply(self.status, tuple(headers), body)


def _error(
    name: str, status: int, routerError: str, message: str | None, cacheControl: str | None = None
) -> RouterError:
    body = None if message is None else f"{status} {_STATUS_TEXT[status]}: {message}"
    return RouterError(name, status, routerError, body, cacheControl)


_NO_CACHE = "no-cache, no-store"
_SHORT_CACHE = "public,max-age=2"

EMPTY_HOST = _error("empty_host", 400, "empty_host", "Request had empty Host header", _SHORT_CACHE)
UNKNOWN_ROUTE = _error("unknown_route", 404, "unknown_route", "Requested route ('{host}') does not exist.", _NO_CACHE)
NO_ENDPOINTS = _error(
    "no_endpoints", 503, "no_endpoints", "Requested route ('{host}') has no available endpoints.", _SHORT_CACHE
)
INVALID_APP_INSTANCE_HEADER = _error(
    "invalid_cf_app_instance_header", 400, "invalid_cf_app_instance_header", "Invalid X-CF-App-Instance Header",
    _NO_CACHE,
)
UNKNOWN_APP_INSTANCE = _error(
    "unknown_app_instance", 400, "unknown_route",
    "Requested instance ('{index}') with guid ('{guid}') does not exist for route ('{host}')", _NO_CACHE,
)
INVALID_PROCESS_INSTANCE_HEADER = _error(
    "invalid_cf_process_instance_header", 400, "invalid_cf_process_instance_header",
    "Invalid X-CF-Process-Instance Header", _NO_CACHE,
)
UNKNOWN_PROCESS_INSTANCE = _error(
    "unknown_process_instance", 400, "unknown_route",
    "Requested instance ('{index}') with process guid ('{guid}') does not exist for route ('{host}')", _NO_CACHE,
)
UNKNOWN_PROCESS = _error(
    "unknown_process", 400, "unknown_route",
    "Requested instance with process guid ('{guid}') does not exist for route ('{host}')", _NO_CACHE,
)
CONNECTION_LIMIT_REACHED = _error(
    "connection_limit_reached", 503, "Connection Limit Reached",
    "Requested route ('{host}') has reached the connection limit.",
)
ENDPOINT_FAILURE = _error(
    "endpoint_failure", 502, "endpoint_failure", "Registered endpoint failed to handle the request."
)
#: The endpoint failures gorouter classifies (C{DefaultErrorSpecs}); their bodies are bare status lines.
TLS_HANDSHAKE_FAILED = RouterError("tls_handshake_failed", 525, "endpoint_failure", "525 SSL Handshake Failed")
HOSTNAME_MISMATCH = RouterError("hostname_mismatch", 503, "endpoint_failure", "503 Service Unavailable")
UNTRUSTED_CERTIFICATE = RouterError("untrusted_certificate", 526, "endpoint_failure", "526 Invalid SSL Certificate")
CERTIFICATE_REQUIRED = RouterError("certificate_required", 496, "endpoint_failure", "496 SSL Certificate Required")
REQUEST_CANCELLED = RouterError("request_cancelled", 499, "endpoint_failure", "499 Request Cancelled")
ROUTE_SERVICE_UNSUPPORTED = _error(
    "route_service_unsupported", 502, "route_service_unsupported", "Support for route services is disabled."
)
WEBSOCKET_ROUTE_SERVICE = _error(
    "websocket_route_service", 503, "route_service_unsupported",
    "Websocket requests are not supported for routes bound to Route Services.",
)
HEADERS_TOO_LARGE = _error("max_request_size_exceeded", 431, "max-request-size-exceeded", None)

#: Every entry, by name.
ROUTER_ERRORS: dict[str, RouterError] = {
    error.name: error
    for error in (
        EMPTY_HOST, UNKNOWN_ROUTE, NO_ENDPOINTS, INVALID_APP_INSTANCE_HEADER, UNKNOWN_APP_INSTANCE,
        INVALID_PROCESS_INSTANCE_HEADER, UNKNOWN_PROCESS_INSTANCE, UNKNOWN_PROCESS, CONNECTION_LIMIT_REACHED,
        ENDPOINT_FAILURE, TLS_HANDSHAKE_FAILED, HOSTNAME_MISMATCH, UNTRUSTED_CERTIFICATE, CERTIFICATE_REQUIRED,
        REQUEST_CANCELLED, ROUTE_SERVICE_UNSUPPORTED, WEBSOCKET_ROUTE_SERVICE, HEADERS_TOO_LARGE,
    )
}
