"""
Benchmark: HTTP load on a router-registry route while route registrations stream in over NATS.

Starts nats-server, nginx (one worker, from apt) and meshproxy with a C{use_router_registry}
listener; registers C{--routes} routes (default 10,000) to nginx through a raw NATS publisher and
times how fast meshproxy absorbs them; then runs wrk against one registered route twice for
C{--duration} seconds: once quiet, once while a publisher thread sends C{--rate} registrations a
second (half heartbeats of existing routes, half new routes).  Prints requests/s, p50/p99 latency
and non-2xx answers for both, and the registration rate meshproxy absorbed (its
C{router_registry_messages_total} counter and C{/varz} C{urls}).  A static route to the same nginx
is measured too, for comparison.

    .venv/bin/python bench/registry_load.py [--routes 10000] [--rate 1000] [--duration 10]

meshproxy is pinned to cpu0; nginx, wrk and nats-server to cpu1; the publisher (this process) is not
pinned.  On a shared machine the numbers are indicative only.  Every loop is bounded in time and
count, and every process started here is stopped by its PID.  Installs nginx, wrk and nats-server with
apt-get when missing (needs root).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import REPO, cpuSeconds, freePort, peakRSS, startNginx, waitPort

HOST = "app.bench.example.com"
STATIC_HOST = "static.bench.example.com"  # a static route to the same nginx, for comparison
STATUS_USER, STATUS_PASS = "status", "bench"


def ensureTools() -> None:
    """
    apt-get install what is missing of nginx, wrk and nats-server.
    """
    missing = [package for package, tool in (("nginx", "nginx"), ("wrk", "wrk"), ("nats-server", "nats-server"))
               if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool)]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)


def startNATS(workdir: str, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    conf = os.path.join(workdir, "nats.conf")
    with open(conf, "w") as f:
        f.write(f"host: 127.0.0.1\nport: {port}\n")
    with open(os.path.join(workdir, "nats.log"), "wb") as log:
        proc = subprocess.Popen(["taskset", "-c", "1", binary, "-c", conf], stdout=log, stderr=subprocess.STDOUT)
    waitPort(port)
    return proc


def registration(uri: str, backendPort: int, index: int) -> bytes:
    """
    A route-emitter style C{router.register} payload: one uri, to nginx.
    """
    return json.dumps({
        "host": "127.0.0.1", "port": backendPort, "uris": [uri], "protocol": "http1",
        "app": "5c8a2e1b-7d3f-4e2a-9b1c-0f6e5d4c3b2a", "private_instance_id": f"{index:08x}-aaaa-bbbb-cccc-dddddddddddd",
        "private_instance_index": "0", "tags": {"component": "route-emitter"},
    }).encode()


class Publisher:
    """
    One raw NATS connection that publishes C{PUB}s and confirms with C{PING}/C{PONG}.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._readLine()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"name":"bench-publisher"}\r\n')
        self.sent = 0

    def _readLine(self) -> bytes:
        data = b""
        while not data.endswith(b"\r\n") and len(data) < 1 << 20:
            chunk = self.sock.recv(1)
            if not chunk:
                raise SystemExit("nats-server closed the publisher's connection")
            data += chunk
        return data

    def publish(self, subject: bytes, payloads: list[bytes]) -> None:
        self.sock.sendall(b"".join(b"PUB %s %d\r\n%s\r\n" % (subject, len(p), p) for p in payloads))
        self.sent += len(payloads)

    def flush(self) -> None:
        """
        Wait until nats-server has everything sent so far (answers its PINGs meanwhile).
        """
        self.sock.sendall(b"PING\r\n")
        for _ in range(100):
            line = self._readLine()
            if line == b"PONG\r\n":
                return
            if line == b"PING\r\n":
                self.sock.sendall(b"PONG\r\n")
        raise SystemExit("no PONG from nats-server")

    def close(self) -> None:
        self.sock.close()


def streamRegistrations(publisher: Publisher, rate: int, seconds: float, backendPort: int, existing: int,
                        stop: threading.Event, counts: dict[str, int]) -> None:
    """
    Send C{rate} registrations a second for C{seconds} in 10 ms ticks: even ones re-register (heartbeat)
    an existing route, odd ones add a new route.
    """
    perTick = max(1, rate // 100)
    started = time.monotonic()
    tick = 0
    while not stop.is_set() and tick < seconds * 100 + 1:
        batch = []
        for _ in range(perTick):
            n = counts["sent"]
            if n % 2:
                batch.append(registration(f"n{n}.bench.example.com", backendPort, existing + n))
                counts["new"] += 1
            else:
                i = (n // 2) % existing
                batch.append(registration(f"r{i}.bench.example.com", backendPort, i))
            counts["sent"] += 1
        publisher.publish(b"router.register", batch)
        tick += 1
        delay = started + tick * 0.01 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        counts["lagTicks"] += delay < -0.05


def varz(port: int) -> dict[str, Any]:
    token = base64.b64encode(f"{STATUS_USER}:{STATUS_PASS}".encode()).decode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/varz", headers={"Authorization": "Basic " + token})
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def messagesHandled(adminPort: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{adminPort}/api/v1/stats", timeout=10) as response:
        family = json.loads(response.read()).get("meshproxy_router_registry_messages_total", {})
    return int(sum(series["value"] for series in family.get("series", [])))


def wrk(port: int, duration: int, connections: int, host: str = HOST) -> dict[str, Any]:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "--latency",
         "-H", f"Host: {host}", f"http://127.0.0.1:{port}/index.html"],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socketErrors = re.search(r"Socket errors: (.*)", out)
    assert rps is not None and requests is not None, out

    def latency(pct: str) -> float:
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        assert m is not None, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {"rps": float(rps.group(1)), "requests": int(requests.group(1)), "p50": latency("50"),
            "p99": latency("99"), "non2xx": int(errors.group(1)) if errors else 0,
            "socketErrors": socketErrors.group(1) if socketErrors else ""}


def proxyConfig(
    port: int, adminPort: int, statusPort: int, routesPort: int, natsPort: int, backendPort: int
) -> dict[str, Any]:
    proxy = {"downstream_protocol": "Http1", "router_config_name": "bench", "use_router_registry": True}
    return {
        "servers": [{
            "routers": [{"router_config_name": "bench", "virtual_hosts": [{
                "name": "static", "domains": [STATIC_HOST],
                "routers": [{"match": {"prefix": "/"}, "route": {"cluster_name": "nginx"}}]}]}],
            "listeners": [{"name": "bench", "address": f"127.0.0.1:{port}",
                           "filter_chains": [{"filters": [{"type": "proxy", "config": proxy}]}]}],
        }],
        "router_registry": {
            "nats": {"hosts": [{"hostname": "127.0.0.1", "port": natsPort}]},
            "status": {"port": statusPort, "user": STATUS_USER, "pass": STATUS_PASS, "routes": {"port": routesPort}},
            "start_response_delay_interval": "1s",
        },
        "cluster_manager": {"clusters": [{"name": "nginx", "type": "SIMPLE", "lb_type": "LB_ROUNDROBIN",
                                          "hosts": [{"address": f"127.0.0.1:{backendPort}"}]}]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": adminPort}}},
    }


def waitUntil(predicate: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}")


def stop(proc: subprocess.Popen[bytes] | None, signum: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signum)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=1000, help="registrations per second during the loaded run")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--python", default=os.path.join(REPO, ".venv", "bin", "python"))
    args = parser.parse_args()
    ensureTools()
    workdir = tempfile.mkdtemp(prefix="meshproxy-registry-bench-")
    os.chmod(workdir, 0o755)  # nginx's worker runs as an unprivileged user
    natsPort, backendPort, proxyPort, adminPort, statusPort, routesPort = (freePort() for _ in range(6))
    nats = nginx = proxy = None
    publisher: Publisher | None = None
    try:
        nats = startNATS(workdir, natsPort)
        nginx = startNginx(workdir, backendPort, 0)
        configPath = os.path.join(workdir, "meshproxy.json")
        with open(configPath, "w") as f:
            json.dump(proxyConfig(proxyPort, adminPort, statusPort, routesPort, natsPort, backendPort), f)
        env = {**os.environ, "PYTHONPATH": REPO}
        proxy = subprocess.Popen(
            ["taskset", "-c", "0", args.python, "-c", "from twisted.scripts.twistd import run; run()",
             "--nodaemon", "--pidfile=", "--logfile=" + os.path.join(workdir, "meshproxy.log"), "meshproxy",
             "--config", configPath], env=env, cwd=workdir,
        )
        waitPort(proxyPort, timeout=30)
        waitUntil(lambda: varz(routesPort).get("nats_connected"), 15, "meshproxy to connect to NATS")
        version = subprocess.run([args.python, "-c", "import twisted, sys; print(sys.version.split()[0], twisted.__version__)"],
                                 capture_output=True, text=True, env=env, check=False).stdout.split()

        publisher = Publisher(natsPort)
        bulkStarted = time.monotonic()
        publisher.publish(b"router.register", [registration(HOST, backendPort, 0)])
        for start in range(0, args.routes, 500):
            publisher.publish(b"router.register", [registration(f"r{i}.bench.example.com", backendPort, i)
                                                    for i in range(start, min(start + 500, args.routes))])
        publisher.flush()
        published = time.monotonic() - bulkStarted
        waitUntil(lambda: varz(routesPort)["urls"] >= args.routes + 1, 120, f"{args.routes} routes in /varz")
        absorbed = time.monotonic() - bulkStarted

        wrk(proxyPort, 2, args.connections)  # warm up
        quiet = wrk(proxyPort, args.duration, args.connections)
        static = wrk(proxyPort, args.duration, args.connections, STATIC_HOST)

        counts = {"sent": 0, "new": 0, "lagTicks": 0}
        stopEvent = threading.Event()
        before = messagesHandled(adminPort)
        urlsBefore = varz(routesPort)["urls"]
        thread = threading.Thread(target=streamRegistrations, daemon=True, args=(
            publisher, args.rate, args.duration + 1, backendPort, args.routes, stopEvent, counts))
        streamStarted = time.monotonic()
        thread.start()
        cpuBefore = cpuSeconds(proxy.pid)
        loaded = wrk(proxyPort, args.duration, args.connections)
        cpuLoaded = cpuSeconds(proxy.pid) - cpuBefore
        stopEvent.set()
        thread.join(10)
        streamed = time.monotonic() - streamStarted
        publisher.flush()
        expected = before + counts["sent"]
        caughtUp = waitUntil(lambda: messagesHandled(adminPort) >= expected, 60, "meshproxy to handle the stream")
        handled = messagesHandled(adminPort) - before
        final = varz(routesPort)

        print(f"meshproxy registry bench: python={version[0]} twisted={version[1]} routes={args.routes} "
              f"connections={args.connections} duration={args.duration}s "
              f"(meshproxy on cpu0; nginx, wrk, nats-server on cpu1; shared machine: indicative numbers)")
        print(f"bulk registration: {args.routes + 1} routes published in {published:.2f} s, all in /varz after "
              f"{absorbed:.2f} s ({(args.routes + 1) / absorbed:.0f} registrations/s absorbed)")
        if quiet["non2xx"] or loaded["non2xx"] or static["non2xx"]:
            print("WARNING: non-2xx responses: the numbers below are not valid")
        print(f"{'':28} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}  socket errors")
        for name, r in (("static route (same nginx)", static), ("registry route, quiet", quiet),
                        (f"registry, {args.rate} regs/s", loaded)):
            print(f"{name:28} {r['rps']:>10.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['non2xx']:>8}  "
                  f"{r['socketErrors'] or '-'}")
        print(f"registrations during the loaded run: {counts['sent']} sent in {streamed:.1f} s "
              f"({counts['sent'] / streamed:.0f}/s, {counts['new']} new routes, {counts['lagTicks']} late ticks); "
              f"meshproxy handled {handled} ({handled / (streamed + caughtUp):.0f}/s incl. {caughtUp:.2f} s catching up)")
        print(f"/varz urls {urlsBefore} -> {final['urls']} (expected {urlsBefore + counts['new']}), "
              f"droplets {final['droplets']}, nats_connected {final['nats_connected']}")
        print(f"proxy CPU during the loaded run: {cpuLoaded:.1f} s; peak RSS {peakRSS(proxy.pid) / 1024:.1f} MiB")
    finally:
        if publisher is not None:
            publisher.close()
        stop(proxy)
        stop(nginx, signal.SIGQUIT)
        stop(nats)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
