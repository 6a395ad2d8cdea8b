"""
Reading MOSN's C{servers[]}: each server's routers, listeners, listener filters and filter chains.

meshproxy extensions, all optional: on a listener C{sniff_timeout} (duration), C{sniff_max_bytes}
(512 to 1 MiB), C{max_connections} (at least 1) and C{tls_handshake_timeout} (duration, default 10s); in
C{listener_filters} the C{proxy_protocol} type (Envoy's name); on a filter chain C{name} and
C{filter_chain_match}, so one listener can hold several chains (MOSN allows exactly one).

A chain's C{tls_context} or C{tls_context_set} (read by L{meshproxy.config.tls}) terminates TLS: such a
chain takes only TLS connections (as if its C{transport_protocol} were C{tls}), and its C{protocols}
criterion, if any, applies to the decrypted stream.

Not-supported MOSN keys that are accepted anyway, because meshproxy behaves that way regardless:
C{bind_port: true}; C{network: "tcp"} or C{"unix"} (unix makes the address a socket path);
C{inspector: true} (meshproxy always sniffs TLS and plaintext); C{reuseport: false}; C{use_original_dst: ""};
empty C{stream_filters} and C{access_logs}; C{use_netpoll_mode: false} and an empty C{global_log_roller} on a
server; a C{tls_context} that is C{{}} or has C{status: false} (plaintext, as in MOSN, whatever else it
holds).
"""

from __future__ import annotations

from typing import Any, Callable

from meshproxy.config.addresses import AddressError, listenerEndpoint
from meshproxy.config.errors import Problems
from meshproxy.config.filters import ChainContext, parseNetworkFilters
from meshproxy.config.jsonvalues import UINT32_MAX, describe, didYouMean
from meshproxy.config.model import (
    DEFAULT_GRACEFUL_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SNIFF_MAX_BYTES,
    DEFAULT_SNIFF_TIMEOUT,
    FilterChainConfig,
    FilterChainMatch,
    ListenerConfig,
    ProxyProtocolConfig,
    ServerConfig,
)
from meshproxy.config.reader import Fields, KeySpec, iterObjects, tolerateEmpty, tolerateValues
from meshproxy.config.accesslogs import parseAccessLogs
from meshproxy.config.routers import parseRouters
from meshproxy.config.tls import SERVER_NAME, parseServerTLS
from meshproxy.config.tlsmodel import DEFAULT_TLS_HANDSHAKE_TIMEOUT

#: Filter chains terminate TLS.  Kept (always true) for code and tests that check or patch it.
TLS_TERMINATION_SUPPORTED = True

LOG_LEVELS = ("FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE")
LOG_PATHS = ("stdout", "stderr", "")
SNIFFED_PROTOCOLS = ("http1", "http2", "raw")
TRANSPORT_PROTOCOLS = ("tls", "raw_buffer")

SERVER_KEYS = KeySpec(
    known=(
        "mosn_server_name",
        "default_log_path",
        "default_log_level",
        "graceful_timeout",
        "listeners",
        "routers",
    ),
    unsupported={
        "global_log_roller": tolerateEmpty(),
        "processor": None,
        "use_netpoll_mode": tolerateValues(False),
    },
)
LISTENER_KEYS = KeySpec(
    known=(
        "name",
        "type",
        "address",
        "filter_chains",
        "listener_filters",
        "sniff_timeout",
        "sniff_max_bytes",
        "max_connections",
        "access_logs",
        "tls_handshake_timeout",
    ),
    unsupported={
        "bind_port": tolerateValues(True),
        "network": tolerateValues("tcp", "unix"),
        "inspector": tolerateValues(True),
        "reuseport": tolerateValues(False),
        "use_original_dst": tolerateValues(""),
        "stream_filters": tolerateEmpty(),
        "connection_idle_timeout": None,
        "default_read_buffer_size": None,
    },
)
LISTENER_FILTER_KEYS = KeySpec(known=("type", "config"), unsupported={"go_plugin_config": tolerateEmpty()})
PROXY_PROTOCOL_KEYS = KeySpec(known=("allow_requests_without_proxy_protocol",))
#: Listener filter types: implemented, and MOSN's not supported yet.
LISTENER_FILTERS = ("proxy_protocol",)
UNSUPPORTED_LISTENER_FILTERS = ("original_dst",)
FILTER_CHAIN_KEYS = KeySpec(
    known=("name", "match", "filter_chain_match", "tls_context", "tls_context_set", "filters")
)
FILTER_CHAIN_MATCH_KEYS = KeySpec(
    known=("server_names", "transport_protocol", "application_protocols", "protocols")
)
def parseServers(
    items: list[tuple[str, Any]], problems: Problems, checkCluster: Callable[[str, str], None]
) -> tuple[ServerConfig, ...]:
    """
    Read C{servers}; listener names (which default to their address) must be unique across all of them.
    """
    servers = []
    listenerNames: dict[str, str] = {}
    endpoints: dict[str, str] = {}
    for index, (_, fields) in enumerate(iterObjects(items, problems, SERVER_KEYS)):
        routers = parseRouters(fields.items("routers"), problems, checkCluster)
        routerNames = tuple(router.routerConfigName for router in routers)
        gracefulTimeout = fields.duration("graceful_timeout", DEFAULT_GRACEFUL_TIMEOUT)
        assert gracefulTimeout is not None
        listeners = []
        for path, listenerFields in iterObjects(
            fields.items("listeners", required=True, nonEmpty=True), problems, LISTENER_KEYS
        ):
            listener = _listener(listenerFields, gracefulTimeout, routerNames, checkCluster)
            if not listener.name:
                pass
            elif listener.name in listenerNames:
                listenerFields.problem(
                    "name" if listenerFields.has("name") else "address",
                    f"listener name {listener.name!r} is already used by {listenerNames[listener.name]} "
                    "(a listener's name defaults to its address)",
                )
            else:
                listenerNames[listener.name] = path
            if listener.endpoint and listener.endpoint in endpoints:
                listenerFields.problem(
                    "address",
                    f"endpoint {listener.endpoint!r} is already used by {endpoints[listener.endpoint]}",
                )
            elif listener.endpoint:
                endpoints[listener.endpoint] = path
            listeners.append(listener)
        servers.append(
            ServerConfig(
                name=fields.string("mosn_server_name") or f"server#{index}",
                listeners=tuple(listeners),
                routers=routers,
                gracefulTimeout=gracefulTimeout,
                defaultLogLevel=_logLevel(fields),
                defaultLogPath=_logPath(fields),
            )
        )
    return tuple(servers)


def _logLevel(fields: Fields) -> str:
    level = fields.string("default_log_level", "INFO")
    if level.upper() not in LOG_LEVELS:
        hint = didYouMean(level, LOG_LEVELS)
        fields.problem(
            "default_log_level",
            f"{describe(level)} is not a log level{hint}: expected one of {', '.join(LOG_LEVELS)}",
        )
        return "INFO"
    return level.upper()


def _logPath(fields: Fields) -> str:
    path = fields.string("default_log_path")
    if path not in LOG_PATHS:
        fields.problem(
            "default_log_path",
            f"{describe(path)}: logging to a file is not supported yet: expected 'stdout', 'stderr' or ''",
        )
        return ""
    return path


def _listener(
    fields: Fields,
    drainTimeout: float,
    routerNames: tuple[str, ...],
    checkCluster: Callable[[str, str], None],
) -> ListenerConfig:
    address = fields.string("address", required=True, nonEmpty=True)
    endpoint = ""
    if address:
        try:
            endpoint = listenerEndpoint(address, fields.raw("network", "tcp"))
        except AddressError as e:
            fields.problem("address", str(e))
    name = fields.string("name", nonEmpty=True) or address
    handshakeTimeout = (
        fields.duration("tls_handshake_timeout", DEFAULT_TLS_HANDSHAKE_TIMEOUT, positive=True)
        or DEFAULT_TLS_HANDSHAKE_TIMEOUT
    )
    chains = []
    matches: dict[tuple[Any, ...], str] = {}
    for index, (path, chain) in enumerate(
        iterObjects(
            fields.items("filter_chains", required=True, nonEmpty=True), fields.problems, FILTER_CHAIN_KEYS
        )
    ):
        context = ChainContext(fields.problems, checkCluster, routerNames, name)
        parsed = _filterChain(chain, f"{name}#{index}", context, handshakeTimeout)
        key = (
            frozenset(parsed.match.serverNames),
            "tls" if parsed.tls is not None else parsed.match.transportProtocol,
            frozenset(parsed.match.applicationProtocols),
            frozenset(parsed.match.protocols),
        )
        if key in matches:
            fields.problems.add(path, f"this filter chain matches the same connections as {matches[key]}")
        else:
            matches[key] = path
        chains.append(parsed)
    return ListenerConfig(
        name=name,
        address=address,
        endpoint=endpoint,
        filterChains=tuple(chains),
        proxyProtocol=_listenerFilters(fields),
        sniffTimeout=fields.duration("sniff_timeout", DEFAULT_SNIFF_TIMEOUT, positive=True)
        or DEFAULT_SNIFF_TIMEOUT,
        sniffMaxBytes=fields.integer("sniff_max_bytes", DEFAULT_SNIFF_MAX_BYTES, 512, 1048576),
        maxConnections=fields.integer("max_connections", DEFAULT_MAX_CONNECTIONS, 1, UINT32_MAX),
        drainTimeout=drainTimeout,
        listenerType=fields.choice("type", "ingress", ("ingress", "egress"), what="listener type"),
        accessLogs=parseAccessLogs(fields.items("access_logs"), fields.problems),
    )


def _listenerFilters(fields: Fields) -> ProxyProtocolConfig | None:
    result = None
    for _, item in iterObjects(fields.items("listener_filters"), fields.problems, LISTENER_FILTER_KEYS):
        kind = item.string("type", required=True, nonEmpty=True)
        if kind == "proxy_protocol":
            config = item.object("config", PROXY_PROTOCOL_KEYS)
            allowMissing = config.boolean("allow_requests_without_proxy_protocol") if config else False
            if result is not None:
                item.problem("type", "the 'proxy_protocol' listener filter is given twice")
            result = ProxyProtocolConfig(allowMissing=allowMissing)
        elif kind in UNSUPPORTED_LISTENER_FILTERS:
            item.problem(
                "type", f"listener filter {kind!r} is a MOSN filter that meshproxy does not support yet"
            )
        elif kind:
            hint = didYouMean(kind, LISTENER_FILTERS + UNSUPPORTED_LISTENER_FILTERS)
            item.problem("type", f"unknown listener filter {kind!r}{hint}: expected 'proxy_protocol'")
    return result


def _filterChain(
    fields: Fields, defaultName: str, context: ChainContext, handshakeTimeout: float
) -> FilterChainConfig:
    match = fields.string("match")
    if match:
        fields.problem(
            "match",
            f"{describe(match)}: MOSN's 'match' string is not supported: expected '' (see "
            "'filter_chain_match')",
        )
    chainMatch = _chainMatch(fields.object("filter_chain_match", FILTER_CHAIN_MATCH_KEYS))
    tls = parseServerTLS(fields, handshakeTimeout)
    if tls is not None and chainMatch.transportProtocol == "raw_buffer":
        fields.problem(
            "tls_context_set" if tls.fromContextSet else "tls_context",
            "a chain that terminates TLS takes only TLS connections: its transport_protocol cannot be "
            "'raw_buffer'",
        )
    return FilterChainConfig(
        name=fields.string("name", nonEmpty=True) or defaultName,
        match=chainMatch,
        tls=tls,
        filters=parseNetworkFilters(fields, context),
    )


def _chainMatch(fields: Fields | None) -> FilterChainMatch:
    if fields is None:
        return FilterChainMatch()
    serverNames = []
    for path, name in fields.items("server_names"):
        if isinstance(name, str) and SERVER_NAME.match(name.lower()):
            serverNames.append(name.lower())
        else:
            fields.problems.add(
                path,
                f"{describe(name)} is not a server name: expected a host name such as 'example.com' or "
                "'*.example.com'",
            )
    protocols = fields.strings("protocols")
    for protocol in protocols:
        if protocol not in SNIFFED_PROTOCOLS:
            hint = didYouMean(protocol, SNIFFED_PROTOCOLS)
            fields.problem(
                "protocols",
                f"{describe(protocol)} is not a sniffed protocol{hint}: expected http1, http2, raw",
            )
    if len(set(protocols)) != len(protocols):
        fields.problem("protocols", "a protocol is listed twice")
    transport = (
        fields.choice("transport_protocol", "", TRANSPORT_PROTOCOLS, what="transport protocol") or None
    )
    alpn = fields.strings("application_protocols")
    if transport == "raw_buffer" and (serverNames or alpn):
        fields.problem(
            "transport_protocol",
            "'raw_buffer' cannot match server_names or application_protocols: those are read from a TLS "
            "ClientHello",
        )
    return FilterChainMatch(
        serverNames=tuple(serverNames),
        transportProtocol=transport,
        applicationProtocols=alpn,
        protocols=protocols,
    )
