#!/usr/bin/env python3
"""
Benchmark: wrk against meshproxy and against the backend directly, side by side in one run.

The backend is nginx with one worker (from apt).  meshproxy runs under twistd on one core
(taskset), nginx and wrk on the other.  Prints requests/s, p50/p99 latency, the proxy's CPU
microseconds per request and its peak RSS, with the ratio to direct; then a bulk transfer through
the proxy (MiB/s and peak RSS).  Every run is bounded: wrk runs for --duration seconds.

    python bench/run.py --mode tcp      # tcp_proxy (L4 relay) in front of nginx
    python bench/run.py --mode http     # the HTTP/1 proxy filter in front of nginx

Installs nginx, wrk and curl with apt-get when missing (needs root).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensureTools() -> None:
    missing = [p for p, tool in (("nginx", "nginx"), ("wrk", "wrk"), ("curl", "curl")) if shutil.which(tool) is None
               and not os.path.exists("/usr/sbin/" + tool)]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)


def waitPort(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def startNginx(workdir: str, port: int, bigFile: int) -> subprocess.Popen[bytes]:
    root = os.path.join(workdir, "www")
    os.makedirs(root)
    with open(os.path.join(root, "index.html"), "wb") as f:
        f.write(b"hello from nginx\n")
    with open(os.path.join(root, "big"), "wb") as f:
        f.truncate(bigFile)
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 100000;
    sendfile on;
    tcp_nopush on;  # as in Debian's default nginx.conf: head and small body leave in one segment
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen(["taskset", "-c", "1", nginx, "-c", conf, "-p", workdir])
    waitPort(port)
    return proc


def proxyConfig(mode: str, port: int, adminPort: int, backendPort: int) -> dict[str, object]:
    cluster = {"name": "nginx", "type": "SIMPLE", "lb_type": "LB_ROUNDROBIN",
               "hosts": [{"address": f"127.0.0.1:{backendPort}"}]}
    if mode == "tcp":
        filters = [{"type": "tcp_proxy", "config": {"cluster": "nginx"}}]
        routers: list[object] = []
    else:
        filters = [{"type": "proxy", "config": {"downstream_protocol": "Http1", "router_config_name": "bench"}}]
        routers = [{"router_config_name": "bench", "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routers": [{"match": {"prefix": "/"}, "route": {"cluster_name": "nginx"}}]}
        ]}]
    return {
        "servers": [{"routers": routers, "listeners": [
            {"name": "bench", "address": f"127.0.0.1:{port}", "filter_chains": [{"filters": filters}]}]}],
        "cluster_manager": {"clusters": [cluster]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": adminPort}}},
    }


def cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peakRSS(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def wrk(port: int, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "--latency",
         f"http://127.0.0.1:{port}/index.html"],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socketErrors = re.search(r"Socket errors: (.*)", out)

    def latency(pct: str) -> float:
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        assert m is not None, out
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rps, "requests": requests, "p50": latency("50"), "p99": latency("99"),
            "non2xx": int(errors.group(1)) if errors else 0,
            "socketErrors": socketErrors.group(1) if socketErrors else ""}  # type: ignore[dict-item]


def bulk(port: int, size: int) -> float:
    started = time.monotonic()
    subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "120", f"http://127.0.0.1:{port}/big"],
                   check=True, timeout=180)
    return size / (time.monotonic() - started) / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["tcp", "http"], default="http")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--bulk-mib", type=int, default=1024)
    parser.add_argument("--python", default=os.path.join(REPO, ".venv", "bin", "python"))
    args = parser.parse_args()
    ensureTools()
    workdir = tempfile.mkdtemp(prefix="meshproxy-bench-")
    os.chmod(workdir, 0o755)  # nginx's worker runs as an unprivileged user
    backendPort, proxyPort, adminPort = freePort(), freePort(), freePort()
    nginx = startNginx(workdir, backendPort, args.bulk_mib << 20)
    configPath = os.path.join(workdir, "meshproxy.json")
    with open(configPath, "w") as f:
        json.dump(proxyConfig(args.mode, proxyPort, adminPort, backendPort), f)
    env = {**os.environ, "PYTHONPATH": REPO}
    proxy = subprocess.Popen(
        ["taskset", "-c", "0", args.python, "-c", "from twisted.scripts.twistd import run; run()",
         "--nodaemon", "--pidfile=", "--logfile=" + os.path.join(workdir, "meshproxy.log"), "meshproxy",
         "--config", configPath], env=env, cwd=workdir,
    )
    try:
        waitPort(proxyPort)
        version = subprocess.run([args.python, "-c", "import twisted, sys; print(sys.version.split()[0], twisted.__version__)"],
                                 capture_output=True, text=True, env=env).stdout.split()
        wrk(backendPort, 2, args.connections)  # warm up nginx
        direct = wrk(backendPort, args.duration, args.connections)
        wrk(proxyPort, 2, args.connections)  # warm up the proxy
        cpuBefore = cpuSeconds(proxy.pid)
        proxied = wrk(proxyPort, args.duration, args.connections)
        cpuUsed = cpuSeconds(proxy.pid) - cpuBefore
        rssAfterWrk = peakRSS(proxy.pid)
        throughput = bulk(proxyPort, args.bulk_mib << 20)
        directThroughput = bulk(backendPort, args.bulk_mib << 20)
        rssAfterBulk = peakRSS(proxy.pid)
        print(f"meshproxy bench: mode={args.mode} python={version[0]} twisted={version[1]} "
              f"connections={args.connections} duration={args.duration}s (proxy pinned to cpu0; nginx, wrk, curl on cpu1)")
        if direct["non2xx"] or proxied["non2xx"]:
            print("WARNING: non-2xx responses: the numbers below are not valid")
        print(f"{'':10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}  socket errors")
        for name, r in (("direct", direct), ("meshproxy", proxied)):
            print(f"{name:10} {r['rps']:>10.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['non2xx']:>8}  {r['socketErrors'] or '-'}")
        print(f"ratio proxied/direct: {proxied['rps'] / direct['rps']:.2f}")
        print(f"proxy CPU per request: {cpuUsed / proxied['requests'] * 1e6:.1f} us "
              f"({cpuUsed:.1f} s CPU for {proxied['requests']} requests)")
        print(f"proxy peak RSS after wrk: {rssAfterWrk / 1024:.1f} MiB")
        print(f"bulk {args.bulk_mib} MiB: proxied {throughput:.0f} MiB/s, direct {directThroughput:.0f} MiB/s, "
              f"proxy peak RSS {rssAfterBulk / 1024:.1f} MiB")
    finally:
        proxy.send_signal(signal.SIGTERM)
        try:
            proxy.wait(40)
        except subprocess.TimeoutExpired:
            proxy.kill()
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            nginx.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
