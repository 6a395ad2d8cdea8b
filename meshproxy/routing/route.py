"""
One route entry compiled for the request path: its match in bytes and its action, built once per table.

A L{Route} is what L{meshproxy.routing.table.RouteTable.route} returns for a request, as is: nothing is
allocated per request.  Config strings are encoded (UTF-8) and regular expressions recompiled as C{bytes}
patterns at build time, so matching never decodes the request.  A consequence worth knowing: in a bytes
pattern C{.} is one byte and C{\\w}, C{\\d}, C{\\s} are ASCII classes; a non-ASCII character written
literally matches its UTF-8 bytes in sequence, but not inside a character class (C{[é]} becomes a class
of two bytes).  C{\\uXXXX} escapes only work on text and are refused at build time
(L{meshproxy.routing.table.routerProblems}).

Matching (L{firstMatch}) follows Envoy: C{prefix} against the request target B{including} its query string,
C{path} (exact) and C{regex} (full match) against the path B{without} the query; then every header matcher,
name case-insensitive, value exact (case-sensitive) or a full regex match.  A header sent several times
satisfies a matcher when B{any} of its values does.  An entry without a path condition matches every target.
"""

from __future__ import annotations

import bisect
import random
import re
from typing import Sequence

from meshproxy.config.routemodel import (
    DirectResponseActionConfig,
    HashPolicyConfig,
    RedirectActionConfig,
    RetryPolicyConfig,
    RouteActionConfig,
    RouteEntryConfig,
    VirtualHostConfig,
)
from meshproxy.routing.edits import HeaderAdd, MergedHeaderEdits

#: L{Route.kind} values.
CLUSTER = "cluster"
REDIRECT = "redirect"
DIRECT = "direct"

#: L{Route.matchKind} values.
MATCH_ALL, MATCH_PREFIX, MATCH_PATH, MATCH_REGEX = 0, 1, 2, 3

_NO_REWRITE, _PREFIX_REWRITE, _PATH_REWRITE, _REGEX_REWRITE = 0, 1, 2, 3
_STATIC, _WEIGHTED, _FROM_HEADER = 0, 1, 2
_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}

#: A compiled header condition: lower-cased name, then the exact value or the pattern (the other is None).
HeaderMatcher = tuple[bytes, bytes | None, re.Pattern[bytes] | None]


def bytesPattern(pattern: re.Pattern[str]) -> re.Pattern[bytes]:
    """
    The C{bytes} equivalent of a compiled C{str} pattern (same source, same flags but Unicode).

    @raise re.error: the source has a construct that only C{str} patterns accept, such as C{\\u00e9}.
    """
    return re.compile(pattern.pattern.encode("utf-8"), pattern.flags & ~re.UNICODE)


def pathOf(target: bytes) -> bytes:
    """
    The path of an origin-form request target: everything before the first C{?}.
    """
    query = target.find(b"?")
    return target if query < 0 else target[:query]


def headerValue(headers: Sequence[tuple[bytes, bytes]], lowerName: bytes) -> bytes | None:
    """
    The first value of the header called C{lowerName} (compared case-insensitively), or C{None}.
    """
    size = len(lowerName)
    for name, value in headers:
        if len(name) == size and name.lower() == lowerName:
            return value
    return None


def headerMatches(matcher: HeaderMatcher, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """
    Whether any value of the matcher's header satisfies it; a missing header never does.
    """
    lowerName, exact, pattern = matcher
    size = len(lowerName)
    for name, value in headers:
        if len(name) == size and name.lower() == lowerName:
            if pattern is None:
                if value == exact:
                    return True
            elif pattern.fullmatch(value) is not None:
                return True
    return False


def firstMatch(
    routes: Sequence[Route], target: bytes, headers: Sequence[tuple[bytes, bytes]]
) -> Route | None:
    """
    The first of C{routes} whose conditions all hold for this request, or C{None}.

    This is the per-request loop: the path is cut from the query only if some entry needs it.
    """
    path = None
    for route in routes:
        kind = route.matchKind
        if kind == MATCH_PREFIX:
            if not target.startswith(route.matchValue):
                continue
        elif kind == MATCH_PATH:
            if path is None:
                path = pathOf(target)
            if path != route.matchValue:
                continue
        elif kind == MATCH_REGEX:
            if path is None:
                path = pathOf(target)
            if route.matchPattern.fullmatch(path) is None:  # type: ignore[union-attr]
                continue
        if route.headerMatchers:
            for matcher in route.headerMatchers:
                if not headerMatches(matcher, headers):
                    break
            else:
                return route
            continue
        return route
    return None


class Route:
    """
    A route entry ready for requests: how it matches and what it does.

    Every kind has every attribute, so the proxy never needs C{isinstance}; those that do not apply to a
    kind hold their neutral value (C{None}, C{0}, C{b""}).

    @ivar routerName: the router (C{router_config_name}) holding the entry.
    @ivar virtualHost: the virtual host's name.
    @ivar index: the entry's position in its virtual host.
    @ivar config: the L{RouteEntryConfig} it was built from.
    @ivar kind: L{CLUSTER}, L{REDIRECT} or L{DIRECT}.
    @ivar matchKind: L{MATCH_ALL}, L{MATCH_PREFIX}, L{MATCH_PATH} or L{MATCH_REGEX}.
    @ivar matchValue: the prefix or path in bytes (C{b""} otherwise).
    @ivar matchPattern: the C{regex} as a bytes pattern, or C{None}.
    @ivar headerMatchers: the header conditions, all required.
    @ivar clusterName: the static cluster name, or C{None}.
    @ivar clusters: the cluster names the entry lists (static, or all of a weighted split).
    @ivar clusterHeader: the lower-cased header naming the cluster, or C{None}.
    @ivar hostRewrite: the Host to send upstream instead of the client's, or C{None}.
    @ivar autoHostRewrite: send the chosen upstream host's address as Host.
    @ivar timeout: seconds to wait for the upstream response headers (C{0.0} when not forwarding).
    @ivar retryPolicy: the L{RetryPolicyConfig}, or C{None}.
    @ivar status: the redirect's or the direct response's status (C{0} when forwarding).
    @ivar body: the direct response body (C{b""} otherwise).
    @ivar headerEdits: the merged L{MergedHeaderEdits}; its four lists are also attributes of the route.
    """

    __slots__ = (
        "routerName",
        "virtualHost",
        "index",
        "config",
        "kind",
        "matchKind",
        "matchValue",
        "matchPattern",
        "headerMatchers",
        "clusterName",
        "clusters",
        "clusterHeader",
        "hostRewrite",
        "autoHostRewrite",
        "timeout",
        "retryPolicy",
        "hashPolicy",
        "metadataMatch",
        "_clusterMetadata",
        "status",
        "body",
        "headerEdits",
        "requestHeadersToRemove",
        "requestHeadersToAdd",
        "responseHeadersToRemove",
        "responseHeadersToAdd",
        "_rng",
        "_clusterMode",
        "_cumulative",
        "_totalWeight",
        "_rewriteMode",
        "_rewrite",
        "_prefixLength",
        "_dropSlash",
        "_rewritePattern",
        "_schemeRedirect",
        "_hostRedirect",
        "_pathRedirect",
    )

    def __init__(
        self,
        routerName: str,
        virtualHost: str,
        index: int,
        config: RouteEntryConfig,
        headerEdits: MergedHeaderEdits,
        rng: random.Random,
    ) -> None:
        self.routerName = routerName
        self.virtualHost = virtualHost
        self.index = index
        self.config = config
        self.headerEdits = headerEdits
        self.requestHeadersToRemove: frozenset[bytes] = headerEdits.requestHeadersToRemove
        self.requestHeadersToAdd: tuple[HeaderAdd, ...] = headerEdits.requestHeadersToAdd
        self.responseHeadersToRemove: frozenset[bytes] = headerEdits.responseHeadersToRemove
        self.responseHeadersToAdd: tuple[HeaderAdd, ...] = headerEdits.responseHeadersToAdd
        self._rng = rng
        self._compileMatch(config)
        self.clusterName: str | None = None
        self.clusters: tuple[str, ...] = ()
        self.clusterHeader: bytes | None = None
        self.hostRewrite: bytes | None = None
        self.autoHostRewrite = False
        self.timeout = 0.0
        self.retryPolicy: RetryPolicyConfig | None = None
        self.hashPolicy: tuple[HashPolicyConfig, ...] = ()
        self.metadataMatch: tuple[tuple[str, str], ...] = ()
        self._clusterMetadata: dict[str, tuple[tuple[str, str], ...]] = {}
        self.status = 0
        self.body = b""
        self._clusterMode: int | None = None
        self._cumulative: tuple[int, ...] = ()
        self._totalWeight = 0
        self._rewriteMode = _NO_REWRITE
        self._rewrite = b""
        self._prefixLength = 0
        self._dropSlash = False
        self._rewritePattern: re.Pattern[bytes] | None = None
        self._schemeRedirect: bytes | None = None
        self._hostRedirect: bytes | None = None
        self._pathRedirect: bytes | None = None
        action = config.action
        if isinstance(action, RouteActionConfig):
            self.kind = CLUSTER
            self._compileForward(action)
        elif isinstance(action, RedirectActionConfig):
            self.kind = REDIRECT
            self.status = action.responseCode
            self._schemeRedirect = _encoded(action.schemeRedirect)
            self._hostRedirect = _encoded(action.hostRedirect)
            self._pathRedirect = _encoded(action.pathRedirect)
        else:
            assert isinstance(action, DirectResponseActionConfig)
            self.kind = DIRECT
            self.status = action.status
            self.body = action.body.encode("utf-8")

    def _compileMatch(self, config: RouteEntryConfig) -> None:
        match = config.match
        self.matchValue = b""
        self.matchPattern: re.Pattern[bytes] | None = None
        if match.prefix is not None:
            self.matchKind = MATCH_PREFIX
            self.matchValue = match.prefix.encode("utf-8")
        elif match.path is not None:
            self.matchKind = MATCH_PATH
            self.matchValue = match.path.encode("utf-8")
        elif match.regex is not None:
            self.matchKind = MATCH_REGEX
            self.matchPattern = bytesPattern(match.regex)
        else:
            self.matchKind = MATCH_ALL
        matchers: list[HeaderMatcher] = []
        for header in match.headers:
            name = header.name.lower().encode("utf-8")
            if header.regex:
                pattern = header.pattern if header.pattern is not None else re.compile(header.value)
                matchers.append((name, None, bytesPattern(pattern)))
            else:
                matchers.append((name, header.value.encode("utf-8"), None))
        self.headerMatchers: tuple[HeaderMatcher, ...] = tuple(matchers)

    def _compileForward(self, action: RouteActionConfig) -> None:
        if action.clusterName is not None:
            self._clusterMode = _STATIC
            self.clusterName = action.clusterName
            self.clusters = (action.clusterName,)
        elif action.weightedClusters:
            self._clusterMode = _WEIGHTED
            # Zero weights are kept (never chosen): bisect skips an entry equal to the one before it.
            self.clusters = tuple(cluster.name for cluster in action.weightedClusters)
            total, cumulative = 0, []
            for cluster in action.weightedClusters:
                total += cluster.weight
                cumulative.append(total)
            self._cumulative, self._totalWeight = tuple(cumulative), total
        elif action.clusterHeader is not None:
            self._clusterMode = _FROM_HEADER
            self.clusterHeader = action.clusterHeader.lower().encode("utf-8")
        self.hostRewrite = _encoded(action.hostRewrite)
        self.autoHostRewrite = action.autoHostRewrite
        self.timeout = action.timeout
        self.retryPolicy = action.retryPolicy
        self.hashPolicy = action.hashPolicy
        self.metadataMatch = action.metadataMatch
        for weighted in action.weightedClusters:
            if weighted.metadataMatch:
                # Envoy's rule: the weighted cluster's labels override the route's.
                merged = dict(action.metadataMatch)
                merged.update(weighted.metadataMatch)
                self._clusterMetadata[weighted.name] = tuple(sorted(merged.items()))
        if action.prefixRewrite is not None:
            self._rewrite = action.prefixRewrite.encode("utf-8")
            if self.matchKind in (MATCH_PATH, MATCH_REGEX):
                self._rewriteMode = _PATH_REWRITE
            else:
                self._rewriteMode = _PREFIX_REWRITE
                self._prefixLength = len(self.matchValue)
                prefixHasSlash = self.matchValue.endswith(b"/")
                if prefixHasSlash and not self._rewrite.endswith(b"/"):
                    self._rewrite += b"/"
                self._dropSlash = not prefixHasSlash and self._rewrite.endswith(b"/")
        elif action.regexRewrite is not None:
            self._rewriteMode = _REGEX_REWRITE
            self._rewritePattern = bytesPattern(action.regexRewrite.pattern)
            self._rewrite = action.regexRewrite.substitution.encode("utf-8")

    def clusterFor(self, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """
        The cluster for one request: the static name, a weighted choice with the table's random
        generator, or the first value of the cluster header (C{None} when that header is missing or
        empty; the proxy answers 404 as Envoy does).  Always C{None} for a redirect or direct response.
        """
        mode = self._clusterMode
        if mode == _STATIC:
            return self.clusterName
        if mode == _WEIGHTED:
            pick = int(self._rng.random() * self._totalWeight)
            return self.clusters[bisect.bisect_right(self._cumulative, pick)]
        if mode == _FROM_HEADER:
            value = headerValue(headers, self.clusterHeader)  # type: ignore[arg-type]
            return value.decode("latin-1") if value else None
        return None

    def metadataFor(self, cluster: str) -> tuple[tuple[str, str], ...]:
        """
        The subset labels a request sent to C{cluster} asks for (the route's C{metadata_match},
        overridden by the weighted cluster's own).
        """
        return self._clusterMetadata.get(cluster, self.metadataMatch)

    def rewriteTarget(self, target: bytes) -> bytes:
        """
        The request target to send upstream; without a rewrite (or when a regex rewrite changes
        nothing) C{target} itself.

        A prefix rewrite replaces the matched prefix (the whole path, query kept, for a C{path} or
        C{regex} match; nothing, so the rewrite is prepended, for an entry without a path condition).
        Unlike Envoy, the joint is made the way an operator expects: prefix C{/api} rewritten to C{/}
        turns C{/api/x} into C{/x} (not C{//x}), and prefix C{/api/} rewritten to C{/v2} turns C{/api/x}
        into C{/v2/x} (not C{/v2x}).  The result always starts with C{/}.  A regex rewrite substitutes
        every match within the path and keeps the query string.
        """
        mode = self._rewriteMode
        if mode == _NO_REWRITE:
            return target
        if mode == _PREFIX_REWRITE:
            rest = target[self._prefixLength :]
            if self._dropSlash and rest.startswith(b"/"):
                rest = rest[1:]
            result = self._rewrite + rest
        elif mode == _PATH_REWRITE:
            query = target.find(b"?")
            result = self._rewrite if query < 0 else self._rewrite + target[query:]
        else:
            query = target.find(b"?")
            path = target if query < 0 else target[:query]
            rewritten = self._rewritePattern.sub(self._rewrite, path)  # type: ignore[union-attr]
            if rewritten == path:
                return target
            result = rewritten if query < 0 else rewritten + target[query:]
        return result if result.startswith(b"/") else b"/" + result

    def location(self, scheme: bytes, host: bytes, target: bytes) -> bytes:
        """
        The redirect's C{Location} for a request with this C{scheme}, Host and origin-form C{target}.

        Each of C{scheme_redirect}, C{host_redirect} and C{path_redirect} replaces its part.  A
        C{host_redirect} replaces the whole Host, port included.  When only the scheme changes, the
        Host's port is dropped if it is the old scheme's default (C{:80} for http).  A C{path_redirect}
        without C{?} keeps the request's query string; one with C{?} replaces it.  Without any Host the
        location is the path alone (a relative reference).
        """
        newScheme = scheme
        newHost = host
        if self._schemeRedirect is not None and self._schemeRedirect != scheme.lower():
            newScheme = self._schemeRedirect
            defaultPort = _DEFAULT_PORTS.get(scheme.lower())
            if defaultPort is not None and host.endswith(defaultPort):
                newHost = host[: -len(defaultPort)]
        if self._hostRedirect is not None:
            newHost = self._hostRedirect
        path = target
        if self._pathRedirect is not None:
            path = self._pathRedirect
            if b"?" not in path:
                query = target.find(b"?")
                if query >= 0:
                    path += target[query:]
        if not newHost:
            return path
        return newScheme + b"://" + newHost + path

    def __repr__(self) -> str:
        return f"<Route {self.routerName}/{self.virtualHost}[{self.index}] {self.kind}>"


def _encoded(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8")


class VirtualHost:
    """
    A virtual host ready for requests: its name, its config and its L{Route}s in order.
    """

    __slots__ = ("name", "config", "routes")

    def __init__(self, config: VirtualHostConfig, routes: tuple[Route, ...]) -> None:
        self.name = config.name
        self.config = config
        self.routes = routes

    def __repr__(self) -> str:
        return f"<VirtualHost {self.name} ({len(self.routes)} routes)>"
