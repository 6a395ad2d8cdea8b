"""
Shared test helpers: configs built through the real parser, and transports with half-close.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import StringTransport

from meshproxy.config import Config, parseConfig


def configDocument(
    listeners: list[dict[str, Any]] | None = None,
    clusters: list[dict[str, Any]] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """
    A MOSN v2 document with one server; defaults to a tcp_proxy listener and a two-host cluster.
    """
    if clusters is None:
        clusters = [
            {
                "name": "backend",
                "type": "SIMPLE",
                "lb_type": "LB_ROUNDROBIN",
                "hosts": [{"address": "127.0.0.1:9001"}, {"address": "127.0.0.1:9002"}],
            }
        ]
    if listeners is None:
        listeners = [tcpListener()]
    doc: dict[str, Any] = {
        "servers": [{"listeners": listeners}],
        "cluster_manager": {"clusters": clusters},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
    }
    doc.update(top)
    return doc


def tcpListener(
    name: str = "l1", address: str = "127.0.0.1:8080", cluster: str = "backend", **extra: Any
) -> dict[str, Any]:
    """
    A listener whose single chain relays to C{cluster}; C{extra} keys go on the listener, except
    C{tcp_proxy}, whose dict is merged into the filter config.
    """
    tcpConfig: dict[str, Any] = {"cluster": cluster}
    tcpConfig.update(extra.pop("tcp_proxy", {}))
    listener: dict[str, Any] = {
        "name": name,
        "address": address,
        "filter_chains": [{"filters": [{"type": "tcp_proxy", "config": tcpConfig}]}],
    }
    listener.update(extra)
    return listener


def makeConfig(doc: dict[str, Any] | None = None, **kw: Any) -> Config:
    """
    Parse C{doc} (or L{configDocument}C{(**kw)}) with the real config parser.
    """
    return parseConfig(json.dumps(doc if doc is not None else configDocument(**kw)).encode())


class HalfCloseTransport(StringTransport):
    """
    A L{StringTransport} that records half-close and abort, and dispatches to C{protocol} like a
    real TCP transport (so protocol switching can be observed).
    """

    def __init__(self, host: str = "10.0.0.1", port: int = 40000) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=IPv4Address("TCP", host, port)
        )
        self.writeClosed = False
        self.aborted = False
        self.protocol: Any = None
        self.bufferSize = 65536

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True

    def deliver(self, data: bytes) -> None:
        """
        Hand C{data} to whichever protocol the transport currently dispatches to.
        """
        self.protocol.dataReceived(data)

    def deliverEOF(self) -> None:
        """
        Tell the current protocol that the peer half-closed, as a TCP transport does.
        """
        halfCloseable = IHalfCloseableProtocol(self.protocol, None)
        if halfCloseable is not None:
            halfCloseable.readConnectionLost()
        else:
            self.loseConnection()
