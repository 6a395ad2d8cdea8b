"""
The HTTP connection manager's settings (limits and deadlines) and its counters.
"""

from __future__ import annotations

from meshproxy.http import HTTPLimits
from meshproxy.stats import StatsStore


class HTTPSettings:
    """
    The connection manager's limits and timeouts (the architecture's defaults).
    """

    def __init__(
        self,
        limits: HTTPLimits = HTTPLimits(),
        headerTimeout: float = 10.0,
        idleTimeout: float = 60.0,
        bodyTimeout: float = 60.0,
        maxRequestsPerConnection: int = 1000,
        maxRequestBodyBytes: int = 0,
        bufferLimit: int = 65536,
        maxConnectRetries: int = 2,
        tunnelIdleTimeout: float | None = 3600.0,
    ) -> None:
        self.limits = limits
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.bodyTimeout = bodyTimeout
        self.maxRequestsPerConnection = maxRequestsPerConnection
        self.maxRequestBodyBytes = maxRequestBodyBytes
        self.bufferLimit = bufferLimit
        self.maxConnectRetries = maxConnectRetries
        self.tunnelIdleTimeout = tunnelIdleTimeout


class HTTPStats:
    """
    The HTTP filter's counters, shared by its connections.
    """

    def __init__(self, stats: StatsStore, listener: str) -> None:
        self._stats = stats
        self._listener = listener
        self.requests = stats.counter("http_downstream_rq_total", "HTTP requests received.", listener=listener)
        self.active = stats.gauge("http_downstream_rq_active", "HTTP requests in flight.", listener=listener)
        self.retries = stats.counter("http_upstream_rq_retry_total", "Requests retried upstream.", listener=listener)
        self._byClass = [
            stats.counter("http_downstream_rq_xx_total", "HTTP responses by status class.", listener=listener,
                          code_class=f"{n}xx")
            for n in range(1, 6)
        ]

        # Indexed by status (100..599 after parsing) so the per-response update is one lookup.
        self._byStatus = [self._byClass[min(max(code // 100, 1), 5) - 1] for code in range(600)]

    def responded(self, status: int) -> None:
        self._byStatus[status].value += 1

    def localReply(self, reason: str) -> None:
        self._stats.counter(
            "http_local_reply_total", "Responses meshproxy made itself, by reason.", listener=self._listener,
            reason=reason,
        ).inc()

    def rejected(self, reason: str) -> None:
        self._stats.counter(
            "http_downstream_rq_rejected_total", "Requests refused as malformed, by reason.",
            listener=self._listener, reason=reason,
        ).inc()
