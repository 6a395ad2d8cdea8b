"""
Tests for L{meshproxy.config.tls}: C{tls_context} on both sides, C{tls_context_set}, the listener's
C{tls_handshake_timeout}, and what a terminating chain means for chain matching.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import ConfigError, configDump, parseConfig
from meshproxy.config.errors import Problems
from meshproxy.config.reader import readObject
from meshproxy.config.tls import TLS_CONTEXT_KEYS, parseTLSContext
from meshproxy.config.tlsmodel import ServerTLSConfig, TLSContextConfig

LISTENER = "servers[0].listeners[0]"
CHAIN = LISTENER + ".filter_chains[0]"
CERT = {"status": True, "cert_chain": "/etc/certs/a.pem", "private_key": "/etc/certs/a.key"}


def document(chains: list[dict[str, Any]], **listener: Any) -> dict[str, Any]:
    """
    A MOSN document with one listener holding C{chains} (and C{listener}'s extra keys).
    """
    return {
        "servers": [{"listeners": [{"name": "front", "address": "127.0.0.1:8443", "filter_chains": chains,
                                    **listener}]}],
        "cluster_manager": {"clusters": [{"name": "backend", "hosts": [{"address": "127.0.0.1:9000"}]}]},
    }


def chain(**keys: Any) -> dict[str, Any]:
    """
    A filter chain relaying to C{backend}, with C{keys} added.
    """
    return {"filters": [{"type": "tcp_proxy", "config": {"cluster": "backend"}}], **keys}


class Parsing:
    """
    Helpers: the whole-document parser and L{parseTLSContext} on its own.
    """

    def load(self, doc: dict[str, Any]) -> Any:
        return parseConfig(json.dumps(doc))

    def problems(self, doc: dict[str, Any]) -> list[tuple[str, str]]:
        error = self.assertRaises(ConfigError, self.load, doc)  # type: ignore[attr-defined]
        return [(problem.path, problem.message) for problem in error.problems]

    def context(self, value: dict[str, Any], forServer: bool) -> tuple[TLSContextConfig | None, list[tuple[str, str]]]:
        problems = Problems()
        fields = readObject(value, "tls_context", problems, TLS_CONTEXT_KEYS)
        result = parseTLSContext(fields, forServer=forServer)
        found = [(p.path, p.message) for p in problems._found]
        return result, found


class ServerContextTests(Parsing, SynchronousTestCase):
    """
    A filter chain's C{tls_context}.
    """

    def test_model(self) -> None:
        """
        Every key lands in the model; versions are canonical; C{require_client_cert} implies
        verification; the chain's TLS lists its one context and the listener's handshake timeout.
        """
        tls = dict(CERT, server_name="*.Example.com", ca_cert="/etc/certs/ca.pem", require_client_cert=True,
                   min_version="tlsv1_2", max_version="TLS_AUTO", alpn="http/1.1", ticket="on",
                   cipher_suites="ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-WITH-CHACHA20-POLY1305",
                   ecdh_curves="P256", strict_sni=True)
        config = self.load(document([chain(tls_context=tls)], tls_handshake_timeout="4s"))
        chainTLS = config.listeners[0].filterChains[0].tls
        self.assertIsInstance(chainTLS, ServerTLSConfig)
        self.assertEqual(
            (chainTLS.serverName, chainTLS.verifyClient, chainTLS.requireClientCert, chainTLS.minVersion,
             chainTLS.maxVersion, chainTLS.alpn, chainTLS.ticket, chainTLS.strictSNI, chainTLS.ecdhCurves),
            ("*.example.com", True, True, "TLSv1_2", "", ("http/1.1",), "on", True, "P256"),
        )
        self.assertEqual((chainTLS.handshakeTimeout, chainTLS.fromContextSet), (4.0, False))
        [only] = chainTLS.contexts
        self.assertEqual(only.certChain, "/etc/certs/a.pem")
        self.assertEqual(type(only), TLSContextConfig)

    def test_plaintext(self) -> None:
        """
        C{{}} or C{status: false} is plaintext, whatever else the object holds.
        """
        for value in ({}, {"status": False}, {"status": False, "cert_chain": "x", "alpn": "h2"}):
            config = self.load(document([chain(tls_context=value)]))
            self.assertIsNone(config.listeners[0].filterChains[0].tls)

    def test_defaultHandshakeTimeout(self) -> None:
        """
        Without C{tls_handshake_timeout} the deadline is 10 seconds; zero is refused.
        """
        config = self.load(document([chain(tls_context=CERT)]))
        self.assertEqual(config.listeners[0].filterChains[0].tls.handshakeTimeout, 10.0)
        [(path, _)] = self.problems(document([chain(tls_context=CERT)], tls_handshake_timeout="0s"))
        self.assertEqual(path, LISTENER + ".tls_handshake_timeout")

    def test_refusedValues(self) -> None:
        """
        Insecure or unsupported values are refused, each at its own key with a reason.
        """
        cases = [
            ({"min_version": "TLSv1_0"}, "min_version", "insecure"),
            ({"max_version": "TLSv1_1"}, "max_version", "insecure"),
            ({"min_version": "TLS1.2"}, "min_version", "did you mean"),
            ({"min_version": "TLSv1_3", "max_version": "TLSv1_2"}, "max_version", "lower than"),
            ({"alpn": "h2,http/1.1"}, "alpn", "HTTP/2"),
            ({"alpn": "spdy/3"}, "alpn", "expected 'http/1.1'"),
            ({"cipher_suites": "RSA-3DES-EDE-CBC-SHA"}, "cipher_suites", "3DES"),
            ({"cipher_suites": "ECDHE-RSA-AES128-GCM-SHA25"}, "cipher_suites", "did you mean"),
            ({"ecdh_curves": "P224"}, "ecdh_curves", "P256"),
            ({"verify_client": True}, "verify_client", "needs 'ca_cert'"),
            ({"require_client_cert": True}, "require_client_cert", "needs 'ca_cert'"),
            ({"insecure_skip": True}, "insecure_skip", "clusters"),
            ({"server_name": "bad name"}, "server_name", "not a server name"),
            ({"fall_back": True}, "fall_back", "does not support"),
            ({"cert_chain": ""}, "cert_chain", "empty"),
        ]
        for extra, key, fragment in cases:
            found = self.problems(document([chain(tls_context=dict(CERT, **extra))]))
            self.assertEqual([path for path, _ in found], [f"{CHAIN}.tls_context.{key}"], (extra, found))
            self.assertIn(fragment, found[0][1], extra)
        found = self.problems(document([chain(tls_context={"status": True})]))
        self.assertEqual(
            [path for path, _ in found], [f"{CHAIN}.tls_context.cert_chain", f"{CHAIN}.tls_context.private_key"]
        )

    def test_inlinePEMKeptAndRedacted(self) -> None:
        """
        Inline PEM is kept as given (loaded later); the config dump redacts every private key.
        """
        pem = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n"
        contexts = [dict(CERT, private_key=pem), dict(CERT, private_key=pem, strict_sni=True)]
        config = self.load(document([chain(tls_context_set=contexts)]))
        self.assertEqual(config.listeners[0].filterChains[0].tls.privateKey, pem)
        text = json.dumps(configDump(config))
        self.assertNotIn("c2VjcmV0", text)
        self.assertEqual(text.count('"privateKey": "[redacted]"'), 3)


class ContextSetTests(Parsing, SynchronousTestCase):
    """
    C{tls_context_set}: several certificates on one chain.
    """

    def test_set(self) -> None:
        """
        Every entry is a context, in order; the chain's own fields are the first one's.
        """
        contexts = [dict(CERT, server_name="a.test"), dict(CERT, cert_chain="/b.pem", server_name="b.test")]
        tls = self.load(document([chain(tls_context_set=contexts)])).listeners[0].filterChains[0].tls
        self.assertEqual([c.serverName for c in tls.contexts], ["a.test", "b.test"])
        self.assertEqual((tls.serverName, tls.fromContextSet), ("a.test", True))

    def test_badSets(self) -> None:
        """
        Both keys at once, a disabled entry and a bad entry are errors with their paths; an empty set
        is plaintext.
        """
        found = self.problems(document([chain(tls_context=CERT, tls_context_set=[CERT])]))
        self.assertEqual([path for path, _ in found], [CHAIN + ".tls_context_set"])
        found = self.problems(document([chain(tls_context_set=[CERT, {"status": False}])]))
        self.assertEqual(found, [(CHAIN + ".tls_context_set[1]", 'every tls_context_set entry needs "status": true')])
        found = self.problems(document([chain(tls_context_set=[CERT, dict(CERT, alpn="h2")])]))
        self.assertEqual([path for path, _ in found], [CHAIN + ".tls_context_set[1].alpn"])
        self.assertIsNone(self.load(document([chain(tls_context_set=[])])).listeners[0].filterChains[0].tls)


class ChainMatchTests(Parsing, SynchronousTestCase):
    """
    What termination means for a chain's match.
    """

    def test_rawBufferRefused(self) -> None:
        """
        A terminating chain cannot be limited to plaintext.
        """
        rawOnly = {"transport_protocol": "raw_buffer"}
        found = self.problems(document([chain(tls_context=CERT, filter_chain_match=rawOnly)]))
        self.assertEqual([path for path, _ in found], [CHAIN + ".tls_context"])

    def test_terminatingAndPassthroughMayShareAMatch(self) -> None:
        """
        A terminating chain counts as matching the C{tls} transport: it does not clash with a chain
        without a match (which then takes plaintext), but does with one naming C{tls}.
        """
        config = self.load(document([chain(tls_context=CERT), chain()]))
        self.assertEqual(len(config.listeners[0].filterChains), 2)
        tlsOnly = {"transport_protocol": "tls"}
        found = self.problems(document([chain(tls_context=CERT), chain(filter_chain_match=tlsOnly)]))
        self.assertEqual([path for path, _ in found], [LISTENER + ".filter_chains[1]"])


class ClientContextTests(Parsing, SynchronousTestCase):
    """
    L{parseTLSContext} for clusters (C{forServer=False}).
    """

    def test_model(self) -> None:
        """
        No certificate is needed; C{insecure_skip} and C{server_name} (the SNI) apply.
        """
        value = {"status": True, "insecure_skip": True, "server_name": "API.example.com"}
        result, problems = self.context(value, False)
        self.assertEqual(problems, [])
        assert result is not None
        self.assertEqual((result.insecureSkip, result.serverName, result.certChain), (True, "api.example.com", ""))
        result, problems = self.context({"status": True, "server_name": "[::1]"}, False)
        self.assertEqual((result.serverName if result else None, problems), ("::1", []))
        self.assertEqual(self.context({"status": False}, False), (None, []))
        self.assertEqual(self.context({}, False), (None, []))

    def test_refused(self) -> None:
        """
        Server-only keys, half a client certificate and a wildcard name are refused.
        """
        cases = [
            ({"verify_client": True}, "tls_context.verify_client"),
            ({"strict_sni": True}, "tls_context.strict_sni"),
            ({"ticket": "x"}, "tls_context.ticket"),
            ({"cert_chain": "/c.pem"}, "tls_context.private_key"),
            ({"private_key": "/c.key"}, "tls_context.cert_chain"),
            ({"server_name": "*.example.com"}, "tls_context.server_name"),
            ({"min_version": "TLSv1_1"}, "tls_context.min_version"),
        ]
        for extra, path in cases:
            _, problems = self.context({"status": True, **extra}, False)
            self.assertEqual([where for where, _ in problems], [path], extra)
