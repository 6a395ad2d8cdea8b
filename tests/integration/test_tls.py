"""
TLS termination with real clients (openssl s_client, curl, Python's ssl) against a real
C{twistd meshproxy}: SNI selection, ALPN, refused versions and names, mTLS, the handshake deadline,
and one port that terminates TLS, passes TLS through, and serves plaintext HTTP and raw TCP.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.harness import (
    Backend,
    MeshProxy,
    connect,
    echoHandler,
    freePort,
    recvAll,
    sourceHandler,
    waitFor,
)
from tests.integration.httpbackends import HTTPBackend, echo
from tests.integration.test_multiplex import TLSBackend
from tests.test_clienthello import pyOpenSSLHello
from tests.tlscerts import PKI, issue


def requireTools(test: SynchronousTestCase) -> None:
    """
    Fail (not skip) when the real clients are missing.
    """
    for tool in ("openssl", "curl"):
        if shutil.which(tool) is None:
            test.fail(f"{tool} is not installed (make test installs it)")


def proxyFilter() -> dict[str, Any]:
    """
    The HTTP/1 C{proxy} filter routing everything to the C{http} cluster (router C{r}).
    """
    return {"type": "proxy", "config": {"downstream_protocol": "Http1", "router_config_name": "r"}}


def tcpFilter(cluster: str) -> dict[str, Any]:
    """
    A C{tcp_proxy} filter to C{cluster}.
    """
    return {"type": "tcp_proxy", "config": {"cluster": cluster}}


def cluster(name: str, address: str) -> dict[str, Any]:
    """
    A one-host cluster.
    """
    return {"name": name, "type": "SIMPLE", "lb_type": "LB_ROUNDROBIN", "connect_timeout": "2s",
            "hosts": [{"address": address}]}


class TLSProxyCase(SynchronousTestCase):
    """
    Certificates on disk, backends, and a meshproxy whose listeners the test describes.
    """

    def setUp(self) -> None:
        requireTools(self)
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.pki = PKI()
        self.paths = self.pki.writeAll(self.workdir)
        self.caPath = self.paths["ca"][0]
        self.http = HTTPBackend(echo)
        self.addCleanup(self.http.stop)
        self.echo = Backend(echoHandler)
        self.addCleanup(self.echo.stop)

    def start(self, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> MeshProxy:
        doc = {
            "servers": [{
                "routers": [{"router_config_name": "r", "virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routers": [{"match": {"prefix": "/"}, "route": {"cluster_name": "http", "timeout": "5s"}}]}]}],
                "listeners": listeners,
            }],
            "cluster_manager": {"clusters": [cluster("http", self.http.address), cluster("echo", self.echo.address),
                                             *clusters]},
        }
        proxy = MeshProxy(doc, self.workdir)
        proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    def context(self, name: str, **extra: Any) -> dict[str, Any]:
        cert, key = self.paths[name]
        return {"status": True, "cert_chain": cert, "private_key": key, **extra}

    def sClient(self, port: int, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
            input=stdin, capture_output=True, text=True, timeout=30,
        )

    def curl(self, port: int, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--resolve", f"{name}:{port}:127.0.0.1", "--cacert", self.caPath,
             *args, f"https://{name}:{port}/hello?x=1"],
            capture_output=True, text=True, timeout=30,
        )

    def failures(self, proxy: MeshProxy, chain: str, reason: str, listener: str = "mux") -> int:
        key = f"meshproxy_tls_handshake_failure_total{{chain={chain},listener={listener},reason={reason}}}"
        return int(proxy.stats().get(key, 0))


class OnePortTests(TLSProxyCase):
    """
    One listener: terminated TLS for a.example.com and b.example.com (strict names) to HTTP, and for
    *.wild.example.com to a TCP relay; TLS passed through for pass.example.com; plaintext HTTP and raw
    TCP.
    """

    def setUp(self) -> None:
        super().setUp()
        passthrough = issue(self.pki.ca, "pass.example.com", ["pass.example.com"])
        self.tlsBackend = TLSBackend(*passthrough.write(self.workdir, "pass"), "pass.example.com")
        self.addCleanup(self.tlsBackend.stop)
        self.source = Backend(sourceHandler(200_000))
        self.addCleanup(self.source.stop)
        self.port = freePort()
        self.proxy = self.start(
            [{"name": "mux", "address": f"127.0.0.1:{self.port}", "tls_handshake_timeout": "1s", "filter_chains": [
                {"name": "terminate", "tls_context_set": [
                    self.context("a", alpn="http/1.1", strict_sni=True), self.context("b", strict_sni=True)],
                 "filters": [proxyFilter()]},
                {"name": "passthrough", "filter_chain_match": {"server_names": ["pass.example.com"]},
                 "filters": [tcpFilter("pass")]},
                {"name": "wild", "filter_chain_match": {"server_names": ["*.wild.example.com"]},
                 "tls_context": self.context("wildcard"), "filters": [tcpFilter("source")]},
                {"name": "http", "filter_chain_match": {"protocols": ["http1"]}, "filters": [proxyFilter()]},
                {"name": "raw", "filter_chain_match": {"protocols": ["raw"]}, "filters": [tcpFilter("echo")]},
            ]}],
            [cluster("pass", self.tlsBackend.address), cluster("source", self.source.address)],
        )

    def test_sniSelectsCertificateAndALPN(self) -> None:
        """
        openssl s_client gets the certificate for the name it sends, verified against the test CA,
        and ALPN http/1.1 when it offers it.
        """
        for name in ("a.example.com", "b.example.com"):
            result = self.sClient(self.port, "-servername", name, "-CAfile", self.caPath, "-verify_return_error",
                                  "-alpn", "h2,http/1.1")
            self.assertIn(f"CN = {name}", result.stdout, result.stderr)
            self.assertIn("Verify return code: 0 (ok)", result.stdout)
            expected = "ALPN protocol: http/1.1" if name == "a.example.com" else "No ALPN negotiated"
            self.assertIn(expected, result.stdout)
        stats = self.proxy.stats()
        self.assertEqual(stats["meshproxy_tls_handshake_total{chain=terminate,listener=mux}"], 2)

    def test_configDumpListsCertificates(self) -> None:
        """
        C{/api/v1/config_dump} lists each served certificate with its names and expiry, and never a key.
        """
        code, body = self.proxy.admin("/api/v1/config_dump")
        self.assertEqual(code, 200)
        dump = json.loads(body)
        names = {tuple(entry["names"]) for entry in dump["tls_certificates"]}
        self.assertIn(("a.example.com",), names)
        self.assertIn(("*.wild.example.com",), names)
        self.assertTrue(all(entry["notAfterTimestamp"] > 0 for entry in dump["tls_certificates"]))
        self.assertNotIn(b"PRIVATE KEY", body)

    def test_oldVersionsRefused(self) -> None:
        """
        TLS 1.0 and 1.1 clients (allowed to try by their own library) are refused and counted.
        """
        for flag in ("-tls1", "-tls1_1"):
            result = self.sClient(self.port, "-servername", "a.example.com", flag, "-cipher", "DEFAULT:@SECLEVEL=0")
            self.assertNotEqual(result.returncode, 0)
            self.assertNotIn("CN = a.example.com", result.stdout)
        self.assertEqual(self.failures(self.proxy, "terminate", "unsupported_version"), 2)
        result = self.sClient(self.port, "-servername", "a.example.com", "-tls1_2")
        self.assertIn("Protocol  : TLSv1.2", result.stdout)

    def test_unknownNameRefused(self) -> None:
        """
        A name no certificate serves (with no default) gets an unrecognized_name alert, counted.
        """
        result = self.sClient(self.port, "-servername", "nobody.example.com")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("unrecognized name", result.stdout + result.stderr)
        self.assertEqual(self.failures(self.proxy, "terminate", "unknown_server_name"), 1)

    def test_curlThroughTermination(self) -> None:
        """
        curl over HTTPS reaches the plain HTTP backend through the terminating chain.
        """
        result = self.curl(self.port, "a.example.com")
        self.assertEqual(result.returncode, 0, result.stderr)
        body = json.loads(result.stdout)
        self.assertEqual((body["method"], body["target"]), ("GET", "/hello?x=1"))
        self.assertTrue(any(n.lower() == "host" and v == f"a.example.com:{self.port}" for n, v in body["headers"]))
        stats = self.proxy.stats()
        self.assertEqual(stats["meshproxy_tls_version_total{chain=terminate,listener=mux,version=TLSv1.3}"], 1)

    def test_passthroughKeepsBackendCertificate(self) -> None:
        """
        pass.example.com is relayed untouched: the client sees the backend's own certificate and
        greeting, and meshproxy counts no handshake of its own.
        """
        result = self.sClient(self.port, "-servername", "pass.example.com", "-CAfile", self.caPath, "-ign_eof")
        self.assertIn("CN = pass.example.com", result.stdout)
        self.assertIn("hello from pass.example.com", result.stdout)
        stats = self.proxy.stats()
        self.assertNotIn("meshproxy_tls_handshake_total{chain=passthrough,listener=mux}", stats)
        self.assertEqual(stats["meshproxy_tls_handshake_total{chain=terminate,listener=mux}"], 0)

    def test_tcpRelayOverTerminatedTLS(self) -> None:
        """
        A terminated TLS connection relayed to a TCP backend gets every byte the backend sent, then
        a clean TLS close (close_notify) when the backend closes.
        """
        context = ssl.create_default_context(cafile=self.caPath)
        received = 0
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="x.wild.example.com", suppress_ragged_eofs=False) as tls:
                tls.sendall(b"?")
                for _ in range(10_000):
                    data = tls.recv(65536)  # SSLEOFError if the TLS stream were cut without close_notify
                    if not data:
                        break
                    received += len(data)
        self.assertEqual(received, 200_000)
        stats = self.proxy.stats()
        self.assertEqual(stats["meshproxy_tls_handshake_total{chain=wild,listener=mux}"], 1)

    def test_plaintextAndRawOnTheSamePort(self) -> None:
        """
        Plain HTTP and raw bytes still work on the port that terminates TLS.
        """
        with connect(self.port) as sock:
            sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = recvAll(sock)
        self.assertTrue(response.startswith(b"HTTP/1.1 200"), response[:100])
        self.assertIn(b'"target": "/plain"', response)
        with connect(self.port) as sock:
            sock.sendall(b"\x00\x01 raw bytes")
            sock.shutdown(socket.SHUT_WR)
            self.assertEqual(recvAll(sock), b"\x00\x01 raw bytes")

    def test_handshakeDeadline(self) -> None:
        """
        A client that sends its ClientHello and stops is disconnected at the handshake deadline
        and counted as a timeout.
        """
        received = b""
        with connect(self.port) as sock:
            sock.sendall(pyOpenSSLHello(b"a.example.com"))
            try:
                for _ in range(1000):  # the server's flight, then the abort (EOF or reset)
                    data = sock.recv(65536)
                    if not data:
                        break
                    received += data
            except ConnectionResetError:
                pass
        self.assertTrue(received.startswith(b"\x16\x03"), received[:10])
        self.assertTrue(waitFor(lambda: self.failures(self.proxy, "terminate", "timeout") == 1, 10))


class MutualTLSTests(TLSProxyCase):
    """
    A listener that requires client certificates from the test CA.
    """

    def setUp(self) -> None:
        super().setUp()
        self.port = freePort()
        self.proxy = self.start(
            [{"name": "mtls", "address": f"127.0.0.1:{self.port}", "filter_chains": [
                {"name": "mtls", "tls_context": self.context(
                    "a", ca_cert=self.caPath, verify_client=True, require_client_cert=True),
                 "filters": [proxyFilter()]}]}],
            [],
        )

    def test_clientCertificateAccepted(self) -> None:
        """
        curl with a client certificate from the CA is served.
        """
        cert, key = self.paths["client"]
        result = self.curl(self.port, "a.example.com", "--cert", cert, "--key", key)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["target"], "/hello?x=1")

    def test_missingOrForeignCertificateRefused(self) -> None:
        """
        Without a certificate, or with one from another CA, the request never reaches the backend;
        both are counted by reason.
        """
        result = self.curl(self.port, "a.example.com")
        self.assertNotEqual(result.returncode, 0)
        cert, key = self.paths["strangerClient"]
        result = self.curl(self.port, "a.example.com", "--cert", cert, "--key", key)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(self.http.requests, [])
        self.assertTrue(waitFor(lambda: self.failures(self.proxy, "mtls", "no_client_certificate", "mtls") == 1, 10))
        self.assertEqual(self.failures(self.proxy, "mtls", "bad_client_certificate", "mtls"), 1)

    def test_pythonClientSeesVerifiedTLS12(self) -> None:
        """
        Python's ssl module, limited to TLS 1.2, completes mutual TLS with a modern AEAD suite.
        """
        cert, key = self.paths["client"]
        context = ssl.create_default_context(cafile=self.caPath)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="a.example.com") as tls:
                self.assertEqual(tls.version(), "TLSv1.2")
                cipher = tls.cipher()[0]
                self.assertTrue(cipher.startswith("ECDHE-ECDSA-") and ("GCM" in cipher or "CHACHA" in cipher), cipher)
                tls.sendall(b"GET /py HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                response = b""
                for _ in range(100):
                    data = tls.recv(65536)
                    if not data:
                        break
                    response += data
        self.assertTrue(response.startswith(b"HTTP/1.1 200"), response[:100])


class StartupTests(SynchronousTestCase):
    """
    A broken certificate file stops meshproxy at start-up with a message naming it.
    """

    def test_missingCertificateFile(self) -> None:
        """
        twistd exits with an error naming the missing file and its JSON path.
        """
        from tests.integration.harness import runTwistd

        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        missing = os.path.join(workdir, "missing.pem")
        doc = {
            "servers": [{"listeners": [{"name": "l", "address": f"127.0.0.1:{freePort()}", "filter_chains": [
                {"tls_context": {"status": True, "cert_chain": missing, "private_key": missing},
                 "filters": [tcpFilter("echo")]}]}]}],
            "cluster_manager": {"clusters": [cluster("echo", "127.0.0.1:9")]},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": freePort()}}},
        }
        path = os.path.join(workdir, "meshproxy.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        result = runTwistd(path)
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("servers[0].listeners[0].filter_chains[0].tls_context.cert_chain", output)
        self.assertIn(repr(missing), output)
