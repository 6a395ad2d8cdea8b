"""
Upstream TLS end to end: curl over HTTPS through meshproxy to an HTTPS backend whose certificate
verifies, one whose certificate names another host (refused: 502), and the same with
C{insecure_skip}.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.harness import MeshProxy, freePort
from tests.integration.test_tls import proxyFilter, requireTools
from tests.tlscerts import PKI


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HTTPSBackend:
    """
    An HTTPS server on 127.0.0.1 that answers with the request's path and headers as JSON.
    """

    def __init__(self, cert: str, key: str) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.address = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class UpstreamTLSTests(SynchronousTestCase):
    """
    A terminating listener in front of clusters that speak TLS to their hosts.
    """

    def setUp(self) -> None:
        requireTools(self)
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.pki = PKI()
        self.paths = self.pki.writeAll(self.workdir)
        self.backend = HTTPSBackend(*self.paths["a"])  # its certificate says a.example.com
        self.addCleanup(self.backend.stop)

    def start(self, tlsContext: dict[str, Any]) -> int:
        port = freePort()
        cert, key = self.paths["b"]
        doc = {
            "servers": [{
                "routers": [{"router_config_name": "r", "virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routers": [{"match": {"prefix": "/"}, "route": {"cluster_name": "http", "timeout": "5s"}}]}]}],
                "listeners": [{"name": "edge", "address": f"127.0.0.1:{port}", "filter_chains": [
                    {"tls_context": {"status": True, "cert_chain": cert, "private_key": key},
                     "filters": [proxyFilter()]}]}],
            }],
            "cluster_manager": {"clusters": [{
                "name": "http", "connect_timeout": "2s", "hosts": [{"address": self.backend.address}],
                "tls_context": tlsContext, "outlier_detection": {"consecutive_failures": 0},
            }]},
        }
        proxy = MeshProxy(doc, self.workdir)
        proxy.start()
        self.addCleanup(proxy.stop)
        return port

    def curl(self, port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "-i", "--max-time", "20", "--resolve", f"b.example.com:{port}:127.0.0.1",
             "--cacert", self.paths["ca"][0], f"https://b.example.com:{port}/up?x=1"],
            capture_output=True, text=True, timeout=30,
        )

    def test_verified(self) -> None:
        """
        The backend's certificate verifies against C{ca_cert} for C{server_name}: the request goes
        through, and the backend sees C{X-Forwarded-Proto: https}.
        """
        port = self.start({"status": True, "server_name": "a.example.com", "ca_cert": self.paths["ca"][0]})
        result = self.curl(port)
        self.assertIn("HTTP/1.1 200", result.stdout, result.stderr)
        seen = json.loads(result.stdout.split("\n\n", 1)[1])
        self.assertEqual(seen["path"], "/up?x=1")
        self.assertEqual(seen["headers"]["x-forwarded-proto"], "https")

    def test_wrongNameRefused(self) -> None:
        """
        A certificate for another name fails verification: 502, and nothing reached the backend.
        """
        port = self.start({"status": True, "server_name": "other.example.com", "ca_cert": self.paths["ca"][0]})
        result = self.curl(port)
        self.assertIn("HTTP/1.1 502", result.stdout, result.stderr)
        self.assertIn("x-meshproxy-error: upstream_tls_failed", result.stdout)

    def test_unknownCARefused(self) -> None:
        """
        Without the right CA (the system roots do not know the test CA), the upstream is refused.
        """
        port = self.start({"status": True, "server_name": "a.example.com"})
        self.assertIn("HTTP/1.1 502", self.curl(port).stdout)

    def test_insecureSkip(self) -> None:
        """
        C{insecure_skip} accepts any certificate.
        """
        port = self.start({"status": True, "server_name": "other.example.com", "insecure_skip": True})
        self.assertIn("HTTP/1.1 200", self.curl(port).stdout)
