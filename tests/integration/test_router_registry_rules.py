"""
gorouter's rules for registry routes that meshproxy first got wrong (each test asserts gorouter's
behaviour): C{max_conns} per endpoint, C{endpoint_timeout} not retried and answered 502, an app's own
5xx never marking its instance failed, C{max_attempts} bounding dial retries.
"""

from __future__ import annotations

import threading
import time

from tests.integration.clusterbackends import GATED, HANG
from tests.integration.test_router_registry_more import (
    APP, RegistryTestCase, freePort, get, natsPublish, registration, waitFor,
)


def failOn5(connection, request):
    """503 for /fail, else 200; names the backend."""
    connection.readBody(request)
    status = 503 if request.target == "/fail" else 200
    connection.respond(status, b"%d" % status, [("X-Backend", request.backend)], close=not request.keepAlive,
                       reason="OK" if status == 200 else "Service Unavailable")
    return request.keepAlive


class GorouterRuleTests(RegistryTestCase):
    """
    Registry routes follow gorouter where meshproxy's own defaults differ.
    """

    def test_bug1_maxConnsPerEndpoint(self):
        """max_conns: 1 and one endpoint holding a request: the next requests go to the other one."""
        nats = self.natsServer()
        slow = self.clusterBackend("slow", mode=GATED)
        fast = self.clusterBackend("fast")
        _, port, _, _ = self.startProxy([nats.port], backends={"max_conns": 1})
        for backend in (slow, fast):
            natsPublish(nats.address, "router.register", registration(backend, "mc.example.com"))
        self.assertTrue(waitFor(lambda: len(self.routes().get("mc.example.com", [])) == 2, timeout=5))
        held = []
        for _ in range(3):  # until one request is held by the slow endpoint
            if slow.count():
                break
            thread = threading.Thread(target=lambda: held.append(get(port, "mc.example.com")), daemon=True)
            thread.start()
            time.sleep(0.3)
        self.assertEqual(slow.count(), 1)
        try:
            answers = []
            for _ in range(4):  # one at a time, so "fast" is always free
                thread = threading.Thread(target=lambda: answers.append(get(port, "mc.example.com")), daemon=True)
                thread.start()
                thread.join(1.0)
            self.assertEqual(slow.count(), 1, "a second concurrent request went to the endpoint at max_conns")
            self.assertEqual([(s, h.get("x-backend")) for s, h, _ in answers], [(200, "fast")] * 4)
        finally:
            slow.release()

    def test_bug2_endpointTimeout(self):
        """endpoint_timeout: one try, 502 endpoint_failure, after about endpoint_timeout."""
        nats = self.natsServer()
        hanging = [self.clusterBackend(f"h{i}", mode=HANG) for i in range(2)]
        _, port, _, _ = self.startProxy([nats.port], endpoint_timeout="1s")
        for backend in hanging:
            natsPublish(nats.address, "router.register", registration(backend, "hang.example.com"))
        self.assertTrue(waitFor(lambda: len(self.routes().get("hang.example.com", [])) == 2, timeout=5))
        started = time.monotonic()
        status, headers, body = get(port, "hang.example.com")
        took = time.monotonic() - started
        self.assertEqual(sum(b.count() for b in hanging), 1, "the timed-out GET was sent again")
        self.assertEqual((status, body), (502, b"502 Bad Gateway: Registered endpoint failed to handle the request.\n"))
        self.assertLess(took, 2.5)

    def test_bug3_appStatusMarksEndpointFailed(self):
        """An app's own 503 does not take its instance out of the rotation."""
        nats = self.natsServer()
        backends = [self.backend(name, failOn5) for name in ("a", "b")]
        _, port, _, _ = self.startProxy([nats.port])
        for backend in backends:
            natsPublish(nats.address, "router.register", registration(backend, "app.example.com"))
        self.assertTrue(waitFor(lambda: len(self.routes().get("app.example.com", [])) == 2, timeout=5))
        self.assertEqual(get(port, "app.example.com", "/fail")[0], 503)
        seen = [get(port, "app.example.com")[1].get("x-backend") for _ in range(6)]
        self.assertEqual(sorted(set(seen)), ["a", "b"], seen)

    def test_bug4_maxAttemptsOne(self):
        """backends.max_attempts: 1: a dial error is not retried (gorouter's Go default)."""
        nats = self.natsServer()
        good = self.clusterBackend("good")
        _, port, _, _ = self.startProxy([nats.port], backends={"max_attempts": 1})
        for i in range(10):
            uri = f"r{i}.example.com"
            natsPublish(nats.address, "router.register", {"host": "127.0.0.1", "port": freePort(), "uris": [uri], "app": APP})
            natsPublish(nats.address, "router.register", registration(good, uri))
        self.assertTrue(waitFor(lambda: len(self.routes()) == 10, timeout=5))
        firsts = [get(port, f"r{i}.example.com")[0] for i in range(10)]
        self.assertIn(502, firsts, "ten first requests, none failed: every dial error was retried")
