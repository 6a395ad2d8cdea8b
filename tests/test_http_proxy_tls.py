"""
The HTTP connection manager on connections that arrived over TLS: C{X-Forwarded-Proto: https},
C{X-Forwarded-Client-Cert} in each C{forward_client_cert_details} mode, and routing by client identity.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.proxy.forward import clientCertValue
from tests.proxyharness import OK, ProxyHarness, RecordingTransport, request

SUBJECT = "CN=alice,O=Example"


class TLSClientHarness(ProxyHarness):
    def setUpTLS(self, mode: str | None = None, entries: list[dict[str, Any]] | None = None) -> None:
        self.setUpProxy(entries)
        if mode is not None:
            self.filter = type(self.filter)(
                self.filter.config.__class__(**{**_fields(self.filter.config), "forwardClientCertDetails": mode}),
                self.filter.routes, self.clusters, self.pools, self.reactor, self.stats, "l1", self.filter.settings,
            )

    def connectTLSClient(self, certificate: bool = True) -> RecordingTransport:
        transport = RecordingTransport("10.0.0.1")
        downstream = self.listener.connectionOpened(transport)
        downstream.tls = True
        if certificate:
            downstream.peerCertificateHash = "ab12"
            downstream.peerCertificateSubject = SUBJECT
            downstream.peerCertificateURIs = ("spiffe://example/alice",)
            downstream.peerCertificateDNSNames = ("alice.example",)
        connection = self.filter.buildProtocol(downstream)
        transport.protocol = connection
        connection.makeConnection(transport)
        return transport

    def upstreamRequest(self) -> bytes:
        _, up = self.connectUpstream()
        data = up.value()
        up.deliver(OK)
        return data


def _fields(config: Any) -> dict[str, Any]:
    import attrs

    return attrs.asdict(config, recurse=False)


class ForwardedProtoTests(TLSClientHarness, SynchronousTestCase):
    """
    Requests that arrived over TLS say so upstream.
    """

    def test_https(self) -> None:
        """
        C{X-Forwarded-Proto: https} over TLS, C{http} otherwise.
        """
        self.setUpTLS()
        client = self.connectTLSClient(certificate=False)
        client.deliver(request())
        self.assertIn(b"X-Forwarded-Proto: https\r\n", self.upstreamRequest())
        _, plain = self.connectClient()
        plain.deliver(request())
        self.assertIn(b"X-Forwarded-Proto: http\r\n", self.upstreamRequest())


class ClientCertTests(TLSClientHarness, SynchronousTestCase):
    """
    C{X-Forwarded-Client-Cert} by mode.
    """

    SPOOF = b"X-Forwarded-Client-Cert: Hash=00;Subject=\"CN=admin,O=Example\"\r\n"

    def test_value(self) -> None:
        """
        Envoy's element format, with the subject quoted and escaped.
        """
        class Downstream:
            peerCertificateHash = "ff"
            peerCertificateSubject = 'CN=a"b'
            peerCertificateURIs = ("spiffe://x",)
            peerCertificateDNSNames = ()

        self.assertEqual(clientCertValue(Downstream()), b'Hash=ff;Subject="CN=a\\"b";URI=spiffe://x')

    def test_sanitize(self) -> None:
        """
        By default a client's own header is removed, and none is set.
        """
        self.setUpTLS()
        client = self.connectTLSClient()
        client.deliver(request(fields=self.SPOOF))
        self.assertNotIn(b"Client-Cert", self.upstreamRequest())

    def test_sanitizeSet(self) -> None:
        """
        C{SANITIZE_SET} replaces it with the verified certificate's details.
        """
        self.setUpTLS("SANITIZE_SET")
        client = self.connectTLSClient()
        client.deliver(request(fields=self.SPOOF))
        forwarded = self.upstreamRequest()
        self.assertNotIn(b"CN=admin", forwarded)
        self.assertIn(
            b'X-Forwarded-Client-Cert: Hash=ab12;Subject="CN=alice,O=Example";URI=spiffe://example/alice;'
            b"DNS=alice.example\r\n",
            forwarded,
        )

    def test_forwardOnly(self) -> None:
        """
        C{FORWARD_ONLY} passes the client's header untouched and adds nothing.
        """
        self.setUpTLS("FORWARD_ONLY")
        client = self.connectTLSClient()
        client.deliver(request(fields=self.SPOOF))
        forwarded = self.upstreamRequest()
        self.assertIn(self.SPOOF, forwarded)
        self.assertNotIn(b"Hash=ab12", forwarded)

    def test_routeBySubject(self) -> None:
        """
        A route matching the header sees the verified subject, never one the client sent.
        """
        entries = [
            {"match": {"prefix": "/", "headers": [
                {"name": "X-Forwarded-Client-Cert", "value": ".*;Subject=\"CN=(alice|admin),.*", "regex": True}]},
             "route": {"cluster_name": "backend"}},
            {"match": {"prefix": "/"}, "direct_response": {"status": 403, "body": "no"}},
        ]
        self.setUpTLS("SANITIZE_SET", entries)
        client = self.connectTLSClient()
        client.deliver(request())
        self.assertIn(b"Hash=ab12", self.upstreamRequest())
        self.setUpTLS(None, entries)
        anonymous = self.connectTLSClient(certificate=False)
        anonymous.deliver(request(fields=self.SPOOF))
        self.assertTrue(anonymous.value().startswith(b"HTTP/1.1 403"))
