"""
L{meshproxy.proxy.deadline.Deadline}: one lazily moved timer per connection.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.proxy.deadline import Deadline


class DeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: list[str] = []
        self.deadline = Deadline(self.clock, self.expired.append)

    def times(self) -> list[float]:
        return [call.getTime() for call in self.clock.getDelayedCalls()]

    def test_expires(self) -> None:
        """
        The kind armed last expires at its time, once.
        """
        self.deadline.arm(10, "header")
        self.clock.advance(9.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["header"])
        self.clock.advance(100)
        self.assertEqual(self.expired, ["header"])

    def test_laterDoesNotReschedule(self) -> None:
        """
        A later deadline leaves the scheduled call alone; it fires early, re-arms for the rest, and
        the kind expires exactly when it should.
        """
        self.deadline.arm(15, "response")
        self.clock.advance(1)
        self.deadline.arm(60, "idle")
        self.assertEqual(self.times(), [15.0])
        self.clock.advance(14)
        self.assertEqual((self.expired, self.times()), ([], [61.0]))
        self.clock.advance(46)
        self.assertEqual(self.expired, ["idle"])

    def test_soonerReschedules(self) -> None:
        """
        A deadline sooner than the scheduled call replaces it.
        """
        self.deadline.arm(60, "idle")
        self.deadline.expect("wait", 3600)
        self.deadline.arm(10, "header")
        self.assertEqual(self.times(), [10.0])
        self.clock.advance(10)
        self.assertEqual(self.expired, ["header"])

    def test_manyRequestsOneCall(self) -> None:
        """
        Keep-alive traffic (response deadline, then idle, over and over) never adds calls: one is
        pending throughout, and nothing expires while the connection is busy.
        """
        for _ in range(100):
            self.deadline.arm(15, "response")
            self.clock.advance(0.5)
            self.deadline.arm(60, "idle")
            self.clock.advance(0.5)
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.expired, [])

    def test_cancel(self) -> None:
        """
        A cancelled deadline never expires; arming again works.
        """
        self.deadline.arm(5, "header")
        self.deadline.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.deadline.expect("body", 12)
        self.clock.advance(2)
        self.assertEqual(self.expired, ["body"])
