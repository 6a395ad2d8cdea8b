"""
Reloading a running meshproxy (SIGHUP and C{POST /api/v1/reload}) under load: nothing fails, the new
route is live within a second, listeners that stay keep their sockets, new ones bind, removed ones
drain, and a bad file changes nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.harness import MeshProxy, connect, freePort, waitFor
from tests.integration.httpbackends import HTTPBackend, echo
from tests.tlscerts import PKI


def document(port: int, backend: str, version: str, extraListener: int | None = None) -> dict[str, Any]:
    """
    An HTTP listener whose C{/version} answers C{version} directly and whose other paths go to C{backend}.
    """
    listeners = [{"name": "web", "address": f"127.0.0.1:{port}", "filter_chains": [{"filters": [
        {"type": "proxy", "config": {"downstream_protocol": "Http1", "router_config_name": "r"}}]}]}]
    if extraListener is not None:
        listeners.append({"name": "extra", "address": f"127.0.0.1:{extraListener}", "filter_chains": [{"filters": [
            {"type": "proxy", "config": {"downstream_protocol": "Http1", "router_config_name": "r"}}]}]})
    return {
        "servers": [{
            "routers": [{"router_config_name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routers": [
                {"match": {"path": "/version"}, "direct_response": {"status": 200, "body": version}},
                {"match": {"prefix": "/"}, "route": {"cluster_name": "app", "timeout": "5s"}},
            ]}]}],
            "listeners": listeners,
        }],
        "cluster_manager": {"clusters": [{"name": "app", "hosts": [{"address": backend}]}]},
    }


class LoadLoop:
    """
    C{clients} keep-alive clients sending GETs as fast as they can, until stopped (bounded in time and
    count); every answer that is not a 200 (or an exception) is a failure.
    """

    def __init__(self, port: int, clients: int = 64, seconds: float = 20.0, perClient: int = 5000) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.versions: list[tuple[float, bytes]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + seconds
        self.threads = [threading.Thread(target=self._run, args=(i, perClient), daemon=True) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self, index: int, count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for n in range(count):
            if self._stop.is_set() or time.monotonic() > self._deadline:
                break
            path = "/version" if n % 2 else "/app"
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200:
                    raise AssertionError(f"{path}: {response.status} {body!r}")
                with self.lock:
                    self.ok += 1
                    if path == "/version" and index == 0:
                        self.versions.append((time.monotonic(), body))
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            except Exception as e:  # noqa: BLE001 - every failure counts
                with self.lock:
                    self.failures.append(f"{path}: {e!r}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(15)


class ReloadTests(SynchronousTestCase):
    """
    A real meshproxy reloaded while clients hammer it.
    """

    def setUp(self) -> None:
        self.backend = HTTPBackend(echo)
        self.addCleanup(self.backend.stop)
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.port = freePort()
        self.proxy = MeshProxy(document(self.port, self.backend.address, "v0"), self.workdir)
        self.proxy.start()
        self.addCleanup(self.proxy.stop)

    def write(self, doc: dict[str, Any]) -> None:
        doc["admin"] = self.proxy.config["admin"]
        with open(self.proxy.configPath + ".new", "w") as f:
            json.dump(doc, f)
        os.replace(self.proxy.configPath + ".new", self.proxy.configPath)

    def test_reloadUnderLoad(self) -> None:
        """
        64 keep-alive clients run while the route changes every 2 s (SIGHUP): no request fails, and
        each new version is served within a second of its reload.
        """
        load = LoadLoop(self.port)
        self.addCleanup(load.stop)
        lags = []
        try:
            time.sleep(0.5)
            for version in ("v1", "v2", "v3"):
                self.write(document(self.port, self.backend.address, version))
                sent = time.monotonic()
                self.proxy.signal(signal.SIGHUP)
                self.assertTrue(waitFor(lambda: any(b == version.encode() for _, b in load.versions[-5:]), timeout=5),
                                f"{version} never served; log:\\n{self.proxy.log()[-2000:]}")
                first = min(t for t, b in load.versions if b == version.encode())
                lags.append(first - sent)
                time.sleep(2.0)
        finally:
            load.stop()
        self.assertEqual(load.failures, [])
        self.assertGreater(load.ok, 500)
        self.assertTrue(all(lag < 1.0 for lag in lags), lags)
        self.assertEqual(self.proxy.stats().get("meshproxy_config_reload_total{}"), 3)

    def test_listenersAddedAndRemoved(self) -> None:
        """
        C{POST /api/v1/reload}: a new listener binds; the kept one keeps its open connection; a removed
        one stops accepting.
        """
        extra = freePort()
        kept = connect(self.port)
        kept.sendall(b"GET /version HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn(b"v0", kept.recv(1000))
        self.write(document(self.port, self.backend.address, "v1", extraListener=extra))
        code, body = self.proxy.admin("/api/v1/reload", method="POST")
        self.assertEqual((code, json.loads(body)["status"]), (200, "applied"))
        connection = http.client.HTTPConnection("127.0.0.1", extra, timeout=5)
        connection.request("GET", "/version")
        self.assertEqual(connection.getresponse().read(), b"v1")
        connection.close()
        self.write(document(self.port, self.backend.address, "v2"))
        code, _ = self.proxy.admin("/api/v1/reload", method="POST")
        self.assertEqual(code, 200)
        self.assertTrue(waitFor(lambda: self.refused(extra), timeout=5))
        kept.sendall(b"GET /version HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn(b"v2", kept.recv(1000))
        kept.close()

    def refused(self, port: int) -> bool:
        try:
            connect(port, 1).close()
        except OSError:
            return True
        return False

    def test_badFileChangesNothing(self) -> None:
        """
        A broken file, or one that moves the admin endpoint, is refused with its problems (400), and
        the running configuration keeps serving.
        """
        with open(self.proxy.configPath, "w") as f:
            f.write('{"servers": [{"listeners": []}]}')
        code, body = self.proxy.admin("/api/v1/reload", method="POST")
        self.assertEqual(code, 400)
        self.assertIn("listeners", " ".join(json.loads(body)["error"]))
        doc = document(self.port, self.backend.address, "v9")
        self.write(doc)
        with open(self.proxy.configPath) as f:
            moved = json.load(f)
        moved["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": freePort()}}}
        with open(self.proxy.configPath, "w") as f:
            json.dump(moved, f)
        code, body = self.proxy.admin("/api/v1/reload", method="POST")
        self.assertEqual(code, 400)
        self.assertIn("needs a restart", " ".join(json.loads(body)["error"]))
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        connection.request("GET", "/version")
        self.assertEqual(connection.getresponse().read(), b"v0")
        connection.close()
        self.assertEqual(self.proxy.stats().get("meshproxy_config_reload_failure_total{}"), 2)

    def test_brokenCertificateKeepsTheOld(self) -> None:
        """
        A reload whose certificate file cannot be read is refused, naming the file's JSON path; the
        running listeners keep serving.
        """
        doc = document(self.port, self.backend.address, "v1")
        chain = doc["servers"][0]["listeners"][0]["filter_chains"][0]
        chain["tls_context"] = {"status": True, "cert_chain": "/nonexistent/cert.pem", "private_key": "/nonexistent/key.pem"}
        self.write(doc)
        code, body = self.proxy.admin("/api/v1/reload", method="POST")
        self.assertEqual(code, 400)
        errors = " ".join(json.loads(body)["error"])
        self.assertIn("filter_chains[0].tls_context.cert_chain", errors)
        self.assertIn("/nonexistent/cert.pem", errors)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        connection.request("GET", "/version")
        self.assertEqual(connection.getresponse().read(), b"v0")
        connection.close()

    def test_newCertificateServed(self) -> None:
        """
        A reload that names another certificate serves it to new connections.
        """
        pki = PKI()
        paths = pki.writeAll(os.path.join(self.workdir, "pki"))

        def served() -> str:
            context = ssl.create_default_context(cafile=paths["ca"][0])
            context.check_hostname = False
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="a.example.com") as tls:
                    certificate = tls.getpeercert()
            return dict(pair[0] for pair in certificate["subject"])["commonName"]

        for name in ("a", "b"):
            doc = document(self.port, self.backend.address, "v1")
            cert, key = paths[name]
            doc["servers"][0]["listeners"][0]["filter_chains"][0]["tls_context"] = {
                "status": True, "cert_chain": cert, "private_key": key}
            self.write(doc)
            code, _ = self.proxy.admin("/api/v1/reload", method="POST")
            self.assertEqual(code, 200)
            self.assertEqual(served(), f"{name}.example.com")
