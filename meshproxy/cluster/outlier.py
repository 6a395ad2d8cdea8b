"""
Passive outlier detection: hosts that fail C{consecutiveFailures} requests in a row (connect
failures, resets, timeouts, 502/503/504) are ejected from load balancing for a while.

The proxies report every request's outcome, so L{OutlierDetector.success} is an attribute write
and nothing else; everything else (ejections, timers) happens on the rare failure path.

Ejection lengths and their decay (what is implemented, exactly):

  - The n-th ejection of a host lasts C{min(baseEjectionTime * n, maxEjectionTime)} seconds, where n
    is the host's ejection multiplier after this ejection is counted.
  - The multiplier goes up by one per ejection, but stops growing at C{ceil(maxEjectionTime /
    baseEjectionTime)}: past that the length is capped anyway, and a bounded multiplier makes the
    decay below meaningful.
  - The multiplier goes down by one for every whole C{maxEjectionTime} the host has spent
    un-ejected since its last un-ejection (never below zero). It is computed when the host is next
    ejected (and for L{OutlierDetector.state}), so no timer runs for it. Envoy decrements once per
    detection interval while the host stays healthy; without an interval timer this is the same
    rule with C{maxEjectionTime} as the step.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from meshproxy.config.clustermodel import OutlierDetectionConfig
from meshproxy.stats import StatsStore

#: The failure reasons the proxies report.
FAILURE_REASONS = ("connect_failure", "reset", "timeout", "status_5xx")


class _HostRecord:
    """
    The detector's view of one host that has failed at least once.

    States: I{counting} (C{ejected} false; C{consecutiveFailures} grows with each failure and
    resets on success) and I{ejected} (until C{ejectedUntil}, with C{timer} set; failures of
    requests still in flight are ignored).
    """

    __slots__ = (
        "host",
        "consecutiveFailures",
        "ejected",
        "ejectedUntil",
        "multiplier",
        "timesEjected",
        "unejectedAt",
        "timer",
        "lastReason",
    )

    def __init__(self, host: object) -> None:
        self.host = host
        self.consecutiveFailures = 0
        self.ejected = False
        self.ejectedUntil: float | None = None
        self.multiplier = 0
        self.timesEjected = 0
        self.unejectedAt: float | None = None
        self.timer: IDelayedCall | None = None
        self.lastReason: str | None = None


class OutlierDetector:
    """
    Ejects the hosts of one cluster that fail consecutively, within the cluster's limits.

    Hosts are tracked by identity (they are dictionary keys: the cluster's C{UpstreamHost} hashes
    by identity). A host is only recorded once it fails.
    """

    log = Logger()

    def __init__(
        self,
        clusterName: str,
        config: OutlierDetectionConfig,
        clock: IReactorTime,
        onChange: Callable[[Any, bool, str], object],
        stats: StatsStore,
        hostCount: Callable[[], int],
        healthyCount: Callable[[], int],
    ) -> None:
        """
        @param onChange: called as C{onChange(host, ejected, reason)} on every ejection and
            un-ejection.
        @param hostCount: how many hosts the cluster has now.
        @param healthyCount: how many of them are healthy now (neither ejected nor failing active
            health checks).
        """
        self.clusterName = clusterName
        self.config = config
        self._clock = clock
        self._onChange = onChange
        self._hostCount = hostCount
        self._healthyCount = healthyCount
        self._threshold = config.consecutiveFailures
        self._maxMultiplier = max(1, math.ceil(config.maxEjectionTime / config.baseEjectionTime))
        self._decayStep = max(config.maxEjectionTime, config.baseEjectionTime)
        self._records: dict[object, _HostRecord] = {}
        self._ejectedNow = 0
        labels = {"cluster": clusterName}
        self.ejectionsCounter = stats.counter(
            "upstream_outlier_ejections_total", "Hosts ejected by outlier detection.", **labels
        )
        self.ejectionsActive = stats.gauge(
            "upstream_outlier_ejections_active", "Hosts ejected by outlier detection now.", **labels
        )
        self.overflowCounter = stats.counter(
            "upstream_outlier_ejections_overflow_total",
            "Ejections not made because of max_ejection_percent or the last healthy host.",
            **labels,
        )

    # -- the proxies' reports ----------------------------------------------------------------------

    def success(self, host: object) -> None:
        """
        A request to C{host} succeeded: its consecutive failures start again from zero.
        """
        record = self._records.get(host)
        if record is not None:
            record.consecutiveFailures = 0

    def failure(self, host: object, reason: str) -> None:
        """
        A request to C{host} failed for C{reason} (one of L{FAILURE_REASONS}); the caller decides
        which statuses count. Ejects the host when it reaches the threshold, if the limits allow.
        """
        if not self._threshold:
            return
        record = self._records.get(host)
        if record is None:
            record = self._records[host] = _HostRecord(host)
        record.lastReason = reason
        if record.ejected:
            return
        record.consecutiveFailures += 1
        if record.consecutiveFailures >= self._threshold:
            self._eject(record, reason)

    def activeCheckPassed(self, host: object) -> None:
        """
        An active health check of C{host} passed: an ejected host comes back at once.
        """
        record = self._records.get(host)
        if record is not None and record.ejected:
            self._uneject(record, "active_check_passed")

    # -- lifecycle ---------------------------------------------------------------------------------

    def forget(self, host: object) -> None:
        """
        C{host} left the cluster: drop its record and its timer (no C{onChange}).
        """
        record = self._records.pop(host, None)
        if record is not None and record.ejected:
            self._release(record)

    def stop(self) -> None:
        """
        Cancel every timer, forget every host and stop ejecting: later reports are ignored. Hosts
        ejected now get no C{onChange}; the owner discards them or clears their ejection.
        """
        self._threshold = 0
        records, self._records = self._records, {}
        for record in records.values():
            if record.ejected:
                self._release(record)

    def state(self, host: object) -> dict[str, Any]:
        """
        A JSON-ready view of C{host} for the admin page: C{ejections} is the multiplier the next
        ejection's length is based on (after decay), C{timesEjected} the lifetime count.
        """
        record = self._records.get(host)
        if record is None:
            return {
                "ejected": False,
                "ejectedUntil": None,
                "ejections": 0,
                "timesEjected": 0,
                "consecutiveFailures": 0,
                "lastReason": None,
            }
        return {
            "ejected": record.ejected,
            "ejectedUntil": record.ejectedUntil,
            "ejections": self._decayed(record, self._clock.seconds()),
            "timesEjected": record.timesEjected,
            "consecutiveFailures": record.consecutiveFailures,
            "lastReason": record.lastReason,
        }

    def isEjected(self, host: object) -> bool:
        """
        Whether C{host} is ejected now.
        """
        record = self._records.get(host)
        return record is not None and record.ejected

    # -- ejection ----------------------------------------------------------------------------------

    def ejectionLimit(self) -> int:
        """
        How many hosts may be ejected at once: C{maxEjectionPercent} of the hosts, at least one.
        """
        return max(1, self._hostCount() * self.config.maxEjectionPercent // 100)

    def _decayed(self, record: _HostRecord, now: float) -> int:
        if record.ejected or record.unejectedAt is None or not record.multiplier:
            return record.multiplier
        steps = int((now - record.unejectedAt) // self._decayStep)
        return max(0, record.multiplier - steps)

    def _eject(self, record: _HostRecord, reason: str) -> None:
        if self._ejectedNow >= self.ejectionLimit() or self._healthyCount() <= 1:
            # Keep counting: the next failure tries again, once a slot frees up.
            self.overflowCounter.value += 1
            return
        now = self._clock.seconds()
        record.multiplier = min(self._decayed(record, now) + 1, self._maxMultiplier)
        record.timesEjected += 1
        duration = min(self.config.baseEjectionTime * record.multiplier, self.config.maxEjectionTime)
        record.ejected = True
        record.ejectedUntil = now + duration
        record.consecutiveFailures = 0
        record.timer = self._clock.callLater(duration, self._timeUp, record)
        self._ejectedNow += 1
        self.ejectionsActive.value += 1
        self.ejectionsCounter.value += 1
        self.log.warn(
            "outlier detection: {cluster} host {host} ejected for {duration}s ({reason}, ejection {n})",
            cluster=self.clusterName,
            host=getattr(record.host, "address", record.host),
            duration=duration,
            reason=reason,
            n=record.multiplier,
        )
        self._notify(record.host, True, reason)

    def _timeUp(self, record: _HostRecord) -> None:
        record.timer = None
        self._uneject(record, "ejection_time_elapsed")

    def _uneject(self, record: _HostRecord, reason: str) -> None:
        self._release(record)
        record.unejectedAt = self._clock.seconds()
        record.consecutiveFailures = 0
        self.log.info(
            "outlier detection: {cluster} host {host} back in load balancing ({reason})",
            cluster=self.clusterName,
            host=getattr(record.host, "address", record.host),
            reason=reason,
        )
        self._notify(record.host, False, reason)

    def _release(self, record: _HostRecord) -> None:
        """
        End C{record}'s ejection in the books: its timer, the active count and gauge.
        """
        timer, record.timer = record.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        record.ejected = False
        record.ejectedUntil = None
        self._ejectedNow -= 1
        self.ejectionsActive.value -= 1

    def _notify(self, host: object, ejected: bool, reason: str) -> None:
        try:
            self._onChange(host, ejected, reason)
        except Exception:
            self.log.failure("outlier detection callback failed for {host!r}", host=host)
