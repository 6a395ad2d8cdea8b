"""
gorouter's status endpoints, as Cloud Foundry's load balancers and operators call them.

Two sites, as gorouter has two listeners: the health site (C{/health}, C{/healthz} and
C{/is-process-alive-do-not-use-for-loadbalancing}, no auth) and the routes site on loopback
(C{/routes} and C{/varz}, HTTP basic auth with gorouter's quirks: the decoded credentials must split
on C{:} into exactly two parts, so a password containing C{:} never matches, and an C{Authorization}
header is required even when user and password are empty).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Protocol

from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class StatusSource(Protocol):
    """
    What the status endpoints need to know.
    """

    def routerHealthy(self) -> bool: ...

    def routesSnapshot(self) -> dict[str, Any]: ...

    def varz(self) -> dict[str, Any]: ...


def _noCache(request: Request) -> None:
    request.setHeader(b"Cache-Control", b"private, max-age=0")
    request.setHeader(b"Expires", b"0")


class HealthResource(Resource):
    """
    C{/health}: 200 C{ok} while the router is healthy; 503 with an empty body while starting (the
    start delay) or draining.  The connection is closed after the answer, as gorouter does.
    """

    isLeaf = True

    def __init__(self, source: StatusSource) -> None:
        super().__init__()
        self.source = source

    def render_GET(self, request: Request) -> bytes:
        _noCache(request)
        request.setHeader(b"Connection", b"close")
        if self.source.routerHealthy():
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"ok\n"
        request.setResponseCode(503)
        return b""


class AliveResource(Resource):
    """
    C{/is-process-alive-do-not-use-for-loadbalancing}: always 200 C{ok}.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        _noCache(request)
        return b"ok\n"


def credentialsMatch(header: bytes | None, user: str, password: str) -> bool:
    """
    gorouter's basic-auth check of an C{Authorization} header value.
    """
    if not header or not header.startswith(b"Basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    parts = decoded.split(":")
    return len(parts) == 2 and parts[0] == user and parts[1] == password


class _Authenticated(Resource):
    isLeaf = True

    def __init__(self, source: StatusSource, user: str, password: str) -> None:
        super().__init__()
        self.source = source
        self.user = user
        self.password = password

    def render_GET(self, request: Request) -> bytes:
        if not credentialsMatch(request.getHeader(b"Authorization"), self.user, self.password):  # type: ignore[arg-type]
            request.setResponseCode(401)
            request.setHeader(b"WWW-Authenticate", b"Basic")
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"401 Unauthorized\n"
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(self.body(), sort_keys=True).encode("utf-8") + b"\n"

    def body(self) -> dict[str, Any]:
        raise NotImplementedError


class RoutesResource(_Authenticated):
    """
    C{/routes}: every registered URI with its endpoints, gorouter's JSON shape.
    """

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Connection", b"close")
        return super().render_GET(request)

    def body(self) -> dict[str, Any]:
        return self.source.routesSnapshot()


class VarzResource(_Authenticated):
    """
    C{/varz}: gorouter's counters.
    """

    def body(self) -> dict[str, Any]:
        return self.source.varz()


def _site(children: dict[bytes, Resource]) -> Site:
    root = Resource()
    for name, child in children.items():
        root.putChild(name, child)
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site


def buildHealthSite(source: StatusSource) -> Site:
    """
    The site of gorouter's status port.
    """
    health = HealthResource(source)
    return _site({b"health": health, b"healthz": health, b"is-process-alive-do-not-use-for-loadbalancing": AliveResource()})


def buildRoutesSite(source: StatusSource, user: str, password: str) -> Site:
    """
    The site of gorouter's loopback routes port.
    """
    return _site({b"routes": RoutesResource(source, user, password), b"varz": VarzResource(source, user, password)})
