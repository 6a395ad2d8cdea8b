"""
Virtual host selection by the request's Host: Envoy's domain precedence, in bytes, with a bounded cache.

A router's virtual hosts each list C{domains}.  For one request the host is looked up in this order, the
first hit winning:

 1. exact names (C{example.com}), a dict lookup;
 2. suffix wildcards (C{*.example.com}, C{*-bar.example.com}), longest suffix first;
 3. prefix wildcards (C{foo*}), longest prefix first;
 4. the catch-all C{*}.

A wildcard's C{*} stands for at least one character, so C{*.example.com} does not match C{example.com}.
Matching is case-insensitive.  The Host's port is ignored unless a domain names one: C{example.com:8080}
matches only a Host carrying port 8080, C{example.com} matches that host with any port or none.  Within one
class and length a domain with a port wins over the same domain without one.  One trailing dot is dropped from
both sides (C{example.com.} is the same DNS name as C{example.com}), and IPv6 literals are compared in their
compressed form (C{[0:0::1]} is C{[::1]}).  A Host that is absent (HTTP/1.0) or empty matches only C{*}.

Scanning wildcards costs a few microseconds, so L{DomainTable.select} remembers the answer (hit or miss) for
each raw Host value it has seen, up to a bound; the cache is emptied when full, which keeps memory bounded
when clients send endless distinct hosts.  The cache is keyed by the raw value, so the per-request cost of a
known host is one dict lookup with no lower-casing or splitting.
"""

from __future__ import annotations

import ipaddress
from typing import Generic, Iterable, TypeVar

import attrs

T = TypeVar("T")

#: The precedence classes, in order, as L{DomainMatch.precedence} names them.
EXACT = "exact"
SUFFIX = "suffix wildcard"
PREFIX = "prefix wildcard"
CATCH_ALL = "catch-all"

#: How many distinct Host values L{DomainTable} remembers before it starts over.
DEFAULT_CACHE_SIZE = 4096

_MISSING = object()


def _normalIPv6(text: bytes) -> bytes | None:
    """
    The bracketed compressed form of an IPv6 literal (without brackets in C{text}), or C{None}.
    """
    try:
        address = ipaddress.IPv6Address(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    return b"[" + address.compressed.encode("ascii") + b"]"


def splitHost(host: bytes | None) -> tuple[bytes, int | None]:
    """
    Split a Host value into its lower-cased name and its port (C{None} when absent or empty).

    IPv6 literals keep their brackets (C{[::1]:8080} gives C{(b"[::1]", 8080)}) and are compressed; a bare
    IPv6 address without brackets is taken whole rather than split at its last colon.  One trailing dot is
    dropped.  A value that is not a valid C{host[:port]} is returned whole as the name, so it can only match
    wildcards (the HTTP codec is where malformed Hosts are refused).
    """
    if not host:
        return b"", None
    lowered = host.lower()
    port: int | None = None
    if lowered.startswith(b"["):
        end = lowered.find(b"]")
        if end < 0:
            return lowered, None
        rest = lowered[end + 1 :]
        if rest.startswith(b":") and (rest == b":" or (rest[1:].isdigit() and len(rest) <= 6)):
            port = int(rest[1:]) if len(rest) > 1 else None
        elif rest:
            return lowered, None
        name = _normalIPv6(lowered[1:end])
        return (lowered[: end + 1] if name is None else name), port
    colons = lowered.count(b":")
    if colons > 1:
        return _normalIPv6(lowered) or lowered, None
    name = lowered
    if colons == 1:
        name, _, digits = lowered.partition(b":")
        if digits.isdigit() and len(digits) <= 5:
            port = int(digits)
        elif digits:
            return lowered, None
    if name.endswith(b"."):
        name = name[:-1]
    return name, port


@attrs.frozen
class DomainMatch(Generic[T]):
    """
    Why a host selected a value: the C{domain} as configured and its C{precedence} class (L{EXACT},
    L{SUFFIX}, L{PREFIX} or L{CATCH_ALL}); C{host} and C{port} are the request's, as normalised for matching.
    """

    value: T
    domain: str
    precedence: str
    host: str
    port: int | None


class DomainTable(Generic[T]):
    """
    Maps a Host to the value (a virtual host) whose domain it matches, with Envoy's precedence.

    Built once from C{(domain, value)} pairs; a domain listed twice keeps its first value.  Immutable
    except for the cache, which only ever holds answers the domains already imply.

    @ivar maxCacheSize: how many distinct raw Host values are remembered before the cache is emptied.
    """

    def __init__(self, domains: Iterable[tuple[str, T]], maxCacheSize: int = DEFAULT_CACHE_SIZE) -> None:
        self.maxCacheSize = maxCacheSize
        self._cache: dict[bytes | None, T | None] = {}
        self._exact: dict[tuple[bytes, int | None], tuple[T, str]] = {}
        self._catchAll: dict[int | None, tuple[T, str]] = {}
        suffixes: list[tuple[bytes, int | None, T, str]] = []
        prefixes: list[tuple[bytes, int | None, T, str]] = []
        seen: set[tuple[str, bytes, int | None]] = set()
        for domain, value in domains:
            kind, name, port = classifyDomain(domain)
            if (kind, name, port) in seen:
                continue
            seen.add((kind, name, port))
            if kind == EXACT:
                self._exact[name, port] = (value, domain)
            elif kind == SUFFIX:
                suffixes.append((name, port, value, domain))
            elif kind == PREFIX:
                prefixes.append((name, port, value, domain))
            else:
                self._catchAll[port] = (value, domain)
        # Longest first; at equal length the one naming a port first (stable sort keeps config order).
        suffixes.sort(key=lambda entry: (-len(entry[0]), entry[1] is None))
        prefixes.sort(key=lambda entry: (-len(entry[0]), entry[1] is None))
        self._suffixes = tuple(suffixes)
        self._prefixes = tuple(prefixes)

    @property
    def cacheSize(self) -> int:
        """
        How many Host values the cache holds now.
        """
        return len(self._cache)

    def select(self, host: bytes | None) -> T | None:
        """
        The value for the raw Host C{host} (C{None} when absent), or C{None} when no domain matches.

        This is the per-request call: a dict lookup for a Host seen before.
        """
        cached = self._cache.get(host, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        match = self.lookup(host)
        value = None if match is None else match.value
        if len(self._cache) >= self.maxCacheSize:
            self._cache.clear()
        self._cache[host] = value
        return value

    def lookup(self, host: bytes | None) -> DomainMatch[T] | None:
        """
        Match C{host} against every domain, bypassing the cache, and say which domain won and in which
        precedence class; C{None} when none matches.  L{select} uses this on a cache miss, so the two agree.
        """
        name, port = splitHost(host)
        shownHost = name.decode("ascii", "replace")
        if port is not None:
            hit = self._exact.get((name, port))
            if hit is not None:
                return DomainMatch(hit[0], hit[1], EXACT, shownHost, port)
        hit = self._exact.get((name, None))
        if hit is not None:
            return DomainMatch(hit[0], hit[1], EXACT, shownHost, port)
        size = len(name)
        for suffix, wanted, value, domain in self._suffixes:
            if (wanted is None or wanted == port) and size > len(suffix) and name.endswith(suffix):
                return DomainMatch(value, domain, SUFFIX, shownHost, port)
        for prefix, wanted, value, domain in self._prefixes:
            if (wanted is None or wanted == port) and size > len(prefix) and name.startswith(prefix):
                return DomainMatch(value, domain, PREFIX, shownHost, port)
        if port is not None:
            hit = self._catchAll.get(port)
            if hit is not None:
                return DomainMatch(hit[0], hit[1], CATCH_ALL, shownHost, port)
        hit = self._catchAll.get(None)
        if hit is not None:
            return DomainMatch(hit[0], hit[1], CATCH_ALL, shownHost, port)
        return None


def classifyDomain(domain: str) -> tuple[str, bytes, int | None]:
    """
    A configured domain as C{(precedence class, lower-cased name without the wildcard, port or None)}.

    C{"*.Example.com:8080"} gives C{(SUFFIX, b".example.com", 8080)}; C{"*"} gives C{(CATCH_ALL, b"", None)}.
    """
    raw = domain.encode("utf-8")
    if raw.startswith(b"*") and not raw.startswith(b"*:") and raw != b"*":
        name, port = splitHost(raw[1:])
        return SUFFIX, name, port
    name, port = splitHost(raw)
    if name == b"*":
        return CATCH_ALL, b"", port
    if name.endswith(b"*"):
        return PREFIX, name[:-1], port
    return EXACT, name, port
