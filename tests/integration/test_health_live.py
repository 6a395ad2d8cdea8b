"""
The active health checker against real servers on 127.0.0.1: a twisted.web server reached through
treq, listening and closed TCP ports, a UNIX socket, and a server that never answers.

These run on trial's real reactor (each test returns a L{Deferred}); every wait has a deadline and
every test waits, in cleanup, until all of its connections are closed, so a leaked connection
fails the test (trial reports a dirty reactor).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import Any, Callable

from twisted.internet import reactor as _reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from meshproxy.cluster.health import ActiveHealthChecker
from meshproxy.config.clustermodel import HealthCheckConfig
from meshproxy.stats import StatsStore

reactor: Any = _reactor

#: Seconds any single wait in these tests may take.
WAIT = 5.0


class LiveHost:
    """
    An upstream host as the checker sees it.
    """

    def __init__(self, address: str, host: str, port: int, family: str) -> None:
        self.address = address
        self.host = host
        self.port = port
        self.family = family


def tcpHost(port: int) -> LiveHost:
    return LiveHost(f"127.0.0.1:{port}", "127.0.0.1", port, "ipv4")


class StatusResource(Resource):
    """
    Answers every request with the current C{status} and a small body; records the Host headers.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.hosts: list[bytes | None] = []

    def render(self, request: Any) -> bytes:
        self.hosts.append(request.getHeader(b"host"))
        request.setResponseCode(self.status)
        return b"status %d\n" % (self.status,)


class Silent(Protocol):
    """
    Accepts a connection and never answers; counts open connections on its factory.
    """

    factory: CountingFactory

    def connectionMade(self) -> None:
        self.factory.open += 1
        self.factory.accepted += 1

    def connectionLost(self, reason: object = None) -> None:
        self.factory.open -= 1


class CountingFactory(Factory):
    """
    Builds L{Silent} protocols and counts their connections.
    """

    protocol = Silent

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0


def closedPort() -> int:
    """
    A loopback port nobody listens on (it was free a moment ago).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveCheckTests(TestCase):
    """
    Real sockets, real treq.
    """

    timeout = 30

    def setUp(self) -> None:
        self.changes: list[tuple[Any, bool, str]] = []
        self.passes: list[Any] = []
        self.addCleanup(self._settle)

    def listen(self, factory: Any, unixPath: str | None = None) -> IListeningPort:
        """
        Listen on a free loopback port (or C{unixPath}) until the test ends.
        """
        if unixPath is not None:
            port = reactor.listenUNIX(unixPath, factory)
        else:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port

    def checker(self, **config: Any) -> ActiveHealthChecker:
        config.setdefault("interval", 0.05)
        config.setdefault("timeout", 2.0)
        checker = ActiveHealthChecker(
            "live",
            HealthCheckConfig(**config),
            reactor,
            lambda host, healthy, reason: self.changes.append((host, healthy, reason)),
            StatsStore(),
            onPass=self.passes.append,
        )
        self.addCleanup(checker.stop)
        return checker

    def waitUntil(self, predicate: Callable[[], bool], what: str) -> Deferred[None]:
        """
        Poll C{predicate} every 10ms for at most L{WAIT} seconds; fail the test if it stays false.
        """
        deadline = reactor.seconds() + WAIT

        def poll() -> Deferred[None] | None:
            if predicate():
                return None
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}; changes={self.changes}")
            return deferLater(reactor, 0.01, poll)

        return deferLater(reactor, 0, poll)

    def _settle(self) -> Deferred[None]:
        """
        Wait (bounded) until every connection the test opened is closed (a UNIX connection is a
        L{tcp.Connection} too).
        """
        def quiet() -> bool:
            selectables = list(reactor.getReaders()) + list(reactor.getWriters())
            return not any(isinstance(s, tcp.Connection) for s in selectables)

        return self.waitUntil(quiet, "connections to close")

    def test_httpUnhealthyAndHealthyAgain(self) -> Deferred[None]:
        """
        A server answering 200, then 503, then 200 makes the host unhealthy after two failures
        and healthy again after two passes; the Host header is the host's address.
        """
        resource = StatusResource()
        port = self.listen(Site(resource)).getHost().port
        host = tcpHost(port)
        checker = self.checker(protocol="Http1", path="/health", unhealthyThreshold=2, healthyThreshold=2)
        checker.start([host])

        d = self.waitUntil(lambda: len(self.passes) >= 2, "passing checks")

        def turnBad(_: object) -> Deferred[None]:
            self.assertEqual(self.changes, [])
            resource.status = 503
            return self.waitUntil(lambda: len(self.changes) >= 1, "the host to turn unhealthy")

        def turnGood(_: object) -> Deferred[None]:
            self.assertEqual(self.changes, [(host, False, "http_status_503")])
            self.assertEqual(checker.state(host)["consecutiveFailures"], 2)
            resource.status = 200
            return self.waitUntil(lambda: len(self.changes) >= 2, "the host to turn healthy")

        def done(_: object) -> None:
            self.assertEqual(self.changes[1], (host, True, "passed"))
            self.assertEqual(checker.state(host)["consecutivePasses"], 2)
            self.assertEqual(set(resource.hosts), {f"127.0.0.1:{port}".encode()})

        return d.addCallback(turnBad).addCallback(turnGood).addCallback(done)

    def test_httpOverUNIX(self) -> Deferred[None]:
        """
        An HTTP check reaches a server on a UNIX socket.
        """
        directory = tempfile.mkdtemp(prefix="meshproxy-health-")  # short: socket paths are limited
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "h.sock")
        resource = StatusResource()
        self.listen(Site(resource), unixPath=path)
        host = LiveHost("unix:" + path, path, 0, "unix")
        checker = self.checker(protocol="Http1")
        checker.start([host])

        def check(_: object) -> None:
            self.assertEqual(self.changes, [])
            self.assertEqual(resource.hosts[0], b"localhost")

        return self.waitUntil(lambda: len(self.passes) >= 1, "a passing check").addCallback(check)

    def test_tcpRefused(self) -> Deferred[None]:
        """
        A TCP check against a closed port fails at once with "connect_refused".
        """
        host = tcpHost(closedPort())
        checker = self.checker(protocol="TCP")
        checker.start([host])

        def check(_: object) -> None:
            self.assertEqual(self.changes[0], (host, False, "connect_refused"))
            self.assertEqual(self.passes, [])

        return self.waitUntil(lambda: bool(self.changes), "the check to fail").addCallback(check)

    def test_tcpListeningPasses(self) -> Deferred[None]:
        """
        A TCP check against a listening port passes, and closes each connection it opens.
        """
        factory = CountingFactory()
        host = tcpHost(self.listen(factory).getHost().port)
        checker = self.checker(protocol="TCP")
        checker.start([host])

        def stopped(_: object) -> Deferred[None]:
            checker.stop()
            return self.waitUntil(lambda: factory.open == 0, "the server's connections to close")

        def check(_: object) -> None:
            self.assertEqual(self.changes, [])
            self.assertGreaterEqual(factory.accepted, 3)
            self.assertEqual(checker.state(host)["lastResult"], "pass")

        d = self.waitUntil(lambda: len(self.passes) >= 3, "three passing checks")
        return d.addCallback(stopped).addCallback(check)

    def test_timeoutWhenNoAnswer(self) -> Deferred[None]:
        """
        An HTTP check against a server that accepts and never answers fails with "timeout", and
        the checker closes the connection.
        """
        factory = CountingFactory()
        host = tcpHost(self.listen(factory).getHost().port)
        checker = self.checker(protocol="Http1", timeout=0.2, interval=0.1)
        checker.start([host])

        def check(_: object) -> Deferred[None]:
            self.assertEqual(self.changes[0], (host, False, "timeout"))
            checker.stop()
            return self.waitUntil(lambda: factory.open == 0, "the server's connections to close")

        d = self.waitUntil(lambda: bool(self.changes), "the check to time out")
        return d.addCallback(check)
