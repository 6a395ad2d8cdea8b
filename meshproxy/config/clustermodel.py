"""
The cluster part of the configuration model: hosts, load balancing, health checking, outlier ejection,
circuit breakers and discovery (MOSN's C{cluster_manager.clusters[]}).
"""

from __future__ import annotations

import attrs

from meshproxy.config.tlsmodel import TLSContextConfig

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_CONN_BUFFER_LIMIT_BYTES = 65536
DEFAULT_MAX_REQUEST_PER_CONN = 1024
DEFAULT_DNS_REFRESH_RATE = 5.0


@attrs.frozen
class CircuitBreakersConfig:
    """
    Per-cluster limits (MOSN's C{circuit_breakers} thresholds); beyond them requests fail fast with 503.

    @ivar maxConnections: connections open or opening to the cluster's hosts.
    @ivar maxPendingRequests: requests waiting for a pooled connection.
    @ivar maxRequests: requests (and TCP sessions) in flight to the cluster at once.
    @ivar maxRetries: retries in flight to the cluster at once.
    """

    maxConnections: int = 1024
    maxPendingRequests: int = 1024
    maxRequests: int = 1024
    maxRetries: int = 3


@attrs.frozen
class HostConfig:
    """
    An upstream host.

    @ivar address: as written in the file.
    @ivar host: the IP address without brackets, or the unix socket path (for C{STRICT_DNS}, the name
        to resolve).
    @ivar port: the TCP port, 0 for a unix socket.
    @ivar family: C{"ipv4"}, C{"ipv6"}, C{"unix"}, or C{"dns"} (a name a C{STRICT_DNS} cluster resolves).
    @ivar weight: 1 to 128.
    @ivar metadata: the host's C{metadata.filter_metadata["mosn.lb"]} labels, sorted C{(key, value)}
        pairs, for subset load balancing.
    """

    address: str
    host: str
    port: int
    family: str
    weight: int = 1
    hostname: str | None = None
    tlsDisable: bool = False
    metadata: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class HealthCheckConfig:
    """
    Active health checking (MOSN's C{health_check}).

    @ivar protocol: C{"Http1"} (an HTTP request) or C{"TCP"} (a connection that opens).
    @ivar timeout: seconds one check may take.
    @ivar interval: seconds between the starts of two checks of one host.
    @ivar intervalJitter: up to this many seconds added at random to each interval.
    @ivar initialDelay: seconds before the first check.
    @ivar healthyThreshold: consecutive passes that make an unhealthy host healthy.
    @ivar unhealthyThreshold: consecutive failures that make a healthy host unhealthy.
    @ivar path: the HTTP check's request path.
    @ivar method: the HTTP check's method.
    @ivar host: the HTTP check's Host header, or L{None} for the host's address.
    @ivar port: the port to check instead of the host's own, or L{None}.
    @ivar codes: the HTTP statuses that pass, as inclusive C{(start, end)} ranges.
    """

    protocol: str = "TCP"
    timeout: float = 1.0
    interval: float = 5.0
    intervalJitter: float = 0.0
    initialDelay: float = 0.0
    healthyThreshold: int = 1
    unhealthyThreshold: int = 3
    path: str = "/"
    method: str = "GET"
    host: str | None = None
    port: int | None = None
    codes: tuple[tuple[int, int], ...] = ((200, 299),)


@attrs.frozen
class OutlierDetectionConfig:
    """
    Passive outlier ejection (Envoy's C{outlier_detection}, a meshproxy extension; on by default).

    @ivar consecutiveFailures: consecutive connect failures, resets, timeouts or 502/503/504 answers that
        eject a host; 0 turns ejection off.
    @ivar baseEjectionTime: seconds of the first ejection; the n-th lasts n times as long.
    @ivar maxEjectionTime: the cap on one ejection's length.
    @ivar maxEjectionPercent: at most this share of the cluster's hosts is ejected at once, but always at
        least one host may be, and never the last healthy one.
    """

    consecutiveFailures: int = 5
    baseEjectionTime: float = 30.0
    maxEjectionTime: float = 300.0
    maxEjectionPercent: int = 10


@attrs.frozen
class LBConfig:
    """
    Load-balancer tuning (MOSN's C{lbconfig}).

    @ivar choiceCount: hosts sampled per pick by C{LB_LEAST_REQUEST}.
    @ivar activeRequestBias: how strongly C{LB_LEAST_REQUEST} with unequal weights avoids busy hosts
        (Envoy's C{active_request_bias}).
    """

    choiceCount: int = 2
    activeRequestBias: float = 1.0


@attrs.frozen
class SubsetConfig:
    """
    Subset load balancing (MOSN's C{lb_subset_config}): a route's C{metadata_match} picks the hosts whose
    metadata carries every one of its labels, when its keys are one of the C{selectors}.

    @ivar fallbackPolicy: what a request gets when its subset is empty or it names none:
        C{"NO_FALLBACK"} (503), C{"ANY_ENDPOINT"} (every host) or C{"DEFAULT_SUBSET"}.
    @ivar defaultSubset: the labels of the default subset, sorted C{(key, value)} pairs.
    @ivar selectors: the key sets a subset may be selected by, each sorted.
    """

    fallbackPolicy: str = "NO_FALLBACK"
    defaultSubset: tuple[tuple[str, str], ...] = ()
    selectors: tuple[tuple[str, ...], ...] = ()


@attrs.frozen
class ClusterConfig:
    """
    A named set of upstream hosts with a load balancer.

    @ivar type: C{"SIMPLE"} or C{"STATIC"} (the same: a fixed list of IP addresses), or C{"STRICT_DNS"}
        (host names resolved every C{dnsRefreshRate} seconds; every address answered is a host).
    @ivar lbType: a MOSN C{lb_type}.
    @ivar idleTimeout: seconds an idle upstream connection is kept, or L{None}: no limit.
    @ivar healthCheck: active health checking, or L{None}.
    @ivar outlierDetection: passive ejection; L{None} turns it off.
    @ivar subsets: subset load balancing, or L{None}.
    @ivar tls: TLS to the upstream hosts, or L{None} for plaintext.
    @ivar dnsLookupFamily: for C{STRICT_DNS}: C{"ALL"}, C{"V4_ONLY"} or C{"V6_ONLY"}.
    """

    name: str
    hosts: tuple[HostConfig, ...]
    type: str = "SIMPLE"
    lbType: str = "LB_ROUNDROBIN"
    connectTimeout: float = DEFAULT_CONNECT_TIMEOUT
    connBufferLimitBytes: int = DEFAULT_CONN_BUFFER_LIMIT_BYTES
    maxRequestPerConn: int = DEFAULT_MAX_REQUEST_PER_CONN
    idleTimeout: float | None = None
    circuitBreakers: CircuitBreakersConfig = CircuitBreakersConfig()
    #: meshproxy extension: seconds a request may wait for a pooled connection (then 503).
    queueTimeout: float = 5.0
    healthCheck: HealthCheckConfig | None = None
    outlierDetection: OutlierDetectionConfig | None = OutlierDetectionConfig()
    lbConfig: LBConfig = LBConfig()
    subsets: SubsetConfig | None = None
    tls: TLSContextConfig | None = None
    dnsRefreshRate: float = DEFAULT_DNS_REFRESH_RATE
    dnsLookupFamily: str = "ALL"
    #: meshproxy extension (Envoy's C{healthy_panic_threshold}): below this percentage of healthy hosts,
    #: balance over all hosts rather than overload the few left; 0 turns panic mode off.
    healthyPanicThreshold: int = 50
