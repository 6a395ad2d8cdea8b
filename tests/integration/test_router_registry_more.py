"""
The router registry end to end, beyond the basics of C{test_router_registry}: NATS failover on a
two-node cluster (with C{router.start} re-published and pruning suspended while NATS is gone),
three meshproxy processes converging, C{router.greet}, gorouter's retries and C{endpoint_failure},
C{backends.max_conns}, WebSocket, the sticky cookie on the response side, C{/varz}, the start delay
and draining.  Real C{nats-server} and meshproxy processes throughout; a raw-socket NATS client
watches the subjects.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import select
import signal
import socket
import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.clusterbackends import GATED, ClusterBackend
from tests.integration.harness import MeshProxy, freePort, waitFor
from tests.integration.httpbackends import BackendConnection, HTTPBackend, WebSocketServer, echo
from tests.integration.httpwire import Request, Wire, readResponse
from tests.integration.natsserver import SKIP_REASON, NATSCluster, NATSServer, natsServerPath
from tests.integration.test_router_registry import APP, get, natsPublish, register, startRegistryProxy

ENDPOINT_FAILURE_BODY = b"502 Bad Gateway: Registered endpoint failed to handle the request.\n"


def registration(backend: Any, *uris: str, **extra: Any) -> dict[str, Any]:
    """
    gorouter's register message for any backend with an C{address} (see L{register}).
    """
    return register(backend, *uris, **extra)


class NATSWatcher:
    """
    A raw-socket NATS client: subscribes to C{subjects} and records every message as C{(subject,
    reply, payload)} from a reader thread (bounded: it stops on close, on L{stop}, or after a minute).
    """

    def __init__(self, address: tuple[str, int], *subjects: str) -> None:
        self.messages: list[tuple[str, str | None, bytes]] = []
        self.lock = threading.Lock()
        self._pong = threading.Event()
        self._stopping = False
        self.sock = socket.create_connection(address, timeout=5)
        self._buffer = b""
        while b"\r\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError("nats-server closed before INFO")
            self._buffer += chunk
        self._buffer = self._buffer.split(b"\r\n", 1)[1]
        subs = b"".join(b"SUB %s %d\r\n" % (s.encode(), i + 1) for i, s in enumerate(subjects))
        self.sock.sendall(b'CONNECT {"verbose":false,"name":"watcher"}\r\n' + subs + b"PING\r\n")
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._pong.wait(5):
            raise AssertionError("no PONG from nats-server")

    def _read(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stopping and time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self._buffer += chunk
            self._parse()

    def _parse(self) -> None:
        while b"\r\n" in self._buffer:
            line, rest = self._buffer.split(b"\r\n", 1)
            if line.startswith(b"MSG "):
                parts = line.split()
                size = int(parts[-1])
                if len(rest) < size + 2:
                    return
                reply = parts[3].decode() if len(parts) == 5 else None
                with self.lock:
                    self.messages.append((parts[1].decode(), reply, rest[:size]))
                self._buffer = rest[size + 2:]
                continue
            self._buffer = rest
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
            elif line == b"PONG":
                self._pong.set()

    def publish(self, subject: str, payload: bytes, reply: str | None = None) -> None:
        """
        Publish one message on this connection.
        """
        args = subject + (" " + reply if reply else "")
        self.sock.sendall(b"PUB %s %d\r\n%s\r\n" % (args.encode(), len(payload), payload))

    def payloads(self, subject: str) -> list[Any]:
        """
        The JSON payloads received on C{subject} so far.
        """
        with self.lock:
            return [json.loads(p) for s, _, p in self.messages if s == subject]

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(5)
        self.sock.close()


class Heartbeats:
    """
    Re-register one route every 250 ms (as an emitter does) on the first node of C{cluster} that
    takes it, from a thread, until L{stop} (at most a minute).
    """

    def __init__(self, cluster: NATSCluster, message: dict[str, Any]) -> None:
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cluster, message), daemon=True)
        self._thread.start()

    def _run(self, cluster: NATSCluster, message: dict[str, Any]) -> None:
        deadline = time.monotonic() + 60
        while not self._stopping.wait(0.25) and time.monotonic() < deadline:
            for node in cluster.nodes:
                try:
                    natsPublish(node.address, "router.register", message)
                    break
                except (OSError, AssertionError):  # that node is down or going
                    continue

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)


def sessionCookie(connection: BackendConnection, request: Request) -> bool:
    """
    Answer with the backend's name; set C{JSESSIONID} (C{Path=/; Secure}) unless the request has a
    cookie already.
    """
    connection.readBody(request)
    headers = [("X-Backend", request.backend)]
    if request.header("cookie") is None:
        headers.append(("Set-Cookie", f"JSESSIONID=s-{request.backend}; Path=/; Secure"))
    connection.respond(200, request.backend.encode(), headers, close=not request.keepAlive)
    return request.keepAlive


def setCookies(port: int, host: str, cookie: str | None = None) -> tuple[int, list[str], bytes]:
    """
    One GET (with C{cookie}): its status, every C{Set-Cookie} value in order, and its body.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/", headers={"Host": host, **({"Cookie": cookie} if cookie else {})})
        response = connection.getresponse()
        cookies = [v for n, v in response.getheaders() if n.lower() == "set-cookie"]
        return response.status, cookies, response.read()
    finally:
        connection.close()


class RegistryTestCase(SynchronousTestCase):
    """
    Starts NATS, backends and meshproxy processes with C{use_router_registry}; stops them all.
    """

    def setUp(self) -> None:
        if natsServerPath() is None:
            self.fail(SKIP_REASON + " (make test installs it)")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)

    def natsCluster(self) -> NATSCluster:
        cluster = NATSCluster(os.path.join(self.workdir, "nats"), size=2)
        self.addCleanup(cluster.stop)
        cluster.start()
        return cluster

    def natsServer(self) -> NATSServer:
        server = NATSServer(os.path.join(self.workdir, "nats"))
        self.addCleanup(server.stop)
        server.start()
        return server

    def watcher(self, address: tuple[str, int], *subjects: str) -> NATSWatcher:
        watcher = NATSWatcher(address, *subjects)
        self.addCleanup(watcher.stop)
        return watcher

    def backend(self, name: str, responder: Any = echo) -> HTTPBackend:
        backend = HTTPBackend(responder, name=name)
        self.addCleanup(backend.stop)
        return backend

    def clusterBackend(self, name: str, **kw: Any) -> ClusterBackend:
        backend = ClusterBackend(name, **kw)
        self.addCleanup(backend.stop)
        return backend

    def startProxy(
        self, natsPorts: list[int], waitHealthy: bool = True, server: dict[str, Any] | None = None, **registry: Any
    ) -> tuple[MeshProxy, int, int, int]:
        """
        A meshproxy whose listener falls back to the registry; returns it with its proxy, status
        and routes ports.
        """
        proxy, (port, statusPort, routesPort) = startRegistryProxy(self, self.workdir, natsPorts, server, **registry)
        self.routesPort = routesPort
        if waitHealthy:
            self.assertTrue(waitFor(lambda: self.code(statusPort, "/health") == 200, timeout=10), proxy.log())
        return proxy, port, statusPort, routesPort

    def code(self, port: int, path: str = "/", host: str = "localhost") -> int:
        """
        The status of one GET, 0 when it fails without a response.
        """
        try:
            return get(port, host, path)[0]
        except OSError:
            return 0

    def authorized(self, port: int, path: str, password: str = "secret") -> tuple[int, Any]:
        token = base64.b64encode(f"status:{password}".encode()).decode()
        status, _, body = get(port, "localhost", path, {"Authorization": "Basic " + token})
        return status, (json.loads(body) if status == 200 else body)

    def routes(self) -> Any:
        """
        C{/routes} of the proxy started last.
        """
        return self.authorized(self.routesPort, "/routes")[1]

    def connectedNode(self, cluster: NATSCluster) -> NATSServer | None:
        """
        The node that has exactly the one meshproxy connection, or L{None}.
        """
        found = []
        for node in cluster.nodes:
            if not node.running():
                continue
            try:
                connections = node.monitor("/connz").get("connections") or []
            except (OSError, ValueError):
                continue
            if any(c.get("name") == "meshproxy" for c in connections):
                found.append(node)
        return found[0] if len(found) == 1 else None


class NATSFailoverTests(RegistryTestCase):
    """
    meshproxy on a two-node NATS cluster loses its node, or all of NATS for a while.
    """

    def test_failoverToOtherNode(self) -> None:
        """
        Stopping the node meshproxy is connected to: it reconnects to the other, publishes
        C{router.start} there (same router id), keeps its routes, and takes registrations on it.
        """
        cluster = self.natsCluster()
        backend = self.backend("b0")
        proxy, port, _, routesPort = self.startProxy([n.port for n in cluster.nodes])
        self.assertTrue(waitFor(lambda: self.connectedNode(cluster) is not None, timeout=10))
        first = self.connectedNode(cluster)
        assert first is not None
        other = next(n for n in cluster.nodes if n is not first)
        natsPublish(first.address, "router.register", registration(backend, "before.example.com"))
        self.assertTrue(waitFor(lambda: self.code(port, host="before.example.com") == 200, timeout=5))
        routerId = self.authorized(routesPort, "/varz")[1]["uuid"]
        watcher = self.watcher(other.address, "router.start")
        first.stop()
        self.assertTrue(waitFor(lambda: bool(watcher.payloads("router.start")), timeout=15), proxy.log())
        [start] = watcher.payloads("router.start")
        self.assertEqual(start["id"], routerId)
        self.assertIs(self.connectedNode(cluster), other)
        self.assertEqual(self.code(port, host="before.example.com"), 200)
        natsPublish(other.address, "router.register", registration(backend, "after.example.com"))
        self.assertTrue(waitFor(lambda: self.code(port, host="after.example.com") == 200, timeout=5))
        self.assertTrue(self.authorized(routesPort, "/varz")[1]["nats_connected"])

    def test_pruningSuspendedWhileNATSIsDown(self) -> None:
        """
        With a 1 s stale threshold, a route kept alive by heartbeats survives a 2 s outage of every
        NATS node (pruning is suspended), while a proxy with C{suspend_pruning_if_nats_unavailable:
        false} prunes it; when NATS is back the route still serves, and is pruned once its heartbeats
        stay away again.
        """
        cluster = self.natsCluster()
        backend = self.backend("b0")
        ports = [n.port for n in cluster.nodes]
        _, suspending, _, suspendingRoutes = self.startProxy(ports, droplet_stale_threshold="1s")
        _, pruning, _, _ = self.startProxy(
            ports, droplet_stale_threshold="1s", suspend_pruning_if_nats_unavailable=False)
        heartbeats = Heartbeats(cluster, registration(backend, "kept.example.com"))
        self.addCleanup(heartbeats.stop)
        self.assertTrue(waitFor(
            lambda: self.code(suspending, host="kept.example.com") == self.code(pruning, host="kept.example.com") == 200,
            timeout=10))
        cluster.stop()  # heartbeats go on while any node takes them
        heartbeats.stop()
        outageEnds = time.monotonic() + 2.0
        checks = 0
        while time.monotonic() < outageEnds:
            self.assertEqual(self.code(suspending, host="kept.example.com"), 200)
            checks += 1
            time.sleep(0.2)
        self.assertGreater(checks, 3)
        self.assertEqual(self.code(pruning, host="kept.example.com"), 404)
        cluster.start()
        self.assertTrue(waitFor(lambda: self.authorized(suspendingRoutes, "/varz")[1]["nats_connected"], timeout=15))
        # The first prune cycle after the reconnect counts every endpoint as just seen (its last
        # heartbeat is 2 s old), so the route still serves; without heartbeats it goes a second later.
        time.sleep(0.4)
        self.assertEqual(self.code(suspending, host="kept.example.com"), 200)
        self.assertTrue(waitFor(lambda: self.code(suspending, host="kept.example.com") == 404, timeout=5))


class FleetTests(RegistryTestCase):
    """
    Three meshproxy processes on a two-node NATS cluster.
    """

    def test_threeProcessesConverge(self) -> None:
        """
        A register published on one node reaches three processes (connected to either node) in
        under a second each; so does the unregister.
        """
        cluster = self.natsCluster()
        backend = self.backend("b0")
        a, b = cluster.nodes[0].port, cluster.nodes[1].port
        proxies = [self.startProxy(order)[1] for order in ([a, b], [b, a], [a, b])]
        warm = registration(backend, "warm.example.com")

        def warmedUp() -> bool:
            # Until every process serves a route published on the other node, interest is still
            # crossing the cluster.
            natsPublish(cluster.nodes[1].address, "router.register", warm)
            return all(self.code(p, host="warm.example.com") == 200 for p in proxies)

        self.assertTrue(waitFor(warmedUp, timeout=10, interval=0.2))
        for subject, status in (("router.register", 200), ("router.unregister", 404)):
            started = time.monotonic()
            took = [99.0] * len(proxies)
            threads = []
            for index, port in enumerate(proxies):
                threads.append(threading.Thread(
                    target=self._poll, args=(port, status, started, took, index), daemon=True))
            natsPublish(cluster.nodes[0].address, subject, registration(backend, "fleet.example.com"))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            for index, seconds in enumerate(took):
                self.assertLess(seconds, 1.0, f"{subject}: proxy {index} took {seconds:.3f} s ({took})")

    def _poll(self, port: int, status: int, started: float, took: list[float], index: int) -> None:
        deadline = started + 5
        while time.monotonic() < deadline:
            if self.code(port, host="fleet.example.com") == status:
                took[index] = time.monotonic() - started
                return
            time.sleep(0.02)


class GreetAndStatusTests(RegistryTestCase):
    """
    C{router.greet}, C{/varz}, the start delay and draining.
    """

    def test_greetReply(self) -> None:
        """
        A C{router.greet} with a reply subject gets the C{router.start} JSON: the router id (as
        C{/varz} shows it), its hosts, the register interval (at least 1 s even with a 200 ms start
        delay) and the prune threshold.
        """
        nats = self.natsServer()
        _, _, _, routesPort = self.startProxy([nats.port], droplet_stale_threshold="45s")
        watcher = self.watcher(nats.address, "greeting-reply-7")
        watcher.publish("router.greet", b"", reply="greeting-reply-7")
        self.assertTrue(waitFor(lambda: bool(watcher.payloads("greeting-reply-7")), timeout=5))
        [reply] = watcher.payloads("greeting-reply-7")
        self.assertEqual(sorted(reply), ["hosts", "id", "minimumRegisterIntervalInSeconds", "pruneThresholdInSeconds"])
        self.assertEqual(reply["id"], self.authorized(routesPort, "/varz")[1]["uuid"])
        self.assertEqual(reply["hosts"], ["127.0.0.1"])
        self.assertEqual(reply["minimumRegisterIntervalInSeconds"], 1)
        self.assertEqual(reply["pruneThresholdInSeconds"], 45)

    def test_varz(self) -> None:
        """
        C{/varz} needs basic auth and counts route keys (C{urls}), distinct endpoint addresses
        (C{droplets}) and requests.
        """
        nats = self.natsServer()
        b0, b1 = self.backend("b0"), self.backend("b1")
        _, port, _, routesPort = self.startProxy([nats.port])
        for backend, uri in ((b0, "one.example.com"), (b1, "one.example.com"), (b0, "two.example.com/api")):
            natsPublish(nats.address, "router.register", registration(backend, uri))
        self.assertTrue(waitFor(lambda: self.authorized(routesPort, "/varz")[1]["urls"] == 2, timeout=5))
        self.assertEqual([get(port, "one.example.com")[0] for _ in range(2)], [200, 200])
        varz = self.authorized(routesPort, "/varz")[1]
        self.assertEqual((varz["urls"], varz["droplets"], varz["requests"], varz["type"]), (2, 2, 2, "Router"))
        self.assertEqual(self.authorized(routesPort, "/varz", "wrong")[0], 401)
        self.assertEqual(get(routesPort, "localhost", "/varz")[0], 401)

    def test_startDelayHoldsRequests(self) -> None:
        """
        During C{start_response_delay_interval} C{/health} is 503 and a request sent to the proxy
        port waits in the backlog; it is answered after the delay, when C{/health} is 200.
        """
        nats = self.natsServer()
        backend = self.backend("b0")
        _, port, statusPort, _ = self.startProxy([nats.port], waitHealthy=False, start_response_delay_interval="3s")
        self.assertTrue(waitFor(lambda: self.code(statusPort, "/health") != 0, timeout=5))
        self.assertEqual(self.code(statusPort, "/health"), 503)
        natsPublish(nats.address, "router.register", registration(backend, "early.example.com"))
        self.assertTrue(waitFor(lambda: "early.example.com" in self.routes(), timeout=5))
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: early.example.com\r\n\r\n")
        waited = False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            readable = select.select([sock], [], [], 0.1)[0]
            health = self.code(statusPort, "/health")
            if readable:
                # The listener accepts in the same reactor turn as /health turns 200.
                self.assertEqual(health, 200, "answered during the start delay")
                break
            if health == 503:
                waited = True
        self.assertTrue(waited, "the request was not sent during the start delay")
        response = readResponse(Wire(sock))
        self.assertEqual((response.status, response.header("x-backend")), (200, "b0"))

    def test_sigtermDrains(self) -> None:
        """
        After SIGTERM C{/health} is 503 while a request is still in flight; the request completes
        and the process exits 0.
        """
        nats = self.natsServer()
        slow = self.clusterBackend("slow", mode=GATED)
        proxy, port, statusPort, _ = self.startProxy([nats.port], server={"graceful_timeout": "15s"})
        natsPublish(nats.address, "router.register", registration(slow, "slow.example.com"))
        self.assertTrue(waitFor(lambda: "slow.example.com" in self.routes(), timeout=5))
        results: list[Any] = []
        thread = threading.Thread(target=lambda: results.append(get(port, "slow.example.com")), daemon=True)
        thread.start()
        self.assertTrue(waitFor(lambda: slow.count() == 1, timeout=5))
        proxy.signal(signal.SIGTERM)
        self.assertTrue(waitFor(lambda: self.code(statusPort, "/health") == 503, timeout=5))
        assert proxy.process is not None
        self.assertIsNone(proxy.process.poll(), "exited with a request in flight")
        slow.release()
        thread.join(10)
        self.assertEqual([r[0] for r in results], [200])
        self.assertEqual(proxy.process.wait(15), 0)


class ProxyingTests(RegistryTestCase):
    """
    How registry routes are proxied: retries, connection limits, WebSocket, sticky cookies.
    """

    def test_retryOnRefusedEndpoint(self) -> None:
        """
        With one of two endpoints refusing connections every GET succeeds on the other.
        """
        nats = self.natsServer()
        good = self.clusterBackend("good")
        _, port, _, _ = self.startProxy([nats.port])
        refused = {"host": "127.0.0.1", "port": freePort(), "uris": ["retry.example.com"], "app": APP,
                   "private_instance_id": "refused", "private_instance_index": "1"}
        natsPublish(nats.address, "router.register", refused)
        natsPublish(nats.address, "router.register", registration(good, "retry.example.com"))
        self.assertTrue(waitFor(lambda: self.code(port, host="retry.example.com") == 200, timeout=5))
        answers = [get(port, "retry.example.com") for _ in range(8)]
        self.assertEqual([(s, h.get("x-backend")) for s, h, _ in answers], [(200, "good")] * 8)

    def test_allEndpointsDown(self) -> None:
        """
        With both endpoints crashed every request is gorouter's 502 C{endpoint_failure (...)} with
        its body, the first one and the ones after it.
        """
        nats = self.natsServer()
        backends = [self.clusterBackend(f"c{i}") for i in range(2)]
        _, port, _, _ = self.startProxy([nats.port])
        for backend in backends:
            natsPublish(nats.address, "router.register", registration(backend, "down.example.com"))
        self.assertTrue(waitFor(lambda: {get(port, "down.example.com")[1].get("x-backend") for _ in range(4)}
                                == {"c0", "c1"}, timeout=5))
        for backend in backends:
            backend.crash()
        for attempt in range(3):
            status, headers, body = get(port, "down.example.com")
            self.assertEqual(status, 502, (attempt, headers, body))
            self.assertTrue(headers["x-cf-routererror"].startswith("endpoint_failure ("), (attempt, headers))
            self.assertEqual(body, ENDPOINT_FAILURE_BODY)
            self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
            self.assertEqual(headers["x-content-type-options"], "nosniff")
            self.assertNotIn("x-meshproxy-error", headers)  # nothing tells meshproxy from gorouter

    def test_connectionLimit(self) -> None:
        """
        With C{backends.max_conns: 1} and the only endpoint holding a request, a second request is
        503 C{Connection Limit Reached}; once the first is answered the route takes requests again.
        """
        nats = self.natsServer()
        slow = self.clusterBackend("slow", mode=GATED)
        _, port, _, _ = self.startProxy([nats.port], backends={"max_conns": 1})
        natsPublish(nats.address, "router.register", registration(slow, "limited.example.com"))
        self.assertTrue(waitFor(lambda: "limited.example.com" in self.routes(), timeout=5))
        results: list[Any] = []
        thread = threading.Thread(target=lambda: results.append(get(port, "limited.example.com")), daemon=True)
        thread.start()
        self.assertTrue(waitFor(lambda: slow.count() == 1, timeout=5))
        status, headers, body = get(port, "limited.example.com")
        self.assertEqual((status, headers.get("x-cf-routererror")), (503, "Connection Limit Reached"))
        self.assertEqual(
            body, b"503 Service Unavailable: Requested route ('limited.example.com') has reached the connection limit.\n")
        slow.release()
        thread.join(10)
        self.assertEqual([r[0] for r in results], [200])
        self.assertEqual(get(port, "limited.example.com")[0], 200)

    def test_webSocket(self) -> None:
        """
        A WebSocket through a registered route: the upgrade reaches the endpoint with gorouter's
        headers, and messages cross both ways.
        """
        nats = self.natsServer()
        server = WebSocketServer()
        self.addCleanup(server.stop)
        _, port, _, _ = self.startProxy([nats.port])
        natsPublish(nats.address, "router.register", registration(server, "ws.example.com"))
        self.assertTrue(waitFor(lambda: "ws.example.com" in self.routes(), timeout=5))

        async def session() -> list[Any]:
            import websockets

            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            seen: list[Any] = []
            async with websockets.connect("ws://ws.example.com/chat", sock=sock, open_timeout=5, close_timeout=5) as ws:
                seen.append(await ws.recv())
                for i in range(5):
                    await ws.send(f"m{i}")
                    seen.append(await ws.recv())
                await ws.send(b"\x01\x02")
                seen.append(await ws.recv())
            return seen

        seen = asyncio.run(asyncio.wait_for(session(), 20))
        self.assertEqual(seen, ["hello /chat"] + [f"echo:m{i}" for i in range(5)] + [b"\x02\x01"])
        [headers] = server.requestHeaders
        self.assertEqual(headers["x-cf-applicationid"], APP)
        self.assertEqual(headers["upgrade"].lower(), "websocket")
        self.assertEqual(len(headers["x-vcap-request-id"]), 36)

    def test_stickyResponseSide(self) -> None:
        """
        A backend's C{JSESSIONID=...; Secure} gets C{__VCAP_ID__=<instance>; Path=/; HttpOnly;
        Secure}; both cookies bring requests back to that instance; once it unregisters, a sticky
        request lands on the other and gets that one's C{__VCAP_ID__}.
        """
        nats = self.natsServer()
        backends = [self.backend(f"s{i}", sessionCookie) for i in range(2)]
        _, port, _, _ = self.startProxy([nats.port])
        for backend in backends:
            natsPublish(nats.address, "router.register", registration(backend, "sticky.example.com"))
        self.assertTrue(waitFor(lambda: len(self.routes().get("sticky.example.com", [])) == 2, timeout=5))
        status, cookies, body = setCookies(port, "sticky.example.com")
        self.assertEqual(status, 200)
        chosen = next(b for b in backends if b.name == body.decode())
        other = next(b for b in backends if b is not chosen)
        instance = "instance-" + chosen.address.rsplit(":", 1)[1]
        self.assertEqual(cookies, [f"JSESSIONID=s-{chosen.name}; Path=/; Secure",
                                   f"__VCAP_ID__={instance}; Path=/; HttpOnly; Secure"])
        cookie = f"JSESSIONID=s-{chosen.name}; __VCAP_ID__={instance}"
        for _ in range(4):
            self.assertEqual(setCookies(port, "sticky.example.com", cookie), (200, [], chosen.name.encode()))
        natsPublish(nats.address, "router.unregister", registration(chosen, "sticky.example.com"))
        self.assertTrue(waitFor(lambda: len(self.routes().get("sticky.example.com", [])) == 1, timeout=5))
        newInstance = "instance-" + other.address.rsplit(":", 1)[1]
        self.assertEqual(setCookies(port, "sticky.example.com", cookie),
                         (200, [f"__VCAP_ID__={newInstance}; Path=/; HttpOnly"], other.name.encode()))
