"""
Many idle connections: memory per connection stays small, and every one is closed at its
deadline (the resource-exhaustion checks of shared/reference/defaults.md).
"""

from __future__ import annotations

import os
import socket
import time

from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.harness import MeshProxy, freePort, waitFor
from tests.support import configDocument

CONNECTIONS = 2000


class IdleConnectionTests(SynchronousTestCase):
    """
    Clients that connect and then say nothing (or stop mid-head).
    """

    def test_manyIdleConnectionsBoundedAndClosed(self) -> None:
        """
        2000 silent connections cost under 10 KiB of proxy RSS each, and all are answered 408 and
        closed at the head deadline.
        """
        # The deadlines (15 s sniff + 1 s head) must outlast opening every connection, so that all
        # of them are open at once before the first is closed, even on a busy machine.
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        doc = configDocument(listeners=[{
            "name": "web", "address": f"127.0.0.1:{port}", "sniff_timeout": "15s",
            "filter_chains": [{"filters": [{"type": "proxy", "config": {
                "downstream_protocol": "Http1", "router_config_name": "r", "request_headers_timeout": "1s"}}]}],
        }])
        doc["servers"][0]["routers"] = [{"router_config_name": "r", "virtual_hosts": [{  # type: ignore[index]
            "name": "v", "domains": ["*"], "routers": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]}]
        proxy = MeshProxy(doc, workdir)
        proxy.start()
        self.addCleanup(proxy.stop)
        before = proxy.memory()["VmRSS"]
        sockets = []
        self.addCleanup(lambda: [s.close() for s in sockets])
        def active() -> int:
            return int(proxy.stats().get("meshproxy_downstream_cx_active{listener=web}", 0))

        # In batches smaller than the listen backlog (Twisted's default, 50), each one accepted
        # before the next: a client that connects faster than the proxy accepts would otherwise
        # overflow the backlog, and every dropped SYN costs the client a 1 s retransmission.
        for _ in range(CONNECTIONS // 40):
            for _ in range(40):
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            self.assertTrue(waitFor(lambda: active() == len(sockets), timeout=10))
        self.assertEqual(active(), CONNECTIONS)
        perConnection = (proxy.memory()["VmRSS"] - before) * 1024 / CONNECTIONS
        log.msg(f"{CONNECTIONS} idle connections: {perConnection:.0f} bytes of proxy RSS each")
        self.assertLess(perConnection, 10 * 1024, f"{perConnection:.0f} bytes per idle connection")
        started = time.monotonic()
        self.assertTrue(waitFor(
            lambda: proxy.stats().get("meshproxy_downstream_cx_active{listener=web}") == 0, timeout=25))
        self.assertLess(time.monotonic() - started, 20)
        sockets[0].settimeout(5)
        self.assertTrue(sockets[0].recv(100).startswith(b"HTTP/1.1 408"))
        self.assertEqual(
            proxy.stats()["meshproxy_http_downstream_rq_rejected_total{listener=web,reason=header_timeout}"],
            CONNECTIONS,
        )
