"""
A memory-reactor harness for the HTTP connection manager (L{meshproxy.proxy.http}): the runtime is built
as L{meshproxy.service} builds it, clients and upstream connections are L{HalfCloseTransport}s, and
connection attempts are completed or failed by hand.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from meshproxy.cluster.cluster import ClusterSet
from meshproxy.cluster.pool import PoolSet
from meshproxy.config import HTTPProxyConfig
from meshproxy.http import HTTPLimits
from meshproxy.listeners import ListenerFactory
from meshproxy.proxy.http import HTTPServerConnection
from meshproxy.proxy.httpfilter import HTTPProxyFilter
from meshproxy.proxy.httpsettings import HTTPSettings
from meshproxy.proxy.upstream import UpstreamConnection, dialerFor
from meshproxy.routing.table import RouteTables
from meshproxy.service import httpSettings
from meshproxy.stats import StatsStore
from tests.support import HalfCloseTransport, configDocument, makeConfig

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
FORWARD = {"match": {"prefix": "/"}, "route": {"cluster_name": "backend", "timeout": "2s"}}


def httpListener(name: str = "l1", address: str = "127.0.0.1:8080", router: str = "r") -> dict[str, Any]:
    """
    A listener whose single chain is a C{proxy} filter using router C{router}.
    """
    proxy = {"type": "proxy", "config": {"downstream_protocol": "Http1", "router_config_name": router}}
    return {"name": name, "address": address, "filter_chains": [{"filters": [proxy]}]}


def httpDocument(
    entries: list[dict[str, Any]] | None = None, clusters: list[dict[str, Any]] | None = None, **cluster: Any
) -> dict[str, Any]:
    """
    A document with one HTTP proxy listener, router C{r} holding C{entries} (default: everything to
    C{backend} with a 2 s timeout) in one catch-all virtual host, and the default two-host cluster
    (with the extra cluster keys C{cluster}) unless C{clusters} is given.
    """
    if clusters is None:
        clusters = [
            {
                "name": "backend",
                "type": "SIMPLE",
                "lb_type": "LB_ROUNDROBIN",
                "hosts": [{"address": "127.0.0.1:9001"}, {"address": "127.0.0.1:9002"}],
                **cluster,
            }
        ]
    doc = configDocument(listeners=[httpListener()], clusters=clusters)
    virtualHost = {"name": "v", "domains": ["*"], "routers": entries if entries is not None else [FORWARD]}
    doc["servers"][0]["routers"] = [{"router_config_name": "r", "virtual_hosts": [virtualHost]}]
    return doc


class RecordingTransport(HalfCloseTransport):
    """
    A L{HalfCloseTransport} that also keeps each C{write} or C{writeSequence} call as one entry of
    C{writes}, so that tests can tell how many sends a response took.
    """

    def __init__(self, host: str = "10.0.0.1", port: int = 40000) -> None:
        super().__init__(host, port)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.writes.append(b"".join(data))
        super().writeSequence(data)


class ProxyHarness:
    """
    Mixin building one HTTP proxy filter on a L{MemoryReactorClock}, with the settings
    L{meshproxy.service} derives from the filter's config unless C{settings} is given.
    """

    def setUpProxy(
        self,
        entries: list[dict[str, Any]] | None = None,
        settings: HTTPSettings | None = None,
        clusters: list[dict[str, Any]] | None = None,
        **cluster: Any,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.stats = StatsStore()
        self.config = makeConfig(httpDocument(entries, clusters, **cluster))
        server = self.config.servers[0]
        listenerConfig = server.listeners[0]
        self.clusters = ClusterSet.fromConfig(self.config, self.reactor, self.stats)
        self.pools = PoolSet(self.reactor, dialerFor(HTTPLimits()))
        table = RouteTables.fromServer(server)["r"]
        filterConfig = listenerConfig.filterChains[0].filters[0]
        assert isinstance(filterConfig, HTTPProxyConfig)
        self.filter = HTTPProxyFilter(
            filterConfig, table, self.clusters, self.pools, self.reactor, self.stats, listenerConfig.name,
            settings or httpSettings(filterConfig),
        )
        self.listener = ListenerFactory(listenerConfig, [], self.reactor, self.stats)

    def connectClient(self, host: str = "10.0.0.1") -> tuple[HTTPServerConnection, RecordingTransport]:
        """
        A new client connection handed to the filter, as the sniffer does.
        """
        transport = RecordingTransport(host)
        downstream = self.listener.connectionOpened(transport)
        connection = self.filter.buildProtocol(downstream)
        transport.protocol = connection
        connection.makeConnection(transport)
        return connection, transport

    def connectUpstream(self, index: int = -1) -> tuple[UpstreamConnection, RecordingTransport]:
        """
        Complete the pending connection attempt number C{index}.
        """
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        upstream = factory.buildProtocol(None)
        assert isinstance(upstream, UpstreamConnection)
        transport = RecordingTransport("127.0.0.1", port)
        transport.protocol = upstream
        upstream.makeConnection(transport)
        return upstream, transport

    def failAttempt(self, index: int = -1, exc: Exception | None = None) -> None:
        """
        Fail the connection attempt number C{index} (refused unless C{exc}).
        """
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(self.reactor.connectors[index], Failure(exc or ConnectionRefusedError()))

    def closed(self, transport: HalfCloseTransport, clean: bool = True) -> None:
        """
        Report the end of C{transport}'s connection to the protocol it dispatches to.
        """
        transport.connected = False
        transport.protocol.connectionLost(Failure(ConnectionDone() if clean else ConnectionLost()))

    def pool(self) -> Any:
        """
        The pool of cluster C{backend}.
        """
        return self.pools.get(self.clusters.get("backend"))

    def counter(self, name: str, **labels: str) -> int:
        """
        A stat's current value.
        """
        return self.stats.value(name, **labels)


ONE_HOST = [{"name": "backend", "hosts": [{"address": "127.0.0.1:9001"}]}]


def oneHost(**cluster: Any) -> list[dict[str, Any]]:
    """
    Cluster C{backend} with the single host 127.0.0.1:9001 and the extra keys C{cluster}.
    """
    return [{"name": "backend", "hosts": [{"address": "127.0.0.1:9001"}], **cluster}]


def forwarded(
    method: bytes = b"GET",
    target: bytes = b"/",
    host: bytes = b"a",
    requestId: bytes = b"r1",
    fields: bytes = b"",
    framing: bytes = b"",
) -> bytes:
    """
    The request head the proxy sends upstream for a request from 10.0.0.1 with Host C{host}: the
    client's other C{fields} first, then the proxy's own, then the C{framing} field.
    """
    return (
        method + b" " + target + b" HTTP/1.1\r\n" + fields + b"Host: " + host
        + b"\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: " + host
        + b"\r\nVia: 1.1 meshproxy\r\nX-Request-Id: " + requestId + b"\r\n" + framing + b"\r\n"
    )


def request(method: bytes = b"GET", target: bytes = b"/", requestId: bytes = b"r1", fields: bytes = b"",
            version: bytes = b"1.1") -> bytes:
    """
    A client request head with Host C{a} and the given X-Request-Id.
    """
    return (method + b" " + target + b" HTTP/" + version + b"\r\nHost: a\r\nX-Request-Id: " + requestId
            + b"\r\n" + fields + b"\r\n")


def errorReply(status: bytes, reason: bytes, close: bool = False) -> bytes:
    """
    The local reply meshproxy makes for C{status} (e.g. C{b"502 Bad Gateway"}) and C{reason}.
    """
    body = status + b": " + reason + b"\n"
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\nx-meshproxy-error: " + reason
        + b"\r\nContent-Length: %d\r\n" % len(body) + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body
    )
