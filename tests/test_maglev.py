"""
Tests for L{meshproxy.cluster.maglev}.
"""

from __future__ import annotations

import gc
import random
import weakref
from collections import Counter
from typing import Any, Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.test_lb import FakeHost as BalancerHost
from tests.test_lb import HostList

from meshproxy.cluster.maglev import (
    CACHED_LISTS,
    MAX_TABLE_SIZE,
    Maglev,
    buildTable,
    isPrime,
    permutation,
    tableSizeFor,
    turnOrder,
)


def FakeHost(address: str, weight: int = 1) -> BalancerHost:
    """
    A host as Maglev sees it: its address is its name.
    """
    host = BalancerHost(address, weight)
    host.address = address
    return host


def makeHosts(count: int, weight: int = 1) -> list[BalancerHost]:
    """
    C{count} hosts with distinct addresses.
    """
    return [FakeHost(f"10.0.{i // 250}.{i % 250 + 1}:8080", weight) for i in range(count)]


def makeKeys(count: int, seed: int = 1) -> list[int]:
    """
    C{count} random 64-bit hash keys.
    """
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(count)]


def assertNear(case: SynchronousTestCase, actual: float, expected: float, tolerance: float) -> None:
    """
    Fail C{case} unless C{actual} is within C{tolerance} of C{expected}.
    """
    case.assertTrue(abs(actual - expected) <= tolerance, f"{actual} is not {expected} +- {tolerance}")


def envoyTable(hosts: Sequence[BalancerHost], size: int) -> list[Any]:
    """
    The table built by Envoy's loop as written there: iteration by iteration, host by host, a
    host taking a turn when C{iteration * weight >= target}, then raising its target by the
    largest weight; each turn probes the host's permutation for a free slot.
    """
    maxWeight = max(h.weight for h in hosts)
    state = [[*permutation(h.address, size), 0, 0] for h in hosts]  # offset, skip, next, target
    table: list[Any] = [None] * size
    filled = 0
    iteration = 1
    while filled < size:
        for host, entry in zip(hosts, state):
            if filled == size:
                break
            if iteration * host.weight < entry[3]:
                continue
            entry[3] += maxWeight
            slot = (entry[0] + entry[1] * entry[2]) % size
            while table[slot] is not None:
                entry[2] += 1
                slot = (entry[0] + entry[1] * entry[2]) % size
            table[slot] = host
            entry[2] += 1
            filled += 1
        iteration += 1
    return table


class TableTests(SynchronousTestCase):
    """
    Building the lookup table.
    """

    def test_sizes(self) -> None:
        """
        The size is the first prime at or above 100 times the host count rounded up to a power of
        two, capped at 65537, so it only changes when the host count doubles.
        """
        self.assertEqual(
            [tableSizeFor(n) for n in (0, 1, 2, 3, 4, 5, 10, 16, 100, 600, 5000)],
            [101, 101, 211, 401, 401, 809, 1601, 1601, 12809, 65537, 65537],
        )
        self.assertEqual(MAX_TABLE_SIZE, 65537)
        for n in range(1, 700, 7):
            size = tableSizeFor(n)
            self.assertTrue(isPrime(size), size)
            self.assertTrue(size >= min(100 * n, MAX_TABLE_SIZE), (n, size))

    def test_isPrime(self) -> None:
        """
        isPrime agrees with a sieve below 2000.
        """
        sieve = [True] * 2000
        sieve[0] = sieve[1] = False
        for i in range(2, 45):
            for j in range(i * i, 2000, i):
                sieve[j] = False
        self.assertEqual([n for n in range(2000) if isPrime(n)], [n for n in range(2000) if sieve[n]])

    def test_sameAsEnvoysLoop(self) -> None:
        """
        The table is exactly the one Envoy's weighted population loop builds, for equal and
        unequal weights and table sizes from tiny to usual.
        """
        rng = random.Random(11)
        for trial in range(60):
            count = rng.randint(1, 25)
            size = rng.choice([2, 3, 7, 101, 401, 1601])
            weights = [1] if trial % 3 == 0 else [1, 1, 2, 3, 7, 64, 128]
            hosts = [FakeHost(f"h{trial}-{i}", rng.choice(weights)) for i in range(count)]
            self.assertEqual(buildTable(hosts, size), envoyTable(hosts, size), (trial, count, size))

    def test_turnOrder(self) -> None:
        """
        With weights 2:1 the heavy host takes a turn in every iteration; the light one in the first
        and then whenever iteration * 1 catches up with turns * 2 (iterations 2, 4, 6...), as in
        Envoy's loop.
        """
        self.assertEqual(turnOrder([2, 1], 7), [0, 1, 0, 1, 0, 0, 1])
        self.assertEqual(turnOrder([1, 1, 1], 5), [0, 1, 2, 0, 1])

    def test_equalWeightsShareEvenly(self) -> None:
        """
        With equal weights every host owns the same number of slots, to within one.
        """
        for count in (1, 3, 10, 100):
            size = tableSizeFor(count)
            owners = Counter(buildTable(makeHosts(count), size))
            self.assertEqual(len(owners), count)
            self.assertLessEqual(max(owners.values()) - min(owners.values()), 1)

    def test_weightsShareProportionally(self) -> None:
        """
        Slots follow the weights to within two slots.
        """
        hosts = [FakeHost("a:1", 1), FakeHost("b:1", 2), FakeHost("c:1", 3), FakeHost("d:1", 10)]
        for size in (401, 1601):
            owners = Counter(buildTable(hosts, size))
            for host in hosts:
                assertNear(self, owners[host], size * host.weight / 16, 2)

    def test_empty(self) -> None:
        """
        No hosts, no table.
        """
        self.assertEqual(buildTable([], 101), [])


class MaglevTests(SynchronousTestCase):
    """
    The LB_MAGLEV balancer.
    """

    def test_sameKeySameHost(self) -> None:
        """
        A key maps to the same host every time, and the same in another balancer handed another
        list of the same hosts (another process of the fleet).
        """
        hosts = makeHosts(5)
        one, two = Maglev(random.Random(1)), Maglev(random.Random(2))
        for key in makeKeys(500):
            chosen = one.pick(hosts, hashKey=key)
            self.assertIs(one.pick(hosts, hashKey=key), chosen)
            self.assertIs(two.pick(list(hosts), hashKey=key), chosen)

    def test_keysSpreadByWeight(self) -> None:
        """
        Random keys reach the hosts in proportion to their weights.
        """
        hosts = [FakeHost("a:80", 1), FakeHost("b:80", 3), FakeHost("c:80", 4)]
        lb = Maglev()
        counts = Counter(lb.pick(hosts, hashKey=key) for key in makeKeys(16000))
        for host in hosts:
            assertNear(self, counts[host] / 16000, host.weight / 8, 0.02)

    def test_minimalDisruption(self) -> None:
        """
        Removing one of ten hosts moves every key it had and only about 2% of the others; the
        table size stays the same; putting it back restores the first mapping exactly.
        """
        hosts = makeHosts(10)
        keys = makeKeys(20000)
        lb = Maglev()
        before = [lb.pick(hosts, hashKey=key) for key in keys]
        size = lb.tableSize
        for removed in hosts:
            fewer = [host for host in hosts if host is not removed]
            after = [lb.pick(fewer, hashKey=key) for key in keys]
            self.assertEqual(lb.tableSize, size)
            self.assertNotIn(removed, after)
            onRemoved = sum(1 for host in before if host is removed)
            assertNear(self, onRemoved / len(keys), 0.1, 0.01)
            others = sum(1 for b, a in zip(before, after) if b is not removed and a is not b)
            self.assertLess(others / len(keys), 0.04, removed)
        again = list(hosts)
        self.assertEqual([lb.pick(again, hashKey=key) for key in keys], before)

    def test_addingAHostMovesLittle(self) -> None:
        """
        Adding an eleventh host (within the same table size) moves about its share of the keys.
        """
        hosts = makeHosts(11)
        keys = makeKeys(20000)
        lb = Maglev(hostCount=11)
        ten = hosts[:10]
        before = [lb.pick(ten, hashKey=key) for key in keys]
        after = [lb.pick(hosts, hashKey=key) for key in keys]
        moved = sum(1 for b, a in zip(before, after) if a is not b)
        toNew = sum(1 for a in after if a is hosts[10])
        assertNear(self, toNew / len(keys), 1 / 11, 0.01)
        self.assertLess((moved - toNew) / len(keys), 0.04)

    def test_excludedFailsOverWhereTheKeyWillStay(self) -> None:
        """
        When the key's host is excluded, the pick is the key's host in the table built without it (at
        the same size): the same every time and in every balancer, never an excluded one, and the host
        the key keeps once the excluded host leaves the candidates (a sticky session moves once).
        """
        hosts = makeHosts(4)
        lb = Maglev()
        for key in makeKeys(300):
            first = lb.pick(hosts, hashKey=key)
            chosen = lb.pick(hosts, exclude=[first], hashKey=key)
            self.assertIsNot(chosen, first)
            self.assertIs(Maglev().pick(hosts, exclude={first}, hashKey=key), chosen)
            withoutFirst = [h for h in hosts if h is not first]
            self.assertIs(lb.pick(withoutFirst, hashKey=key), chosen)
            third = lb.pick(hosts, exclude=[first, chosen], hashKey=key)
            self.assertNotIn(third, (first, chosen, None))

    def test_allExcludedOrEmpty(self) -> None:
        """
        No candidates, or all of them excluded, gives None; excluding strangers changes nothing.
        """
        hosts = makeHosts(3)
        lb = Maglev()
        self.assertIsNone(lb.pick([], hashKey=1))
        self.assertIsNone(lb.pick(hosts, exclude=hosts, hashKey=1))
        self.assertIsNone(lb.pick(hosts, exclude=hosts))
        self.assertIs(lb.pick(hosts, exclude=[FakeHost("x:1")], hashKey=7), lb.pick(hosts, hashKey=7))

    def test_noKeyIsWeightedRandom(self) -> None:
        """
        Without a key the pick is random by weight, and honours exclusion.
        """
        hosts = [FakeHost("a:80", 1), FakeHost("b:80", 3)]
        lb = Maglev(random.Random(4))
        counts = Counter(lb.pick(hosts) for _ in range(4000))
        assertNear(self, counts[hosts[1]] / 4000, 0.75, 0.03)
        self.assertEqual({lb.pick(hosts, exclude=[hosts[1]]) for _ in range(50)}, {hosts[0]})
        equal = makeHosts(2)
        counts = Counter(lb.pick(equal) for _ in range(2000))
        assertNear(self, counts[equal[0]] / 2000, 0.5, 0.04)

    def test_rebuildsForANewList(self) -> None:
        """
        A new candidate list, or the cached one changed in length, gets its own table: keys of a
        host no longer there go elsewhere, and come back when it does.
        """
        hosts = makeHosts(3)
        lb = Maglev()
        key = next(k for k in makeKeys(100) if lb.pick(hosts, hashKey=k) is hosts[2])
        gone = hosts.pop()
        self.assertIn(lb.pick(hosts, hashKey=key), hosts)
        hosts.append(gone)
        self.assertIs(lb.pick(hosts, hashKey=key), gone)
        self.assertIn(lb.pick([hosts[0], hosts[1]], hashKey=key), hosts[:2])

    def test_sizeOnlyGrows(self) -> None:
        """
        The size is chosen from the first list and grows when the host count outgrows it, but a
        shrinking list keeps it (so that losing hosts never reshuffles the survivors).
        """
        hosts = makeHosts(20)
        lb = Maglev()
        lb.pick(hosts[:3], hashKey=1)
        self.assertEqual(lb.tableSize, 401)
        lb.pick(hosts[:4], hashKey=1)
        self.assertEqual(lb.tableSize, 401)
        lb.pick(hosts[:10], hashKey=1)
        self.assertEqual(lb.tableSize, 1601)
        lb.pick(hosts[:2], hashKey=1)
        self.assertEqual(lb.tableSize, 1601)
        self.assertEqual(Maglev(hostCount=20).tableSize, 3203)

    def test_fixedSize(self) -> None:
        """
        A given table size is kept whatever the host count; one that is not a prime up to 65537 is
        refused.
        """
        lb = Maglev(tableSize=7)
        hosts = makeHosts(30)
        self.assertIn(lb.pick(hosts, hashKey=3), hosts)
        self.assertEqual(lb.tableSize, 7)
        self.assertRaises(ValueError, Maglev, tableSize=100)
        self.assertRaises(ValueError, Maglev, tableSize=65539)

    def test_keepsTheListsItCaches(self) -> None:
        """
        The balancer holds the lists it has tables for (so their ids cannot be reused), but only the
        last few.
        """
        lb = Maglev()
        hosts = makeHosts(3)
        refs = []
        for _ in range(CACHED_LISTS + 1):
            candidates = HostList(hosts)
            refs.append(weakref.ref(candidates))
            lb.pick(candidates, hashKey=5)
        del candidates
        gc.collect()
        self.assertIsNone(refs[0]())
        self.assertTrue(all(ref() is not None for ref in refs[1:]))
