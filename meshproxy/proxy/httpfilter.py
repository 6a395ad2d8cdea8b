"""
The C{proxy} network filter's factory: one per filter chain, shared by the chain's connections.

It holds what does not change per connection (the filter's config, the settings and counters) and
what a reload replaces for connections already open (the route table, clusters and the request
drop sets, see L{HTTPProxyFilter.follow}); each client connection gets an
L{meshproxy.proxy.http.HTTPServerConnection}.
"""

from __future__ import annotations

import random
import weakref
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from meshproxy.cluster.cluster import ClusterSet
from meshproxy.cluster.pool import PoolSet
from meshproxy.config import HTTPProxyConfig
from meshproxy.interfaces import IDownstreamConnection, INetworkFilterFactory
from meshproxy.proxy.forward import XFCC, RequestDropSets, RequestIds
from meshproxy.proxy.http import HTTPServerConnection
from meshproxy.proxy.httpsettings import HTTPSettings, HTTPStats
from meshproxy.routing.table import RouteTable
from meshproxy.stats import StatsStore


@implementer(INetworkFilterFactory)
class HTTPProxyFilter:
    """
    Builds an L{HTTPServerConnection} per client connection of a C{proxy} filter chain.
    """

    name = "proxy"

    def __init__(
        self,
        config: HTTPProxyConfig,
        routes: RouteTable,
        clusters: ClusterSet,
        pools: PoolSet,
        clock: IReactorTime,
        stats: StatsStore,
        listenerName: str,
        settings: HTTPSettings | None = None,
        rng: random.Random | None = None,
        registry: Any = None,
    ) -> None:
        self.config = config
        self.rng = rng or random.Random()
        #: The router registry runtime (L{meshproxy.gorouter.RouterRegistryRuntime}) when the filter
        #: has C{use_router_registry}: requests no static route takes are looked up there.
        self.registry = registry
        self.routes = routes
        self.clusters = clusters
        self.pools = pools
        self.clock = clock
        self.settings = settings or HTTPSettings()
        self.stats = HTTPStats(stats, listenerName)
        mode = config.forwardClientCertDetails
        # The modes that do not pass the client's own X-Forwarded-Client-Cert on.
        self.sanitizeXFCC = mode in ("SANITIZE", "SANITIZE_SET")
        self.setXFCC = mode in ("SANITIZE_SET", "APPEND_FORWARD")
        self.dropSets = RequestDropSets(frozenset([XFCC]) if self.sanitizeXFCC else frozenset())
        self._followers: weakref.WeakSet[HTTPProxyFilter] = weakref.WeakSet()
        # Routes that match on X-Forwarded-Client-Cert must not see one the client made up.
        self.routesUseXFCC = routes.matchesHeader(XFCC)
        self.requestIds = RequestIds()

    def follow(self, newer: HTTPProxyFilter) -> None:
        """
        After a reload: route the next requests of this filter's open connections with C{newer}'s
        route table and clusters (requests in flight keep the route and cluster they started with).
        """
        for follower in [self, *self._followers]:
            follower.routes = newer.routes
            follower.clusters = newer.clusters
            follower.dropSets = newer.dropSets  # cached by route identity: never mix two tables' routes
            follower.routesUseXFCC = newer.routesUseXFCC
            follower.registry = newer.registry
            newer._followers.add(follower)  # and the reload after next, for connections still open
        self._followers.clear()

    def acceptsProtocol(self, protocol: str) -> bool:
        """
        HTTP/1 always; anything else only when no fallback filter follows (it then gets a 400).
        """
        return protocol == "http1" or (not self.config.fallbackForUnknownProtocol and protocol != "tls")

    def buildProtocol(self, downstream: IDownstreamConnection) -> HTTPServerConnection:
        return HTTPServerConnection(self, downstream)
