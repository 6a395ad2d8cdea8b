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

A read event on a connected TCP connection (the event of every proxied request, twice) is handled
in the loop itself: C{recv} and the protocol's C{dataReceived}, with the error handling of
C{_doReadOrWrite} and C{tcp.Connection.doRead} (an error from the protocol is logged and disconnects
that connection; an empty read is the peer's EOF), without their three Python frames.  Any other
event, and any connection whose C{doRead} is not C{tcp.Connection}'s (a client still connecting, an
aborted connection), goes through C{_doReadOrWrite}.

The same loop holds the turn's direct writes (L{meshproxy.proxy.directwrite.WriteBatch}): each
transport written to during the turn gets one send when the turn ends, so a peer is woken once per
turn rather than once per response.
"""

from __future__ import annotations

import errno
import select
import sys
from types import MethodType
from typing import Any

from twisted.internet import tcp
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python import log

from meshproxy.proxy.directwrite import BATCH

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # not Linux
    EPollReactor = None  # type: ignore[assignment,misc]

EPOLLIN: int = getattr(select, "EPOLLIN", 1)

#: Connections whose class's doRead is tcp.Connection's own: their read events are handled in the
#: loop (unless the instance replaced it).
_PLAIN_TCP = frozenset([tcp.Server, tcp.Client])


def doPoll(self: Any, timeout: float | None) -> None:
    """
    C{EPollReactor.doPoll} without the log context, with TCP reads handled in the loop and the
    direct writes of the turn held in L{BATCH} and sent when every event has run.
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
    plain = _PLAIN_TCP
    BATCH.open()
    try:
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event != EPOLLIN or type(selectable) not in plain or "doRead" in selectable.__dict__:
                # Anything but a connected TCP connection with only bytes to read (a client still
                # connecting, or an aborted connection, has its own doRead): Twisted's dispatch.
                dispatch(selectable, fd, event)
                continue
            # What _doReadOrWrite, tcp.Connection.doRead and _dataReceived do for it, in this frame.
            try:
                data = selectable.socket.recv(selectable.bufferSize)
            except BlockingIOError:
                continue
            except OSError:
                why: Any = CONNECTION_LOST
            else:
                if data:
                    try:
                        why = selectable.protocol.dataReceived(data)
                    except BaseException:
                        why = sys.exc_info()[1]
                        log.err()
                else:
                    why = CONNECTION_DONE
            if why:
                self._disconnectSelectable(selectable, why, True)
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
