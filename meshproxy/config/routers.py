"""
Reading MOSN's C{servers[].routers[]} into the route table model of L{meshproxy.config.routemodel}.

Regular expressions are compiled here, so a bad one is a configuration error with its path rather than a
failure on the first request.  Cluster names are checked through a callback, since clusters are read
elsewhere.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable

from meshproxy.config.errors import Problems
from meshproxy.config.jsonvalues import UINT32_MAX, describe, expectInteger
from meshproxy.config.subsets import parseLabels
from meshproxy.config.reader import Fields, KeySpec, iterObjects, tolerateEmpty, tolerateValues
from meshproxy.config.routepolicy import RETRY_POLICY_KEYS, parseHashPolicy, parseRetryPolicy
from meshproxy.config.routemodel import (
    DEFAULT_ROUTE_TIMEOUT,
    DirectResponseActionConfig,
    HeaderEdits,
    HeaderMatcherConfig,
    HeaderValueConfig,
    RedirectActionConfig,
    RegexRewriteConfig,
    RouteActionConfig,
    RouteEntryConfig,
    RouteMatchConfig,
    RouterConfig,
    VirtualHostConfig,
    WeightedClusterConfig,
)

#: Checks that a cluster name exists: C{checkCluster(name, path)} records a problem if not.
ClusterCheck = Callable[[str, str], None]

_HEADER_EDIT_KEYS = (
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
)

ROUTER_KEYS = KeySpec(
    known=("router_config_name", "virtual_hosts") + _HEADER_EDIT_KEYS,
    unsupported={"router_configs": None},
)
VIRTUAL_HOST_KEYS = KeySpec(
    known=("name", "domains", "routers") + _HEADER_EDIT_KEYS,
    unsupported={"require_tls": tolerateValues(False), "per_filter_config": tolerateEmpty()},
)
ROUTE_ENTRY_KEYS = KeySpec(
    known=("match", "route", "redirect", "direct_response"),
    unsupported={
        "metadata": tolerateEmpty(),
        "per_filter_config": tolerateEmpty(),
        "request_mirror_policies": None,
    },
)
MATCH_KEYS = KeySpec(
    known=("prefix", "path", "regex", "headers"),
    unsupported={"variables": tolerateEmpty(), "dsl_expressions": tolerateEmpty()},
)
HEADER_MATCHER_KEYS = KeySpec(known=("name", "value", "regex"))
ROUTE_ACTION_KEYS = KeySpec(
    known=(
        "cluster_name",
        "weighted_clusters",
        "cluster_header",
        "prefix_rewrite",
        "regex_rewrite",
        "host_rewrite",
        "auto_host_rewrite",
        "timeout",
        "retry_policy",
        "hash_policy",
        "metadata_match",
    )
    + _HEADER_EDIT_KEYS,
    unsupported={
        "cluster_variable": tolerateEmpty(),
        "upstream_protocol": tolerateValues("", "Http1"),
        "auto_host_rewrite_header": tolerateEmpty(),
    },
)
WEIGHTED_CLUSTER_KEYS = KeySpec(known=("cluster",))
WEIGHTED_CLUSTER_ENTRY_KEYS = KeySpec(known=("name", "weight", "metadata_match"))
REGEX_REWRITE_KEYS = KeySpec(known=("pattern", "substitution"))
REGEX_PATTERN_KEYS = KeySpec(known=("regex",), unsupported={"google_re2": tolerateEmpty()})
REDIRECT_KEYS = KeySpec(known=("response_code", "path_redirect", "host_redirect", "scheme_redirect"))
DIRECT_RESPONSE_KEYS = KeySpec(known=("status", "body"))
HEADER_ADD_KEYS = KeySpec(known=("header", "append"))
HEADER_VALUE_KEYS = KeySpec(known=("key", "value"))

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TOKEN_TEXT = "letters, digits and !#$%&'*+-.^_`|~ only"
_DOMAIN = re.compile(r"(\*|\*[a-z0-9._-]+|[a-z0-9._-]+\*?|\[[0-9a-f:.%a-z]+\])(?::([0-9]{1,5}))?\Z")
_REDIRECT_CODES = (301, 302, 303, 307, 308)


def parseRouters(
    items: list[tuple[str, Any]], problems: Problems, checkCluster: ClusterCheck
) -> tuple[RouterConfig, ...]:
    """
    Read one server's C{routers} list; router names must be unique within the server, and a domain may
    appear only once across the virtual hosts of one router.
    """
    routers: list[RouterConfig] = []
    seen: dict[str, str] = {}
    for path, fields in iterObjects(items, problems, ROUTER_KEYS):
        name = fields.string("router_config_name", required=True, nonEmpty=True)
        if name in seen:
            fields.problem("router_config_name", f"duplicate router name {name!r} (also {seen[name]})")
        elif name:
            seen[name] = path
        virtualHosts: list[VirtualHostConfig] = []
        domainsSeen: dict[str, str] = {}
        vhosts = fields.items("virtual_hosts", required=True, nonEmpty=True)
        for _, vhost in iterObjects(vhosts, problems, VIRTUAL_HOST_KEYS):
            domains = _domains(vhost)
            for domain, domainPath in domains:
                if domain in domainsSeen:
                    problems.add(
                        domainPath,
                        f"domain {domain!r} is listed twice in router {name!r} (also {domainsSeen[domain]})",
                    )
                else:
                    domainsSeen[domain] = domainPath
            routes = []
            entries = vhost.items("routers", required=True, nonEmpty=True)
            for entryPath, entry in iterObjects(entries, problems, ROUTE_ENTRY_KEYS):
                routes.append(_routeEntry(entry, entryPath, checkCluster))
            virtualHosts.append(
                VirtualHostConfig(
                    name=vhost.string("name") or f"{name}#{len(virtualHosts)}",
                    domains=tuple(domain for domain, _ in domains),
                    routes=tuple(routes),
                    headerEdits=_headerEdits(vhost),
                )
            )
        routers.append(
            RouterConfig(
                routerConfigName=name, virtualHosts=tuple(virtualHosts), headerEdits=_headerEdits(fields)
            )
        )
    return tuple(routers)


def _domains(vhost: Fields) -> list[tuple[str, str]]:
    """
    The valid domains of a virtual host, lower-cased, each with its path.
    """
    domains = []
    for path, element in vhost.items("domains", required=True, nonEmpty=True):
        checked = _checkedDomain(element) if isinstance(element, str) else None
        if checked is None:
            vhost.problems.add(
                path,
                f"{describe(element)} is not a valid domain: expected an exact host name, '*.suffix', "
                "'prefix*', '*', or any of these with ':port'",
            )
        else:
            domains.append((checked, path))
    return domains


def _checkedDomain(domain: str) -> str | None:
    lowered = domain.lower()
    match = _DOMAIN.match(lowered)
    if match is None:
        return None
    host, port = match.group(1), match.group(2)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    if port is not None and not 1 <= int(port) <= 65535:
        return None
    return lowered


def _routeEntry(fields: Fields, path: str, checkCluster: ClusterCheck) -> RouteEntryConfig:
    match = _routeMatch(fields.object("match", MATCH_KEYS))
    actions = [key for key in ("route", "redirect", "direct_response") if fields.raw(key) is not None]
    if len(actions) != 1:
        given = ", ".join(actions) if actions else "none"
        fields.problems.add(
            path,
            f"a route entry needs exactly one of 'route', 'redirect' and 'direct_response' (given: {given})",
        )
    route = redirect = direct = None
    action = fields.object("route", ROUTE_ACTION_KEYS)
    if action is not None:
        route = _routeAction(action, checkCluster)
    redirectFields = fields.object("redirect", REDIRECT_KEYS)
    if redirectFields is not None:
        redirect = _redirect(redirectFields)
    directFields = fields.object("direct_response", DIRECT_RESPONSE_KEYS)
    if directFields is not None:
        direct = DirectResponseActionConfig(
            status=directFields.integer("status", 200, 100, 599, required=True),
            body=directFields.string("body"),
        )
    return RouteEntryConfig(match=match, route=route, redirect=redirect, directResponse=direct)


def _compile(fields: Fields, key: str) -> re.Pattern[str] | None:
    pattern = fields.string(key)
    if not fields.has(key) or not isinstance(fields.raw(key), str):
        return None
    return compileRegex(pattern, fields.pathOf(key), fields.problems)


def compileRegex(pattern: str, path: str, problems: Problems) -> re.Pattern[str] | None:
    """
    Compile a regular expression, recording a problem if it is invalid.
    """
    try:
        return re.compile(pattern)
    except re.error as e:
        problems.add(path, f"{describe(pattern)} is not a valid regular expression: {e}")
        return None


def _routeMatch(fields: Fields | None) -> RouteMatchConfig:
    if fields is None:
        return RouteMatchConfig()
    given = [key for key in ("prefix", "path", "regex") if fields.has(key)]
    if len(given) > 1:
        fields.problems.add(
            fields.path, f"give at most one of 'prefix', 'path' and 'regex' (given: {', '.join(given)})"
        )
    for key in ("prefix", "path"):
        value = fields.string(key)
        if fields.has(key) and isinstance(fields.raw(key), str) and not value.startswith("/"):
            fields.problem(key, f"{describe(value)} does not start with '/': expected a path such as '/api/'")
    headers = []
    for path, header in iterObjects(fields.items("headers"), fields.problems, HEADER_MATCHER_KEYS):
        name = _headerName(header, "name")
        isRegex = header.boolean("regex")
        value = header.string("value", required=True)
        pattern = _compile(header, "value") if isRegex else None
        headers.append(HeaderMatcherConfig(name=name, value=value, regex=isRegex, pattern=pattern))
    return RouteMatchConfig(
        prefix=fields.string("prefix") if fields.has("prefix") else None,
        path=fields.string("path") if fields.has("path") else None,
        regex=_compile(fields, "regex"),
        headers=tuple(headers),
    )


def _routeAction(fields: Fields, checkCluster: ClusterCheck) -> RouteActionConfig:
    given = [
        key
        for key in ("cluster_name", "weighted_clusters", "cluster_header")
        if fields.raw(key) not in (None, "", [])
    ]
    if len(given) != 1:
        shown = ", ".join(given) if given else "none"
        fields.problems.add(
            fields.path,
            "a route needs exactly one of 'cluster_name', 'weighted_clusters' and 'cluster_header' "
            f"(given: {shown})",
        )
    clusterName = fields.optionalString("cluster_name")
    if clusterName is not None:
        checkCluster(clusterName, fields.pathOf("cluster_name"))
    weighted = []
    for path, item in iterObjects(fields.items("weighted_clusters"), fields.problems, WEIGHTED_CLUSTER_KEYS):
        entry = item.object("cluster", WEIGHTED_CLUSTER_ENTRY_KEYS, required=True)
        if entry is not None:
            name = entry.string("name", required=True, nonEmpty=True)
            if name:
                checkCluster(name, entry.pathOf("name"))
            weighted.append(WeightedClusterConfig(
                name=name,
                weight=entry.integer("weight", 1, 0, UINT32_MAX),
                metadataMatch=parseLabels(entry, "metadata_match"),
            ))
    if weighted and sum(cluster.weight for cluster in weighted) == 0:
        fields.problem("weighted_clusters", "the weights add up to 0: expected at least one positive weight")
    if fields.raw("prefix_rewrite") is not None and fields.raw("regex_rewrite") is not None:
        fields.problems.add(fields.path, "give at most one of 'prefix_rewrite' and 'regex_rewrite'")
    if fields.raw("host_rewrite") and fields.boolean("auto_host_rewrite"):
        fields.problems.add(fields.path, "give at most one of 'host_rewrite' and 'auto_host_rewrite'")
    clusterHeader = fields.optionalString("cluster_header")
    if clusterHeader is not None:
        _headerName(fields, "cluster_header")
    return RouteActionConfig(
        clusterName=clusterName,
        weightedClusters=tuple(weighted),
        clusterHeader=clusterHeader,
        prefixRewrite=fields.string("prefix_rewrite") if fields.raw("prefix_rewrite") is not None else None,
        regexRewrite=_regexRewrite(fields.object("regex_rewrite", REGEX_REWRITE_KEYS)),
        hostRewrite=fields.optionalString("host_rewrite"),
        autoHostRewrite=fields.boolean("auto_host_rewrite"),
        timeout=fields.duration("timeout", DEFAULT_ROUTE_TIMEOUT, positive=True) or DEFAULT_ROUTE_TIMEOUT,
        retryPolicy=parseRetryPolicy(fields.object("retry_policy", RETRY_POLICY_KEYS)),
        headerEdits=_headerEdits(fields),
        hashPolicy=parseHashPolicy(fields),
        metadataMatch=parseLabels(fields, "metadata_match"),
    )


def _regexRewrite(fields: Fields | None) -> RegexRewriteConfig | None:
    if fields is None:
        return None
    patternFields = fields.object("pattern", REGEX_PATTERN_KEYS, required=True)
    substitution = fields.string("substitution")
    if patternFields is None:
        return None
    patternFields.string("regex", required=True, nonEmpty=True)
    pattern = _compile(patternFields, "regex")
    if pattern is None:
        return None
    return RegexRewriteConfig(pattern=pattern, substitution=substitution)


def _redirect(fields: Fields) -> RedirectActionConfig:
    code = fields.integer("response_code", 301, 300, 399)
    if code not in _REDIRECT_CODES:
        fields.problem(
            "response_code", f"{code} is not a redirect status: expected one of 301, 302, 303, 307, 308"
        )
        code = 301
    path = fields.optionalString("path_redirect")
    if path is not None and not path.startswith("/"):
        fields.problem(
            "path_redirect", f"{describe(path)} does not start with '/': expected a path such as '/new/'"
        )
    scheme = fields.optionalString("scheme_redirect")
    if scheme is not None and scheme not in ("http", "https"):
        fields.problem("scheme_redirect", f"{describe(scheme)} is not a scheme: expected 'http' or 'https'")
    return RedirectActionConfig(
        responseCode=code,
        pathRedirect=path,
        hostRedirect=fields.optionalString("host_redirect"),
        schemeRedirect=scheme,
    )


def _headerName(fields: Fields, key: str) -> str:
    name = fields.string(key, required=True, nonEmpty=True)
    if name and not _TOKEN.match(name):
        fields.problem(key, f"{describe(name)} is not a valid header name: expected {_TOKEN_TEXT}")
    return name


def _headerEdits(fields: Fields) -> HeaderEdits:
    return HeaderEdits(
        requestHeadersToAdd=_headersToAdd(fields, "request_headers_to_add"),
        requestHeadersToRemove=_headersToRemove(fields, "request_headers_to_remove"),
        responseHeadersToAdd=_headersToAdd(fields, "response_headers_to_add"),
        responseHeadersToRemove=_headersToRemove(fields, "response_headers_to_remove"),
    )


def _headersToAdd(fields: Fields, key: str) -> tuple[HeaderValueConfig, ...]:
    result = []
    for path, item in iterObjects(fields.items(key), fields.problems, HEADER_ADD_KEYS):
        header = item.object("header", HEADER_VALUE_KEYS, required=True)
        if header is None:
            continue
        name = _headerName(header, "key")
        value = header.string("value")
        if any(character in value for character in "\r\n\0"):
            header.problem(
                "value", f"{describe(value)} contains a line break or NUL: expected a header value"
            )
        result.append(HeaderValueConfig(key=name, value=value, append=item.boolean("append")))
    return tuple(result)


def _headersToRemove(fields: Fields, key: str) -> tuple[str, ...]:
    names = []
    for path, element in fields.items(key):
        if not isinstance(element, str) or not _TOKEN.match(element):
            fields.problems.add(
                path, f"{describe(element)} is not a valid header name: expected {_TOKEN_TEXT}"
            )
        else:
            names.append(element)
    return tuple(names)
