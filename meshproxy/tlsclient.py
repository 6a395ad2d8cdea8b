"""
The client side of TLS, for connections to upstream hosts: a cluster's C{tls_context} made into
Twisted connection creators that send SNI and, unless C{insecure_skip}, verify the server's chain
(against C{ca_cert}, else the platform's roots) and name (service-identity rules), with the same
version, cipher and option defaults as the server side (L{meshproxy.tlscontext.baseContext}).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Sequence

from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from meshproxy.config.tlsmodel import TLSContextConfig
from meshproxy.tlscontext import baseContext, loadCertificates, loadPrivateKey, trust, useCertificate

__all__ = ["ClientTLS", "clientCreatorFor"]

log = Logger(namespace="meshproxy.tls")


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """
    Client connections to one server name: SNI (unless the name is an IP address), and whatever
    verification the context was given.
    """

    def __init__(self, context: SSL.Context, serverName: str) -> None:
        self._context = context
        self._serverName = serverName

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A new client-side connection naming the server (SNI); C{tlsProtocol} is its app data.
        """
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._serverName and not _isIPAddress(self._serverName):
            connection.set_tlsext_host_name(self._serverName.encode("idna"))
        return connection


def _isIPAddress(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class ClientTLS:
    """
    A cluster's client-side TLS, loaded once (CA, client certificate); L{creatorFor} then makes the
    connection creator for one server name.  Creators are meant to be kept per host: each holds its
    own OpenSSL context.
    """

    def __init__(self, config: TLSContextConfig, authorities: Sequence[x509.Certificate],
                 chain: Sequence[x509.Certificate], key: Any, source: str = "") -> None:
        self.config = config
        self.authorities = tuple(authorities)
        self.chain = tuple(chain)
        self.key = key
        self.source = source

    @classmethod
    def load(cls, config: TLSContextConfig) -> ClientTLS:
        """
        Read the files C{config} names.

        @raise TLSLoadError: one cannot be read or parsed.
        """
        authorities = loadCertificates(config.caCert, "ca_cert")[0] if config.caCert else ()
        chain: tuple[x509.Certificate, ...] = ()
        key = None
        source = ""
        if config.certChain:
            chain, source = loadCertificates(config.certChain, "cert_chain")
            key = loadPrivateKey(config.privateKey)
            useCertificate(baseContext(config), chain, key, source)  # the key must fit, now
        return cls(config, authorities, chain, key, source)

    def creatorFor(self, serverName: str = "") -> IOpenSSLClientConnectionCreator:
        """
        The connection creator for a server called C{serverName} (else the context's C{server_name}):
        the SNI sent and, unless C{insecure_skip}, the name its certificate must carry (checked with
        C{service_identity} during the handshake; an IP address is checked against IP SANs and
        sends no SNI).  The server's chain is verified against C{ca_cert}, else the platform's
        trusted roots.  The caller should log a warning when C{insecure_skip} is set.

        @raise ValueError: no name to verify and verification is on.
        """
        config = self.config
        name = (serverName or config.serverName).strip("[]")
        if not name and not config.insecureSkip:
            raise ValueError("verifying the server needs a server name (set 'server_name' or 'insecure_skip')")
        context = baseContext(config)
        if self.chain:
            useCertificate(context, self.chain, self.key, self.source)
        if config.alpn:
            context.set_alpn_protos([protocol.encode("ascii") for protocol in config.alpn])
        if config.insecureSkip:
            context.set_verify(SSL.VERIFY_NONE)
            return _ClientCreator(context, name)
        if self.authorities:
            trust(context, self.authorities)
        else:
            context.set_default_verify_paths()
        context.set_verify(SSL.VERIFY_PEER, _identityVerifier(name))
        return _ClientCreator(context, name)


def _identityVerifier(name: str) -> Callable[..., bool]:
    """
    OpenSSL's verify callback for a client: the chain as OpenSSL judged it, and the leaf must carry
    C{name} (service-identity rules: DNS-ID, or an IP SAN for an address).  A mismatch fails the
    handshake (alert C{bad_certificate}).  It never raises into OpenSSL.
    """
    isAddress = _isIPAddress(name)

    def verify(connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int) -> bool:
        if not ok:
            return False
        if depth != 0:
            return True
        try:
            leaf = certificate.to_cryptography()
            if isAddress:
                verify_certificate_ip_address(leaf, name)
            else:
                verify_certificate_hostname(leaf, name)
        except (VerificationError, CertificateError) as e:
            log.info("TLS server certificate does not match {name}: {error}", name=name, error=e)
            return False
        except BaseException:
            log.failure("unexpected error verifying a TLS server certificate for {name}", name=name)
            return False
        return True

    return verify


def clientCreatorFor(config: TLSContextConfig, serverName: str) -> IOpenSSLClientConnectionCreator:
    """
    Load C{config}'s files and make the client connection creator for C{serverName} (see
    L{ClientTLS.creatorFor}; use L{ClientTLS} directly to load once for many hosts).

    @raise TLSLoadError: a file cannot be read or parsed.
    """
    return ClientTLS.load(config).creatorFor(serverName)
