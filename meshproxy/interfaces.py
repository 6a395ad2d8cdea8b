"""
The zope interfaces that meshproxy's parts meet through.

Siblings never import each other's internals: a listener knows its network filters only as
L{INetworkFilterFactory}, a network filter knows its upstreams only as L{ICluster}.  Every
implementation has a C{verifyObject} test.
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

from twisted.internet.protocol import ClientFactory
from zope.interface import Attribute, Interface


class IDownstreamConnection(Interface):
    """
    One accepted client connection, as the sniffer hands it to a network filter.

    It carries what was learnt before the hand-off (addresses, the sniff verdict, SNI and ALPN)
    and lets the network filter report the end of the connection back to its listener.
    """

    listenerName = Attribute("The name of the listener that accepted the connection (C{str}).")
    chainName = Attribute("The name of the filter chain that was chosen (C{str}).")
    clientAddress = Attribute(
        "The client's C{(host, port)}: from the PROXY protocol header when there was one, "
        "else the peer address; C{None} for a unix socket peer."
    )
    localAddress = Attribute("The C{(host, port)} the client connected to (or the PROXY header's destination).")
    protocol = Attribute(
        "The sniffed protocol: C{'tls'}, C{'http1'}, C{'http2'} or C{'raw'}; when the chain terminates TLS, "
        "the decrypted stream's (so never C{'tls'} then)."
    )
    serverName = Attribute("The TLS SNI host name, or C{None}.")
    alpn = Attribute("The ALPN protocols the client offered, a tuple of C{str}.")
    tls = Attribute("C{True} when meshproxy terminated TLS on this connection (C{False} for passthrough).")
    tlsVersion = Attribute("The negotiated TLS version (C{'TLSv1.2'}, C{'TLSv1.3'}), or C{None}.")
    tlsCipher = Attribute("The negotiated cipher suite, OpenSSL's name (C{'TLS_AES_128_GCM_SHA256'}), or C{None}.")
    tlsALPN = Attribute("The negotiated ALPN protocol (C{'http/1.1'}), or C{None}.")
    peerCertificateSubject = Attribute(
        "The verified client certificate's subject, RFC 4514 (C{'O=Example,CN=client'}), or C{None} without mTLS."
    )
    peerCertificateURIs = Attribute("The verified client certificate's SAN URIs (SPIFFE IDs), a tuple of C{str}.")
    peerCertificateDNSNames = Attribute("The verified client certificate's SAN DNS names, a tuple of C{str}.")
    peerCertificateHash = Attribute(
        "The SHA-256 of the verified client certificate's DER form, lower-case hex (XFCC's C{Hash}), or C{None}."
    )
    peerCertificatePEM = Attribute("The verified client certificate in PEM (C{bytes}), or C{None}.")
    acceptedAt = Attribute("When the connection was accepted, in the listener clock's seconds.")
    bytesReceived = Attribute("The listener's counter of bytes received from clients (L{meshproxy.stats.Counter}).")
    bytesSent = Attribute("The listener's counter of bytes sent to clients (L{meshproxy.stats.Counter}).")
    accessLog = Attribute("The listener's access log (falsy when it has none): C{record(mapping)}.")
    draining = Attribute("C{True} once the listener is shutting down: finish what is in flight, take no more.")

    onDrain = Attribute(
        "A callable the network filter may set: called once when the listener starts draining."
    )

    def closed() -> None:
        """
        Tell the listener this connection has ended (called once, from C{connectionLost}).
        """


class INetworkFilterFactory(Interface):
    """
    Builds the protocol that serves one connection once its filter chain is chosen (C{tcp_proxy},
    C{proxy}).
    """

    name = Attribute("The MOSN filter type this factory implements, e.g. C{'tcp_proxy'} (C{str}).")

    def buildProtocol(downstream: IDownstreamConnection) -> object:
        """
        Return an C{IProtocol} for C{downstream}; the sniffer connects it to the transport and
        replays the bytes it buffered into it.
        """


class IUpstreamHost(Interface):
    """
    One host of a cluster, with its live counters.
    """

    address = Attribute("The address as configured, e.g. C{'127.0.0.1:8080'} (C{str}).")
    weight = Attribute("The load-balancing weight, 1..128 (C{int}).")
    healthy = Attribute("C{False} while the host is ejected or failing health checks (C{bool}).")
    activeConnections = Attribute("Open upstream connections to this host (C{int}).")
    activeRequests = Attribute("Requests or sessions in flight on this host (C{int}).")


class ICluster(Interface):
    """
    A named set of upstream hosts with a load balancer and a way to connect to them.
    """

    name = Attribute("The cluster's name (C{str}).")
    hosts = Attribute("The cluster's hosts, a sequence of L{IUpstreamHost}.")
    connectTimeout = Attribute("Seconds allowed to establish one upstream connection (C{float}).")
    bufferLimit = Attribute("Per-direction write buffer high watermark in bytes (C{int}).")

    def chooseHost(
        exclude: Collection[object] = (), hashKey: int | None = None, metadataMatch: tuple[tuple[str, str], ...] = ()
    ) -> IUpstreamHost | None:
        """
        Pick a host with the cluster's load balancer among its candidates (healthy hosts, or all in
        panic mode; the subset C{metadataMatch} selects when the cluster has subsets), skipping those
        in C{exclude}; C{hashKey} drives consistent hashing.  C{None} when no host can be chosen.
        """

    def admitRequest() -> bool:
        """
        Take a place among the cluster's C{max_requests} in flight; C{False} when none is free.
        """

    def requestDone() -> None:
        """
        Give back a place taken by L{admitRequest}.
        """

    def hostSucceeded(host: Any) -> None:
        """
        C{host} answered well (for outlier detection).
        """

    def hostFailed(host: Any, reason: str) -> None:
        """
        C{host} failed: C{"connect_failure"}, C{"reset"}, C{"timeout"} or C{"status_5xx"}.
        """

    def connect(host: IUpstreamHost, factory: ClientFactory) -> object:
        """
        Open a connection to C{host} with the client C{factory} (an C{IProtocolFactory} whose
        C{clientConnectionFailed} is told of failures), honouring L{connectTimeout}.
        """


class IRouter(Interface):
    """
    An immutable HTTP route table: request facts in bytes, a prebuilt route entry out.
    (L{meshproxy.routing.table.RouteTable}.)
    """

    name = Attribute("The router's C{router_config_name} (C{str}).")

    def route(
        host: bytes | None, target: bytes, method: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> object:
        """
        Return the route entry (a L{meshproxy.routing.route.Route}) for one request, or C{None} when
        no virtual host or no entry matches (the proxy answers 404).

        C{host} is the raw Host value (C{None} if absent), C{target} the origin-form request target
        with its query, C{headers} the request headers as received C{(name, value)} pairs.
        """

    def explain(host: str, path: str, method: str = "GET", headers: Sequence[tuple[str, str]] = ()) -> dict:
        """
        Say, JSON-ready, which virtual host and entry a request would get and why (the admin's
        C{/api/v1/explain}).
        """


class IStreamFilter(Interface):
    """
    Per-request hooks on the HTTP path: request phase in order, response phase in reverse.
    (Built by the HTTP/1 proxy work.)
    """

    def onRequestHead(request: object) -> object:
        """
        Inspect or edit a request head; return C{None} to continue or a response to answer with.
        """

    def onResponseHead(response: object) -> None:
        """
        Inspect or edit a response head before it goes to the client.
        """
