"""
MOSN v2 JSON configuration: parsing and validation into an immutable model (pure, no I/O).

Use L{parseConfig} to read a file's contents into a L{Config}; it raises L{ConfigError} listing every
problem, each with its JSON path.  L{configDump} gives the effective model back as JSON-ready data.

Modules: C{model} and C{routemodel} (the frozen values), C{parse} (top level and admin), C{listeners},
C{filters}, C{routers} and C{clusters} (each part of the document), C{reader} and C{jsonvalues} (key
checking and typed values), C{addresses} and C{durations} (value syntaxes), C{dump}, C{errors}.
"""

from meshproxy.config.dump import configDump
from meshproxy.config.clustermodel import (
    HealthCheckConfig,
    LBConfig,
    OutlierDetectionConfig,
    SubsetConfig,
)
from meshproxy.config.errors import ConfigError, Problem
from meshproxy.config.filters import IMPLEMENTED_NETWORK_FILTERS
from meshproxy.config.model import (
    DEFAULT_ADMIN_ENDPOINT,
    AccessLogConfig,
    AdminConfig,
    CircuitBreakersConfig,
    ClusterConfig,
    Config,
    FilterChainConfig,
    FilterChainMatch,
    HostConfig,
    HTTP1ExtendConfig,
    HTTPProxyConfig,
    ListenerConfig,
    NetworkFilterConfig,
    ProxyProtocolConfig,
    ServerConfig,
    TCPProxyConfig,
    TCPRouteConfig,
    TLSContextConfig,
)
from meshproxy.config.parse import parseConfig, parseConfigObject
from meshproxy.config.routemodel import (
    DirectResponseActionConfig,
    HashPolicyConfig,
    HeaderEdits,
    HeaderMatcherConfig,
    HeaderValueConfig,
    RedirectActionConfig,
    RegexRewriteConfig,
    RetryPolicyConfig,
    RouteActionConfig,
    RouteEntryConfig,
    RouteMatchConfig,
    RouterConfig,
    VirtualHostConfig,
    WeightedClusterConfig,
)

__all__ = [
    "DEFAULT_ADMIN_ENDPOINT",
    "AccessLogConfig",
    "IMPLEMENTED_NETWORK_FILTERS",
    "AdminConfig",
    "CircuitBreakersConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DirectResponseActionConfig",
    "FilterChainConfig",
    "FilterChainMatch",
    "HTTP1ExtendConfig",
    "HTTPProxyConfig",
    "HashPolicyConfig",
    "HeaderEdits",
    "HealthCheckConfig",
    "LBConfig",
    "OutlierDetectionConfig",
    "SubsetConfig",
    "HeaderMatcherConfig",
    "HeaderValueConfig",
    "HostConfig",
    "ListenerConfig",
    "NetworkFilterConfig",
    "Problem",
    "ProxyProtocolConfig",
    "RedirectActionConfig",
    "RegexRewriteConfig",
    "RetryPolicyConfig",
    "RouteActionConfig",
    "RouteEntryConfig",
    "RouteMatchConfig",
    "RouterConfig",
    "ServerConfig",
    "TCPProxyConfig",
    "TCPRouteConfig",
    "TLSContextConfig",
    "VirtualHostConfig",
    "WeightedClusterConfig",
    "configDump",
    "parseConfig",
    "parseConfigObject",
]
