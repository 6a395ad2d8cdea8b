"""
Tests for L{meshproxy.cluster.lb}.
"""

from __future__ import annotations

import random
from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.cluster.lb import RoundRobin, WeightedRandom, balancerFor


class FakeHost:
    def __init__(self, name: str, weight: int = 1, healthy: bool = True) -> None:
        self.name = name
        self.weight = weight
        self.healthy = healthy

    def __repr__(self) -> str:
        return self.name


class RoundRobinTests(SynchronousTestCase):
    """
    Smooth weighted round robin.
    """

    def test_equalWeightsRotate(self) -> None:
        """
        Equal weights give a plain rotation in host order.
        """
        hosts = [FakeHost("a"), FakeHost("b"), FakeHost("c")]
        rr = RoundRobin()
        self.assertEqual([rr.pick(hosts).name for _ in range(7)], list("abcabca"))  # type: ignore[union-attr]

    def test_skipsUnhealthyAndExcluded(self) -> None:
        """
        Unhealthy and excluded hosts are never picked; none eligible gives None.
        """
        a, b, c = FakeHost("a"), FakeHost("b", healthy=False), FakeHost("c")
        rr = RoundRobin()
        self.assertEqual([rr.pick([a, b, c]) for _ in range(4)], [a, c, a, c])
        self.assertIs(rr.pick([a, b, c], exclude=[a]), c)
        self.assertIsNone(rr.pick([a, b, c], exclude=[a, c]))
        self.assertIsNone(rr.pick([]))

    def test_weightedIsSmooth(self) -> None:
        """
        Weights 5:1:1 give nginx's interleaved sequence, and exact proportions per window.
        """
        a, b, c = FakeHost("a", 5), FakeHost("b", 1), FakeHost("c", 1)
        rr = RoundRobin()
        picks = [rr.pick([a, b, c]).name for _ in range(7)]  # type: ignore[union-attr]
        self.assertEqual("".join(picks), "aabacaa")
        counts = Counter(rr.pick([a, b, c]).name for _ in range(700))  # type: ignore[union-attr]
        self.assertEqual(counts, {"a": 500, "b": 100, "c": 100})

    def test_weightedSkipsUnhealthy(self) -> None:
        """
        An unhealthy weighted host takes no share.
        """
        a, b = FakeHost("a", 3), FakeHost("b", 1, healthy=False)
        rr = RoundRobin()
        self.assertEqual({rr.pick([a, b]).name for _ in range(10)}, {"a"})  # type: ignore[union-attr]


class WeightedRandomTests(SynchronousTestCase):
    """
    Weighted random choice.
    """

    def test_distributionFollowsWeights(self) -> None:
        """
        Over many picks each host's share is close to its weight's share.
        """
        a, b = FakeHost("a", 3), FakeHost("b", 1)
        lb = WeightedRandom(random.Random(7))
        counts = Counter(lb.pick([a, b]).name for _ in range(4000))  # type: ignore[union-attr]
        share = counts["a"] / 4000
        self.assertTrue(0.72 < share < 0.78, share)

    def test_eligibility(self) -> None:
        """
        Only healthy, non-excluded hosts are picked; none eligible gives None.
        """
        a, b = FakeHost("a"), FakeHost("b", healthy=False)
        lb = WeightedRandom(random.Random(1))
        self.assertEqual({lb.pick([a, b]) for _ in range(20)}, {a})
        self.assertIsNone(lb.pick([a, b], exclude=[a]))


class BalancerForTests(SynchronousTestCase):
    """
    Mapping MOSN lb_type names to balancers.
    """

    def test_names(self) -> None:
        """
        LB_ROUNDROBIN and LB_RANDOM are known; others raise.
        """
        self.assertIsInstance(balancerFor("LB_ROUNDROBIN"), RoundRobin)
        self.assertIsInstance(balancerFor("LB_RANDOM"), WeightedRandom)
        self.assertRaises(ValueError, balancerFor, "LB_MAGLEV")
