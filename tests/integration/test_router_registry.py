"""
Routes registered over a real C{nats-server} with gorouter's messages, served by a real meshproxy:
register, route, gorouter's headers, unregister, unknown routes, instance pinning, sticky sessions,
the status endpoints, and two meshproxy processes converging on one NATS.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.harness import MeshProxy, freePort, waitFor
from tests.integration.httpbackends import HTTPBackend, echo
from tests.integration.natsserver import SKIP_REASON, NATSServer, natsServerPath


APP = "5c8a2e1b-7d3f-4e2a-9b1c-0f6e5d4c3b2a"


def natsPublish(address: tuple[str, int], subject: str, payload: dict[str, Any] | bytes) -> None:
    """
    Publish one message with a throw-away connection, and wait for the server to have it (PING/PONG).
    """
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with socket.create_connection(address, timeout=5) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false}\r\nPUB ' + subject.encode() + b" %d\r\n" % len(data) + data
                     + b"\r\nPING\r\n")
        received = b""
        while b"PONG" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                raise AssertionError(f"nats-server closed: {received!r}")
            received += chunk


def register(backend: HTTPBackend, *uris: str, **extra: Any) -> dict[str, Any]:
    host, port = backend.address.rsplit(":", 1)
    return {"host": host, "port": int(port), "uris": list(uris), "app": APP,
            "private_instance_id": f"instance-{port}", "private_instance_index": "0", **extra}


def get(port: int, host: str, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def startRegistryProxy(
    test: SynchronousTestCase, workdir: str, natsPorts: list[int], server: dict[str, Any] | None = None,
    **registry: Any,
) -> tuple[MeshProxy, tuple[int, int, int]]:
    """
    Start a meshproxy whose listener falls back to the router registry on the NATS servers at
    C{natsPorts} (static routes: C{static.example.com}); return it with its proxy, status and routes
    ports.  C{registry} overrides keys of the C{router_registry} section.
    """
    port, statusPort, routesPort = freePort(), freePort(), freePort()
    doc = {
        "servers": [{
            "routers": [{"router_config_name": "r", "virtual_hosts": [{  # (an empty list is refused)
                "name": "static", "domains": ["static.example.com"],
                "routers": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "static"}}]}]}],
            "listeners": [{"name": "web", "address": f"127.0.0.1:{port}", "filter_chains": [{"filters": [
                {"type": "proxy", "config": {"downstream_protocol": "Http1", "router_config_name": "r",
                                             "use_router_registry": True}}]}]}],
            **(server or {}),
        }],
        "router_registry": {
            "nats": {"hosts": [{"hostname": "127.0.0.1", "port": p} for p in natsPorts]},
            "status": {"port": statusPort, "user": "status", "pass": "secret", "routes": {"port": routesPort}},
            "start_response_delay_interval": "200ms",
            "prune_stale_droplets_interval": "200ms",
            **registry,
        },
    }
    proxyDir = os.path.join(workdir, f"proxy{port}")
    os.makedirs(proxyDir)
    proxy = MeshProxy(doc, proxyDir)
    proxy.start()
    test.addCleanup(proxy.stop)
    return proxy, (port, statusPort, routesPort)


class RouterRegistryTests(SynchronousTestCase):
    """
    One meshproxy whose HTTP listener falls back to the registry, fed by a real nats-server.
    """

    def setUp(self) -> None:
        if natsServerPath() is None:
            self.fail(SKIP_REASON + " (make test installs it)")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.nats = NATSServer(os.path.join(self.workdir, "nats"))
        self.nats.start()
        self.addCleanup(self.nats.stop)
        self.backends = [HTTPBackend(echo, name=f"b{i}") for i in range(2)]
        for backend in self.backends:
            self.addCleanup(backend.stop)

    def startProxy(self, **registry: Any) -> tuple[MeshProxy, int, int, int]:
        proxy, ports = startRegistryProxy(self, self.workdir, [self.nats.address[1]], **registry)
        self.assertTrue(waitFor(lambda: self.statusCode(ports[1]) == 200, timeout=10), proxy.log())
        return (proxy, *ports)

    def statusCode(self, port: int, path: str = "/health") -> int:
        try:
            return get(port, "localhost", path)[0]
        except OSError:
            return 0

    def routes(self, routesPort: int, password: str = "secret") -> tuple[int, Any]:
        token = base64.b64encode(f"status:{password}".encode()).decode()
        status, _, body = get(routesPort, "localhost", "/routes", {"Authorization": "Basic " + token})
        return status, (json.loads(body) if status == 200 else body)

    def test_registerRouteUnregister(self) -> None:
        """
        A registered route is served with gorouter's headers; static routes still win; an
        unregistered route is gorouter's 404 C{unknown_route}.
        """
        proxy, port, _, routesPort = self.startProxy()
        status, headers, _ = get(port, "app.example.com")
        self.assertEqual((status, headers.get("x-cf-routererror")), (404, "unknown_route"))
        natsPublish(self.nats.address, "router.register", register(self.backends[0], "app.example.com"))
        self.assertTrue(waitFor(lambda: get(port, "app.example.com")[0] == 200, timeout=5))
        status, headers, body = get(port, "App.Example.com:80", "/path?q=1", {"X-Vcap-Request-Id": "spoofed"})
        seen = json.loads(body)
        sent = {name.lower(): value for name, value in seen["headers"]}
        self.assertEqual(seen["target"], "/path?q=1")
        self.assertEqual(sent["x-cf-applicationid"], APP)
        self.assertEqual(sent["x-cf-instanceid"], f"instance-{self.backends[0].address.rsplit(':', 1)[1]}")
        self.assertEqual(sent["x-cf-instanceindex"], "0")
        self.assertNotEqual(sent["x-vcap-request-id"], "spoofed")
        self.assertEqual(headers["x-vcap-request-id"], sent["x-vcap-request-id"])
        self.assertEqual(len(sent["x-request-start"]), 13)
        self.assertEqual(get(port, "static.example.com")[2], b"static")
        code, table = self.routes(routesPort)
        self.assertEqual(code, 200)
        self.assertEqual([e["address"] for e in table["app.example.com"]], [self.backends[0].address])
        self.assertEqual(self.routes(routesPort, "wrong")[0], 401)
        natsPublish(self.nats.address, "router.unregister", register(self.backends[0], "app.example.com"))
        self.assertTrue(waitFor(lambda: get(port, "app.example.com")[0] == 404, timeout=5))

    def test_contextPathsAndBalancing(self) -> None:
        """
        Context paths match whole segments; a route with two endpoints takes turns.
        """
        proxy, port, _, _ = self.startProxy()
        natsPublish(self.nats.address, "router.register", register(self.backends[0], "app.example.com"))
        natsPublish(self.nats.address, "router.register", register(self.backends[1], "app.example.com/api"))
        natsPublish(self.nats.address, "router.register", register(self.backends[0], "app.example.com/api"))
        self.assertTrue(waitFor(lambda: len(self.backendsOf(port, "/api/v1", 4)) == 2, timeout=5))
        self.assertEqual(self.backendsOf(port, "/apix", 3), {"b0"})

    def backendsOf(self, port: int, path: str, count: int) -> set[str]:
        names = set()
        for _ in range(count):
            status, headers, _ = get(port, "app.example.com", path)
            if status == 200:
                names.add(headers["x-backend"])
        return names

    def test_instanceHeaderAndSticky(self) -> None:
        """
        C{X-CF-APP-INSTANCE} pins a request; a JSESSIONID response gets C{__VCAP_ID__}, and a request
        with both cookies goes back to that instance.
        """
        proxy, port, _, _ = self.startProxy()
        for index, backend in enumerate(self.backends):
            natsPublish(self.nats.address, "router.register",
                        register(backend, "app.example.com", private_instance_index=str(index)))
        self.assertTrue(waitFor(lambda: len(self.backendsOf(port, "/", 4)) == 2, timeout=5))
        for _ in range(3):
            status, headers, body = get(port, "app.example.com", "/", {"X-CF-APP-INSTANCE": APP + ":1"})
            self.assertEqual((status, headers.get("x-backend")), (200, "b1"), (headers, body))
        status, headers, _ = get(port, "app.example.com", "/", {"X-CF-APP-INSTANCE": APP + ":7"})
        self.assertEqual((status, headers["x-cf-routererror"]), (400, "unknown_route"))
        second = self.backends[1].address.rsplit(":", 1)[1]
        cookie = f"JSESSIONID=abc; __VCAP_ID__=instance-{second}"
        for _ in range(3):
            status, headers, body = get(port, "app.example.com", "/", {"Cookie": cookie})
            self.assertEqual((status, headers.get("x-backend")), (200, "b1"), (headers, body))

    def test_fleetConverges(self) -> None:
        """
        Two meshproxy processes on one NATS serve the same routes after one register.
        """
        first = self.startProxy()
        second = self.startProxy()
        natsPublish(self.nats.address, "router.register", register(self.backends[0], "fleet.example.com"))
        for _, port, _, _ in (first, second):
            self.assertTrue(waitFor(lambda: get(port, "fleet.example.com")[0] == 200, timeout=1.5))

    def test_pruneStale(self) -> None:
        """
        An endpoint that is not re-registered within its stale threshold is pruned.
        """
        proxy, port, _, _ = self.startProxy(droplet_stale_threshold="1s")
        natsPublish(self.nats.address, "router.register", register(self.backends[0], "short.example.com"))
        self.assertTrue(waitFor(lambda: get(port, "short.example.com")[0] == 200, timeout=5))
        self.assertTrue(waitFor(lambda: get(port, "short.example.com")[0] == 404, timeout=5))

    def test_badMessageDropped(self) -> None:
        """
        A malformed message is dropped and counted; the registry keeps working.
        """
        proxy, port, _, _ = self.startProxy()
        natsPublish(self.nats.address, "router.register", b'{"host": "127.0.0.1", "port": "80", "uris": ["x"]}')
        natsPublish(self.nats.address, "router.register", register(self.backends[0], "ok.example.com"))
        self.assertTrue(waitFor(lambda: get(port, "ok.example.com")[0] == 200, timeout=5))
        self.assertEqual(proxy.stats().get("meshproxy_router_registry_bad_messages_total{}"), 1)
