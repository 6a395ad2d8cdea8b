"""
The HTTP route table part of the configuration model: routers, virtual hosts and route entries.

These are MOSN's C{servers[].routers[]} as frozen values, with every default filled in and every regular
expression compiled.  L{meshproxy.config.routers} reads them from JSON.
"""

from __future__ import annotations

import re

import attrs

#: MOSN's route timeout when none is given (not Envoy's 15 s).
DEFAULT_ROUTE_TIMEOUT = 60.0


@attrs.frozen
class HeaderValueConfig:
    """
    A header to add (MOSN C{{"header": {"key": k, "value": v}, "append": bool}}).

    @ivar value: may hold MOSN C{%variable%} references, expanded per request.
    @ivar append: add to existing values instead of replacing them.
    """

    key: str
    value: str
    append: bool = False


@attrs.frozen
class HeaderEdits:
    """
    Header additions and removals at one level (router, virtual host or route).
    """

    requestHeadersToAdd: tuple[HeaderValueConfig, ...] = ()
    requestHeadersToRemove: tuple[str, ...] = ()
    responseHeadersToAdd: tuple[HeaderValueConfig, ...] = ()
    responseHeadersToRemove: tuple[str, ...] = ()


@attrs.frozen
class HeaderMatcherConfig:
    """
    A request header condition: C{name} equal to C{value}, or matching C{pattern} when C{regex} is set.
    """

    name: str
    value: str
    regex: bool = False
    pattern: re.Pattern[str] | None = None


@attrs.frozen
class RouteMatchConfig:
    """
    What a route entry matches: at most one of C{prefix}, C{path} and C{regex}, plus all of C{headers}.

    An entry with none of them matches every request (MOSN's header-only rule with no headers).
    """

    prefix: str | None = None
    path: str | None = None
    regex: re.Pattern[str] | None = None
    headers: tuple[HeaderMatcherConfig, ...] = ()


@attrs.frozen
class WeightedClusterConfig:
    """
    One cluster of a weighted split, chosen with probability C{weight} over the total.
    """

    name: str
    weight: int
    metadataMatch: tuple[tuple[str, str], ...] = ()


#: Envoy's C{retry_on} conditions meshproxy implements.
RETRY_CONDITIONS = ("connect-failure", "reset", "5xx", "gateway-error", "retriable-status-codes")


@attrs.frozen
class RetryPolicyConfig:
    """
    A route's retry policy: MOSN's C{retry_policy}, with Envoy's C{retry_on} conditions and back-off.

    @ivar retryOn: whether the policy is on (MOSN's C{retry_on: true}, or any Envoy condition).
    @ivar conditions: what is retried: a subset of L{RETRY_CONDITIONS}.  MOSN's C{retry_on: true}
        means C{connect-failure}, C{reset} and C{retriable-status-codes}.
    @ivar retryTimeout: the per-try timeout in seconds, or L{None} for the route timeout.
    @ivar statusCodes: response statuses that count as failures to retry.
    @ivar backoffBase: seconds; the n-th retry waits a random time up to C{backoffBase * 2**(n-1)}
        (full jitter), at most C{backoffMax}.
    """

    retryOn: bool = False
    retryTimeout: float | None = None
    numRetries: int = 0
    statusCodes: tuple[int, ...] = ()
    conditions: frozenset[str] = frozenset()
    backoffBase: float = 0.025
    backoffMax: float = 0.25


@attrs.frozen
class HashPolicyConfig:
    """
    One of a route's C{hash_policy} entries: what a consistent-hashing load balancer hashes.

    @ivar kind: C{"header"}, C{"cookie"} or C{"source_ip"}.
    @ivar name: the header's or the cookie's name (lower case for a header).
    @ivar path: the generated cookie's C{Path}.
    @ivar ttl: for a cookie: when set and the request has none, one is generated with this lifetime in
        seconds (a sticky session; under a second, a session cookie, as in Envoy); L{None}: never generate.
    """

    kind: str
    name: str = ""
    path: str = ""
    ttl: float | None = None


@attrs.frozen
class RegexRewriteConfig:
    """
    Replace what C{pattern} matches in the path with C{substitution} (C{\\1} style group references).
    """

    pattern: re.Pattern[str]
    substitution: str


@attrs.frozen
class RouteActionConfig:
    """
    Forward to a cluster: exactly one of C{clusterName}, C{weightedClusters} and C{clusterHeader}.

    @ivar clusterHeader: the request header whose value names the cluster, looked up per request.
    @ivar timeout: seconds to wait for the response headers.
    """

    clusterName: str | None = None
    weightedClusters: tuple[WeightedClusterConfig, ...] = ()
    clusterHeader: str | None = None
    prefixRewrite: str | None = None
    regexRewrite: RegexRewriteConfig | None = None
    hostRewrite: str | None = None
    autoHostRewrite: bool = False
    timeout: float = DEFAULT_ROUTE_TIMEOUT
    retryPolicy: RetryPolicyConfig | None = None
    headerEdits: HeaderEdits = HeaderEdits()
    hashPolicy: tuple[HashPolicyConfig, ...] = ()
    metadataMatch: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class RedirectActionConfig:
    """
    Answer with a redirect; each C{None} part keeps the request's own.
    """

    responseCode: int = 301
    pathRedirect: str | None = None
    hostRedirect: str | None = None
    schemeRedirect: str | None = None


@attrs.frozen
class DirectResponseActionConfig:
    """
    Answer directly with C{status} and C{body}.
    """

    status: int
    body: str = ""


RouteActionType = RouteActionConfig | RedirectActionConfig | DirectResponseActionConfig


@attrs.frozen
class RouteEntryConfig:
    """
    One route entry (MOSN C{virtual_hosts[].routers[]}): a match and exactly one of C{route}, C{redirect}
    and C{directResponse}.
    """

    match: RouteMatchConfig
    route: RouteActionConfig | None = None
    redirect: RedirectActionConfig | None = None
    directResponse: DirectResponseActionConfig | None = None

    @property
    def action(self) -> RouteActionType:
        """
        Whichever of C{route}, C{redirect} and C{directResponse} is set.
        """
        action = self.route or self.redirect or self.directResponse
        assert action is not None, "a route entry has exactly one action"
        return action


@attrs.frozen
class VirtualHostConfig:
    """
    A virtual host: the C{domains} it answers for (lower case: exact, C{*.suffix}, C{prefix*}, C{*}, or with
    a C{:port}) and its route entries, tried in order.
    """

    name: str
    domains: tuple[str, ...]
    routes: tuple[RouteEntryConfig, ...]
    headerEdits: HeaderEdits = HeaderEdits()


@attrs.frozen
class RouterConfig:
    """
    A named route table (MOSN C{router_config_name}) that C{proxy} filters of the same server refer to.
    """

    routerConfigName: str
    virtualHosts: tuple[VirtualHostConfig, ...]
    headerEdits: HeaderEdits = HeaderEdits()
