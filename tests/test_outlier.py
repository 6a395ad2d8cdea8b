"""
Tests for L{meshproxy.cluster.outlier}: ejection, its limits, its length and decay, on a fake clock.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.cluster.outlier import OutlierDetector
from meshproxy.config.clustermodel import OutlierDetectionConfig
from meshproxy.stats import StatsStore


class FakeHost:
    """
    A host: only its identity (and address, for logs) matters.
    """

    def __init__(self, address: str) -> None:
        self.address = address

    def __repr__(self) -> str:
        return f"<FakeHost {self.address}>"


class DetectorTestCase(SynchronousTestCase):
    """
    A detector on a L{Clock} over C{hostCount} hosts whose healthy count follows the ejections.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.stats = StatsStore()
        self.changes: list[tuple[Any, bool, str]] = []
        self.hostCount = 10
        self.unhealthy = 0  # hosts failing active checks
        self.ejected: set[Any] = set()

    def detector(self, **config: Any) -> OutlierDetector:
        def onChange(host: Any, ejected: bool, reason: str) -> None:
            self.changes.append((host, ejected, reason))
            (self.ejected.add if ejected else self.ejected.discard)(host)

        return OutlierDetector(
            "backend",
            OutlierDetectionConfig(**config),
            self.clock,
            onChange,
            self.stats,
            hostCount=lambda: self.hostCount,
            healthyCount=lambda: self.hostCount - self.unhealthy - len(self.ejected),
        )

    def fail(self, detector: OutlierDetector, host: Any, times: int, reason: str = "status_5xx") -> None:
        for _ in range(times):
            detector.failure(host, reason)

    def value(self, name: str) -> int:
        return self.stats.value(name, cluster="backend")


class EjectionTests(DetectorTestCase):
    """
    Consecutive failures eject; success resets; the host comes back on time or on an active pass.
    """

    def test_ejectAtThreshold(self) -> None:
        """
        The C{consecutiveFailures}-th failure in a row ejects the host for C{baseEjectionTime}.
        """
        host = FakeHost("a")
        detector = self.detector(consecutiveFailures=5)
        self.fail(detector, host, 4, "connect_failure")
        self.assertEqual(self.changes, [])
        self.assertEqual(detector.state(host)["consecutiveFailures"], 4)
        self.clock.advance(7.0)
        detector.failure(host, "reset")
        self.assertEqual(self.changes, [(host, True, "reset")])
        state = detector.state(host)
        self.assertEqual(json.loads(json.dumps(state)), state)
        self.assertEqual(
            state,
            {"ejected": True, "ejectedUntil": 37.0, "ejections": 1, "timesEjected": 1,
             "consecutiveFailures": 0, "lastReason": "reset"},
        )
        self.assertTrue(detector.isEjected(host))
        self.assertEqual(self.value("upstream_outlier_ejections_total"), 1)
        self.assertEqual(self.value("upstream_outlier_ejections_active"), 1)

    def test_successResets(self) -> None:
        """
        A success between failures starts the count again.
        """
        host = FakeHost("a")
        detector = self.detector(consecutiveFailures=3)
        self.fail(detector, host, 2)
        detector.success(host)
        self.fail(detector, host, 2)
        self.assertEqual(self.changes, [])
        detector.failure(host, "timeout")
        self.assertEqual(self.changes, [(host, True, "timeout")])

    def test_successOfUnknownHost(self) -> None:
        """
        Success of a host that never failed records nothing.
        """
        host = FakeHost("a")
        detector = self.detector()
        detector.success(host)
        self.assertEqual(detector.state(host)["consecutiveFailures"], 0)
        self.assertFalse(detector.isEjected(host))

    def test_unejectOnTime(self) -> None:
        """
        The host comes back when its ejection time is up, with a fresh count.
        """
        host = FakeHost("a")
        detector = self.detector(consecutiveFailures=2, baseEjectionTime=30.0)
        self.fail(detector, host, 2)
        self.clock.advance(29.999)
        self.assertTrue(detector.isEjected(host))
        self.clock.advance(0.001)
        self.assertEqual(self.changes[1:], [(host, False, "ejection_time_elapsed")])
        self.assertFalse(detector.isEjected(host))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.value("upstream_outlier_ejections_active"), 0)
        detector.failure(host, "reset")
        self.assertFalse(detector.isEjected(host))

    def test_unejectOnActivePass(self) -> None:
        """
        A passing active check brings an ejected host back at once and cancels its timer; for a
        host that is not ejected it changes nothing.
        """
        a, b = FakeHost("a"), FakeHost("b")
        detector = self.detector(consecutiveFailures=1)
        detector.failure(a, "reset")
        detector.activeCheckPassed(b)
        detector.activeCheckPassed(a)
        self.assertEqual(self.changes, [(a, True, "reset"), (a, False, "active_check_passed")])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.value("upstream_outlier_ejections_active"), 0)
        detector.activeCheckPassed(a)
        self.assertEqual(len(self.changes), 2)

    def test_failuresWhileEjectedIgnored(self) -> None:
        """
        Failures of requests still in flight to an ejected host do not count toward the next one.
        """
        host = FakeHost("a")
        detector = self.detector(consecutiveFailures=2)
        self.fail(detector, host, 2)
        self.fail(detector, host, 5)
        self.assertEqual(detector.state(host)["consecutiveFailures"], 0)
        self.assertEqual(self.value("upstream_outlier_ejections_total"), 1)

    def test_disabled(self) -> None:
        """
        C{consecutiveFailures} 0 turns ejection off.
        """
        host = FakeHost("a")
        detector = self.detector(consecutiveFailures=0)
        self.fail(detector, host, 100)
        self.assertEqual(self.changes, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.value("upstream_outlier_ejections_overflow_total"), 0)

    def test_callbackErrorContained(self) -> None:
        """
        An exception in C{onChange} is logged and the books stay right.
        """
        def boom(host: Any, ejected: bool, reason: str) -> None:
            raise RuntimeError("boom")

        detector = OutlierDetector(
            "backend", OutlierDetectionConfig(consecutiveFailures=1), self.clock, boom, self.stats,
            hostCount=lambda: 10, healthyCount=lambda: 10,
        )
        host = FakeHost("a")
        detector.failure(host, "reset")
        self.assertTrue(detector.isEjected(host))
        self.clock.advance(30.0)
        self.assertFalse(detector.isEjected(host))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class DurationTests(DetectorTestCase):
    """
    How long ejections last, and how the multiplier decays.
    """

    def ejectAndTime(self, detector: OutlierDetector, host: Any) -> float:
        """
        Eject C{host} now and return how long the ejection lasts.
        """
        self.fail(detector, host, 1)
        state = detector.state(host)
        self.assertTrue(state["ejected"])
        duration = state["ejectedUntil"] - self.clock.seconds()
        self.clock.advance(duration)
        self.assertFalse(detector.isEjected(host))
        return duration

    def test_durationsGrowAndCap(self) -> None:
        """
        The n-th ejection in a row lasts C{base * n}, capped at C{maxEjectionTime}.
        """
        host = FakeHost("a")
        detector = self.detector(consecutiveFailures=1, baseEjectionTime=30.0, maxEjectionTime=300.0)
        durations = [self.ejectAndTime(detector, host) for _ in range(13)]
        self.assertEqual(durations, [30.0 * n for n in range(1, 11)] + [300.0] * 3)
        self.assertEqual(detector.state(host)["timesEjected"], 13)
        self.assertEqual(detector.state(host)["ejections"], 10)  # the multiplier stops at the cap

    def test_capNotMultiple(self) -> None:
        """
        A cap that is not a multiple of the base cuts the last step short.
        """
        host = FakeHost("a")
        detector = self.detector(consecutiveFailures=1, baseEjectionTime=10.0, maxEjectionTime=25.0)
        self.assertEqual([self.ejectAndTime(detector, host) for _ in range(4)], [10.0, 20.0, 25.0, 25.0])

    def test_decay(self) -> None:
        """
        The multiplier drops by one for every whole C{maxEjectionTime} spent un-ejected.
        """
        host = FakeHost("a")
        detector = self.detector(consecutiveFailures=1, baseEjectionTime=30.0, maxEjectionTime=300.0)
        self.assertEqual([self.ejectAndTime(detector, host) for _ in range(3)], [30.0, 60.0, 90.0])
        self.clock.advance(299.0)
        self.assertEqual(detector.state(host)["ejections"], 3)
        self.clock.advance(1.0)
        self.assertEqual(detector.state(host)["ejections"], 2)
        self.assertEqual(self.ejectAndTime(detector, host), 90.0)  # 2 + 1
        self.clock.advance(600.0)
        self.assertEqual(self.ejectAndTime(detector, host), 60.0)  # 3 - 2 + 1
        self.clock.advance(3000.0)
        self.assertEqual(detector.state(host)["ejections"], 0)
        self.assertEqual(self.ejectAndTime(detector, host), 30.0)

    def test_noDecayWhileEjected(self) -> None:
        """
        Time spent ejected does not count toward decay.
        """
        host = FakeHost("a")
        detector = self.detector(consecutiveFailures=1, baseEjectionTime=100.0, maxEjectionTime=300.0)
        self.assertEqual([self.ejectAndTime(detector, host) for _ in range(2)], [100.0, 200.0])
        # 299s since the un-ejection, 499s since the ejection began: no decay step yet.
        self.clock.advance(299.0)
        self.assertEqual(self.ejectAndTime(detector, host), 300.0)


class LimitTests(DetectorTestCase):
    """
    Ejection limits: a share of the hosts, at least one, never the last healthy host.
    """

    def test_maxEjectionPercent(self) -> None:
        """
        With 20 hosts and 10%, two may be ejected; the third is counted as overflow and keeps
        counting failures, and is ejected on its next failure once a slot frees up.
        """
        self.hostCount = 20
        a, b, c = FakeHost("a"), FakeHost("b"), FakeHost("c")
        detector = self.detector(consecutiveFailures=3, maxEjectionPercent=10)
        self.assertEqual(detector.ejectionLimit(), 2)
        self.fail(detector, a, 3)
        self.clock.advance(1.0)
        self.fail(detector, b, 3)
        self.fail(detector, c, 4)
        self.assertEqual(self.ejected, {a, b})
        self.assertEqual(self.value("upstream_outlier_ejections_overflow_total"), 2)
        self.assertEqual(detector.state(c)["consecutiveFailures"], 4)
        self.clock.advance(29.0)  # a comes back
        self.assertEqual(self.ejected, {b})
        detector.failure(c, "reset")
        self.assertEqual(self.ejected, {b, c})
        self.assertEqual(self.value("upstream_outlier_ejections_active"), 2)

    def test_atLeastOne(self) -> None:
        """
        A share below one host still allows one ejection, and no more.
        """
        self.hostCount = 3
        a, b = FakeHost("a"), FakeHost("b")
        detector = self.detector(consecutiveFailures=1, maxEjectionPercent=10)
        self.assertEqual(detector.ejectionLimit(), 1)
        detector.failure(a, "reset")
        detector.failure(b, "reset")
        self.assertEqual(self.ejected, {a})
        self.assertEqual(self.value("upstream_outlier_ejections_overflow_total"), 1)

    def test_neverLastHealthyHost(self) -> None:
        """
        The last healthy host is never ejected, even within the share.
        """
        self.hostCount = 2
        self.unhealthy = 1
        host = FakeHost("a")
        detector = self.detector(consecutiveFailures=1, maxEjectionPercent=100)
        self.fail(detector, host, 3)
        self.assertEqual(self.changes, [])
        self.assertEqual(self.value("upstream_outlier_ejections_overflow_total"), 3)
        self.unhealthy = 0
        detector.failure(host, "reset")
        self.assertEqual(self.ejected, {host})


class LifecycleTests(DetectorTestCase):
    """
    Hosts that leave, and stopping.
    """

    def test_forget(self) -> None:
        """
        A forgotten ejected host loses its timer and its place in the count, without C{onChange}.
        """
        self.hostCount = 3
        a, b = FakeHost("a"), FakeHost("b")
        detector = self.detector(consecutiveFailures=1)
        detector.failure(a, "reset")
        detector.forget(a)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.value("upstream_outlier_ejections_active"), 0)
        self.assertEqual(detector.state(a)["timesEjected"], 0)
        self.assertEqual(len(self.changes), 1)
        detector.failure(b, "reset")  # a's slot is free again
        self.assertTrue(detector.isEjected(b))
        detector.forget(FakeHost("never seen"))

    def test_stop(self) -> None:
        """
        C{stop} cancels every timer, releases the gauge and ignores later reports.
        """
        a, b = FakeHost("a"), FakeHost("b")
        detector = self.detector(consecutiveFailures=1, maxEjectionPercent=50)
        detector.failure(a, "reset")
        detector.failure(b, "reset")
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        detector.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.value("upstream_outlier_ejections_active"), 0)
        detector.failure(FakeHost("c"), "reset")
        detector.activeCheckPassed(a)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.changes), 2)
        self.assertEqual(self.value("upstream_outlier_ejections_active"), 0)
