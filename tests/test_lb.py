"""
Tests for L{meshproxy.cluster.lb}.
"""

from __future__ import annotations

import gc
import random
import weakref
from collections import Counter
from typing import Any, Sequence

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.cluster.lb import (
    IMPLEMENTED_LB_TYPES,
    LeastConnection,
    LeastRequest,
    Maglev,
    RoundRobin,
    WeightedRandom,
    balancerFor,
)
from meshproxy.config.clustermodel import LBConfig


class FakeHost:
    """
    A host as a balancer sees it.
    """

    def __init__(self, name: str, weight: int = 1, requests: int = 0, connections: int = 0) -> None:
        self.name = name
        self.address = f"{name}:80"
        self.weight = weight
        self.activeRequests = requests
        self.activeConnections = connections

    def __repr__(self) -> str:
        return self.name


class HostList(list):  # type: ignore[type-arg]
    """
    A list that can be weakly referenced, to see whether a balancer holds on to it.
    """


def names(balancer: Any, hosts: Sequence[FakeHost], count: int, **kw: Any) -> str:
    """
    The names of C{count} successive picks, as one string.
    """
    return "".join(balancer.pick(hosts, **kw).name for _ in range(count))


class RoundRobinTests(SynchronousTestCase):
    """
    Smooth weighted round robin over the candidates.
    """

    def test_equalWeightsRotate(self) -> None:
        """
        Equal weights give a plain rotation in host order.
        """
        hosts = [FakeHost("a"), FakeHost("b"), FakeHost("c")]
        self.assertEqual(names(RoundRobin(), hosts, 7), "abcabca")

    def test_skipsExcluded(self) -> None:
        """
        Excluded hosts are never picked and the rotation goes on after them; all excluded or no
        candidates at all gives None.
        """
        a, b, c = FakeHost("a"), FakeHost("b"), FakeHost("c")
        rr = RoundRobin()
        self.assertEqual(names(rr, [a, b, c], 4, exclude=[b]), "acac")
        self.assertIs(rr.pick([a, b, c], exclude=[a]), b)
        self.assertIsNone(rr.pick([a, b, c], exclude=[a, b, c]))
        self.assertIsNone(rr.pick([]))

    def test_healthIsNotItsBusiness(self) -> None:
        """
        A candidate is picked even if it carries a false C{healthy}: the cluster decides candidacy.
        """
        a, b = FakeHost("a"), FakeHost("b")
        b.healthy = False  # type: ignore[attr-defined]
        self.assertEqual(names(RoundRobin(), [a, b], 4), "abab")

    def test_weightedIsSmooth(self) -> None:
        """
        Weights 5:1:1 give nginx's interleaved sequence, and exact proportions in every window of
        sum(weights) picks.
        """
        hosts = [FakeHost("a", 5), FakeHost("b", 1), FakeHost("c", 1)]
        rr = RoundRobin()
        self.assertEqual(names(rr, hosts, 7), "aabacaa")
        for _ in range(100):
            self.assertEqual(Counter(names(rr, hosts, 7)), {"a": 5, "b": 1, "c": 1})

    def test_weightedSkipsExcluded(self) -> None:
        """
        An excluded weighted host takes no share; the others keep their proportions.
        """
        hosts = [FakeHost("a", 3), FakeHost("b", 1), FakeHost("c", 2)]
        rr = RoundRobin()
        counts = Counter(rr.pick(hosts, exclude=[hosts[0]]).name for _ in range(300))  # type: ignore[union-attr]
        self.assertEqual(counts, {"b": 100, "c": 200})
        self.assertIsNone(rr.pick(hosts, exclude=hosts))

    def test_newListIsSeen(self) -> None:
        """
        A different list, or the same list grown in place, is examined afresh: weights that are
        now unequal give a weighted sequence.
        """
        a, b, c = FakeHost("a"), FakeHost("b"), FakeHost("c", 5)
        hosts = [a, b]
        rr = RoundRobin()
        self.assertEqual(names(rr, hosts, 2), "ab")
        hosts.append(c)
        self.assertEqual(Counter(names(rr, hosts, 7)), {"a": 1, "b": 1, "c": 5})
        self.assertEqual(Counter(names(rr, [c, FakeHost("d", 2)], 7)), {"c": 5, "d": 2})

    def test_keepsTheListItCaches(self) -> None:
        """
        The balancer holds the list its cached facts describe, so that list's id cannot be reused
        by another list while the facts exist.
        """
        hosts = HostList([FakeHost("a", 2), FakeHost("b")])
        ref = weakref.ref(hosts)
        rr = RoundRobin()
        rr.pick(hosts)
        del hosts
        gc.collect()
        self.assertIsNotNone(ref())


class WeightedRandomTests(SynchronousTestCase):
    """
    Weighted random choice.
    """

    def test_distributionFollowsWeights(self) -> None:
        """
        Over many picks each host's share is close to its weight's share.
        """
        hosts = [FakeHost("a", 3), FakeHost("b", 1)]
        lb = WeightedRandom(random.Random(7))
        counts = Counter(names(lb, hosts, 4000))
        share = counts["a"] / 4000
        self.assertTrue(0.72 < share < 0.78, share)

    def test_equalWeightsUniform(self) -> None:
        """
        With equal weights every host gets about the same share.
        """
        hosts = [FakeHost(n) for n in "abcd"]
        counts = Counter(names(WeightedRandom(random.Random(3)), hosts, 4000))
        for name in "abcd":
            self.assertTrue(900 < counts[name] < 1100, counts)

    def test_exclusion(self) -> None:
        """
        Excluded hosts are never picked, the rest keep their relative weights; all excluded or no
        candidates gives None.
        """
        a, b, c = FakeHost("a", 5), FakeHost("b", 1), FakeHost("c", 1)
        lb = WeightedRandom(random.Random(1))
        counts = Counter(names(lb, [a, b, c], 2000, exclude=[a]))
        self.assertEqual(set(counts), {"b", "c"})
        self.assertTrue(900 < counts["b"] < 1100, counts)
        self.assertIs(lb.pick([a, b], exclude=[a]), b)
        self.assertIsNone(lb.pick([a, b], exclude=[a, b]))
        self.assertIsNone(lb.pick([]))


class LeastRequestTests(SynchronousTestCase):
    """
    The power of choices on active requests.
    """

    def test_neverTheBusiestOfThree(self) -> None:
        """
        With two distinct choices among three hosts, the strictly busiest is never picked, and the
        two idle ones share the picks.
        """
        idle1, idle2, busy = FakeHost("a"), FakeHost("b"), FakeHost("c", requests=10)
        lb = LeastRequest(random.Random(5))
        counts = Counter(names(lb, [idle1, busy, idle2], 3000))
        self.assertEqual(set(counts), {"a", "b"})
        self.assertTrue(1350 < counts["a"] < 1650, counts)

    def test_neverTheBusiestK(self) -> None:
        """
        With k choices, none of the k - 1 strictly busiest hosts is ever picked.
        """
        hosts = [FakeHost(n, requests=r) for n, r in zip("abcdef", [0, 1, 2, 3, 9, 8])]
        lb = LeastRequest(random.Random(2), choiceCount=3)
        counts = Counter(names(lb, hosts, 3000))
        self.assertEqual(set(counts), {"a", "b", "c", "d"})

    def test_prefersIdle(self) -> None:
        """
        Over many picks among hosts of different load, the least loaded gets the largest share
        and the busiest the smallest.
        """
        hosts = [FakeHost(n, requests=r) for n, r in zip("abcd", [0, 2, 4, 6])]
        counts = Counter(names(LeastRequest(random.Random(9)), hosts, 4000))
        self.assertTrue(counts["a"] > counts["b"] > counts["c"], counts)
        self.assertNotIn("d", counts)

    def test_allSampledIsGlobalMinimum(self) -> None:
        """
        When the choice count covers every candidate, the pick is always the least loaded.
        """
        hosts = [FakeHost(n, requests=r) for n, r in zip("abc", [3, 1, 2])]
        lb = LeastRequest(random.Random(4), choiceCount=5)
        self.assertEqual(names(lb, hosts, 50), "b" * 50)

    def test_oneChoiceIsRandom(self) -> None:
        """
        With one choice the load is not looked at: the busy host gets its random share.
        """
        hosts = [FakeHost("a"), FakeHost("b", requests=100)]
        counts = Counter(names(LeastRequest(random.Random(8), choiceCount=1), hosts, 2000))
        self.assertTrue(900 < counts["b"] < 1100, counts)

    def test_weightedEffectiveWeight(self) -> None:
        """
        With unequal weights the pick maximises weight / (active + 1) ** bias: an idle heavy host
        wins, a loaded one loses to an idle light one, and the bias sets how much load counts.
        """
        light, heavy = FakeHost("l", 1), FakeHost("h", 3)
        hosts = [light, heavy]
        self.assertEqual(names(LeastRequest(random.Random(1)), hosts, 20), "h" * 20)
        heavy.activeRequests = 5  # 3 / 6 < 1 / 1
        self.assertEqual(names(LeastRequest(random.Random(1)), hosts, 20), "l" * 20)
        heavy.activeRequests = 1  # 3 / 2 > 1, but 3 / 4 < 1 with bias 2
        self.assertEqual(names(LeastRequest(random.Random(1)), hosts, 20), "h" * 20)
        self.assertEqual(names(LeastRequest(random.Random(1), activeRequestBias=2.0), hosts, 20), "l" * 20)
        heavy.activeRequests = 50  # bias 0: load is ignored
        self.assertEqual(names(LeastRequest(random.Random(1), activeRequestBias=0.0), hosts, 20), "h" * 20)

    def test_tiesFollowSampleOrder(self) -> None:
        """
        Equally loaded hosts win about equally often: ties go to the earlier sampled host.
        """
        hosts = [FakeHost("a", 2, requests=1), FakeHost("b", 1, requests=0)]  # 2/2 == 1/1
        counts = Counter(names(LeastRequest(random.Random(6)), hosts, 2000))
        self.assertTrue(900 < counts["a"] < 1100, counts)

    def test_exclusion(self) -> None:
        """
        An excluded host is never picked even when idle; one eligible host is returned as is; all
        excluded or none gives None.
        """
        a, b, c = FakeHost("a"), FakeHost("b", requests=4), FakeHost("c", requests=5)
        lb = LeastRequest(random.Random(3))
        counts = Counter(names(lb, [a, b, c], 500, exclude={a}))
        self.assertEqual(counts, {"b": 500})
        self.assertIs(lb.pick([a, b, c], exclude=[a, b]), c)
        self.assertIsNone(lb.pick([a, b, c], exclude=[a, b, c]))
        self.assertIsNone(lb.pick([]))

    def test_badSettings(self) -> None:
        """
        A choice count below one or a negative bias is refused.
        """
        self.assertRaises(ValueError, LeastRequest, None, 0)
        self.assertRaises(ValueError, LeastRequest, None, 2, -1.0)


class LeastConnectionTests(SynchronousTestCase):
    """
    Fewest active connections, ties round robin.
    """

    def test_fewestWins(self) -> None:
        """
        The host with the fewest connections is picked, whatever its position.
        """
        hosts = [FakeHost(n, connections=c) for n, c in zip("abc", [3, 1, 2])]
        self.assertEqual(names(LeastConnection(), hosts, 5), "bbbbb")

    def test_tiesRotate(self) -> None:
        """
        Idle hosts take turns; a busy one between them is passed over.
        """
        self.assertEqual(names(LeastConnection(), [FakeHost(n) for n in "abc"], 7), "abcabca")
        hosts = [FakeHost("a"), FakeHost("b", connections=5), FakeHost("c")]
        self.assertEqual(names(LeastConnection(), hosts, 4), "acac")

    def test_loadSpreadsEvenly(self) -> None:
        """
        When every pick opens a connection, the connections end up even.
        """
        hosts = [FakeHost(n) for n in "abc"]
        lb = LeastConnection()
        for _ in range(30):
            lb.pick(hosts).activeConnections += 1  # type: ignore[union-attr]
        self.assertEqual([h.activeConnections for h in hosts], [10, 10, 10])

    def test_exclusion(self) -> None:
        """
        An excluded host is skipped even with the fewest connections; all excluded or none gives None.
        """
        a, b, c = FakeHost("a"), FakeHost("b", connections=2), FakeHost("c", connections=1)
        lb = LeastConnection()
        self.assertIs(lb.pick([a, b, c], exclude=[a]), c)
        self.assertIs(lb.pick([a, b, c], exclude=[a, c]), b)
        self.assertIsNone(lb.pick([a, b, c], exclude=[a, b, c]))
        self.assertIsNone(lb.pick([]))


class BalancerForTests(SynchronousTestCase):
    """
    Mapping MOSN lb_type names to balancers.
    """

    def test_names(self) -> None:
        """
        Every implemented name gives its balancer; others raise.
        """
        expected = {
            "LB_ROUNDROBIN": RoundRobin,
            "LB_WEIGHTED_ROUNDROBIN": RoundRobin,
            "LB_REQUEST_ROUNDROBIN": RoundRobin,
            "LB_RANDOM": WeightedRandom,
            "LB_LEAST_REQUEST": LeastRequest,
            "LB_LEAST_CONNECTION": LeastConnection,
            "LB_MAGLEV": Maglev,
        }
        self.assertEqual(set(IMPLEMENTED_LB_TYPES), set(expected))
        for name, kind in expected.items():
            self.assertIsInstance(balancerFor(name), kind)
        self.assertRaises(ValueError, balancerFor, "LB_RING_HASH")

    def test_lbConfig(self) -> None:
        """
        The least-request balancer takes its choice count from the cluster's lbconfig.
        """
        hosts = [FakeHost(n, requests=r) for n, r in zip("abc", [3, 1, 2])]
        lb = balancerFor("LB_LEAST_REQUEST", random.Random(1), LBConfig(choiceCount=3))
        self.assertEqual(names(lb, hosts, 30), "b" * 30)
        lb = balancerFor("LB_LEAST_REQUEST", random.Random(1))
        self.assertNotEqual(names(lb, hosts, 30), "b" * 30)

    def test_hostCountSizesMaglev(self) -> None:
        """
        The host count hint fixes the Maglev table size before the first pick.
        """
        lb = balancerFor("LB_MAGLEV", hostCount=10)
        assert isinstance(lb, Maglev)
        self.assertEqual(lb.tableSize, 1601)
