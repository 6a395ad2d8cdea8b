"""
Tests for L{meshproxy.cluster.health}: the active health checker on a fake clock, with a fake HTTP
client, and with the real treq client over a L{MemoryReactorClock}.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone

from meshproxy.cluster.health import BODY_LIMIT, ActiveHealthChecker, failureReason
from meshproxy.config.clustermodel import HealthCheckConfig
from meshproxy.stats import StatsStore


class FakeHost:
    """
    The attributes of an upstream host the checker reads.
    """

    def __init__(self, address: str, host: str, port: int, family: str = "ipv4") -> None:
        self.address = address
        self.host = host
        self.port = port
        self.family = family

    def __repr__(self) -> str:
        return f"<FakeHost {self.address}>"


def hostAt(port: int) -> FakeHost:
    return FakeHost(f"127.0.0.1:{port}", "127.0.0.1", port)


class FakeBodyTransport:
    """
    The transport a response body protocol gets; records C{stopProducing}.
    """

    def __init__(self) -> None:
        self.stopped = False

    def stopProducing(self) -> None:
        self.stopped = True


class FakeResponse:
    """
    A treq response with a status; its body is delivered at once unless C{hold} is set.
    """

    def __init__(self, code: int, body: bytes = b"", hold: bool = False) -> None:
        self.code = code
        self.body = body
        self.hold = hold
        self.transport = FakeBodyTransport()
        self.protocol: Protocol | None = None

    def deliverBody(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)  # type: ignore[arg-type]
        if not self.hold:
            if self.body:
                protocol.dataReceived(self.body)
            protocol.connectionLost(Failure(ResponseDone()))


class FakeHTTPClient:
    """
    Records every request and answers it with a pending L{Deferred} the test fires.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any], Deferred[Any]]] = []
        self.cancelled = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancel)
        self.requests.append((method, url, kwargs, d))
        return d

    def answer(self, code: int, index: int = -1) -> None:
        self.requests[index][3].callback(FakeResponse(code))

    def urls(self) -> list[str]:
        return [url for _, url, _, _ in self.requests]


class CheckerTestCase(SynchronousTestCase):
    """
    Builds a checker on a L{MemoryReactorClock} and records its callbacks.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.client = FakeHTTPClient()
        self.stats = StatsStore()
        self.changes: list[tuple[Any, bool, str]] = []
        self.passes: list[Any] = []

    def checker(self, httpClient: Any = "fake", **config: Any) -> ActiveHealthChecker:
        config.setdefault("protocol", "Http1")
        config.setdefault("interval", 5.0)
        config.setdefault("timeout", 1.0)
        return ActiveHealthChecker(
            "backend",
            HealthCheckConfig(**config),
            self.reactor,
            lambda host, healthy, reason: self.changes.append((host, healthy, reason)),
            self.stats,
            rng=random.Random(4),
            httpClient=self.client if httpClient == "fake" else httpClient,
            onPass=self.passes.append,
        )

    def runCheck(self, checker: ActiveHealthChecker, code: int) -> None:
        """
        Advance to the next check of the only host and answer it with C{code}.
        """
        before = len(self.client.requests)
        self.reactor.advance(checker.config.interval + checker.config.intervalJitter)
        self.assertEqual(len(self.client.requests), before + 1)
        self.client.answer(code)


class ThresholdTests(CheckerTestCase):
    """
    The host state machine: the first result, then thresholds both ways.
    """

    def test_firstFailureAppliesAtOnce(self) -> None:
        """
        A host's first check failing makes it unhealthy at once, whatever the threshold.
        """
        host = hostAt(8080)
        checker = self.checker(unhealthyThreshold=3)
        checker.start([host])
        self.reactor.advance(1.0)
        self.assertEqual(len(self.client.requests), 1)
        self.assertTrue(checker.isHealthy(host))
        self.client.answer(503)
        self.assertEqual(self.changes, [(host, False, "http_status_503")])
        self.assertFalse(checker.isHealthy(host))

    def test_firstPassChangesNothing(self) -> None:
        """
        A host is trusted until checked, so a first pass is no transition, but it is a pass.
        """
        host = hostAt(8080)
        checker = self.checker()
        checker.start([host])
        self.reactor.advance(1.0)
        self.client.answer(200)
        self.assertEqual(self.changes, [])
        self.assertEqual(self.passes, [host])
        self.assertEqual(checker.state(host)["lastResult"], "pass")

    def test_unhealthyThreshold(self) -> None:
        """
        After the first check, a healthy host turns unhealthy only after C{unhealthyThreshold}
        consecutive failures; a pass in between starts the count again.
        """
        host = hostAt(8080)
        checker = self.checker(unhealthyThreshold=3)
        checker.start([host])
        self.reactor.advance(1.0)
        self.client.answer(200)
        for code in (500, 500, 200, 500, 500):
            self.runCheck(checker, code)
        self.assertEqual(self.changes, [])
        self.assertEqual(checker.state(host)["consecutiveFailures"], 2)
        self.runCheck(checker, 502)
        self.assertEqual(self.changes, [(host, False, "http_status_502")])
        self.runCheck(checker, 500)
        self.assertEqual(len(self.changes), 1)

    def test_healthyThreshold(self) -> None:
        """
        An unhealthy host turns healthy after C{healthyThreshold} consecutive passes; a failure in
        between starts the count again; every pass calls C{onPass}.
        """
        host = hostAt(8080)
        checker = self.checker(healthyThreshold=2)
        checker.start([host])
        self.reactor.advance(1.0)
        self.client.answer(503)
        self.assertEqual(self.changes, [(host, False, "http_status_503")])
        for code in (200, 503, 200):
            self.runCheck(checker, code)
        self.assertEqual(len(self.changes), 1)
        self.assertEqual(len(self.passes), 2)
        self.runCheck(checker, 204)
        self.assertEqual(self.changes[1:], [(host, True, "passed")])
        self.assertTrue(checker.isHealthy(host))

    def test_codeRanges(self) -> None:
        """
        A status passes when it lies in one of the inclusive ranges, and fails with its number
        otherwise.
        """
        host = hostAt(8080)
        checker = self.checker(codes=((200, 299), (404, 404)), unhealthyThreshold=1)
        checker.start([host])
        self.reactor.advance(1.0)
        self.client.answer(404)
        self.runCheck(checker, 299)
        self.assertEqual(self.changes, [])
        self.runCheck(checker, 300)
        self.assertEqual(self.changes, [(host, False, "http_status_300")])

    def test_stateAndCounters(self) -> None:
        """
        The admin view is JSON-ready and counts checks; the counters count checks and failures.
        """
        host = hostAt(8080)
        checker = self.checker()
        checker.start([host])
        self.reactor.advance(1.0)
        self.client.answer(200)
        self.runCheck(checker, 500)
        state = checker.state(host)
        self.assertEqual(json.loads(json.dumps(state)), state)
        self.assertEqual(
            {k: state[k] for k in ("healthy", "lastResult", "lastReason", "consecutivePasses",
                                   "consecutiveFailures", "checksTotal", "checking")},
            {"healthy": True, "lastResult": "fail", "lastReason": "http_status_500",
             "consecutivePasses": 0, "consecutiveFailures": 1, "checksTotal": 2, "checking": False},
        )
        self.assertEqual(state["lastCheckAt"], self.reactor.seconds())
        self.assertEqual(self.stats.value("upstream_health_check_total", cluster="backend"), 2)
        self.assertEqual(self.stats.value("upstream_health_check_failure_total", cluster="backend"), 1)
        self.assertRaises(KeyError, checker.state, hostAt(1))

    def test_transitionsLogged(self) -> None:
        """
        Each transition is one log event with the cluster, host and reason as fields.
        """
        events: list[dict[str, Any]] = []
        host = hostAt(8080)
        checker = self.checker()
        checker.log = Logger(observer=events.append)
        checker.start([host])
        self.reactor.advance(1.0)
        self.client.answer(503)
        self.assertEqual(len(events), 1)
        self.assertEqual(
            (events[0]["cluster"], events[0]["host"], events[0]["reason"]),
            ("backend", "127.0.0.1:8080", "http_status_503"),
        )

    def test_callbackErrorContained(self) -> None:
        """
        An exception in C{onChange} is logged and does not stop the checker.
        """
        def boom(host: Any, healthy: bool, reason: str) -> None:
            raise RuntimeError("boom")

        host = hostAt(8080)
        checker = ActiveHealthChecker(
            "backend", HealthCheckConfig(protocol="Http1"), self.reactor, boom, self.stats,
            httpClient=self.client,
        )
        checker.start([host])
        self.reactor.advance(1.0)
        self.client.answer(503)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(checker.isHealthy(host))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)


class SchedulingTests(CheckerTestCase):
    """
    When checks run: initial delay, spread, interval with jitter, one in flight, timeout.
    """

    def test_initialDelayAndSpread(self) -> None:
        """
        No host is checked before C{initialDelay}; the first checks are spread over a little time
        after it rather than all at once.
        """
        hosts = [hostAt(8080 + i) for i in range(5)]
        checker = self.checker(initialDelay=2.0, interval=5.0)
        checker.start(hosts)
        times = sorted(call.getTime() for call in self.reactor.getDelayedCalls())
        self.assertEqual(len(times), 5)
        self.assertTrue(all(2.0 <= t <= 2.5 for t in times), times)
        self.assertGreater(len(set(times)), 1)
        self.reactor.advance(1.999)
        self.assertEqual(self.client.requests, [])
        self.reactor.advance(0.501)
        self.assertEqual(len(self.client.requests), 5)

    def test_intervalWithJitter(self) -> None:
        """
        Each next check comes C{interval} plus up to C{intervalJitter} seconds after the last one
        started, and the jitter varies.
        """
        host = hostAt(8080)
        checker = self.checker(interval=5.0, intervalJitter=2.0)
        checker.start([host])
        gaps = []
        self.reactor.advance(1.0)
        for _ in range(30):
            self.client.answer(200)
            [call] = self.reactor.getDelayedCalls()
            gaps.append(call.getTime() - self.reactor.seconds())
            self.reactor.advance(gaps[-1])
        self.assertTrue(all(5.0 <= gap <= 7.0 for gap in gaps), gaps)
        self.assertGreater(len(set(gaps)), 10)
        self.assertEqual(len(self.client.requests), 31)

    def test_noJitter(self) -> None:
        """
        Without jitter the interval is exact.
        """
        host = hostAt(8080)
        checker = self.checker(interval=3.0)
        checker.start([host])
        self.reactor.advance(1.0)
        start = self.reactor.seconds()
        self.client.answer(200)
        [call] = self.reactor.getDelayedCalls()
        self.assertEqual(call.getTime(), start + 3.0)

    def test_oneCheckInFlight(self) -> None:
        """
        While a check is in flight (timeout longer than the interval), ticks start no other check.
        """
        host = hostAt(8080)
        checker = self.checker(interval=1.0, timeout=10.0)
        checker.start([host])
        for _ in range(8):
            self.reactor.advance(1.0)
        self.assertEqual(len(self.client.requests), 1)
        self.assertTrue(checker.state(host)["checking"])
        self.client.answer(200)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.client.requests), 2)

    def test_timeout(self) -> None:
        """
        A check still unanswered after C{timeout} is cancelled and fails with "timeout".
        """
        host = hostAt(8080)
        checker = self.checker(timeout=2.0)
        checker.start([host])
        self.reactor.advance(0.5)
        self.reactor.advance(1.999)
        self.assertEqual(self.changes, [])
        self.reactor.advance(0.001)
        self.assertEqual(self.client.cancelled, 1)
        self.assertEqual(self.changes, [(host, False, "timeout")])
        self.assertFalse(checker.state(host)["checking"])

    def test_timeoutDuringBody(self) -> None:
        """
        A status that arrived in time does not help if the body does not end within the timeout:
        the body is cut and the check fails with "timeout".
        """
        host = hostAt(8080)
        checker = self.checker(timeout=2.0)
        checker.start([host])
        self.reactor.advance(0.5)
        response = FakeResponse(200, hold=True)
        self.client.requests[-1][3].callback(response)
        self.assertEqual(self.passes, [])
        self.reactor.advance(2.0)
        self.assertTrue(response.transport.stopped)
        self.assertEqual(self.changes, [(host, False, "timeout")])
        # The body's late end is ignored.
        assert response.protocol is not None
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(len(self.changes), 1)

    def test_bodyBounded(self) -> None:
        """
        A body is read to its end; past L{BODY_LIMIT} bytes the connection is cut.
        """
        host = hostAt(8080)
        checker = self.checker()
        checker.start([host])
        self.reactor.advance(0.5)
        response = FakeResponse(200, hold=True)
        self.client.requests[-1][3].callback(response)
        assert response.protocol is not None
        response.protocol.dataReceived(b"x" * BODY_LIMIT)
        self.assertFalse(response.transport.stopped)
        response.protocol.dataReceived(b"x")
        self.assertTrue(response.transport.stopped)
        self.assertEqual(self.passes, [])
        response.protocol.connectionLost(Failure(error.ConnectionAborted()))
        self.assertEqual(self.passes, [host])


class HostSetTests(CheckerTestCase):
    """
    Hosts come and go at run time; stop cancels everything.
    """

    def test_setHostsAddRemove(self) -> None:
        """
        Hosts that stay keep their state, removed hosts are forgotten (their check aborted, their
        timer cancelled) and new hosts are checked.
        """
        a, b, c = hostAt(1), hostAt(2), hostAt(3)
        checker = self.checker(timeout=3.0, initialDelay=1.0)
        checker.start([a, b])
        self.reactor.advance(1.5)
        self.assertEqual(len(self.client.requests), 2)
        self.client.answer(503, self.client.urls().index("http://127.0.0.1:1/"))
        self.assertEqual(self.changes, [(a, False, "http_status_503")])
        checker.setHosts([a, c])
        self.assertEqual(self.client.cancelled, 1)
        self.assertRaises(KeyError, checker.state, b)
        self.assertFalse(checker.state(a)["healthy"])
        self.assertEqual(checker.state(a)["checksTotal"], 1)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 2)
        self.reactor.advance(2.0)
        self.assertIn("http://127.0.0.1:3/", self.client.urls())
        self.reactor.advance(30.0)
        self.assertNotIn("http://127.0.0.1:2/", self.client.urls()[2:])
        self.assertEqual(len(self.changes), 2)  # c's first check timed out; nothing about b
        self.assertEqual(self.changes[1], (c, False, "timeout"))

    def test_setHostsBeforeStart(self) -> None:
        """
        Hosts given before C{start} are not checked until it.
        """
        checker = self.checker()
        checker.setHosts([hostAt(1)])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        checker.start([hostAt(2)])
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_stopCancelsEverything(self) -> None:
        """
        C{stop} cancels every timer and aborts every check in flight; nothing is reported after.
        """
        hosts = [hostAt(1), hostAt(2), hostAt(3)]
        checker = self.checker(timeout=3.0)
        checker.start(hosts)
        self.reactor.advance(0.5)
        self.assertEqual(len(self.client.requests), 3)
        checker.setHosts(hosts + [hostAt(4)])  # one waiting for its first check
        self.assertEqual(len(self.reactor.getDelayedCalls()), 7)  # 4 ticks, 3 check deadlines
        checker.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.client.cancelled, 3)
        self.assertEqual(self.changes, [])
        self.reactor.advance(60.0)
        self.assertEqual(len(self.client.requests), 3)
        self.assertEqual(self.changes, [])


class TreqTests(CheckerTestCase):
    """
    The real treq client, dialling through the injected reactor.
    """

    def connect(self, response: bytes) -> StringTransport:
        """
        Complete the newest connection attempt to a L{StringTransport} and answer C{response}.
        """
        factory = self.reactor.tcpClients[-1][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(response)
        return transport

    def test_requestShape(self) -> None:
        """
        The check dials the host's IP (or C{port}) and sends C{method path} with the Host header
        of the host's address, or C{host} when set.
        """
        checker = self.checker(httpClient=None, path="/healthz", method="HEAD", unhealthyThreshold=1)
        checker.start([hostAt(8080)])
        self.reactor.advance(1.0)
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("127.0.0.1", 8080))
        self.assertEqual(self.reactor.tcpClients[-1][3], 1.0)
        transport = self.connect(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        head = transport.value()
        self.assertTrue(head.startswith(b"HEAD /healthz HTTP/1.1\r\n"), head)
        self.assertIn(b"\r\nHost: 127.0.0.1:8080\r\n", head)
        self.assertIn(b"\r\nConnection: close\r\n", head)
        self.assertEqual(len(self.passes), 1)

    def test_configHostAndPort(self) -> None:
        """
        C{host} and C{port} override the Host header and the port dialled, not the IP.
        """
        checker = self.checker(httpClient=None, host="svc.example", port=9000)
        checker.start([FakeHost("[::1]:8080", "::1", 8080, "ipv6")])
        self.reactor.advance(1.0)
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("::1", 9000))
        transport = self.connect(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
        self.assertIn(b"\r\nHost: svc.example\r\n", transport.value())
        self.assertEqual(len(self.changes), 1)
        self.assertEqual(self.changes[0][1:], (False, "http_status_503"))

    def test_unixHost(self) -> None:
        """
        A unix host is dialled at its path, with Host "localhost".
        """
        checker = self.checker(httpClient=None)
        checker.start([FakeHost("unix:/run/app.sock", "/run/app.sock", 0, "unix")])
        self.reactor.advance(1.0)
        path, factory = self.reactor.unixClients[-1][:2]
        self.assertEqual(path, "/run/app.sock")
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertIn(b"\r\nHost: localhost\r\n", transport.value())

    def test_timeoutAbortsConnection(self) -> None:
        """
        A server that never answers is cut off at the timeout.
        """
        checker = self.checker(httpClient=None, timeout=1.5)
        checker.start([hostAt(8080)])
        self.reactor.advance(0.5)
        factory = self.reactor.tcpClients[-1][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.reactor.advance(1.5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.changes[0][1:], (False, "timeout"))

    def test_redirectNotFollowed(self) -> None:
        """
        A redirect is judged by its own status: no second request is made.
        """
        checker = self.checker(httpClient=None)
        checker.start([hostAt(8080)])
        self.reactor.advance(1.0)
        self.connect(b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.changes[0][1:], (False, "http_status_302"))


class ConnectCheckTests(CheckerTestCase):
    """
    TCP checks: a connection that opens passes.
    """

    def test_opensPasses(self) -> None:
        """
        The check dials the host (or C{port}); an open connection passes and is closed at once.
        """
        host = hostAt(8080)
        checker = self.checker(protocol="TCP", port=9100, timeout=2.0)
        checker.start([host])
        self.reactor.advance(1.0)
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("127.0.0.1", 9100))
        self.assertEqual(self.reactor.tcpClients[-1][3], 2.0)
        protocol = self.reactor.tcpClients[-1][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.passes, [host])
        self.assertEqual(self.reactor.getDelayedCalls()[0].getTime(), 6.0)

    def test_refusedFails(self) -> None:
        """
        A refused connection fails the check with "connect_refused".
        """
        host = hostAt(8080)
        checker = self.checker(protocol="TCP")
        checker.start([host])
        self.reactor.advance(1.0)
        connector = self.reactor.connectors[-1]
        self.reactor.tcpClients[-1][2].clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))
        self.assertEqual(self.changes, [(host, False, "connect_refused")])

    def test_timeoutStopsConnecting(self) -> None:
        """
        A connection that does not open within C{timeout} is abandoned; its late failure is ignored.
        """
        host = hostAt(8080)
        checker = self.checker(protocol="TCP", timeout=1.0)
        checker.start([host])
        self.reactor.advance(0.5)
        connector = self.reactor.connectors[-1]
        self.reactor.advance(1.0)
        self.assertTrue(connector._disconnected)  # type: ignore[attr-defined]
        self.assertEqual(self.changes, [(host, False, "timeout")])
        self.reactor.tcpClients[-1][2].clientConnectionFailed(connector, Failure(error.UserError()))
        self.assertEqual(len(self.changes), 1)

    def test_unixHost(self) -> None:
        """
        A unix host is checked by connecting to its path.
        """
        checker = self.checker(protocol="TCP")
        checker.start([FakeHost("unix:/run/app.sock", "/run/app.sock", 0, "unix")])
        self.reactor.advance(1.0)
        self.assertEqual(self.reactor.unixClients[-1][0], "/run/app.sock")


class FailureReasonTests(SynchronousTestCase):
    """
    Failures are named by a short reason.
    """

    def test_reasons(self) -> None:
        """
        Each kind of failure has its reason; anything else is "error".
        """
        from twisted.web.client import ResponseFailed, ResponseNeverReceived

        cases = [
            (error.ConnectionRefusedError(), "connect_refused"),
            (error.TimeoutError(), "timeout"),
            (error.DNSLookupError(), "dns_failure"),
            (error.NoRouteError(), "connect_failure"),
            (ResponseNeverReceived([]), "no_response"),
            (ResponseFailed([]), "bad_response"),
            (error.ConnectionLost(), "connection_closed"),
            (ValueError(), "error"),
        ]
        self.assertEqual([failureReason(Failure(e)) for e, _ in cases], [r for _, r in cases])

