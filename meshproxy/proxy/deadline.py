"""
One timer per connection whose meaning changes with the connection's state (head deadline,
response deadline, body inactivity, keep-alive idle).

Changing the deadline is the per-request operation, so it is made almost free: a later deadline
only records the new time, and the scheduled call, which now fires early, re-arms for what is
left when it does.  Only a deadline sooner than the scheduled call replaces the call (a lazy
cancel plus a new C{callLater}).  In steady keep-alive traffic the call is rescheduled about once
per timeout period per connection, not per request: no per-request C{callLater}/C{cancel} pair,
no C{DelayedCall.reset}.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

_NEVER = float("inf")


class Deadline:
    """
    A connection's one timer: C{onExpired(kind)} is called when the deadline for C{kind} passes.

    @ivar kind: what the current deadline is for.
    @ivar at: when it passes (the clock's seconds).
    """

    __slots__ = ("_clock", "_onExpired", "_call", "_firesAt", "kind", "at")

    def __init__(self, clock: IReactorTime, onExpired: Callable[[str], None]) -> None:
        self._clock = clock
        self._onExpired = onExpired
        self._call: IDelayedCall | None = None
        self._firesAt = _NEVER
        self.kind = ""
        self.at = 0.0

    def arm(self, seconds: float, kind: str) -> None:
        """
        Expire C{kind} C{seconds} from now.
        """
        self.kind = kind
        at = self.at = self._clock.seconds() + seconds
        if at < self._firesAt:
            self._schedule(seconds, at)

    def expect(self, kind: str, at: float) -> None:
        """
        Expire C{kind} at the absolute time C{at}.
        """
        self.kind = kind
        self.at = at
        if at < self._firesAt:
            self._schedule(at - self._clock.seconds(), at)

    def cancel(self) -> None:
        """
        Stop the timer.
        """
        call, self._call = self._call, None
        self._firesAt = _NEVER
        if call is not None:
            call.cancel()

    def _schedule(self, seconds: float, at: float) -> None:
        if self._call is not None:
            self._call.cancel()
        self._firesAt = at
        self._call = self._clock.callLater(max(seconds, 0.0), self._fired)

    def _fired(self) -> None:
        self._call = None
        self._firesAt = _NEVER
        remaining = self.at - self._clock.seconds()
        if remaining > 0.001:
            self._schedule(remaining, self.at)
            return
        self._onExpired(self.kind)
