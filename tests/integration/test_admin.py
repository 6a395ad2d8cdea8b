"""
The admin endpoint with real clients (curl, http.client).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.harness import Backend, MeshProxy, connect, echoHandler, freePort, waitFor
from tests.support import configDocument, tcpListener


class AdminTests(SynchronousTestCase):
    """
    Readiness, config dump, stats and states.
    """

    def setUp(self) -> None:
        self.echo = Backend(echoHandler)
        self.addCleanup(self.echo.stop)
        workdir = self.mktemp()
        os.makedirs(workdir)
        self.port = freePort()
        doc = configDocument(
            listeners=[tcpListener(name="edge", address=f"127.0.0.1:{self.port}")],
            clusters=[{"name": "backend", "type": "SIMPLE", "hosts": [{"address": self.echo.address}]}],
        )
        self.proxy = MeshProxy(doc, workdir)
        self.proxy.start()
        self.addCleanup(self.proxy.stop)

    def curl(self, path: str) -> tuple[int, str]:
        if shutil.which("curl") is None:
            self.fail("curl is not installed (make test installs it)")
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}",
             f"http://127.0.0.1:{self.proxy.adminPort}{path}"],
            capture_output=True, text=True, timeout=10,
        )
        body, _, code = result.stdout.rpartition("\n")
        return int(code), body

    def test_ready(self) -> None:
        """
        /ready answers 200 once every listener is bound.
        """
        self.assertEqual(self.curl("/ready"), (200, "ready\n"))

    def test_configDump(self) -> None:
        """
        /api/v1/config_dump shows the running listeners with their endpoints.
        """
        code, body = self.curl("/api/v1/config_dump")
        self.assertEqual(code, 200)
        self.assertIn(f"tcp:{self.port}:interface=127.0.0.1", body)
        self.assertIn("edge", json.dumps(json.loads(body)))

    def test_prometheusAfterTraffic(self) -> None:
        """
        /stats/prometheus counts the connection, its sniff verdict and the upstream connection.
        """
        with connect(self.port) as sock:
            sock.sendall(b"\x00hi")
            self.assertEqual(sock.recv(10), b"\x00hi")
        self.assertTrue(waitFor(lambda: 'meshproxy_downstream_cx_active{listener="edge"} 0' in self.curl("/stats/prometheus")[1]))
        code, text = self.curl("/stats/prometheus")
        self.assertEqual(code, 200)
        for line in ('meshproxy_downstream_cx_total{listener="edge"} 1',
                     'meshproxy_sniff_verdict_total{listener="edge",protocol="raw"} 1',
                     'meshproxy_upstream_cx_total{cluster="backend"} 1',
                     'meshproxy_downstream_cx_rx_bytes_total{listener="edge"} 3',
                     "# TYPE meshproxy_downstream_cx_total counter"):
            self.assertIn(line, text.splitlines())

    def test_states(self) -> None:
        """
        /api/v1/states reports MOSN's Running stage with the pid.
        """
        assert self.proxy.process is not None
        self.assertEqual(self.curl("/api/v1/states"), (200, f"pid={self.proxy.process.pid}&state=6\n"))

    def test_clusters(self) -> None:
        """
        /clusters lists each host with its health and counters.
        """
        code, body = self.curl("/clusters")
        self.assertEqual(code, 200)
        [host] = json.loads(body)["backend"]["hosts"]
        self.assertEqual((host["address"], host["healthy"]), (self.echo.address, True))


class ExplainTests(SynchronousTestCase):
    """
    /api/v1/explain on a process with an HTTP router.
    """

    def setUp(self) -> None:
        workdir = self.mktemp()
        os.makedirs(workdir)
        doc = configDocument(listeners=[{
            "name": "web", "address": f"127.0.0.1:{freePort()}",
            "filter_chains": [{"filters": [{"type": "proxy", "config": {
                "downstream_protocol": "Http1", "router_config_name": "edge"}}]}]}])
        doc["servers"][0]["routers"] = [{"router_config_name": "edge", "virtual_hosts": [  # type: ignore[index]
            {"name": "api", "domains": ["api.example.com"], "routers": [
                {"match": {"prefix": "/v1/"}, "route": {"cluster_name": "backend", "prefix_rewrite": "/"}},
            ]},
            {"name": "rest", "domains": ["*"], "routers": [
                {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": "nothing here"}}]},
        ]}]
        self.proxy = MeshProxy(doc, workdir)
        self.proxy.start()
        self.addCleanup(self.proxy.stop)

    def explain(self, query: str) -> tuple[int, dict[str, object]]:
        status, body = self.proxy.admin("/api/v1/explain?" + query)
        return status, json.loads(body)

    def test_routedRequest(self) -> None:
        """
        The answer names the virtual host and why, the route tried, and the cluster with the
        rewritten target.
        """
        status, answer = self.explain("host=API.example.com:8443&path=/v1/users&method=GET")
        self.assertEqual(status, 200)
        edge = answer["edge"]
        assert isinstance(edge, dict)
        self.assertEqual(edge["virtualHost"]["name"], "api")
        self.assertEqual(edge["routes"][0]["matched"], True)
        self.assertEqual(edge["action"]["cluster"], "backend")
        self.assertEqual(edge["action"]["upstreamTarget"], "/users")

    def test_unknownRouter(self) -> None:
        """
        Naming a router that does not exist is a 404 listing the routers.
        """
        status, answer = self.explain("router=nope&path=/")
        self.assertEqual((status, answer["routers"]), (404, ["edge"]))

    def test_badHeader(self) -> None:
        """
        A header argument without a colon is a 400.
        """
        status, answer = self.explain("path=/&header=nocolon")
        self.assertEqual(status, 400)
