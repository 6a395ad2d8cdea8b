"""
Tests for L{meshproxy.chains}: filter chain selection from a sniff verdict.
"""

from __future__ import annotations

import attr
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.chains import innerProtocolAllowed, selectChain, serverNameScore


@attr.s(auto_attribs=True, frozen=True)
class Match:
    serverNames: tuple[str, ...] = ()
    transportProtocol: str | None = None
    applicationProtocols: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()


@attr.s(auto_attribs=True, frozen=True)
class Chain:
    name: str
    match: Match = Match()
    accepts: tuple[str, ...] = ("tls", "http1", "http2", "raw")
    terminatesTLS: bool = False

    def acceptsProtocol(self, protocol: str) -> bool:
        return protocol in self.accepts


@attr.s(auto_attribs=True, frozen=True)
class Verdict:
    protocol: str
    serverName: str | None = None
    alpn: tuple[str, ...] = ()


class ServerNameScoreTests(SynchronousTestCase):
    """
    Server-name specificity.
    """

    def test_scores(self) -> None:
        """
        Exact beats the longest wildcard beats a shorter one beats none; a miss is -1.
        """
        self.assertEqual(serverNameScore((), "a.example.com"), 0)
        self.assertEqual(serverNameScore(("a.example.com",), "A.Example.com."), 1 << 16)
        self.assertGreater(
            serverNameScore(("*.a.example.com",), "x.a.example.com"),
            serverNameScore(("*.example.com",), "x.a.example.com"),
        )
        self.assertEqual(serverNameScore(("*.example.com",), "example.com"), -1)
        self.assertEqual(serverNameScore(("a.example.com",), None), -1)


class SelectChainTests(SynchronousTestCase):
    """
    Envoy-style precedence among filter chains.
    """

    def test_singleChainTakesEverything(self) -> None:
        """
        MOSN's single unconstrained chain takes every protocol.
        """
        only = Chain("only")
        for protocol in ("tls", "http1", "http2", "raw"):
            self.assertIs(selectChain([only], Verdict(protocol)), only)

    def test_serverNamePrecedence(self) -> None:
        """
        The exact name wins over a wildcard, the wildcard over a catch-all.
        """
        anyChain = Chain("any")
        wild = Chain("wild", Match(serverNames=("*.example.com",)))
        exact = Chain("exact", Match(serverNames=("a.example.com",)))
        chains = [anyChain, wild, exact]
        self.assertIs(selectChain(chains, Verdict("tls", "a.example.com")), exact)
        self.assertIs(selectChain(chains, Verdict("tls", "b.example.com")), wild)
        self.assertIs(selectChain(chains, Verdict("tls", "other.org")), anyChain)
        self.assertIs(selectChain(chains, Verdict("raw")), anyChain)

    def test_transportAndProtocols(self) -> None:
        """
        A chain naming the transport or detected protocols takes only those, and is preferred.
        """
        raw = Chain("raw", Match(transportProtocol="raw_buffer"))
        tls = Chain("tls", Match(transportProtocol="tls"))
        http = Chain("http", Match(protocols=("http1",)))
        chains = [raw, tls, http]
        self.assertIs(selectChain(chains, Verdict("tls")), tls)
        self.assertIs(selectChain(chains, Verdict("http1")), http)
        self.assertIs(selectChain(chains, Verdict("raw")), raw)

    def test_alpn(self) -> None:
        """
        A chain naming ALPN protocols needs one of them offered.
        """
        h2 = Chain("h2", Match(applicationProtocols=("h2",)))
        fallback = Chain("fallback")
        self.assertIs(selectChain([fallback, h2], Verdict("tls", alpn=("h2", "http/1.1"))), h2)
        self.assertIs(selectChain([fallback, h2], Verdict("tls", alpn=("http/1.1",))), fallback)

    def test_implicitProtocols(self) -> None:
        """
        Without explicit protocols a chain takes what its network filters can serve; none fits
        gives None.
        """
        httpOnly = Chain("http", accepts=("http1",))
        self.assertIs(selectChain([httpOnly], Verdict("http1")), httpOnly)
        self.assertIsNone(selectChain([httpOnly], Verdict("raw")))

    def test_tieGoesToFirst(self) -> None:
        """
        Equally specific chains: the first listed wins.
        """
        first, second = Chain("first"), Chain("second")
        self.assertIs(selectChain([first, second], Verdict("raw")), first)


class TerminatingChainTests(SynchronousTestCase):
    """
    Chains that terminate TLS: TLS only, C{protocols} and filters judged after decryption.
    """

    def test_onlyTLS(self) -> None:
        """
        A terminating chain never takes a plaintext connection; it wins TLS over an unmatched
        passthrough chain, as if it named the C{tls} transport.
        """
        terminating = Chain("terminating", terminatesTLS=True)
        plain = Chain("plain")
        for chains in ([terminating, plain], [plain, terminating]):
            self.assertIs(selectChain(chains, Verdict("tls", "a.example.com")), terminating)
            self.assertIs(selectChain(chains, Verdict("http1")), plain)
            self.assertIs(selectChain(chains, Verdict("raw")), plain)
        self.assertIsNone(selectChain([terminating], Verdict("http1")))

    def test_serverNamesStillFirst(self) -> None:
        """
        A passthrough chain naming the server beats a terminating chain that names none.
        """
        terminating = Chain("terminating", terminatesTLS=True)
        passthrough = Chain("passthrough", Match(serverNames=("b.example.com",)))
        self.assertIs(selectChain([terminating, passthrough], Verdict("tls", "b.example.com")), passthrough)
        self.assertIs(selectChain([terminating, passthrough], Verdict("tls", "a.example.com")), terminating)

    def test_protocolsDeferred(self) -> None:
        """
        C{protocols} and the filters' accepted protocols describe the decrypted stream: a TLS
        verdict is not held against them; L{innerProtocolAllowed} checks them afterwards.
        """
        httpOnly = Chain("http", Match(protocols=("http1",)), accepts=("http1",), terminatesTLS=True)
        self.assertIs(selectChain([httpOnly], Verdict("tls", "a.example.com")), httpOnly)
        self.assertTrue(innerProtocolAllowed(httpOnly, "http1"))
        self.assertFalse(innerProtocolAllowed(httpOnly, "raw"))
        self.assertTrue(innerProtocolAllowed(Chain("any", terminatesTLS=True), "raw"))
        passthrough = Chain("passthrough", accepts=("http1",))
        self.assertIsNone(selectChain([passthrough], Verdict("tls", "a.example.com")))
