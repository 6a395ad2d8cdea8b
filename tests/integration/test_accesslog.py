"""
Access logs written by a real meshproxy process, for HTTP requests and TCP sessions.
"""

from __future__ import annotations

import http.client
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.harness import Backend, MeshProxy, connect, echoHandler, freePort, waitFor
from tests.support import configDocument, tcpListener


class AccessLogTests(SynchronousTestCase):
    """
    One record per request or session, in JSON lines or MOSN's format.
    """

    def test_httpAndTCPRecords(self) -> None:
        """
        An HTTP listener's JSON log has a record per request (a 404 included, flagged NR); a TCP
        listener's MOSN-format log has a line per session.
        """
        echo = Backend(echoHandler)
        self.addCleanup(echo.stop)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        httpLog, tcpLog = os.path.join(workdir, "http.log"), os.path.join(workdir, "tcp.log")
        httpPort, tcpPort = freePort(), freePort()
        doc = configDocument(
            listeners=[
                {"name": "web", "address": f"127.0.0.1:{httpPort}", "access_logs": [{"log_path": httpLog}],
                 "filter_chains": [{"filters": [{"type": "proxy", "config": {
                     "downstream_protocol": "Http1", "router_config_name": "r"}}]}]},
                tcpListener(name="raw", address=f"127.0.0.1:{tcpPort}", access_logs=[
                    {"log_path": tcpLog, "log_format": "%listener_name% %bytes_received% %bytes_sent% %upstream_host%"}]),
            ],
            clusters=[{"name": "backend", "type": "SIMPLE", "hosts": [{"address": echo.address}]}],
        )
        doc["servers"][0]["routers"] = [{"router_config_name": "r", "virtual_hosts": [{  # type: ignore[index]
            "name": "v", "domains": ["*"], "routers": [
                {"match": {"path": "/hello"}, "direct_response": {"status": 200, "body": "hi"}}]}]}]
        proxy = MeshProxy(doc, workdir)
        proxy.start()
        self.addCleanup(proxy.stop)
        conn = http.client.HTTPConnection("127.0.0.1", httpPort, timeout=5)
        for path in ("/hello", "/missing"):
            conn.request("GET", path, headers={"X-Request-Id": "req-" + path.strip("/")})
            conn.getresponse().read()
        conn.close()
        with connect(tcpPort) as sock:
            sock.sendall(b"\x00abc")
            self.assertEqual(sock.recv(10), b"\x00abc")

        def lines(path: str) -> list[str]:
            try:
                with open(path) as f:
                    return f.read().splitlines()
            except OSError:
                return []

        self.assertTrue(waitFor(lambda: len(lines(httpLog)) == 2 and len(lines(tcpLog)) == 1, timeout=5))
        first, second = (json.loads(line) for line in lines(httpLog))
        self.assertEqual(
            (first["request_path"], first["response_code"], first["response_flag"], first["request_id"],
             first["listener_name"], first["request_method"]),
            ("/hello", 200, "-", "req-hello", "web", "GET"),
        )
        self.assertEqual((second["response_code"], second["response_flag"]), (404, "NR"))
        self.assertEqual(lines(tcpLog), [f"raw 4 4 {echo.address}"])
