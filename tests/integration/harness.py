"""
Integration harness: a real C{twistd -n meshproxy} subprocess on free loopback ports, and small
threaded socket backends in the test process.

Everything here is bounded in time: every socket has a timeout, every wait a deadline, and every
process the harness starts is stopped by its PID in cleanup.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TWISTD = "from twisted.scripts.twistd import run; run()"


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def childEnv() -> dict[str, str]:
    """
    The environment for subprocesses: this interpreter's, with the source tree importable (so
    the run against Debian's Twisted, which does not install meshproxy, finds it and its plugin).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def waitFor(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """
    Poll C{predicate} until it is true or C{timeout} passes; return its last answer.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def runTwistd(configPath: str, timeout: float = 30.0, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """
    Run C{twistd -n meshproxy --config configPath} to completion (for start-up failures).
    """
    return subprocess.run(
        [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile=", "meshproxy", "--config", configPath],
        env=childEnv(), cwd=cwd or tempfile.gettempdir(), capture_output=True, text=True, timeout=timeout,
    )


class MeshProxy:
    """
    One meshproxy process started with C{twistd -n meshproxy} on a config written to a temp dir.
    """

    def __init__(self, config: dict[str, Any], workdir: str) -> None:
        self.config = config
        self.workdir = workdir = os.path.abspath(workdir)
        self.configPath = os.path.join(workdir, "meshproxy.json")
        self.logPath = os.path.join(workdir, "meshproxy.log")
        self.adminPort = freePort()
        config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.adminPort}}}
        with open(self.configPath, "w") as f:
            json.dump(config, f, indent=2)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """
        Start the process and wait until C{/ready} answers 200.
        """
        self._log = open(self.logPath, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile=", "meshproxy", "--config", self.configPath],
            env=childEnv(), cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT,
        )
        if not waitFor(self._ready, timeout):
            self.stop()
            raise AssertionError(f"meshproxy did not become ready; log:\n{self.log()}")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"meshproxy exited with {self.process.returncode}; log:\n{self.log()}")
        try:
            status, _ = self.admin("/ready")
        except OSError:
            return False
        return status == 200

    def admin(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        """
        One request to the admin endpoint with Python's http.client.
        """
        conn = http.client.HTTPConnection("127.0.0.1", self.adminPort, timeout=5)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        """
        The admin JSON stats, flattened to C{{"name{k=v,...}": value}}.
        """
        status, body = self.admin("/api/v1/stats")
        flat: dict[str, Any] = {}
        for name, family in json.loads(body).items():
            for series in family["series"]:
                labels = ",".join(f"{k}={v}" for k, v in sorted(series["labels"].items()))
                flat[f"{name}{{{labels}}}"] = series["value"]
        return flat

    def memory(self) -> dict[str, int]:
        """
        The process's current and peak resident set size in KiB (VmRSS, VmHWM).
        """
        assert self.process is not None
        values: dict[str, int] = {}
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
        return values

    def log(self) -> str:
        try:
            with open(self.logPath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int | None:
        """
        SIGTERM the process (SIGKILL if it has not exited in C{timeout}); return its exit code.
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


class Backend:
    """
    A threaded TCP server on 127.0.0.1 that runs C{handler(sock, backend)} per connection.
    """

    def __init__(self, handler: Callable[[socket.socket, Backend], None], port: int = 0) -> None:
        self.handler = handler
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(128)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        self.sent = 0
        self.received = 0
        self.lock = threading.Lock()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
            sock.settimeout(30)
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, sock: socket.socket) -> None:
        try:
            self.handler(sock, self)
        except OSError:
            pass
        finally:
            sock.close()

    def stop(self) -> None:
        self._stopping = True
        self.listener.close()
        self._accepter.join(5)
        for t in self._threads:
            t.join(5)


def echoHandler(sock: socket.socket, backend: Backend) -> None:
    """
    Echo everything; on the client's FIN, finish sending and close.
    """
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)


def sinkThenReportHandler(sock: socket.socket, backend: Backend) -> None:
    """
    Read until the client's FIN, then answer with the byte count (proves half-close relaying).
    """
    total = 0
    while True:
        data = sock.recv(65536)
        if not data:
            break
        total += len(data)
    sock.sendall(b"received %d\n" % total)


def sourceHandler(size: int) -> Callable[[socket.socket, Backend], None]:
    """
    Send C{size} bytes (after reading one request byte), then close.
    """
    chunk = b"x" * 65536

    def handler(sock: socket.socket, backend: Backend) -> None:
        sock.recv(1)
        remaining = size
        while remaining > 0:
            n = min(remaining, len(chunk))
            sock.sendall(chunk[:n])
            remaining -= n
            with backend.lock:
                backend.sent += n
    return handler


def firehoseHandler(sock: socket.socket, backend: Backend) -> None:
    """
    Send without end in 64 KiB blocks, counting what the kernel accepted, until the peer goes.
    """
    chunk = b"y" * 65536
    sock.settimeout(60)
    while not backend._stopping:
        sock.sendall(chunk)
        with backend.lock:
            backend.sent += len(chunk)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    """
    A client socket connected to 127.0.0.1:C{port}.
    """
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def recvAll(sock: socket.socket, limit: int = 1 << 31) -> bytes:
    """
    Read until EOF (or C{limit} bytes).
    """
    parts = []
    total = 0
    while total < limit:
        data = sock.recv(1 << 20)
        if not data:
            break
        parts.append(data)
        total += len(data)
    return b"".join(parts)


def httpRoute(prefix: str | None = "/", cluster: str | None = "backend", timeout: str = "5s",
              match: dict[str, Any] | None = None, **action: Any) -> dict[str, Any]:
    """
    One MOSN route entry: C{match} (default: C{prefix}) and a C{route} action to C{cluster} with
    C{timeout} plus C{action}'s keys.  With C{cluster=None} C{action} is the whole entry's action
    (C{redirect=...} or C{direct_response=...}).
    """
    matchDict = dict(match) if match is not None else ({"prefix": prefix} if prefix is not None else {})
    if cluster is None:
        return {"match": matchDict, **action}
    return {"match": matchDict, "route": {"cluster_name": cluster, "timeout": timeout, **action}}


def httpProxyDocument(
    port: int,
    clusters: dict[str, list[str]] | list[dict[str, Any]],
    routes: list[dict[str, Any]] | None = None,
    virtualHosts: list[dict[str, Any]] | None = None,
    listenerName: str = "web",
    proxyConfig: dict[str, Any] | None = None,
    router: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """
    A MOSN v2 document with one HTTP/1 C{proxy} listener on 127.0.0.1:C{port} using router
    C{r}: one catch-all virtual host holding C{routes}, or the given C{virtualHosts}.
    C{clusters} maps names to host addresses, or is a list of whole cluster dicts; C{proxyConfig},
    C{router} and C{server} add keys to the filter config, the router and the server.
    """
    if isinstance(clusters, dict):
        clusterList = [
            {"name": name, "type": "SIMPLE", "lb_type": "LB_ROUNDROBIN", "connect_timeout": "2s",
             "hosts": [{"address": a} for a in addresses]}
            for name, addresses in clusters.items()
        ]
    else:
        clusterList = clusters
    if virtualHosts is None:
        virtualHosts = [{"name": "all", "domains": ["*"], "routers": routes or []}]
    filterConfig = {"downstream_protocol": "Http1", "router_config_name": "r", **(proxyConfig or {})}
    return {
        "servers": [{
            "routers": [{"router_config_name": "r", "virtual_hosts": virtualHosts, **(router or {})}],
            "listeners": [{
                "name": listenerName,
                "address": f"127.0.0.1:{port}",
                "filter_chains": [{"filters": [{"type": "proxy", "config": filterConfig}]}],
            }],
            **(server or {}),
        }],
        "cluster_manager": {"clusters": clusterList},
    }
