"""
L{meshproxy.nats.NATSClient} against real C{nats-server} processes on loopback: pub/sub, request
and reply, user/password and token auth, a two-node cluster, and failover when a node stops.

These run on the real reactor; every wait is bounded (see L{waitUntil} and the class timeouts).
"""

from __future__ import annotations

from typing import Any, Callable, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from meshproxy.nats import NATSClient, NATSMessage
from tests.integration.natsserver import SKIP_REASON, NATSCluster, NATSServer, natsServerPath

Server = tuple[str, int]


def waitUntil(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> Deferred[None]:
    """
    Poll C{predicate} on the reactor every 20 ms; fire when it is true, fail after C{timeout}.
    """
    d: Deferred[None] = Deferred()
    deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]

    def check() -> None:
        if predicate():
            d.callback(None)
        elif reactor.seconds() > deadline:  # type: ignore[attr-defined]
            d.errback(AssertionError("timed out after %ss waiting for %s" % (timeout, what)))
        else:
            reactor.callLater(0.02, check)  # type: ignore[attr-defined]

    check()
    return d


class NATSTestCase(TestCase):
    """
    Common setup: skip without nats-server; clients that are stopped at cleanup.
    """

    timeout = 60
    if natsServerPath() is None:
        skip = SKIP_REASON

    def server(self, **kw: Any) -> NATSServer:
        """
        A started single node, stopped at cleanup.
        """
        node = NATSServer(self.mktemp(), **kw)
        self.addCleanup(node.stop)
        node.start()
        return node

    def client(self, servers: list[Server], **kw: Any) -> NATSClient:
        """
        A started client with quick reconnects, stopped at cleanup (before the servers).
        """
        kw.setdefault("reconnectMin", 0.05)
        kw.setdefault("reconnectMax", 0.5)
        client = NATSClient(reactor, servers, **kw)
        self.addCleanup(client.stop)
        client.start()
        return client

    def connected(self, *clients: NATSClient, timeout: float = 10.0) -> Deferred[None]:
        """
        Wait until all C{clients} are connected.
        """
        return waitUntil(lambda: all(c.connected for c in clients), timeout, "NATS clients to connect")


class SingleServerTests(NATSTestCase):
    """
    One node: messages, request/reply, auth.
    """

    @inlineCallbacks
    def test_pubSubRoundTrip(self) -> Generator[Any, Any, None]:
        """
        A payload with CRLF inside goes through the server to a wildcard subscriber intact, and a
        request is answered through an inbox.
        """
        node = self.server()
        router = self.client([node.address], name="router")
        emitter = self.client([node.address], name="emitter")
        yield self.connected(router, emitter)
        received: list[NATSMessage] = []
        router.subscribe("router.*", received.append)

        def greet(message: NATSMessage) -> None:
            assert message.reply is not None
            router.publish(message.reply, b'{"minimumRegisterIntervalInSeconds":20}')

        router.subscribe("router.greet", greet)
        yield router.flush()
        payload = b'{"host":"127.0.0.1",\r\n"port":8080,"uris":["a.example.com"]}\r\n'
        emitter.publish("router.register", payload)
        yield waitUntil(lambda: len(received) >= 1, what="router.register")
        self.assertEqual((received[0].subject, received[0].payload), ("router.register", payload))
        reply = yield emitter.request("router.greet", b"", timeout=5.0)
        self.assertEqual(reply.payload, b'{"minimumRegisterIntervalInSeconds":20}')
        self.assertEqual((router.errors, router.badMessages, emitter.errors), (0, 0, 0))
        self.assertEqual(emitter.messagesOut, 2)

    @inlineCallbacks
    def test_userPassword(self) -> Generator[Any, Any, None]:
        """
        The right user and password connect and work; a wrong password is refused by the server,
        counted, and retried without ever counting as connected.
        """
        node = self.server(user="router", password="s3cret")
        good = self.client([node.address], user="router", password="s3cret")
        bad = self.client([node.address], user="router", password="wrong")
        yield self.connected(good)
        received: list[NATSMessage] = []
        good.subscribe("a", received.append)
        yield good.flush()
        good.publish("a", b"x")
        yield waitUntil(lambda: len(received) == 1, what="message on the authenticated connection")
        yield waitUntil(lambda: bad.errors >= 2 and bad.connectFailures >= 2, what="refused attempts")
        self.assertFalse(bad.connected)
        self.assertEqual(bad.reconnects, 0)

    @inlineCallbacks
    def test_token(self) -> Generator[Any, Any, None]:
        """
        Token auth: the right token connects, a wrong one is refused, and so is none at all.
        """
        node = self.server(token="t0ken")
        good = self.client([node.address], token="t0ken")
        bad = self.client([node.address], token="nope")
        anonymous = self.client([node.address])
        yield self.connected(good)
        yield good.flush()
        yield waitUntil(lambda: bad.errors >= 1 and anonymous.errors >= 1, what="refusals")
        self.assertFalse(bad.connected or anonymous.connected)


class ClusterTests(NATSTestCase):
    """
    Two nodes joined by routes.
    """

    def cluster(self) -> NATSCluster:
        """
        A started two-node cluster, stopped at cleanup.
        """
        cluster = NATSCluster(self.mktemp(), size=2)
        self.addCleanup(cluster.stop)
        cluster.start()
        return cluster

    def publishUntil(
        self, client: NATSClient, subject: str, payload: bytes, received: list[NATSMessage]
    ) -> Deferred[None]:
        """
        Publish every 20 ms until a message arrives: interest crosses a route asynchronously.
        """

        def arrived() -> bool:
            if not received:
                client.publish(subject, payload)
            return bool(received)

        return waitUntil(arrived, what=subject)

    @inlineCallbacks
    def test_routedMessage(self) -> Generator[Any, Any, None]:
        """
        Published on node A, received by a subscriber on node B; each client learns the other node
        from C{connect_urls}.
        """
        cluster = self.cluster()
        a, b = cluster.nodes
        publisher = self.client([a.address])
        subscriber = self.client([b.address])
        yield self.connected(publisher, subscriber)
        received: list[NATSMessage] = []
        subscriber.subscribe("router.register", received.append)
        yield subscriber.flush()
        yield self.publishUntil(publisher, "router.register", b"via A\r\n", received)
        self.assertEqual(received[0].payload, b"via A\r\n")
        self.assertIn(b.address, publisher.servers)
        self.assertIn(a.address, subscriber.servers)

    @inlineCallbacks
    def test_failover(self) -> Generator[Any, Any, None]:
        """
        The node a router is on stops: it reconnects to the other node (known only from
        C{connect_urls}), re-subscribes, runs its connected callback again (re-publishing
        C{router.start}) and receives again.  The stopped node then restarts and rejoins.
        """
        cluster = self.cluster()
        a, b = cluster.nodes
        router = self.client([a.address])
        starts: list[Server | None] = []
        router.addConnectedCallback(lambda: starts.append(router.connectedServer))
        router.addConnectedCallback(lambda: router.publish("router.start", b'{"id":"0-x"}'))
        emitter = self.client([b.address], discoverServers=False)
        yield self.connected(router, emitter)
        registers: list[NATSMessage] = []
        router.subscribe("router.*", registers.append)
        startsSeen: list[NATSMessage] = []
        emitter.subscribe("router.start", startsSeen.append)
        yield router.flush()
        yield emitter.flush()
        yield self.publishUntil(emitter, "router.register", b"1", registers)
        yield waitUntil(lambda: b.address in router.servers, what="connect_urls to name node B")

        self.assertEqual(startsSeen, [])
        a.stop()
        yield waitUntil(lambda: router.connectedServer == b.address, what="failover to node B")
        self.assertEqual(starts, [a.address, b.address])
        self.assertEqual(router.reconnects, 1)
        yield waitUntil(lambda: len(startsSeen) >= 1, what="router.start after the reconnect")
        self.assertEqual(startsSeen[-1].payload, b'{"id":"0-x"}')
        del registers[:]
        emitter.publish("router.register", b"2")
        yield waitUntil(lambda: bool(registers), what="router.register after failover")
        self.assertEqual(registers[0].payload, b"2")

        a.start()
        cluster.waitForRoutes()
        late = self.client([a.address], discoverServers=False)
        yield self.connected(late)
        del registers[:]
        yield self.publishUntil(late, "router.register", b"3", registers)
        self.assertEqual(registers[0].payload, b"3")
        self.assertEqual(router.connectedServer, b.address)
