"""
Tests for L{meshproxy.tls} and L{meshproxy.tlscontext}: certificate loading, SNI selection, TLS
termination behind the sniffer (in memory, with real OpenSSL handshakes), mTLS, deadlines, counters,
and the client-side connection creator.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshproxy.config import ConfigError, TLSContextConfig
from meshproxy.interfaces import IDownstreamConnection
from meshproxy.listeners import FilterChainRuntime, ListenerFactory
from meshproxy.stats import StatsStore
from meshproxy.tls import (
    ChainTLS,
    ClientTLS,
    certificateInfo,
    checkListenerTLS,
    clientCreatorFor,
    handshakeFailureReason,
    loadListenerTLS,
)
from meshproxy.tlscontext import (
    CertificateSet,
    ServerCertificate,
    TLSLoadError,
    _alpnSelector,
    loadServerCertificate,
)
from tests.support import configDocument, makeConfig
from tests.test_sniff import RecordingFilter
from tests.tlscerts import PKI, Issued

_FACTORY_TAKES_CLOCK = "clock" in TLSMemoryBIOFactory.__init__.__code__.co_varnames
_PKI: list[PKI] = []


def pki() -> PKI:
    """
    The certificates shared by this module's tests (made on first use).
    """
    if not _PKI:
        _PKI.append(PKI())
    return _PKI[0]


@implementer(IHandshakeListener)
class ClientRecorder(Protocol):
    """
    A TLS client application: records the handshake, the bytes and the end.
    """

    def __init__(self) -> None:
        self.handshakeDone = False
        self.received = b""
        self.lostReason: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshakeDone = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lostReason = reason


class HalfCloseFakeTransport(FakeTransport):
    """
    iosim's transport, recording a half-close.
    """

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


class Pump:
    """
    Moves bytes between two in-memory transports, running C{callLater(0)} calls in between (Twisted's
    TLS write aggregation), until nothing moves; bounded in rounds.
    """

    def __init__(self, clock: MemoryReactorClock, client: FakeTransport, server: FakeTransport) -> None:
        self.clock = clock
        self.client = client
        self.server = server

    def flush(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            if not self.step():
                return
        raise AssertionError("the connection never went quiet")

    def step(self) -> bool:
        self.clock.advance(0)
        fromClient = self.client.getOutBuffer()
        fromServer = self.server.getOutBuffer()
        if fromClient:
            self.server.bufferReceived(fromClient)
        if fromServer:
            self.client.bufferReceived(fromServer)
        if fromClient or fromServer:
            return True
        for closing, other in ((self.server, self.client), (self.client, self.server)):
            if closing.disconnecting and not closing.disconnected:
                closing.disconnected = True
                other.disconnecting = other.disconnected = True
                closing.reportDisconnect()
                other.reportDisconnect()
                return True
        return False


def clientContext(**fields: Any) -> TLSContextConfig:
    """
    A client-side context trusting the test CA (unless C{caCert} is given).
    """
    values: dict[str, Any] = {"status": True, "caCert": pki().ca.certPEM}
    values.update(fields)
    return TLSContextConfig(**values)


def serverContext(issued: Issued, **fields: Any) -> dict[str, Any]:
    """
    A MOSN C{tls_context} with C{issued} inline.
    """
    return {"status": True, "cert_chain": issued.certPEM, "private_key": issued.keyPEM, **fields}


class TerminationMixin:
    """
    A listener with TLS-terminating chains whose network filters record what they get.
    """

    def setUpListener(self, chains: list[dict[str, Any]], **listener: Any) -> None:
        self.clock = MemoryReactorClock()
        self.stats = StatsStore()
        doc = configDocument(
            listeners=[{"name": "l1", "address": "127.0.0.1:8443", "filter_chains": chains, **listener}]
        )
        config = makeConfig(doc)
        self.chainTLS = loadListenerTLS(config, self.clock, self.stats)
        self.filters: dict[str, RecordingFilter] = {}
        runtimes = []
        for chain in config.listeners[0].filterChains:
            self.filters[chain.name] = RecordingFilter()
            built = self.chainTLS.get(("l1", chain.name))
            runtimes.append(FilterChainRuntime(chain, [self.filters[chain.name]], built))
        self.listener = ListenerFactory(config.listeners[0], runtimes, self.clock, self.stats)

    def connect(
        self, context: TLSContextConfig | None, serverName: str = "a.example.com"
    ) -> tuple[ClientRecorder, Pump]:
        """
        A TLS client (C{context} made into a connection creator for C{serverName}) connected to the
        listener; nothing has moved yet.
        """
        creator = ClientTLS.load(context or clientContext()).creatorFor(serverName)
        return self.connectCreator(creator)

    def connectCreator(self, creator: Any) -> tuple[ClientRecorder, Pump]:
        application = ClientRecorder()
        if _FACTORY_TAKES_CLOCK:
            factory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: application), clock=self.clock)
        else:
            factory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: application))
        clientTLS = factory.buildProtocol(None)
        sniffer = self.listener.buildProtocol(None)
        self.serverIO = HalfCloseFakeTransport(sniffer, isServer=True)
        clientIO = FakeTransport(clientTLS, isServer=False)
        sniffer.makeConnection(self.serverIO)
        clientTLS.makeConnection(clientIO)
        self.clientTLS = clientTLS
        return application, Pump(self.clock, clientIO, self.serverIO)

    def servedSubject(self) -> str:
        """
        The subject of the certificate the last client was served.
        """
        certificate = self.clientTLS.getHandle().get_peer_certificate()
        return str(certificate.to_cryptography().subject.rfc4514_string())

    def failures(self, reason: str, chain: str = "l1#0") -> int:
        """
        The handshake failures counted for C{reason}.
        """
        return self.stats.value("tls_handshake_failure_total", listener="l1", chain=chain, reason=reason)


def tlsChain(context: dict[str, Any] | list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """
    A filter chain terminating TLS with one context (C{tls_context}) or several (C{tls_context_set}).
    """
    key = "tls_context_set" if isinstance(context, list) else "tls_context"
    return {key: context, "filters": [{"type": "tcp_proxy", "config": {"cluster": "backend"}}], **extra}


class TerminationTests(TerminationMixin, SynchronousTestCase):
    """
    The sniffer hands a ClientHello to a terminating chain: handshake, facts, inner hand-off.
    """

    def test_handshakeThenHTTPByALPN(self) -> None:
        """
        With ALPN C{http/1.1} negotiated the decrypted stream goes to the chain's filter as HTTP at
        once; the downstream carries the TLS facts; bytes flow both ways; counters move; no timer
        is left behind.
        """
        self.setUpListener([tlsChain(serverContext(pki().a, alpn="http/1.1"))])
        client, pump = self.connect(clientContext(alpn=("http/1.1",)))
        pump.flush()
        self.assertTrue(client.handshakeDone)
        [protocol] = self.filters["l1#0"].built
        downstream = protocol.downstream
        self.assertEqual(
            (downstream.tls, downstream.protocol, downstream.tlsALPN, downstream.serverName),
            (True, "http1", "http/1.1", "a.example.com"),
        )
        self.assertEqual(downstream.tlsVersion, "TLSv1.3")
        self.assertIn(downstream.tlsCipher, ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256",
                                             "TLS_CHACHA20_POLY1305_SHA256"))
        self.assertIsNone(downstream.peerCertificateSubject)
        verifyObject(IDownstreamConnection, downstream)
        self.clientTLS.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        pump.flush()
        self.assertEqual(b"".join(protocol.received), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        protocol.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        pump.flush()
        self.assertEqual(client.received, b"HTTP/1.1 204 No Content\r\n\r\n")
        labels = {"listener": "l1", "chain": "l1#0"}
        self.assertEqual(self.stats.value("tls_handshake_total", **labels), 1)
        self.assertEqual(self.stats.value("tls_version_total", version="TLSv1.3", **labels), 1)
        self.assertEqual(self.stats.value("tls_cipher_total", cipher=downstream.tlsCipher, **labels), 1)
        self.assertEqual(self.stats.value("sniff_verdict_total", listener="l1", protocol="tls"), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_innerStreamSniffedBytewise(self) -> None:
        """
        Without ALPN the decrypted stream is sniffed again, here fed one byte per TLS record: an
        HTTP request line is HTTP, and the bytes are replayed once, in order.
        """
        self.setUpListener([tlsChain(serverContext(pki().a))])
        client, pump = self.connect(clientContext(alpn=("http/1.1",)))
        pump.flush()
        self.assertIsNone(client.lostReason)
        self.assertEqual(self.filters["l1#0"].built, [])
        request = b"GET /x HTTP/1.1\r\n"
        for i in range(len(request)):
            self.clientTLS.write(request[i : i + 1])
            pump.flush()
        [protocol] = self.filters["l1#0"].built
        self.assertEqual((protocol.downstream.protocol, protocol.downstream.tlsALPN), ("http1", None))
        self.assertEqual(b"".join(protocol.received), request)

    def test_innerRawAndDeadline(self) -> None:
        """
        Bytes that are not HTTP go raw at once; a silent client goes raw at the sniff deadline.
        """
        self.setUpListener([tlsChain(serverContext(pki().a))])
        client, pump = self.connect(None)
        pump.flush()
        self.clientTLS.write(b"\x00\x01binary")
        pump.flush()
        [protocol] = self.filters["l1#0"].built
        self.assertEqual((protocol.downstream.protocol, b"".join(protocol.received)), ("raw", b"\x00\x01binary"))
        client, pump = self.connect(None)
        pump.flush()
        self.assertEqual(len(self.filters["l1#0"].built), 1)
        self.clock.advance(2.9)
        self.assertEqual(len(self.filters["l1#0"].built), 1)
        self.clock.advance(0.2)
        self.assertEqual(self.filters["l1#0"].built[1].downstream.protocol, "raw")
        self.assertEqual(self.stats.value("sniff_timeout_total", listener="l1"), 1)

    def test_protocolsCriterionAppliesInside(self) -> None:
        """
        A terminating chain that names C{protocols} refuses a decrypted stream of another protocol.
        """
        self.setUpListener([tlsChain(serverContext(pki().a), filter_chain_match={"protocols": ["http1"]})])
        client, pump = self.connect(None)
        pump.flush()
        self.clientTLS.write(b"\x00raw")
        pump.flush()
        self.assertEqual(self.filters["l1#0"].built, [])
        self.assertIsNotNone(client.lostReason)
        self.assertEqual(self.stats.value("sniff_no_chain_total", listener="l1"), 1)
        self.assertEqual(self.listener.connections, set())

    def test_plaintextNotTaken(self) -> None:
        """
        A chain that terminates TLS does not take plaintext connections.
        """
        self.setUpListener([tlsChain(serverContext(pki().a))])
        sniffer = self.listener.buildProtocol(None)
        transport = HalfCloseFakeTransport(sniffer, isServer=True)
        sniffer.makeConnection(transport)
        transport.bufferReceived(b"GET / HTTP/1.1\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.getOutBuffer(), None)
        self.assertEqual(self.stats.value("sniff_no_chain_total", listener="l1"), 1)

    def test_halfCloseSendsCloseNotify(self) -> None:
        """
        The network filter's half-close sends everything written so far, then TLS close_notify,
        then half-closes the socket; the client sees the bytes and a clean TLS end.
        """
        self.setUpListener([tlsChain(serverContext(pki().a))])
        client, pump = self.connect(None)
        pump.flush()
        self.clientTLS.write(b"\x00raw")
        pump.flush()
        [protocol] = self.filters["l1#0"].built
        protocol.transport.write(b"last words")
        protocol.transport.loseWriteConnection()
        self.assertTrue(self.serverIO.writeClosed)
        pump.flush()
        self.assertEqual(client.received, b"last words")
        # The client saw close_notify: its TLS layer ended the connection cleanly.
        self.assertIsNotNone(client.lostReason)
        self.assertTrue(client.lostReason.check(ConnectionDone), client.lostReason)  # type: ignore[union-attr]

    def test_downstreamClosedOnce(self) -> None:
        """
        A connection that ends after the hand-off is reported to the listener (by the filter's
        protocol); one that ends during the handshake by the TLS sniffer.
        """
        self.setUpListener([tlsChain(serverContext(pki().a))])
        client, pump = self.connect(clientContext(caCert=pki().strangerCA.certPEM))
        pump.flush()
        self.assertIsNotNone(client.lostReason)
        self.assertEqual(self.listener.connections, set())
        self.assertEqual(self.failures("client_alert"), 1)


class CertificateSelectionTests(TerminationMixin, SynchronousTestCase):
    """
    SNI chooses among a chain's certificates: exact, wildcard, default; strict certificates refuse.
    """

    def setUpSet(self, **strict: bool) -> None:
        contexts = [
            serverContext(pki().a, strict_sni=strict.get("a", False)),
            serverContext(pki().b, strict_sni=strict.get("b", False)),
            serverContext(pki().wildcard, strict_sni=strict.get("wildcard", False)),
        ]
        self.setUpListener([tlsChain(contexts)])

    def served(self, serverName: str) -> str:
        client, pump = self.connect(clientContext(insecureSkip=True), serverName)
        pump.flush()
        self.assertTrue(client.handshakeDone, f"handshake for {serverName!r} failed: {client.lostReason}")
        return self.servedSubject()

    def test_exactWildcardDefault(self) -> None:
        """
        An exact name, then a wildcard for the first label, then the first certificate.
        """
        self.setUpSet()
        self.assertEqual(self.served("b.example.com"), "CN=b.example.com")
        self.assertEqual(self.served("B.Example.COM"), "CN=b.example.com")
        self.assertEqual(self.served("x.wild.example.com"), "CN=wild")
        self.assertEqual(self.served("y.x.wild.example.com"), "CN=a.example.com")
        self.assertEqual(self.served("other.org"), "CN=a.example.com")

    def test_verifiedClientGetsTheRightCertificate(self) -> None:
        """
        A verifying client connecting to each name succeeds: the served certificate carries it.
        """
        self.setUpSet()
        for name in ("a.example.com", "b.example.com", "q.wild.example.com"):
            client, pump = self.connect(clientContext(), name)
            pump.flush()
            self.assertTrue(client.handshakeDone, name)

    def test_strictCertificatesRefuseUnknownNames(self) -> None:
        """
        When every certificate is strict, an unknown name (or none) gets an C{unrecognized_name}
        alert and is counted; known names still work.
        """
        self.setUpSet(a=True, b=True, wildcard=True)
        self.assertEqual(self.served("a.example.com"), "CN=a.example.com")
        client, pump = self.connect(clientContext(insecureSkip=True), "other.org")
        pump.flush()
        self.assertFalse(client.handshakeDone)
        self.assertIn("unrecognized name", client.lostReason.getErrorMessage())  # type: ignore[union-attr]
        self.assertEqual(self.failures("unknown_server_name"), 1)
        self.assertEqual(len(self.listener.connections), 1)  # the a.example.com one, still open
        client, pump = self.connect(clientContext(insecureSkip=True), "127.0.0.1")  # IP: no SNI sent
        pump.flush()
        self.assertFalse(client.handshakeDone)
        self.assertEqual(self.failures("unknown_server_name"), 2)

    def test_defaultSkipsStrictCertificates(self) -> None:
        """
        The default is the first certificate that is not strict.
        """
        self.setUpSet(a=True)
        self.assertEqual(self.served("other.org"), "CN=b.example.com")

    def test_serverNameOverridesCertificateNames(self) -> None:
        """
        A context's C{server_name} is the name it is chosen by, whatever the certificate says.
        """
        contexts = [serverContext(pki().a), serverContext(pki().b, server_name="*.b-alias.test")]
        self.setUpListener([tlsChain(contexts)])
        self.assertEqual(self.served("x.b-alias.test"), "CN=b.example.com")
        self.assertEqual(self.served("b.example.com"), "CN=a.example.com")

    def test_noChainForTLSGetsAlert(self) -> None:
        """
        A ClientHello for a name no chain serves gets the alert from the sniffer itself.
        """
        self.setUpListener([tlsChain(serverContext(pki().a), filter_chain_match={"server_names": ["a.example.com"]})])
        client, pump = self.connect(clientContext(insecureSkip=True), "zzz.example.com")
        pump.flush()
        self.assertIn("unrecognized name", client.lostReason.getErrorMessage())  # type: ignore[union-attr]
        self.assertEqual(self.stats.value("sniff_no_chain_total", listener="l1"), 1)


class MutualTLSTests(TerminationMixin, SynchronousTestCase):
    """
    Client certificates: verified against C{ca_cert}, required or optional.
    """

    def setUpMTLS(self, require: bool = True) -> None:
        context = serverContext(pki().a, ca_cert=pki().ca.certPEM, verify_client=True, require_client_cert=require)
        self.setUpListener([tlsChain(context)])

    def test_verifiedClientFacts(self) -> None:
        """
        A client certificate from the CA is accepted; its subject, SAN URIs and DNS names, hash and
        PEM are on the downstream.
        """
        self.setUpMTLS()
        client = pki().client
        client_, pump = self.connect(clientContext(certChain=client.certPEM, privateKey=client.keyPEM))
        pump.flush()
        self.assertTrue(client_.handshakeDone)
        self.clientTLS.write(b"\x00")
        pump.flush()
        [protocol] = self.filters["l1#0"].built
        downstream = protocol.downstream
        self.assertEqual(downstream.peerCertificateSubject, "O=meshproxy tests,CN=client-1")
        self.assertEqual(downstream.peerCertificateURIs, ("spiffe://mesh.test/ns/default/sa/client",))
        self.assertEqual(downstream.peerCertificateDNSNames, ("client.mesh.test",))
        der = client.certificate.public_bytes(serialization.Encoding.DER)
        self.assertEqual(downstream.peerCertificateHash, hashlib.sha256(der).hexdigest())
        self.assertEqual(downstream.peerCertificatePEM, client.certPEM.encode("ascii"))

    def test_missingCertificateRefused(self) -> None:
        """
        Without a client certificate the handshake fails and is counted.
        """
        self.setUpMTLS()
        client, pump = self.connect(None)
        pump.flush()
        self.assertEqual(self.filters["l1#0"].built, [])
        self.assertIsNotNone(client.lostReason)
        self.assertEqual(self.failures("no_client_certificate"), 1)
        self.assertEqual(self.listener.connections, set())

    def test_strangerCertificateRefused(self) -> None:
        """
        A client certificate from another CA is refused and counted.
        """
        self.setUpMTLS()
        stranger = pki().strangerClient
        client, pump = self.connect(clientContext(certChain=stranger.certPEM, privateKey=stranger.keyPEM))
        pump.flush()
        self.assertEqual(self.filters["l1#0"].built, [])
        self.assertEqual(self.failures("bad_client_certificate"), 1)

    def test_optionalCertificate(self) -> None:
        """
        With C{verify_client} alone a client without a certificate is served (no subject).
        """
        self.setUpMTLS(require=False)
        client, pump = self.connect(None)
        pump.flush()
        self.clientTLS.write(b"\x00")
        pump.flush()
        [protocol] = self.filters["l1#0"].built
        self.assertIsNone(protocol.downstream.peerCertificateSubject)


class DeadlineAndFailureTests(TerminationMixin, SynchronousTestCase):
    """
    The handshake deadline, failures by reason, and errors inside OpenSSL callbacks.
    """

    def test_handshakeTimeout(self) -> None:
        """
        A client that sends its ClientHello and nothing more is aborted at C{tls_handshake_timeout}
        and counted as C{timeout}.
        """
        self.setUpListener([tlsChain(serverContext(pki().a))], tls_handshake_timeout="2s")
        client, pump = self.connect(None)
        self.clock.advance(0)
        self.serverIO.bufferReceived(pump.client.getOutBuffer())
        self.clock.advance(1.9)
        self.assertFalse(self.serverIO.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(self.serverIO.disconnecting)
        self.serverIO.reportDisconnect()
        self.assertEqual(self.failures("timeout"), 1)
        self.assertEqual(self.listener.connections, set())

    def test_versionMismatchCounted(self) -> None:
        """
        A TLS 1.2-only client against a TLS 1.3-only chain fails with C{unsupported_version}.
        """
        self.setUpListener([tlsChain(serverContext(pki().a, min_version="TLSv1_3"))])
        client, pump = self.connect(clientContext(maxVersion="TLSv1_2"))
        pump.flush()
        self.assertFalse(client.handshakeDone)
        self.assertEqual(self.failures("unsupported_version"), 1)

    def test_tls12UsesModernCiphers(self) -> None:
        """
        A TLS 1.2 handshake negotiates an ECDHE AEAD suite.
        """
        self.setUpListener([tlsChain(serverContext(pki().a))])
        client, pump = self.connect(clientContext(maxVersion="TLSv1_2"))
        pump.flush()
        self.clientTLS.write(b"\x00")
        pump.flush()
        [protocol] = self.filters["l1#0"].built
        self.assertEqual(protocol.downstream.tlsVersion, "TLSv1.2")
        self.assertRegex(protocol.downstream.tlsCipher, r"^ECDHE-ECDSA-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$")

    def test_singleCurve(self) -> None:
        """
        C{ecdh_curves} naming one NIST curve restricts key exchange to it, and handshakes still
        complete (TLS 1.2 and 1.3).
        """
        self.setUpListener([tlsChain(serverContext(pki().a, ecdh_curves="P384"))])
        for maxVersion in ("TLSv1_2", ""):
            client, pump = self.connect(clientContext(maxVersion=maxVersion))
            pump.flush()
            self.assertTrue(client.handshakeDone, maxVersion)
            group = getattr(self.clientTLS.getHandle(), "get_group_name", None)
            if group is not None:
                self.assertEqual(group(), "secp384r1")

    def test_callbackErrorAbortsThatConnection(self) -> None:
        """
        An exception inside the ALPN callback is caught and logged; the connection is aborted
        after the callback returns and counted as C{callback_error}.
        """
        self.setUpListener([tlsChain(serverContext(pki().a, alpn="http/1.1"))])
        certificate = next(iter(self.chainTLS.values())).certificates.certificates[0]

        class Exploding:
            """
            An ALPN offer that cannot be searched.
            """

            def __contains__(self, item: object) -> bool:
                raise RuntimeError("boom")

        certificate.context.set_alpn_select_callback(
            lambda connection, offered: _alpnSelector((b"http/1.1",))(connection, Exploding())  # type: ignore[arg-type]
        )
        client, pump = self.connect(clientContext(alpn=("http/1.1",)))
        pump.flush()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.filters["l1#0"].built, [])
        self.assertEqual(self.failures("callback_error"), 1)
        self.assertEqual(self.listener.connections, set())

    def test_failureReasons(self) -> None:
        """
        OpenSSL errors map to fixed labels.
        """
        cases = [
            ([("SSL routines", "", "unsupported protocol")], "unsupported_version"),
            ([("SSL routines", "", "no shared cipher")], "no_shared_cipher"),
            ([("SSL routines", "", "peer did not return a certificate")], "no_client_certificate"),
            ([("SSL routines", "", "certificate verify failed")], "bad_client_certificate"),
            ([("SSL routines", "", "tlsv1 alert unknown ca")], "client_alert"),
            ([("SSL routines", "", "unexpected eof while reading")], "connection_closed"),
            ([("SSL routines", "", "something new")], "other"),
        ]
        for args, label in cases:
            self.assertEqual(handshakeFailureReason(Failure(SSL.Error(args))), label)
        self.assertEqual(handshakeFailureReason(Failure(ConnectionDone())), "connection_closed")
        self.assertEqual(handshakeFailureReason(None), "connection_closed")


class LoadingTests(SynchronousTestCase):
    """
    L{loadListenerTLS}: certificates read when the service is built, errors naming file and path.
    """

    def load(self, chain: dict[str, Any]) -> dict[tuple[str, str], ChainTLS]:
        doc = configDocument(listeners=[{"name": "l1", "address": "127.0.0.1:8443", "filter_chains": [chain]}])
        return loadListenerTLS(makeConfig(doc), MemoryReactorClock(), StatsStore())

    def problems(self, chain: dict[str, Any]) -> list[tuple[str, str]]:
        error = self.assertRaises(ConfigError, self.load, chain)
        return [(problem.path, problem.message) for problem in error.problems]

    def test_filesAndInline(self) -> None:
        """
        Certificates and keys load from files or inline PEM, and chains are keyed by listener and
        chain name.
        """
        paths = pki().writeAll(self.mktemp())
        cert, key = paths["a"]
        loaded = self.load(tlsChain({"status": True, "cert_chain": cert, "private_key": key}, name="web"))
        self.assertEqual(list(loaded), [("l1", "web")])
        default = loaded[("l1", "web")].certificates.default
        self.assertEqual(default.names if default else None, ("a.example.com",))
        loaded = self.load(tlsChain(serverContext(pki().b)))
        self.assertEqual(loaded[("l1", "l1#0")].certificates.certificates[0].source, "inline")

    def test_brokenFilesNamed(self) -> None:
        """
        Every unreadable or unusable file is one problem naming it, at its JSON path.
        """
        directory = self.mktemp()
        paths = pki().writeAll(directory)
        garbage = os.path.join(directory, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        missing = os.path.join(directory, "missing.pem")
        chain = tlsChain([
            {"status": True, "cert_chain": missing, "private_key": paths["a"][1]},
            {"status": True, "cert_chain": garbage, "private_key": paths["a"][1]},
            {"status": True, "cert_chain": paths["a"][0], "private_key": paths["b"][1]},
            {"status": True, "cert_chain": paths["a"][0], "private_key": garbage},
            {"status": True, "cert_chain": paths["a"][0], "private_key": paths["a"][1], "verify_client": True,
             "ca_cert": missing},
        ])
        base = "servers[0].listeners[0].filter_chains[0].tls_context_set"
        problems = self.problems(chain)
        self.assertEqual(
            [path for path, _ in problems],
            [f"{base}[0].cert_chain", f"{base}[1].cert_chain", f"{base}[2].private_key", f"{base}[3].private_key",
             f"{base}[4].ca_cert"],
        )
        self.assertIn(repr(missing), problems[0][1])
        self.assertIn("No such file", problems[0][1])
        self.assertIn(f"file {garbage!r} holds no PEM certificate", problems[1][1])
        self.assertIn("does not fit the certificate", problems[2][1])
        self.assertIn(f"file {garbage!r} holds no usable PEM private key", problems[3][1])
        doc = configDocument(listeners=[{"name": "l1", "address": "127.0.0.1:8443", "filter_chains": [chain]}])
        self.assertEqual([(p.path, p.message) for p in checkListenerTLS(makeConfig(doc))], problems)
        self.assertEqual(checkListenerTLS(makeConfig(configDocument())), [])

    def test_encryptedKeyRefused(self) -> None:
        """
        An encrypted key is refused with a clear message.
        """
        encrypted = pki().a.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ).decode("ascii")
        [(path, message)] = self.problems(tlsChain({"status": True, "cert_chain": pki().a.certPEM,
                                                    "private_key": encrypted}))
        self.assertEqual(path, "servers[0].listeners[0].filter_chains[0].tls_context.private_key")
        self.assertIn("encrypted", message)

    def test_certificateInfoAndExpiryGauge(self) -> None:
        """
        L{certificateInfo} describes each certificate without key material; the expiry gauge holds
        each certificate's notAfter.  An expired certificate still loads (and is visible there).
        """
        stats = StatsStore()
        doc = configDocument(listeners=[{"name": "l1", "address": "127.0.0.1:8443", "filter_chains": [
            tlsChain([serverContext(pki().a), serverContext(pki().expired)])]}])
        loaded = loadListenerTLS(makeConfig(doc), MemoryReactorClock(), stats)
        info = certificateInfo(loaded.values())
        self.assertEqual([entry["subject"] for entry in info], ["CN=a.example.com", "CN=expired.example.com"])
        first = info[0]
        self.assertEqual(
            (first["listener"], first["chain"], first["names"], first["source"], first["default"]),
            ("l1", "l1#0", ["a.example.com"], "inline", True),
        )
        self.assertEqual(first["serial"], format(pki().a.certificate.serial_number, "x"))
        self.assertNotIn("PRIVATE", repr(info))
        expired = int(info[1]["notAfterTimestamp"])
        self.assertIn(
            'meshproxy_tls_certificate_expiry_timestamp_seconds{chain="l1#0",listener="l1",'
            f'name="expired.example.com"}} {expired}\n',
            stats.prometheus(),
        )
        self.assertLess(expired, time.time())

    def test_serverCertificateInterface(self) -> None:
        """
        A loaded certificate is a server connection creator.
        """
        from twisted.internet.interfaces import IOpenSSLServerConnectionCreator

        certificate = loadServerCertificate(TLSContextConfig(status=True, certChain=pki().a.certPEM,
                                                             privateKey=pki().a.keyPEM))
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, certificate))

    def test_selectionUnit(self) -> None:
        """
        L{CertificateSet.select} without handshakes: exact, wildcard on the first label only,
        default, and L{None} when only strict certificates exist.
        """
        def fake(names: tuple[str, ...], strict: bool = False) -> ServerCertificate:
            certificate = ServerCertificate.__new__(ServerCertificate)
            certificate.names, certificate.strict = names, strict
            return certificate

        a, wild, other = fake(("a.test",), True), fake(("*.w.test",), True), fake(("o.test",))
        chosen = CertificateSet([a, wild, other])
        self.assertIs(chosen.select("a.test."), a)
        self.assertIs(chosen.select("x.w.test"), wild)
        self.assertIs(chosen.select("w.test"), other)
        self.assertIs(chosen.select(None), other)
        self.assertIsNone(CertificateSet([a, wild]).select("zzz"))


class ClientCreatorTests(TerminationMixin, SynchronousTestCase):
    """
    L{clientCreatorFor}: SNI, verification on by default, custom CA, client certificate, defaults.
    """

    def setUp(self) -> None:
        context = serverContext(pki().a, ca_cert=pki().ca.certPEM, verify_client=True)
        self.setUpListener([tlsChain([context, serverContext(pki().b)])])

    def test_interface(self) -> None:
        """
        The creator provides C{IOpenSSLClientConnectionCreator}, verified or not.
        """
        for context in (clientContext(), clientContext(insecureSkip=True)):
            self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, clientCreatorFor(context, "a.example.com")))

    def test_sniAndVerification(self) -> None:
        """
        The SNI reaches the server, which picks the certificate by it; the name is verified.
        """
        client, pump = self.connectCreator(clientCreatorFor(clientContext(), "b.example.com"))
        pump.flush()
        self.assertTrue(client.handshakeDone)
        self.assertEqual(self.servedSubject(), "CN=b.example.com")

    def test_wrongNameRefused(self) -> None:
        """
        A certificate that does not carry the name fails verification, unless C{insecure_skip}.
        """
        client, pump = self.connectCreator(clientCreatorFor(clientContext(), "other.org"))
        pump.flush()
        self.assertFalse(client.handshakeDone)
        self.assertIsNotNone(client.lostReason)
        self.flushLoggedErrors()
        client, pump = self.connectCreator(clientCreatorFor(clientContext(insecureSkip=True), "other.org"))
        pump.flush()
        self.assertTrue(client.handshakeDone)

    def test_untrustedCARefused(self) -> None:
        """
        Without C{ca_cert} the platform's roots are used, which do not hold the test CA.
        """
        client, pump = self.connectCreator(clientCreatorFor(TLSContextConfig(status=True), "a.example.com"))
        pump.flush()
        self.assertFalse(client.handshakeDone)
        self.flushLoggedErrors()

    def test_serverNameFromConfig(self) -> None:
        """
        The context's C{server_name} is used when the caller gives none; no name at all is an
        error unless verification is off.
        """
        client, pump = self.connectCreator(clientCreatorFor(clientContext(serverName="b.example.com"), ""))
        pump.flush()
        self.assertEqual(self.servedSubject(), "CN=b.example.com")
        self.assertRaises(ValueError, clientCreatorFor, clientContext(), "")

    def test_clientCertificate(self) -> None:
        """
        The client certificate (C{cert_chain}/C{private_key}) is presented to a verifying server.
        """
        issued = pki().client
        creator = clientCreatorFor(clientContext(certChain=issued.certPEM, privateKey=issued.keyPEM), "a.example.com")
        client, pump = self.connectCreator(creator)
        pump.flush()
        self.clientTLS.write(b"\x00")
        pump.flush()
        [protocol] = self.filters["l1#0"].built
        self.assertEqual(protocol.downstream.peerCertificateSubject, "O=meshproxy tests,CN=client-1")

    def test_versionLimits(self) -> None:
        """
        C{max_version} caps what the client offers.
        """
        client, pump = self.connectCreator(clientCreatorFor(clientContext(maxVersion="TLSv1_2"), "a.example.com"))
        pump.flush()
        self.assertEqual(self.clientTLS.getHandle().get_protocol_version_name(), "TLSv1.2")

    def test_loadErrors(self) -> None:
        """
        Unreadable files are L{TLSLoadError}s naming the key and the file.
        """
        error = self.assertRaises(TLSLoadError, clientCreatorFor, clientContext(caCert="/nonexistent/ca.pem"), "a")
        self.assertEqual(error.key, "ca_cert")
        self.assertIn("/nonexistent/ca.pem", error.message)


class ServiceTests(SynchronousTestCase):
    """
    L{meshproxy.service.MeshProxyService} loads certificates when it builds listeners.
    """

    def test_builtChainsTerminate(self) -> None:
        """
        The service gives each terminating chain its L{ChainTLS} (kept in C{chainTLS} for the admin);
        a broken certificate file is a L{ConfigError} naming the file and its JSON path.
        """
        from meshproxy.service import MeshProxyService

        paths = pki().writeAll(self.mktemp())
        cert, key = paths["a"]
        doc = configDocument(listeners=[{"name": "l1", "address": "127.0.0.1:8443", "filter_chains": [
            tlsChain({"status": True, "cert_chain": cert, "private_key": key}, name="web"), tlsChain(
                serverContext(pki().b), name="other", filter_chain_match={"server_names": ["b.example.com"]})]}])
        service = MeshProxyService(makeConfig(doc), MemoryReactorClock())
        chains = service.listenerServices[0].listenerFactory.chains
        self.assertEqual([chain.tls for chain in chains], [service.chainTLS[("l1", "web")],
                                                          service.chainTLS[("l1", "other")]])
        self.assertEqual([info["chain"] for info in certificateInfo(service.chainTLS.values())], ["web", "other"])
        os.remove(cert)
        error = self.assertRaises(ConfigError, MeshProxyService, makeConfig(doc), MemoryReactorClock())
        [problem] = error.problems
        self.assertEqual(problem.path, "servers[0].listeners[0].filter_chains[0].tls_context.cert_chain")
        self.assertIn(repr(cert), problem.message)


class IdentityVerifierTests(SynchronousTestCase):
    """
    The client's verify callback never raises into OpenSSL.
    """

    def test_errorsAreRefusals(self) -> None:
        """
        A chain OpenSSL refused stays refused; an exception while checking the name is logged and
        refuses the certificate; intermediate certificates are left to OpenSSL.
        """
        from meshproxy.tlsclient import _identityVerifier

        class Broken:
            """
            A certificate that cannot be converted.
            """

            def to_cryptography(self) -> Any:
                raise RuntimeError("broken")

        verify = _identityVerifier("a.example.com")
        self.assertFalse(verify(None, Broken(), 0, 0, 0))  # type: ignore[arg-type]
        self.assertTrue(verify(None, Broken(), 0, 1, 1))  # type: ignore[arg-type]
        self.assertFalse(verify(None, Broken(), 0, 0, 1))  # type: ignore[arg-type]
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
