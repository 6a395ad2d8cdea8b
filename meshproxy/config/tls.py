"""
Reading MOSN's C{tls_context} (filter chains and clusters) and C{tls_context_set} (filter chains).

Pure: certificate and key files are only named here; L{meshproxy.tls} loads them when the service is
built.  L{parseTLSContext} is shared by both sides; C{forServer} decides which keys make sense.

Secure defaults, stricter than MOSN: TLS 1.2 is the minimum (C{TLSv1_0} and C{TLSv1_1} are refused),
3DES suites are refused, client-certificate checks need C{ca_cert} (never the system roots), ALPN
offers only C{http/1.1} (meshproxy has no HTTP/2), and MOSN's C{fall_back} (serve plaintext when a
certificate cannot be loaded) is not supported.

meshproxy extensions: C{strict_sni} on a server-side context (HAProxy's name: the certificate is never
the default for unknown names); C{tls_handshake_timeout} on the listener (read by
L{meshproxy.config.listeners}).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

import attrs

from meshproxy.config.jsonvalues import describe, didYouMean
from meshproxy.config.reader import Fields, KeySpec, iterObjects, tolerateEmpty, tolerateValues
from meshproxy.config.tlsmodel import DEFAULT_TLS_HANDSHAKE_TIMEOUT, ServerTLSConfig, TLSContextConfig

__all__ = [
    "TLS_CONTEXT_KEYS",
    "TLS_VERSIONS",
    "TLS12_CIPHERS",
    "TLS13_CIPHERS",
    "DEFAULT_CIPHERS",
    "ECDH_CURVES",
    "SERVER_NAME",
    "parseTLSContext",
    "parseServerTLS",
]

#: The versions MOSN names; the first two are refused (insecure), C{TLS_AUTO} means the default.
TLS_VERSIONS: Final = ("TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3")
_INSECURE_VERSIONS: Final = ("TLSv1_0", "TLSv1_1")
_VERSION_ORDER: Final = {"TLSv1_2": 2, "TLSv1_3": 3}

#: TLS 1.2 cipher suites meshproxy accepts in C{cipher_suites}: MOSN's names and OpenSSL's, each
#: mapped to OpenSSL's name.  Forward-secret AEAD suites, then (for old peers, only when listed) CBC
#: and static-RSA suites; 3DES is refused.
TLS12_CIPHERS: Final = {
    "ECDHE-ECDSA-AES256-GCM-SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-WITH-CHACHA20-POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-WITH-CHACHA20-POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES256-CBC-SHA": "ECDHE-RSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA": "ECDHE-RSA-AES256-SHA",
    "ECDHE-RSA-AES128-CBC-SHA": "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA": "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-CBC-SHA": "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-ECDSA-AES256-SHA": "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-ECDSA-AES128-CBC-SHA": "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-ECDSA-AES128-SHA": "ECDHE-ECDSA-AES128-SHA",
    "RSA-AES256-CBC-SHA": "AES256-SHA",
    "AES256-SHA": "AES256-SHA",
    "RSA-AES128-CBC-SHA": "AES128-SHA",
    "AES128-SHA": "AES128-SHA",
}
#: TLS 1.3 suites: MOSN's names (its C{AES256-GCM-SHA384} is the TLS 1.3 suite) and the IANA names.
TLS13_CIPHERS: Final = {
    "AES256-GCM-SHA384": "TLS_AES_256_GCM_SHA384",
    "AES128-GCM-SHA256": "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384": "TLS_AES_256_GCM_SHA384",
    "TLS_AES_128_GCM_SHA256": "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256": "TLS_CHACHA20_POLY1305_SHA256",
}
_REFUSED_CIPHERS: Final = ("ECDHE-RSA-3DES-EDE-CBC-SHA", "RSA-3DES-EDE-CBC-SHA", "DES-CBC3-SHA")
#: The TLS 1.2 suites used when C{cipher_suites} is empty: ECDHE key exchange and AEAD only (no static
#: RSA, no CBC).  TLS 1.3 suites are OpenSSL's defaults, all AEAD.
DEFAULT_CIPHERS: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
#: MOSN's C{ecdh_curves} names (compared case-insensitively), mapped to OpenSSL's curve names.
ECDH_CURVES: Final = {"p256": "prime256v1", "p384": "secp384r1", "p521": "secp521r1", "x25519": "X25519"}
ALPN_PROTOCOLS: Final = ("http/1.1",)

#: A server name in C{server_names} or a server-side C{server_name}: a host name or C{*.suffix}.
SERVER_NAME: Final = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\Z")

TLS_CONTEXT_KEYS: Final = KeySpec(
    known=(
        "status",
        "server_name",
        "ca_cert",
        "cert_chain",
        "private_key",
        "verify_client",
        "require_client_cert",
        "insecure_skip",
        "cipher_suites",
        "ecdh_curves",
        "min_version",
        "max_version",
        "alpn",
        "ticket",
        "strict_sni",
    ),
    unsupported={
        "type": tolerateValues(""),
        "fall_back": tolerateValues(False),
        "extend_verify": tolerateEmpty(),
        "callbacks": tolerateEmpty(),
        "sds_source": tolerateEmpty(),
    },
)

_CONTEXT_FIELDS: Final = tuple(field.name for field in attrs.fields(TLSContextConfig))
_SERVER_ONLY: Final = ("verify_client", "require_client_cert", "strict_sni", "ticket")
_CLIENT_ONLY: Final = ("insecure_skip",)


def parseTLSContext(fields: Fields | None, *, forServer: bool) -> TLSContextConfig | None:
    """
    One C{tls_context} object (as read with L{TLS_CONTEXT_KEYS}), or L{None} when it is absent, C{{}}
    or has C{status: false} (plaintext, as in MOSN).

    @param forServer: C{True} for a filter chain (a certificate and key are required; client
        verification keys apply), C{False} for a cluster (C{insecure_skip} applies; a client
        certificate is optional).
    """
    if fields is None or not fields.boolean("status"):
        return None
    return _context(fields, forServer)


def parseServerTLS(chain: Fields, handshakeTimeout: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT) -> ServerTLSConfig | None:
    """
    A filter chain's C{tls_context} or C{tls_context_set} (one of them), or L{None} for plaintext.

    Every entry of C{tls_context_set} must have C{status: true}; an empty set means plaintext.
    """
    single = parseTLSContext(chain.object("tls_context", TLS_CONTEXT_KEYS), forServer=True)
    contexts: list[TLSContextConfig] = []
    for path, entry in iterObjects(chain.items("tls_context_set"), chain.problems, TLS_CONTEXT_KEYS):
        if not entry.boolean("status"):
            chain.problems.add(path, "every tls_context_set entry needs \"status\": true")
            continue
        contexts.append(_context(entry, True))
    if single is not None and contexts:
        chain.problem("tls_context_set", "give either 'tls_context' or 'tls_context_set', not both (as in MOSN)")
    fromSet = single is None and bool(contexts)
    if single is not None:
        contexts = [single]
    if not contexts:
        return None
    first = contexts[0]
    return ServerTLSConfig(
        **{name: getattr(first, name) for name in _CONTEXT_FIELDS},
        contexts=tuple(contexts),
        handshakeTimeout=handshakeTimeout,
        fromContextSet=fromSet,
    )


def _context(fields: Fields, forServer: bool) -> TLSContextConfig:
    if forServer:
        for key in ("cert_chain", "private_key"):
            fields.string(key, required=True, nonEmpty=True)
    elif bool(fields.string("cert_chain")) != bool(fields.string("private_key")):
        fields.problem(
            "cert_chain" if not fields.string("cert_chain") else "private_key",
            "a client certificate needs both 'cert_chain' and 'private_key'",
        )
    for key in _CLIENT_ONLY if forServer else _SERVER_ONLY:
        if fields.has(key) and fields.raw(key) not in (False, ""):
            side = "clusters (the client side)" if forServer else "listeners (the server side)"
            fields.problem(key, f"{key!r} applies to {side} only")
    verifyClient = fields.boolean("verify_client")
    requireClientCert = fields.boolean("require_client_cert")
    caCert = fields.string("ca_cert")
    if forServer and (verifyClient or requireClientCert) and not caCert:
        fields.problem(
            "verify_client" if verifyClient else "require_client_cert",
            "checking client certificates needs 'ca_cert' (the CA that issues them)",
        )
    minVersion = _version(fields, "min_version")
    maxVersion = _version(fields, "max_version")
    if minVersion and maxVersion and _VERSION_ORDER[minVersion] > _VERSION_ORDER[maxVersion]:
        fields.problem("max_version", f"{maxVersion!r} is lower than min_version {minVersion!r}")
    return TLSContextConfig(
        status=True,
        serverName=_serverName(fields, forServer),
        caCert=caCert,
        certChain=fields.string("cert_chain"),
        privateKey=fields.string("private_key"),
        verifyClient=verifyClient or requireClientCert,
        requireClientCert=requireClientCert,
        insecureSkip=fields.boolean("insecure_skip"),
        cipherSuites=_cipherSuites(fields),
        ecdhCurves=_curves(fields),
        minVersion=minVersion,
        maxVersion=maxVersion,
        alpn=_alpn(fields),
        ticket=fields.string("ticket"),
        strictSNI=fields.boolean("strict_sni"),
    )


def _serverName(fields: Fields, forServer: bool) -> str:
    name = fields.string("server_name").strip().lower().rstrip(".")
    if not name:
        return ""
    if forServer:
        if SERVER_NAME.match(name) is None:
            fields.problem(
                "server_name",
                f"{describe(name)} is not a server name: expected a host name such as 'example.com' or "
                "'*.example.com'",
            )
            return ""
        return name
    try:
        ipaddress.ip_address(name.strip("[]"))
        return name.strip("[]")
    except ValueError:
        pass
    if SERVER_NAME.match(name) is None or name.startswith("*."):
        fields.problem(
            "server_name", f"{describe(name)} is not a host name: expected a name such as 'api.example.com'"
        )
        return ""
    return name


def _version(fields: Fields, key: str) -> str:
    """
    C{""} (the default) or C{TLSv1_2}/C{TLSv1_3}, whatever the case it is written in.
    """
    version = fields.string(key)
    canonical = {name.lower(): name for name in TLS_VERSIONS}
    if not version:
        return ""
    if version.lower() not in canonical:
        hint = didYouMean(version, TLS_VERSIONS)
        fields.problem(
            key, f"{describe(version)} is not a TLS version{hint}: expected one of {', '.join(TLS_VERSIONS)}"
        )
        return ""
    name = canonical[version.lower()]
    if name in _INSECURE_VERSIONS:
        fields.problem(key, f"{name} is insecure and not supported: expected TLSv1_2, TLSv1_3 or TLS_AUTO")
        return ""
    return "" if name == "TLS_AUTO" else name


def _cipherSuites(fields: Fields) -> str:
    text = fields.string("cipher_suites")
    known = {name.upper(): name for name in list(TLS12_CIPHERS) + list(TLS13_CIPHERS)}
    for suite in (part.strip() for part in text.split(":")):
        if not suite or suite.upper() in known:
            continue
        if suite.upper() in _REFUSED_CIPHERS:
            fields.problem("cipher_suites", f"{suite!r} uses 3DES, which is broken (Sweet32): remove it")
            continue
        hint = didYouMean(suite, sorted(known.values()))
        fields.problem(
            "cipher_suites",
            f"{suite!r} is not a cipher suite meshproxy supports{hint}: expected names such as "
            "'ECDHE-RSA-AES128-GCM-SHA256' separated by ':'",
        )
    return text


def _curves(fields: Fields) -> str:
    text = fields.string("ecdh_curves")
    for curve in (part.strip() for part in text.split(",")):
        if curve and curve.lower() not in ECDH_CURVES:
            fields.problem(
                "ecdh_curves",
                f"{curve!r} is not a curve meshproxy supports: expected P256, P384, P521 or X25519, "
                "separated by ','",
            )
    return text


def _alpn(fields: Fields) -> tuple[str, ...]:
    protocols = tuple(protocol.strip() for protocol in fields.string("alpn").split(",") if protocol.strip())
    for protocol in protocols:
        if protocol.lower() == "h2":
            fields.problem("alpn", "'h2': meshproxy does not speak HTTP/2: expected 'http/1.1'")
        elif protocol.lower() not in ALPN_PROTOCOLS:
            fields.problem("alpn", f"{protocol!r} is not an ALPN protocol meshproxy speaks: expected 'http/1.1'")
    return tuple(dict.fromkeys(p.lower() for p in protocols if p.lower() in ALPN_PROTOCOLS))
