"""
Load balancers: pure functions of the candidate hosts and the balancer's own small state.

The cluster passes the I{candidates}: it has already left out unhealthy and ejected hosts (or, in
panic mode, passes them all), so a balancer never looks at health.  It still skips the hosts in the
caller's C{exclude} (those already tried for this request or session).  The cluster builds a new
candidate list object only when health or membership changes, so a balancer may keep what it derives
from a list (equal weights or not, cumulative weights, a Maglev table) for as long as it is handed
the same object with the same length.  It keeps a reference to that list, so the list's C{id} cannot
be reused by another while the cached values exist.
"""

from __future__ import annotations

import random
from bisect import bisect
from typing import Collection, Protocol, Sequence, TypeVar

from meshproxy.cluster.maglev import Maglev
from meshproxy.config.clustermodel import LBConfig
from meshproxy.config.clusters import LB_TYPES

__all__ = [
    "IMPLEMENTED_LB_TYPES",
    "LBHost",
    "LeastConnection",
    "LeastRequest",
    "LoadBalancer",
    "Maglev",
    "RoundRobin",
    "WeightedRandom",
    "balancerFor",
]

#: The MOSN C{lb_type} names L{balancerFor} knows (the config layer accepts exactly these).
IMPLEMENTED_LB_TYPES = LB_TYPES


class LBHost(Protocol):
    """
    What a balancer reads of a host.  C{address} is its stable identity; C{weight} (1 to 128) is
    fixed for the life of a candidate list.
    """

    @property
    def address(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def activeRequests(self) -> int: ...

    @property
    def activeConnections(self) -> int: ...


H = TypeVar("H", bound=LBHost)


class LoadBalancer(Protocol):
    """
    A balancer: picks one of the candidates not in C{exclude}, or L{None} when there is none.
    C{hashKey} is the request's hash (L{meshproxy.routing.hashpolicy}); only consistent-hashing
    balancers use it.
    """

    def pick(self, hosts: Sequence[H], exclude: Collection[object] = (), hashKey: int | None = None) -> H | None:
        """
        One of C{hosts} not in C{exclude}, or L{None}.
        """


class _ListFacts:
    """
    What a balancer derives once per candidate list: whether the weights are equal, and the
    running totals of the weights when they are not.  Holds the list itself, so that a cached
    value can never be used for a different list that happens to get the same C{id}.
    """

    __slots__ = ("hosts", "length", "equal", "cumulative")

    def __init__(self, hosts: Sequence[LBHost]) -> None:
        self.hosts = hosts
        self.length = len(hosts)
        weights = [host.weight for host in hosts]
        self.equal = not weights or min(weights) == max(weights)
        self.cumulative: list[int] = []
        if not self.equal:
            total = 0
            for weight in weights:
                total += weight
                self.cumulative.append(total)

    def isFor(self, hosts: Sequence[LBHost]) -> bool:
        """
        Whether these facts describe C{hosts} (the same object, still of the same length).
        """
        return self.hosts is hosts and self.length == len(hosts)


_NO_FACTS = _ListFacts(())


class RoundRobin:
    """
    Smooth weighted round robin (the algorithm nginx uses): over any window of C{sum(weights)} picks,
    each host is chosen C{weight} times, interleaved rather than in bursts.  With equal weights it is
    a plain rotation.  A new candidate list restarts the weighted sequence; the rotation continues.
    """

    def __init__(self) -> None:
        self._facts = _NO_FACTS
        self._current: list[int] = []
        self._next = 0

    def pick(self, hosts: Sequence[H], exclude: Collection[object] = (), hashKey: int | None = None) -> H | None:
        """
        The next host in the rotation that is not in C{exclude}, or L{None}.
        """
        count = len(hosts)
        if count == 0:
            return None
        facts = self._facts
        if not facts.isFor(hosts):
            facts = self._facts = _ListFacts(hosts)
            self._current = [0] * count
        if facts.equal:
            index = self._next % count
            for _ in range(count):
                host = hosts[index]
                index += 1
                if not exclude or host not in exclude:
                    self._next = index
                    return host
                if index == count:
                    index = 0
            return None
        current = self._current
        bestIndex = -1
        bestWeight = 0
        total = 0
        for index in range(count):
            host = hosts[index]
            if exclude and host in exclude:
                continue
            weight = current[index] + host.weight
            current[index] = weight
            total += host.weight
            if bestIndex < 0 or weight > bestWeight:
                bestIndex, bestWeight = index, weight
        if bestIndex < 0:
            return None
        current[bestIndex] = bestWeight - total
        return hosts[bestIndex]


class WeightedRandom:
    """
    Picks a candidate at random, each with probability proportional to its weight.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._facts = _NO_FACTS

    def pick(self, hosts: Sequence[H], exclude: Collection[object] = (), hashKey: int | None = None) -> H | None:
        """
        A random host not in C{exclude}, or L{None}.
        """
        count = len(hosts)
        if count == 0:
            return None
        rng = self._rng
        if exclude:
            eligible = [host for host in hosts if host not in exclude]
            if len(eligible) <= 1:
                return eligible[0] if eligible else None
            return rng.choices(eligible, weights=[host.weight for host in eligible])[0]
        facts = self._facts
        if not facts.isFor(hosts):
            facts = self._facts = _ListFacts(hosts)
        if facts.equal:
            return hosts[rng.randrange(count)]
        cumulative = facts.cumulative
        return hosts[bisect(cumulative, rng.random() * cumulative[-1])]


class LeastRequest:
    """
    The power of C{choiceCount} choices on active requests: sample that many distinct candidates
    at random and take the least loaded.  With equal weights that is the one with the fewest active
    requests; with unequal weights, the one with the highest effective weight
    C{weight / (activeRequests + 1) ** activeRequestBias} (Envoy's formula).  Ties go to the
    earlier sampled, so they are broken at random.

    Sampling without replacement guarantees that a pick is never one of the C{choiceCount - 1}
    busiest candidates (by the measure above) when they are strictly busier than the rest: with two
    choices among three hosts, the strictly busiest is never chosen.  With unequal weights and idle
    hosts, the heavier of the sampled hosts wins; shares follow the weights as load builds up.
    """

    def __init__(self, rng: random.Random | None = None, choiceCount: int = 2, activeRequestBias: float = 1.0) -> None:
        if choiceCount < 1:
            raise ValueError(f"choice count must be at least 1, not {choiceCount}")
        if activeRequestBias < 0:
            raise ValueError(f"active request bias must not be negative, not {activeRequestBias}")
        self._rng = rng or random.Random()
        self._choiceCount = choiceCount
        self._bias = activeRequestBias
        self._facts = _NO_FACTS

    def pick(self, hosts: Sequence[H], exclude: Collection[object] = (), hashKey: int | None = None) -> H | None:
        """
        The least loaded of a random sample of the hosts not in C{exclude}, or L{None}.
        """
        facts = self._facts
        if not facts.isFor(hosts):
            facts = self._facts = _ListFacts(hosts)
        eligible: Sequence[H] = [host for host in hosts if host not in exclude] if exclude else hosts
        count = len(eligible)
        if count <= 1:
            return eligible[0] if count else None
        rng = self._rng
        if self._choiceCount == 2:
            first = rng.randrange(count)
            second = rng.randrange(count - 1)
            if second >= first:
                second += 1
            sample: Sequence[H] = (eligible[first], eligible[second])
        else:
            sample = [eligible[index] for index in rng.sample(range(count), min(self._choiceCount, count))]
        best = sample[0]
        if facts.equal:
            for host in sample[1:]:
                if host.activeRequests < best.activeRequests:
                    best = host
            return best
        bestWeight = self._effectiveWeight(best)
        for host in sample[1:]:
            weight = self._effectiveWeight(host)
            if weight > bestWeight:
                best, bestWeight = host, weight
        return best

    def _effectiveWeight(self, host: LBHost) -> float:
        bias = self._bias
        if bias == 1.0:
            return host.weight / (host.activeRequests + 1)
        return host.weight / (host.activeRequests + 1) ** bias


class LeastConnection:
    """
    The candidate with the fewest active connections (weights are not used, as in gorouter's
    least-connection).  Ties are broken round robin: the search starts after the last host picked,
    so idle hosts take turns instead of the first one taking everything.
    """

    def __init__(self) -> None:
        self._next = 0

    def pick(self, hosts: Sequence[H], exclude: Collection[object] = (), hashKey: int | None = None) -> H | None:
        """
        The host not in C{exclude} with the fewest active connections, or L{None}.
        """
        count = len(hosts)
        if count == 0:
            return None
        index = self._next % count
        best: H | None = None
        bestIndex = 0
        bestConnections = 0
        for _ in range(count):
            host = hosts[index]
            if not exclude or host not in exclude:
                connections = host.activeConnections
                if best is None or connections < bestConnections:
                    best, bestIndex, bestConnections = host, index, connections
                    if connections <= 0:
                        break
            index += 1
            if index == count:
                index = 0
        if best is not None:
            self._next = bestIndex + 1
        return best


def balancerFor(
    lbType: str,
    rng: random.Random | None = None,
    lbConfig: LBConfig | None = None,
    hostCount: int | None = None,
) -> LoadBalancer:
    """
    The balancer for a MOSN C{lb_type} name (one of L{IMPLEMENTED_LB_TYPES}).

    @param rng: the random source of the random, least-request and Maglev balancers.
    @param lbConfig: the cluster's C{lbconfig} (least-request tuning).
    @param hostCount: the cluster's configured host count, from which L{Maglev} sizes its table
        (so that the size does not depend on how many hosts were healthy when the first request came).
    @raise ValueError: for any other name.
    """
    if lbType in ("LB_ROUNDROBIN", "LB_WEIGHTED_ROUNDROBIN", "LB_REQUEST_ROUNDROBIN"):
        return RoundRobin()
    if lbType == "LB_RANDOM":
        return WeightedRandom(rng)
    if lbType == "LB_LEAST_REQUEST":
        config = lbConfig or LBConfig()
        return LeastRequest(rng, config.choiceCount, config.activeRequestBias)
    if lbType == "LB_LEAST_CONNECTION":
        return LeastConnection()
    if lbType == "LB_MAGLEV":
        return Maglev(rng, hostCount=hostCount)
    raise ValueError(f"unsupported lb_type {lbType!r}")
