"""
C{STRICT_DNS} discovery: resolve a cluster's host names every C{dns_refresh_rate} and make every
address answered a host, keeping the last good answer for a name whose lookup fails.

Resolution goes through the reactor's C{IHostnameResolver} (C{reactor.nameResolver}: getaddrinfo in
a thread by default), so it honours C{/etc/hosts} and the system's resolver configuration.
"""

from __future__ import annotations

import ipaddress
from functools import partial
from typing import Any, Callable, Sequence

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IReactorTime, IResolutionReceiver
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.config import HostConfig

_FAMILIES: dict[str, list[type]] = {
    "ALL": [IPv4Address, IPv6Address],
    "V4_ONLY": [IPv4Address],
    "V6_ONLY": [IPv6Address],
}


@implementer(IResolutionReceiver)
class _Answer:
    """
    Collects the addresses of one lookup and reports them (or C{None} for no answer) once.
    """

    def __init__(self, done: Callable[[list[str] | None], None]) -> None:
        self._done = done
        self.addresses: list[str] = []

    def resolutionBegan(self, resolutionInProgress: object) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self._done(self.addresses or None)


def resolvedHost(config: HostConfig, ip: str) -> HostConfig:
    """
    The host an address answered for C{config}'s name stands for: same port, weight, metadata and
    TLS settings, with the name kept as its C{hostname} (Host header and TLS server name).
    """
    version = ipaddress.ip_address(ip).version
    address = f"[{ip}]:{config.port}" if version == 6 else f"{ip}:{config.port}"
    return HostConfig(
        address=address,
        host=ip,
        port=config.port,
        family="ipv6" if version == 6 else "ipv4",
        weight=config.weight,
        hostname=config.hostname or config.host,
        tlsDisable=config.tlsDisable,
        metadata=config.metadata,
    )


class DNSRefresher:
    """
    Keeps a cluster's hosts in step with what its names resolve to.

    States: idle between rounds, or resolving (one lookup per name in flight; a round that is
    still resolving when the next is due is not doubled).
    """

    log = Logger()

    def __init__(
        self,
        clusterName: str,
        configs: Sequence[HostConfig],
        family: str,
        refreshRate: float,
        clock: IReactorTime,
        resolver: IHostnameResolver,
        setHosts: Callable[[list[HostConfig]], None],
    ) -> None:
        self.clusterName = clusterName
        self._configs = list(configs)
        self._types = _FAMILIES[family]
        self._resolver = resolver
        self._setHosts = setHosts
        self._answers: dict[str, list[str]] = {}
        self._pending = 0
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = clock
        self._refreshRate = refreshRate
        self.rounds = 0
        self.failures = 0

    def start(self) -> None:
        """
        Resolve now, then every refresh interval.
        """
        self._loop.start(self._refreshRate, now=True)

    def stop(self) -> None:
        """
        Stop refreshing (lookups in flight are ignored when they finish).
        """
        if self._loop.running:
            self._loop.stop()
        self._pending = -1

    def refresh(self) -> None:
        """
        Look every name up once.
        """
        if self._pending > 0:
            return
        names = sorted({c.host for c in self._configs if c.family == "dns"})
        if not names:
            self._publish()
            return
        self._pending = len(names)
        self.rounds += 1
        for name in names:
            self._resolver.resolveHostName(_Answer(partial(self._answered, name)), name, 0, self._types)

    def _answered(self, name: str, found: list[str] | None) -> None:
        if self._pending < 0:
            return
        if found is None:
            self.failures += 1
            self.log.warn(
                "cluster {cluster}: no address for {name}; keeping {count} from the last good answer",
                cluster=self.clusterName, name=name, count=len(self._answers.get(name, [])),
            )
        else:
            previous = self._answers.get(name)
            if previous is not None and sorted(previous) != sorted(found):
                self.log.info(
                    "cluster {cluster}: {name} now resolves to {addresses}",
                    cluster=self.clusterName, name=name, addresses=", ".join(found),
                )
            self._answers[name] = found
        self._pending -= 1
        if self._pending == 0:
            self._publish()

    def _publish(self) -> None:
        hosts: list[HostConfig] = []
        seen: set[str] = set()
        for config in self._configs:
            if config.family != "dns":
                candidates = [config]
            else:
                candidates = [resolvedHost(config, ip) for ip in self._answers.get(config.host, [])]
            for host in candidates:
                if host.address not in seen:
                    seen.add(host.address)
                    hosts.append(host)
        self._setHosts(hosts)
