"""
Tests for L{meshproxy.service}: building the service tree from a config, on a memory reactor.
"""

from __future__ import annotations

import json
import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import ConfigError
from meshproxy.service import MeshProxyService, loadConfigFile
from tests.support import HalfCloseTransport, configDocument, makeConfig, tcpListener

REPO = os.path.join(os.path.dirname(__file__), "..")


class LoadConfigFileTests(SynchronousTestCase):
    """
    Reading config files.
    """

    def test_shippedDemoConfig(self) -> None:
        """
        etc/meshproxy.json (what make run starts) is valid.
        """
        config = loadConfigFile(os.path.join(REPO, "etc", "meshproxy.json"))
        self.assertEqual([l.name for l in config.listeners], ["demo_http", "demo_tcp"])

    def test_unreadable(self) -> None:
        """
        A missing file is a config error at '$' naming the file.
        """
        error = self.assertRaises(ConfigError, loadConfigFile, "/nonexistent/meshproxy.json")
        self.assertEqual(error.problems[0].path, "$")
        self.assertIn("cannot read config file '/nonexistent/meshproxy.json'", error.problems[0].message)

    def test_routerProblemsHavePaths(self) -> None:
        """
        What the route table refuses (an unknown %variable%) is reported with its JSON path.
        """
        doc = configDocument()
        doc["servers"][0]["routers"] = [{"router_config_name": "r", "virtual_hosts": [{  # type: ignore[index]
            "name": "v", "domains": ["*"], "routers": [{"match": {"prefix": "/"}, "route": {
                "cluster_name": "backend",
                "request_headers_to_add": [{"header": {"key": "x", "value": "%nope%"}}]}}]}]}]
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump(doc, f)
        error = self.assertRaises(ConfigError, loadConfigFile, path)
        [problem] = error.problems
        self.assertTrue(problem.path.startswith("servers[0].routers[0].virtual_hosts[0]"), problem.path)
        self.assertIn("%nope%", problem.message)


class MeshProxyServiceTests(SynchronousTestCase):
    """
    The service tree on a memory reactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        config = makeConfig(listeners=[tcpListener(name="a", address="127.0.0.1:7001"),
                                       tcpListener(name="b", address="127.0.0.1:7002")])
        self.service = MeshProxyService(config, self.reactor)

    def test_listensInOrder(self) -> None:
        """
        Admin first, then each listener, on its endpoint.
        """
        self.service.privilegedStartService()
        self.service.startService()
        self.assertEqual([(port, interface) for port, _, _, interface in self.reactor.tcpServers],
                         [(9901, "127.0.0.1"), (7001, "127.0.0.1"), (7002, "127.0.0.1")])
        self.assertEqual(self.service.readiness(), (True, []))

    def test_notReadyUntilStarted(self) -> None:
        """
        Before start, readiness names the state and every unbound listener.
        """
        ready, reasons = self.service.readiness()
        self.assertFalse(ready)
        self.assertEqual(reasons, ["meshproxy is starting", "listener 'a' is not bound", "listener 'b' is not bound"])

    def test_stopDrainsThenStopsAdmin(self) -> None:
        """
        Stopping drains listeners (an open connection holds it) and only then stops the admin
        endpoint; readiness says draining meanwhile.
        """
        self.service.privilegedStartService()
        self.service.startService()
        listener = self.service.listenerServices[0].listenerFactory
        downstream = listener.connectionOpened(HalfCloseTransport())
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(self.service.readiness()[1][0], "meshproxy is draining")
        self.assertTrue(self.service.adminService.running)
        downstream.closed()
        self.successResultOf(stopped)
        self.assertFalse(self.service.adminService.running)
        self.assertEqual(self.service.mosnState(), 8)


class HTTPSettingsTests(SynchronousTestCase):
    """
    The proxy filter's limits and deadlines reach the connection manager.
    """

    def test_extensionKeys(self) -> None:
        """
        Every extension key and MOSN's extend_config.Http1 land in HTTPSettings; defaults are the
        architecture's.
        """
        from meshproxy.service import httpSettings

        def proxyConfig(extra: dict[str, object]) -> object:
            doc = configDocument(listeners=[{"name": "web", "address": "127.0.0.1:8080", "filter_chains": [
                {"filters": [{"type": "proxy", "config": dict(
                    {"downstream_protocol": "Http1", "router_config_name": "r"}, **extra)}]}]}])
            doc["servers"][0]["routers"] = [{"router_config_name": "r", "virtual_hosts": [{  # type: ignore[index]
                "name": "v", "domains": ["*"], "routers": [{"match": {"prefix": "/"},
                                                            "direct_response": {"status": 200}}]}]}]
            return makeConfig(doc).listeners[0].filterChains[0].filters[0]

        defaults = httpSettings(proxyConfig({}))  # type: ignore[arg-type]
        self.assertEqual(
            (defaults.headerTimeout, defaults.idleTimeout, defaults.bodyTimeout, defaults.maxRequestsPerConnection,
             defaults.limits.maxHeaders, defaults.limits.maxURIBytes, defaults.limits.maxHeaderBytes),
            (10.0, 60.0, 60.0, 1000, 100, 8192, 65536),
        )
        custom = httpSettings(proxyConfig({  # type: ignore[arg-type]
            "request_headers_timeout": "2s", "idle_timeout": "5s", "stream_idle_timeout": "7s",
            "max_requests_per_connection": 3, "max_headers": 20, "max_uri_size": 1024,
            "extend_config": {"Http1": {"max_header_size": 4096, "max_request_body_size": 100}},
        }))
        self.assertEqual(
            (custom.headerTimeout, custom.idleTimeout, custom.bodyTimeout, custom.maxRequestsPerConnection,
             custom.limits.maxHeaders, custom.limits.maxURIBytes, custom.limits.maxHeaderBytes,
             custom.maxRequestBodyBytes),
            (2.0, 5.0, 7.0, 3, 20, 1024, 4096, 100),
        )
        self.assertEqual(defaults.tunnelIdleTimeout, 3600.0)
        self.assertIsNone(httpSettings(proxyConfig({"tunnel_idle_timeout": "0s"})).tunnelIdleTimeout)  # type: ignore[arg-type]
