"""
Maglev consistent hashing (Eisenbud et al., NSDI 2016) with Envoy's weighting: a lookup table of a
prime number of slots, filled from each host's own permutation of the slots, that maps a request's
hash key to a host.  Removing a host moves the keys it had and only a small share of the others.

Each host's permutation comes from its C{address} alone: slot C{(offset + j * skip) mod size} is its
C{j}-th preference, with C{offset} and C{skip} taken from a BLAKE2b digest of the address.  Hosts fill
the table in turns, each taking its most preferred free slot; a host of weight C{w} takes a turn in
an iteration only while C{iteration * w} keeps up with C{turns * maxWeight} (Envoy's rule), so its
share of the slots is proportional to its weight, to within a couple of slots.

Table size.  Building a table is pure Python, on every membership or health change, and costs a
probe per slot plus the collisions.  Envoy's fixed 65537 slots would cost 15 to 50 ms per build here
(3 to 100 hosts); instead the size is the smallest prime at or above 100 times the host count rounded
up to a power of two, at most 65537 (L{tableSizeFor}): 100 to 200 slots a host.  Measured on this
project's machine: 3 hosts, 401 slots, 0.1 ms; 10 hosts, 1601 slots, 0.5 ms; 100 hosts, 12809
slots, 6 to 8 ms.  Each host's slot count is within two of its weight's share, and removing one of
N hosts moves its keys plus 1 to 3% of the others (0.2 to 0.5% at 65537 slots).
The size must not change when a host leaves, or nearly every key would move: so a balancer fixes it
at its first table (from the cluster's first candidate list, which is all of its hosts, or from a
C{hostCount} hint) and afterwards only grows it, when the candidates outgrow it.  Pass C{tableSize}
to fix it outright, e.g. to Envoy's 65537 for the least disruption at the highest build cost.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect
from typing import Any, Collection, Protocol, Sequence, TypeVar

MAX_TABLE_SIZE = 65537
SLOTS_PER_HOST = 100
#: How many candidate lists a balancer keeps a table for (e.g. the healthy hosts, and all hosts for
#: panic mode, or a few subsets); the oldest is dropped first.
CACHED_LISTS = 4


class _Host(Protocol):
    """
    What Maglev reads of a host: its stable identity and its weight.
    """

    @property
    def address(self) -> str: ...

    @property
    def weight(self) -> int: ...


H = TypeVar("H", bound=_Host)


def isPrime(number: int) -> bool:
    """
    Whether C{number} is prime (trial division: table sizes are at most a few tens of thousands).
    """
    if number < 2:
        return False
    if number % 2 == 0:
        return number == 2
    divisor = 3
    while divisor * divisor <= number:
        if number % divisor == 0:
            return False
        divisor += 2
    return True


def tableSizeFor(hostCount: int) -> int:
    """
    The table size for C{hostCount} hosts: the smallest prime at or above C{100 * hostCount} rounded
    up to a power of two, at most L{MAX_TABLE_SIZE}.  Rounding to powers of two means the size only
    changes when the host count doubles.
    """
    rounded = 1
    while rounded < hostCount:
        rounded *= 2
    size = SLOTS_PER_HOST * rounded
    if size >= MAX_TABLE_SIZE:
        return MAX_TABLE_SIZE
    while not isPrime(size):
        size += 1
    return size


def permutation(address: str, size: int) -> tuple[int, int]:
    """
    The C{(offset, skip)} of C{address}'s preference order over a table of C{size} slots (a prime):
    its C{j}-th preference is slot C{(offset + j * skip) % size}.
    """
    digest = hashlib.blake2b(address.encode("utf-8"), digest_size=16).digest()
    offset = int.from_bytes(digest[:8], "big") % size
    skip = int.from_bytes(digest[8:], "big") % (size - 1) + 1
    return offset, skip


def turnOrder(weights: Sequence[int], size: int) -> list[int]:
    """
    The hosts (as indexes into C{weights}) that take the first C{size} turns at filling a table.

    Envoy's schedule: iteration by iteration, in host order, host C{i} takes a turn when
    C{iteration * weights[i] >= turns * maxWeight}.  Its C{t}-th turn (from 0) is therefore in
    iteration C{max(t + 1, ceil(t * maxWeight / weight))}, so the order is computed directly: the
    turns of every host up to the last iteration needed, sorted by (iteration, host).
    """
    count = len(weights)
    maxWeight = max(weights)
    if min(weights) == maxWeight:
        return [turn % count for turn in range(size)]

    def turnsBy(iteration: int) -> int:
        return sum(min(iteration, iteration * weight // maxWeight + 1) for weight in weights)

    low, high = 1, size  # the heaviest host alone takes a turn every iteration
    while low < high:
        middle = (low + high) // 2
        if turnsBy(middle) >= size:
            high = middle
        else:
            low = middle + 1
    keys: list[int] = []
    for index, weight in enumerate(weights):
        turns = min(low, low * weight // maxWeight + 1)
        if weight == maxWeight:
            keys.extend(range(count + index, (turns + 1) * count, count))
        else:
            # Lighter than the heaviest: ceil(turn * maxWeight / weight) > turn, so the turn's
            # iteration is that ceiling (and 1 for turn 0).
            keys.append(count + index)
            keys.extend([-(-turn * maxWeight // weight) * count + index for turn in range(1, turns)])
    keys.sort()  # each host's keys are already in order: a merge of sorted runs
    return [key % count for key in keys[:size]]


def buildTable(hosts: Sequence[H], size: int) -> list[H]:
    """
    The Maglev lookup table of C{size} slots (a prime) for C{hosts}, by weight.  Every host gets a
    slot when there are at least as many slots as hosts.
    """
    count = len(hosts)
    if count == 0:
        return []
    positions = []
    skips = []
    for host in hosts:
        offset, skip = permutation(host.address, size)
        positions.append(offset)
        skips.append(skip)
    owners = [-1] * size
    for index in turnOrder([host.weight for host in hosts], size):
        slot = positions[index]
        skip = skips[index]
        while owners[slot] >= 0:
            slot += skip
            if slot >= size:
                slot -= size
        owners[slot] = index
        slot += skip
        if slot >= size:
            slot -= size
        positions[index] = slot
    return [hosts[index] for index in owners]


class _Entry:
    """
    What a L{Maglev} keeps for one candidate list: the list itself (so that its C{id} cannot be
    reused while the entry exists), its length when seen, its table and its cumulative weights.
    """

    __slots__ = ("hosts", "length", "table", "cumulative")

    def __init__(self, hosts: Sequence[_Host], table: list[_Host], cumulative: list[int] | None) -> None:
        self.hosts = hosts
        self.length = len(hosts)
        self.table = table
        self.cumulative = cumulative


class Maglev:
    """
    The C{LB_MAGLEV} balancer: the host in the table slot of the request's hash key, the same host
    for the same key while the candidates stay the same.  Without a key, a random host by weight.
    If the chosen host is excluded (already tried), the key is looked up in the table built without
    the excluded hosts (at the same size): the host a session fails over to is the one it keeps once
    the failed host leaves the candidates.

    Tables are cached per candidate list (by identity and length): the cluster passes a new list
    object whenever health or membership changes, and keeps passing the same one otherwise.
    """

    def __init__(
        self,
        rng: random.Random | None = None,
        tableSize: int | None = None,
        hostCount: int | None = None,
    ) -> None:
        """
        @param tableSize: a fixed table size (a prime); L{None} to choose it from the host count.
        @param hostCount: the cluster's host count, to choose the size before the first list comes.
        """
        if tableSize is not None and (not isPrime(tableSize) or tableSize > MAX_TABLE_SIZE):
            raise ValueError(f"Maglev table size {tableSize} is not a prime of at most {MAX_TABLE_SIZE}")
        self._rng = rng or random.Random()
        self._fixedSize = tableSize is not None
        self._size = tableSize or (tableSizeFor(hostCount) if hostCount else 0)
        self._entries: dict[int, _Entry] = {}
        self._last: _Entry | None = None
        self._withoutExcluded: dict[tuple[str, ...], list[Any]] = {}

    @property
    def tableSize(self) -> int:
        """
        The size of the tables built now (0 before the first).
        """
        return self._size

    def _entryFor(self, hosts: Sequence[_Host]) -> _Entry:
        last = self._last
        if last is not None and last.hosts is hosts and last.length == len(hosts):
            return last
        entry = self._entries.get(id(hosts))
        if entry is None or entry.hosts is not hosts or entry.length != len(hosts):
            entry = self._build(hosts)
        self._last = entry
        return entry

    def _build(self, hosts: Sequence[_Host]) -> _Entry:
        needed = tableSizeFor(len(hosts))
        if not self._fixedSize and needed > self._size:
            # Growing moves most keys, so a new size also drops every table of the old one.
            self._size = needed
            self._entries.clear()
            self._withoutExcluded.clear()
        weights = [host.weight for host in hosts]
        cumulative = None
        if weights and min(weights) != max(weights):
            cumulative = []
            total = 0
            for weight in weights:
                total += weight
                cumulative.append(total)
        entry = _Entry(hosts, buildTable(hosts, self._size), cumulative)
        entries = self._entries
        entries.pop(id(hosts), None)
        while len(entries) >= CACHED_LISTS:
            del entries[next(iter(entries))]
        entries[id(hosts)] = entry
        return entry

    def pick(self, hosts: Sequence[H], exclude: Collection[object] = (), hashKey: int | None = None) -> H | None:
        """
        The host for C{hashKey} among C{hosts} (the candidates), skipping those in C{exclude}; a
        random one by weight when C{hashKey} is L{None}; L{None} when every candidate is excluded.
        """
        if not hosts:
            return None
        entry = self._entryFor(hosts)
        if hashKey is None:
            return self._random(hosts, entry, exclude)
        table: list[H] = entry.table  # type: ignore[assignment]
        size = len(table)
        index = hashKey % size
        host = table[index]
        if not exclude or host not in exclude:
            return host
        remaining = [candidate for candidate in hosts if candidate not in exclude]
        if not remaining:
            return None
        # The host the key maps to once the excluded ones are gone: a session that fails over
        # now stays where it will be after the failed host is ejected.
        key = tuple(candidate.address for candidate in remaining)
        without = self._withoutExcluded.get(key)
        if without is None:
            without = buildTable(remaining, self._size)
            while len(self._withoutExcluded) >= CACHED_LISTS:
                del self._withoutExcluded[next(iter(self._withoutExcluded))]
            self._withoutExcluded[key] = without
        return without[hashKey % len(without)]  # type: ignore[no-any-return]

    def _random(self, hosts: Sequence[H], entry: _Entry, exclude: Collection[object]) -> H | None:
        rng = self._rng
        if exclude:
            eligible = [host for host in hosts if host not in exclude]
            if not eligible:
                return None
            return rng.choices(eligible, weights=[host.weight for host in eligible])[0]
        cumulative = entry.cumulative
        if cumulative is None:
            return hosts[rng.randrange(len(hosts))]
        return hosts[bisect(cumulative, rng.random() * cumulative[-1])]

