"""
Tests for the top-level C{router_registry} section and the C{proxy} filter's C{use_router_registry}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import ConfigError, parseConfig
from meshproxy.config.registry import NATSConfig, RegistryStatusConfig, RouterRegistryConfig
from tests.test_config import ConfigAssertions
from tests.test_config_routers import forward, routerDocument


def withRegistry(registry: Any, useRegistry: bool = False) -> dict[str, Any]:
    doc = routerDocument(forward())
    listener = {
        "name": "web", "address": "127.0.0.1:8090",
        "filter_chains": [{"filters": [{"type": "proxy", "config": {
            "downstream_protocol": "Http1", "router_config_name": "web", "use_router_registry": useRegistry,
        }}]}],
    }
    doc["servers"][0]["listeners"] = [listener]
    if registry is not None:
        doc["router_registry"] = registry
    return doc


class RouterRegistryTests(ConfigAssertions, SynchronousTestCase):
    """
    gorouter's key names and defaults inside C{router_registry}.
    """

    def test_defaults(self) -> None:
        """
        Only the NATS hosts are required; the rest has gorouter's defaults (status on loopback).
        """
        config = self.load(withRegistry({"nats": {"hosts": [{"hostname": "127.0.0.1"}]}}, True))
        self.assertEqual(config.routerRegistry, RouterRegistryConfig(nats=NATSConfig(hosts=(("127.0.0.1", 4222),))))
        self.assertTrue(config.listeners[0].filterChains[0].filters[0].useRouterRegistry)  # type: ignore[union-attr]

    def test_everything(self) -> None:
        """
        Every key is read.
        """
        registry = {
            "nats": {"hosts": [{"hostname": "127.0.0.1", "port": 4223}, {"hostname": "::1", "port": 4224}],
                     "user": "u", "pass": "p"},
            "status": {"host": "0.0.0.0", "port": 18080, "user": "s", "pass": "t", "routes": {"port": 18082}},
            "index": 2, "zone": "z1",
            "nats_client_ping_interval": "5s",
            "start_response_delay_interval": "1s",
            "droplet_stale_threshold": "60s",
            "prune_stale_droplets_interval": "10s",
            "suspend_pruning_if_nats_unavailable": False,
            "balancing_algorithm": "least-connection",
            "backends": {"max_conns": 100, "max_attempts": 2},
            "sticky_session_cookie_names": ["JSESSIONID", "SESSION"],
            "endpoint_timeout": "30s",
            "endpoint_dial_timeout": "1s",
        }
        config = self.load(withRegistry(registry)).routerRegistry
        self.assertEqual(config, RouterRegistryConfig(
            nats=NATSConfig(hosts=(("127.0.0.1", 4223), ("::1", 4224)), user="u", password="p", pingInterval=5.0),
            status=RegistryStatusConfig("tcp:18080:interface=0.0.0.0", "tcp:18082:interface=127.0.0.1", "s", "t"),
            index=2, zone="z1", startResponseDelay=1.0, dropletStaleThreshold=60.0, pruneInterval=10.0,
            suspendPruningIfNATSUnavailable=False, balancingAlgorithm="least-connection", maxConns=100,
            maxAttempts=2, stickyCookieNames=("JSESSIONID", "SESSION"), endpointTimeout=30.0,
            endpointDialTimeout=1.0,
        ))

    def test_errors(self) -> None:
        """
        Bad values name their path; a filter using the registry without the section is refused.
        """
        cases: list[tuple[Any, str, str]] = [
            ({}, "router_registry.nats", "required key 'nats'"),
            ({"nats": {"hosts": []}}, "router_registry.nats.hosts", "empty"),
            ({"nats": {"hosts": [{"hostname": "a", "port": 0}]}}, "router_registry.nats.hosts[0].port", "out of range"),
            ({"nats": {"hosts": [{"hostname": "a"}], "user": "u", "token": "t"}}, "router_registry.nats", "not both"),
            (
                {"nats": {"hosts": [{"hostname": "a"}]}, "balancing_algorithm": "random"},
                "router_registry.balancing_algorithm",
                "'round-robin'",
            ),
            ({"nats": {"hosts": [{"hostname": "a"}]}, "pid_file": "/x"}, "router_registry.pid_file", "unknown key"),
        ]
        for registry, path, fragment in cases:
            self.assertOnlyProblem(withRegistry(registry), path, fragment)
        self.assertOnlyProblem(
            withRegistry(None, True),
            "servers[0].listeners[0].filter_chains[0].filters[0].config.use_router_registry",
            "needs the top-level 'router_registry'",
        )
        text = json.dumps(withRegistry(None, True))
        self.assertIn("router_registry", str(self.assertRaises(ConfigError, parseConfig, text)))
