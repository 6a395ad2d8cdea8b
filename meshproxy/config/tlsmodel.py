"""
The TLS part of the configuration model (MOSN's C{tls_context}), shared by filter chains and clusters.

Values only: certificate and key files are not read here (the config layer does no I/O).  They are
loaded when the configuration is built into a running service (L{meshproxy.tls.loadListenerTLS},
L{meshproxy.tls.clientCreatorFor}).
"""

from __future__ import annotations

import attrs

#: Seconds a client has to finish the TLS handshake (the listener's C{tls_handshake_timeout}).
DEFAULT_TLS_HANDSHAKE_TIMEOUT = 10.0


@attrs.frozen
class TLSContextConfig:
    """
    One MOSN TLS context (C{tls_context}, or one entry of C{tls_context_set}): a certificate and how
    to use it, on a filter chain (server side) or a cluster (client side).

    C{caCert}, C{certChain} and C{privateKey} are inline PEM when they contain C{-----BEGIN}, else file
    paths (as in MOSN).  C{alpn} is MOSN's comma-separated string, split (only C{http/1.1} is accepted);
    C{cipherSuites} and C{ecdhCurves} stay MOSN's separated strings, validated.  Versions are C{""}
    (default: TLS 1.2 minimum, the highest the library has as maximum), C{TLSv1_2} or C{TLSv1_3}.

    @ivar serverName: server side: the name (exact or C{*.suffix}) this certificate is chosen for by SNI,
        instead of the names in the certificate; client side: the SNI sent and the name verified.
    @ivar verifyClient: server side: verify a client certificate when one is presented.
    @ivar requireClientCert: server side: refuse clients without a valid certificate (implies
        C{verifyClient}).
    @ivar insecureSkip: client side: do not verify the server's certificate or name.
    @ivar ticket: MOSN's C{ticket}: any non-empty value turns TLS session tickets (and the server's
        session cache) on; they are off by default.
    @ivar strictSNI: server side, a meshproxy extension (HAProxy's name): this certificate is served
        only to clients that ask for one of its names, never as the default.
    """

    status: bool = False
    serverName: str = ""
    caCert: str = ""
    certChain: str = ""
    privateKey: str = ""
    verifyClient: bool = False
    requireClientCert: bool = False
    insecureSkip: bool = False
    cipherSuites: str = ""
    ecdhCurves: str = ""
    minVersion: str = ""
    maxVersion: str = ""
    alpn: tuple[str, ...] = ()
    ticket: str = ""
    fallBack: bool = False
    strictSNI: bool = False


@attrs.frozen
class ServerTLSConfig(TLSContextConfig):
    """
    TLS termination on a filter chain: every certificate it may serve, chosen by SNI.

    Its own L{TLSContextConfig} fields are those of the first context (MOSN's C{tls_context}, or the
    first entry of C{tls_context_set}), so code that reads a chain's C{tls} as one context keeps
    working; L{contexts} lists all of them in order, the first included.

    @ivar contexts: the chain's TLS contexts, in configuration order (the first that is not
        C{strictSNI} is the default certificate).
    @ivar handshakeTimeout: the listener's C{tls_handshake_timeout}, in seconds.
    @ivar fromContextSet: whether the contexts came from C{tls_context_set} (for JSON paths in errors).
    """

    contexts: tuple[TLSContextConfig, ...] = ()
    handshakeTimeout: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT
    fromContextSet: bool = False
