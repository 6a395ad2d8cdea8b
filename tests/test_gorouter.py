"""
Tests for L{meshproxy.gorouter}: the registry runtime's NATS conversation, pruning and its
suspension, the start delay, request resolution, gorouter's headers and the sticky cookie.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import attrs
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.cluster.pool import PoolSet
from meshproxy.config.registry import NATSConfig, RouterRegistryConfig
from meshproxy.gorouter import RegistryDecision, RouterRegistryRuntime
from meshproxy.http import HTTPLimits
from meshproxy.nats import NATSMessage
from meshproxy.proxy.upstream import dialerFor
from meshproxy.routing.registrymsg import RouterReply
from meshproxy.stats import StatsStore

APP = "5c8a2e1b-7d3f-4e2a-9b1c-0f6e5d4c3b2a"


class FakeNATS:
    """
    The parts of L{meshproxy.nats.NATSClient} the runtime uses.
    """

    def __init__(self) -> None:
        self.connected = False
        self.subscriptions: dict[str, Callable[[NATSMessage], object]] = {}
        self.published: list[tuple[str, bytes]] = []
        self.callbacks: list[Callable[[], object]] = []
        self.started = self.stopped = False

    def addConnectedCallback(self, fn: Callable[[], object]) -> None:
        self.callbacks.append(fn)

    def subscribe(self, subject: str, callback: Callable[[NATSMessage], object], queue: str | None = None) -> int:
        self.subscriptions[subject] = callback
        return len(self.subscriptions)

    def publish(self, subject: str, payload: bytes, reply: str | None = None) -> None:
        self.published.append((subject, payload))

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def connect(self) -> None:
        self.connected = True
        for fn in self.callbacks:
            fn()

    def deliver(self, subject: str, payload: Any, reply: str | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.subscriptions[subject](NATSMessage(subject=subject, sid=1, reply=reply, payload=data))


def registration(port: int, *uris: str, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "uris": list(uris), "app": APP,
            "private_instance_id": f"id-{port}", "private_instance_index": str(port % 10), **extra}


class RuntimeTests(SynchronousTestCase):
    """
    The runtime driven by a fake NATS client on a memory reactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.nats = FakeNATS()
        self.stats = StatsStore()
        config = RouterRegistryConfig(
            nats=NATSConfig(hosts=(("127.0.0.1", 4222),)), startResponseDelay=2.0, dropletStaleThreshold=10.0,
            pruneInterval=1.0, localIP="10.0.0.9",
        )
        pools = PoolSet(self.reactor, dialerFor(HTTPLimits()))
        self.runtime = RouterRegistryRuntime(config, self.reactor, self.stats, pools, nats=self.nats, routerId="0-x")
        self.runtime.startService()
        self.addCleanup(self.runtime.stopService)

    def test_startAndGreet(self) -> None:
        """
        C{router.start} goes out on every connect; C{router.greet} is answered with the same payload.
        """
        self.nats.connect()
        self.nats.deliver("router.greet", b"", reply="_INBOX.1")
        self.assertEqual([subject for subject, _ in self.nats.published], ["router.start", "_INBOX.1"])
        payload = json.loads(self.nats.published[0][1])
        self.assertEqual(payload, {"id": "0-x", "hosts": ["10.0.0.9"], "minimumRegisterIntervalInSeconds": 2,
                                   "pruneThresholdInSeconds": 10})

    def test_startDelay(self) -> None:
        """
        Healthy (and listeners released) only once the start delay is over.
        """
        released: list[bool] = []
        self.runtime.whenStarted(lambda: released.append(True))
        self.assertFalse(self.runtime.routerHealthy())
        self.reactor.advance(2.0)
        self.assertEqual(released, [True])
        self.assertTrue(self.runtime.routerHealthy())

    def test_registerResolveUnregister(self) -> None:
        """
        A registration becomes a route with a cluster of its endpoints; gorouter's replies otherwise.
        """
        self.nats.deliver("router.register", registration(9001, "app.example.com"))
        decision = self.runtime.resolve(b"app.example.com:443", b"/x?y", [], "10.1.1.1")
        assert isinstance(decision, RegistryDecision)
        self.assertEqual([h.address for h in decision.cluster.hosts], ["127.0.0.1:9001"])
        self.assertIs(self.runtime.resolve(b"APP.example.com", b"/", [], None).route, decision.route)  # type: ignore[union-attr]
        unknown = self.runtime.resolve(b"nope.example.com", b"/", [], None)
        assert isinstance(unknown, RouterReply)
        self.assertEqual((unknown.status, dict(unknown.headers)[b"X-Cf-Routererror"]), (404, b"unknown_route"))
        self.nats.deliver("router.unregister", registration(9001, "app.example.com"))
        self.assertIsInstance(self.runtime.resolve(b"app.example.com", b"/", [], None), RouterReply)

    def test_endpointsFollowRegistrations(self) -> None:
        """
        A live route's cluster gains and loses hosts with the registrations, keeping the host objects.
        """
        self.nats.deliver("router.register", registration(9001, "app.example.com"))
        decision = self.runtime.resolve(b"app.example.com", b"/", [], None)
        assert isinstance(decision, RegistryDecision)
        first = decision.cluster.hosts[0]
        self.nats.deliver("router.register", registration(9002, "app.example.com"))
        self.assertEqual([h.address for h in decision.cluster.hosts], ["127.0.0.1:9001", "127.0.0.1:9002"])
        self.assertIs(decision.cluster.hosts[0], first)

    def test_badMessageCounted(self) -> None:
        """
        A message gorouter would reject is dropped and counted.
        """
        self.nats.deliver("router.register", {"host": "127.0.0.1", "port": "80", "uris": ["a"]})
        self.assertEqual(self.stats.value("router_registry_bad_messages_total"), 1)
        self.assertEqual(self.stats.value("router_registry_routes"), 0)

    def test_pruneSuspendedWhileDisconnected(self) -> None:
        """
        Stale endpoints are pruned while NATS is up; not while it is down; and not right after it
        returns (every endpoint counts as seen then).
        """
        self.nats.connect()
        self.nats.deliver("router.register", registration(9001, "a.example.com"))
        self.nats.connected = False
        self.reactor.advance(15)
        self.assertEqual(self.stats.value("router_registry_routes"), 1)
        self.nats.connected = True
        self.reactor.advance(1)
        self.assertEqual(self.stats.value("router_registry_routes"), 1)
        self.reactor.advance(11)
        self.assertEqual(self.stats.value("router_registry_routes"), 0)
        self.assertEqual(self.stats.value("router_registry_pruned_total"), 1)

    def test_instancePinningAndSticky(self) -> None:
        """
        C{X-CF-APP-INSTANCE} gives that host only; both session cookies prefer the cookie's instance.
        """
        for port in (9001, 9002):
            self.nats.deliver("router.register", registration(port, "app.example.com"))
        pinned = self.runtime.resolve(b"app.example.com", b"/", [(b"X-CF-APP-INSTANCE", APP.encode() + b":2")], None)
        assert isinstance(pinned, RegistryDecision)
        self.assertEqual((pinned.preferred.address, pinned.only), ("127.0.0.1:9002", True))
        sticky = self.runtime.resolve(
            b"app.example.com", b"/", [(b"Cookie", b"JSESSIONID=a; __VCAP_ID__=id-9001")], None
        )
        assert isinstance(sticky, RegistryDecision)
        self.assertEqual((sticky.preferred.address, sticky.only, sticky.sticky), ("127.0.0.1:9001", False, b"id-9001"))
        alone = self.runtime.resolve(b"app.example.com", b"/", [(b"Cookie", b"__VCAP_ID__=id-9001")], None)
        assert isinstance(alone, RegistryDecision)
        self.assertIsNone(alone.preferred)

    def test_stickyCookie(self) -> None:
        """
        A session cookie in the response gets C{__VCAP_ID__} with its attributes; a sticky request served
        where it asked gets none; one served elsewhere gets the new instance's.
        """
        self.nats.deliver("router.register", registration(9001, "app.example.com/api"))
        decision = self.runtime.resolve(b"app.example.com", b"/api/x", [], None)
        assert isinstance(decision, RegistryDecision)
        host = decision.cluster.hosts[0]
        fields = self.runtime.responseFields(
            decision, host, [(b"Set-Cookie", b"JSESSIONID=s1; Path=/; Secure; SameSite=Lax")], b"rid"
        )
        self.assertEqual(fields, [
            (b"Set-Cookie", b"__VCAP_ID__=id-9001; Path=/api; SameSite=Lax; HttpOnly; Secure"),
            (b"X-Vcap-Request-Id", b"rid"),
        ])
        decision.sticky = b"id-9001"
        self.assertEqual(self.runtime.responseFields(decision, host, [(b"X-Vcap-Request-Id", b"b")], b"rid"), [])
        decision.sticky = b"id-gone"
        self.assertEqual(
            self.runtime.responseFields(decision, host, [], b""),
            [(b"Set-Cookie", b"__VCAP_ID__=id-9001; Path=/api; HttpOnly")],
        )

    def test_connectionLimit(self) -> None:
        """
        With C{max_conns}, a route whose every endpoint is at the limit answers 503.
        """
        self.runtime.config = attrs.evolve(self.runtime.config, maxConns=1)
        self.nats.deliver("router.register", registration(9001, "app.example.com"))
        decision = self.runtime.resolve(b"app.example.com", b"/", [], None)
        assert isinstance(decision, RegistryDecision)
        decision.cluster.hosts[0].activeRequests = 1
        full = self.runtime.resolve(b"app.example.com", b"/", [], None)
        assert isinstance(full, RouterReply)
        self.assertEqual((full.status, dict(full.headers)[b"X-Cf-Routererror"]), (503, b"Connection Limit Reached"))

    def test_headers(self) -> None:
        """
        Per endpoint: application, instance index and id; per request: a request id and the start time
        unless the client sent one.
        """
        self.nats.deliver("router.register", registration(9003, "app.example.com"))
        decision = self.runtime.resolve(b"app.example.com", b"/", [], None)
        assert isinstance(decision, RegistryDecision)
        self.assertEqual(self.runtime.endpointFields(decision.cluster.hosts[0]), [
            (b"X-CF-ApplicationID", APP.encode()), (b"X-CF-InstanceIndex", b"3"), (b"X-CF-InstanceID", b"id-9003"),
        ])
        fields = self.runtime.requestFields([])
        self.assertEqual([name for name, _ in fields], [b"X-Vcap-Request-Id", b"X-Request-Start"])
        self.assertEqual(len(fields[1][1]), 13)
        self.assertEqual(len(self.runtime.requestFields([(b"x-request-start", b"1")])), 1)
