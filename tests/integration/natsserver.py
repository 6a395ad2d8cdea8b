"""
Real C{nats-server} processes for integration tests: one node, or a cluster of N nodes joined by
routes, on free loopback ports, with optional user/password or token auth.

Every wait has a deadline, every process is started by this module and stopped by its PID, and
each node's configuration and log live in a directory the test owns.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from typing import Any

from tests.integration.harness import freePort, waitFor


def natsServerPath() -> str | None:
    """
    The C{nats-server} binary: on C{PATH}, else Debian's C{/usr/sbin/nats-server}; L{None} if absent.
    """
    found = shutil.which("nats-server")
    if found is None and os.access("/usr/sbin/nats-server", os.X_OK):
        found = "/usr/sbin/nats-server"
    return found


SKIP_REASON = "nats-server not found on PATH or at /usr/sbin/nats-server (Debian: apt-get install nats-server)"


def _quote(value: str) -> str:
    return json.dumps(value)


class NATSServer:
    """
    One C{nats-server} on 127.0.0.1.  Its ports are chosen once, so L{stop} then L{start} brings
    the same node back where its clients and peers expect it.
    """

    def __init__(
        self,
        workdir: str,
        name: str = "n1",
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        clusterName: str | None = None,
    ) -> None:
        binary = natsServerPath()
        if binary is None:
            raise RuntimeError(SKIP_REASON)
        self.binary = binary
        self.name = name
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = freePort()
        self.monitorPort = freePort()
        self.clusterPort = freePort() if clusterName else None
        self.clusterName = clusterName
        self.routes: list[int] = []
        self.user, self.password, self.token = user, password, token
        self.configPath = os.path.join(self.workdir, name + ".conf")
        self.logPath = os.path.join(self.workdir, name + ".log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """
        The client address, as L{meshproxy.nats.NATSClient} takes servers.
        """
        return ("127.0.0.1", self.port)

    def config(self) -> str:
        """
        The node's configuration file text.
        """
        lines = [
            "server_name: %s" % _quote(self.name),
            "host: 127.0.0.1",
            "port: %d" % self.port,
            "http: %s" % _quote("127.0.0.1:%d" % self.monitorPort),
        ]
        if self.user is not None:
            lines.append(
                "authorization { user: %s, password: %s }" % (_quote(self.user), _quote(self.password or ""))
            )
        elif self.token is not None:
            lines.append("authorization { token: %s }" % _quote(self.token))
        if self.clusterPort is not None:
            routes = ", ".join(_quote("nats://127.0.0.1:%d" % port) for port in self.routes)
            lines.append(
                "cluster { name: %s, host: 127.0.0.1, port: %d, routes: [%s] }"
                % (_quote(self.clusterName or "meshtest"), self.clusterPort, routes)
            )
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        """
        Write the configuration, start the process and wait until it sends its INFO.
        """
        if self.running():
            return
        with open(self.configPath, "w") as f:
            f.write(self.config())
        with open(self.logPath, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", self.configPath], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        if not waitFor(self._greets, timeout):
            self.stop()
            raise AssertionError("nats-server %s did not start; log:\n%s" % (self.name, self.log()))

    def _greets(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            raise AssertionError("nats-server %s exited with %s; log:\n%s" % (self.name, code, self.log()))
        try:
            with socket.create_connection(self.address, timeout=1.0) as sock:
                return sock.recv(5) == b"INFO "
        except OSError:
            return False

    def running(self) -> bool:
        """
        Whether the process is alive.
        """
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """
        Stop the process by its PID (SIGTERM, then SIGKILL if it lingers) and reap it.
        """
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def monitor(self, path: str) -> dict[str, Any]:
        """
        One monitoring endpoint's JSON (C{/varz}, C{/routez}, C{/connz}, ...).
        """
        url = "http://127.0.0.1:%d%s" % (self.monitorPort, path)
        with urllib.request.urlopen(url, timeout=2.0) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def routeCount(self) -> int:
        """
        How many cluster routes are up (0 if the monitor does not answer).
        """
        try:
            return int(self.monitor("/routez").get("num_routes", 0))
        except (OSError, ValueError):
            return 0

    def log(self) -> str:
        """
        The node's log so far.
        """
        try:
            with open(self.logPath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class NATSCluster:
    """
    C{size} nodes, each with routes to all the others, under one cluster name.
    """

    def __init__(self, workdir: str, size: int = 2, clusterName: str = "meshtest", **auth: Any) -> None:
        self.nodes = [
            NATSServer(os.path.join(workdir, "n%d" % (i + 1)), "n%d" % (i + 1), clusterName=clusterName, **auth)
            for i in range(size)
        ]
        for node in self.nodes:
            node.routes = [other.clusterPort for other in self.nodes if other is not node]  # type: ignore[misc]

    def start(self, timeout: float = 15.0) -> None:
        """
        Start every node and wait until each has a route to every other.
        """
        for node in self.nodes:
            node.start()
        self.waitForRoutes(timeout)

    def waitForRoutes(self, timeout: float = 15.0) -> None:
        """
        Wait until every running node has routes to all the other running nodes.
        """
        running = [node for node in self.nodes if node.running()]
        expected = len(running) - 1
        if not waitFor(lambda: all(node.routeCount() >= expected for node in running), timeout):
            logs = "\n".join("--- %s\n%s" % (node.name, node.log()) for node in self.nodes)
            raise AssertionError("NATS routes did not form; logs:\n" + logs)

    def stop(self) -> None:
        """
        Stop every node.
        """
        for node in self.nodes:
            node.stop()

