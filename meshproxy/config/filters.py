"""
Reading a filter chain's network filters: MOSN's C{tcp_proxy} and C{proxy}.

Both are parsed and validated in full.  Whether meshproxy can run them yet is decided in one place,
L{IMPLEMENTED_NETWORK_FILTERS}: a chain that uses a filter outside it gets one error naming the filter.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Sequence

import attrs

from meshproxy.config.addresses import parsePortRanges
from meshproxy.config.errors import Problems
from meshproxy.config.jsonvalues import describe, didYouMean, expectNanoseconds, joinKey
from meshproxy.config.model import (
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_TCP_IDLE_TIMEOUT,
    HTTP1ExtendConfig,
    HTTPProxyConfig,
    IPNetwork,
    NetworkFilterConfig,
    TCPProxyConfig,
    TCPRouteConfig,
)
from meshproxy.config.reader import (
    Fields,
    KeySpec,
    iterObjects,
    objectPairs,
    readObject,
    tolerateEmpty,
    tolerateValues,
)

#: Network filters meshproxy can run.  A chain using any other (parsed) filter is rejected with one error.
IMPLEMENTED_NETWORK_FILTERS = frozenset({"tcp_proxy", "proxy"})

#: What each network filter meshproxy parses is, for messages.
NETWORK_FILTER_DESCRIPTIONS = {"proxy": "HTTP/1 L7 proxy", "tcp_proxy": "L4 TCP relay"}

#: MOSN network filters meshproxy does not support.
UNSUPPORTED_NETWORK_FILTERS = ("udp_proxy", "connection_manager", "fault_inject", "grpc", "tunnel")

#: C{downstream_protocol} values: implemented, and MOSN's others.
DOWNSTREAM_PROTOCOLS = ("Http1", "Auto")
UNSUPPORTED_PROTOCOLS = ("Http2", "bolt", "boltv2", "dubbo", "dubbo-thrift", "tars", "X")

#: C{upstream_protocol} values accepted (MOSN does not consult the proxy-level one; upstream is HTTP/1).
UPSTREAM_PROTOCOLS = ("Http1", "Auto", "")

NETWORK_FILTER_KEYS = KeySpec(known=("type", "config"), unsupported={"go_plugin_config": tolerateEmpty()})
TCP_PROXY_KEYS = KeySpec(
    known=("stat_prefix", "cluster", "routes", "idle_timeout", "max_connect_attempts", "delayed_close_timeout")
)
#: MOSN's route struct has no JSON tags, so its keys are the Go field names (matched case-insensitively).
TCP_ROUTE_KEYS = KeySpec(
    known=("cluster", "SourceAddrs", "DestinationAddrs", "SourcePort", "DestinationPort")
)
CIDR_RANGE_KEYS = KeySpec(known=("Address", "Length"))
PROXY_KEYS = KeySpec(
    known=(
        "name",
        "downstream_protocol",
        "upstream_protocol",
        "router_config_name",
        "fallback_for_unknown_protocol",
        "extend_config",
        # meshproxy extensions (Envoy's names where Envoy has the setting):
        "request_headers_timeout",
        "idle_timeout",
        "stream_idle_timeout",
        "max_requests_per_connection",
        "max_headers",
        "max_uri_size",
        "tunnel_idle_timeout",
        # meshproxy extension: requests no static route matches are looked up in the router registry
        "use_router_registry",
        # Envoy's: what to do with X-Forwarded-Client-Cert
        "forward_client_cert_details",
    ),
    unsupported={
        "router_handler_name": tolerateValues(""),
        "validate_clusters": tolerateValues(False),
        "concurrency_num": tolerateValues(0),
    },
)
HTTP1_EXTEND_KEYS = KeySpec(known=("max_header_size", "max_request_body_size"))


@attrs.frozen
class ChainContext:
    """
    What reading one filter chain's filters needs from around it.

    @ivar checkCluster: records a problem if a cluster name does not exist: C{checkCluster(name, path)}.
    @ivar routerNames: the routers of the chain's server.
    @ivar listenerName: the default C{tcp_proxy} stat prefix.
    """

    problems: Problems
    checkCluster: Callable[[str, str], None]
    routerNames: Sequence[str]
    listenerName: str


def parseNetworkFilters(chain: Fields, context: ChainContext) -> tuple[NetworkFilterConfig, ...]:
    """
    Read a chain's C{filters}: exactly one filter, or MOSN's fallback pair C{proxy} (with
    C{fallback_for_unknown_protocol}) then C{tcp_proxy}.
    """
    items = chain.items("filters", required=True, nonEmpty=True)
    parsed: list[tuple[str, str, NetworkFilterConfig]] = []
    types: list[str] = []
    for _, fields in iterObjects(items, context.problems, NETWORK_FILTER_KEYS):
        kind = fields.string("type", required=True, nonEmpty=True)
        types.append(kind)
        config = _networkFilter(fields, kind, context)
        if config is not None:
            parsed.append((fields.pathOf("type"), kind, config))
    if len(types) == len(items) > 0:
        _checkShape(chain, types, [config for _, _, config in parsed])
    for path, kind, _ in parsed:
        if kind not in IMPLEMENTED_NETWORK_FILTERS:
            description = NETWORK_FILTER_DESCRIPTIONS[kind]
            context.problems.add(path, f"network filter {kind!r} ({description}) is not supported yet")
            break
    return tuple(config for _, _, config in parsed)


def _networkFilter(fields: Fields, kind: str, context: ChainContext) -> NetworkFilterConfig | None:
    if kind == "tcp_proxy":
        return _tcpProxy(_config(fields, TCP_PROXY_KEYS), context)
    if kind == "proxy":
        return _httpProxy(_config(fields, PROXY_KEYS), context)
    if kind in UNSUPPORTED_NETWORK_FILTERS:
        fields.problem(
            "type", f"network filter {kind!r} is a MOSN filter that meshproxy does not support yet"
        )
    elif kind:
        known = list(NETWORK_FILTER_DESCRIPTIONS) + list(UNSUPPORTED_NETWORK_FILTERS)
        hint = didYouMean(kind, known)
        fields.problem(
            "type",
            f"unknown network filter {kind!r}{hint}: expected {', '.join(NETWORK_FILTER_DESCRIPTIONS)}",
        )
    return None


def _config(fields: Fields, spec: KeySpec) -> Fields:
    config = fields.object("config", spec)
    return config if config is not None else Fields(fields.pathOf("config"), fields.problems, {})


def _checkShape(chain: Fields, types: list[str], configs: list[NetworkFilterConfig]) -> None:
    path = chain.pathOf("filters")
    fallbacks = [config for config in configs if isinstance(config, HTTPProxyConfig)]
    if types == ["proxy", "tcp_proxy"]:
        if fallbacks and not fallbacks[0].fallbackForUnknownProtocol:
            chain.problems.add(
                path,
                "'proxy' followed by 'tcp_proxy' needs \"fallback_for_unknown_protocol\": true on the "
                "'proxy' filter (MOSN's fallback pattern)",
            )
    elif len(types) > 1:
        chain.problems.add(
            path,
            f"{len(types)} network filters ({', '.join(types)}): expected exactly one, or 'proxy' with "
            "fallback_for_unknown_protocol followed by 'tcp_proxy'",
        )
    elif fallbacks and fallbacks[0].fallbackForUnknownProtocol:
        chain.problems.add(
            path, "fallback_for_unknown_protocol is true but no 'tcp_proxy' filter follows to fall back to"
        )


def _tcpProxy(fields: Fields, context: ChainContext) -> TCPProxyConfig:
    cluster = fields.optionalString("cluster")
    if cluster is not None:
        context.checkCluster(cluster, fields.pathOf("cluster"))
    routes = tuple(
        _tcpRoute(route, context)
        for _, route in iterObjects(fields.items("routes"), fields.problems, TCP_ROUTE_KEYS)
    )
    if cluster is None and not fields.raw("routes"):
        fields.problems.add(fields.path, "tcp_proxy needs 'cluster' or 'routes'")
    idleTimeout: float | None = DEFAULT_TCP_IDLE_TIMEOUT
    if fields.has("idle_timeout"):
        idleTimeout = expectNanoseconds(
            fields.raw("idle_timeout"), fields.pathOf("idle_timeout"), fields.problems
        )
        idleTimeout = idleTimeout or None
    return TCPProxyConfig(
        statPrefix=fields.string("stat_prefix") or context.listenerName,
        cluster=cluster,
        routes=routes,
        idleTimeout=idleTimeout,
        maxConnectAttempts=fields.integer("max_connect_attempts", 3, 1, 10),
        delayedCloseTimeout=fields.duration("delayed_close_timeout", 1.0, positive=True) or 1.0,
    )


def _tcpRoute(fields: Fields, context: ChainContext) -> TCPRouteConfig:
    cluster = fields.string("cluster", required=True, nonEmpty=True)
    if cluster:
        context.checkCluster(cluster, fields.pathOf("cluster"))
    return TCPRouteConfig(
        cluster=cluster,
        sourceAddrs=_cidrRanges(fields, "SourceAddrs"),
        destinationAddrs=_cidrRanges(fields, "DestinationAddrs"),
        sourcePorts=_portRanges(fields, "SourcePort"),
        destinationPorts=_portRanges(fields, "DestinationPort"),
    )


def _cidrRanges(fields: Fields, key: str) -> tuple[IPNetwork, ...]:
    networks = []
    for path, cidr in iterObjects(fields.items(key), fields.problems, CIDR_RANGE_KEYS):
        address = cidr.string("Address", required=True, nonEmpty=True)
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            if address:
                cidr.problem(
                    "Address", f"{describe(address)} is not an IP address: expected one such as '10.0.0.0'"
                )
            continue
        length = cidr.integer("Length", ip.max_prefixlen, 0, ip.max_prefixlen)
        networks.append(ipaddress.ip_network(f"{ip}/{length}", strict=False))
    return tuple(networks)


def _portRanges(fields: Fields, key: str) -> tuple[tuple[int, int], ...]:
    text = fields.string(key)
    try:
        return parsePortRanges(text)
    except ValueError as e:
        fields.problem(
            key, f"{describe(text)} is not a port list ({e}): expected e.g. '8080' or '8000-9000,9443'"
        )
        return ()


def _httpProxy(fields: Fields, context: ChainContext) -> HTTPProxyConfig:
    routerName = fields.string("router_config_name", required=True, nonEmpty=True)
    if routerName and routerName not in context.routerNames:
        hint = didYouMean(routerName, context.routerNames)
        known = ", ".join(repr(name) for name in context.routerNames) or "none"
        fields.problem(
            "router_config_name", f"unknown router {routerName!r}{hint}: this server's routers are {known}"
        )
    return HTTPProxyConfig(
        downstreamProtocol=_downstreamProtocol(fields),
        routerConfigName=routerName,
        upstreamProtocol=fields.choice(
            "upstream_protocol", "", UPSTREAM_PROTOCOLS, UNSUPPORTED_PROTOCOLS, what="upstream protocol"
        ),
        fallbackForUnknownProtocol=fields.boolean("fallback_for_unknown_protocol"),
        name=fields.string("name"),
        extendConfig=_extendConfig(fields),
        requestHeadersTimeout=fields.duration("request_headers_timeout", 10.0, positive=True) or 10.0,
        idleTimeout=fields.duration("idle_timeout", 60.0, positive=True) or 60.0,
        streamIdleTimeout=fields.duration("stream_idle_timeout", 60.0, positive=True) or 60.0,
        maxRequestsPerConnection=fields.integer("max_requests_per_connection", 1000, 1, 1 << 31),
        maxHeaders=fields.integer("max_headers", 100, 1, 10000),
        maxURISize=fields.integer("max_uri_size", 8192, 64, 1 << 20),
        tunnelIdleTimeout=fields.duration("tunnel_idle_timeout", 3600.0, zeroIsNone=True),
        useRouterRegistry=fields.boolean("use_router_registry"),
        forwardClientCertDetails=fields.choice(
            "forward_client_cert_details", "SANITIZE",
            ("SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY"),
            what="forward_client_cert_details mode",
        ),
    )


def _downstreamProtocol(fields: Fields) -> str:
    """
    C{downstream_protocol}: one protocol name or MOSN's comma-separated list; C{Auto} wins over C{Http1}.
    """
    text = fields.string("downstream_protocol", required=True, nonEmpty=True)
    names = [name.strip() for name in text.split(",")] if text else []
    expected = ", ".join(repr(name) for name in DOWNSTREAM_PROTOCOLS)
    for name in names:
        if name in UNSUPPORTED_PROTOCOLS:
            fields.problem(
                "downstream_protocol",
                f"protocol {name!r} is not supported yet by meshproxy: expected {expected}",
            )
        elif name not in DOWNSTREAM_PROTOCOLS:
            hint = didYouMean(name, DOWNSTREAM_PROTOCOLS + UNSUPPORTED_PROTOCOLS)
            fields.problem(
                "downstream_protocol", f"{describe(name)} is not a valid protocol{hint}: expected {expected}"
            )
    return "Auto" if "Auto" in names else "Http1"


def _extendConfig(fields: Fields) -> HTTP1ExtendConfig:
    """
    C{extend_config}: a map from protocol name (case-sensitive, as in MOSN) to its options; only C{Http1}.
    """
    value: Any = fields.raw("extend_config")
    if value is None:
        return HTTP1ExtendConfig()
    pairs = objectPairs(value)
    if pairs is None:
        fields.problem("extend_config", f"{describe(value)} is not an object: expected an object")
        return HTTP1ExtendConfig()
    result = HTTP1ExtendConfig()
    for key, options in pairs:
        path = joinKey(fields.pathOf("extend_config"), key)
        if key != "Http1":
            fields.problems.add(
                path, f"extend_config key {key!r} is not supported yet: meshproxy reads only 'Http1'"
            )
            continue
        http1 = readObject(options, path, fields.problems, HTTP1_EXTEND_KEYS)
        if http1 is not None:
            result = HTTP1ExtendConfig(
                maxHeaderSize=http1.integer("max_header_size", DEFAULT_MAX_HEADER_SIZE, 1024, 1048576),
                maxRequestBodySize=http1.integer("max_request_body_size", 0, 0, 2**63 - 1),
            )
    return result
