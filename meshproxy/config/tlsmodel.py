"""
The TLS part of the configuration model (MOSN's C{tls_context}), shared by filter chains and clusters.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class TLSContextConfig:
    """
    MOSN's TLS context (C{tls_context}) for terminating TLS on a filter chain.

    C{caCert}, C{certChain} and C{privateKey} are inline PEM when they contain C{-----BEGIN}, else file
    paths (as in MOSN).  C{alpn} is MOSN's comma-separated string, split; C{cipherSuites} and C{ecdhCurves}
    stay MOSN's colon-separated strings.  Versions are C{""} (default) or one of C{TLS_AUTO}, C{TLSv1_0},
    C{TLSv1_1}, C{TLSv1_2}, C{TLSv1_3}.
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
