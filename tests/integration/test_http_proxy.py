"""
The HTTP/1 proxy end to end: a real meshproxy process between real clients (curl, http.client,
raw sockets) and threaded HTTP backends on 127.0.0.1.  Routing, keep-alive, pipelining, header
rewriting, and the answers meshproxy makes itself when an upstream fails.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Any

from tests.integration.harness import Backend, MeshProxy, echoHandler, freePort, httpProxyDocument, httpRoute, waitFor
from tests.integration.httpbackends import (
    HTTPProxyTestCase,
    answerFirstOnly,
    chunked,
    closeDelimited,
    closeMidResponse,
    closeWithoutResponse,
    echo,
    fixed,
    gatedBodyReader,
    hang,
    raw,
    refusedAddress,
)
from tests.integration.httpwire import Response, closedByPeer, readResponse

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


def tagged(name: str, **entry: Any) -> dict[str, Any]:
    """
    A route entry to cluster C{backend} that marks requests it forwards with C{X-Route: name}.
    """
    route = httpRoute(**entry)
    route["route"]["request_headers_to_add"] = [{"header": {"key": "X-Route", "value": name}}]
    return route


class ProxyTestCase(HTTPProxyTestCase):
    """
    Client helpers shared by the tests of this module.
    """

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        self.addCleanup(conn.close)
        return conn

    def request(
        self, conn: http.client.HTTPConnection, method: str = "GET", path: str = "/",
        headers: dict[str, str] | None = None, body: bytes | None = None,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()

    def echoed(self, conn: http.client.HTTPConnection, path: str = "/", **kw: Any) -> dict[str, Any]:
        """
        One request through the proxy to an echo backend; the backend's view of it.
        """
        response, body = self.request(conn, path=path, **kw)
        self.assertEqual(response.status, 200, body)
        return json.loads(body)

    def curl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        if shutil.which("curl") is None:
            self.fail("curl is not installed (make test installs it)")
        return subprocess.run(
            ["curl", "--silent", "--show-error", "--max-time", str(int(timeout) - 5), *args],
            capture_output=True, text=True, timeout=timeout,
        )


def headerValues(seen: dict[str, Any], name: str) -> list[str]:
    """
    Every value of header C{name} in an echoed request, in order.
    """
    return [v for n, v in seen["headers"] if n.lower() == name.lower()]


class RoutingTests(ProxyTestCase):
    """
    Virtual hosts, match kinds, rewrites and the actions that need no upstream.
    """

    def test_virtualHostsByHost(self) -> None:
        """
        Requests go to the virtual host their Host names (exact, then suffix wildcard, then
        C{*}), case-insensitively and ignoring the port.
        """
        a, b, c = self.backend(name="a"), self.backend(name="b"), self.backend(name="c")
        self.proxy({"a": [a.address], "b": [b.address], "c": [c.address]}, virtualHosts=[
            {"name": "a", "domains": ["a.example"], "routers": [httpRoute(cluster="a")]},
            {"name": "b", "domains": ["*.b.example"], "routers": [httpRoute(cluster="b")]},
            {"name": "rest", "domains": ["*"], "routers": [httpRoute(cluster="c")]},
        ])
        conn = self.connection()
        cases = [("a.example", "a"), ("A.Example:8080", "a"), ("x.b.example", "b"), ("deep.x.b.example", "b"),
                 ("b.example", "c"), ("other.test", "c")]
        for host, expected in cases:
            seen = self.echoed(conn, headers={"Host": host})
            self.assertEqual((host, seen["backend"]), (host, expected))

    def test_matchKinds(self) -> None:
        """
        Entries are tried in order: header (exact and regex), exact path (query ignored), regex
        on the path, prefix; a request none matches gets 404 C{no_route} and the connection stays
        open.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]}, routes=[
            tagged("canary", match={"prefix": "/", "headers": [{"name": "X-Canary", "value": "yes"}]}),
            tagged("tenant", match={"prefix": "/t", "headers": [{"name": "X-Tenant", "value": "t-[a-z]+",
                                                                  "regex": True}]}),
            tagged("exact", match={"path": "/exact"}),
            tagged("regex", match={"regex": "/items/[0-9]+"}),
            tagged("api", prefix="/api/"),
        ])
        conn = self.connection()
        cases: list[tuple[str, dict[str, str], str | None]] = [
            ("/exact", {}, "exact"),
            ("/exact?x=1", {}, "exact"),
            ("/exact/more", {}, None),
            ("/items/42", {}, "regex"),
            ("/items/42?q", {}, "regex"),
            ("/items/4x2", {}, None),
            ("/api/v1", {}, "api"),
            ("/apix", {}, None),
            ("/anything", {"X-Canary": "yes"}, "canary"),
            ("/api/v1", {"X-Canary": "no"}, "api"),
            ("/t", {"X-Tenant": "t-abc"}, "tenant"),
            ("/t", {"X-Tenant": "t-1"}, None),
        ]
        conn.connect()
        sock = conn.sock
        for path, headers, expected in cases:
            response, body = self.request(conn, path=path, headers=headers)
            if expected is None:
                self.assertEqual((path, response.status), (path, 404))
                self.assertEqual(response.getheader("x-meshproxy-error"), "no_route")
            else:
                self.assertEqual((path, response.status), (path, 200))
                self.assertEqual((path, headerValues(json.loads(body), "X-Route")), (path, [expected]))
            self.assertIs(conn.sock, sock, f"the proxy closed the connection after {path}")
        self.assertEqual(self.stat("http_local_reply_total", listener="web", reason="no_route"), 4)
        self.assertEqual(len(backend.requests), 8)

    def test_noRouteForHost(self) -> None:
        """
        A Host no virtual host lists gets 404 C{no_route} and reaches no backend.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]},
                   virtualHosts=[{"name": "only", "domains": ["only.example"], "routers": [httpRoute()]}])
        conn = self.connection()
        response, body = self.request(conn, headers={"Host": "elsewhere.example"})
        self.assertEqual(response.status, 404)
        self.assertEqual(response.getheader("x-meshproxy-error"), "no_route")
        self.assertIn(b"no_route", body)
        self.assertEqual(self.echoed(conn, headers={"Host": "only.example"})["target"], "/")
        self.assertEqual(backend.connections, 1)
        self.assertEqual(len(backend.requests), 1)

    def test_prefixAndRegexRewrite(self) -> None:
        """
        C{prefix_rewrite} replaces the matched prefix and C{regex_rewrite} substitutes in the
        path; both keep the query string.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]}, routes=[
            httpRoute(prefix="/old/", prefix_rewrite="/new/"),
            httpRoute(prefix="/v1/", regex_rewrite={"pattern": {"regex": "^/v1/(\\w+)$"}, "substitution": "/v2/\\1/x"}),
            httpRoute(prefix="/"),
        ])
        conn = self.connection()
        self.assertEqual(self.echoed(conn, "/old/a/b?q=1")["target"], "/new/a/b?q=1")
        self.assertEqual(self.echoed(conn, "/v1/users?id=7")["target"], "/v2/users/x?id=7")
        self.assertEqual(self.echoed(conn, "/kept?x")["target"], "/kept?x")

    def test_hostRewrite(self) -> None:
        """
        C{host_rewrite} changes the Host sent upstream; X-Forwarded-Host keeps the client's.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]}, routes=[httpRoute(host_rewrite="internal.example")])
        seen = self.echoed(self.connection(), headers={"Host": "public.example:8080"})
        self.assertEqual(headerValues(seen, "Host"), ["internal.example"])
        self.assertEqual(headerValues(seen, "X-Forwarded-Host"), ["public.example:8080"])

    def test_absoluteFormTarget(self) -> None:
        """
        An absolute-form target routes by its authority (not the Host header) and is sent
        upstream in origin form with that authority as Host.
        """
        a, other = self.backend(name="a"), self.backend(name="other")
        self.proxy({"a": [a.address], "other": [other.address]}, virtualHosts=[
            {"name": "a", "domains": ["a.example"], "routers": [httpRoute(cluster="a")]},
            {"name": "rest", "domains": ["*"], "routers": [httpRoute(cluster="other")]},
        ])
        sock, wire = self.rawConnection()
        sock.sendall(b"GET http://a.example/x?y=1 HTTP/1.1\r\nHost: b.example\r\n\r\n")
        seen = readResponse(wire).json()
        self.assertEqual((seen["backend"], seen["target"]), ("a", "/x?y=1"))
        self.assertEqual([v for n, v in seen["headers"] if n.lower() == "host"], ["a.example"])

    def test_redirect(self) -> None:
        """
        A C{redirect} entry answers itself with the configured status and Location (query kept),
        without a connection to any backend.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]}, routes=[
            httpRoute(prefix="/old", cluster=None,
                      redirect={"response_code": 302, "host_redirect": "new.example", "path_redirect": "/moved"}),
            httpRoute(prefix="/secure", cluster=None, redirect={"scheme_redirect": "https"}),
            httpRoute(),
        ])
        conn = self.connection()
        response, body = self.request(conn, path="/old?a=1", headers={"Host": "site.example"})
        self.assertEqual(response.status, 302)
        self.assertEqual(response.getheader("Location"), "http://new.example/moved?a=1")
        self.assertIsNone(response.getheader("x-meshproxy-error"))
        response, body = self.request(conn, path="/secure/x", headers={"Host": "site.example:80"})
        self.assertEqual(response.status, 301)
        self.assertEqual(response.getheader("Location"), "https://site.example/secure/x")
        self.assertEqual(backend.connections, 0)
        self.assertEqual(self.echoed(conn, "/after")["target"], "/after")

    def test_directResponse(self) -> None:
        """
        A C{direct_response} entry answers with its status and body, and no backend is asked.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]}, routes=[
            httpRoute(prefix="/maintenance", cluster=None, direct_response={"status": 503, "body": "back soon\n"}),
            httpRoute(prefix="/health", cluster=None, direct_response={"status": 200}),
        ])
        conn = self.connection()
        response, body = self.request(conn, path="/maintenance")
        self.assertEqual((response.status, body), (503, b"back soon\n"))
        self.assertIsNone(response.getheader("x-meshproxy-error"))
        response, body = self.request(conn, path="/health")
        self.assertEqual((response.status, body), (200, b""))
        self.assertEqual(backend.connections, 0)

    def test_weightedClusters(self) -> None:
        """
        A 50/50 C{weighted_clusters} split sends requests to both clusters.
        """
        blue, green = self.backend(name="blue"), self.backend(name="green")
        self.proxy({"blue": [blue.address], "green": [green.address]}, routes=[{
            "match": {"prefix": "/"},
            "route": {"weighted_clusters": [{"cluster": {"name": "blue", "weight": 50}},
                                            {"cluster": {"name": "green", "weight": 50}}], "timeout": "5s"},
        }])
        conn = self.connection()
        seen = [self.echoed(conn)["backend"] for _ in range(40)]
        # The chance that 40 fair draws all land on one side is 2**-39.
        self.assertGreater(seen.count("blue"), 0)
        self.assertGreater(seen.count("green"), 0)
        self.assertEqual(len(blue.requests) + len(green.requests), 40)

    def test_clusterHeader(self) -> None:
        """
        C{cluster_header} picks the cluster a request header names; an unknown name is 503
        C{cluster_not_found}, a missing header 404.
        """
        blue, green = self.backend(name="blue"), self.backend(name="green")
        self.proxy({"blue": [blue.address], "green": [green.address]}, routes=[
            {"match": {"prefix": "/"}, "route": {"cluster_header": "X-Cluster", "timeout": "5s"}},
        ])
        conn = self.connection()
        self.assertEqual(self.echoed(conn, headers={"X-Cluster": "green"})["backend"], "green")
        self.assertEqual(self.echoed(conn, headers={"X-Cluster": "blue"})["backend"], "blue")
        response, _ = self.request(conn, headers={"X-Cluster": "purple"})
        self.assertEqual((response.status, response.getheader("x-meshproxy-error")), (503, "cluster_not_found"))
        response, _ = self.request(conn)
        self.assertEqual(response.status, 404)
        self.assertIsNotNone(response.getheader("x-meshproxy-error"))

    def test_routeHeaderEdits(self) -> None:
        """
        Route-level request and response header additions and removals are applied, with
        C{%request_id%} expanded to the id sent upstream.
        """
        backend = self.backend(fixed(200, b"ok", [("Server", "backend/1.0"), ("X-Internal", "secret")]))
        self.proxy({"backend": [backend.address]}, routes=[httpRoute(
            request_headers_to_add=[{"header": {"key": "X-Added", "value": "yes"}}],
            request_headers_to_remove=["X-Drop"],
            response_headers_to_add=[{"header": {"key": "X-Trace", "value": "%request_id%"}}],
            response_headers_to_remove=["X-Internal"],
        )])
        conn = self.connection()
        response, body = self.request(conn, headers={"X-Drop": "1", "X-Keep": "2", "X-Request-Id": "trace-77"})
        self.assertEqual((response.status, body), (200, b"ok"))
        self.assertEqual(response.getheader("X-Trace"), "trace-77")
        self.assertIsNone(response.getheader("X-Internal"))
        self.assertEqual(response.getheader("Server"), "backend/1.0")
        [request] = backend.requests
        self.assertEqual(request.headerValues("X-Added"), ["yes"])
        self.assertEqual(request.headerValues("X-Drop"), [])
        self.assertEqual(request.headerValues("X-Keep"), ["2"])


class KeepAliveTests(ProxyTestCase):
    """
    Connection reuse on both sides, pipelining, HTTP/1.0 clients and response framing.
    """

    def test_curlReusesOneConnection(self) -> None:
        """
        curl fetching three URLs connects once; the proxy reuses one upstream connection too.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        result = self.curl("-w", "%{num_connects} %{http_code}\n", *[
            arg for path in ("/one", "/two", "/three") for arg in ("-o", "/dev/null", self.url(path))
        ])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "1 200\n0 200\n0 200\n")
        self.assertEqual([r.target for r in backend.requests], ["/one", "/two", "/three"])
        self.assertEqual(backend.connections, 1)

    def test_httpClientKeepAlive(self) -> None:
        """
        Ten requests on one http.client connection use one client connection and one upstream
        connection, in order.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        conn = self.connection()
        conn.connect()
        sock = conn.sock
        seen = [self.echoed(conn, f"/{i}") for i in range(10)]
        self.assertIs(conn.sock, sock)
        self.assertEqual([s["target"] for s in seen], [f"/{i}" for i in range(10)])
        self.assertEqual({s["connection"] for s in seen}, {0})
        self.assertEqual([s["sequence"] for s in seen], list(range(10)))
        self.assertEqual(self.stat("upstream_cx_pool_reuse_total", cluster="backend"), 9)

    def test_pipelinedRequestsAnsweredInOrder(self) -> None:
        """
        Five requests written in one C{sendall} (GET, POST with a body, chunked POST, HEAD, GET
        with close) are answered in order, each response complete, then the connection closes.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
            b"POST /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            b"HEAD /4 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET /5 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        responses = [readResponse(wire, method) for method in ("GET", "POST", "POST", "HEAD", "GET")]
        self.assertEqual([r.status for r in responses], [200] * 5)
        bodies = [r.json() for r in responses if r.body]
        self.assertEqual([b["target"] for b in bodies], ["/1", "/2", "/3", "/5"])
        self.assertEqual([b["bodyLength"] for b in bodies], [0, 5, 5, 0])
        self.assertEqual(responses[3].body, b"")
        self.assertEqual(responses[4].header("Connection"), "close")
        self.assertTrue(closedByPeer(sock, wire))
        self.assertEqual([r.target for r in backend.requests], ["/1", "/2", "/3", "/4", "/5"])

    def test_http10ContentLength(self) -> None:
        """
        An HTTP/1.0 client without keep-alive gets a Content-Length response and the connection
        closed after it.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        response = readResponse(wire)
        self.assertEqual(response.status, 200)
        self.assertIsNotNone(response.header("Content-Length"))
        self.assertNotIn("chunked", response.tokens("Transfer-Encoding"))
        self.assertEqual(response.json()["target"], "/old")
        self.assertTrue(closedByPeer(sock, wire))

    def test_http10CloseDelimited(self) -> None:
        """
        A close-delimited upstream body reaches an HTTP/1.0 client close-delimited (no chunking,
        which 1.0 does not know), whole, even when the client asked for keep-alive.
        """
        body = b"0123456789" * 10000
        backend = self.backend(closeDelimited(body))
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = readResponse(wire)
        self.assertEqual(response.status, 200)
        self.assertNotIn("chunked", response.tokens("Transfer-Encoding"))
        self.assertIn("close", response.tokens("Connection"))
        self.assertEqual(response.body[:100], body[:100])
        self.assertEqual(response.bodyLength, len(body))

    def test_clientHalfClosesAfterRequests(self) -> None:
        """
        A client that sends two pipelined requests and then FIN (as netcat does) gets both
        answers, then the close.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        self.assertEqual([readResponse(wire).status for _ in range(2)], [200, 200])
        self.assertEqual(sock.recv(10), b"")
        self.assertEqual([r.target for r in backend.requests], ["/a", "/b"])

    def test_http10KeepAlive(self) -> None:
        """
        An HTTP/1.0 client asking for keep-alive gets C{Connection: keep-alive} and can send a
        second request on the connection.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        for path in ("/a", "/b"):
            sock.sendall(b"GET %s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % path.encode())
            response = readResponse(wire)
            self.assertEqual(response.status, 200)
            self.assertEqual(response.tokens("Connection"), ["keep-alive"])
            self.assertEqual(response.json()["target"], path)

    def test_closeDelimitedUpstreamChunkedToClient(self) -> None:
        """
        A close-delimited upstream body reaches an HTTP/1.1 client chunked, so the client's
        connection stays open for the next request.
        """
        body = b"abc" * 50000
        backend = self.backend(closeDelimited(body))
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            response = readResponse(wire)
            self.assertEqual(response.tokens("Transfer-Encoding"), ["chunked"])
            self.assertEqual(response.bodyLength, len(body))
        self.assertEqual(backend.connections, 2)

    def test_chunkedResponseWithTrailers(self) -> None:
        """
        A chunked upstream response reaches the client chunked, body and trailers intact.
        """
        backend = self.backend(chunked([b"hello ", b"chunked ", b"world"], trailers=[("X-Checksum", "abc")]))
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        response = readResponse(wire)
        self.assertEqual(response.tokens("Transfer-Encoding"), ["chunked"])
        self.assertEqual(response.body, b"hello chunked world")
        self.assertEqual(response.trailers, [("X-Checksum", "abc")])

    def test_headRequests(self) -> None:
        """
        HEAD is answered with the GET's Content-Length and no body: curl's C{-I} reuses its
        connection, and a GET right after a HEAD on a raw socket parses cleanly.
        """
        backend = self.backend(fixed(200, b"x" * 1234))
        self.proxy({"backend": [backend.address]})
        result = self.curl("-I", "-w", "%{num_connects} %{http_code}\n", self.url("/a"), self.url("/b"))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(re.findall(r"(?im)^content-length: *(\d+)", result.stdout), ["1234", "1234"])
        self.assertEqual(re.findall(r"(?m)^(\d) (\d+)$", result.stdout), [("1", "200"), ("0", "200")])
        sock, wire = self.rawConnection()
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
        head = readResponse(wire, "HEAD")
        self.assertEqual((head.status, head.header("Content-Length"), head.body), (200, "1234", b""))
        get = readResponse(wire)
        self.assertEqual((get.status, get.body), (200, b"x" * 1234))

    def test_noBodyStatuses(self) -> None:
        """
        204 and 304 answers carry no body and leave the connection usable.
        """
        backend = self.backend()
        statuses = iter([204, 304, 200])

        def respond(connection: Any, request: Any) -> bool:
            connection.readBody(request)
            status = next(statuses)
            connection.respond(status, b"" if status != 200 else b"done", [("ETag", '"v1"')])
            return True

        backend.responder = respond
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 3)
        responses = [readResponse(wire) for _ in range(3)]
        self.assertEqual([(r.status, r.body) for r in responses], [(204, b""), (304, b""), (200, b"done")])
        self.assertEqual(responses[1].header("ETag"), '"v1"')

    def test_maxRequestPerUpstreamConnection(self) -> None:
        """
        A cluster's C{max_request_per_conn} retires upstream connections after that many
        requests.
        """
        backend = self.backend()
        self.proxy([{"name": "backend", "type": "SIMPLE", "max_request_per_conn": 2,
                     "hosts": [{"address": backend.address}]}])
        conn = self.connection()
        seen = [self.echoed(conn) for _ in range(5)]
        self.assertEqual([s["connection"] for s in seen], [0, 0, 1, 1, 2])
        self.assertEqual(backend.connections, 3)

    def test_staleConnectionRetried(self) -> None:
        """
        A GET sent on a pooled connection that the backend closes instead of answering is
        retried once on a fresh connection: the client sees only 200s.
        """
        backend = self.backend(answerFirstOnly)
        self.proxy({"backend": [backend.address]})
        conn = self.connection()
        seen = [self.echoed(conn, f"/{i}") for i in range(3)]
        self.assertEqual([s["target"] for s in seen], ["/0", "/1", "/2"])
        self.assertEqual(backend.connections, 3)
        self.assertEqual(self.stat("http_upstream_rq_retry_total", listener="web"), 2)

    def test_postWithBodyNotRetried(self) -> None:
        """
        A POST with a body whose reused connection is closed without an answer is not retried:
        the client gets 502 C{upstream_reset} and the backend saw it once.
        """
        backend = self.backend(answerFirstOnly)
        self.proxy({"backend": [backend.address]})
        conn = self.connection()
        self.echoed(conn)
        response, _ = self.request(conn, "POST", "/order", body=b"pay=1")
        self.assertEqual(response.status, 502)
        self.assertEqual(response.getheader("x-meshproxy-error"), "upstream_reset")
        self.assertEqual([r.target for r in backend.requests], ["/", "/order"])
        self.assertEqual(backend.connections, 1)


class HeaderTests(ProxyTestCase):
    """
    What the proxy adds, keeps and removes on the way through.
    """

    def test_forwardingHeadersAppended(self) -> None:
        """
        X-Forwarded-For and Via are appended to the client's values, X-Forwarded-Proto and
        X-Forwarded-Host set, and a valid X-Request-Id kept.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        seen = self.echoed(self.connection(), headers={
            "Host": "app.example:8080", "X-Forwarded-For": "203.0.113.7", "Via": "1.0 corp-proxy",
            "X-Request-Id": "req-abc.123",
        })
        self.assertEqual(headerValues(seen, "X-Forwarded-For"), ["203.0.113.7, 127.0.0.1"])
        self.assertEqual(headerValues(seen, "X-Forwarded-Proto"), ["http"])
        self.assertEqual(headerValues(seen, "X-Forwarded-Host"), ["app.example:8080"])
        self.assertEqual(headerValues(seen, "Via"), ["1.0 corp-proxy, 1.1 meshproxy"])
        self.assertEqual(headerValues(seen, "X-Request-Id"), ["req-abc.123"])
        self.assertEqual(headerValues(seen, "Host"), ["app.example:8080"])

    def test_forwardingHeadersSetWhenAbsent(self) -> None:
        """
        Without client values, X-Forwarded-For is the client address, Via the proxy's, and a
        fresh UUID request id is generated per request.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        conn = self.connection()
        first, second = self.echoed(conn), self.echoed(conn)
        self.assertEqual(headerValues(first, "X-Forwarded-For"), ["127.0.0.1"])
        self.assertEqual(headerValues(first, "Via"), ["1.1 meshproxy"])
        ids = headerValues(first, "X-Request-Id") + headerValues(second, "X-Request-Id")
        self.assertEqual(len(ids), 2)
        for value in ids:
            self.assertRegex(value, UUID)
        self.assertNotEqual(ids[0], ids[1])

    def test_spoofedValuesReplaced(self) -> None:
        """
        An invalid X-Request-Id is replaced with a generated one, and the client's
        X-Forwarded-Proto and X-Forwarded-Host are replaced, not forwarded beside the proxy's.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        seen = self.echoed(self.connection(), headers={
            "Host": "real.example", "X-Request-Id": "bad id;" + "x" * 200, "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example",
        })
        [requestId] = headerValues(seen, "X-Request-Id")
        self.assertRegex(requestId, UUID)
        self.assertEqual(headerValues(seen, "X-Forwarded-Proto"), ["http"])
        self.assertEqual(headerValues(seen, "X-Forwarded-Host"), ["real.example"])

    def test_hopByHopRequestHeadersRemoved(self) -> None:
        """
        Connection, the headers it names, Keep-Alive, TE, Trailer, Proxy-Connection and an
        Upgrade on a non-upgrade request are not forwarded; end-to-end headers are, repeated
        ones in order.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n"
            b"Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-Sum\r\nProxy-Connection: keep-alive\r\n"
            b"Upgrade: h2c\r\nX-Multi: 1\r\nX-Keep: yes\r\nX-Multi: 2\r\n\r\n"
        )
        response = readResponse(wire)
        self.assertEqual(response.status, 200)
        names = [n.lower() for n, _ in response.json()["headers"]]
        for hop in ("connection", "x-hop", "keep-alive", "te", "trailer", "proxy-connection", "upgrade"):
            self.assertNotIn(hop, names)
        seen = response.json()
        self.assertEqual(headerValues(seen, "X-Multi"), ["1", "2"])
        self.assertEqual(headerValues(seen, "X-Keep"), ["yes"])

    def test_hopByHopResponseHeadersRemoved(self) -> None:
        """
        Hop-by-hop response headers (and those the upstream's Connection names) do not reach the
        client; repeated end-to-end headers such as Set-Cookie all do, in order.
        """
        backend = self.backend(fixed(200, b"ok", [
            ("Connection", "X-Secret"), ("X-Secret", "s"), ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"), ("Upgrade", "h2c"), ("Set-Cookie", "a=1"), ("X-Visible", "v"),
            ("Set-Cookie", "b=2"),
        ]))
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        response = readResponse(wire)
        self.assertEqual((response.status, response.body), (200, b"ok"))
        names = [n.lower() for n, _ in response.headers]
        for hop in ("connection", "x-secret", "keep-alive", "proxy-connection", "upgrade"):
            self.assertNotIn(hop, names)
        self.assertEqual(response.headerValues("Set-Cookie"), ["a=1", "b=2"])
        self.assertEqual(response.headerValues("X-Visible"), ["v"])


class UpstreamFailureTests(ProxyTestCase):
    """
    Upstreams that refuse, hang, break or talk nonsense, and the answers meshproxy makes.
    """

    def assertLocalReply(self, response: http.client.HTTPResponse | Response, status: int, reason: str) -> None:
        self.assertEqual(response.status, status)
        self.assertEqual(
            response.getheader("x-meshproxy-error") if isinstance(response, http.client.HTTPResponse)
            else response.header("x-meshproxy-error"),
            reason,
        )

    def test_refused502(self) -> None:
        """
        An upstream that refuses connections gets the client a 502 C{upstream_connect_failed},
        and the failure is counted.
        """
        dead = refusedAddress()
        self.proxy({"backend": [dead]})
        conn = self.connection()
        for _ in range(2):
            response, body = self.request(conn)
            self.assertLocalReply(response, 502, "upstream_connect_failed")
            self.assertIn(b"upstream_connect_failed", body)
        self.assertEqual(self.stat("http_local_reply_total", listener="web", reason="upstream_connect_failed"), 2)

    def test_deadHostSkipped(self) -> None:
        """
        A refused connection is retried on the cluster's other host: the client sees 200s.
        """
        backend = self.backend()
        self.proxy({"backend": [refusedAddress(), backend.address]})
        conn = self.connection()
        for i in range(4):
            self.assertEqual(self.echoed(conn, f"/{i}")["target"], f"/{i}")

    def test_connectTimeout502(self) -> None:
        """
        An upstream whose accept queue is full (its SYNs go unanswered) is given up after the
        cluster's C{connect_timeout}: 502 C{upstream_connect_timeout}.
        """
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        # Fill the accept queue (never accepted), so further SYNs are dropped.
        fillers = []
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            fillers.append(s)
            self.addCleanup(s.close)
        time.sleep(0.2)
        address = "127.0.0.1:%d" % listener.getsockname()[1]
        self.proxy([{"name": "backend", "type": "SIMPLE", "connect_timeout": "1s", "hosts": [{"address": address}]}])
        conn = self.connection()
        started = time.monotonic()
        response, _ = self.request(conn)
        elapsed = time.monotonic() - started
        self.assertGreater(elapsed, 0.8)
        self.assertLess(elapsed, 5)
        self.assertEqual(response.status, 502)
        self.assertEqual(response.getheader("x-meshproxy-error"), "upstream_connect_timeout")

    def test_hang504(self) -> None:
        """
        An upstream that never answers gets the client a 504 C{upstream_timeout} after the
        route's C{timeout}; the upstream connection is closed and the client's stays usable.
        """
        backend = self.backend(hang(20))
        self.proxy({"backend": [backend.address]}, routes=[httpRoute(timeout="1s")])
        conn = self.connection()
        conn.connect()
        sock = conn.sock
        started = time.monotonic()
        response, body = self.request(conn)
        elapsed = time.monotonic() - started
        self.assertLocalReply(response, 504, "upstream_timeout")
        self.assertGreater(elapsed, 0.9)
        self.assertLess(elapsed, 4)
        response, body = self.request(conn)
        self.assertLocalReply(response, 504, "upstream_timeout")
        self.assertIs(conn.sock, sock)
        self.assertEqual(backend.connections, 2)

    def test_closeMidResponse(self) -> None:
        """
        An upstream that closes in the middle of a Content-Length body makes the proxy cut the
        client's connection: the client reads a short body, never a complete one.
        """
        backend = self.backend(closeMidResponse(1 << 20, 300_000))
        self.proxy({"backend": [backend.address]})
        conn = self.connection()
        conn.request("GET", "/")
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        with self.assertRaises((http.client.IncompleteRead, ConnectionResetError)):
            response.read()
        sock, wire = self.rawConnection()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        received = b""
        for _ in range(1000):
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: 1048576", head)
        self.assertLess(len(body), 1 << 20)

    def test_closeWithoutResponse502(self) -> None:
        """
        An upstream that reads the request and closes without answering: 502 C{upstream_reset}.
        """
        backend = self.backend(closeWithoutResponse)
        self.proxy({"backend": [backend.address]})
        response, _ = self.request(self.connection())
        self.assertLocalReply(response, 502, "upstream_reset")

    def test_garbage502(self) -> None:
        """
        An upstream that answers with something that is not HTTP: 502 C{upstream_protocol_error}.
        """
        backend = self.backend(raw(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
        self.proxy({"backend": [backend.address]})
        response, _ = self.request(self.connection())
        self.assertLocalReply(response, 502, "upstream_protocol_error")

    def test_ambiguousResponseFraming502(self) -> None:
        """
        An upstream response with both Content-Length and Transfer-Encoding is refused: 502
        C{upstream_protocol_error}, and none of it reaches the client.
        """
        backend = self.backend(raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nX-Leak: yes\r\n\r\n"
            b"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
        ))
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        response = readResponse(wire)
        self.assertLocalReply(response, 502, "upstream_protocol_error")
        self.assertIsNone(response.header("X-Leak"))

    def test_overflow503(self) -> None:
        """
        With one connection allowed and one request allowed to wait, a third concurrent request
        is refused at once: 503 C{upstream_overflow}.
        """
        backend = self.backend(hang(20))
        self.proxy([{"name": "backend", "type": "SIMPLE", "hosts": [{"address": backend.address}],
                     "circuit_breakers": [{"max_connections": 1, "max_pending_requests": 1}]}],
                   routes=[httpRoute(timeout="10s")])
        first, _ = self.rawConnection()
        first.sendall(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertTrue(waitFor(lambda: len(backend.requests) == 1, timeout=5))
        second, _ = self.rawConnection()
        second.sendall(b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n")
        time.sleep(0.3)
        third, wire = self.rawConnection()
        started = time.monotonic()
        third.sendall(b"GET /third HTTP/1.1\r\nHost: h\r\n\r\n")
        response = readResponse(wire)
        self.assertLocalReply(response, 503, "upstream_overflow")
        self.assertLess(time.monotonic() - started, 2)
        self.assertEqual([r.target for r in backend.requests], ["/first"])

    def test_connectRefused405(self) -> None:
        """
        CONNECT is not proxied: 405 C{connect_not_supported} and the connection closed.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        response = readResponse(wire)
        self.assertLocalReply(response, 405, "connect_not_supported")
        self.assertTrue(closedByPeer(sock, wire))
        self.assertEqual(backend.connections, 0)

    def test_requestBodyTooLarge413(self) -> None:
        """
        With C{max_request_body_size}, a Content-Length over it is refused before anything goes
        upstream, and a chunked body that grows over it is cut off: 413 and close both times.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]}, proxyConfig={"extend_config": {"Http1": {"max_request_body_size": 1000}}})
        sock, wire = self.rawConnection()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n" + b"a" * 5000)
        response = readResponse(wire)
        self.assertLocalReply(response, 413, "request_body_too_large")
        self.assertTrue(closedByPeer(sock, wire))
        self.assertEqual(backend.received, 0)
        sock, wire = self.rawConnection()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"200\r\n" + b"b" * 512 + b"\r\n" + b"200\r\n" + b"c" * 512 + b"\r\n" + b"0\r\n\r\n")
        response = readResponse(wire)
        self.assertLocalReply(response, 413, "request_body_too_large")
        self.assertTrue(closedByPeer(sock, wire))
        self.assertEqual(len([r for r in backend.requests if r.complete]), 0)

    def test_unknownRouteWithBodyClosesCleanly(self) -> None:
        """
        A POST whose body the proxy will not read (no route) is answered 404 with
        C{Connection: close}, then the connection closes (no request smuggled from the body).
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]}, routes=[httpRoute(prefix="/api/")])
        sock, wire = self.rawConnection()
        sock.sendall(b"POST /nope HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
        response = readResponse(wire)
        self.assertLocalReply(response, 404, "no_route")
        self.assertEqual(response.informational, [])
        self.assertIn("close", response.tokens("Connection"))
        self.assertTrue(closedByPeer(sock, wire))
        self.assertEqual(backend.connections, 0)


class RequestDeadlineTests(ProxyTestCase):
    """
    The request-head deadline (10 s by default, not configurable): tested once, end to end.
    """

    def test_slowHead408(self) -> None:
        """
        A client that trickles a request head one byte a second gets 408
        C{request_header_timeout} about 10 s after it connected (the bytes do not extend the
        deadline), and the connection is closed; nothing reached the backend.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection(timeout=15)
        started = time.monotonic()
        partial = b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Slow: "
        sock.sendall(partial)
        sock.settimeout(1)
        answer = b""
        for _ in range(15):
            try:
                answer = sock.recv(65536)
                break
            except socket.timeout:
                sock.sendall(b"a")
        elapsed = time.monotonic() - started
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer)
        self.assertIn(b"x-meshproxy-error: request_header_timeout", answer)
        self.assertGreater(elapsed, 9)
        self.assertLess(elapsed, 12.5)
        self.assertTrue(closedByPeer(sock, timeout=3))
        self.assertEqual(backend.connections, 0)


class MultiplexTests(ProxyTestCase):
    """
    C{downstream_protocol: Auto} with C{fallback_for_unknown_protocol}: one port for both.
    """

    def test_autoFallsBackToTCPProxy(self) -> None:
        """
        On one listener, HTTP/1 requests go to the L7 proxy and anything else to the
        C{tcp_proxy} after it in the chain.
        """
        web = self.backend()
        echoBackend = Backend(echoHandler)
        self.addCleanup(echoBackend.stop)
        workdir = self.mktemp()
        os.makedirs(workdir)
        self.port = freePort()
        doc = httpProxyDocument(self.port, {"backend": [web.address], "raw": [echoBackend.address]},
                                routes=[httpRoute()],
                                proxyConfig={"downstream_protocol": "Auto", "fallback_for_unknown_protocol": True})
        doc["servers"][0]["listeners"][0]["filter_chains"][0]["filters"].append(
            {"type": "tcp_proxy", "config": {"cluster": "raw"}})
        self.meshproxy = MeshProxy(doc, workdir)
        self.meshproxy.start()
        self.addCleanup(self.meshproxy.stop)
        self.assertEqual(self.echoed(self.connection(), "/via-http")["target"], "/via-http")
        sock, _ = self.rawConnection()
        sock.sendall(b"\x00\x01binary protocol")
        received = b""
        for _ in range(100):
            if len(received) >= 17:
                break
            data = sock.recv(100)
            if not data:
                break
            received += data
        self.assertEqual(received, b"\x00\x01binary protocol")
        self.assertEqual([r.target for r in web.requests], ["/via-http"])


class DrainTests(ProxyTestCase):
    """
    Stopping (SIGTERM) with client connections open.
    """

    def test_drainClosesIdleAndFinishesInFlight(self) -> None:
        """
        On SIGTERM an idle keep-alive client connection is closed at once (not held until the
        drain deadline), a request in flight gets its response with C{Connection: close}, and
        the process exits well before its 3 s C{graceful_timeout}.
        """
        gate = threading.Event()
        self.addCleanup(gate.set)
        backend = self.backend(gatedBodyReader(gate))
        proxy = self.proxy({"backend": [backend.address]}, server={"graceful_timeout": "3s"})
        idle, idleWire = self.rawConnection()
        idle.sendall(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
        gate.set()
        self.assertEqual(readResponse(idleWire).status, 200)
        gate.clear()
        busy, busyWire = self.rawConnection()
        busy.sendall(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertTrue(waitFor(lambda: len(backend.requests) == 2, timeout=5))
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        self.assertTrue(waitFor(lambda: proxy.admin("/ready")[0] == 503, timeout=1), "not draining")
        self.assertTrue(closedByPeer(idle, idleWire, timeout=1.5), "idle keep-alive connection held open")
        gate.set()
        response = readResponse(busyWire)
        self.assertEqual((response.status, response.json()["target"]), (200, "/slow"))
        self.assertIn("close", response.tokens("Connection"))
        self.assertTrue(closedByPeer(busy, busyWire, timeout=2))
        assert proxy.process is not None
        self.assertEqual(proxy.process.wait(5), 0)
        self.assertLess(time.monotonic() - started, 2.5)
