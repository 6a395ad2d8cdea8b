"""
The parts of the gorouter-compatible route registry that requests meet: L{Endpoint}, L{Pool}, the
route trie's nodes and the whole-segment match below a host (L{meshproxy.routing.registry} keeps
them in step with the messages).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

#: What a register message did to one route's pool.
ADDED = "added"
UPDATED = "updated"
REFRESHED = "refreshed"
UNMODIFIED = "unmodified"


def _match(node: _Node, segments: list[bytes], index: int) -> Pool | None:
    """
    gorouter's C{Trie.MatchUri} below a host node: the deepest pool with endpoints along C{segments}
    (from C{index}), else the pool (maybe empty, maybe L{None}) of the deepest node reached.
    """
    pool = node.pool
    last = pool if pool is not None and pool.endpoints else None
    children = node.children
    count = len(segments)
    while children is not None and index < count:
        child = children.get(segments[index])
        if child is None:
            break
        node = child
        pool = node.pool
        if pool is not None and pool.endpoints:
            last = pool
        children = node.children
        index += 1
    return node.pool if last is None else last


@attrs.frozen(eq=False)
class Endpoint:
    """
    One backend instance as registered: a value, replaced (never mutated) when its data changes.

    C{address} is its identity in a pool.  C{staleThreshold} is the effective time to live in seconds.
    C{tags} is L{None} when the message had none, and must not be mutated.  Compared by identity; see
    L{equivalent} for gorouter's notion of an unchanged endpoint.
    """

    address: str
    host: str
    port: int
    tls: bool
    appId: str
    privateInstanceId: str
    privateInstanceIndex: str
    tags: Mapping[str, str] | None
    loadBalancing: str
    staleThreshold: float
    protocol: str
    availabilityZone: str
    serverCertDomainSAN: str
    routeServiceUrl: str
    isolationSegment: str
    updatedAtNs: int

    @property
    def ttl(self) -> int:
        """
        The threshold in whole seconds, as C{/routes} shows it.
        """
        return int(self.staleThreshold)

    @property
    def processId(self) -> str:
        """
        The C{process_id} tag (what C{X-CF-PROCESS-INSTANCE} matches), or C{""}.
        """
        return (self.tags or {}).get("process_id", "")

    def equivalent(self, other: Endpoint) -> bool:
        """
        gorouter's C{Endpoint.Equal}: every field but the availability zone.  A re-registration of an
        equivalent endpoint is only a heartbeat.
        """
        return (
            self.address == other.address and self.tls == other.tls and self.appId == other.appId
            and self.privateInstanceId == other.privateInstanceId
            and self.privateInstanceIndex == other.privateInstanceIndex and self.tags == other.tags
            and self.loadBalancing == other.loadBalancing and self.staleThreshold == other.staleThreshold
            and self.protocol == other.protocol and self.serverCertDomainSAN == other.serverCertDomainSAN
            and self.routeServiceUrl == other.routeServiceUrl and self.isolationSegment == other.isolationSegment
            and self.updatedAtNs == other.updatedAtNs
        )

    def toJSON(self) -> dict[str, Any]:
        """
        The endpoint as gorouter's C{/routes} shows it, keys in Go's order.
        """
        data: dict[str, Any] = {
            "address": self.address,
            "availability_zone": self.availabilityZone,
            "protocol": self.protocol,
            "tls": self.tls,
            "ttl": self.ttl,
        }
        if self.routeServiceUrl:
            data["route_service_url"] = self.routeServiceUrl
        data["tags"] = None if self.tags is None else {k: self.tags[k] for k in sorted(self.tags)}
        for key, value in (
            ("isolation_segment", self.isolationSegment),
            ("private_instance_id", self.privateInstanceId),
            ("server_cert_domain_san", self.serverCertDomainSAN),
            ("load_balancing_algorithm", self.loadBalancing),
        ):
            if value:
                data[key] = value
        return data


class _Node:
    """
    One segment of the route trie: a host (under the registry's dicts) or a path segment.
    """

    __slots__ = ("segment", "pool", "children", "parent")

    def __init__(self, segment: bytes, parent: _Node | None) -> None:
        self.segment = segment
        self.pool: Pool | None = None
        self.children: dict[bytes, _Node] | None = None
        self.parent = parent


class Pool:
    """
    The endpoints of one route key, in registration order.

    C{endpoints} is a tuple replaced on every change; C{version} grows (registry-wide) with each change
    of the endpoints or of the pool's balancing algorithm, never with a mere heartbeat.  C{host} and
    C{contextPath} keep the case of the first registration (the sticky cookie's C{Path} is the context
    path).  C{loadBalancing} is the pool's algorithm: the registry default until a message names a valid
    one (the last one named wins).  C{routeServiceUrl} is the last added or updated endpoint's.
    C{updatedAt} is the time of the last registration, heartbeat or removal.
    """

    def __init__(self, routeKey: str, host: str, contextPath: str, loadBalancing: str, now: float) -> None:
        self.routeKey = routeKey
        self.host = host
        self.contextPath = contextPath
        self.loadBalancing = loadBalancing
        self.routeServiceUrl = ""
        self.updatedAt = now
        self.version = 0
        self.endpoints: tuple[Endpoint, ...] = ()
        self._byAddress: dict[str, Endpoint] = {}
        self._byId: dict[str, Endpoint] = {}
        self._heartbeat: dict[str, float] = {}
        self._node: _Node | None = None

    def __repr__(self) -> str:
        return f"<Pool {self.routeKey!r} v{self.version} {len(self.endpoints)} endpoints>"

    def findById(self, stickyId: str | bytes) -> Endpoint | None:
        """
        The endpoint a C{__VCAP_ID__} value names: its C{private_instance_id}, or its C{host:port}.
        """
        if isinstance(stickyId, bytes):
            stickyId = stickyId.decode("utf-8", "replace")
        if not stickyId:
            return None
        return self._byId.get(stickyId) or self._byAddress.get(stickyId)

    def lastUpdate(self, endpoint: Endpoint) -> float | None:
        """
        When C{endpoint} (by address) was last registered or refreshed, or L{None} if not in the pool.
        """
        return self._heartbeat.get(endpoint.address)

    def _put(self, endpoint: Endpoint, now: float, ignoreOlder: bool) -> str:
        address = endpoint.address
        old = self._byAddress.get(address)
        if old is not None and (old is endpoint or old.equivalent(endpoint)):
            self._heartbeat[address] = self.updatedAt = now
            return REFRESHED
        if old is not None and ignoreOlder and 0 < endpoint.updatedAtNs < old.updatedAtNs:
            return UNMODIFIED
        if old is None:
            self.endpoints += (endpoint,)
        else:
            self.endpoints = tuple(endpoint if e is old else e for e in self.endpoints)
            if self._byId.get(old.privateInstanceId) is old:
                del self._byId[old.privateInstanceId]
        self._byAddress[address] = endpoint
        if endpoint.privateInstanceId:
            self._byId[endpoint.privateInstanceId] = endpoint
        self._heartbeat[address] = self.updatedAt = now
        self.routeServiceUrl = endpoint.routeServiceUrl
        return ADDED if old is None else UPDATED

    def _remove(self, addresses: Iterable[str], now: float) -> tuple[Endpoint, ...]:
        """
        Remove the endpoints with these addresses; return them (nothing removed: nothing changes).
        """
        gone = set(addresses)
        removed = tuple(e for e in self.endpoints if e.address in gone)
        if not removed:
            return removed
        self.endpoints = tuple(e for e in self.endpoints if e.address not in gone)
        for endpoint in removed:
            del self._byAddress[endpoint.address], self._heartbeat[endpoint.address]
            instanceId = endpoint.privateInstanceId
            if self._byId.get(instanceId) is endpoint:
                del self._byId[instanceId]
                for other in self.endpoints:  # another endpoint with the same instance id (last one wins)
                    if other.privateInstanceId == instanceId:
                        self._byId[instanceId] = other
        self.updatedAt = now
        return removed


@attrs.frozen
class PrunedRoute:
    """
    The endpoints one prune cycle removed from one route (gorouter logs them as C{pruned-route}).
    """

    routeKey: str
    endpoints: tuple[Endpoint, ...]


@attrs.frozen
class RouteMatch:
    """
    Where a request goes: its pool, and the endpoints it may use (all of the pool's, or those an
    C{X-CF-APP-INSTANCE} / C{X-CF-PROCESS-INSTANCE} header selects).
    """

    pool: Pool
    endpoints: tuple[Endpoint, ...]


