"""
The top-level C{router_registry} section (a meshproxy extension): gorouter-compatible route registration
over NATS.  Inside it, keys are gorouter's own (its YAML config's names and defaults), so an operator
coming from Cloud Foundry recognises them; only what meshproxy implements is accepted.
"""

from __future__ import annotations

import attrs

from meshproxy.config.addresses import AddressError, socketEndpoint
from meshproxy.config.reader import Fields, KeySpec, iterObjects

DEFAULT_NATS_PORT = 4222


@attrs.frozen
class NATSConfig:
    """
    Where the NATS cluster is and how to log in.

    @ivar hosts: C{(hostname, port)} pairs, tried in turn.
    """

    hosts: tuple[tuple[str, int], ...]
    user: str = ""
    password: str = ""
    token: str = ""
    pingInterval: float = 20.0


@attrs.frozen
class RegistryStatusConfig:
    """
    gorouter's status listeners: C{/health} (and C{/is-process-alive-do-not-use-for-loadbalancing}) on
    C{host:port}, and C{/routes} and C{/varz} with basic auth on 127.0.0.1 at C{routesPort}.

    @ivar endpoint: the Twisted endpoint string of the health listener.
    @ivar routesEndpoint: the Twisted endpoint string of the routes listener (always loopback).
    """

    endpoint: str = "tcp:8080:interface=127.0.0.1"
    routesEndpoint: str = "tcp:8082:interface=127.0.0.1"
    user: str = ""
    password: str = ""


@attrs.frozen
class RouterRegistryConfig:
    """
    The route registry: NATS, pruning, load balancing and the status endpoints (gorouter's defaults,
    except that the status listener is on loopback unless configured).
    """

    nats: NATSConfig
    status: RegistryStatusConfig = RegistryStatusConfig()
    index: int = 0
    zone: str = ""
    startResponseDelay: float = 5.0
    dropletStaleThreshold: float = 120.0
    pruneInterval: float = 30.0
    suspendPruningIfNATSUnavailable: bool = True
    balancingAlgorithm: str = "round-robin"
    maxConns: int = 0
    maxAttempts: int = 3
    stickyCookieNames: tuple[str, ...] = ("JSESSIONID",)
    endpointTimeout: float = 60.0
    endpointDialTimeout: float = 5.0
    #: The address published in C{router.start}'s C{hosts} (gorouter finds its own; set it when
    #: 127.0.0.1 is not right for your emitters).
    localIP: str = "127.0.0.1"


REGISTRY_KEYS = KeySpec(
    known=(
        "nats",
        "status",
        "index",
        "zone",
        "nats_client_ping_interval",
        "start_response_delay_interval",
        "droplet_stale_threshold",
        "prune_stale_droplets_interval",
        "suspend_pruning_if_nats_unavailable",
        "balancing_algorithm",
        "backends",
        "sticky_session_cookie_names",
        "endpoint_timeout",
        "endpoint_dial_timeout",
        "local_ip",
    )
)
NATS_KEYS = KeySpec(known=("hosts", "user", "pass", "token"))
NATS_HOST_KEYS = KeySpec(known=("hostname", "port"))
STATUS_KEYS = KeySpec(known=("host", "port", "user", "pass", "routes"))
ROUTES_KEYS = KeySpec(known=("port",))
BACKENDS_KEYS = KeySpec(known=("max_conns", "max_attempts"))
BALANCING = ("round-robin", "least-connection")


def parseRouterRegistry(fields: Fields) -> RouterRegistryConfig | None:
    """
    The top-level C{router_registry}, or L{None} when absent.
    """
    registry = fields.object("router_registry", REGISTRY_KEYS)
    if registry is None:
        return None
    default = RouterRegistryConfig(nats=NATSConfig(hosts=()))
    backends = registry.object("backends", BACKENDS_KEYS)
    cookies = registry.strings("sticky_session_cookie_names") if registry.has("sticky_session_cookie_names") else None
    return RouterRegistryConfig(
        nats=_nats(registry),
        status=_status(registry.object("status", STATUS_KEYS)),
        index=registry.integer("index", 0, 0, 65535),
        zone=registry.string("zone"),
        startResponseDelay=_seconds(registry, "start_response_delay_interval", default.startResponseDelay),
        dropletStaleThreshold=_seconds(registry, "droplet_stale_threshold", default.dropletStaleThreshold, True),
        pruneInterval=_seconds(registry, "prune_stale_droplets_interval", default.pruneInterval, True),
        suspendPruningIfNATSUnavailable=registry.boolean("suspend_pruning_if_nats_unavailable", True),
        balancingAlgorithm=registry.choice(
            "balancing_algorithm", "round-robin", BALANCING, what="balancing algorithm"
        ),
        maxConns=backends.integer("max_conns", 0, 0, 1_000_000) if backends is not None else 0,
        maxAttempts=backends.integer("max_attempts", 3, 1, 100) if backends is not None else 3,
        stickyCookieNames=cookies if cookies is not None else default.stickyCookieNames,
        endpointTimeout=_seconds(registry, "endpoint_timeout", default.endpointTimeout, True),
        endpointDialTimeout=_seconds(registry, "endpoint_dial_timeout", default.endpointDialTimeout, True),
        localIP=registry.string("local_ip", "127.0.0.1") or "127.0.0.1",
    )


def _seconds(fields: Fields, key: str, default: float, positive: bool = False) -> float:
    value = fields.duration(key, default, positive=positive)
    return default if value is None else value


def _nats(registry: Fields) -> NATSConfig:
    nats = registry.object("nats", NATS_KEYS, required=True)
    if nats is None:
        return NATSConfig(hosts=())
    hosts = []
    for _, host in iterObjects(nats.items("hosts", required=True, nonEmpty=True), nats.problems, NATS_HOST_KEYS):
        name = host.string("hostname", required=True, nonEmpty=True)
        port = host.integer("port", DEFAULT_NATS_PORT, 1, 65535)
        if name:
            hosts.append((name, port))
    user, password, token = nats.string("user"), nats.string("pass"), nats.string("token")
    if token and (user or password):
        nats.problems.add(nats.path, "give 'user'/'pass' or 'token', not both")
    return NATSConfig(
        hosts=tuple(hosts),
        user=user,
        password=password,
        token=token,
        pingInterval=_seconds(registry, "nats_client_ping_interval", 20.0, True),
    )


def _status(status: Fields | None) -> RegistryStatusConfig:
    default = RegistryStatusConfig()
    if status is None:
        return default
    host = status.string("host", "127.0.0.1") or "127.0.0.1"
    port = status.integer("port", 8080, 1, 65535)
    routes = status.object("routes", ROUTES_KEYS)
    routesPort = routes.integer("port", 8082, 1, 65535) if routes is not None else 8082
    try:
        endpoint = socketEndpoint(host, port)
    except AddressError as e:
        status.problem("host", str(e))
        endpoint = default.endpoint
    if routesPort == port and host in ("127.0.0.1", "0.0.0.0", "::"):
        status.problem("routes", f"port {routesPort} is the status port too: expected another port")
    return RegistryStatusConfig(
        endpoint=endpoint,
        routesEndpoint=socketEndpoint("127.0.0.1", routesPort),
        user=status.string("user"),
        password=status.string("pass"),
    )
