"""
Certificates made at test time with C{cryptography}: a CA, server certificates for several names and a
wildcard, client certificates (one from a CA the server does not trust), an expired certificate, and
helpers to write them to files.  EC P-256 keys, so that making them is quick.
"""

from __future__ import annotations

import datetime
import os
from typing import Sequence

import attr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ONE_DAY = datetime.timedelta(days=1)


@attr.s(auto_attribs=True, frozen=True)
class Issued:
    """
    One certificate with its key, as objects and as PEM text.
    """

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certPEM(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def keyPEM(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")

    def write(self, directory: str, name: str) -> tuple[str, str]:
        """
        Write C{name}.pem and C{name}.key in C{directory}; return their paths.
        """
        cert, key = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")
        with open(cert, "w") as f:
            f.write(self.certPEM)
        with open(key, "w") as f:
            f.write(self.keyPEM)
        return cert, key


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def makeCA(commonName: str = "meshproxy test CA") -> Issued:
    """
    A self-signed CA certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(commonName))
        .issuer_name(_name(commonName))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - ONE_DAY)
        .not_valid_after(now + 30 * ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def issue(
    ca: Issued,
    commonName: str,
    dnsNames: Sequence[str] = (),
    uris: Sequence[str] = (),
    client: bool = False,
    expired: bool = False,
    organization: str | None = None,
) -> Issued:
    """
    A leaf certificate signed by C{ca}: a server certificate for C{dnsNames}, or a client certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, commonName)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - (10 if expired else 1) * ONE_DAY)
        .not_valid_after(now - ONE_DAY if expired else now + 10 * ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
    )
    alternatives: list[x509.GeneralName] = [x509.DNSName(name) for name in dnsNames]
    alternatives += [x509.UniformResourceIdentifier(uri) for uri in uris]
    if alternatives:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


class PKI:
    """
    Everything the TLS tests need, made once per instance.

    @ivar ca: the CA every certificate below is issued by (except C{strangerClient}).
    @ivar a: C{a.example.com}; C{b}: C{b.example.com}; C{wildcard}: C{*.wild.example.com};
        C{default}: C{default.example.com}; C{expired}: C{expired.example.com}, expired yesterday.
    @ivar client: a client certificate, C{CN=client-1,O=meshproxy tests} with the URI
        C{spiffe://mesh.test/ns/default/sa/client} and the DNS name C{client.mesh.test}.
    @ivar strangerCA: another CA; C{strangerClient} is a client certificate it issued.
    """

    def __init__(self) -> None:
        self.ca = makeCA()
        self.a = issue(self.ca, "a.example.com", ["a.example.com"])
        self.b = issue(self.ca, "b.example.com", ["b.example.com"])
        self.wildcard = issue(self.ca, "wild", ["*.wild.example.com"])
        self.default = issue(self.ca, "default.example.com", ["default.example.com"])
        self.expired = issue(self.ca, "expired.example.com", ["expired.example.com"], expired=True)
        self.client = issue(
            self.ca, "client-1", ["client.mesh.test"], uris=["spiffe://mesh.test/ns/default/sa/client"], client=True,
            organization="meshproxy tests",
        )
        self.strangerCA = makeCA("stranger CA")
        self.strangerClient = issue(self.strangerCA, "stranger", client=True)

    def writeAll(self, directory: str) -> dict[str, tuple[str, str]]:
        """
        Write every certificate and key to C{directory}: C{{name: (cert path, key path)}}, plus
        C{ca.pem} (and C{stranger-ca.pem}) for the CAs.
        """
        os.makedirs(directory, exist_ok=True)
        paths = {}
        for name in ("a", "b", "wildcard", "default", "expired", "client", "strangerClient"):
            paths[name] = getattr(self, name).write(directory, name)
        paths["ca"] = self.ca.write(directory, "ca")
        paths["strangerCA"] = self.strangerCA.write(directory, "stranger-ca")
        return paths
