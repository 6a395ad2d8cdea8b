"""
The NATS client text protocol without I/O: an incremental parser for what a server sends, encoders
for what a client sends, and the small pure decisions the client makes (server addresses, backoff).

The parser is fed whatever bytes arrived and returns the complete operations they finish.  It finds
line ends with C{bytes.find}, never one Python call per byte, and reads C{MSG} payloads by their byte
count, so a payload may hold CRLF and the stream may be split anywhere.  It bounds both the control
line and the payload (the server's C{max_payload}), so a broken or hostile server cannot make the
client buffer without limit: either bound exceeded is a L{NATSProtocolError}, after which the
connection is useless and must be dropped.

Subjects are text.  They are decoded from and encoded to UTF-8 with C{surrogateescape}, so any bytes
a server relays survive a round trip (a reply subject is published to exactly as it arrived).
"""

from __future__ import annotations

import enum
import json
import random
from typing import Any, Callable, Union

import attr

#: Longest control line accepted (an C{INFO} with many C{connect_urls} is the long one).
DEFAULT_MAX_CONTROL_LINE = 64 * 1024

#: Payload bound until the server's C{INFO} gives its own C{max_payload} (nats-server's default).
DEFAULT_MAX_PAYLOAD = 1024 * 1024

#: The largest C{max_payload} we accept from a server, whatever it advertises.
MAX_PAYLOAD_CEILING = 64 * 1024 * 1024

PING = b"PING\r\n"
PONG = b"PONG\r\n"

_CRLF = b"\r\n"


class NATSError(Exception):
    """
    Base of the NATS client's own errors.
    """


class NATSProtocolError(NATSError):
    """
    The server broke the protocol (unknown operation, malformed line, bad framing, or a bound
    exceeded); the connection cannot be trusted any more.  C{operations} holds those completed in
    the same L{NATSParser.feed} before the error, which are still valid.
    """

    operations: list[Operation] = []


class NATSTimeoutError(NATSError):
    """
    A request had no reply in time.
    """


class NATSClosedError(NATSError):
    """
    The client was stopped while the operation was waiting.
    """


class NATSNotConnectedError(NATSError):
    """
    The operation needs a connection and there is none.
    """


class NATSPayloadTooLarge(NATSError, ValueError):
    """
    A payload larger than the server's C{max_payload}.
    """


class Control(enum.Enum):
    """
    Operations from the server that carry no arguments.
    """

    PING = "PING"
    PONG = "PONG"
    OK = "+OK"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ServerInfo:
    """
    An C{INFO} operation: the server's JSON object as parsed.
    """

    info: dict[str, Any]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ServerError:
    """
    A C{-ERR} operation; C{message} has its quotes removed.
    """

    message: str


@attr.s(frozen=True, slots=True, auto_attribs=True)
class NATSMessage:
    """
    A message delivered on a subscription (C{MSG}), as subscription callbacks receive it.
    """

    subject: str
    sid: int
    reply: str | None
    payload: bytes


Operation = Union[Control, ServerInfo, ServerError, NATSMessage]
Server = tuple[str, int]
MessageCallback = Callable[[NATSMessage], object]


def decodeSubject(raw: bytes) -> str:
    """
    A subject as text (lossless for any bytes, see the module docstring).
    """
    return raw.decode("utf-8", "surrogateescape")


def encodeSubject(subject: str) -> bytes:
    """
    A subject as bytes; refuses what would break the framing (empty, or containing white space).
    """
    raw = subject.encode("utf-8", "surrogateescape")
    if raw.split() != [raw]:
        raise ValueError("invalid NATS subject %r" % (subject,))
    return raw


class NATSParser:
    """
    Incremental parser for the server side of the NATS text protocol.

    States: reading a control line (the buffer holds an incomplete line, and C{_scanned} says how
    much of it has been searched for CRLF already), or reading a payload (C{_message} holds the
    C{MSG} line's fields and C{_size} the payload's byte count).  After a L{NATSProtocolError} the
    parser is spent and every later L{feed} raises again.
    """

    def __init__(
        self, maxControlLine: int = DEFAULT_MAX_CONTROL_LINE, maxPayload: int = DEFAULT_MAX_PAYLOAD
    ) -> None:
        self.maxControlLine = maxControlLine
        #: The payload bound; the client raises it to the server's C{max_payload} on C{INFO}.
        self.maxPayload = maxPayload
        self._buffer = bytearray()
        self._scanned = 0
        self._message: tuple[str, int, str | None] | None = None
        self._size = 0
        self._broken: NATSProtocolError | None = None

    def buffered(self) -> int:
        """
        How many received bytes are held waiting for the rest of an operation.
        """
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Operation]:
        """
        Take the next bytes from the server; return the operations they complete, in order.

        @raise NATSProtocolError: the stream is not valid NATS; the connection must be dropped.
        """
        if self._broken is not None:
            raise NATSProtocolError("parser already failed: %s" % (self._broken,))
        buffer = self._buffer
        buffer += data
        operations: list[Operation] = []
        position = 0
        end = len(buffer)
        try:
            while position < end:
                if self._message is not None:
                    stop = position + self._size
                    if end < stop + 2:
                        break
                    if buffer[stop : stop + 2] != _CRLF:
                        raise NATSProtocolError("MSG payload not followed by CRLF")
                    subject, sid, reply = self._message
                    operations.append(NATSMessage(subject, sid, reply, bytes(buffer[position:stop])))
                    self._message = None
                    position = stop + 2
                    continue
                lineEnd = buffer.find(_CRLF, max(position, self._scanned - 1))
                if lineEnd < 0:
                    if end - position > self.maxControlLine:
                        raise NATSProtocolError("control line longer than %d bytes" % (self.maxControlLine,))
                    self._scanned = end
                    break
                if lineEnd - position > self.maxControlLine:
                    raise NATSProtocolError("control line longer than %d bytes" % (self.maxControlLine,))
                line = bytes(buffer[position:lineEnd])
                position = lineEnd + 2
                self._scanned = position
                operation = self._controlLine(line)
                if operation is not None:
                    operations.append(operation)
        except NATSProtocolError as e:
            self._broken = e
            del buffer[:]
            e.operations = operations
            raise
        del buffer[:position]
        self._scanned = max(0, self._scanned - position)
        return operations

    def _controlLine(self, line: bytes) -> Operation | None:
        """
        One control line: an operation, or L{None} for a C{MSG} whose payload is still to come.
        """
        parts = line.split(None, 1)
        op = parts[0].upper() if parts else b""
        rest = parts[1] if len(parts) > 1 else b""
        if op == b"MSG":
            args = rest.split()
            if len(args) == 3:
                subject, sid, size = args
                reply = None
            elif len(args) == 4:
                subject, sid, replyRaw, size = args
                reply = decodeSubject(replyRaw)
            else:
                raise NATSProtocolError("MSG with %d arguments" % (len(args),))
            if not (size.isdigit() and sid.isdigit()):
                raise NATSProtocolError("MSG with a bad sid or size: %r" % (line[:200],))
            count = int(size)
            if count > self.maxPayload:
                raise NATSProtocolError("MSG payload of %d bytes exceeds %d" % (count, self.maxPayload))
            self._message = (decodeSubject(subject), int(sid), reply)
            self._size = count
            return None
        if op == b"PING" and not rest.strip():
            return Control.PING
        if op == b"PONG" and not rest.strip():
            return Control.PONG
        if op == b"+OK" and not rest.strip():
            return Control.OK
        if op == b"-ERR":
            return ServerError(rest.strip().strip(b"'").decode("utf-8", "replace"))
        if op == b"INFO":
            try:
                info = json.loads(rest)
            except ValueError:
                raise NATSProtocolError("INFO is not JSON") from None
            if not isinstance(info, dict):
                raise NATSProtocolError("INFO is not a JSON object")
            return ServerInfo(info)
        raise NATSProtocolError("unknown operation %r" % (line[:40],))


def encodeConnect(
    name: str,
    version: str,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
) -> bytes:
    """
    The C{CONNECT} line: quiet (no C{+OK}), not pedantic, echo on, no headers, with credentials if
    given.
    """
    options: dict[str, Any] = {
        "verbose": False,
        "pedantic": False,
        "name": name,
        "lang": "python-twisted",
        "version": version,
        "protocol": 1,
        "echo": True,
        "headers": False,
    }
    if user is not None:
        options["user"] = user
        options["pass"] = password if password is not None else ""
    if token is not None:
        options["auth_token"] = token
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + _CRLF


def encodePub(subject: bytes, payload: bytes, reply: bytes | None = None) -> bytes:
    """
    A C{PUB} with its payload; C{subject} and C{reply} already checked by L{encodeSubject}.
    """
    if reply is None:
        return b"PUB %s %d\r\n%s\r\n" % (subject, len(payload), payload)
    return b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, len(payload), payload)


def encodeSub(subject: bytes, sid: int, queue: bytes | None = None) -> bytes:
    """
    A C{SUB}, with a queue group if given.
    """
    if queue is None:
        return b"SUB %s %d\r\n" % (subject, sid)
    return b"SUB %s %s %d\r\n" % (subject, queue, sid)


def encodeUnsub(sid: int, maxMessages: int | None = None) -> bytes:
    """
    An C{UNSUB}: now, or (with C{maxMessages}) after that many messages in all on the subscription.
    """
    if maxMessages is None:
        return b"UNSUB %d\r\n" % (sid,)
    return b"UNSUB %d %d\r\n" % (sid, maxMessages)


def parseServerAddress(url: str) -> tuple[str, int] | None:
    """
    A C{connect_urls} entry (C{host:port}, C{[v6]:port}, optionally C{nats://}) as C{(host, port)},
    or L{None} if it is not one.
    """
    if not isinstance(url, str):
        return None
    if "://" in url:
        url = url.split("://", 1)[1]
    url = url.rsplit("@", 1)[-1].rstrip("/")
    host, sep, port = url.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() for c in host):
        return None
    return host, int(port)


def backoffDelay(
    attempt: int,
    initial: float,
    maximum: float,
    rng: random.Random,
    factor: float = 2.0,
    jitter: float = 0.2,
) -> float:
    """
    Seconds to wait before retry number C{attempt} (0 for the first): C{initial * factor**attempt}
    capped at C{maximum}, then shortened by a random fraction up to C{jitter} so that many clients
    cut off at once do not come back in step.  Never more than C{maximum}.
    """
    base = min(maximum, initial * factor ** min(attempt, 100))
    return base * (1.0 - jitter * rng.random())


@attr.s(slots=True, auto_attribs=True)
class Subscription:
    """
    A live subscription as the client remembers it, to send it again on every new connection.
    """

    subject: bytes
    queue: bytes | None
    callback: MessageCallback
    maxMessages: int | None = None
    received: int = 0

    def lines(self, sid: int) -> bytes:
        """
        The C{SUB} (and C{UNSUB} for what is left of an auto-unsubscribe) that recreate it.
        """
        line = encodeSub(self.subject, sid, self.queue)
        if self.maxMessages is not None:
            line += encodeUnsub(sid, self.maxMessages - self.received)
        return line


class ServerList:
    """
    The servers a client tries in turn: the configured ones, then those the cluster advertises.

    Each C{INFO} that has C{connect_urls} replaces the discovered part (configured servers are
    never removed, duplicates are dropped), so servers that left the cluster are forgotten.
    C{index} is the position of the server last handed out by L{next}, -1 before the first.
    """

    def __init__(self, configured: list[Server], discover: bool = True) -> None:
        if not configured:
            raise ValueError("at least one NATS server is needed")
        self.configured = [(host, int(port)) for host, port in configured]
        self.discovered: list[Server] = []
        self.servers = list(self.configured)
        self.discover = discover
        self.index = -1

    def next(self) -> Server:
        """
        The server to try next, round robin.
        """
        self.index = (self.index + 1) % len(self.servers)
        return self.servers[self.index]

    def learn(self, urls: object) -> bool:
        """
        Take an C{INFO}'s C{connect_urls}; return whether the list changed.
        """
        if not self.discover or not isinstance(urls, list):
            return False
        discovered: list[Server] = []
        for url in urls:
            address = parseServerAddress(url)
            if address is not None and address not in self.configured and address not in discovered:
                discovered.append(address)
        if discovered == self.discovered:
            return False
        current = self.servers[self.index] if self.index >= 0 else None
        self.discovered = discovered
        self.servers = self.configured + discovered
        self.index = self.servers.index(current) if current in self.servers else -1
        return True
