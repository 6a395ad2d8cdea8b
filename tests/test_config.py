"""
Tests for L{meshproxy.config}: parsing MOSN v2 JSON into the model, and every kind of configuration error.
"""

from __future__ import annotations

import ipaddress
import json
import os
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from meshproxy.config import (
    DEFAULT_ADMIN_ENDPOINT,
    CircuitBreakersConfig,
    Config,
    ConfigError,
    HTTPProxyConfig,
    Problem,
    TCPProxyConfig,
    configDump,
    parseConfig,
)
from meshproxy.config import filters
from meshproxy.config.addresses import (
    AddressError,
    HostnameError,
    listenerEndpoint,
    parseHostAddress,
    parsePortRanges,
)
from meshproxy.config.durations import DurationError, parseGoDuration

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "mosn-configs")


def tcpProxy(**config: Any) -> dict[str, Any]:
    """
    A C{tcp_proxy} filter to cluster C{backend}, with C{config} merged in.
    """
    return {"type": "tcp_proxy", "config": {"cluster": "backend", **config}}


def listener(**overrides: Any) -> dict[str, Any]:
    """
    A listener on 127.0.0.1:8080 with one C{tcp_proxy} chain, with C{overrides} merged in.
    """
    return {
        "name": "front",
        "address": "127.0.0.1:8080",
        "filter_chains": [{"filters": [tcpProxy()]}],
        **overrides,
    }


def cluster(**overrides: Any) -> dict[str, Any]:
    """
    Cluster C{backend} with one host, with C{overrides} merged in.
    """
    return {"name": "backend", "hosts": [{"address": "127.0.0.1:9000"}], **overrides}


def document(
    listeners: list[Any] | None = None, clusters: list[Any] | None = None, server: Any = None, **top: Any
) -> dict[str, Any]:
    """
    A whole MOSN document: one server (with C{server} merged in), the given listeners and clusters.
    """
    serverDocument = {"listeners": [listener()] if listeners is None else listeners, **(server or {})}
    return {
        "servers": [serverDocument],
        "cluster_manager": {"clusters": [cluster()] if clusters is None else clusters},
        **top,
    }


class ConfigAssertions:
    """
    Helpers for test cases that parse documents.
    """

    def load(self, doc: Any) -> Config:
        """
        Parse C{doc} (JSON-encoded first).
        """
        return parseConfig(json.dumps(doc))

    def problems(self, doc: Any) -> list[tuple[str, str]]:
        """
        The (path, message) pairs C{doc} is rejected with.
        """
        error = self.assertRaises(ConfigError, self.load, doc)  # type: ignore[attr-defined]
        return [(problem.path, problem.message) for problem in error.problems]

    def assertOnlyProblem(self, doc: Any, path: str, *fragments: str) -> str:
        """
        C{doc} is rejected with exactly one problem, at C{path}, whose message contains every fragment.
        """
        found = self.problems(doc)
        self.assertEqual([where for where, _ in found], [path], found)  # type: ignore[attr-defined]
        for fragment in fragments:
            self.assertIn(fragment, found[0][1])  # type: ignore[attr-defined]
        return found[0][1]


LISTENER = "servers[0].listeners[0]"
CHAIN = LISTENER + ".filter_chains[0]"
FILTER = CHAIN + ".filters[0]"


class ParseConfigTests(ConfigAssertions, SynchronousTestCase):
    """
    A valid document becomes the model with every default filled in.
    """

    def test_minimal(self) -> None:
        """
        A listener, a C{tcp_proxy} chain and a cluster load, with MOSN's and meshproxy's defaults.
        """
        config = self.load(document())
        [server] = config.servers
        [front] = config.listeners
        self.assertEqual(
            (server.gracefulTimeout, server.defaultLogLevel, server.name), (30.0, "INFO", "server#0")
        )
        self.assertEqual(front.endpoint, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(
            (
                front.sniffTimeout,
                front.sniffMaxBytes,
                front.maxConnections,
                front.drainTimeout,
                front.listenerType,
            ),
            (3.0, 16384, 10000, 30.0, "ingress"),
        )
        self.assertIsNone(front.proxyProtocol)
        [chain] = front.filterChains
        self.assertEqual((chain.name, chain.tls), ("front#0", None))
        self.assertEqual(
            chain.filters,
            (TCPProxyConfig(statPrefix="front", cluster="backend", idleTimeout=90.0, maxConnectAttempts=3),),
        )
        backend = config.cluster("backend")
        assert backend is not None
        self.assertEqual(
            (backend.type, backend.lbType, backend.connectTimeout, backend.connBufferLimitBytes),
            ("SIMPLE", "LB_ROUNDROBIN", 5.0, 65536),
        )
        self.assertEqual((backend.maxRequestPerConn, backend.idleTimeout), (1024, None))
        self.assertEqual(backend.circuitBreakers, CircuitBreakersConfig(1024, 1024, 1024, 3))
        self.assertEqual(config.admin.endpoint, DEFAULT_ADMIN_ENDPOINT)
        self.assertEqual(DEFAULT_ADMIN_ENDPOINT, "tcp:9901:interface=127.0.0.1")
        self.assertIsNone(config.cluster("nope"))

    def test_listenersOfAllServers(self) -> None:
        """
        C{Config.listeners} lists every server's listeners in order; the drain timeout is the server's.
        """
        doc = document(listeners=[listener(name="a", address=":1001")])
        second = {"graceful_timeout": "5s", "listeners": [listener(name="b", address=":1002")]}
        doc["servers"].append(second)
        config = self.load(doc)
        self.assertEqual(
            [(item.name, item.drainTimeout) for item in config.listeners], [("a", 30.0), ("b", 5.0)]
        )

    def test_bytesAndStr(self) -> None:
        """
        The document may be bytes (UTF-8, with or without a BOM) or text.
        """
        text = json.dumps(document())
        for data in (text, text.encode("utf-8"), b"\xef\xbb\xbf" + text.encode("utf-8")):
            self.assertEqual(parseConfig(data).listeners[0].name, "front")

    def test_several(self) -> None:
        """
        All problems are reported at once, in one exception, one line each in its string form.
        """
        doc = document(
            listeners=[listener(address="127.0.0.1:99999", sniff_max_bytes=1)],
            clusters=[cluster(lb_type="LB_PEAK_EWMA", hosts=[{"address": "127.0.0.1:80", "weight": 0}])],
        )
        error = self.assertRaises(ConfigError, self.load, doc)
        paths = [problem.path for problem in error.problems]
        self.assertEqual(
            sorted(paths),
            sorted(
                [
                    "cluster_manager.clusters[0].lb_type",
                    "cluster_manager.clusters[0].hosts[0].weight",
                    LISTENER + ".address",
                    LISTENER + ".sniff_max_bytes",
                ]
            ),
        )
        self.assertEqual(str(error).splitlines(), [f"{p.path}: {p.message}" for p in error.problems])
        self.assertIsInstance(error.problems[0], Problem)


class JSONSyntaxTests(ConfigAssertions, SynchronousTestCase):
    """
    A document that is not JSON is one problem at C{$} with the line and column.
    """

    def test_syntaxError(self) -> None:
        """
        The message names the line and column.
        """
        error = self.assertRaises(ConfigError, parseConfig, '{\n  "servers": [\n    1,\n  ]\n}')
        self.assertEqual(len(error.problems), 1)
        self.assertEqual(error.problems[0].path, "$")
        self.assertTrue(error.problems[0].message.startswith("invalid JSON at line 4 column 3:"), error)

    def test_notUTF8(self) -> None:
        """
        Bytes that are not UTF-8 are rejected at C{$}.
        """
        error = self.assertRaises(ConfigError, parseConfig, b'{"servers": "\xff"}')
        self.assertEqual([p.path for p in error.problems], ["$"])
        self.assertIn("not UTF-8", str(error))

    def test_nonFinite(self) -> None:
        """
        Python's NaN extension is not JSON.
        """
        error = self.assertRaises(ConfigError, parseConfig, '{"servers": NaN}')
        self.assertEqual(
            str(error), "$: invalid JSON: NaN is not a finite number (JSON has no NaN or Infinity)"
        )

    def test_notAnObject(self) -> None:
        """
        The document must be an object, with C{servers}.
        """
        self.assertEqual(self.problems([]), [("$", "a list is not an object: expected an object")])
        self.assertEqual(self.problems({}), [("servers", "required key 'servers' is missing")])
        self.assertOnlyProblem({"servers": []}, "servers", "[] is empty")


class KeyTests(ConfigAssertions, SynchronousTestCase):
    """
    Keys match case-insensitively as in Go; unknown and not-supported keys are errors.
    """

    def test_unknownWithSuggestion(self) -> None:
        """
        An unknown key close to a known one gets a did-you-mean.
        """
        doc = document(
            listeners=[
                {
                    "name": "a",
                    "adress": "127.0.0.1:1",
                    "address": ":2",
                    "filter_chains": [{"filters": [tcpProxy()]}],
                }
            ]
        )
        message = self.assertOnlyProblem(doc, LISTENER + ".adress")
        self.assertEqual(message, "unknown key 'adress' (did you mean 'address'?)")

    def test_unknownWithoutSuggestion(self) -> None:
        """
        An unknown key close to nothing lists the known keys.
        """
        self.assertOnlyProblem(
            document(listeners=[listener(zzz=1)]),
            LISTENER + ".zzz",
            "unknown key 'zzz': expected one of access_logs, address, ",
        )

    def test_caseInsensitive(self) -> None:
        """
        C{"Name"} and C{"ADDRESS"} work, as in Go's encoding/json; paths keep the user's spelling.
        """
        doc = document(
            listeners=[{"NAME": "x", "Address": "127.0.0.1:1", "Filter_Chains": [{"filters": [tcpProxy()]}]}],
            clusters=[{"Name": "backend", "Hosts": [{"Address": "127.0.0.1:2", "WEIGHT": 7}]}],
        )
        config = self.load(doc)
        self.assertEqual((config.listeners[0].name, config.clusters[0].hosts[0].weight), ("x", 7))
        doc["cluster_manager"]["clusters"][0]["Hosts"][0]["WEIGHT"] = 0
        self.assertOnlyProblem(doc, "cluster_manager.clusters[0].Hosts[0].WEIGHT", "0 is out of range")

    def test_duplicateByCase(self) -> None:
        """
        Two keys of one object equal but for case are an error (Go would silently keep the last).
        """
        doc = document(clusters=[{"name": "backend", "Name": "other", "hosts": [{"address": "127.0.0.1:2"}]}])
        self.assertOnlyProblem(
            doc,
            "cluster_manager.clusters[0].Name",
            "duplicate key 'Name': 'name' is already given",
            "case-insensitively",
        )

    def test_exactDuplicate(self) -> None:
        """
        A key given twice is an error, not last-one-wins.
        """
        text = json.dumps(document()).replace('"name": "front"', '"name": "front", "name": "again"')
        error = self.assertRaises(ConfigError, parseConfig, text)
        self.assertEqual(str(error), LISTENER + ".name: duplicate key 'name'")

    def test_notSupportedByName(self) -> None:
        """
        A MOSN key meshproxy does not implement is named as such.
        """
        doc = document(clusters=[cluster(slow_start={"mode": "duration"})])
        message = self.assertOnlyProblem(doc, "cluster_manager.clusters[0].slow_start")
        self.assertTrue(
            message.startswith("'slow_start' is a MOSN key that meshproxy does not support yet")
        )

    def test_toleratedValues(self) -> None:
        """
        Not-supported keys with values that match meshproxy's behaviour anyway are accepted.
        """
        doc = document(
            listeners=[
                listener(
                    bind_port=True,
                    network="tcp",
                    inspector=True,
                    reuseport=False,
                    stream_filters=[],
                    access_logs=[],
                    filter_chains=[{"tls_context": {}, "filters": [tcpProxy()]}],
                )
            ],
            server={"use_netpoll_mode": False},
            disable_upgrade=True,
            tracing={},
        )
        self.assertEqual(self.load(doc).listeners[0].filterChains[0].tls, None)

    def test_notToleratedValues(self) -> None:
        """
        Other values of those keys are errors that name the accepted ones.
        """
        cases = [
            ({"bind_port": False}, LISTENER + ".bind_port", "only true is accepted", "got false"),
            ({"network": "udp"}, LISTENER + ".network", "only 'tcp' or 'unix' is accepted", "got 'udp'"),
            ({"inspector": False}, LISTENER + ".inspector", "only true"),
            ({"stream_filters": [{"type": "mirror"}]}, LISTENER + ".stream_filters", "got a list"),
            (
                {"connection_idle_timeout": "90s"},
                LISTENER + ".connection_idle_timeout",
                "does not support yet",
            ),
        ]
        for extra, path, *fragments in cases:
            message = self.assertOnlyProblem(document(listeners=[listener(**extra)]), path, *fragments)
            self.assertIn("is a MOSN key that meshproxy does not support yet", message)
        self.assertOnlyProblem(
            document(disable_upgrade=False), "disable_upgrade", "'disable_upgrade' is a MOSN key"
        )
        for key in (
            "tracing",
            "metrics",
            "pprof",
            "dynamic_resources",
            "node",
            "third_part_codec",
            "close_graceful",
        ):
            self.assertOnlyProblem(document(**{key: {"x": 1}}), key, f"{key!r} is a MOSN key")
        for key in ("global_log_roller", "processor"):
            self.assertOnlyProblem(document(server={key: "x"}), f"servers[0].{key}", f"{key!r} is a MOSN key")


class DurationTests(ConfigAssertions, SynchronousTestCase):
    """
    Go duration strings, and their use in the configuration.
    """

    def test_valid(self) -> None:
        """
        Go's syntax: decimal numbers with units, several components, fractions, an optional sign, bare 0.
        """
        table = {
            "30s": 30 * 10**9,
            "500ms": 500 * 10**6,
            "1h2m3.5s": 3723 * 10**9 + 5 * 10**8,
            "1us": 1000,
            "1\u00b5s": 1000,
            "1\u03bcs": 1000,
            "10ns": 10,
            "1.5h": 5400 * 10**9,
            ".5s": 5 * 10**8,
            "5.s": 5 * 10**9,
            "+2m": 120 * 10**9,
            "0": 0,
            "0s": 0,
            "-3s": -3 * 10**9,
            "1.9ns": 1,
        }
        for text, nanoseconds in table.items():
            self.assertEqual((text, parseGoDuration(text)), (text, nanoseconds))

    def test_invalid(self) -> None:
        """
        Missing units, unknown units, stray dots and overflow are errors.
        """
        for text in ("", "30", "s", "1x", "1.2.3s", "-", ".", "1 s", "1S", "3000000h", "1h30"):
            self.assertRaises(DurationError, parseGoDuration, text)

    def test_inConfig(self) -> None:
        """
        A duration key converts to float seconds; bad and negative values name the key and the value.
        """
        self.assertEqual(
            self.load(document(server={"graceful_timeout": "1m30s"})).servers[0].gracefulTimeout, 90.0
        )
        message = self.assertOnlyProblem(
            document(server={"graceful_timeout": "30"}), "servers[0].graceful_timeout"
        )
        self.assertEqual(
            message,
            "'30' is not a valid duration (missing unit): expected a Go duration string such as '30s', "
            "'500ms' or '1h2m3.5s' (units ns, us, µs, ms, s, m, h)",
        )
        self.assertOnlyProblem(
            document(server={"graceful_timeout": "-1s"}), "servers[0].graceful_timeout", "'-1s' is negative"
        )
        self.assertOnlyProblem(
            document(server={"graceful_timeout": 30}), "servers[0].graceful_timeout", "30 is not a duration"
        )
        self.assertOnlyProblem(
            document(listeners=[listener(sniff_timeout="0s")]), LISTENER + ".sniff_timeout", "'0s' is zero"
        )

    def test_tcpIdleTimeout(self) -> None:
        """
        C{tcp_proxy.idle_timeout} is integer nanoseconds as in MOSN, or a Go string; 0 disables it.
        """
        cases = [(1_500_000_000, 1.5), ("2m", 120.0), (0, None), ("0s", None)]
        for value, expected in cases:
            config = self.load(
                document(listeners=[listener(filter_chains=[{"filters": [tcpProxy(idle_timeout=value)]}])])
            )
            chainFilter = config.listeners[0].filterChains[0].filters[0]
            assert isinstance(chainFilter, TCPProxyConfig)
            self.assertEqual(chainFilter.idleTimeout, expected)
        for value, fragment in [
            (-1, "-1 is negative"),
            (1.5, "1.5 is not a duration: expected integer nanoseconds"),
        ]:
            doc = document(listeners=[listener(filter_chains=[{"filters": [tcpProxy(idle_timeout=value)]}])])
            self.assertOnlyProblem(doc, FILTER + ".config.idle_timeout", fragment)

    def test_clusterIdleTimeout(self) -> None:
        """
        A cluster's C{idle_timeout} of 0 means no limit.
        """
        self.assertIsNone(self.load(document(clusters=[cluster(idle_timeout="0s")])).clusters[0].idleTimeout)
        self.assertEqual(
            self.load(document(clusters=[cluster(idle_timeout="1m")])).clusters[0].idleTimeout, 60.0
        )


class AddressTests(ConfigAssertions, SynchronousTestCase):
    """
    Listener addresses become Twisted endpoint strings; host addresses are split without breaking IPv6.
    """

    def test_listenerEndpoints(self) -> None:
        """
        MOSN addresses, unix paths and Twisted endpoint strings.
        """
        table = [
            ("127.0.0.1:2046", "tcp", "tcp:2046:interface=127.0.0.1"),
            ("[::1]:8080", "tcp", "tcp6:8080:interface=\\:\\:1"),
            ("[fe80::1%eth0]:80", "tcp", "tcp6:80:interface=fe80\\:\\:1%eth0"),
            (":8080", "tcp", "tcp:8080"),
            ("0.0.0.0:8080", "tcp", "tcp:8080:interface=0.0.0.0"),
            ("/run/mesh.sock", "tcp", "unix:/run/mesh.sock"),
            ("/tmp/a:b=c.sock", "tcp", "unix:/tmp/a\\:b\\=c.sock"),
            ("mesh.sock", "unix", "unix:mesh.sock"),
            ("tcp:0", "tcp", "tcp:0"),
            ("tcp:8080:interface=127.0.0.1", "tcp", "tcp:8080:interface=127.0.0.1"),
            ("tcp6:8080:interface=\\:\\:1", "tcp", "tcp6:8080:interface=\\:\\:1"),
            ("unix:/run/x.sock:mode=660:lockfile=0", "tcp", "unix:/run/x.sock:mode=660:lockfile=0"),
            ("unix:address=/run/x.sock", "tcp", "unix:address=/run/x.sock"),
            ("systemd:domain=INET:index=0", "tcp", "systemd:domain=INET:index=0"),
        ]
        for address, network, endpoint in table:
            self.assertEqual((address, listenerEndpoint(address, network)), (address, endpoint))

    def test_badListenerAddresses(self) -> None:
        """
        Each bad address gets a message naming it and what was wrong.
        """
        table = [
            ("127.0.0.1:99999", "expected host:port with port 1-65535"),
            ("127.0.0.1", "expected host:port"),
            ("::1:8080", "an IPv6 address needs brackets, as in '[::1]:8080'"),
            ("[::1]8080", "expected host:port"),
            ("localhost:8080", "'localhost' is not an IP address"),
            ("tcp:http", "tcp needs a numeric port 0-65535, got 'http'"),
            ("tcp:65536", "tcp needs a numeric port 0-65535"),
            ("tcp:80:interface=eth0", "interface 'eth0' is not an IP address"),
            ("tcp:80:backlg=5", "unknown tcp parameter 'backlg' (did you mean 'backlog'?)"),
            ("tcp:80:1.2.3.4:5:6", "too many arguments"),
            ("tcp:80:port=81", "'port' is given twice"),
            ("TCP:80", "lower case: 'tcp'"),
            ("ssl:443", "'tls_context'"),
            ("tls:443", "'tls_context'"),
            ("unix:", "unix needs a socket path"),
            ("unix:/x:mode=999", "mode '999'"),
            ("systemd:domain=INET:name=web", "use 'index='"),
            ("systemd:domain=INET", "systemd needs 'index'"),
            ("systemd:domain=IPX:index=0", "not one of INET, INET6, UNIX"),
            ("tcp:80\\", "lone backslash"),
            ("", "'' is not a valid address"),
        ]
        for address, fragment in table:
            error = self.assertRaises(AddressError, listenerEndpoint, address)
            self.assertIn(fragment, str(error), address)
            self.assertIn(repr(address), str(error))

    def test_addressInConfig(self) -> None:
        """
        The problem is reported at the listener's C{address} with the full explanation.
        """
        message = self.assertOnlyProblem(
            document(listeners=[listener(address="127.0.0.1:99999")]), LISTENER + ".address"
        )
        self.assertEqual(
            message,
            "'127.0.0.1:99999' is not a valid address: expected host:port with port 1-65535, a unix socket "
            "path, or a Twisted endpoint string such as 'tcp:8080:interface=127.0.0.1'",
        )

    def test_hostAddresses(self) -> None:
        """
        Host addresses split into host, port and family.
        """
        table = [
            ("10.0.0.1:80", ("10.0.0.1", 80, "ipv4")),
            ("[::1]:8080", ("::1", 8080, "ipv6")),
            ("unix:/run/app.sock", ("/run/app.sock", 0, "unix")),
            ("/run/app.sock", ("/run/app.sock", 0, "unix")),
        ]
        for address, (host, port, family) in table:
            parsed = parseHostAddress(address)
            self.assertEqual((parsed.host, parsed.port, parsed.family), (host, port, family))
        self.assertRaises(HostnameError, parseHostAddress, "example.com:80")
        for bad in ("::1:80", "10.0.0.1", "10.0.0.1:0", "unix:", ":80"):
            self.assertRaises(AddressError, parseHostAddress, bad)

    def test_portRanges(self) -> None:
        """
        MOSN port lists: single ports, inclusive ranges, comma lists.
        """
        self.assertEqual(parsePortRanges(""), ())
        self.assertEqual(parsePortRanges("8080"), ((8080, 8080),))
        self.assertEqual(parsePortRanges("8000-9000, 443"), ((8000, 9000), (443, 443)))
        for bad in ("http", "9000-8000", "0", "1-70000", "80,", "-"):
            self.assertRaises(ValueError, parsePortRanges, bad)


class ListenerTests(ConfigAssertions, SynchronousTestCase):
    """
    Listener keys, meshproxy's extensions, and listener filters.
    """

    def test_extensions(self) -> None:
        """
        C{sniff_timeout}, C{sniff_max_bytes}, C{max_connections} and C{type} are read.
        """
        doc = document(
            listeners=[
                listener(sniff_timeout="500ms", sniff_max_bytes=512, max_connections=256, type="egress")
            ]
        )
        front = self.load(doc).listeners[0]
        self.assertEqual(
            (front.sniffTimeout, front.sniffMaxBytes, front.maxConnections, front.listenerType),
            (0.5, 512, 256, "egress"),
        )
        for key, value, fragment in [
            ("sniff_max_bytes", 1048577, "1048577 is out of range: expected an integer from 512 to 1048576"),
            ("sniff_max_bytes", "16k", "'16k' is not an integer"),
            ("max_connections", 0, "0 is out of range"),
            ("max_connections", True, "true is not an integer"),
            ("type", "inbound", "'inbound' is not a valid listener type"),
        ]:
            self.assertOnlyProblem(
                document(listeners=[listener(**{key: value})]), f"{LISTENER}.{key}", fragment
            )

    def test_nameDefaultsToAddress(self) -> None:
        """
        Without a name, a listener is named after its address, as in MOSN.
        """
        doc = document(
            listeners=[{"address": "127.0.0.1:2045", "filter_chains": [{"filters": [tcpProxy()]}]}]
        )
        front = self.load(doc).listeners[0]
        self.assertEqual((front.name, front.filterChains[0].name), ("127.0.0.1:2045", "127.0.0.1:2045#0"))

    def test_uniqueNames(self) -> None:
        """
        Listener names are unique across all servers; two listeners on one endpoint are an error too.
        """
        doc = document()
        doc["servers"].append({"listeners": [listener(address=":9")]})
        self.assertOnlyProblem(
            doc, "servers[1].listeners[0].name", "'front' is already used by servers[0].listeners[0]"
        )
        doc = document(listeners=[listener(), listener(name="other")])
        self.assertOnlyProblem(
            doc, "servers[0].listeners[1].address", "endpoint 'tcp:8080:interface=127.0.0.1' is already used"
        )

    def test_proxyProtocol(self) -> None:
        """
        The C{proxy_protocol} listener filter (a meshproxy extension) is read; C{original_dst} is named.
        """
        for config, allowMissing in [(None, False), ({"allow_requests_without_proxy_protocol": True}, True)]:
            item: dict[str, Any] = {"type": "proxy_protocol"}
            if config is not None:
                item["config"] = config
            front = self.load(document(listeners=[listener(listener_filters=[item])])).listeners[0]
            assert front.proxyProtocol is not None
            self.assertEqual(front.proxyProtocol.allowMissing, allowMissing)
        path = LISTENER + ".listener_filters[0].type"
        self.assertOnlyProblem(
            document(listeners=[listener(listener_filters=[{"type": "original_dst"}])]),
            path,
            "listener filter 'original_dst' is a MOSN filter that meshproxy does not support yet",
        )
        self.assertOnlyProblem(
            document(listeners=[listener(listener_filters=[{"type": "proxy_protcol"}])]),
            path,
            "unknown listener filter 'proxy_protcol' (did you mean 'proxy_protocol'?)",
        )
        self.assertOnlyProblem(
            document(listeners=[listener(listener_filters=[{"type": "proxy_protocol"}] * 2)]),
            LISTENER + ".listener_filters[1].type",
            "the 'proxy_protocol' listener filter is given twice",
        )

    def test_serverLogSettings(self) -> None:
        """
        Log levels are case-insensitive; log paths other than stdout/stderr are not supported yet.
        """
        server = self.load(
            document(server={"default_log_level": "debug", "default_log_path": "stdout"})
        ).servers[0]
        self.assertEqual((server.defaultLogLevel, server.defaultLogPath), ("DEBUG", "stdout"))
        self.assertOnlyProblem(
            document(server={"default_log_level": "VERBOSE"}),
            "servers[0].default_log_level",
            "'VERBOSE' is not a log level",
        )
        self.assertOnlyProblem(
            document(server={"default_log_path": "/var/log/mosn.log"}),
            "servers[0].default_log_path",
            "logging to a file is not supported yet",
        )

    def test_requiredKeys(self) -> None:
        """
        A listener needs an address and filter chains; a server needs listeners.
        """
        self.assertEqual(
            self.problems(document(listeners=[{"name": "x"}])),
            [
                (LISTENER + ".address", "required key 'address' is missing"),
                (LISTENER + ".filter_chains", "required key 'filter_chains' is missing"),
            ],
        )
        self.assertOnlyProblem(document(listeners=[]), "servers[0].listeners", "[] is empty")


class FilterChainTests(ConfigAssertions, SynchronousTestCase):
    """
    Filter chains: several per listener with C{filter_chain_match}, and TLS contexts.
    """

    def test_severalChains(self) -> None:
        """
        Chains with different matches are kept in order with their match and names.
        """
        chains = [
            {"name": "web", "filter_chain_match": {"protocols": ["http1"]}, "filters": [tcpProxy()]},
            {
                "filter_chain_match": {
                    "server_names": ["API.Example.com", "*.example.org"],
                    "transport_protocol": "tls",
                    "application_protocols": ["h2"],
                },
                "filters": [tcpProxy()],
            },
            {"match": "", "filters": [tcpProxy()]},
        ]
        front = self.load(document(listeners=[listener(filter_chains=chains)])).listeners[0]
        self.assertEqual([chain.name for chain in front.filterChains], ["web", "front#1", "front#2"])
        self.assertEqual(front.filterChains[0].match.protocols, ("http1",))
        second = front.filterChains[1].match
        self.assertEqual(second.serverNames, ("api.example.com", "*.example.org"))
        self.assertEqual((second.transportProtocol, second.applicationProtocols), ("tls", ("h2",)))

    def test_badChains(self) -> None:
        """
        Identical matches, bad match values and MOSN's non-empty C{match} string are errors.
        """
        same = {"filter_chain_match": {"protocols": ["raw", "http1"]}, "filters": [tcpProxy()]}
        swapped = {"filter_chain_match": {"protocols": ["http1", "raw"]}, "filters": [tcpProxy()]}
        self.assertOnlyProblem(
            document(listeners=[listener(filter_chains=[same, swapped])]),
            LISTENER + ".filter_chains[1]",
            "matches the same connections as " + CHAIN,
        )
        cases = [
            ({"protocols": ["http3"]}, "protocols", "'http3' is not a sniffed protocol"),
            ({"transport_protocol": "ssl"}, "transport_protocol", "'ssl' is not a valid transport protocol"),
            ({"server_names": ["bad name"]}, "server_names[0]", "'bad name' is not a server name"),
            (
                {"server_names": ["a.com"], "transport_protocol": "raw_buffer"},
                "transport_protocol",
                "'raw_buffer'",
            ),
        ]
        for match, key, fragment in cases:
            chain = {"filter_chain_match": match, "filters": [tcpProxy()]}
            self.assertOnlyProblem(
                document(listeners=[listener(filter_chains=[chain])]),
                f"{CHAIN}.filter_chain_match.{key}",
                fragment,
            )
        chain = {"match": "http", "filters": [tcpProxy()]}
        self.assertOnlyProblem(
            document(listeners=[listener(filter_chains=[chain])]), CHAIN + ".match", "expected ''"
        )

    def test_plaintextTLSContext(self) -> None:
        """
        C{tls_context} C{{}} or with C{status: false} means plaintext, as in MOSN.
        """
        for context in ({}, {"status": False}, {"status": False, "cert_chain": "c.pem"}):
            chain = {"tls_context": context, "filters": [tcpProxy()]}
            self.assertIsNone(
                self.load(document(listeners=[listener(filter_chains=[chain])]))
                .listeners[0]
                .filterChains[0]
                .tls
            )

    def test_tlsContextModel(self) -> None:
        """
        The TLS model is parsed in full.
        """
        context = {
            "status": True,
            "server_name": "example.com",
            "cert_chain": "cert.pem",
            "private_key": "-----BEGIN PRIVATE KEY-----\nsecret",
            "verify_client": True,
            "ca_cert": "ca.pem",
            "min_version": "tlsv1_2",
            "alpn": "http/1.1",
        }
        chain = {"tls_context": context, "filters": [tcpProxy()]}
        tls = (
            self.load(document(listeners=[listener(filter_chains=[chain])])).listeners[0].filterChains[0].tls
        )
        assert tls is not None
        self.assertEqual(
            (tls.status, tls.serverName, tls.certChain, tls.verifyClient),
            (True, "example.com", "cert.pem", True),
        )
        self.assertEqual((tls.minVersion, tls.maxVersion, tls.alpn), ("TLSv1_2", "", ("http/1.1",)))


class NetworkFilterTests(ConfigAssertions, SynchronousTestCase):
    """
    C{tcp_proxy} and C{proxy}, and the shapes a chain's filter list may take.
    """

    def test_tcpRoutes(self) -> None:
        """
        MOSN's untagged route keys (Go field names, any case) become networks and port ranges.
        """
        route = {
            "cluster": "backend",
            "SourceAddrs": [{"Address": "10.1.2.3", "Length": 8}, {"address": "::1"}],
            "destinationaddrs": [{"Address": "192.168.0.0", "Length": 16}],
            "SourcePort": "1000-2000,3000",
            "DestinationPort": "8080",
        }
        doc = document(
            listeners=[
                listener(filter_chains=[{"filters": [{"type": "tcp_proxy", "config": {"routes": [route]}}]}])
            ]
        )
        proxy = self.load(doc).listeners[0].filterChains[0].filters[0]
        assert isinstance(proxy, TCPProxyConfig)
        self.assertIsNone(proxy.cluster)
        [parsed] = proxy.routes
        self.assertEqual(
            parsed.sourceAddrs, (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
        )
        self.assertEqual(parsed.destinationAddrs, (ipaddress.ip_network("192.168.0.0/16"),))
        self.assertEqual(
            (parsed.sourcePorts, parsed.destinationPorts), (((1000, 2000), (3000, 3000)), ((8080, 8080),))
        )

    def test_tcpProxyErrors(self) -> None:
        """
        Missing targets, unknown clusters, bad routes and attempts out of range.
        """
        routes = FILTER + ".config.routes[0]"
        cases = [
            ({}, FILTER + ".config", "tcp_proxy needs 'cluster' or 'routes'"),
            (
                {"cluster": "backnd"},
                FILTER + ".config.cluster",
                "unknown cluster 'backnd' (did you mean 'backend'?)",
            ),
            (
                {"cluster": "backend", "max_connect_attempts": 11},
                FILTER + ".config.max_connect_attempts",
                "from 1 to 10",
            ),
            ({"routes": [{"cluster": "nope"}]}, routes + ".cluster", "unknown cluster 'nope'"),
            (
                {"routes": [{"cluster": "backend", "source_addrs": []}]},
                routes + ".source_addrs",
                "(did you mean 'SourceAddrs'?)",
            ),
            (
                {"routes": [{"cluster": "backend", "SourcePort": "80-"}]},
                routes + ".SourcePort",
                "'80-' is not a port list",
            ),
            (
                {"routes": [{"cluster": "backend", "SourceAddrs": [{"Address": "10.0.0.0", "Length": 33}]}]},
                routes + ".SourceAddrs[0].Length",
                "from 0 to 32",
            ),
            (
                {"routes": [{"cluster": "backend", "SourceAddrs": [{"Address": "10.0.0"}]}]},
                routes + ".SourceAddrs[0].Address",
                "'10.0.0' is not an IP address",
            ),
        ]
        for config, path, fragment in cases:
            doc = document(
                listeners=[listener(filter_chains=[{"filters": [{"type": "tcp_proxy", "config": config}]}])]
            )
            self.assertOnlyProblem(doc, path, fragment)

    def test_filterTypes(self) -> None:
        """
        Not-supported MOSN filters are named; unknown ones get a did-you-mean.
        """
        for kind, fragment in [
            ("udp_proxy", "network filter 'udp_proxy' is a MOSN filter that meshproxy does not support yet"),
            ("fault_inject", "'fault_inject' is a MOSN filter"),
            ("tcp_prxy", "unknown network filter 'tcp_prxy' (did you mean 'tcp_proxy'?)"),
        ]:
            doc = document(listeners=[listener(filter_chains=[{"filters": [{"type": kind, "config": {}}]}])])
            self.assertOnlyProblem(doc, FILTER + ".type", fragment)

    def test_chainShapes(self) -> None:
        """
        One filter, or C{proxy} with fallback then C{tcp_proxy}; nothing else.
        """
        self.assertOnlyProblem(
            document(listeners=[listener(filter_chains=[{"filters": []}])]), CHAIN + ".filters", "[] is empty"
        )
        twice = [{"filters": [tcpProxy(), tcpProxy()]}]
        self.assertOnlyProblem(
            document(listeners=[listener(filter_chains=twice)]), CHAIN + ".filters", "expected exactly one"
        )

    def test_unimplementedFilterRejectedOnce(self) -> None:
        """
        A valid filter outside L{filters.IMPLEMENTED_NETWORK_FILTERS} is parsed in full and then
        rejected with exactly one error (both filters are implemented today, so narrow the set).
        """
        self.assertEqual(filters.IMPLEMENTED_NETWORK_FILTERS, frozenset({"tcp_proxy", "proxy"}))
        self.patch(filters, "IMPLEMENTED_NETWORK_FILTERS", frozenset({"tcp_proxy"}))
        doc = self._httpDocument({})
        self.assertOnlyProblem(
            doc, FILTER + ".type", "network filter 'proxy' (HTTP/1 L7 proxy) is not supported yet"
        )
        doc["servers"][0]["listeners"][0]["filter_chains"][0]["filters"] *= 2
        notSupported = [path for path, message in self.problems(doc) if "is not supported yet" in message]
        self.assertEqual(notSupported, [FILTER + ".type"])

    def test_proxyModel(self) -> None:
        """
        Once C{proxy} is implemented, its model holds every setting, and the fallback pair is accepted.
        """
        self.patch(filters, "IMPLEMENTED_NETWORK_FILTERS", frozenset({"tcp_proxy", "proxy"}))
        extend = {"Http1": {"max_header_size": 8192, "max_request_body_size": 1048576}}
        doc = self._httpDocument(
            {"downstream_protocol": "Auto", "upstream_protocol": "Http1", "extend_config": extend}
        )
        proxy = self.load(doc).listeners[0].filterChains[0].filters[0]
        assert isinstance(proxy, HTTPProxyConfig)
        self.assertEqual(
            (proxy.downstreamProtocol, proxy.upstreamProtocol, proxy.routerConfigName),
            ("Auto", "Http1", "web"),
        )
        self.assertEqual(
            (proxy.extendConfig.maxHeaderSize, proxy.extendConfig.maxRequestBodySize), (8192, 1048576)
        )
        doc = self._httpDocument({"fallback_for_unknown_protocol": True})
        doc["servers"][0]["listeners"][0]["filter_chains"][0]["filters"].append(tcpProxy())
        kinds = [type(item) for item in self.load(doc).listeners[0].filterChains[0].filters]
        self.assertEqual(kinds, [HTTPProxyConfig, TCPProxyConfig])

    def test_proxyErrors(self) -> None:
        """
        Everything of a C{proxy} filter is validated, on top of the one not-supported error.
        """
        self.patch(filters, "IMPLEMENTED_NETWORK_FILTERS", frozenset({"tcp_proxy", "proxy"}))
        config = FILTER + ".config"
        cases = [
            (
                {"router_config_name": "wbe"},
                config + ".router_config_name",
                "unknown router 'wbe' (did you mean 'web'?)",
            ),
            (
                {"downstream_protocol": "Http2"},
                config + ".downstream_protocol",
                "protocol 'Http2' is not supported yet",
            ),
            ({"downstream_protocol": "http1"}, config + ".downstream_protocol", "(did you mean 'Http1'?)"),
            ({"upstream_protocol": "dubbo"}, config + ".upstream_protocol", "'dubbo' is not supported yet"),
            (
                {"extend_config": {"Http2": {}}},
                config + ".extend_config.Http2",
                "meshproxy reads only 'Http1'",
            ),
            (
                {"extend_config": {"Http1": {"max_header_size": 10}}},
                config + ".extend_config.Http1.max_header_size",
                "from 1024",
            ),
            ({"fallback_for_unknown_protocol": True}, FILTER[: -len("[0]")], "no 'tcp_proxy' filter follows"),
        ]
        for settings, path, fragment in cases:
            self.assertOnlyProblem(self._httpDocument(settings), path, fragment)
        doc = self._httpDocument({})
        doc["servers"][0]["listeners"][0]["filter_chains"][0]["filters"].append(tcpProxy())
        self.assertOnlyProblem(doc, CHAIN + ".filters", '"fallback_for_unknown_protocol": true')

    def _httpDocument(self, settings: dict[str, Any]) -> dict[str, Any]:
        config = {"downstream_protocol": "Http1", "router_config_name": "web", **settings}
        router = {
            "router_config_name": "web",
            "virtual_hosts": [
                {
                    "domains": ["*"],
                    "routers": [{"match": {"prefix": "/"}, "route": {"cluster_name": "backend"}}],
                }
            ],
        }
        chains = [{"filters": [{"type": "proxy", "config": config}]}]
        return document(listeners=[listener(filter_chains=chains)], server={"routers": [router]})


class ClusterTests(ConfigAssertions, SynchronousTestCase):
    """
    Clusters: types, load balancers, hosts and circuit breakers.
    """

    def test_model(self) -> None:
        """
        Every cluster setting is read; hosts are split by family.
        """
        hosts = [
            {"address": "10.0.0.1:80", "weight": 3, "hostname": "a"},
            {"address": "[::1]:81"},
            {"address": "unix:/run/b.sock"},
        ]
        breakers = [{"max_connections": 10, "max_pending_requests": 20, "max_requests": 30, "max_retries": 0}]
        doc = document(
            clusters=[
                cluster(
                    type="STATIC",
                    lb_type="LB_RANDOM",
                    hosts=hosts,
                    connect_timeout="2s",
                    conn_buffer_limit_bytes=32768,
                    max_request_per_conn=5,
                    circuit_breakers=breakers,
                    tls_context={},
                )
            ]
        )
        backend = self.load(doc).clusters[0]
        self.assertEqual((backend.type, backend.lbType, backend.connectTimeout), ("STATIC", "LB_RANDOM", 2.0))
        self.assertEqual((backend.connBufferLimitBytes, backend.maxRequestPerConn), (32768, 5))
        self.assertEqual(backend.circuitBreakers, CircuitBreakersConfig(10, 20, 30, 0))
        self.assertEqual(
            [(h.host, h.port, h.family, h.weight, h.hostname) for h in backend.hosts],
            [
                ("10.0.0.1", 80, "ipv4", 3, "a"),
                ("::1", 81, "ipv6", 1, None),
                ("/run/b.sock", 0, "unix", 1, None),
            ],
        )

    def test_errors(self) -> None:
        """
        Each bad cluster setting names itself and what was expected.
        """
        path = "cluster_manager.clusters[0]"
        cases = [
            ({"type": "ORIGINAL_DST"}, ".type", "original-destination forwarding"),
            ({"type": "EDS"}, ".type", "xDS"),
            ({"type": "SIMPEL"}, ".type", "(did you mean 'SIMPLE'?)"),
            ({"lb_type": "LB_PEAK_EWMA"}, ".lb_type", "load balancer type 'LB_PEAK_EWMA' is not supported yet"),
            ({"lb_type": "LB_RANDON"}, ".lb_type", "(did you mean 'LB_RANDOM'?)"),
            ({"conn_buffer_limit_bytes": 100}, ".conn_buffer_limit_bytes", "from 1024 to 1048576"),
            ({"hosts": []}, ".hosts", "[] is empty"),
            ({"hosts": [{"address": "10.0.0.1:80", "weight": 129}]}, ".hosts[0].weight", "from 1 to 128"),
            (
                {"hosts": [{"address": "example.com:80"}]},
                ".hosts[0].address",
                "resolving host names needs cluster type STRICT_DNS",
            ),
            (
                {"hosts": [{"address": "10.0.0.1:80"}, {"address": "10.0.0.1:80"}]},
                ".hosts[1].address",
                "listed twice",
            ),
            (
                {"hosts": [{"address": "10.0.0.1:80", "metadata": {"filter_metadata": {"mosn.lb": {"v": 1}}}}]},
                '.hosts[0].metadata.filter_metadata["mosn.lb"].v',
                "1 is not a string",
            ),
            ({"circuit_breakers": {"max_connections": 1}}, ".circuit_breakers", "is not a list"),
            ({"circuit_breakers": [{}, {}]}, ".circuit_breakers", "expected at most one"),
            (
                {"circuit_breakers": [{"max_connections": 0}]},
                ".circuit_breakers[0].max_connections",
                "0 is out of range",
            ),
            ({"tls_context": {"status": True, "cert_chain": "c.pem"}}, ".tls_context.private_key", "needs both"),
            ({"tls_context": {"status": True, "verify_client": True}}, ".tls_context.verify_client", "listeners"),
            (
                {"lb_subset_config": {"fall_back_policy": 2}},
                ".lb_subset_config.fall_back_policy",
                "needs a non-empty default_subset",
            ),
        ]
        for overrides, suffix, fragment in cases:
            self.assertOnlyProblem(document(clusters=[cluster(**overrides)]), path + suffix, fragment)

    def test_names(self) -> None:
        """
        Cluster names are required and unique.
        """
        self.assertOnlyProblem(
            document(clusters=[cluster(), cluster()]),
            "cluster_manager.clusters[1].name",
            "duplicate cluster name 'backend'",
        )
        self.assertEqual(
            self.problems(document(clusters=[{"hosts": [{"address": "10.0.0.1:80"}]}])),
            [
                ("cluster_manager.clusters[0].name", "required key 'name' is missing"),
                (
                    FILTER + ".config.cluster",
                    "unknown cluster 'backend': cluster_manager.clusters defines no clusters",
                ),
            ],
        )


class AdminTests(ConfigAssertions, SynchronousTestCase):
    """
    The admin endpoint: MOSN's socket address or meshproxy's endpoint string.
    """

    def test_endpoints(self) -> None:
        """
        Each form gives a Twisted endpoint string.
        """
        table = [
            (
                {"address": {"socket_address": {"address": "0.0.0.0", "port_value": 34901}}},
                "tcp:34901:interface=0.0.0.0",
            ),
            (
                {"address": {"socket_address": {"address": "::1", "port_value": 80}}},
                "tcp6:80:interface=\\:\\:1",
            ),
            ({"address": {"socket_address": {"port_value": 0}}}, "tcp:0"),
            ({"endpoint": "unix:/run/admin.sock"}, "unix:/run/admin.sock"),
            ({"endpoint": "127.0.0.1:9000"}, "tcp:9000:interface=127.0.0.1"),
        ]
        for admin, endpoint in table:
            self.assertEqual(self.load(document(admin=admin)).admin.endpoint, endpoint)

    def test_errors(self) -> None:
        """
        Bad admin settings are reported at their path.
        """
        socket = "admin.address.socket_address"
        self.assertOnlyProblem(
            document(admin={"address": {"socket_address": {"address": "localhost", "port_value": 1}}}),
            socket + ".address",
            "'localhost' is not an IP address",
        )
        self.assertOnlyProblem(
            document(admin={"address": {"socket_address": {"port_value": 70000}}}),
            socket + ".port_value",
            "70000",
        )
        self.assertOnlyProblem(document(admin={"endpoint": "ssl:9901"}), "admin.endpoint", "tls_context")
        both = {"endpoint": "tcp:1", "address": {"socket_address": {"port_value": 1}}}
        self.assertOnlyProblem(document(admin=both), "admin", "not both")


class ReferenceExampleTests(ConfigAssertions, SynchronousTestCase):
    """
    MOSN's own example configurations (from the shared reference folder).
    """

    def example(self, name: str) -> Any:
        """
        The decoded example C{name}; skip if the reference folder is absent.
        """
        path = os.path.join(REFERENCE, name)
        if not os.path.exists(path):
            raise SkipTest(f"MOSN reference configs not found at {os.path.normpath(REFERENCE)}")
        with open(path, "rb") as f:
            return json.loads(f.read())

    def test_tcpProxySample(self) -> None:
        """
        The tcpproxy sample is rejected only for its listener key C{log_path}, which MOSN ignores.
        """
        sample = self.example("examples__codes__tcpproxy-sample__config.json")
        self.assertOnlyProblem(sample, "servers[0].listeners[0].log_path", "unknown key 'log_path'")
        del sample["servers"][0]["listeners"][0]["log_path"]
        config = self.load(sample)
        self.assertEqual(config.listeners[0].endpoint, "tcp:2045:interface=127.0.0.1")
        self.assertEqual(config.clusters[0].name, "serverCluster")

    def test_httpSample(self) -> None:
        """
        The HTTP sample loads as it is.
        """
        sample = self.example("examples__codes__http-sample__server_config.json")
        config = self.load(sample)
        self.assertEqual(config.admin.endpoint, "tcp:34902:interface=0.0.0.0")
        self.assertEqual(config.listeners[0].filterChains[0].filters[0].routerConfigName, "server_router")

    def test_canonicalConfig(self) -> None:
        """
        MOSN's default configuration (three C{proxy} listeners, one with a direct response) loads.
        """
        config = self.load(self.example("configs__mosn_config.json"))
        self.assertEqual(len(config.listeners), 3)
        self.assertEqual(config.admin.endpoint, "tcp:34901:interface=127.0.0.1")

    def test_fallbackExample(self) -> None:
        """
        The sniff-or-fallback example parses into a C{proxy} then C{tcp_proxy} chain.
        """
        sample = self.example("examples__codes__proxy-fallback-example__config.json")
        self.patch(filters, "IMPLEMENTED_NETWORK_FILTERS", frozenset({"tcp_proxy", "proxy"}))
        chain = self.load(sample).listeners[0].filterChains[0]
        self.assertEqual([item.filterType for item in chain.filters], ["proxy", "tcp_proxy"])


class ConfigDumpTests(ConfigAssertions, SynchronousTestCase):
    """
    L{configDump} gives the effective model as JSON-ready data, with private keys redacted.
    """

    def test_dump(self) -> None:
        """
        Defaults are filled in, filters carry their type, networks are strings, private keys are redacted.
        """
        tls = {"status": True, "cert_chain": "cert.pem", "private_key": "-----BEGIN PRIVATE KEY-----\nsecret"}
        route = {"cluster": "backend", "SourceAddrs": [{"Address": "10.0.0.0", "Length": 8}]}
        chain = {"tls_context": tls, "filters": [tcpProxy(routes=[route])]}
        dumped = configDump(self.load(document(listeners=[listener(filter_chains=[chain])])))
        text = json.dumps(dumped)
        self.assertNotIn("secret", text)
        dumpedChain = dumped["servers"][0]["listeners"][0]["filterChains"][0]
        self.assertEqual(dumpedChain["tls"]["privateKey"], "[redacted]")
        self.assertEqual(dumpedChain["tls"]["certChain"], "cert.pem")
        proxy = dumpedChain["filters"][0]
        self.assertEqual(
            (proxy["type"], proxy["idleTimeout"], proxy["routes"][0]["sourceAddrs"]),
            ("tcp_proxy", 90.0, ["10.0.0.0/8"]),
        )
        self.assertEqual(dumped["admin"], {"endpoint": "tcp:9901:interface=127.0.0.1"})
        self.assertEqual(dumped["clusters"][0]["circuitBreakers"]["maxRetries"], 3)
