"""
The epoll reactor's event dispatch without Twisted's per-event log context.

For every ready descriptor, C{EPollReactor.doPoll} calls C{log.callWithLogger}, which asks the
selectable for its log prefix, copies the legacy logging context dictionary, pushes it, calls
C{_doReadOrWrite} and pops it again: about a dozen Python calls per event, and a proxied request
is two events (the client's request, the upstream's response).  That context only names the
connection in the C{system} field of messages logged through the legacy C{twisted.python.log}
API while the event runs; meshproxy logs through C{twisted.logger}, which does not read it.

L{install} replaces C{doIteration} on one running epoll reactor with L{doPoll}, which is
Twisted's own loop minus that wrapper: same poll call, same C{_doReadOrWrite} (which still catches
and logs every exception from application code and disconnects the selectable), same handling of
EINTR.  Unhandled errors logged there then carry C{system} C{-} instead of the connection's
prefix.  Any other reactor is left alone.

The same loop holds the turn's direct writes (L{meshproxy.proxy.directwrite.WriteBatch}): each
transport written to during the turn gets one send when the turn ends, so a peer is woken once per
turn rather than once per response.
"""

from __future__ import annotations

import errno
from types import MethodType
from typing import Any

from meshproxy.proxy.directwrite import BATCH

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux
    EPollReactor = None  # type: ignore[assignment,misc]


def doPoll(self: Any, timeout: float | None) -> None:
    """
    C{EPollReactor.doPoll} calling C{_doReadOrWrite} directly, with the direct writes of the turn
    held in L{BATCH} and sent when every event has run.
    """
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    dispatch = self._doReadOrWrite
    BATCH.open()
    try:
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                dispatch(selectable, fd, event)
    finally:
        BATCH.flush()


def install(reactor: Any) -> bool:
    """
    Use L{doPoll} for C{reactor} if it is Twisted's epoll reactor (exactly: a subclass may poll
    differently); say whether it was installed.
    """
    if EPollReactor is None or type(reactor) is not EPollReactor:
        return False
    setattr(reactor, "doIteration", MethodType(doPoll, reactor))  # this instance only
    return True
