"""
Header edits of the route table: merged across router, virtual host and route once, at build time.

MOSN lets each of the three levels add and remove request and response headers.  Each route gets one
L{MergedHeaderEdits} value with all levels folded in, so the proxy applies a flat list per request:

 - B{removals first}: every name any level removes (lower-cased, a set);
 - B{then additions, in order}: router level, then virtual host, then route.  An addition with
   C{append=False} replaces whatever values the header has at that point (from the request or an earlier
   addition); with C{append=True} it adds one more value.  So for the same header without append the
   B{most specific level wins}, as with Envoy's C{most_specific_header_mutations_wins}.  Additions that a
   later replacing addition would overwrite anyway are dropped at build time.

An addition's value may reference MOSN variables as C{%name%} (names are case-insensitive; C{%%} is a
literal C{%}; a C{%} that does not start a reference is literal).  Only the names in
L{KNOWN_HEADER_VARIABLES} exist: L{unknownHeaderVariables} lists the others so that configuration checking
can reject them, and L{meshproxy.routing.table.RouteTable} refuses to build with any.
"""

from __future__ import annotations

import re
from typing import Iterator, Mapping, Sequence

import attrs

from meshproxy.config.routemodel import HeaderEdits as HeaderEditsConfig
from meshproxy.config.routemodel import HeaderValueConfig, RouteActionConfig, RouterConfig

#: The variables a header value may reference; the HTTP proxy supplies each one a route asks for.
KNOWN_HEADER_VARIABLES = frozenset(
    {
        "downstream_remote_address",
        "downstream_local_address",
        "downstream_protocol",
        "request_id",
    }
)

_REFERENCE = re.compile(r"%(?:(%)|([A-Za-z_][A-Za-z0-9_]*)%)")


def _parseTemplate(template: str) -> tuple[bytes | str, ...]:
    """
    A value template as literal C{bytes} parts and variable names (lower-cased C{str} parts).
    """
    parts: list[bytes | str] = []
    literal: list[str] = []
    position = 0
    for reference in _REFERENCE.finditer(template):
        literal.append(template[position : reference.start()])
        position = reference.end()
        if reference.group(1):
            literal.append("%")
        else:
            if literal:
                parts.append("".join(literal).encode("utf-8"))
                literal = []
            parts.append(reference.group(2).lower())
    literal.append(template[position:])
    text = "".join(literal)
    if text:
        parts.append(text.encode("utf-8"))
    return tuple(part for part in parts if part != b"")


class HeaderAdd:
    """
    One header to add, with its value template precompiled.

    @ivar name: the header name as configured (C{bytes}), for writing.
    @ivar lowerName: the same, lower-cased, for replacing existing values.
    @ivar append: add a value (C{True}) or replace all existing values (C{False}).
    @ivar template: the configured value text.
    @ivar variables: the variable names the value references, in order.
    """

    __slots__ = ("name", "lowerName", "append", "template", "variables", "_parts", "_constant")

    def __init__(self, config: HeaderValueConfig) -> None:
        self.name = config.key.encode("utf-8")
        self.lowerName = self.name.lower()
        self.append = config.append
        self.template = config.value
        self._parts = _parseTemplate(config.value)
        self.variables = tuple(part for part in self._parts if isinstance(part, str))
        self._constant: bytes | None = None
        if not self.variables:
            self._constant = b"".join(part for part in self._parts if isinstance(part, bytes))

    def value(self, variables: Mapping[str, bytes]) -> bytes:
        """
        The value for one request; C{variables} maps each name in L{variables} to its bytes (a name it
        lacks expands to nothing).  A value without references is the same object every time.
        """
        if self._constant is not None:
            return self._constant
        return b"".join(
            [part if isinstance(part, bytes) else variables.get(part, b"") for part in self._parts]
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeaderAdd):
            return NotImplemented
        return (self.name, self.append, self.template) == (other.name, other.append, other.template)

    def __hash__(self) -> int:
        return hash((self.name, self.append, self.template))

    def __repr__(self) -> str:
        return f"HeaderAdd({self.name!r}, {self.template!r}, append={self.append})"


@attrs.frozen
class MergedHeaderEdits:
    """
    The header edits of one route with every level merged (see the module docstring for the order).

    @ivar requestVariables: every variable the request additions reference, so the proxy computes only
        those.
    """

    requestHeadersToRemove: frozenset[bytes] = frozenset()
    requestHeadersToAdd: tuple[HeaderAdd, ...] = ()
    responseHeadersToRemove: frozenset[bytes] = frozenset()
    responseHeadersToAdd: tuple[HeaderAdd, ...] = ()
    requestVariables: frozenset[str] = frozenset()
    responseVariables: frozenset[str] = frozenset()


def _mergeAdds(levels: Iterator[tuple[HeaderValueConfig, ...]]) -> tuple[HeaderAdd, ...]:
    merged: list[HeaderAdd] = []
    for level in levels:
        for config in level:
            add = HeaderAdd(config)
            if not add.append:
                merged = [earlier for earlier in merged if earlier.lowerName != add.lowerName]
            merged.append(add)
    return tuple(merged)


def mergeHeaderEdits(levels: Sequence[HeaderEditsConfig]) -> MergedHeaderEdits:
    """
    Fold the edits of several levels, given least specific first (router, virtual host, route).
    """
    requestAdds = _mergeAdds(level.requestHeadersToAdd for level in levels)
    responseAdds = _mergeAdds(level.responseHeadersToAdd for level in levels)
    return MergedHeaderEdits(
        requestHeadersToRemove=frozenset(
            name.lower().encode("utf-8") for level in levels for name in level.requestHeadersToRemove
        ),
        requestHeadersToAdd=requestAdds,
        responseHeadersToRemove=frozenset(
            name.lower().encode("utf-8") for level in levels for name in level.responseHeadersToRemove
        ),
        responseHeadersToAdd=responseAdds,
        requestVariables=frozenset(name for add in requestAdds for name in add.variables),
        responseVariables=frozenset(name for add in responseAdds for name in add.variables),
    )


def _unknownIn(edits: HeaderEditsConfig, prefix: str) -> Iterator[tuple[str, str]]:
    for key, adds in (
        ("request_headers_to_add", edits.requestHeadersToAdd),
        ("response_headers_to_add", edits.responseHeadersToAdd),
    ):
        for index, add in enumerate(adds):
            for part in _parseTemplate(add.value):
                if isinstance(part, str) and part not in KNOWN_HEADER_VARIABLES:
                    yield f"{prefix}{key}[{index}].header.value", part


def unknownHeaderVariables(config: RouterConfig) -> list[tuple[str, str]]:
    """
    Every C{%variable%} reference to a name outside L{KNOWN_HEADER_VARIABLES}, as C{(path, name)} pairs.

    Paths are JSON paths relative to the router object, such as
    C{"virtual_hosts[0].routers[2].route.request_headers_to_add[0].header.value"}; prefix them with the
    router's own path (C{"servers[0].routers[1]."}) to report them.
    """
    found = list(_unknownIn(config.headerEdits, ""))
    for hostIndex, vhost in enumerate(config.virtualHosts):
        vhostPath = f"virtual_hosts[{hostIndex}]."
        found.extend(_unknownIn(vhost.headerEdits, vhostPath))
        for routeIndex, entry in enumerate(vhost.routes):
            if isinstance(entry.route, RouteActionConfig):
                routePath = f"{vhostPath}routers[{routeIndex}].route."
                found.extend(_unknownIn(entry.route.headerEdits, routePath))
    return found
