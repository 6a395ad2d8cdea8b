"""
The configuration model: frozen values with every default filled in, built by L{parseConfig}.

Durations are float seconds, lists are tuples, and names follow meshproxy's camelCase rather than MOSN's
snake_case (C{graceful_timeout} is C{gracefulTimeout}).  The route table part is in
L{meshproxy.config.routemodel}.

@see: L{meshproxy.config.parse.parseConfig}
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar, Union

import attrs

from meshproxy.config.clustermodel import (
    DEFAULT_CONN_BUFFER_LIMIT_BYTES,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_REQUEST_PER_CONN,
    CircuitBreakersConfig,
    ClusterConfig,
    HostConfig,
)
from meshproxy.config.registry import RouterRegistryConfig
from meshproxy.config.routemodel import RouterConfig
from meshproxy.config.tlsmodel import TLSContextConfig

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DEFAULT_ADMIN_ENDPOINT = "tcp:9901:interface=127.0.0.1"
DEFAULT_GRACEFUL_TIMEOUT = 30.0
DEFAULT_SNIFF_TIMEOUT = 3.0
DEFAULT_SNIFF_MAX_BYTES = 16384
DEFAULT_MAX_CONNECTIONS = 10000
DEFAULT_TCP_IDLE_TIMEOUT = 90.0
DEFAULT_MAX_HEADER_SIZE = 65536


@attrs.frozen
class AdminConfig:
    """
    The admin web interface.

    @ivar endpoint: a Twisted server endpoint string; loopback only unless configured otherwise.
    """

    endpoint: str = DEFAULT_ADMIN_ENDPOINT


@attrs.frozen
class AccessLogConfig:
    """
    One access log of a listener (MOSN C{access_logs[]}).

    @ivar path: a file path, or C{stdout}/C{stderr}.
    @ivar logFormat: MOSN's C{%variable%} template, or L{None} for one JSON object per line.
    """

    path: str
    logFormat: str | None = None


@attrs.frozen
class ProxyProtocolConfig:
    """
    Expect a PROXY protocol (v1 or v2) header on each accepted connection (the C{proxy_protocol} listener
    filter, Envoy's name; a meshproxy extension).

    @ivar allowMissing: also accept connections that start without one (Envoy's
        C{allow_requests_without_proxy_protocol}).
    """

    allowMissing: bool = False


@attrs.frozen
class FilterChainMatch:
    """
    Which connections a filter chain takes (the meshproxy extension C{filter_chain_match}); an empty
    criterion matches everything.

    @ivar serverNames: TLS SNI names, lower case, exact or C{*.suffix}.
    @ivar transportProtocol: C{"tls"} or C{"raw_buffer"}, or L{None} for either.
    @ivar applicationProtocols: ALPN protocols offered in the ClientHello.
    @ivar protocols: the sniffed protocols: C{"http1"}, C{"http2"}, C{"raw"}.
    """

    serverNames: tuple[str, ...] = ()
    transportProtocol: str | None = None
    applicationProtocols: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()


@attrs.frozen
class TCPRouteConfig:
    """
    One C{tcp_proxy} route: connections matching every non-empty criterion go to C{cluster}.

    An empty criterion matches any connection (as MOSN's documentation says; MOSN's code never matches an
    empty list).  Ports are inclusive ranges.  Destination is the listener's local address.
    """

    cluster: str
    sourceAddrs: tuple[IPNetwork, ...] = ()
    destinationAddrs: tuple[IPNetwork, ...] = ()
    sourcePorts: tuple[tuple[int, int], ...] = ()
    destinationPorts: tuple[tuple[int, int], ...] = ()


@attrs.frozen
class TCPProxyConfig:
    """
    The C{tcp_proxy} network filter: an L4 relay to a cluster.

    @ivar cluster: the cluster for every connection; when set it wins over C{routes} (as in MOSN).
    @ivar idleTimeout: seconds without traffic in either direction before closing, or L{None}: never.
    @ivar maxConnectAttempts: upstream connection attempts (to different hosts where possible).
    """

    filterType: ClassVar[str] = "tcp_proxy"

    statPrefix: str
    cluster: str | None = None
    routes: tuple[TCPRouteConfig, ...] = ()
    idleTimeout: float | None = DEFAULT_TCP_IDLE_TIMEOUT
    maxConnectAttempts: int = 3
    #: meshproxy extension (Envoy's name): seconds a graceful close may take before an abort.
    delayedCloseTimeout: float = 1.0


@attrs.frozen
class HTTP1ExtendConfig:
    """
    The C{proxy} filter's C{extend_config.Http1} limits.

    @ivar maxHeaderSize: bytes of request line plus headers.
    @ivar maxRequestBodySize: bytes of request body, 0 for no limit (bodies are streamed).
    """

    maxHeaderSize: int = DEFAULT_MAX_HEADER_SIZE
    maxRequestBodySize: int = 0


@attrs.frozen
class HTTPProxyConfig:
    """
    MOSN's C{proxy} network filter: the HTTP/1 connection manager.

    @ivar downstreamProtocol: C{"Http1"} or C{"Auto"}.
    @ivar upstreamProtocol: C{"Http1"}, C{"Auto"} or C{""} (MOSN ignores it; upstream speaks HTTP/1).
    @ivar routerConfigName: the router of the same server that routes requests.
    @ivar fallbackForUnknownProtocol: hand connections that are not HTTP to the next filter (C{tcp_proxy}).
    """

    filterType: ClassVar[str] = "proxy"

    downstreamProtocol: str
    routerConfigName: str
    upstreamProtocol: str = ""
    fallbackForUnknownProtocol: bool = False
    name: str = ""
    extendConfig: HTTP1ExtendConfig = HTTP1ExtendConfig()
    #: meshproxy extensions: the connection manager's deadlines (seconds) and limits.
    requestHeadersTimeout: float = 10.0
    idleTimeout: float = 60.0
    streamIdleTimeout: float = 60.0
    maxRequestsPerConnection: int = 1000
    maxHeaders: int = 100
    maxURISize: int = 8192
    tunnelIdleTimeout: float | None = 3600.0
    #: meshproxy extension: requests that no static route matches go to the router registry's routes.
    useRouterRegistry: bool = False
    #: Envoy's C{forward_client_cert_details}: C{SANITIZE}, C{FORWARD_ONLY}, C{APPEND_FORWARD},
    #: C{SANITIZE_SET} or C{ALWAYS_FORWARD_ONLY}.
    forwardClientCertDetails: str = "SANITIZE"


NetworkFilterConfig = Union[TCPProxyConfig, HTTPProxyConfig]


@attrs.frozen
class FilterChainConfig:
    """
    A filter chain: the connections it takes, optional TLS termination, and its network filters (one, or
    MOSN's fallback pair C{proxy} then C{tcp_proxy}).
    """

    name: str
    filters: tuple[NetworkFilterConfig, ...]
    match: FilterChainMatch = FilterChainMatch()
    tls: TLSContextConfig | None = None


@attrs.frozen
class ListenerConfig:
    """
    A listener: where to accept connections, and how to sniff and dispatch them.

    @ivar address: the address as written in the file.
    @ivar endpoint: the Twisted server endpoint string to listen on.
    @ivar drainTimeout: seconds to let connections finish when the listener stops (the server's
        C{graceful_timeout}).
    @ivar listenerType: MOSN's C{type}: C{"ingress"} or C{"egress"}.
    """

    name: str
    address: str
    endpoint: str
    filterChains: tuple[FilterChainConfig, ...]
    proxyProtocol: ProxyProtocolConfig | None = None
    sniffTimeout: float = DEFAULT_SNIFF_TIMEOUT
    sniffMaxBytes: int = DEFAULT_SNIFF_MAX_BYTES
    maxConnections: int = DEFAULT_MAX_CONNECTIONS
    drainTimeout: float = DEFAULT_GRACEFUL_TIMEOUT
    listenerType: str = "ingress"
    accessLogs: tuple[AccessLogConfig, ...] = ()


@attrs.frozen
class ServerConfig:
    """
    A MOSN server: listeners and the routers their C{proxy} filters use.

    @ivar gracefulTimeout: the drain timeout, in seconds.
    @ivar defaultLogLevel: FATAL, ERROR, WARN, INFO, DEBUG or TRACE.
    @ivar defaultLogPath: C{"stdout"}, C{"stderr"} or C{""} (twistd's log).
    """

    name: str
    listeners: tuple[ListenerConfig, ...]
    routers: tuple[RouterConfig, ...] = ()
    gracefulTimeout: float = DEFAULT_GRACEFUL_TIMEOUT
    defaultLogLevel: str = "INFO"
    defaultLogPath: str = ""

    def router(self, name: str) -> RouterConfig | None:
        """
        The router called C{name}, if any.
        """
        for router in self.routers:
            if router.routerConfigName == name:
                return router
        return None


@attrs.frozen
class Config:
    """
    A whole configuration.
    """

    servers: tuple[ServerConfig, ...]
    clusters: tuple[ClusterConfig, ...] = ()
    admin: AdminConfig = AdminConfig()
    routerRegistry: RouterRegistryConfig | None = None

    def cluster(self, name: str) -> ClusterConfig | None:
        """
        The cluster called C{name}, if any.
        """
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        return None

    @property
    def listeners(self) -> tuple[ListenerConfig, ...]:
        """
        Every listener of every server, in order.
        """
        return tuple(listener for server in self.servers for listener in server.listeners)
