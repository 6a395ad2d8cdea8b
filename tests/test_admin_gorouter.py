"""
Tests for gorouter's status endpoints (L{meshproxy.admin.gorouter}).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from meshproxy.admin.gorouter import buildHealthSite, buildRoutesSite, credentialsMatch


class Source:
    def __init__(self) -> None:
        self.healthy = False

    def routerHealthy(self) -> bool:
        return self.healthy

    def routesSnapshot(self) -> dict[str, Any]:
        return {"app.example.com": [{"address": "127.0.0.1:61001", "tls": False}]}

    def varz(self) -> dict[str, Any]:
        return {"type": "Router", "urls": 1}


def render(site: Any, path: bytes, authorization: bytes | None = None) -> tuple[int, bytes, DummyRequest]:
    request = DummyRequest(path.strip(b"/").split(b"/"))
    request.path = path
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization])
    resource = site.getResourceFor(request)
    body = resource.render(request)
    return request.responseCode or 200, body, request


def basic(text: str) -> bytes:
    return b"Basic " + base64.b64encode(text.encode())


class HealthTests(SynchronousTestCase):
    """
    C{/health} follows the router's health; the liveness path always answers.
    """

    def test_health(self) -> None:
        """
        503 with an empty body until healthy, then 200 C{ok}; never cached; the connection closes.
        """
        source = Source()
        site = buildHealthSite(source)
        code, body, request = render(site, b"/health")
        self.assertEqual((code, body), (503, b""))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"private, max-age=0"])
        source.healthy = True
        code, body, request = render(site, b"/health")
        self.assertEqual((code, body), (200, b"ok\n"))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"connection"), [b"close"])
        self.assertEqual(render(site, b"/healthz")[:2], (200, b"ok\n"))
        source.healthy = False
        self.assertEqual(render(site, b"/is-process-alive-do-not-use-for-loadbalancing")[:2], (200, b"ok\n"))


class RoutesTests(SynchronousTestCase):
    """
    C{/routes} and C{/varz} need gorouter's basic auth.
    """

    def test_auth(self) -> None:
        """
        Right credentials give the JSON; anything else 401 with C{WWW-Authenticate: Basic}.
        """
        site = buildRoutesSite(Source(), "router-status", "secret")
        code, body, _ = render(site, b"/routes", basic("router-status:secret"))
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body), {"app.example.com": [{"address": "127.0.0.1:61001", "tls": False}]})
        self.assertEqual(json.loads(render(site, b"/varz", basic("router-status:secret"))[1])["type"], "Router")
        for header in (None, basic("router-status:wrong"), b"Bearer x", b"Basic !!!"):
            code, body, request = render(site, b"/routes", header)
            self.assertEqual((code, body), (401, b"401 Unauthorized\n"))
            self.assertEqual(request.responseHeaders.getRawHeaders(b"www-authenticate"), [b"Basic"])

    def test_quirks(self) -> None:
        """
        A password with C{:} never matches; empty credentials still need the header (C{Og==}).
        """
        self.assertFalse(credentialsMatch(basic("u:a:b"), "u", "a:b"))
        self.assertTrue(credentialsMatch(b"Basic Og==", "", ""))
        self.assertFalse(credentialsMatch(None, "", ""))
