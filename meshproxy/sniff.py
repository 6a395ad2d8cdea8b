"""
The sniffing protocol: the first protocol on every accepted connection.

It buffers the first bytes (up to the listener's C{sniff_max_bytes} and C{sniff_timeout}), strips
a PROXY protocol header when the listener expects one, classifies the rest with the pure
L{meshproxy.classify.classify}, picks a filter chain, then installs the chain's protocol on the
transport and replays the buffered bytes into it.  After the hand-off it is out of the data path
entirely: the transport calls the new protocol directly.

A chain that terminates TLS gives a TLS protocol instead (L{meshproxy.tls.ChainTLS.buildProtocol}),
which handshakes with the replayed ClientHello and sniffs the decrypted stream again.  A TLS client
for which no chain exists gets a fatal C{unrecognized_name} alert before the connection closes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.classify import Verdict, classify
from meshproxy.needmore import NEED_MORE
from meshproxy.proxyproto import ProxyHeader, parseProxyHeader

_V1_SIGNATURE = b"PROXY "
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: A fatal TLS alert record, C{unrecognized_name} (112): sent to a TLS client that asked for a name
#: nothing on the listener serves.  The record version is TLS 1.0's, which every client accepts
#: before a version is negotiated.
UNRECOGNIZED_NAME_ALERT = b"\x15\x03\x01\x00\x02\x02\x70"


def couldBeProxyHeader(data: bytes) -> bool:
    """
    Whether C{data} starts like a PROXY protocol v1 or v2 header (or is a prefix of one).
    """
    size = min(len(data), 12)
    return data[:6] == _V1_SIGNATURE[: min(size, 6)] or data[:size] == _V2_SIGNATURE[:size]


def switchProtocol(transport: Any, old: object, new: object) -> None:
    """
    Make C{transport} deliver to C{new} instead of C{old}.

    TCP and UNIX transports (and iosim's) dispatch through C{transport.protocol}; protocol
    wrappers such as C{TLSMemoryBIOProtocol} through C{wrappedProtocol}.
    """
    if getattr(transport, "wrappedProtocol", None) is old:
        transport.wrappedProtocol = new
    elif getattr(transport, "protocol", None) is old:
        transport.protocol = new


def handOff(transport: Any, old: object, new: Any, buffered: bytes) -> None:
    """
    Give C{transport} to C{new} (in place of C{old}), connect it, and replay the C{buffered} bytes.
    """
    switchProtocol(transport, old, new)
    new.makeConnection(transport)
    if buffered:
        new.dataReceived(buffered)


@implementer(IHalfCloseableProtocol)
class SniffingProtocol(Protocol):
    """
    Classifies one connection and hands it to a filter chain.

    States:
      - PROXY_HEADER: the listener expects a PROXY protocol header; waiting for all of it.
      - SNIFFING: buffering until L{classify} gives a verdict, the buffer cap is reached, the
        client half-closes, or the deadline passes.
      - HANDED_OFF: a chain's protocol owns the transport.
      - CLOSED: the connection ended before a hand-off, or no chain could take it.
    """

    log = Logger()

    PROXY_HEADER, SNIFFING, HANDED_OFF, CLOSED = "PROXY_HEADER", "SNIFFING", "HANDED_OFF", "CLOSED"

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.state = self.PROXY_HEADER if listener.config.proxyProtocol is not None else self.SNIFFING
        self.downstream: Any = None
        self._buffer = b""
        self._eof = False
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.downstream = self.listener.connectionOpened(self.transport)
        self._timer = self.listener.clock.callLater(self.listener.config.sniffTimeout, self._deadline)

    def dataReceived(self, data: bytes) -> None:
        if self.state in (self.HANDED_OFF, self.CLOSED):
            return
        self._buffer += data
        if self.state == self.PROXY_HEADER and not self._readProxyHeader():
            return
        self._classify()

    def _readProxyHeader(self) -> bool:
        """
        Consume a PROXY header from the buffer; C{True} once sniffing may go on.
        """
        config = self.listener.config.proxyProtocol
        buffer = self._buffer
        if config.allowMissing and not couldBeProxyHeader(buffer):
            self.state = self.SNIFFING
            return True
        result = parseProxyHeader(buffer, maxLength=self.listener.config.sniffMaxBytes)
        if result is NEED_MORE:
            if len(buffer) >= self.listener.config.sniffMaxBytes:
                self._reject("proxy_protocol_error", "PROXY header longer than the sniff buffer")
            return False
        if not isinstance(result, ProxyHeader):
            self._reject("proxy_protocol_error", getattr(result, "reason", "malformed PROXY header"))
            return False
        if result.command == "PROXY" and result.source is not None:
            self.downstream.clientAddress = result.source
            self.downstream.localAddress = result.destination
        self.downstream.proxyHeader = result
        self._buffer = buffer[result.length :]
        self.state = self.SNIFFING
        return bool(self._buffer) or self._eof

    def _classify(self, final: bool = False) -> None:
        """
        Classify the buffer; C{final} (client EOF or the deadline) forces a verdict.
        """
        verdict = classify(self._buffer, eof=final or self._eof, maxBytes=self.listener.config.sniffMaxBytes)
        if verdict is not NEED_MORE:
            assert isinstance(verdict, Verdict)
            self._handOff(verdict)

    def _deadline(self) -> None:
        self._timer = None
        if self.state == self.PROXY_HEADER:
            self._reject("proxy_protocol_timeout", "no complete PROXY header before the deadline")
            return
        self.listener.sniffTimeouts.inc()
        self._classify(final=True)

    def readConnectionLost(self) -> None:
        """
        The client half-closed before a verdict: decide with what arrived, then pass the FIN on.
        """
        self._eof = True
        if self.state == self.PROXY_HEADER:
            self._reject("proxy_protocol_error", "connection half-closed inside the PROXY header")
        elif self.state == self.SNIFFING:
            self._classify()

    def writeConnectionLost(self) -> None:
        """
        Not used before the hand-off.
        """

    def _reject(self, counter: str, reason: str) -> None:
        self.listener.rejected(counter, reason, self.downstream)
        self._stop()
        self.state = self.CLOSED
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _handOff(self, verdict: Verdict) -> None:
        self._stop()
        chain = self.listener.chooseChain(verdict, self.downstream)
        if chain is None:
            self.state = self.CLOSED
            if verdict.clientHello is not None:
                self.transport.write(UNRECOGNIZED_NAME_ALERT)  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if chain.tls is not None and verdict.protocol == "tls":
            protocol = chain.tls.buildProtocol(chain, self.listener, self.downstream, verdict.serverName)
        else:
            protocol = chain.buildProtocol(self.downstream)
        transport = self.transport
        self.state = self.HANDED_OFF
        buffer, self._buffer = self._buffer, b""
        handOff(transport, self, protocol, buffer)
        if self._eof and not self.downstream.isClosed:
            halfCloseable = IHalfCloseableProtocol(protocol, None)
            if halfCloseable is not None:
                halfCloseable.readConnectionLost()
            else:
                transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.state == self.HANDED_OFF:
            return
        self._stop()
        self.state = self.CLOSED
        if self.downstream is not None:
            self.downstream.closed()
