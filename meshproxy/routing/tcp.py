"""
Which cluster a raw TCP session goes to: MOSN's C{tcp_proxy} C{cluster} and C{routes[]} rules.
"""

from __future__ import annotations

import ipaddress
from typing import Sequence

from meshproxy.config import TCPProxyConfig, TCPRouteConfig

Address = tuple[str, int] | None
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _addressMatches(networks: Sequence[Network], address: Address) -> bool:
    if not networks:
        return True
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def _portMatches(ranges: Sequence[tuple[int, int]], address: Address) -> bool:
    if not ranges:
        return True
    if address is None:
        return False
    port = address[1]
    return any(low <= port <= high for low, high in ranges)


def routeMatches(route: TCPRouteConfig, source: Address, destination: Address) -> bool:
    """
    Whether every criterion C{route} sets holds for this session; a route with none matches all.
    """
    return (
        _addressMatches(route.sourceAddrs, source)
        and _addressMatches(route.destinationAddrs, destination)
        and _portMatches(route.sourcePorts, source)
        and _portMatches(route.destinationPorts, destination)
    )


def selectTCPCluster(config: TCPProxyConfig, source: Address, destination: Address) -> str | None:
    """
    The cluster for a session from C{source} to C{destination}: the filter's C{cluster} wins when
    set (as in MOSN), else the first matching route's; C{None} when nothing matches.
    """
    if config.cluster:
        return config.cluster
    for route in config.routes:
        if routeMatches(route, source, destination):
            return route.cluster
    return None
