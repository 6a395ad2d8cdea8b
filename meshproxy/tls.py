"""
TLS termination on filter chains, and the client side for clusters.

The sniffer has already read the ClientHello (SNI, ALPN) without a handshake and picked a chain.  For
a chain that terminates TLS, L{ChainTLS.buildProtocol} picks the certificate by SNI before any
handshake (so there is no SNI callback and no context switch that would lose ALPN), wraps a
L{DecryptedStreamSniffer} in Twisted's C{TLSMemoryBIOProtocol}, and the sniffer replays the buffered
ClientHello into it.  After the handshake the decrypted stream is sniffed again (ALPN C{http/1.1}
decides at once) and handed to the chain's network filter, which then sees the TLS protocol as its
transport.

Certificates are loaded when the configuration is built (L{loadListenerTLS}), never while parsing,
and a chain's L{ChainTLS} never reads files afterwards: a reload can build new ones and keep the old
ones when loading fails.  Contexts and PEM loading live in L{meshproxy.tlscontext}, the client side
(re-exported here) in L{meshproxy.tlsclient}.
"""

from __future__ import annotations

from typing import Any, Iterable

from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.chains import innerProtocolAllowed
from meshproxy.classify import Verdict, classify
from meshproxy.config import Config, ConfigError, Problem
from meshproxy.config.tlsmodel import ServerTLSConfig
from meshproxy.needmore import NEED_MORE
from meshproxy.sniff import UNRECOGNIZED_NAME_ALERT, handOff
from meshproxy.stats import Counter, StatsStore
from meshproxy.tlsclient import ClientTLS, clientCreatorFor
from meshproxy.tlscontext import (
    CertificateSet,
    ServerCertificate,
    TLSLoadError,
    loadServerCertificate,
    notAfter,
    peerCertificateFacts,
)

__all__ = [
    "ChainTLS",
    "ClientTLS",
    "DecryptedStreamSniffer",
    "TLSLoadError",
    "TLSStats",
    "certificateInfo",
    "checkListenerTLS",
    "clientCreatorFor",
    "handshakeFailureReason",
    "loadListenerTLS",
]

log = Logger(namespace="meshproxy.tls")

_TLSBase: Any = TLSMemoryBIOFactory.protocol  # BufferingTLSTransport in newer Twisted
_FACTORY_TAKES_CLOCK = "clock" in TLSMemoryBIOFactory.__init__.__code__.co_varnames

# Substrings of OpenSSL's error reasons, in the order they are tried, and the counter label for each.
_FAILURE_REASONS = (
    ("unexpected eof", "connection_closed"),
    ("unsupported protocol", "unsupported_version"),
    ("wrong version number", "unsupported_version"),
    ("version too low", "unsupported_version"),
    ("protocol version", "unsupported_version"),
    ("no shared cipher", "no_shared_cipher"),
    ("no suitable signature", "no_shared_cipher"),
    ("peer did not return a certificate", "no_client_certificate"),
    ("certificate verify failed", "bad_client_certificate"),
    ("no application protocol", "no_application_protocol"),
    ("http request", "plaintext_http"),
    ("alert", "client_alert"),
)


def handshakeFailureReason(reason: Failure | None) -> str:
    """
    A short fixed label for why a handshake failed (for counters): C{unsupported_version},
    C{no_shared_cipher}, C{no_client_certificate}, C{bad_client_certificate}, C{client_alert},
    C{connection_closed}, ... or C{other}.
    """
    if reason is None or not isinstance(reason.value, SSL.Error):
        return "connection_closed"
    text = str(reason.value).lower()  # the (library, function, reason) triples OpenSSL queued
    for fragment, label in _FAILURE_REASONS:
        if fragment in text:
            return label
    return "other"


class TLSStats:
    """
    The TLS counters of one terminating filter chain: handshakes, failures by reason, versions and
    ciphers negotiated, and each certificate's expiry.
    """

    def __init__(self, stats: StatsStore, listener: str, chain: str) -> None:
        self._stats = stats
        self._labels = {"listener": listener, "chain": chain}
        self.handshakes = stats.counter("tls_handshake_total", "TLS handshakes completed.", **self._labels)
        self._failures: dict[str, Counter] = {}
        self._versions: dict[str, Counter] = {}
        self._ciphers: dict[str, Counter] = {}

    def failed(self, reason: str) -> None:
        """
        Count a handshake that failed (or a ClientHello refused) for C{reason}.
        """
        counter = self._failures.get(reason)
        if counter is None:
            counter = self._failures[reason] = self._stats.counter(
                "tls_handshake_failure_total", "TLS handshakes that failed, by reason.", reason=reason,
                **self._labels,
            )
        counter.value += 1

    def negotiated(self, version: str, cipher: str) -> None:
        """
        Count a completed handshake with its version and cipher.
        """
        self.handshakes.value += 1
        counter = self._versions.get(version)
        if counter is None:
            counter = self._versions[version] = self._stats.counter(
                "tls_version_total", "TLS handshakes completed, by version.", version=version, **self._labels
            )
        counter.value += 1
        counter = self._ciphers.get(cipher)
        if counter is None:
            counter = self._ciphers[cipher] = self._stats.counter(
                "tls_cipher_total", "TLS handshakes completed, by cipher.", cipher=cipher, **self._labels
            )
        counter.value += 1

    def certificateExpiry(self, name: str, timestamp: int) -> None:
        """
        Publish when the certificate called C{name} expires (Unix seconds).
        """
        # StatsStore.gauge() takes the metric's name as a keyword too, so a label called "name" goes in
        # through the series lookup it wraps.
        self._stats._series(
            "tls_certificate_expiry_timestamp_seconds", "gauge",
            "When each served TLS certificate expires (Unix time).", {"name": name, **self._labels},
        ).value = timestamp


class _TerminatingTLSProtocol(_TLSBase):  # type: ignore[misc]
    """
    Twisted's TLS protocol with the two things a proxy needs on top: a half-close that sends
    C{close_notify} after every byte written so far (instead of shutting the socket under buffered TLS
    data), and aborting the connection when an OpenSSL callback failed.

    It relies on C{TLSMemoryBIOProtocol}'s C{_tlsConnection}, C{_handshakeDone}, C{_appSendBuffer} and
    C{_flushSendBIO}, which are the same from Twisted 22.4 to 26 (as is C{_aggregator} where it exists).
    """

    clock: IReactorTime

    def loseWriteConnection(self) -> None:
        """
        Flush, send C{close_notify}, then half-close the socket; reading goes on (TLS 1.3 and
        OpenSSL allow it) until the client closes too.
        """
        if self.disconnecting or not self.connected:
            return
        aggregator = getattr(self, "_aggregator", None)
        if aggregator is not None:
            aggregator.flush()
        if not self._handshakeDone or self._appSendBuffer:
            # Nothing can be half-closed before the handshake, nor with writes still queued for it.
            self.loseConnection()
            return
        try:
            self._tlsConnection.shutdown()
        except SSL.Error:
            pass
        self._flushSendBIO()
        self.transport.loseWriteConnection()

    def callbackFailed(self, failure: Failure) -> None:
        """
        An OpenSSL callback of this connection failed (already logged): abort outside the callback.
        """
        failed = getattr(self.wrappedProtocol, "callbackFailed", None)
        if failed is not None:
            failed()
        self.clock.callLater(0, self.abortConnection)


class _RefusingProtocol(Protocol):
    """
    Answers a ClientHello that no certificate serves with a fatal C{unrecognized_name} alert.
    """

    def __init__(self, downstream: Any) -> None:
        self.downstream = downstream

    def connectionMade(self) -> None:
        self.transport.write(UNRECOGNIZED_NAME_ALERT)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.downstream.closed()


@implementer(IHandshakeListener)
class DecryptedStreamSniffer(Protocol):
    """
    The protocol inside a terminating TLS connection until the decrypted stream is handed off.

    States:
      - HANDSHAKING: the handshake deadline runs; a failure is counted by reason.
      - SNIFFING: the handshake is done; decrypted bytes are buffered and classified (HTTP/1 or raw)
        until a verdict, the sniff buffer cap or the listener's sniff deadline.  ALPN C{http/1.1}
        skips this state.
      - HANDED_OFF: the chain's network filter owns the TLS transport.
      - CLOSED: the connection ended before a hand-off, or the chain refused the decrypted protocol.
    """

    HANDSHAKING, SNIFFING, HANDED_OFF, CLOSED = "HANDSHAKING", "SNIFFING", "HANDED_OFF", "CLOSED"

    def __init__(self, tls: ChainTLS, chain: Any, listener: Any, downstream: Any) -> None:
        self.tls = tls
        self.chain = chain
        self.listener = listener
        self.downstream = downstream
        self.state = self.HANDSHAKING
        self._buffer = b""
        self._timer: Any = None
        self._failure: str | None = None

    def connectionMade(self) -> None:
        self._timer = self.listener.clock.callLater(self.tls.handshakeTimeout, self._handshakeTimedOut)

    def _handshakeTimedOut(self) -> None:
        self._timer = None
        self._failure = "timeout"
        self.transport.abortConnection()  # type: ignore[union-attr]

    def callbackFailed(self) -> None:
        """
        An OpenSSL callback failed during the handshake; the TLS protocol aborts the connection.
        """
        self._failure = "callback_error"

    def _stopTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def handshakeCompleted(self) -> None:
        self._stopTimer()
        self._recordHandshake()
        if self.downstream.tlsALPN == "http/1.1":
            self._handOff("http1")
            return
        self.state = self.SNIFFING
        self._timer = self.listener.clock.callLater(self.listener.config.sniffTimeout, self._sniffDeadline)

    def _recordHandshake(self) -> None:
        """
        Put the negotiated version, cipher, ALPN and verified client certificate on the downstream.
        """
        connection = self.transport.getHandle()  # type: ignore[union-attr]
        downstream = self.downstream
        downstream.tls = True
        downstream.tlsVersion = connection.get_protocol_version_name()
        downstream.tlsCipher = connection.get_cipher_name()
        alpn = connection.get_alpn_proto_negotiated()
        downstream.tlsALPN = alpn.decode("ascii", "replace") if alpn else None
        certificate = _peerCertificate(connection)
        if certificate is not None:
            facts = peerCertificateFacts(certificate)
            downstream.peerCertificateSubject = facts["subject"]
            downstream.peerCertificateURIs = facts["uris"]
            downstream.peerCertificateDNSNames = facts["dnsNames"]
            downstream.peerCertificateHash = facts["hash"]
            downstream.peerCertificatePEM = facts["pem"]
        self.tls.stats.negotiated(downstream.tlsVersion or "unknown", downstream.tlsCipher or "unknown")

    def dataReceived(self, data: bytes) -> None:
        if self.state != self.SNIFFING:
            return
        self._buffer += data
        self._classify(final=False)

    def _sniffDeadline(self) -> None:
        self._timer = None
        self.listener.sniffTimeouts.inc()
        self._classify(final=True)

    def _classify(self, final: bool) -> None:
        verdict = classify(self._buffer, eof=final, maxBytes=self.listener.config.sniffMaxBytes)
        if verdict is NEED_MORE:
            return
        assert isinstance(verdict, Verdict)
        # TLS inside TLS is not unwrapped again: relay it as raw bytes.
        self._handOff("raw" if verdict.protocol == "tls" else verdict.protocol)

    def _handOff(self, protocol: str) -> None:
        self._stopTimer()
        transport = self.transport
        if not innerProtocolAllowed(self.chain, protocol):
            self.state = self.CLOSED
            self.listener.noChain.inc()
            log.info(
                "listener {listener}: chain {chain} does not take decrypted {protocol} from {client}",
                listener=self.downstream.listenerName, chain=self.chain.name, protocol=protocol,
                client=self.downstream.clientAddress,
            )
            transport.loseConnection()  # type: ignore[union-attr]
            return
        self.downstream.protocol = protocol
        networkProtocol = self.chain.buildProtocol(self.downstream)
        self.state = self.HANDED_OFF
        buffer, self._buffer = self._buffer, b""
        handOff(transport, self, networkProtocol, buffer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.state == self.HANDED_OFF:
            return
        self._stopTimer()
        if self.state == self.HANDSHAKING:
            why = self._failure or handshakeFailureReason(reason)
            self.tls.stats.failed(why)
            log.info(
                "listener {listener}: TLS handshake with {client} failed ({why}, sni={sni}): {error}",
                listener=self.downstream.listenerName, client=self.downstream.clientAddress, why=why,
                sni=self.downstream.serverName, error=reason.getErrorMessage() if reason is not None else "",
            )
        self.state = self.CLOSED
        self.downstream.closed()


def _peerCertificate(connection: Any) -> Any:
    """
    The client's certificate as a C{cryptography} object, or L{None}; OpenSSL has verified it (the
    handshake fails otherwise), since clients are only asked for one when C{verify_client} is set.
    """
    try:
        return connection.get_peer_certificate(as_cryptography=True)
    except TypeError:  # pyOpenSSL before 24.3
        certificate = connection.get_peer_certificate()
        return None if certificate is None else certificate.to_cryptography()


class ChainTLS:
    """
    A terminating filter chain's TLS at run time: its certificates by SNI, one TLS factory per
    certificate, the handshake timeout and the chain's TLS counters.
    """

    def __init__(
        self,
        config: ServerTLSConfig,
        certificates: CertificateSet,
        clock: IReactorTime,
        stats: StatsStore,
        listenerName: str,
        chainName: str,
    ) -> None:
        self.config = config
        self.certificates = certificates
        self.clock = clock
        self.handshakeTimeout = config.handshakeTimeout
        self.listenerName = listenerName
        self.chainName = chainName
        self.stats = TLSStats(stats, listenerName, chainName)
        self._factories: dict[int, TLSMemoryBIOFactory] = {}
        for certificate in certificates.certificates:
            self._factories[id(certificate)] = _tlsFactory(certificate, clock)
            name = certificate.names[0] if certificate.names else certificate.leaf.subject.rfc4514_string()
            self.stats.certificateExpiry(name, int(notAfter(certificate.leaf).timestamp()))

    def buildProtocol(self, chain: Any, listener: Any, downstream: Any, serverName: str | None) -> Protocol:
        """
        The protocol for a TLS connection to this chain: the TLS protocol with the certificate SNI
        selects, or one that refuses the client with an alert (counted) when none serves its name.
        """
        certificate = self.certificates.select(serverName)
        if certificate is None:
            self.stats.failed("unknown_server_name")
            log.info(
                "listener {listener}: no certificate of chain {chain} serves {sni!r}; refusing {client}",
                listener=self.listenerName, chain=self.chainName, sni=serverName, client=downstream.clientAddress,
            )
            return _RefusingProtocol(downstream)
        factory = self._factories[id(certificate)]
        protocol = _TerminatingTLSProtocol(factory, DecryptedStreamSniffer(self, chain, listener, downstream))
        protocol.clock = self.clock
        return protocol  # type: ignore[no-any-return]

    def certificateInfo(self) -> list[dict[str, Any]]:
        """
        One entry per certificate (see L{certificateInfo}).
        """
        default = self.certificates.default
        result = []
        for certificate in self.certificates.certificates:
            info = certificate.describe()
            info.update(listener=self.listenerName, chain=self.chainName, default=certificate is default)
            result.append(info)
        return result


def _tlsFactory(certificate: ServerCertificate, clock: IReactorTime) -> TLSMemoryBIOFactory:
    """
    A server-side TLS factory for one certificate, scheduling (where Twisted does) on C{clock}.
    """
    if _FACTORY_TAKES_CLOCK:
        return TLSMemoryBIOFactory(certificate, False, Factory(), clock=clock)
    return TLSMemoryBIOFactory(certificate, False, Factory())


_Loaded = list[tuple[str, str, ServerTLSConfig, list[ServerCertificate]]]


def _loadCertificates(config: Config) -> tuple[list[Problem], _Loaded]:
    """
    Load every terminating chain's certificates: the problems (JSON path, file) and what loaded.
    """
    problems: list[Problem] = []
    loaded: _Loaded = []
    for i, server in enumerate(config.servers):
        for j, listener in enumerate(server.listeners):
            for k, chain in enumerate(listener.filterChains):
                tls = chain.tls
                if tls is None:
                    continue
                assert isinstance(tls, ServerTLSConfig)
                base = f"servers[{i}].listeners[{j}].filter_chains[{k}]"
                certificates = []
                for m, context in enumerate(tls.contexts):
                    path = f"{base}.tls_context_set[{m}]" if tls.fromContextSet else f"{base}.tls_context"
                    try:
                        certificates.append(loadServerCertificate(context))
                    except TLSLoadError as e:
                        problems.append(Problem(f"{path}.{e.key}", e.message))
                loaded.append((listener.name, chain.name, tls, certificates))
    return problems, loaded


def checkListenerTLS(config: Config) -> list[Problem]:
    """
    Load every certificate, key and CA the listeners name, and return what cannot be loaded (JSON
    path, file, reason) without building anything: for C{check-config}.
    """
    return _loadCertificates(config)[0]


def loadListenerTLS(config: Config, clock: IReactorTime, stats: StatsStore) -> dict[tuple[str, str], ChainTLS]:
    """
    Load the certificates of every filter chain that terminates TLS and build its L{ChainTLS}, keyed
    by C{(listener name, chain name)}.

    @raise ConfigError: listing every certificate, key or CA that cannot be loaded, each with its JSON
        path and the file it names; nothing is built (and no stats are touched) then.
    """
    problems, loaded = _loadCertificates(config)
    if problems:
        raise ConfigError(problems)
    return {
        (listenerName, chainName): ChainTLS(tls, CertificateSet(certificates), clock, stats, listenerName, chainName)
        for listenerName, chainName, tls, certificates in loaded
    }


def certificateInfo(chains: Iterable[ChainTLS]) -> list[dict[str, Any]]:
    """
    What the admin shows about served certificates: per certificate its listener, chain, subject,
    issuer, DNS names, SNI names, C{notAfter} (ISO 8601 and Unix seconds), serial (hex), source (the
    file path, or C{"inline"}) and whether it is the chain's default.  Never key material.
    """
    return [info for chain in chains for info in chain.certificateInfo()]
