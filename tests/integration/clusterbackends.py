"""
Peers and probes for the cluster integration tests (load balancing, health, ejection, breakers):
upstream servers that say which one they are and can crash, hang, reset or hold requests; a
bounded keep-alive load generator that keeps its own books of what was in flight when; and
helpers that build MOSN cluster JSON and read the admin's C{/clusters}.

Everything is bounded: sockets have timeouts, loops have counts and deadlines, threads are joined
with a timeout.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any

from tests.integration.harness import MeshProxy, waitFor
from tests.integration.httpwire import (
    ProtocolError,
    Wire,
    contentLength,
    parseRequestHead,
    readBody,
)

#: What a L{ClusterBackend} does with a request that is not a health check.
IDENTIFY = "identify"  # answer C{status} (200) with its name, after C{delay}
HANG = "hang"  # read the request, never answer; close when the peer does
RESET = "reset"  # requests with a body, and any request to /reset: read it whole, then a TCP reset
GATED = "gated"  # wait for the gate (L{ClusterBackend.release}), then answer as IDENTIFY

#: Longest any backend thread waits for anything (a gate, a hung peer).
LONGEST_WAIT = 20.0
MAX_REQUESTS_PER_CONNECTION = 100_000


class ClusterBackend:
    """
    A threaded HTTP/1.1 upstream on 127.0.0.1 that answers C{status} (200) with its name as the body
    and C{X-Backend: <name>} (keep-alive), and C{healthStatus} on C{GET /health}.

    It records the method and target of every request except health checks (C{requests}) and
    counts health checks apart (C{healthChecks}). L{crash} closes its listening socket and every
    open connection at once, as a dying process does; L{restarted} is the same server again on
    the same port.

    States: I{running}, then I{crashed} (nothing listens, every connection is closed).
    """

    def __init__(
        self,
        name: str,
        mode: str = IDENTIFY,
        healthStatus: int = 200,
        delay: float = 0.0,
        port: int = 0,
        status: int = 200,
    ) -> None:
        self.name = name
        self.mode = mode
        self.healthStatus = healthStatus
        self.status = status
        self.delay = delay
        self.requests: list[tuple[str, str]] = []
        self.healthChecks = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self._gate = threading.Event()
        self._stopped = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(128)
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._accepter = threading.Thread(target=self._accept, name=f"{name}-accept", daemon=True)
        self._accepter.start()

    def __repr__(self) -> str:
        return f"<ClusterBackend {self.name} {self.address}>"

    # -- what it saw -------------------------------------------------------------------------------

    def count(self, method: str | None = None, target: str | None = None) -> int:
        """
        How many requests (health checks excluded) it received, optionally of one method/target.
        """
        with self.lock:
            return sum(
                1 for m, t in self.requests
                if (method is None or m == method) and (target is None or t == target)
            )

    # -- lifecycle -------------------------------------------------------------------------------

    def release(self) -> None:
        """
        Open the gate: requests held by the C{GATED} mode are answered, and later ones at once.
        """
        self._gate.set()

    def crash(self) -> None:
        """
        Stop listening and close every open connection now (FIN to each peer), without waiting
        for the handler threads; L{stop} joins them.
        """
        with self.lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
            sockets = list(self._sockets)
        _shutClose(self.listener)
        for sock in sockets:
            _shutClose(sock)

    def stop(self) -> None:
        """
        L{crash}, then wait (bounded) for every thread.
        """
        self.crash()
        self._accepter.join(5)
        for thread in list(self._threads):
            thread.join(5)

    def restarted(self) -> ClusterBackend:
        """
        The same server (name, mode, statuses, delay), listening again on the same port.
        """
        self.stop()
        return ClusterBackend(self.name, self.mode, self.healthStatus, self.delay, self.port, self.status)

    # -- serving ---------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                if self._stopped.is_set():
                    sock.close()
                    return
                self._sockets.add(sock)
            sock.settimeout(30)
            thread = threading.Thread(target=self._serve, args=(sock,), name=f"{self.name}-conn", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            wire = Wire(sock)
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                if not self._answer(sock, wire):
                    return
        except ProtocolError as e:
            self.errors.append(str(e))
        except OSError:
            pass  # crashed under it, or the proxy went away
        finally:
            with self.lock:
                self._sockets.discard(sock)
            sock.close()

    def _answer(self, sock: socket.socket, wire: Wire) -> bool:
        head = wire.readHead()
        if head is None:
            return False
        request = parseRequestHead(head)
        chunked = "chunked" in request.tokens("transfer-encoding")
        length = contentLength(request)
        readBody(wire, request, chunked, length)
        if request.target == "/health":
            with self.lock:
                self.healthChecks += 1
            return _respond(sock, self.healthStatus, b"health %d\n" % self.healthStatus, request.keepAlive)
        with self.lock:
            self.requests.append((request.method, request.target))
        if self.mode == HANG:
            self._waitForPeer(sock)
            return False
        if self.mode == RESET and (chunked or length or request.target.startswith("/reset")):
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if self.mode == GATED:
            deadline = time.monotonic() + LONGEST_WAIT
            while not self._gate.wait(0.05) and not self._stopped.is_set() and time.monotonic() < deadline:
                pass
        if self.delay:
            self._stopped.wait(self.delay)
        if self._stopped.is_set():
            return False
        return _respond(sock, self.status, self.name.encode(), request.keepAlive, [("X-Backend", self.name)])

    def _waitForPeer(self, sock: socket.socket) -> None:
        sock.settimeout(0.1)
        deadline = time.monotonic() + LONGEST_WAIT
        while time.monotonic() < deadline and not self._stopped.is_set():
            try:
                if not sock.recv(65536):
                    return
            except TimeoutError:
                continue


def _respond(
    sock: socket.socket, status: int, body: bytes, keepAlive: bool, headers: Iterable[tuple[str, str]] = ()
) -> bool:
    lines = [f"HTTP/1.1 {status} {'OK' if status < 400 else 'Failing'}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not keepAlive:
        lines.append("Connection: close")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    return keepAlive


def _shutClose(sock: socket.socket) -> None:
    # shutdown() wakes a thread blocked on the socket (close() alone does not) and sends the FIN.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# -- a client ------------------------------------------------------------------------------------


class Answer:
    """
    One request's outcome as a client saw it: C{status} 0 when it failed without a response.
    """

    def __init__(self, status: int, headers: dict[str, str], body: bytes, error: str = "") -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.error = error

    @property
    def backend(self) -> str | None:
        return self.headers.get("x-backend")

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.headers.get('x-meshproxy-error') or self.backend} {self.error}>"


def request(
    conn: http.client.HTTPConnection, method: str = "GET", path: str = "/",
    headers: dict[str, str] | None = None, body: bytes | None = None,
) -> Answer:
    """
    One request on C{conn}; a failure without a response is an L{Answer} with status 0 (and
    C{conn} is closed, so its next request opens a new connection).
    """
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        return Answer(0, {}, b"", repr(e))
    fields = {name.lower(): value for name, value in response.getheaders()}
    if response.will_close:
        conn.close()
    return Answer(response.status, fields, data)


class Outcome:
    """
    One request of a L{LoadRun}: its number, when it started and ended (monotonic seconds), and
    what came back.
    """

    __slots__ = ("answer", "ended", "number", "started")

    def __init__(self, number: int, started: float, ended: float, answer: Answer) -> None:
        self.number = number
        self.started = started
        self.ended = ended
        self.answer = answer

    @property
    def ok(self) -> bool:
        return self.answer.status == 200

    def __repr__(self) -> str:
        return f"<Outcome #{self.number} {self.answer!r}>"


class LoadRun:
    """
    C{clients} threads, each with its own keep-alive connection, sending GETs back to back until
    L{stop}, C{duration} seconds, or C{perClient} requests each.

    The run keeps the set of requests in flight (started, not yet answered) under C{lock}: hold
    it to look at that set and act in the same instant (no request starts or ends meanwhile).
    """

    def __init__(
        self, port: int, clients: int = 8, perClient: int = 1500, duration: float = 10.0, path: str = "/"
    ) -> None:
        self.port = port
        self.path = path
        self.perClient = perClient
        self.lock = threading.Lock()
        self.inFlight: set[int] = set()
        self.outcomes: list[Outcome] = []
        self._numbers = iter(range(1 << 30))
        self._stop = threading.Event()
        self._deadline = time.monotonic() + duration
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            for _ in range(self.perClient):
                if self._stop.is_set() or time.monotonic() > self._deadline:
                    return
                with self.lock:
                    number = next(self._numbers)
                    self.inFlight.add(number)
                    started = time.monotonic()
                answer = request(conn, path=self.path)
                with self.lock:
                    self.inFlight.discard(number)
                    self.outcomes.append(Outcome(number, started, time.monotonic(), answer))
        finally:
            conn.close()

    def count(self) -> int:
        with self.lock:
            return len(self.outcomes)

    def stop(self) -> list[Outcome]:
        """
        Stop every client (bounded) and return every outcome.
        """
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        with self.lock:
            return list(self.outcomes)


# -- configuration and the admin view ---------------------------------------------------------------


def cluster(name: str, hosts: Iterable[ClusterBackend | str], lbType: str = "LB_ROUNDROBIN", **keys: Any) -> dict[str, Any]:
    """
    One MOSN cluster of C{hosts} (backends or addresses) with C{keys} added as they are.
    """
    addresses = [h.address if isinstance(h, ClusterBackend) else h for h in hosts]
    return {
        "name": name, "type": "SIMPLE", "lb_type": lbType, "connect_timeout": "2s",
        "hosts": [{"address": a} for a in addresses], **keys,
    }


def httpHealthCheck(interval: str = "200ms", timeout: str = "1s", path: str = "/health") -> dict[str, Any]:
    """
    An C{Http1} health check of C{path} passing on 2xx, with thresholds of one.
    """
    return {
        "protocol": "Http1", "interval": interval, "timeout": timeout,
        "healthy_threshold": 1, "unhealthy_threshold": 1,
        "check_config": {"http_check_config": {"path": path, "codes": [{"Start": 200, "End": 300}]}},
    }


def clusters(proxy: MeshProxy) -> dict[str, Any]:
    """
    The admin's C{/clusters} JSON.
    """
    status, body = proxy.admin("/clusters")
    if status != 200:
        raise AssertionError(f"/clusters answered {status}: {body!r}")
    return json.loads(body)  # type: ignore[no-any-return]


def hostView(proxy: MeshProxy, clusterName: str, address: str) -> dict[str, Any]:
    """
    One host's entry in C{/clusters}.
    """
    for host in clusters(proxy)[clusterName]["hosts"]:
        if host["address"] == address:
            return host  # type: ignore[no-any-return]
    raise AssertionError(f"no host {address} in cluster {clusterName}")


def waitForHost(proxy: MeshProxy, clusterName: str, address: str, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
    """
    Poll C{/clusters} until C{predicate(hostEntry)} holds (at most C{timeout} seconds); the entry.
    """
    seen: list[dict[str, Any]] = []

    def check() -> bool:
        seen[:] = [hostView(proxy, clusterName, address)]
        return bool(predicate(seen[0]))

    if not waitFor(check, timeout, 0.05):
        raise AssertionError(f"host {address} of {clusterName} never got there; last seen: {seen}")
    return seen[0]
