"""
Load balancers: pure functions of the host list and the balancer's own small state.

Each balancer picks among I{eligible} hosts: healthy and not in the caller's exclusion set (hosts
already tried for this request or session).  Hosts are any objects with C{weight} and C{healthy}.
"""

from __future__ import annotations

import random
from typing import Collection, Protocol, Sequence


class _Host(Protocol):
    weight: int
    healthy: bool


class RoundRobin:
    """
    Smooth weighted round robin (the algorithm nginx uses): over any window of C{sum(weights)}
    picks, each host is chosen C{weight} times, interleaved rather than in bursts.  With equal
    weights it is a plain rotation.  Whether the weights are equal is checked once per host list
    (by identity and length): a host's weight is fixed for the life of its list.
    """

    def __init__(self) -> None:
        self._current: dict[int, int] = {}
        self._next = 0
        self._checked: tuple[int, int] = (0, -1)  # (id, length) of the host list last checked
        self._equal = True

    def pick(self, hosts: Sequence[_Host], exclude: Collection[object] = ()) -> _Host | None:
        """
        The next host in the rotation, or C{None} when no host is eligible.
        """
        count = len(hosts)
        if count == 0:
            return None
        if self._checked != (id(hosts), count):
            first = hosts[0].weight
            self._equal = all(h.weight == first for h in hosts)
            self._checked = (id(hosts), count)
        if self._equal:
            for step in range(count):
                index = (self._next + step) % count
                host = hosts[index]
                if host.healthy and host not in exclude:
                    self._next = index + 1
                    return host
            return None
        best: _Host | None = None
        bestWeight = 0
        total = 0
        current = self._current
        for host in hosts:
            if not host.healthy or host in exclude:
                continue
            key = id(host)
            weight = current.get(key, 0) + host.weight
            current[key] = weight
            total += host.weight
            if best is None or weight > bestWeight:
                best, bestWeight = host, weight
        if best is not None:
            current[id(best)] = bestWeight - total
        return best


class WeightedRandom:
    """
    Picks an eligible host at random, each with probability proportional to its weight.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, hosts: Sequence[_Host], exclude: Collection[object] = ()) -> _Host | None:
        """
        A random eligible host, or C{None} when there is none.
        """
        eligible = [h for h in hosts if h.healthy and h not in exclude]
        if not eligible:
            return None
        if len(eligible) == 1:
            return eligible[0]
        return self._rng.choices(eligible, weights=[h.weight for h in eligible])[0]


def balancerFor(lbType: str, rng: random.Random | None = None) -> RoundRobin | WeightedRandom:
    """
    The balancer for a MOSN C{lb_type} name (the config layer has already rejected the others).
    """
    if lbType == "LB_RANDOM":
        return WeightedRandom(rng)
    if lbType == "LB_ROUNDROBIN":
        return RoundRobin()
    raise ValueError(f"unsupported lb_type {lbType!r}")
