"""
One port, several protocols: MOSN's Auto + fallback (HTTP to the router, anything else to the
TCP relay) and TLS passed through by SNI, with real clients (http.client, raw sockets,
openssl s_client).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import threading

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.harness import Backend, MeshProxy, connect, echoHandler, freePort
from tests.support import configDocument


class FallbackTests(SynchronousTestCase):
    """
    MOSN's proxy-fallback-example shape: proxy (Auto, fallback) then tcp_proxy on one listener.
    """

    def test_httpAndRawOnOnePort(self) -> None:
        """
        An HTTP request is answered by the router; raw bytes on the same port are relayed.
        """
        echo = Backend(echoHandler)
        self.addCleanup(echo.stop)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        doc = configDocument(
            listeners=[{"name": "mux", "address": f"127.0.0.1:{port}", "filter_chains": [{"filters": [
                {"type": "proxy", "config": {"downstream_protocol": "Auto", "router_config_name": "r",
                                             "fallback_for_unknown_protocol": True}},
                {"type": "tcp_proxy", "config": {"cluster": "backend"}},
            ]}]}],
            clusters=[{"name": "backend", "type": "SIMPLE", "hosts": [{"address": echo.address}]}],
        )
        doc["servers"][0]["routers"] = [{"router_config_name": "r", "virtual_hosts": [{  # type: ignore[index]
            "name": "v", "domains": ["*"], "routers": [
                {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "from the router"}}]}]}]
        proxy = MeshProxy(doc, workdir)
        proxy.start()
        self.addCleanup(proxy.stop)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        response = conn.getresponse()
        self.assertEqual((response.status, response.read()), (200, b"from the router"))
        conn.close()
        with connect(port) as sock:
            sock.sendall(b"\x16raw bytes, not HTTP")
            received = b""
            while len(received) < 20:
                received += sock.recv(100)
            self.assertEqual(received, b"\x16raw bytes, not HTTP")
        stats = proxy.stats()
        self.assertEqual(stats["meshproxy_sniff_verdict_total{listener=mux,protocol=http1}"], 1)
        # 0x16 followed by 'r' is no TLS record header: raw.
        self.assertEqual(stats["meshproxy_sniff_verdict_total{listener=mux,protocol=raw}"], 1)


def makeCertificate(workdir: str, name: str) -> tuple[str, str]:
    """
    A self-signed certificate for C{name} made with the openssl command.
    """
    cert, key = os.path.join(workdir, name + ".crt"), os.path.join(workdir, name + ".key")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}", "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


class TLSBackend:
    """
    A TLS server on 127.0.0.1 that answers each connection with its own name.
    """

    def __init__(self, cert: str, key: str, name: str) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.name = name
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                raw, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            raw.settimeout(10)
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    tls.sendall(b"hello from " + self.name.encode() + b"\n")
            except (OSError, ssl.SSLError):
                pass

    def stop(self) -> None:
        self._stop = True
        self.listener.close()
        self.thread.join(5)


class PassthroughTests(SynchronousTestCase):
    """
    TLS routed by SNI without being decrypted.
    """

    def test_sniPicksTheBackend(self) -> None:
        """
        openssl s_client with -servername reaches the backend for that name and sees that
        backend's own certificate; an unknown name goes to the chain without server names.
        """
        if shutil.which("openssl") is None:
            self.fail("openssl is not installed (make test installs it)")
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        backends = {}
        for name in ("a.example.com", "b.example.com", "default.example.com"):
            backends[name] = TLSBackend(*makeCertificate(workdir, name), name)
            self.addCleanup(backends[name].stop)
        port = freePort()

        def chain(cluster: str, names: list[str] | None) -> dict[str, object]:
            entry: dict[str, object] = {"filters": [{"type": "tcp_proxy", "config": {"cluster": cluster}}]}
            if names:
                entry["filter_chain_match"] = {"server_names": names}
            return entry

        doc = configDocument(
            listeners=[{"name": "tls", "address": f"127.0.0.1:{port}", "filter_chains": [
                chain("a", ["a.example.com"]), chain("b", ["*.example.com"]), chain("default", None)]}],
            clusters=[{"name": n.split(".")[0], "type": "SIMPLE", "hosts": [{"address": b.address}]}
                      for n, b in backends.items()],
        )
        proxy = MeshProxy(doc, workdir)
        proxy.start()
        self.addCleanup(proxy.stop)

        def sClient(serverName: str) -> str:
            result = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", serverName, "-ign_eof"],
                input="", capture_output=True, text=True, timeout=20,
            )
            return result.stdout

        self.assertIn("CN = a.example.com", sClient("a.example.com"))
        self.assertIn("hello from a.example.com", sClient("a.example.com"))
        self.assertIn("hello from b.example.com", sClient("b.example.com"))
        self.assertIn("hello from b.example.com", sClient("zzz.example.com"))
        self.assertIn("hello from default.example.com", sClient("other.org"))
