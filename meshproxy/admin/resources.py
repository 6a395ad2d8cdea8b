"""
The admin endpoint's resources: readiness, the running config, statistics, MOSN's states.

Kept on its own endpoint (loopback by default), served by C{twisted.web}: it is the control
plane, never on the data path.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from meshproxy.config import configDump
from meshproxy.tls import certificateInfo


def _json(request: Request, value: object, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def _text(request: Request, text: str, code: int = 200, contentType: bytes = b"text/plain; charset=utf-8") -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", contentType)
    return text.encode("utf-8")


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service


class ReadyResource(_Leaf):
    """
    C{/ready}: 200 while running with every listener bound, else 503 with the reasons.
    """

    def render_GET(self, request: Request) -> bytes:
        ready, reasons = self.service.readiness()
        if ready:
            return _text(request, "ready\n")
        return _text(request, "not ready: " + "; ".join(reasons) + "\n", 503)


class ConfigDumpResource(_Leaf):
    """
    C{/api/v1/config_dump}: the running configuration with every default filled in, keys redacted,
    and C{tls_certificates}: every served certificate's subject, names, expiry and file.
    """

    def render_GET(self, request: Request) -> bytes:
        dump = configDump(self.service.config)
        dump["tls_certificates"] = certificateInfo(self.service.chainTLS.values())
        dump["last_reload"] = self.service.lastReload
        return _json(request, dump)


class ReloadResource(_Leaf):
    """
    C{POST /api/v1/reload}: re-read the config file and apply it (as SIGHUP does); 200 when applied,
    400 with the problems when refused (the running configuration is unchanged).
    """

    def render_POST(self, request: Request) -> bytes:
        applied = self.service.reload()
        return _json(request, self.service.lastReload, 200 if applied else 400)


class StatsResource(_Leaf):
    """
    C{/api/v1/stats}: every metric as JSON (C{?key=NAME} keeps one family).
    """

    def render_GET(self, request: Request) -> bytes:
        stats = self.service.stats.asDict()
        keys = request.args.get(b"key")
        if keys:
            wanted = {k.decode("utf-8", "replace") for k in keys}
            stats = {k: v for k, v in stats.items() if k in wanted}
        return _json(request, stats)


class PrometheusResource(_Leaf):
    """
    C{/stats/prometheus}: every metric in the Prometheus text format.
    """

    def render_GET(self, request: Request) -> bytes:
        return _text(request, self.service.stats.prometheus(), contentType=b"text/plain; version=0.0.4; charset=utf-8")


class StatesResource(_Leaf):
    """
    C{/api/v1/states}: MOSN's C{pid=<pid>&state=<stage>} (6 running, 8 gracefully stopping).
    """

    def render_GET(self, request: Request) -> bytes:
        return _text(request, f"pid={os.getpid()}&state={self.service.mosnState()}\n")


class ClustersResource(_Leaf):
    """
    C{/clusters}: each cluster's hosts with their health, ejection state and reason, and live
    counters; JSON, or Envoy's plain-text C{cluster::host::stat::value} lines with C{?format=text}.
    """

    def render_GET(self, request: Request) -> bytes:
        clusters = {cluster.name: cluster.describe() for cluster in self.service.clusters}
        formats = request.args.get(b"format")
        if not formats or formats[0] != b"text":
            return _json(request, clusters)
        lines = []
        for name, cluster in clusters.items():
            for key in ("lb_type", "panic", "healthy_hosts", "requests_active", "connections_active"):
                lines.append(f"{name}::{key}::{_plain(cluster[key])}")
            for host in cluster["hosts"]:
                prefix = f"{name}::{host['address']}"
                lines.append(f"{prefix}::health_flags::{'/'.join(host['health_flags'])}")
                for key in (
                    "weight", "reason", "connections_active", "connections_total", "connect_failures",
                    "requests_active", "requests_total",
                ):
                    lines.append(f"{prefix}::{key}::{_plain(host[key])}")
                outlier = host.get("outlier")
                if outlier:
                    lines.append(f"{prefix}::ejections::{_plain(outlier.get('ejections', 0))}")
        return _text(request, "".join(line + "\n" for line in lines))


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class HealthcheckResource(_Leaf):
    """
    C{POST /healthcheck/fail} and C{/healthcheck/ok} (Envoy's): take this instance out of a load
    balancer's rotation (C{/ready} answers 503) and put it back, without stopping traffic.
    """

    def __init__(self, service: Any, failed: bool) -> None:
        super().__init__(service)
        self.failed = failed

    def render_POST(self, request: Request) -> bytes:
        self.service.healthcheckFailed = self.failed
        self.service.log.info(
            "admin: {what}", what="health check set to fail" if self.failed else "health check set to pass"
        )
        return _text(request, "OK\n")


class ExplainResource(_Leaf):
    """
    C{/api/v1/explain?host=&path=&method=[&router=][&header=Name:Value...]}: which virtual host,
    route and cluster a request would take in each router (or the one named), and why.
    """

    def render_GET(self, request: Request) -> bytes:
        def arg(name: bytes, default: str = "") -> str:
            values = request.args.get(name)
            return values[0].decode("utf-8", "replace") if values else default

        host, path, method, router = arg(b"host"), arg(b"path", "/"), arg(b"method", "GET"), arg(b"router")
        headers = []
        for raw in request.args.get(b"header", []):
            name, sep, value = raw.decode("utf-8", "replace").partition(":")
            if not sep or not name.strip():
                return _json(request, {"error": f"header {raw!r} is not Name:Value"}, 400)
            headers.append((name.strip(), value.strip()))
        tables = self.service.routeTables
        if router:
            if router not in tables:
                return _json(request, {"error": f"no router {router!r}", "routers": sorted(tables)}, 404)
            tables = {router: tables[router]}
        return _json(
            request,
            {name: table.explain(host, path, method, headers) for name, table in sorted(tables.items())},
        )


class IndexResource(_Leaf):
    """
    C{/}: the list of admin endpoints.
    """

    def __init__(self, service: Any, paths: list[str]) -> None:
        super().__init__(service)
        self.paths = paths

    def render_GET(self, request: Request) -> bytes:
        return _text(request, "meshproxy admin endpoints:\n" + "".join(f"  {p}\n" for p in self.paths))


def buildAdminSite(service: Any) -> Site:
    """
    The admin C{Site} for C{service} (a L{meshproxy.service.MeshProxyService}).
    """
    routes: dict[str, Resource] = {
        "/ready": ReadyResource(service),
        "/clusters": ClustersResource(service),
        "/healthcheck/fail": HealthcheckResource(service, True),
        "/healthcheck/ok": HealthcheckResource(service, False),
        "/stats/prometheus": PrometheusResource(service),
        "/api/v1/config_dump": ConfigDumpResource(service),
        "/api/v1/reload": ReloadResource(service),
        "/api/v1/stats": StatsResource(service),
        "/api/v1/states": StatesResource(service),
        "/api/v1/explain": ExplainResource(service),
    }
    root = Resource()
    root.putChild(b"", IndexResource(service, sorted(routes)))
    for path, leaf in routes.items():
        parent = root
        segments = path.strip("/").split("/")
        for segment in segments[:-1]:
            child = parent.children.get(segment.encode())
            if child is None:
                child = Resource()
                parent.putChild(segment.encode(), child)
            parent = child
        parent.putChild(segments[-1].encode(), leaf)
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
