"""
Why a request goes where it goes: the JSON-ready account behind the admin's C{GET /api/v1/explain}.

It replays the route table's decision step by step in words (which domain chose the virtual host and in
which precedence class, why each earlier entry did not match, what the chosen one does).  It is for
operators, not the hot path: it may decode and allocate freely, but it evaluates the same compiled
conditions as L{meshproxy.routing.route.firstMatch}, so the two cannot disagree.
"""

from __future__ import annotations

from typing import Any, Sequence

from meshproxy.config.routemodel import RetryPolicyConfig, RouteActionConfig
from meshproxy.routing.domains import CATCH_ALL, DomainMatch, DomainTable, classifyDomain
from meshproxy.routing.edits import HeaderAdd
from meshproxy.routing.route import (
    CLUSTER,
    MATCH_PATH,
    MATCH_PREFIX,
    MATCH_REGEX,
    REDIRECT,
    HeaderMatcher,
    Route,
    VirtualHost,
    headerMatches,
    pathOf,
)

Headers = Sequence[tuple[bytes, bytes]]


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _quoted(value: bytes) -> str:
    return repr(value.decode("utf-8", "replace"))


def describeMatch(route: Route) -> str:
    """
    The entry's conditions in words, e.g. C{"prefix '/api' and header 'x-env' = 'prod'"}.
    """
    if route.matchKind == MATCH_PREFIX:
        parts = [f"prefix {_quoted(route.matchValue)}"]
    elif route.matchKind == MATCH_PATH:
        parts = [f"path {_quoted(route.matchValue)}"]
    elif route.matchKind == MATCH_REGEX:
        assert route.matchPattern is not None
        parts = [f"regex {_quoted(route.matchPattern.pattern)}"]
    else:
        parts = ["any path"]
    parts.extend(_describeHeader(matcher) for matcher in route.headerMatchers)
    return " and ".join(parts)


def _describeHeader(matcher: HeaderMatcher) -> str:
    name, exact, pattern = matcher
    if pattern is None:
        assert exact is not None
        return f"header {_quoted(name)} = {_quoted(exact)}"
    return f"header {_quoted(name)} ~ regex {_quoted(pattern.pattern)}"


def explainMatch(route: Route, target: bytes, headers: Headers) -> tuple[bool, str]:
    """
    Whether C{route} matches, and why: the first condition that fails, or all that hold.
    """
    path = pathOf(target)
    held = []
    if route.matchKind == MATCH_PREFIX:
        if not target.startswith(route.matchValue):
            return False, f"prefix {_quoted(route.matchValue)} does not match {_quoted(target)}"
        held.append(f"prefix {_quoted(route.matchValue)} matches {_quoted(target)}")
    elif route.matchKind == MATCH_PATH:
        if path != route.matchValue:
            return False, f"path {_quoted(route.matchValue)} is not {_quoted(path)} (query ignored)"
        held.append(f"path {_quoted(route.matchValue)} is {_quoted(path)}")
    elif route.matchKind == MATCH_REGEX:
        assert route.matchPattern is not None
        regex = _quoted(route.matchPattern.pattern)
        if route.matchPattern.fullmatch(path) is None:
            return False, f"regex {regex} does not fully match {_quoted(path)} (query ignored)"
        held.append(f"regex {regex} fully matches {_quoted(path)}")
    else:
        held.append("no path condition")
    for matcher in route.headerMatchers:
        name = matcher[0]
        values = [value for key, value in headers if key.lower() == name]
        if not values:
            return False, f"header {_quoted(name)} missing"
        shown = ", ".join(_quoted(value) for value in values)
        if not headerMatches(matcher, headers):
            return False, f"header {_quoted(name)} value {shown} does not satisfy {_describeHeader(matcher)}"
        held.append(f"header {_quoted(name)} value {shown} satisfies {_describeHeader(matcher)}")
    return True, "; ".join(held)


def _retry(policy: RetryPolicyConfig | None) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {
        "retryOn": policy.retryOn,
        "retryTimeout": policy.retryTimeout,
        "numRetries": policy.numRetries,
        "statusCodes": list(policy.statusCodes),
    }


def _adds(adds: tuple[HeaderAdd, ...]) -> list[dict[str, Any]]:
    return [{"name": _text(add.name), "value": add.template, "append": add.append} for add in adds]


def describeAction(
    route: Route, scheme: bytes, host: bytes | None, target: bytes, headers: Headers
) -> dict[str, Any]:
    """
    What the chosen entry does with this request, JSON-ready.  A weighted split is shown, not drawn.
    """
    action: dict[str, Any] = {"kind": route.kind, "virtualHost": route.virtualHost, "index": route.index}
    if route.kind == CLUSTER:
        config = route.config.action
        assert isinstance(config, RouteActionConfig)
        if config.weightedClusters:
            total = sum(cluster.weight for cluster in config.weightedClusters)
            action["cluster"] = None
            action["weightedClusters"] = [
                {
                    "name": cluster.name,
                    "weight": cluster.weight,
                    "percent": round(100 * cluster.weight / total, 2),
                }
                for cluster in config.weightedClusters
            ]
        elif route.clusterHeader is not None:
            action["clusterHeader"] = _text(route.clusterHeader)
            action["cluster"] = route.clusterFor(headers)
            if action["cluster"] is None:
                action["note"] = "the cluster header is missing: the proxy answers 404"
        else:
            action["cluster"] = route.clusterName
        action["upstreamTarget"] = _text(route.rewriteTarget(target))
        action["hostRewrite"] = _text(route.hostRewrite)
        action["autoHostRewrite"] = route.autoHostRewrite
        action["timeout"] = route.timeout
        action["retryPolicy"] = _retry(route.retryPolicy)
    elif route.kind == REDIRECT:
        action["status"] = route.status
        action["location"] = _text(route.location(scheme, host or b"", target))
    else:
        action["status"] = route.status
        action["body"] = route.body.decode("utf-8", "replace")
    action["requestHeadersToRemove"] = sorted(_text(name) for name in route.requestHeadersToRemove)
    action["requestHeadersToAdd"] = _adds(route.requestHeadersToAdd)
    action["responseHeadersToRemove"] = sorted(_text(name) for name in route.responseHeadersToRemove)
    action["responseHeadersToAdd"] = _adds(route.responseHeadersToAdd)
    return action


def _describeDomain(match: DomainMatch[Any]) -> str:
    host = repr(match.host if match.port is None else f"{match.host}:{match.port}")
    if match.precedence == CATCH_ALL:
        reason = f"no exact or wildcard domain matches host {host}; catch-all {match.domain!r} does"
    else:
        reason = f"host {host} matches {match.precedence} domain {match.domain!r}"
    if match.port is not None and classifyDomain(match.domain)[2] is None:
        reason += " (the domain names no port, so any port matches)"
    return reason


def explainRequest(
    routerName: str,
    domains: DomainTable[VirtualHost],
    host: bytes | None,
    target: bytes,
    method: bytes,
    headers: Headers,
) -> dict[str, Any]:
    """
    The whole account for one request (see L{meshproxy.routing.table.RouteTable.explain}).
    """
    result: dict[str, Any] = {
        "router": routerName,
        "request": {
            "host": _text(host),
            "target": _text(target),
            "method": _text(method),
            "headers": [[_text(name), _text(value)] for name, value in headers],
        },
        "virtualHost": None,
        "routes": [],
        "action": None,
    }
    match = domains.lookup(host)
    if match is None:
        result["outcome"] = (
            f"no virtual host of router {routerName!r} has a domain matching host {_text(host)!r}: "
            "the proxy answers 404"
        )
        result["status"] = 404
        return result
    vhost = match.value
    result["virtualHost"] = {
        "name": vhost.name,
        "domain": match.domain,
        "precedence": match.precedence,
        "reason": _describeDomain(match),
    }
    for route in vhost.routes:
        matched, reason = explainMatch(route, target, headers)
        result["routes"].append(
            {"index": route.index, "match": describeMatch(route), "matched": matched, "reason": reason}
        )
        if matched:
            action = describeAction(route, b"http", host, target, headers)
            result["action"] = action
            result["status"] = action.get("status")
            if route.kind == CLUSTER:
                cluster = action.get("cluster") or "a weighted choice"
                if route.clusterHeader is not None and action["cluster"] is None:
                    result["status"] = 404
                    result["outcome"] = f"route {route.index} matches, but {action['note']}"
                else:
                    result["outcome"] = f"route {route.index} matches: forward to {cluster}"
            else:
                result["outcome"] = f"route {route.index} matches: answer {route.kind} {route.status}"
            return result
    result["outcome"] = f"no route entry of virtual host {vhost.name!r} matches: the proxy answers 404"
    result["status"] = 404
    return result
