"""
The HTTP route table: the request's Host, target and headers in bytes, a prebuilt L{Route} out.

L{RouteTable} is built once per router (MOSN C{routers[]}) and then only read; a reload builds new tables.
Per request it costs one cached dict lookup for the virtual host (L{meshproxy.routing.domains}) and a walk
over that host's entries in order, first match wins (L{meshproxy.routing.route.firstMatch}).  Nothing is
decoded and nothing is allocated beyond slicing the query off the path when an entry needs the path.

L{RouteTable.explain} answers the admin's "why did this request go there", and L{routerProblems} lists what
in a router cannot be built (unknown header variables, patterns that do not work on bytes) so that
configuration checking can report it with JSON paths before a table is built.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from zope.interface import implementer

from meshproxy.config.model import ServerConfig
from meshproxy.config.routemodel import RouteActionConfig, RouterConfig
from meshproxy.interfaces import IRouter
from meshproxy.routing.domains import DEFAULT_CACHE_SIZE, DomainTable
from meshproxy.routing.edits import KNOWN_HEADER_VARIABLES, mergeHeaderEdits, unknownHeaderVariables
from meshproxy.routing.explain import explainRequest
from meshproxy.routing.route import Route, VirtualHost, bytesPattern, firstMatch

__all__ = ["RouteTable", "RouteTables", "routerProblems", "splitTarget", "unknownHeaderVariables"]

_ABSOLUTE = re.compile(rb"https?://", re.IGNORECASE)


def splitTarget(target: bytes) -> tuple[bytes | None, bytes]:
    """
    Split an absolute-form request target (C{http://host:8080/p?q}) into its authority and an origin-form
    target (C{(b"host:8080", b"/p?q")}); any other target comes back as C{(None, target)}.

    The authority loses any C{user@} part, and an empty path becomes C{/}.  Per RFC 9112 section 3.2.2 the
    proxy uses this authority instead of the Host header for routing.
    """
    if target.startswith(b"/"):
        return None, target
    scheme = _ABSOLUTE.match(target)
    if scheme is None:
        return None, target
    rest = target[scheme.end() :]
    end = len(rest)
    for separator in (b"/", b"?", b"#"):
        position = rest.find(separator)
        if 0 <= position < end:
            end = position
    authority = rest[:end].rpartition(b"@")[2]
    path = rest[end:]
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


def _patternProblems(config: RouterConfig) -> Iterator[tuple[str, str]]:
    def check(pattern: re.Pattern[str] | None, path: str) -> Iterator[tuple[str, str]]:
        if pattern is None:
            return
        try:
            bytesPattern(pattern)
        except re.error as e:
            yield path, f"{pattern.pattern!r} cannot be used on raw request bytes: {e}"

    for hostIndex, vhost in enumerate(config.virtualHosts):
        for routeIndex, entry in enumerate(vhost.routes):
            entryPath = f"virtual_hosts[{hostIndex}].routers[{routeIndex}]"
            yield from check(entry.match.regex, f"{entryPath}.match.regex")
            for headerIndex, header in enumerate(entry.match.headers):
                yield from check(header.pattern, f"{entryPath}.match.headers[{headerIndex}].value")
            action = entry.route
            if isinstance(action, RouteActionConfig) and action.regexRewrite is not None:
                rewrite = action.regexRewrite
                rewritePath = f"{entryPath}.route.regex_rewrite"
                problems = list(check(rewrite.pattern, f"{rewritePath}.pattern.regex"))
                yield from problems
                if not problems:
                    try:
                        bytesPattern(rewrite.pattern).sub(rewrite.substitution.encode("utf-8"), b"")
                    except re.error as e:
                        yield f"{rewritePath}.substitution", f"{rewrite.substitution!r} is not valid: {e}"


def routerProblems(config: RouterConfig) -> list[tuple[str, str]]:
    """
    Everything in C{config} that L{RouteTable} refuses, as C{(path, message)} pairs with JSON paths
    relative to the router object (prefix them with C{"servers[0].routers[1]."} or the like).

    That is: header values referencing a variable outside L{KNOWN_HEADER_VARIABLES}; regular expressions
    that only work on text (such as C{\\u00e9} escapes); regex rewrite substitutions that refer to groups
    the pattern does not have.
    """
    known = ", ".join(f"%{name}%" for name in sorted(KNOWN_HEADER_VARIABLES))
    problems = [
        (path, f"unknown variable %{name}% in a header value: expected one of {known}")
        for path, name in unknownHeaderVariables(config)
    ]
    problems.extend(_patternProblems(config))
    return problems


@implementer(IRouter)
class RouteTable:
    """
    One router's virtual hosts and route entries, compiled for the request path.

    @ivar name: the router's C{router_config_name}.
    @ivar config: the L{RouterConfig} it was built from.
    @ivar virtualHosts: the L{VirtualHost}s in configuration order.
    """

    def __init__(
        self,
        config: RouterConfig,
        rng: random.Random | None = None,
        maxCacheSize: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        """
        @param rng: draws weighted cluster choices; a private generator seeded from the OS by default.
        @param maxCacheSize: the bound of the Host → virtual host cache.
        @raise ValueError: C{config} has any of the L{routerProblems}.
        """
        problems = routerProblems(config)
        if problems:
            details = "; ".join(f"{path}: {message}" for path, message in problems)
            raise ValueError(f"router {config.routerConfigName!r} cannot be built: {details}")
        self.name = config.routerConfigName
        self.config = config
        rng = random.Random() if rng is None else rng
        virtualHosts = []
        for vhost in config.virtualHosts:
            routes = []
            for index, entry in enumerate(vhost.routes):
                levels = [config.headerEdits, vhost.headerEdits]
                if entry.route is not None:
                    levels.append(entry.route.headerEdits)
                edits = mergeHeaderEdits(levels)
                routes.append(Route(self.name, vhost.name, index, entry, edits, rng))
            virtualHosts.append(VirtualHost(vhost, tuple(routes)))
        self.virtualHosts = tuple(virtualHosts)
        self._domains = DomainTable(
            ((domain, vhost) for vhost in self.virtualHosts for domain in vhost.config.domains),
            maxCacheSize,
        )
        self._select = self._domains.select

    @property
    def domains(self) -> DomainTable[VirtualHost]:
        """
        The Host → virtual host table (with its cache).
        """
        return self._domains

    def route(
        self, host: bytes | None, target: bytes, method: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> Route | None:
        """
        The route entry for one request, or C{None} when no virtual host or no entry matches (the
        proxy answers 404).

        @param host: the raw Host header value (port and IPv6 brackets included), C{None} if absent.
        @param target: the origin-form request target as received, query included (see L{splitTarget}
            for absolute-form targets).
        @param method: the request method; MOSN's HTTP route matchers do not consult it, it is part of
            the signature for L{explain} and for matchers to come.
        @param headers: the request headers as received, C{(name, value)} pairs.
        """
        vhost = self._select(host)
        if vhost is None:
            return None
        return firstMatch(vhost.routes, target, headers)

    def matchesHeader(self, name: bytes) -> bool:
        """
        Whether any route entry matches on the header C{name} (lower case).
        """
        return any(
            matcher[0] == name for vhost in self.virtualHosts for route in vhost.routes for matcher in route.headerMatchers
        )

    def explain(
        self, host: str, path: str, method: str = "GET", headers: Sequence[tuple[str, str]] = ()
    ) -> dict[str, Any]:
        """
        Why a request would be routed as it is, JSON-ready, for the admin's C{/api/v1/explain}.

        C{host} is the Host value (C{""} for none) and C{path} the request target (an absolute-form
        target's authority replaces C{host}).  The answer has C{virtualHost} (C{name}, the C{domain} that
        matched, its C{precedence} class and a C{reason}), C{routes} (each entry tried in order with its
        C{match} conditions, whether it C{matched} and the C{reason}), C{action} (what the matching entry
        does: cluster or weighted split or cluster header, upstream target, host rewrite, timeout, retry
        policy, redirect location for an http request, direct status and body, header edits), C{status}
        when the proxy answers by itself (404 for no virtual host, no entry, or a missing cluster header)
        and a one-line C{outcome}.  The cache is not consulted.
        """
        authority, target = splitTarget(path.encode("utf-8") or b"/")
        hostBytes = authority if authority is not None else (host.encode("utf-8") or None)
        headerBytes = [(name.encode("utf-8"), value.encode("utf-8")) for name, value in headers]
        return explainRequest(
            self.name, self._domains, hostBytes, target, method.encode("utf-8"), headerBytes
        )


class RouteTables(Mapping[str, RouteTable]):
    """
    The route tables of one server, by C{router_config_name}: what C{proxy} filters look their router up in.
    """

    def __init__(self, routers: Iterable[RouterConfig], rng: random.Random | None = None) -> None:
        """
        @param rng: shared by every table for weighted choices (a private generator by default).
        @raise ValueError: a router has any of the L{routerProblems}.
        """
        rng = random.Random() if rng is None else rng
        self._tables = {router.routerConfigName: RouteTable(router, rng) for router in routers}

    @classmethod
    def fromServer(cls, server: ServerConfig, rng: random.Random | None = None) -> RouteTables:
        """
        A table for each router of C{server}.
        """
        return cls(server.routers, rng)

    def __getitem__(self, name: str) -> RouteTable:
        return self._tables[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)
