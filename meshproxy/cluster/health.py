"""
Active health checking: every host of a cluster is probed on a timer, by an HTTP request (through
treq, the project's client for control-plane HTTP) or by opening a TCP/UNIX connection, and the
results move the host between healthy and unhealthy with thresholds.

The checker only reports: C{onChange(host, healthy, reason)} on each transition and C{onPass(host)}
after each passing check. The cluster decides what a host's health means for the balancer.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Protocol as TypingProtocol

from treq.client import HTTPClient
from twisted.internet import error
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from meshproxy.config.clustermodel import HealthCheckConfig
from meshproxy.stats import StatsStore

#: Bytes of a check response's body read (and thrown away) before the connection is cut.
BODY_LIMIT = 4096

#: The first checks of a cluster's hosts are spread over this share of the interval (at most
#: L{FIRST_CHECK_SPREAD_MAX} seconds), so that they do not all start in the same reactor turn.
FIRST_CHECK_SPREAD = 0.1
FIRST_CHECK_SPREAD_MAX = 1.0


class CheckedHost(TypingProtocol):
    """
    What the checker needs of a host (the cluster's C{UpstreamHost} has it).
    """

    address: str
    host: str
    port: int
    family: str


class _Check:
    """
    One check in flight: its result Deferred, its deadline, and whether the deadline fired.
    """

    __slots__ = ("state", "deferred", "timer", "timedOut")

    def __init__(self, state: _HostState) -> None:
        self.state = state
        self.deferred: Deferred[Any] | None = None
        self.timer: IDelayedCall | None = None
        self.timedOut = False


class _HostState:
    """
    The checker's view of one host.

    States: I{trusted} (C{checked} false: never checked, counted healthy), then I{healthy} or
    I{unhealthy}; independently I{idle} or I{checking} (C{check} set, at most one check at a time).
    """

    __slots__ = (
        "host",
        "healthy",
        "checked",
        "consecutivePasses",
        "consecutiveFailures",
        "checksTotal",
        "lastCheckAt",
        "lastResult",
        "lastReason",
        "call",
        "check",
    )

    def __init__(self, host: CheckedHost) -> None:
        self.host = host
        self.healthy = True
        self.checked = False
        self.consecutivePasses = 0
        self.consecutiveFailures = 0
        self.checksTotal = 0
        self.lastCheckAt: float | None = None
        self.lastResult: str | None = None
        self.lastReason: str | None = None
        self.call: IDelayedCall | None = None
        self.check: _Check | None = None


class ActiveHealthChecker:
    """
    Probes each host of one cluster every C{interval} (plus up to C{intervalJitter}) seconds.

    A host starts healthy. Its first result applies at once (a first failure makes it unhealthy);
    after that C{unhealthyThreshold} consecutive failures make a healthy host unhealthy and
    C{healthyThreshold} consecutive passes make an unhealthy host healthy.

    Hosts are tracked by identity: L{setHosts} keeps the state of the hosts it is given again.
    """

    log = Logger()

    def __init__(
        self,
        clusterName: str,
        config: HealthCheckConfig,
        reactor: IReactorTime,
        onChange: Callable[[Any, bool, str], object],
        stats: StatsStore,
        rng: random.Random | None = None,
        httpClient: Any = None,
        onPass: Callable[[Any], object] | None = None,
    ) -> None:
        """
        @param reactor: provides C{IReactorTime} and C{IReactorTCP} (and C{IReactorUNIX} for unix
            hosts); every timer and connection of the checker is made on it.
        @param onChange: called as C{onChange(host, healthy, reason)} on every transition.
        @param httpClient: an object with treq's C{HTTPClient.request} used for every host's HTTP
            check (for tests); by default each check gets a treq client whose agent dials the host.
        @param onPass: called as C{onPass(host)} after every passing check.
        """
        self.clusterName = clusterName
        self.config = config
        self._reactor = reactor
        self._onChange = onChange
        self._onPass = onPass
        self._rng = rng if rng is not None else random.Random()
        self._httpClient = httpClient
        self._probe = self._httpProbe if config.protocol == "Http1" else self._connectProbe
        self._states: dict[int, _HostState] = {}
        self._running = False
        labels = {"cluster": clusterName}
        self.checksCounter = stats.counter(
            "upstream_health_check_total", "Active health checks of upstream hosts.", **labels
        )
        self.failuresCounter = stats.counter(
            "upstream_health_check_failure_total", "Active health checks that failed.", **labels
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, hosts: Iterable[CheckedHost]) -> None:
        """
        Begin checking C{hosts}: each one's first check comes after C{initialDelay}, spread a little.
        """
        self._running = True
        self.setHosts(hosts)
        for state in self._states.values():
            if state.call is None and state.check is None:
                self._scheduleFirst(state)

    def stop(self) -> None:
        """
        Cancel every timer and abort every check in flight; results that arrive later are ignored.
        The hosts' states are kept (for the admin page) and L{start} may be called again.
        """
        self._running = False
        for state in list(self._states.values()):
            self._quiet(state)

    def setHosts(self, hosts: Iterable[CheckedHost]) -> None:
        """
        Replace the set of checked hosts: hosts already known keep their state, new hosts are
        checked (after C{initialDelay}) and hosts no longer listed are forgotten.
        """
        wanted = {id(host): host for host in hosts}
        for key in [key for key in self._states if key not in wanted]:
            self._quiet(self._states.pop(key))
        for key, host in wanted.items():
            if key not in self._states:
                state = self._states[key] = _HostState(host)
                if self._running:
                    self._scheduleFirst(state)

    def state(self, host: CheckedHost) -> dict[str, Any]:
        """
        A JSON-ready view of C{host}'s health for the admin page.

        @raise KeyError: C{host} is not checked by this checker.
        """
        s = self._states[id(host)]
        return {
            "healthy": s.healthy,
            "checked": s.checked,
            "checking": s.check is not None,
            "lastCheckAt": s.lastCheckAt,
            "lastResult": s.lastResult,
            "lastReason": s.lastReason,
            "consecutivePasses": s.consecutivePasses,
            "consecutiveFailures": s.consecutiveFailures,
            "checksTotal": s.checksTotal,
        }

    def isHealthy(self, host: CheckedHost) -> bool:
        """
        Whether the checker counts C{host} healthy (a host it does not know is).
        """
        s = self._states.get(id(host))
        return True if s is None else s.healthy

    # -- timers ----------------------------------------------------------------------------------

    def _scheduleFirst(self, state: _HostState) -> None:
        spread = min(self.config.interval * FIRST_CHECK_SPREAD, FIRST_CHECK_SPREAD_MAX)
        delay = self.config.initialDelay + self._rng.uniform(0, spread)
        state.call = self._reactor.callLater(delay, self._tick, state)

    def _nextInterval(self) -> float:
        jitter = self.config.intervalJitter
        return self.config.interval + (self._rng.uniform(0, jitter) if jitter > 0 else 0.0)

    def _tick(self, state: _HostState) -> None:
        # Intervals run start to start; a check still in flight (timeout > interval) skips a turn.
        state.call = self._reactor.callLater(self._nextInterval(), self._tick, state)
        if state.check is None:
            self._startCheck(state)

    def _quiet(self, state: _HostState) -> None:
        """
        Cancel C{state}'s timer and abort its check in flight without recording a result.
        """
        call, state.call = state.call, None
        if call is not None and call.active():
            call.cancel()
        check, state.check = state.check, None
        if check is not None:
            if check.timer is not None and check.timer.active():
                check.timer.cancel()
            if check.deferred is not None:
                check.deferred.cancel()

    # -- one check -------------------------------------------------------------------------------

    def _startCheck(self, state: _HostState) -> None:
        check = state.check = _Check(state)
        state.checksTotal += 1
        self.checksCounter.value += 1
        check.timer = self._reactor.callLater(self.config.timeout, self._timedOut, check)
        d = check.deferred = maybeDeferred(self._probe, state.host)
        d.addBoth(self._finished, check)

    def _timedOut(self, check: _Check) -> None:
        check.timedOut = True
        if check.deferred is not None:
            check.deferred.cancel()

    def _finished(self, result: tuple[bool, str] | Failure, check: _Check) -> None:
        if check.timer is not None and check.timer.active():
            check.timer.cancel()
        state = check.state
        if state.check is not check:
            return None  # stopped, or the host was removed: the result means nothing now
        state.check = None
        if isinstance(result, Failure):
            passed, reason = False, "timeout" if check.timedOut else failureReason(result)
        else:
            passed, reason = result
        self._record(state, passed, reason)
        return None

    def _record(self, state: _HostState, passed: bool, reason: str) -> None:
        first = not state.checked
        state.checked = True
        state.lastCheckAt = self._reactor.seconds()
        state.lastResult = "pass" if passed else "fail"
        state.lastReason = reason
        if passed:
            state.consecutivePasses += 1
            state.consecutiveFailures = 0
            if not state.healthy and (first or state.consecutivePasses >= self.config.healthyThreshold):
                self._transition(state, True, reason)
            if self._onPass is not None:
                self._call(self._onPass, state.host)
        else:
            self.failuresCounter.value += 1
            state.consecutiveFailures += 1
            state.consecutivePasses = 0
            if state.healthy and (first or state.consecutiveFailures >= self.config.unhealthyThreshold):
                self._transition(state, False, reason)

    def _transition(self, state: _HostState, healthy: bool, reason: str) -> None:
        state.healthy = healthy
        fields = dict(cluster=self.clusterName, host=state.host.address, reason=reason)
        if healthy:
            self.log.info("health check: {cluster} host {host} is healthy ({reason})", **fields)
        else:
            self.log.warn(
                "health check: {cluster} host {host} is unhealthy ({reason}, {failures} consecutive failures)",
                failures=state.consecutiveFailures,
                **fields,
            )
        self._call(self._onChange, state.host, healthy, reason)

    def _call(self, f: Callable[..., object], *args: Any) -> None:
        try:
            f(*args)
        except Exception:
            self.log.failure("health check callback {callback!r} failed", callback=f)

    # -- probes ----------------------------------------------------------------------------------

    def _connectProbe(self, host: CheckedHost) -> Deferred[tuple[bool, str]]:
        """
        Pass when a connection to C{host} opens; close it at once.
        """
        factory = _ConnectProbeFactory()
        if host.family == "unix":
            factory.connector = IReactorUNIX(self._reactor).connectUNIX(
                host.host, factory, timeout=self.config.timeout
            )
        else:
            factory.connector = IReactorTCP(self._reactor).connectTCP(
                host.host, self.config.port or host.port, factory, timeout=self.config.timeout
            )
        return factory.deferred

    def _httpProbe(self, host: CheckedHost) -> Deferred[tuple[bool, str]]:
        """
        Pass when C{method path} answers with a status in C{codes}; the body is read and thrown away.
        """
        authority = self.config.host or ("localhost" if host.family == "unix" else host.address)
        client: Any = self._httpClient if self._httpClient is not None else self._clientFor(host)
        d: Deferred[Any] = client.request(
            self.config.method,
            "http://" + authority + self.config.path,
            headers={"Host": [authority]},
            allow_redirects=False,
            unbuffered=True,
            reactor=self._reactor,
        )
        return d.addCallback(self._gotResponse)

    def _gotResponse(self, response: Any) -> Deferred[tuple[bool, str]]:
        code = response.code
        passed = any(low <= code <= high for low, high in self.config.codes)
        verdict = (True, "passed") if passed else (False, f"http_status_{code}")
        drain = _BodyDrain()
        response.deliverBody(drain)
        return drain.done.addCallback(lambda _: verdict)

    def _clientFor(self, host: CheckedHost) -> HTTPClient:
        """
        A treq client whose agent dials C{host} (or C{config.port}) whatever the URL says, with no
        connection kept for later: checks are seconds apart.
        """
        agent = Agent.usingEndpointFactory(
            self._reactor,
            _OneEndpoint(self._endpointFor(host)),
            pool=HTTPConnectionPool(self._reactor, persistent=False),
        )
        return HTTPClient(agent)

    def _endpointFor(self, host: CheckedHost) -> IStreamClientEndpoint:
        timeout = self.config.timeout
        port = self.config.port or host.port
        if host.family == "unix":
            return UNIXClientEndpoint(self._reactor, host.host, timeout=timeout)
        if host.family == "ipv6":
            return TCP6ClientEndpoint(self._reactor, host.host, port, timeout=timeout)
        if host.family == "ipv4":
            return TCP4ClientEndpoint(self._reactor, host.host, port, timeout=timeout)
        return HostnameEndpoint(self._reactor, host.host, port, timeout=timeout)


def failureReason(failure: Failure) -> str:
    """
    The short reason a failed check reports, e.g. C{"connect_refused"}.
    """
    if failure.check(error.ConnectionRefusedError):
        return "connect_refused"
    if failure.check(error.TimeoutError):
        return "timeout"
    if failure.check(error.DNSLookupError):
        return "dns_failure"
    if failure.check(error.ConnectError):
        return "connect_failure"
    if failure.check(ResponseNeverReceived):
        return "no_response"
    if failure.check(ResponseFailed):
        return "bad_response"
    if failure.check(error.ConnectionLost, error.ConnectionDone):
        return "connection_closed"
    return "error"


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    """
    An agent endpoint factory that always answers the same endpoint: the checked host.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: object) -> IStreamClientEndpoint:
        return self._endpoint


class _BodyDrain(Protocol):
    """
    Reads a response body to its end, keeping nothing; cuts the connection after L{BODY_LIMIT}
    bytes. C{done} fires with L{None} when the body is over, however it ended.
    """

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred(lambda d: self._stop())
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > BODY_LIMIT:
            self._stop()

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)


class _OpenedProtocol(Protocol):
    """
    Reports to its factory that the connection opened, then aborts it.
    """

    factory: _ConnectProbeFactory

    def connectionMade(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]
        self.factory.opened()


class _ConnectProbeFactory(ClientFactory):
    """
    One TCP/UNIX connect check; C{deferred} fires with C{(True, "passed")} or fails with the
    connection error. Cancelling it stops the connection attempt.
    """

    def __init__(self) -> None:
        self.deferred: Deferred[tuple[bool, str]] = Deferred(self._cancel)
        self.connector: IConnector | None = None

    def buildProtocol(self, addr: object) -> Any:
        protocol = _OpenedProtocol()
        protocol.factory = self
        return protocol

    def opened(self) -> None:
        if not self.deferred.called:
            self.deferred.callback((True, "passed"))

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if not self.deferred.called:
            self.deferred.errback(reason)

    def _cancel(self, d: Deferred[tuple[bool, str]]) -> None:
        if self.connector is not None:
            self.connector.disconnect()
