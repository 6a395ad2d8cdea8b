"""
Choosing a listener's filter chain from a sniff verdict (pure).

Precedence follows Envoy's C{filter_chain_match}: the most specific server name wins (exact, then
the longest wildcard suffix, then chains that name none); then a chain that names detected
protocols (meshproxy's extension: C{http1} is more specific than every plaintext connection); then
one that names the transport; then one that names ALPN protocols; remaining ties go to the chain
listed first.  A criterion a chain sets must hold.

A chain that terminates TLS takes only TLS connections, as if it named the C{tls} transport.  Its
C{protocols} criterion (and which of its network filters accepts what) describes the decrypted
stream, so the sniff of the ClientHello does not check it; L{innerProtocolAllowed} does, once the
decrypted stream has been sniffed.
"""

from __future__ import annotations

from typing import Protocol, Sequence, TypeVar


class _Match(Protocol):
    @property
    def serverNames(self) -> tuple[str, ...]: ...

    @property
    def transportProtocol(self) -> str | None: ...

    @property
    def applicationProtocols(self) -> tuple[str, ...]: ...

    @property
    def protocols(self) -> tuple[str, ...]: ...


class _Chain(Protocol):
    @property
    def match(self) -> _Match: ...

    @property
    def terminatesTLS(self) -> bool: ...

    def acceptsProtocol(self, protocol: str) -> bool: ...


class _Verdict(Protocol):
    @property
    def protocol(self) -> str: ...

    @property
    def serverName(self) -> str | None: ...

    @property
    def alpn(self) -> tuple[str, ...]: ...


C = TypeVar("C", bound=_Chain)


def serverNameScore(patterns: Sequence[str], serverName: str | None) -> int:
    """
    How specifically C{patterns} match C{serverName}: 0 for no patterns (matches anything), -1 for
    no match, C{1 + len(suffix)} for a wildcard C{*.suffix}, and a large number for an exact name.
    """
    if not patterns:
        return 0
    if serverName is None:
        return -1
    name = serverName.lower().rstrip(".")
    best = -1
    for pattern in patterns:
        if pattern == name:
            return 1 << 16
        if pattern.startswith("*.") and name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
            best = max(best, len(pattern))
    return best


def chainScore(chain: _Chain, verdict: _Verdict) -> tuple[int, int, int, int] | None:
    """
    The precedence key of C{chain} for C{verdict}, or C{None} when the chain cannot take it.
    """
    match = chain.match
    transport = "tls" if verdict.protocol == "tls" else "raw_buffer"
    terminates = chain.terminatesTLS
    if match.transportProtocol is not None and match.transportProtocol != transport:
        return None
    if terminates and transport != "tls":
        return None
    names = serverNameScore(match.serverNames, verdict.serverName)
    if names < 0:
        return None
    if match.applicationProtocols and not set(match.applicationProtocols) & set(verdict.alpn):
        return None
    if not terminates:
        if match.protocols and verdict.protocol not in match.protocols:
            return None
        if not match.protocols and not chain.acceptsProtocol(verdict.protocol):
            return None
    return (
        names,
        bool(match.protocols),
        match.transportProtocol is not None or terminates,
        bool(match.applicationProtocols),
    )


def selectChain(chains: Sequence[C], verdict: _Verdict) -> C | None:
    """
    The chain that should serve a connection with C{verdict}, or C{None}.
    """
    best: C | None = None
    bestScore: tuple[int, int, int, int] | None = None
    for chain in chains:
        score = chainScore(chain, verdict)
        if score is not None and (bestScore is None or score > bestScore):
            best, bestScore = chain, score
    return best


def innerProtocolAllowed(chain: _Chain, protocol: str) -> bool:
    """
    Whether a chain that terminated TLS may serve a decrypted stream sniffed as C{protocol}: its
    C{protocols} criterion, when it has one, must name it.
    """
    protocols = chain.match.protocols
    return not protocols or protocol in protocols
