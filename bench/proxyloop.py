#!/usr/bin/env python3
"""
The HTTP connection manager alone: requests through HTTPServerConnection and a pooled
UpstreamConnection on in-memory transports, on a memory reactor.  No sockets, no kernel, no
reactor I/O: what is left is meshproxy's own Python (and the codec) per proxied request, the part
of the cost that code changes can move.  Prints microseconds per request.

    .venv/bin/python bench/proxyloop.py [--requests 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import MemoryReactorClock  # noqa: E402

from meshproxy.config import parseConfig  # noqa: E402
from meshproxy.service import MeshProxyService  # noqa: E402

REQUEST = (
    b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n"
    b"Accept-Encoding: gzip\r\nAccept-Language: en\r\nCookie: a=b\r\nX-Request-Id: abc-123\r\n\r\n"
)
# What wrk sends in bench/run.py: the request line and Host, nothing else.
WRK_REQUEST = b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 00:00:00 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 17\r\nLast-Modified: Sun, 22 Nov 2026 00:00:00 GMT\r\n"
    b"Connection: keep-alive\r\nETag: \"abc\"\r\nAccept-Ranges: bytes\r\n\r\nhello from nginx\n"
)


class SinkTransport:
    """
    The least a transport must do for the connection manager: take writes and producers.
    """

    disconnecting = False
    bufferSize = 65536

    def __init__(self) -> None:
        self.written = 0
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writeSequence(self, data: Any) -> None:
        for piece in data:
            self.written += len(piece)

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "10.0.0.1", 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8080)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnecting = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--wrk", action="store_true", help="the request wrk sends in bench/run.py (Host only)")
    args = parser.parse_args()
    request = WRK_REQUEST if args.wrk else REQUEST
    config = parseConfig(json.dumps({
        "servers": [{"routers": [{"router_config_name": "r", "virtual_hosts": [
            {"name": "v", "domains": ["*"], "routers": [{"match": {"prefix": "/"}, "route": {"cluster_name": "b"}}]}]}],
            "listeners": [{"name": "l", "address": "127.0.0.1:8080", "filter_chains": [{"filters": [
                {"type": "proxy", "config": {"downstream_protocol": "Http1", "router_config_name": "r",
                                              "max_requests_per_connection": 1 << 30}}]}]}]}],
        "cluster_manager": {"clusters": [{"name": "b", "max_request_per_conn": 1 << 30,
                                          "hosts": [{"address": "127.0.0.1:9001"}]}]},
    }))
    reactor = MemoryReactorClock()
    service = MeshProxyService(config, reactor)
    listener = service.listenerServices[0].listenerFactory
    clientT = SinkTransport()
    downstream = listener.connectionOpened(clientT)
    downstream.protocol = "http1"
    chain = listener.chains[0]
    connection = chain.buildProtocol(downstream)
    clientT.protocol = connection
    connection.makeConnection(clientT)
    # The first request dials; complete it by hand, then every later request reuses it.
    connection.dataReceived(request)
    factory = reactor.tcpClients[-1][2]
    upstream = factory.buildProtocol(None)
    upT = SinkTransport()
    upstream.makeConnection(upT)
    upstream.dataReceived(RESPONSE)
    started = time.perf_counter()
    for _ in range(args.requests):
        connection.dataReceived(request)
        upstream.dataReceived(RESPONSE)
    elapsed = time.perf_counter() - started
    answered = service.stats.value("http_downstream_rq_xx_total", listener="l", code_class="2xx")
    if answered != args.requests + 1 or len(reactor.tcpClients) != 1:
        raise SystemExit(f"only {answered} of {args.requests + 1} requests were answered")
    print(f"{args.requests} proxied requests in {elapsed:.2f} s: {elapsed / args.requests * 1e6:.1f} us each "
          f"({args.requests / elapsed:.0f}/s) of meshproxy Python, no I/O")


if __name__ == "__main__":
    main()
