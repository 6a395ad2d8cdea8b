"""
One timer per connection whose meaning changes with the connection's state (head deadline,
response deadline, body inactivity, keep-alive idle).

Moving a Twisted C{DelayedCall} later is cheap (the reactor re-sorts lazily), moving it sooner
searches the reactor's pending list; so a sooner deadline is a cancel (lazy) plus a new
C{callLater}, and a deadline that the scheduled call already precedes only changes the meaning:
when the call fires early for its current meaning it re-arms for what is left.  No per-request
C{callLater}/C{cancel} pair on the common path.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Deadline:
    """
    A connection's one timer: C{onExpired(kind)} is called when the deadline for C{kind} passes.
    """

    def __init__(self, clock: IReactorTime, onExpired: Callable[[str], None]) -> None:
        self._clock = clock
        self._onExpired = onExpired
        self._call: IDelayedCall | None = None
        self.kind = ""
        self.at = 0.0

    def arm(self, seconds: float, kind: str) -> None:
        """
        Expire C{kind} C{seconds} from now.
        """
        self.kind = kind
        at = self.at = self._clock.seconds() + seconds
        call = self._call
        if call is not None and call.active():
            if at >= call.getTime():
                call.reset(seconds)
                return
            call.cancel()
        self._call = self._clock.callLater(seconds, self._fired)

    def expect(self, kind: str, at: float) -> None:
        """
        Expire C{kind} at the absolute time C{at}, without rescheduling when the timer already
        fires no later than that.
        """
        call = self._call
        if call is not None and call.active() and call.getTime() <= at:
            self.kind = kind
            self.at = at
        else:
            self.arm(at - self._clock.seconds(), kind)

    def cancel(self) -> None:
        """
        Stop the timer.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fired(self) -> None:
        self._call = None
        remaining = self.at - self._clock.seconds()
        if remaining > 0.001:
            self.arm(remaining, self.kind)
            return
        self._onExpired(self.kind)
