"""
TLS contexts built from configuration: PEM material (inline or from files), server contexts with
meshproxy's secure defaults, and the choice of a certificate by SNI.  The client side is
L{meshproxy.tlsclient}.

Everything here does I/O only when asked to load (L{loadServerCertificate}); the
objects it returns are then used for every connection without touching the disk again, so a reload
can build new ones and keep the old ones when loading fails.

Defaults (both sides): TLS 1.2 minimum; TLS 1.2 suites from L{DEFAULT_CIPHERS} (ECDHE and AEAD only),
TLS 1.3 suites OpenSSL's own; no compression; no renegotiation; session tickets and the server's
session cache off unless the context sets C{ticket}.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.config.tls import DEFAULT_CIPHERS, ECDH_CURVES, TLS12_CIPHERS, TLS13_CIPHERS
from meshproxy.config.tlsmodel import TLSContextConfig

log = Logger(namespace="meshproxy.tls")

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)
_NIST_CURVES = {"prime256v1": "SECP256R1", "secp384r1": "SECP384R1", "secp521r1": "SECP521R1"}


class TLSLoadError(Exception):
    """
    A certificate, key or CA could not be loaded.

    @ivar key: the C{tls_context} key it came from (C{cert_chain}, C{private_key}, C{ca_cert}).
    @ivar message: what went wrong, naming the file (or "inline PEM").
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _origin(source: str) -> str:
    return "inline PEM" if source == "inline" else f"file {source!r}"


def readPEM(value: str, key: str) -> tuple[bytes, str]:
    """
    The PEM text of a C{tls_context} value and where it came from: C{"inline"} when the value itself
    holds C{-----BEGIN} (as in MOSN), else the file path it names.
    """
    if "-----BEGIN" in value:
        return value.encode("utf-8"), "inline"
    try:
        with open(value, "rb") as f:
            return f.read(), value
    except OSError as e:
        raise TLSLoadError(key, f"cannot read file {value!r}: {e.strerror}") from e


def loadCertificates(value: str, key: str) -> tuple[tuple[x509.Certificate, ...], str]:
    """
    Every certificate in a PEM value (a chain: the leaf first), and its source.
    """
    data, source = readPEM(value, key)
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise TLSLoadError(key, f"{_origin(source)} holds no PEM certificate")
    certificates = []
    for block in blocks:
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError as e:
            raise TLSLoadError(key, f"{_origin(source)}: a certificate cannot be parsed: {e}") from e
    return tuple(certificates), source


def loadPrivateKey(value: str, key: str = "private_key") -> Any:
    """
    The unencrypted private key in a PEM value.
    """
    data, source = readPEM(value, key)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise TLSLoadError(key, f"{_origin(source)} holds an encrypted key: meshproxy needs it unencrypted") from e
    except Exception as e:
        raise TLSLoadError(key, f"{_origin(source)} holds no usable PEM private key: {e}") from e


def notAfter(certificate: x509.Certificate) -> datetime:
    """
    When C{certificate} expires, as an aware UTC datetime (any C{cryptography} version).
    """
    value = getattr(certificate, "not_valid_after_utc", None)
    if value is None:
        value = certificate.not_valid_after.replace(tzinfo=timezone.utc)
    return value  # type: ignore[no-any-return]


def _extension(certificate: x509.Certificate, oid: Any) -> Any:
    try:
        return certificate.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def dnsNames(certificate: x509.Certificate) -> tuple[str, ...]:
    """
    The certificate's DNS names, lower case: its SAN entries, else its common name.
    """
    san = _extension(certificate, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if san is not None:
        names = [name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)]
        if names:
            return tuple(dict.fromkeys(names))
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return tuple(str(attribute.value).lower() for attribute in common[:1])


def uris(certificate: x509.Certificate) -> tuple[str, ...]:
    """
    The certificate's SAN URIs (SPIFFE IDs and the like).
    """
    san = _extension(certificate, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    return () if san is None else tuple(san.get_values_for_type(x509.UniformResourceIdentifier))


def describeCertificate(certificate: x509.Certificate, source: str) -> dict[str, Any]:
    """
    What an operator needs to know about a certificate (never key material).
    """
    expires = notAfter(certificate)
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "names": list(dnsNames(certificate)),
        "notAfter": expires.isoformat(),
        "notAfterTimestamp": int(expires.timestamp()),
        "serial": format(certificate.serial_number, "x"),
        "source": source,
    }


def cipherLists(config: TLSContextConfig) -> tuple[str, str]:
    """
    The OpenSSL TLS 1.2 cipher list and TLS 1.3 suite list (C{""}: OpenSSL's default) for C{config}.
    """
    tls12: list[str] = []
    tls13: list[str] = []
    upper12 = {name.upper(): value for name, value in TLS12_CIPHERS.items()}
    upper13 = {name.upper(): value for name, value in TLS13_CIPHERS.items()}
    for suite in (part.strip().upper() for part in config.cipherSuites.split(":")):
        if suite in upper12:
            tls12.append(upper12[suite])
        elif suite in upper13:
            tls13.append(upper13[suite])
    return ":".join(dict.fromkeys(tls12 or DEFAULT_CIPHERS)), ":".join(dict.fromkeys(tls13))


def _minimumVersion(config: TLSContextConfig) -> int:
    return SSL.TLS1_3_VERSION if config.minVersion == "TLSv1_3" else SSL.TLS1_2_VERSION


def _maximumVersion(config: TLSContextConfig) -> int:
    return SSL.TLS1_2_VERSION if config.maxVersion == "TLSv1_2" else 0


def _x509(certificate: x509.Certificate) -> crypto.X509:
    return crypto.X509.from_cryptography(certificate)


def _give(method: Callable[[Any], None], value: Any) -> None:
    """
    Call a pyOpenSSL setter with a C{cryptography} certificate or key (newer pyOpenSSL wants those
    and deprecates its own types), or with pyOpenSSL's type where it accepts nothing else (before 24).
    """
    try:
        method(value)
    except TypeError:
        if isinstance(value, x509.Certificate):
            method(_x509(value))
        else:
            method(crypto.PKey.from_cryptography_key(value))


def _setCurve(context: SSL.Context, config: TLSContextConfig) -> None:
    """
    Restrict key exchange to the one NIST curve C{ecdh_curves} names; any other list keeps OpenSSL's
    default groups (X25519, P-256, P-384, ...), which already hold every curve MOSN accepts.
    """
    curves = [ECDH_CURVES[c.strip().lower()] for c in config.ecdhCurves.split(",") if c.strip()]
    if len(curves) != 1 or curves[0] not in _NIST_CURVES:
        return
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        context.set_tmp_ecdh(getattr(ec, _NIST_CURVES[curves[0]])())
    except (AttributeError, TypeError):  # pyOpenSSL before 24 wants its own curve object
        context.set_tmp_ecdh(crypto.get_elliptic_curve(curves[0]))


@implementer(IOpenSSLServerConnectionCreator)
class ServerCertificate:
    """
    One server-side TLS context: a certificate with its key, the pyOpenSSL context built from one
    L{TLSContextConfig}, and the names SNI chooses it by.

    @ivar names: exact names and C{*.suffix} wildcards: the context's C{server_name}, else the
        certificate's DNS names.
    @ivar strict: never the default certificate (C{strict_sni}).
    """

    def __init__(
        self,
        config: TLSContextConfig,
        context: SSL.Context,
        chain: Sequence[x509.Certificate],
        source: str,
    ) -> None:
        self.config = config
        self.context = context
        self.chain = tuple(chain)
        self.leaf = self.chain[0]
        self.source = source
        self.names = (config.serverName,) if config.serverName else dnsNames(self.leaf)
        self.strict = config.strictSNI
        self.alpn = tuple(protocol.encode("ascii") for protocol in config.alpn)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A new server-side connection; C{tlsProtocol} is kept as its app data for the callbacks.
        """
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        return connection

    def describe(self) -> dict[str, Any]:
        """
        L{describeCertificate} plus the names SNI chooses it by.
        """
        info = describeCertificate(self.leaf, self.source)
        info["sniNames"] = list(self.names)
        info["strictSNI"] = self.strict
        return info


def baseContext(config: TLSContextConfig) -> SSL.Context:
    """
    A context with meshproxy's defaults and C{config}'s versions, ciphers and curve: the part both
    sides share.  Session tickets stay off unless C{config.ticket} is set.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    options = (
        SSL.OP_NO_COMPRESSION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_SINGLE_ECDH_USE
        | SSL.OP_SINGLE_DH_USE
    )
    if not config.ticket:
        options |= SSL.OP_NO_TICKET
    context.set_options(options)
    context.set_min_proto_version(_minimumVersion(config))
    context.set_max_proto_version(_maximumVersion(config))
    tls12, tls13 = cipherLists(config)
    context.set_cipher_list(tls12.encode("ascii"))
    if tls13 and hasattr(context, "set_tls13_ciphersuites"):
        context.set_tls13_ciphersuites(tls13.encode("ascii"))
    _setCurve(context, config)
    return context


def useCertificate(context: SSL.Context, chain: Sequence[x509.Certificate], key: Any, source: str) -> None:
    """
    Give C{context} a certificate chain and its key.

    @raise TLSLoadError: the key does not fit the certificate.
    """
    try:
        _give(context.use_certificate, chain[0])
        for intermediate in chain[1:]:
            _give(context.add_extra_chain_cert, intermediate)
        _give(context.use_privatekey, key)
        context.check_privatekey()
    except (SSL.Error, TypeError, ValueError) as e:
        raise TLSLoadError("private_key", f"the key does not fit the certificate in {_origin(source)}: {e}") from e


def trust(context: SSL.Context, authorities: Sequence[x509.Certificate]) -> None:
    """
    Make C{context} trust C{authorities} when verifying its peer.
    """
    store = context.get_cert_store()
    assert store is not None
    for authority in authorities:
        store.add_cert(_x509(authority))


def loadServerCertificate(config: TLSContextConfig) -> ServerCertificate:
    """
    Read one server-side context's certificate, key and CA and build its pyOpenSSL context.

    @raise TLSLoadError: a file cannot be read or parsed, or the key does not match the certificate.
    """
    chain, source = loadCertificates(config.certChain, "cert_chain")
    key = loadPrivateKey(config.privateKey)
    context = baseContext(config)
    useCertificate(context, chain, key, source)
    if config.verifyClient:
        authorities, _ = loadCertificates(config.caCert, "ca_cert")
        trust(context, authorities)
        for authority in authorities:
            _give(context.add_client_ca, authority)
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if config.requireClientCert:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(mode)
    # Needed for session resumption with client verification; identifies this certificate's contexts.
    fingerprint = chain[0].fingerprint(hashes.SHA256())
    context.set_session_id(b"meshproxy" + fingerprint[:16])
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER if config.ticket else SSL.SESS_CACHE_OFF)
    certificate = ServerCertificate(config, context, chain, source)
    if certificate.alpn:
        context.set_alpn_select_callback(_alpnSelector(certificate.alpn))
    if notAfter(chain[0]) < datetime.now(timezone.utc):
        log.warn(
            "the TLS certificate in {source} ({subject}) expired on {expiry}",
            source=_origin(source), subject=chain[0].subject.rfc4514_string(), expiry=notAfter(chain[0]).isoformat(),
        )
    return certificate


def _alpnSelector(accepted: tuple[bytes, ...]) -> Callable[[SSL.Connection, list[bytes]], Any]:
    """
    The server's ALPN choice: its first protocol the client offers, else none (the handshake goes on
    without ALPN).  It never raises into OpenSSL: a failure aborts that connection only.
    """

    def select(connection: SSL.Connection, offered: list[bytes]) -> Any:
        try:
            for protocol in accepted:
                if protocol in offered:
                    return protocol
            return SSL.NO_OVERLAPPING_PROTOCOLS
        except BaseException:
            callbackFailed(connection, Failure())
            return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def callbackFailed(connection: SSL.Connection, failure: Failure) -> None:
    """
    Log an exception caught inside an OpenSSL callback and have its connection aborted (by the TLS
    protocol kept as the connection's app data, outside the callback).
    """
    log.failure("unexpected error in a TLS callback; aborting that connection", failure)
    try:
        owner = connection.get_app_data()
        getattr(owner, "callbackFailed")(failure)
    except Exception:
        log.failure("could not abort the connection after a TLS callback error")


class CertificateSet:
    """
    The certificates of one terminating filter chain and the choice among them by SNI: an exact name,
    then a wildcard for the name's first label, then the default (the first certificate that is not
    C{strict_sni}).  When several certificates claim a name, the first listed wins.
    """

    def __init__(self, certificates: Sequence[ServerCertificate]) -> None:
        self.certificates = tuple(certificates)
        self._exact: dict[str, ServerCertificate] = {}
        self._wildcard: dict[str, ServerCertificate] = {}
        for certificate in self.certificates:
            for name in certificate.names:
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], certificate)
                else:
                    self._exact.setdefault(name, certificate)
        self.default = next((c for c in self.certificates if not c.strict), None)

    def select(self, serverName: str | None) -> ServerCertificate | None:
        """
        The certificate for a ClientHello naming C{serverName} (or none), or L{None} to refuse it.
        """
        if serverName:
            name = serverName.lower().rstrip(".")
            found = self._exact.get(name)
            if found is not None:
                return found
            _, dot, parent = name.partition(".")
            if dot and parent:
                found = self._wildcard.get(parent)
                if found is not None:
                    return found
        return self.default


def peerCertificateFacts(certificate: x509.Certificate) -> dict[str, Any]:
    """
    What a network filter may want of a verified client certificate: subject (RFC 4514), SAN URIs and
    DNS names, SHA-256 hash of its DER form (hex) and its PEM.
    """
    san = _extension(certificate, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    return {
        "subject": certificate.subject.rfc4514_string(),
        "uris": uris(certificate),
        "dnsNames": () if san is None else tuple(san.get_values_for_type(x509.DNSName)),
        "hash": certificate.fingerprint(hashes.SHA256()).hex(),
        "pem": certificate.public_bytes(serialization.Encoding.PEM),
    }

