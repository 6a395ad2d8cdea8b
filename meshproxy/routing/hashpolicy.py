"""
A request's hash key for consistent-hashing load balancers (a route's C{hash_policy}), pure.

Envoy's semantics: the policies are evaluated in order; each one that yields a value hashes it, and
the hashes are combined by rotating the running key left by one bit and xoring the new hash in (so
two equal policies do not cancel out); no value from any policy means no key, and the balancer then
picks as if there were no policy.  Hashes are the first 64 bits of BLAKE2b: stable across processes
and restarts, unlike Python's C{hash()}.

  - C{header}: every value of the named header (names compared without case); several values are
    sorted first, so their order does not matter.
  - C{cookie}: the first non-empty value of the named cookie (names are case-sensitive) across all
    C{Cookie} headers; pieces without C{=} are ignored, surrounding double quotes are removed.  When
    the request has none and the policy has a C{ttl}, a cookie is generated (a sticky session): its
    value is derived from the cookie name and the client IP address (not the port, so the parallel
    first requests of one client agree), or drawn at random when the client has no IP address, and
    the key is the hash of that value, exactly as when the client sends it back.  At most one cookie
    is generated per request, by the first such policy.
  - C{source_ip}: the client's IP address (an IPv4-mapped IPv6 address counts as its IPv4 address).

Only the C{Cookie} headers and the named headers are looked at, in one pass over the request's
headers; a route without a hash policy should not call L{hashKey} at all.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import NamedTuple, Sequence

from meshproxy.config.routemodel import HashPolicyConfig

_MASK = (1 << 64) - 1
_COOKIE = b"cookie"
_QUOTE = 0x22


class HashResult(NamedTuple):
    """
    What L{hashKey} found: the key for the balancer (L{None}: no policy yielded a value) and, when a
    sticky-session cookie was generated, the C{Set-Cookie} header value the response must carry.
    """

    key: int | None
    setCookie: bytes | None = None


NO_KEY = HashResult(None, None)


def hash64(data: bytes) -> int:
    """
    A stable 64-bit hash of C{data}.
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def combine(key: int | None, value: int) -> int:
    """
    Fold C{value} into the running C{key} (L{None} before the first value): rotate left by one, xor.
    """
    if key is None:
        return value
    return (((key << 1) | (key >> 63)) & _MASK) ^ value


def cookieValue(headerValues: Sequence[bytes], name: bytes) -> bytes | None:
    """
    The first non-empty value of cookie C{name} in these C{Cookie} header values, or L{None}.
    Malformed pieces (no C{=}, an empty name) are skipped.
    """
    if not name:
        return None
    for header in headerValues:
        if name not in header:
            continue
        for piece in header.split(b";"):
            key, equals, value = piece.partition(b"=")
            if not equals or key.strip(b" \t") != name:
                continue
            value = value.strip(b" \t")
            if len(value) >= 2 and value[0] == _QUOTE and value[-1] == _QUOTE:
                value = value[1:-1]
            if value:
                return value
    return None


def setCookieValue(name: bytes, value: bytes, ttl: float | None, path: str = "") -> bytes:
    """
    The C{Set-Cookie} header value for a generated cookie:
    C{name=value; Max-Age=<whole seconds of ttl>; Path=<path or />; HttpOnly}.  Without a C{ttl} of
    at least one second it is a session cookie (no C{Max-Age}), as in Envoy: C{Max-Age=0} would
    tell the client to drop it at once.
    """
    parts = [name + b"=" + value]
    if ttl is not None and int(ttl) > 0:
        parts.append(b"Max-Age=%d" % int(ttl))
    parts.append(b"Path=" + _cookiePath(path))
    parts.append(b"HttpOnly")
    return b"; ".join(parts)


def _cookiePath(path: str) -> bytes:
    # The path comes from the configuration: percent-encode anything that could end the attribute
    # or the header (";", controls) or is not ASCII, so no value can inject into the response.
    raw = (path or "/").encode("utf-8")
    if all(0x20 < byte < 0x7F and byte != 0x3B for byte in raw):
        return raw
    return b"".join(
        bytes((byte,)) if 0x20 < byte < 0x7F and byte != 0x3B else b"%%%02X" % byte for byte in raw
    )


def _ipBytes(clientIP: str | bytes) -> bytes:
    ip = clientIP.encode("ascii") if isinstance(clientIP, str) else clientIP
    if ip.startswith(b"::ffff:") and b"." in ip:
        return ip[7:]
    return ip


def generatedCookieValue(name: bytes, clientIP: str | bytes | None, rng: random.Random | None = None) -> bytes:
    """
    The value of a generated sticky-session cookie called C{name}: 16 hex digits derived from the
    name and the client IP address, or random (from C{rng}, else the operating system) without one.
    """
    if clientIP:
        digest = hashlib.blake2b(b"cookie\0" + name + b"\0" + _ipBytes(clientIP), digest_size=8).digest()
        return digest.hex().encode("ascii")
    if rng is not None:
        return b"%016x" % rng.getrandbits(64)
    return os.urandom(8).hex().encode("ascii")


def _headerValues(values: list[bytes]) -> int:
    if len(values) == 1:
        return hash64(values[0])
    # Length-prefixed so that ["ab", "c"] and ["a", "bc"] differ.
    return hash64(b"".join(b"%d:%s" % (len(value), value) for value in sorted(values)))


def hashKey(
    policies: Sequence[HashPolicyConfig],
    headers: Sequence[tuple[bytes, bytes]],
    clientIP: str | bytes | None,
    rng: random.Random | None = None,
) -> HashResult:
    """
    The request's hash key under a route's C{policies}.

    @param headers: the request's header fields as received, C{(name, value)} in any case.
    @param clientIP: the client's IP address, or L{None} when it has none (a unix socket).
    @param rng: the random source of a generated cookie when the client has no IP address.
    """
    names: list[bytes | None] = []
    wanted: dict[bytes, list[bytes]] = {}
    for policy in policies:
        if policy.kind == "header":
            name = policy.name.lower().encode("utf-8")
            wanted[name] = []
        elif policy.kind == "cookie":
            name = policy.name.encode("utf-8")
            wanted[_COOKIE] = []
        else:
            names.append(None)
            continue
        names.append(name)
    if wanted:
        lengths = {len(wantedName) for wantedName in wanted}
        for field, value in headers:
            if len(field) in lengths:
                values = wanted.get(field.lower())
                if values is not None:
                    values.append(value)
    key: int | None = None
    setCookie: bytes | None = None
    for policy, encoded in zip(policies, names):
        kind = policy.kind
        if kind == "header":
            assert encoded is not None
            values = wanted[encoded]
            if values:
                key = combine(key, _headerValues(values))
        elif kind == "cookie":
            assert encoded is not None
            cookie = cookieValue(wanted[_COOKIE], encoded)
            if cookie is None and policy.ttl is not None and setCookie is None and encoded:
                cookie = generatedCookieValue(encoded, clientIP, rng)
                setCookie = setCookieValue(encoded, cookie, policy.ttl, policy.path)
            if cookie is not None:
                key = combine(key, hash64(cookie))
        elif kind == "source_ip" and clientIP:
            key = combine(key, hash64(_ipBytes(clientIP)))
    if key is None and setCookie is None:
        return NO_KEY
    return HashResult(key, setCookie)
