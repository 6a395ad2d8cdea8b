"""
Reading MOSN's C{cluster_manager}: clusters of static or C{STRICT_DNS} upstream hosts, with their load
balancing, health checking, limits and TLS.

Not-supported MOSN keys that are accepted anyway, because meshproxy behaves that way regardless: the
shared C{cluster_manager.tls_context} when C{{}} or C{status: false}, C{cluster_manager_tls: false},
C{cluster_pool_enable: false}, C{respect_dns_ttl: false}, C{mark: 0}, C{sub_type: ""}, an empty
C{dns_resolver_file}, and empty (C{{}}, C{[]} or null) C{dns_resolvers}, C{slow_start}, C{keepalive},
C{spec} and C{original_dst_lb_config}.
"""

from __future__ import annotations

import re
from typing import Any

from meshproxy.config.addresses import AddressError, HostAddress, HostnameError, parseHostAddress
from meshproxy.config.clusterhealth import parseHealthCheck, parseLBConfig, parseOutlierDetection
from meshproxy.config.clustermodel import (
    DEFAULT_CONN_BUFFER_LIMIT_BYTES,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DNS_REFRESH_RATE,
    DEFAULT_MAX_REQUEST_PER_CONN,
    CircuitBreakersConfig,
    ClusterConfig,
    HostConfig,
)
from meshproxy.config.errors import Problems
from meshproxy.config.jsonvalues import UINT32_MAX, describe, didYouMean
from meshproxy.config.subsets import parseLabels, parseSubsetConfig
from meshproxy.config.tls import TLS_CONTEXT_KEYS, parseTLSContext
from meshproxy.config.reader import (
    Fields,
    KeySpec,
    iterObjects,
    objectPairs,
    readObject,
    tolerateEmpty,
    tolerateValues,
    tolerateWhen,
)

CLUSTER_TYPES = ("SIMPLE", "STATIC", "STRICT_DNS")
#: MOSN cluster types meshproxy does not support, each with why.
UNSUPPORTED_CLUSTER_TYPES = {
    "EDS": "needs an xDS control plane, which meshproxy does not support",
    "DYNAMIC": "needs MOSN's dynamic host updates, which meshproxy does not support",
    "ORIGINAL_DST": "needs original-destination forwarding, which meshproxy does not support",
}
LB_TYPES = (
    "LB_ROUNDROBIN",
    "LB_WEIGHTED_ROUNDROBIN",
    "LB_REQUEST_ROUNDROBIN",
    "LB_RANDOM",
    "LB_LEAST_REQUEST",
    "LB_LEAST_CONNECTION",
    "LB_MAGLEV",
)
UNSUPPORTED_LB_TYPES = ("LB_ORIGINAL_DST", "LB_PEAK_EWMA")
DNS_LOOKUP_FAMILIES = ("ALL", "V4_ONLY", "V6_ONLY")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _isPlaintext(value: Any) -> bool:
    pairs = objectPairs(value)
    if pairs is None:
        return False
    return all(key.lower() == "status" and status is False for key, status in pairs)


_PLAINTEXT = tolerateWhen(_isPlaintext, '{} or {"status": false} (plaintext)')

CLUSTER_MANAGER_KEYS = KeySpec(
    known=("clusters",),
    unsupported={
        "tls_context": _PLAINTEXT,
        "cluster_pool_enable": tolerateValues(False),
        "clusters_configs": tolerateEmpty(),
    },
)
CLUSTER_KEYS = KeySpec(
    known=(
        "name",
        "type",
        "lb_type",
        "hosts",
        "connect_timeout",
        "conn_buffer_limit_bytes",
        "max_request_per_conn",
        "idle_timeout",
        "circuit_breakers",
        # meshproxy extension (HAProxy's name): how long a request may wait for a pooled connection
        "queue_timeout",
        "health_check",
        # meshproxy extension (Envoy's names): passive ejection of failing hosts
        "outlier_detection",
        "lb_subset_config",
        "lbconfig",
        "dns_refresh_rate",
        "dns_lookup_family",
        # meshproxy extension (Envoy's name): the healthy percentage below which all hosts are used
        "healthy_panic_threshold",
        "tls_context",
    ),
    unsupported={
        "cluster_manager_tls": tolerateValues(False),
        "cluster_pool_enable": tolerateValues(False),
        "sub_type": tolerateValues(""),
        "spec": tolerateEmpty(),
        "mark": tolerateValues(0),
        "keepalive": tolerateEmpty(),
        "slow_start": tolerateEmpty(),
        "original_dst_lb_config": tolerateEmpty(),
        "respect_dns_ttl": tolerateValues(False),
        "dns_resolvers": tolerateEmpty(),
        "dns_resolver_file": tolerateValues(""),
        "dns_resolver_port": None,
    },
)
HOST_KEYS = KeySpec(known=("address", "hostname", "weight", "tls_disable", "metadata"))
CIRCUIT_BREAKER_KEYS = KeySpec(
    known=("max_connections", "max_pending_requests", "max_requests", "max_retries")
)


def parseClusterManager(value: Any, path: str, problems: Problems) -> tuple[ClusterConfig, ...]:
    """
    Read C{cluster_manager}; cluster names must be unique.
    """
    if value is None:
        return ()
    fields = readObject(value, path, problems, CLUSTER_MANAGER_KEYS)
    if fields is None:
        return ()
    clusters = []
    seen: dict[str, str] = {}
    for clusterPath, cluster in iterObjects(fields.items("clusters"), problems, CLUSTER_KEYS):
        parsed = _cluster(cluster)
        if parsed.name in seen:
            cluster.problem("name", f"duplicate cluster name {parsed.name!r} (also {seen[parsed.name]})")
            continue
        if parsed.name:
            seen[parsed.name] = clusterPath
        clusters.append(parsed)
    return tuple(clusters)


def _cluster(fields: Fields) -> ClusterConfig:
    kind = fields.string("type", "SIMPLE")
    if kind in UNSUPPORTED_CLUSTER_TYPES:
        fields.problem(
            "type", f"cluster type {kind!r} {UNSUPPORTED_CLUSTER_TYPES[kind]}: expected SIMPLE or STATIC"
        )
        kind = "SIMPLE"
    elif kind not in CLUSTER_TYPES:
        if fields.has("type") and isinstance(fields.raw("type"), str):
            hint = didYouMean(kind, CLUSTER_TYPES + tuple(UNSUPPORTED_CLUSTER_TYPES))
            fields.problem("type", f"{describe(kind)} is not a cluster type{hint}: expected SIMPLE or STATIC")
        kind = "SIMPLE"
    idleTimeout = fields.duration("idle_timeout", None, zeroIsNone=True)
    dns = kind == "STRICT_DNS"
    if not dns:
        for key in ("dns_refresh_rate", "dns_lookup_family"):
            if fields.has(key):
                fields.problem(key, f"only a STRICT_DNS cluster resolves names: this cluster's type is {kind}")
    lbType = fields.choice("lb_type", "LB_ROUNDROBIN", LB_TYPES, UNSUPPORTED_LB_TYPES, what="load balancer type")
    if kind == "STRICT_DNS" and fields.has("lb_subset_config"):
        fields.problem("lb_subset_config", "subsets need host metadata, which a STRICT_DNS cluster's hosts do not keep")
    return ClusterConfig(
        name=fields.string("name", required=True, nonEmpty=True),
        hosts=_hosts(fields, dns),
        type=kind,
        lbType=lbType,
        connectTimeout=fields.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT, positive=True)
        or DEFAULT_CONNECT_TIMEOUT,
        connBufferLimitBytes=fields.integer(
            "conn_buffer_limit_bytes", DEFAULT_CONN_BUFFER_LIMIT_BYTES, 1024, 1048576
        ),
        maxRequestPerConn=fields.integer("max_request_per_conn", DEFAULT_MAX_REQUEST_PER_CONN, 1, UINT32_MAX),
        idleTimeout=idleTimeout,
        circuitBreakers=_circuitBreakers(fields),
        queueTimeout=fields.duration("queue_timeout", 5.0, positive=True) or 5.0,
        healthCheck=parseHealthCheck(fields),
        outlierDetection=parseOutlierDetection(fields),
        lbConfig=parseLBConfig(fields),
        subsets=parseSubsetConfig(fields),
        dnsRefreshRate=fields.duration("dns_refresh_rate", DEFAULT_DNS_REFRESH_RATE, positive=True)
        or DEFAULT_DNS_REFRESH_RATE,
        dnsLookupFamily=fields.choice("dns_lookup_family", "ALL", DNS_LOOKUP_FAMILIES, what="DNS lookup family"),
        healthyPanicThreshold=fields.integer("healthy_panic_threshold", 50, 0, 100),
        tls=parseTLSContext(fields.object("tls_context", TLS_CONTEXT_KEYS), forServer=False),
    )


def _hosts(fields: Fields, dns: bool) -> tuple[HostConfig, ...]:
    hosts = []
    seen: dict[str, str] = {}
    for path, host in iterObjects(
        fields.items("hosts", required=True, nonEmpty=True), fields.problems, HOST_KEYS
    ):
        address = host.string("address", required=True, nonEmpty=True)
        if not address:
            continue
        try:
            parsed = parseHostAddress(address)
        except HostnameError as e:
            if not dns:
                host.problem("address", f"{e}; resolving host names needs cluster type STRICT_DNS")
                continue
            named = _dnsName(address, host)
            if named is None:
                continue
            parsed = named
        except AddressError as e:
            host.problem("address", str(e))
            continue
        if dns and parsed.family == "unix":
            host.problem("address", f"{address!r} is a unix socket: a STRICT_DNS cluster resolves name:port")
            continue
        if address in seen:
            host.problem(
                "address", f"host {address!r} is listed twice in this cluster (also {seen[address]})"
            )
        seen[address] = path
        hosts.append(
            HostConfig(
                address=address,
                host=parsed.host,
                port=parsed.port,
                family=parsed.family,
                weight=host.integer("weight", 1, 1, 128),
                hostname=host.optionalString("hostname"),
                tlsDisable=host.boolean("tls_disable"),
                metadata=parseLabels(host, "metadata"),
            )
        )
    return tuple(hosts)


def _circuitBreakers(fields: Fields) -> CircuitBreakersConfig:
    """
    MOSN's C{circuit_breakers} is a list of thresholds objects; meshproxy takes at most one.
    """
    value = fields.raw("circuit_breakers")
    if value is not None and not isinstance(value, list):
        fields.problem(
            "circuit_breakers",
            f"{describe(value)} is not a list: expected a list of one thresholds object, as in MOSN: "
            '[{"max_connections": 1024}]',
        )
        return CircuitBreakersConfig()
    items = fields.items("circuit_breakers")
    if len(items) > 1:
        fields.problem("circuit_breakers", f"{len(items)} thresholds objects: expected at most one")
    result = CircuitBreakersConfig()
    for _, thresholds in iterObjects(items[:1], fields.problems, CIRCUIT_BREAKER_KEYS):
        result = CircuitBreakersConfig(
            maxConnections=thresholds.integer("max_connections", 1024, 1, UINT32_MAX),
            maxPendingRequests=thresholds.integer("max_pending_requests", 1024, 1, UINT32_MAX),
            maxRequests=thresholds.integer("max_requests", 1024, 1, UINT32_MAX),
            maxRetries=thresholds.integer("max_retries", 3, 0, UINT32_MAX),
        )
    return result


def _dnsName(address: str, host: Fields) -> HostAddress | None:
    """
    A STRICT_DNS host's C{name:port}, with the name checked as a DNS name.
    """
    name, _, port = address.rpartition(":")
    labels = name.rstrip(".").split(".")
    if (
        not name
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
    ):
        host.problem("address", f"{address!r} is not a host name and port: expected name:port, e.g. backend.local:8080")
        return None
    return HostAddress(name.rstrip(".").lower(), int(port), "dns")
