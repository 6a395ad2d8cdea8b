"""
Reading a cluster's C{health_check} (MOSN), C{outlier_detection} (a meshproxy extension with Envoy's
names) and C{lbconfig} (MOSN).

Unlike MOSN, a C{health_check} without C{service_name} still checks: the name is accepted and unused.
"""

from __future__ import annotations

from typing import Any

from meshproxy.config.clustermodel import HealthCheckConfig, LBConfig, OutlierDetectionConfig
from meshproxy.config.jsonvalues import describe, expectInteger
from meshproxy.config.reader import Fields, KeySpec, iterObjects, objectPairs, tolerateEmpty, tolerateValues

HEALTH_CHECK_KEYS = KeySpec(
    known=(
        "protocol",
        "timeout",
        "interval",
        "interval_jitter",
        "initial_delay_seconds",
        "healthy_threshold",
        "unhealthy_threshold",
        "service_name",
        "check_config",
    ),
    unsupported={"event_log_path": tolerateValues(""), "common_callbacks": tolerateEmpty()},
)
CHECK_CONFIG_KEYS = KeySpec(known=("http_check_config",))
HTTP_CHECK_KEYS = KeySpec(known=("port", "timeout", "path", "method", "scheme", "domain", "codes"))
CODE_RANGE_KEYS = KeySpec(known=("Start", "End"))
OUTLIER_KEYS = KeySpec(
    known=("consecutive_failures", "base_ejection_time", "max_ejection_time", "max_ejection_percent")
)
LB_CONFIG_KEYS = KeySpec(
    known=("choice_count", "active_request_bias"),
    unsupported={"client_error_bias": None, "server_error_bias": None},
)
HTTP_CHECK_PROTOCOLS = ("Http1", "TCP")
HTTP_METHODS = ("GET", "HEAD", "OPTIONS", "POST")


def parseHealthCheck(fields: Fields) -> HealthCheckConfig | None:
    """
    A cluster's C{health_check}: L{None} when absent or empty.
    """
    value = fields.raw("health_check")
    pairs = objectPairs(value)
    if value is None or pairs == []:
        return None
    check = fields.object("health_check", HEALTH_CHECK_KEYS)
    if check is None:
        return None
    default = HealthCheckConfig()
    protocol = check.raw("protocol", "TCP")
    if isinstance(protocol, str) and protocol.lower() in ("http1", "http"):
        protocol = "Http1"
    elif isinstance(protocol, str) and protocol.lower() == "tcp":
        protocol = "TCP"
    else:
        check.problem("protocol", f"{describe(protocol)} is not a health check protocol: expected 'Http1' or 'TCP'")
        protocol = "TCP"
    check.string("service_name")
    timeout = check.duration("timeout", default.timeout, positive=True) or default.timeout
    interval = check.duration("interval", default.interval, positive=True) or default.interval
    result = HealthCheckConfig(
        protocol=protocol,
        timeout=timeout,
        interval=interval,
        intervalJitter=check.duration("interval_jitter", 0.0) or 0.0,
        initialDelay=check.duration("initial_delay_seconds", 0.0) or 0.0,
        healthyThreshold=check.integer("healthy_threshold", default.healthyThreshold, 1, 1000),
        unhealthyThreshold=check.integer("unhealthy_threshold", default.unhealthyThreshold, 1, 1000),
    )
    config = check.object("check_config", CHECK_CONFIG_KEYS)
    http = config.object("http_check_config", HTTP_CHECK_KEYS) if config is not None else None
    if http is None:
        return result
    if protocol != "Http1":
        http.problems.add(http.path, "an HTTP check configuration needs 'protocol': 'Http1'")
    scheme = http.string("scheme", "http")
    if scheme.lower() != "http":
        http.problem("scheme", f"{describe(scheme)} is not supported: expected 'http' (HTTPS checks are not supported)")
    path = http.string("path", "/")
    if not path.startswith("/"):
        http.problem("path", f"{describe(path)} is not a path: expected a path starting with '/'")
        path = "/"
    method = http.choice("method", "GET", HTTP_METHODS, what="health check method")
    port = http.integer("port", 0, 0, 65535) or None
    return HealthCheckConfig(
        protocol=result.protocol,
        timeout=http.duration("timeout", result.timeout, positive=True) or result.timeout,
        interval=result.interval,
        intervalJitter=result.intervalJitter,
        initialDelay=result.initialDelay,
        healthyThreshold=result.healthyThreshold,
        unhealthyThreshold=result.unhealthyThreshold,
        path=path,
        method=method,
        host=http.optionalString("domain") or None,
        port=port,
        codes=_codes(http) or default.codes,
    )


def _codes(http: Fields) -> tuple[tuple[int, int], ...]:
    codes = []
    for path, code in iterObjects(http.items("codes"), http.problems, CODE_RANGE_KEYS):
        start = expectInteger(code.raw("Start"), code.pathOf("Start"), code.problems, 100, 599)
        end = code.raw("End")
        # MOSN's range is [Start, End): an End of 0 or absent means "just Start".
        last = start
        if end not in (None, 0):
            stop = expectInteger(end, code.pathOf("End"), code.problems, 101, 600)
            if stop is not None and start is not None:
                if stop <= start:
                    code.problem("End", f"{stop} is not above Start {start}: expected End > Start (End is exclusive)")
                last = stop - 1
        if start is not None and last is not None:
            codes.append((start, last))
    return tuple(codes)


def parseOutlierDetection(fields: Fields) -> OutlierDetectionConfig | None:
    """
    A cluster's C{outlier_detection}: on with the defaults when absent; C{consecutive_failures: 0} turns it off.
    """
    default = OutlierDetectionConfig()
    outlier = fields.object("outlier_detection", OUTLIER_KEYS)
    if outlier is None:
        return default
    base = outlier.duration("base_ejection_time", default.baseEjectionTime, positive=True) or default.baseEjectionTime
    most = outlier.duration("max_ejection_time", max(base, default.maxEjectionTime), positive=True)
    if most is not None and most < base:
        outlier.problem("max_ejection_time", f"{most:g}s is below base_ejection_time {base:g}s: expected at least that")
    config = OutlierDetectionConfig(
        consecutiveFailures=outlier.integer("consecutive_failures", default.consecutiveFailures, 0, 1000),
        baseEjectionTime=base,
        maxEjectionTime=most or default.maxEjectionTime,
        maxEjectionPercent=outlier.integer("max_ejection_percent", default.maxEjectionPercent, 0, 100),
    )
    return config if config.consecutiveFailures else None


def parseLBConfig(fields: Fields) -> LBConfig:
    """
    A cluster's C{lbconfig}: the C{LB_LEAST_REQUEST} tuning.
    """
    value: Any = fields.raw("lbconfig")
    if value is None or objectPairs(value) == []:
        return LBConfig()
    lb = fields.object("lbconfig", LB_CONFIG_KEYS)
    if lb is None:
        return LBConfig()
    bias = lb.raw("active_request_bias", 1.0)
    if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not 0 <= bias <= 10:
        lb.problem("active_request_bias", f"{describe(bias)} is not a bias: expected a number from 0 to 10")
        bias = 1.0
    return LBConfig(choiceCount=lb.integer("choice_count", 2, 2, 100), activeRequestBias=float(bias))
