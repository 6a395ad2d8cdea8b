"""
Tests for the cluster keys of issue 5: C{health_check}, C{outlier_detection}, C{lbconfig},
C{lb_subset_config} with host C{metadata}, C{STRICT_DNS}, and the route's C{hash_policy},
C{metadata_match} and extended C{retry_policy}.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import (
    HashPolicyConfig,
    HealthCheckConfig,
    LBConfig,
    OutlierDetectionConfig,
    SubsetConfig,
)
from meshproxy.config.routepolicy import MOSN_RETRY_ON
from tests.test_config import ConfigAssertions, cluster, document
from tests.test_config_routers import ENTRY, forward, routerDocument

CLUSTER = "cluster_manager.clusters[0]"


class HealthCheckTests(ConfigAssertions, SynchronousTestCase):
    """
    C{health_check} as MOSN writes it.
    """

    def test_http(self) -> None:
        """
        An HTTP check with MOSN's nested C{http_check_config}; C{Start}/C{End} is MOSN's half-open range.
        """
        check = {
            "protocol": "Http1",
            "timeout": "2s",
            "interval": "3s",
            "interval_jitter": "500ms",
            "initial_delay_seconds": "1s",
            "healthy_threshold": 2,
            "unhealthy_threshold": 4,
            "check_config": {
                "http_check_config": {
                    "path": "/healthz",
                    "method": "HEAD",
                    "domain": "svc.local",
                    "port": 8081,
                    "codes": [{"Start": 200, "End": 300}, {"Start": 418}],
                }
            },
        }
        config = self.load(document(clusters=[cluster(health_check=check)])).clusters[0]
        self.assertEqual(
            config.healthCheck,
            HealthCheckConfig(
                protocol="Http1", timeout=2.0, interval=3.0, intervalJitter=0.5, initialDelay=1.0,
                healthyThreshold=2, unhealthyThreshold=4, path="/healthz", method="HEAD", host="svc.local",
                port=8081, codes=((200, 299), (418, 418)),
            ),
        )

    def test_tcpWithoutServiceName(self) -> None:
        """
        Unlike MOSN, a check without C{service_name} is not disabled; any protocol but HTTP is a TCP check.
        """
        config = self.load(document(clusters=[cluster(health_check={"protocol": "tcp", "interval": "1s"})]))
        self.assertEqual(config.clusters[0].healthCheck, HealthCheckConfig(protocol="TCP", interval=1.0))

    def test_emptyIsOff(self) -> None:
        """
        An absent or empty C{health_check} checks nothing.
        """
        self.assertIsNone(self.load(document(clusters=[cluster(health_check={})])).clusters[0].healthCheck)
        self.assertIsNone(self.load(document(clusters=[cluster()])).clusters[0].healthCheck)

    def test_errors(self) -> None:
        """
        Bad values name their path.
        """
        cases: list[tuple[Any, str, str]] = [
            ({"protocol": "Http2"}, ".protocol", "expected 'Http1' or 'TCP'"),
            ({"interval": "0s"}, ".interval", ""),
            ({"unhealthy_threshold": 0}, ".unhealthy_threshold", "from 1 to 1000"),
            (
                {"protocol": "Http1", "check_config": {"http_check_config": {"path": "healthz"}}},
                ".check_config.http_check_config.path",
                "starting with '/'",
            ),
            (
                {"protocol": "Http1", "check_config": {"http_check_config": {"scheme": "https"}}},
                ".check_config.http_check_config.scheme",
                "HTTPS checks are not supported",
            ),
            (
                {"protocol": "Http1", "check_config": {"http_check_config": {"codes": [{"Start": 300, "End": 200}]}}},
                ".check_config.http_check_config.codes[0].End",
                "End is exclusive",
            ),
            ({"event_log_path": "/tmp/x"}, ".event_log_path", "MOSN key"),
        ]
        for check, suffix, fragment in cases:
            self.assertOnlyProblem(
                document(clusters=[cluster(health_check=check)]), CLUSTER + ".health_check" + suffix, fragment
            )


class OutlierAndLBTests(ConfigAssertions, SynchronousTestCase):
    """
    C{outlier_detection} (on by default), C{lbconfig} and the load-balancer types.
    """

    def test_outlierDefaults(self) -> None:
        """
        Ejection after 5 consecutive failures for 30 s x n (cap 300 s), at most 10 % of hosts.
        """
        config = self.load(document(clusters=[cluster()])).clusters[0]
        self.assertEqual(config.outlierDetection, OutlierDetectionConfig(5, 30.0, 300.0, 10))

    def test_outlierSettings(self) -> None:
        """
        Every key; C{consecutive_failures: 0} turns ejection off.
        """
        outlier = {
            "consecutive_failures": 3, "base_ejection_time": "10s", "max_ejection_time": "1m",
            "max_ejection_percent": 50,
        }
        config = self.load(document(clusters=[cluster(outlier_detection=outlier)])).clusters[0]
        self.assertEqual(config.outlierDetection, OutlierDetectionConfig(3, 10.0, 60.0, 50))
        off = self.load(document(clusters=[cluster(outlier_detection={"consecutive_failures": 0})]))
        self.assertIsNone(off.clusters[0].outlierDetection)

    def test_outlierErrors(self) -> None:
        """
        A cap below the base ejection time is refused.
        """
        self.assertOnlyProblem(
            document(clusters=[cluster(outlier_detection={"base_ejection_time": "60s", "max_ejection_time": "10s"})]),
            CLUSTER + ".outlier_detection.max_ejection_time",
            "below base_ejection_time",
        )

    def test_lbTypes(self) -> None:
        """
        Every MOSN balancer meshproxy implements is accepted, with C{lbconfig} for least-request.
        """
        for lbType in (
            "LB_ROUNDROBIN", "LB_WEIGHTED_ROUNDROBIN", "LB_REQUEST_ROUNDROBIN", "LB_RANDOM", "LB_LEAST_REQUEST",
            "LB_LEAST_CONNECTION", "LB_MAGLEV",
        ):
            self.assertEqual(self.load(document(clusters=[cluster(lb_type=lbType)])).clusters[0].lbType, lbType)
        config = self.load(document(clusters=[cluster(
            lb_type="LB_LEAST_REQUEST", lbconfig={"choice_count": 3, "active_request_bias": 0.5}
        )]))
        self.assertEqual(config.clusters[0].lbConfig, LBConfig(3, 0.5))
        self.assertOnlyProblem(
            document(clusters=[cluster(lbconfig={"choice_count": 1})]), CLUSTER + ".lbconfig.choice_count", "from 2"
        )


class SubsetTests(ConfigAssertions, SynchronousTestCase):
    """
    Host C{metadata}, C{lb_subset_config} and a route's C{metadata_match}.
    """

    def test_subsets(self) -> None:
        """
        Labels are read from C{filter_metadata["mosn.lb"]} and kept sorted.
        """
        hosts = [
            {"address": "127.0.0.1:9000", "metadata": {"filter_metadata": {"mosn.lb": {"version": "v1", "zone": "a"}}}},
            {"address": "127.0.0.1:9001", "metadata": {"filter_metadata": {"mosn.lb": {"version": "v2"}}}},
        ]
        subset = {
            "fall_back_policy": 2,
            "default_subset": {"version": "v1"},
            "subset_selectors": [["zone", "version"], ["version"]],
        }
        config = self.load(document(clusters=[cluster(hosts=hosts, lb_subset_config=subset)])).clusters[0]
        self.assertEqual(config.hosts[0].metadata, (("version", "v1"), ("zone", "a")))
        self.assertEqual(
            config.subsets,
            SubsetConfig("DEFAULT_SUBSET", (("version", "v1"),), (("version", "zone"), ("version",))),
        )

    def test_routeMetadataMatch(self) -> None:
        """
        A route and each weighted cluster may carry C{metadata_match}.
        """
        match = {"filter_metadata": {"mosn.lb": {"version": "v2"}}}
        config = self.load(routerDocument(forward(cluster_name="backend", metadata_match=match)))
        action = config.servers[0].routers[0].virtualHosts[0].routes[0].route
        assert action is not None
        self.assertEqual(action.metadataMatch, (("version", "v2"),))
        weighted = {"weighted_clusters": [{"cluster": {"name": "backend", "weight": 1, "metadata_match": match}}]}
        config = self.load(routerDocument(forward(**weighted)))
        action = config.servers[0].routers[0].virtualHosts[0].routes[0].route
        assert action is not None
        self.assertEqual(action.weightedClusters[0].metadataMatch, (("version", "v2"),))

    def test_errors(self) -> None:
        """
        Other filter metadata than C{mosn.lb}, and bad selectors, are refused with their paths.
        """
        hosts = [{"address": "127.0.0.1:9000", "metadata": {"filter_metadata": {"istio": {"a": "b"}}}}]
        self.assertOnlyProblem(
            document(clusters=[cluster(hosts=hosts)]), CLUSTER + ".hosts[0].metadata.filter_metadata.istio", "unknown key"
        )
        self.assertOnlyProblem(
            document(clusters=[cluster(lb_subset_config={"subset_selectors": ["version"]})]),
            CLUSTER + ".lb_subset_config.subset_selectors[0]",
            "expected a list of label names",
        )


class StrictDNSTests(ConfigAssertions, SynchronousTestCase):
    """
    C{STRICT_DNS} clusters: host names, refresh rate, lookup family.
    """

    def test_names(self) -> None:
        """
        Hosts may be names (lower-cased) or IP addresses; the refresh rate and family are kept.
        """
        config = self.load(document(clusters=[cluster(
            type="STRICT_DNS",
            hosts=[{"address": "LocalHost:8080"}, {"address": "127.0.0.2:80"}],
            dns_refresh_rate="10s",
            dns_lookup_family="V4_ONLY",
        )])).clusters[0]
        self.assertEqual([(h.host, h.port, h.family) for h in config.hosts], [
            ("localhost", 8080, "dns"), ("127.0.0.2", 80, "ipv4"),
        ])
        self.assertEqual((config.dnsRefreshRate, config.dnsLookupFamily), (10.0, "V4_ONLY"))

    def test_errors(self) -> None:
        """
        Bad names, unix sockets, DNS keys on a static cluster and unknown families are refused.
        """
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({"type": "STRICT_DNS", "hosts": [{"address": "bad_name:80"}]}, ".hosts[0].address", "name:port"),
            ({"type": "STRICT_DNS", "hosts": [{"address": "unix:/tmp/s"}]}, ".hosts[0].address", "unix socket"),
            ({"dns_refresh_rate": "5s"}, ".dns_refresh_rate", "only a STRICT_DNS cluster"),
            ({"type": "STRICT_DNS", "dns_lookup_family": "V5"}, ".dns_lookup_family", "'V4_ONLY'"),
        ]
        for overrides, suffix, fragment in cases:
            self.assertOnlyProblem(document(clusters=[cluster(**overrides)]), CLUSTER + suffix, fragment)


class RoutePolicyTests(ConfigAssertions, SynchronousTestCase):
    """
    A route's C{hash_policy} and C{retry_policy}.
    """

    def action(self, **route: Any) -> Any:
        config = self.load(routerDocument(forward(cluster_name="backend", **route)))
        return config.servers[0].routers[0].virtualHosts[0].routes[0].route

    def test_hashPolicy(self) -> None:
        """
        Header (lower-cased), cookie (with generation TTL) and source IP policies, in order.
        """
        action = self.action(hash_policy=[
            {"header": {"key": "X-User"}},
            {"cookie": {"name": "sticky", "path": "/app", "ttl": "1h"}},
            {"source_ip": {}},
        ])
        self.assertEqual(action.hashPolicy, (
            HashPolicyConfig("header", "x-user"),
            HashPolicyConfig("cookie", "sticky", "/app", 3600.0),
            HashPolicyConfig("source_ip"),
        ))

    def test_hashPolicyErrors(self) -> None:
        """
        Each entry needs exactly one kind; cookie names must be tokens.
        """
        self.assertOnlyProblem(
            routerDocument(forward(cluster_name="backend", hash_policy=[{"header": {"key": "a"}, "source_ip": {}}])),
            ENTRY + ".route.hash_policy[0]",
            "exactly one of",
        )
        self.assertOnlyProblem(
            routerDocument(forward(cluster_name="backend", hash_policy=[{"cookie": {"name": "a b"}}])),
            ENTRY + ".route.hash_policy[0].cookie.name",
            "not a cookie name",
        )

    def test_retryOn(self) -> None:
        """
        MOSN's boolean, or Envoy's comma-separated conditions, with back-off.
        """
        self.assertEqual(self.action(retry_policy={"retry_on": True}).retryPolicy.conditions, MOSN_RETRY_ON)
        policy = self.action(retry_policy={
            "retry_on": "5xx, reset", "num_retries": 2,
            "retry_back_off": {"base_interval": "10ms", "max_interval": "100ms"},
        }).retryPolicy
        self.assertEqual(
            (policy.retryOn, policy.conditions, policy.backoffBase, policy.backoffMax),
            (True, frozenset({"5xx", "reset"}), 0.01, 0.1),
        )
        self.assertFalse(self.action(retry_policy={"retry_on": False}).retryPolicy.retryOn)
        self.assertOnlyProblem(
            routerDocument(forward(cluster_name="backend", retry_policy={"retry_on": "5xx,teapot"})),
            ENTRY + ".route.retry_policy.retry_on",
            "connect-failure",
        )
