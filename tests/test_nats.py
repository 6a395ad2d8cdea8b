"""
Tests for L{meshproxy.natsproto} (the pure NATS protocol parts) and L{meshproxy.nats} (the client),
as transcripts over L{StringTransport} with a L{MemoryReactorClock}.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.nats import NATSClient, NATSClientProtocol
from meshproxy.natsproto import (
    Control,
    NATSClosedError,
    NATSMessage,
    NATSNotConnectedError,
    NATSParser,
    NATSPayloadTooLarge,
    NATSProtocolError,
    NATSTimeoutError,
    ServerError,
    ServerInfo,
    ServerList,
    backoffDelay,
    encodeConnect,
    encodePub,
    encodeSub,
    encodeSubject,
    encodeUnsub,
    parseServerAddress,
)

INFO = {"server_id": "N1", "version": "2.9.10", "proto": 1, "max_payload": 1048576, "headers": True}


def feedBytewise(parser: NATSParser, data: bytes) -> list[Any]:
    """
    Feed C{data} one byte at a time; return all the operations that came out.
    """
    operations: list[Any] = []
    for i in range(len(data)):
        operations.extend(parser.feed(data[i : i + 1]))
    return operations


class ParserTests(SynchronousTestCase):
    """
    L{NATSParser}: what a server sends, however it is split.
    """

    def test_controlOperations(self) -> None:
        """
        PING, PONG, +OK, -ERR (quotes removed) and INFO (parsed JSON) come out in order.
        """
        parser = NATSParser()
        data = b"PING\r\nPONG\r\n+OK\r\n-ERR 'Invalid Subject'\r\nINFO {\"max_payload\":5}\r\n"
        self.assertEqual(
            parser.feed(data),
            [Control.PING, Control.PONG, Control.OK, ServerError("Invalid Subject"), ServerInfo({"max_payload": 5})],
        )
        self.assertEqual(parser.buffered(), 0)

    def test_operationNamesAnyCase(self) -> None:
        """
        Operation names are case-insensitive, as the protocol says.
        """
        ops = NATSParser().feed(b"ping\r\nmsg a 1 1\r\nx\r\n")
        self.assertEqual(ops, [Control.PING, NATSMessage("a", 1, None, b"x")])

    def test_message(self) -> None:
        """
        MSG with and without a reply subject.
        """
        parser = NATSParser()
        ops = parser.feed(b"MSG router.register 7 5\r\nhello\r\nMSG router.greet 2 _INBOX.x 0\r\n\r\n")
        self.assertEqual(
            ops, [NATSMessage("router.register", 7, None, b"hello"), NATSMessage("router.greet", 2, "_INBOX.x", b"")]
        )

    def test_bytewise(self) -> None:
        """
        A stream fed one byte at a time gives exactly what it gives in one piece, nothing early.
        """
        data = (
            b"INFO {\"a\":1}\r\nMSG s.1 1 R 12\r\nab\r\nMSG x\r\ny\r\nPING\r\n"
            b"MSG s.2 22 3\r\n\r\n\r\r\n-ERR 'Permissions Violation'\r\n"
        )
        whole = NATSParser().feed(data)
        self.assertEqual(len(whole), 5)
        self.assertEqual(whole[1], NATSMessage("s.1", 1, "R", b"ab\r\nMSG x\r\ny"))
        self.assertEqual(whole[3], NATSMessage("s.2", 22, None, b"\r\n\r"))
        self.assertEqual(feedBytewise(NATSParser(), data), whole)
        parser = NATSParser()
        message = b"MSG s 1 4\r\nabcd\r\n"
        for i in range(len(message) - 1):
            self.assertEqual(parser.feed(message[i : i + 1]), [])
        self.assertEqual(parser.feed(message[-1:]), [NATSMessage("s", 1, None, b"abcd")])

    def test_payloadWithCRLF(self) -> None:
        """
        The payload is read by its byte count: CRLF and protocol text inside it are payload.
        """
        payload = b"\r\nPING\r\nMSG a 1 1\r\n\r\n"
        ops = NATSParser().feed(b"MSG a 1 %d\r\n%s\r\nPONG\r\n" % (len(payload), payload))
        self.assertEqual(ops, [NATSMessage("a", 1, None, payload), Control.PONG])

    def test_oversizePayload(self) -> None:
        """
        A MSG announcing more than C{maxPayload} bytes is an error at its control line, before any
        payload is buffered; the parser stays broken.
        """
        parser = NATSParser(maxPayload=10)
        self.assertEqual(parser.feed(b"MSG a 1 10\r\n0123456789\r\n"), [NATSMessage("a", 1, None, b"0123456789")])
        self.assertRaises(NATSProtocolError, parser.feed, b"MSG a 1 11\r\n")
        self.assertEqual(parser.buffered(), 0)
        self.assertRaises(NATSProtocolError, parser.feed, b"PING\r\n")

    def test_longLine(self) -> None:
        """
        A control line longer than the bound is an error, with or without its CRLF yet.
        """
        parser = NATSParser(maxControlLine=20)
        self.assertEqual(parser.feed(b"-ERR '0123456789'\r\n"), [ServerError("0123456789")])
        self.assertEqual(parser.feed(b"INFO {\"a\":\"01234"), [])
        self.assertRaises(NATSProtocolError, parser.feed, b"56789\"}")
        self.assertRaises(NATSProtocolError, NATSParser(maxControlLine=20).feed, b"INFO {\"a\":\"0123456789\"}\r\n")
        parser = NATSParser(maxControlLine=20)
        self.assertRaises(NATSProtocolError, feedBytewise, parser, b"x" * 22)

    def test_errorKeepsEarlierOperations(self) -> None:
        """
        Operations completed before an error in the same chunk come with the error.
        """
        with self.assertRaises(NATSProtocolError) as caught:
            NATSParser().feed(b"PING\r\nMSG a 1 1\r\nx\r\nBOGUS\r\nPONG\r\n")
        self.assertEqual(caught.exception.operations, [Control.PING, NATSMessage("a", 1, None, b"x")])

    def test_malformed(self) -> None:
        """
        Unknown operations, bad MSG arguments, a payload without its CRLF and bad INFO are errors.
        """
        for data in [
            b"HELLO\r\n",
            b"\r\n",
            b"PING x\r\n",
            b"MSG a 1\r\n",
            b"MSG a b c d e\r\n",
            b"MSG a 1 -1\r\n",
            b"MSG a x 1\r\n",
            b"MSG a 1 2\r\nabcd",
            b"INFO {nope\r\n",
            b"INFO [1]\r\n",
        ]:
            self.assertRaises(NATSProtocolError, NATSParser().feed, data)


class EncoderTests(SynchronousTestCase):
    """
    What the client sends.
    """

    def test_connect(self) -> None:
        """
        CONNECT is quiet and not pedantic, names the client, and carries either user/pass or a token.
        """
        line = encodeConnect("mp", "1.2", user="u", password="p")
        self.assertTrue(line.startswith(b"CONNECT {") and line.endswith(b"}\r\n"))
        options = json.loads(line[8:])
        self.assertEqual(
            (options["verbose"], options["pedantic"], options["name"], options["lang"], options["version"]),
            (False, False, "mp", "python-twisted", "1.2"),
        )
        self.assertEqual((options["protocol"], options["user"], options["pass"]), (1, "u", "p"))
        self.assertNotIn("auth_token", options)
        options = json.loads(encodeConnect("mp", "1", token="t0k")[8:])
        self.assertEqual(options["auth_token"], "t0k")
        self.assertNotIn("user", options)
        self.assertFalse({"user", "pass", "auth_token"} & set(json.loads(encodeConnect("mp", "1")[8:])))

    def test_commands(self) -> None:
        """
        PUB, SUB and UNSUB in both their forms.
        """
        self.assertEqual(encodePub(b"a.b", b"x\r\ny"), b"PUB a.b 4\r\nx\r\ny\r\n")
        self.assertEqual(encodePub(b"a", b"", b"_INBOX.1"), b"PUB a _INBOX.1 0\r\n\r\n")
        self.assertEqual(encodeSub(b"router.*", 3), b"SUB router.* 3\r\n")
        self.assertEqual(encodeSub(b"a", 4, b"q"), b"SUB a q 4\r\n")
        self.assertEqual(encodeUnsub(5), b"UNSUB 5\r\n")
        self.assertEqual(encodeUnsub(5, 1), b"UNSUB 5 1\r\n")

    def test_subjects(self) -> None:
        """
        Subjects that would break the framing are refused; any bytes survive a decode/encode trip.
        """
        for bad in ["", " ", "a b", "a\r\n", "a\t", "\nb"]:
            self.assertRaises(ValueError, encodeSubject, bad)
        self.assertEqual(encodeSubject("r\u00e9.*"), "r\u00e9.*".encode())
        [message] = NATSParser().feed(b"MSG a.\xff 1 0\r\n\r\n")
        assert isinstance(message, NATSMessage)
        self.assertEqual(encodeSubject(message.subject), b"a.\xff")

    def test_serverAddress(self) -> None:
        """
        C{connect_urls} entries in their forms; nonsense is L{None}.
        """
        self.assertEqual(parseServerAddress("127.0.0.1:4222"), ("127.0.0.1", 4222))
        self.assertEqual(parseServerAddress("[::1]:4223"), ("::1", 4223))
        self.assertEqual(parseServerAddress("nats://u:p@n1.example:4224/"), ("n1.example", 4224))
        for bad in ["127.0.0.1", ":4222", "h:0", "h:65536", "h:x", 4222, None, "a b:1"]:
            self.assertIsNone(parseServerAddress(bad), bad)  # type: ignore[arg-type]

    def test_backoff(self) -> None:
        """
        Delays grow by the factor, are capped at the maximum, never exceed it, and the jitter only
        shortens them (by at most its fraction); a huge attempt number does not overflow.
        """
        rng = random.Random(1)
        delays = [backoffDelay(n, 0.25, 5.0, rng) for n in range(12)]
        for n, delay in enumerate(delays):
            base = min(5.0, 0.25 * 2**n)
            self.assertTrue(base * 0.8 <= delay <= base, (n, delay))
        self.assertEqual(delays, sorted(delays[:6]) + delays[6:])
        self.assertTrue(all(d <= 5.0 for d in delays))
        self.assertTrue(4.0 <= backoffDelay(10**6, 0.25, 5.0, rng) <= 5.0)
        self.assertEqual(backoffDelay(3, 1.0, 60.0, rng, jitter=0.0), 8.0)


class ServerListTests(SynchronousTestCase):
    """
    L{ServerList}: configured servers and those from C{connect_urls}.
    """

    def test_roundRobin(self) -> None:
        """
        L{ServerList.next} goes round the list.
        """
        servers = ServerList([("a", 1), ("b", 2)])
        self.assertEqual([servers.next() for _ in range(5)], [("a", 1), ("b", 2), ("a", 1), ("b", 2), ("a", 1)])
        self.assertRaises(ValueError, ServerList, [])

    def test_learn(self) -> None:
        """
        C{connect_urls} add servers after the configured ones, without duplicates; a later list
        replaces the earlier one, the current server keeps its turn, and a missing key changes nothing.
        """
        servers = ServerList([("127.0.0.1", 4222)])
        self.assertEqual(servers.next(), ("127.0.0.1", 4222))
        urls = ["127.0.0.1:4222", "127.0.0.1:4223", "127.0.0.1:4223", "[::1]:4224", "junk"]
        self.assertTrue(servers.learn(urls))
        self.assertEqual(servers.servers, [("127.0.0.1", 4222), ("127.0.0.1", 4223), ("::1", 4224)])
        self.assertFalse(servers.learn(urls))
        self.assertFalse(servers.learn(None))
        self.assertEqual(servers.next(), ("127.0.0.1", 4223))
        self.assertTrue(servers.learn(["127.0.0.1:4225", "127.0.0.1:4223"]))
        self.assertEqual(servers.servers, [("127.0.0.1", 4222), ("127.0.0.1", 4225), ("127.0.0.1", 4223)])
        self.assertEqual(servers.next(), ("127.0.0.1", 4222))
        fixed = ServerList([("a", 1)], discover=False)
        self.assertFalse(fixed.learn(["b:2"]))
        self.assertEqual(fixed.servers, [("a", 1)])


class Harness:
    """
    A L{NATSClient} on a L{MemoryReactorClock}, with connections faked over L{StringTransport}.
    """

    def __init__(self, **kw: Any) -> None:
        self.reactor = MemoryReactorClock()
        servers = kw.pop("servers", [("127.0.0.1", 4222), ("127.0.0.1", 4223)])
        kw.setdefault("rng", random.Random(5))
        self.client = NATSClient(self.reactor, servers, **kw)

    def accept(self) -> tuple[NATSClientProtocol, StringTransport]:
        """
        Let the last connection attempt succeed at the TCP level.
        """
        host, port, factory, timeout, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert isinstance(protocol, NATSClientProtocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def info(self, protocol: NATSClientProtocol, **extra: Any) -> None:
        """
        Send the server's INFO.
        """
        protocol.dataReceived(b"INFO " + json.dumps(dict(INFO, **extra)).encode() + b"\r\n")

    def connect(self, **info: Any) -> tuple[NATSClientProtocol, StringTransport]:
        """
        Accept the last attempt and complete the handshake (INFO, then the PONG).
        """
        protocol, transport = self.accept()
        self.info(protocol, **info)
        protocol.dataReceived(b"PONG\r\n")
        return protocol, transport

    def lose(self, protocol: NATSClientProtocol) -> None:
        """
        The connection closes.
        """
        protocol.connectionLost(Failure(ConnectionDone()))

    def refuse(self) -> None:
        """
        The last attempt fails at the TCP level.
        """
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(ConnectionRefusedError()))

    def retryDelay(self) -> float:
        """
        The delay of the one pending reconnect timer.
        """
        [call] = self.reactor.getDelayedCalls()
        return call.getTime() - self.reactor.seconds()


def lines(transport: StringTransport) -> list[bytes]:
    """
    What was written, split at CRLF, and cleared.
    """
    data = transport.value()
    transport.clear()
    return data.split(b"\r\n")[:-1]


class HandshakeTests(SynchronousTestCase):
    """
    Connecting: INFO, CONNECT, the subscriptions, PING, and the PONG that makes the client connected.
    """

    def test_connect(self) -> None:
        """
        C{start} dials the first server with the connect timeout; the INFO is answered with
        CONNECT and PING; the client is connected only at the PONG.
        """
        h = Harness(name="router-1", connectTimeout=3.0)
        h.client.start()
        self.assertEqual(h.reactor.tcpClients[0][:2], ("127.0.0.1", 4222))
        self.assertEqual(h.reactor.tcpClients[0][3], 3.0)
        protocol, transport = h.accept()
        self.assertEqual(transport.value(), b"")
        h.info(protocol)
        connect, ping = lines(transport)
        self.assertTrue(connect.startswith(b"CONNECT "))
        options = json.loads(connect[8:])
        self.assertEqual((options["name"], options["verbose"], options["pedantic"]), ("router-1", False, False))
        self.assertEqual((options["protocol"], options["lang"]), (1, "python-twisted"))
        self.assertEqual(ping, b"PING")
        self.assertFalse(h.client.connected)
        protocol.dataReceived(b"PONG\r\n")
        self.assertTrue(h.client.connected)
        self.assertEqual(h.client.connectedServer, ("127.0.0.1", 4222))
        self.assertEqual(h.reactor.getDelayedCalls()[0].getTime(), 20.0)

    def test_credentials(self) -> None:
        """
        User/password and token go into CONNECT; both at once are refused.
        """
        for kw, expected in [
            ({"user": "nats", "password": "s3"}, {"user": "nats", "pass": "s3"}),
            ({"token": "tok"}, {"auth_token": "tok"}),
        ]:
            h = Harness(**kw)
            h.client.start()
            protocol, transport = h.accept()
            h.info(protocol, auth_required=True)
            options = json.loads(lines(transport)[0][8:])
            self.assertEqual({k: options[k] for k in expected}, expected)
        self.assertRaises(ValueError, NATSClient, MemoryReactorClock(), [("h", 1)], user="u", token="t")

    def test_handshakeTimeout(self) -> None:
        """
        No INFO within the connect timeout drops the connection; so does a missing PONG.
        """
        h = Harness(connectTimeout=2.0)
        h.client.start()
        protocol, transport = h.accept()
        h.reactor.advance(1.9)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        h.lose(protocol)
        self.assertEqual(h.client.connectFailures, 1)
        h.reactor.advance(h.retryDelay())
        protocol, transport = h.accept()
        h.info(protocol)
        h.reactor.advance(2.0)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(h.client.connected)

    def test_tlsRequired(self) -> None:
        """
        A server that requires TLS is dropped (this client does not speak it) and counted.
        """
        h = Harness()
        h.client.start()
        protocol, transport = h.accept()
        h.info(protocol, tls_required=True)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.value().startswith(b"CONNECT"))
        self.assertEqual(h.client.errors, 1)

    def test_serviceStartsAndStops(self) -> None:
        """
        As a Twisted service, C{startService} connects and C{stopService} closes.
        """
        h = Harness()
        h.client.startService()
        self.assertTrue(h.client.running)
        protocol, transport = h.connect()
        d = h.client.stopService()
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(d)
        h.lose(protocol)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(len(h.reactor.tcpClients), 1)


class PingTests(SynchronousTestCase):
    """
    PING/PONG both ways.
    """

    def test_serverPing(self) -> None:
        """
        The server's PING is answered at once, during the handshake and after it.
        """
        h = Harness()
        h.client.start()
        protocol, transport = h.accept()
        protocol.dataReceived(b"PING\r\n")
        self.assertEqual(transport.value(), b"PONG\r\n")
        transport.clear()
        h.info(protocol)
        protocol.dataReceived(b"PONG\r\n")
        transport.clear()
        protocol.dataReceived(b"PI")
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"NG\r\n")
        self.assertEqual(transport.value(), b"PONG\r\n")

    def test_keepalive(self) -> None:
        """
        A PING every C{pingInterval}; a PONG resets the count, so a live connection stays.
        """
        h = Harness(pingInterval=10.0)
        h.client.start()
        protocol, transport = h.connect()
        transport.clear()
        for _ in range(5):
            h.reactor.advance(10.0)
            self.assertEqual(lines(transport), [b"PING"])
            protocol.dataReceived(b"PONG\r\n")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(protocol.outstandingPings, 0)

    def test_pingTimeoutReconnects(self) -> None:
        """
        With C{maxOutstandingPings} PINGs unanswered, the next tick drops the connection, and the
        client reconnects (to the next server).
        """
        h = Harness(pingInterval=10.0, maxOutstandingPings=2)
        h.client.start()
        protocol, transport = h.connect()
        transport.clear()
        h.reactor.advance(10.0)
        h.reactor.advance(10.0)
        self.assertEqual(lines(transport), [b"PING", b"PING"])
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(10.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(h.client.staleConnections, 1)
        self.assertFalse(h.client.connected)
        h.lose(protocol)
        self.assertTrue(0.2 <= h.retryDelay() <= 0.25)
        h.reactor.advance(h.retryDelay())
        self.assertEqual(h.reactor.tcpClients[-1][:2], ("127.0.0.1", 4223))
        h.connect()
        self.assertEqual(h.client.reconnects, 1)
        self.assertEqual(h.client.connectedServer, ("127.0.0.1", 4223))

    def test_flush(self) -> None:
        """
        C{flush} fires at its PONG (PONGs answer PINGs in order), fails when not connected or when
        the connection goes first.
        """
        h = Harness()
        self.failureResultOf(h.client.flush(), NATSNotConnectedError)
        h.client.start()
        protocol, transport = h.connect()
        first, second = h.client.flush(), h.client.flush()
        protocol.dataReceived(b"PONG\r\n")
        self.successResultOf(first)
        self.assertNoResult(second)
        h.lose(protocol)
        self.failureResultOf(second, NATSNotConnectedError)


class MessageTests(SynchronousTestCase):
    """
    Subscriptions and delivery.
    """

    def setUp(self) -> None:
        self.h = Harness()
        self.h.client.start()
        self.protocol, self.transport = self.h.connect()
        self.transport.clear()
        self.received: list[NATSMessage] = []

    def test_subscribe(self) -> None:
        """
        SUB with and without a queue group, sids counting up; UNSUB now or after N messages.
        """
        client = self.h.client
        self.assertEqual(client.subscribe("router.*", self.received.append), 1)
        self.assertEqual(client.subscribe("router.greet", self.received.append, queue="routers"), 2)
        client.unsubscribe(1)
        client.unsubscribe(2, 3)
        client.unsubscribe(99)
        self.assertEqual(
            lines(self.transport), [b"SUB router.* 1", b"SUB router.greet routers 2", b"UNSUB 1", b"UNSUB 2 3"]
        )
        self.assertRaises(ValueError, client.subscribe, "a b", self.received.append)

    def test_deliverBytewise(self) -> None:
        """
        A MSG split one byte at a time reaches its callback once, whole, with its reply subject.
        """
        sid = self.h.client.subscribe("router.register", self.received.append)
        payload = b'{"host":"10.0.0.1",\r\n"port":8080}'
        data = b"MSG router.register %d R.1 %d\r\n%s\r\n" % (sid, len(payload), payload)
        for i in range(len(data)):
            self.assertEqual(self.received, [])
            self.protocol.dataReceived(data[i : i + 1])
        self.assertEqual(self.received, [NATSMessage("router.register", sid, "R.1", payload)])
        self.assertEqual(self.h.client.messagesIn, 1)

    def test_autoUnsubscribe(self) -> None:
        """
        After C{unsubscribe(sid, n)} the subscription ends by itself at its n-th message, and
        messages for unknown sids are ignored.
        """
        client = self.h.client
        sid = client.subscribe("a", self.received.append)
        client.unsubscribe(sid, 2)
        self.protocol.dataReceived(b"MSG a %d 1\r\n1\r\nMSG a %d 1\r\n2\r\nMSG a %d 1\r\n3\r\n" % (sid, sid, sid))
        self.assertEqual([m.payload for m in self.received], [b"1", b"2"])
        self.assertEqual(client.messagesIn, 3)

    def test_callbackRaises(self) -> None:
        """
        A callback that raises is logged and counted; the connection and later deliveries go on.
        """
        client = self.h.client

        def broken(message: NATSMessage) -> None:
            raise RuntimeError("boom")

        client.subscribe("a", broken)
        client.subscribe("b", self.received.append)
        self.protocol.dataReceived(b"MSG a 1 1\r\nx\r\nMSG b 2 1\r\ny\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(client.callbackErrors, 1)
        self.assertEqual([m.payload for m in self.received], [b"y"])
        self.assertFalse(self.transport.disconnecting)

    def test_oversizePayload(self) -> None:
        """
        A MSG bigger than the server's own C{max_payload} is a protocol error: the connection is
        dropped and counted; our own oversize publish is refused before it is sent.
        """
        h = Harness()
        h.client.start()
        protocol, transport = h.connect(max_payload=16)
        h.client.subscribe("a", self.received.append)
        self.assertRaises(NATSPayloadTooLarge, h.client.publish, "a", b"x" * 17)
        h.client.publish("a", b"x" * 16)
        protocol.dataReceived(b"MSG a 1 17\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.client.badMessages, 1)
        protocol.dataReceived(b"x" * 17 + b"\r\n")
        self.assertEqual(self.received, [])

    def test_protocolError(self) -> None:
        """
        Garbage from the server drops the connection; messages before it were delivered.
        """
        self.h.client.subscribe("a", self.received.append)
        self.protocol.dataReceived(b"MSG a 1 1\r\nx\r\nBOGUS\r\nMSG a 1 1\r\ny\r\n")
        self.assertEqual([m.payload for m in self.received], [b"x"])
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.h.client.badMessages, 1)

    def test_publish(self) -> None:
        """
        PUB with and without reply, counted.
        """
        self.h.client.publish("router.start", b"{}")
        self.h.client.publish("router.greet", b"", reply="R")
        self.assertEqual(lines(self.transport), [b"PUB router.start 2", b"{}", b"PUB router.greet R 0", b""])
        self.assertEqual(self.h.client.messagesOut, 2)
        self.assertRaises(ValueError, self.h.client.publish, "", b"")


class ErrorTests(SynchronousTestCase):
    """
    -ERR from the server.
    """

    def test_nonFatal(self) -> None:
        """
        Other errors are counted and the connection stays.
        """
        h = Harness()
        h.client.start()
        protocol, transport = h.connect()
        protocol.dataReceived(b"-ERR 'Permissions Violation for Publish to foo'\r\n")
        self.assertEqual(h.client.errors, 1)
        self.assertFalse(transport.disconnecting)
        self.assertTrue(h.client.connected)

    def test_fatal(self) -> None:
        """
        An auth error during the handshake or a Stale Connection drops the connection and the
        client reconnects; failed handshakes make the backoff grow.
        """
        h = Harness(user="u", password="wrong")
        h.client.start()
        delays = []
        for _ in range(3):
            protocol, transport = h.accept()
            h.info(protocol, auth_required=True)
            protocol.dataReceived(b"-ERR 'Authorization Violation'\r\n")
            self.assertTrue(transport.disconnecting)
            h.lose(protocol)
            delays.append(h.retryDelay())
            h.reactor.advance(delays[-1])
        self.assertEqual(h.client.errors, 3)
        self.assertEqual(h.client.connectFailures, 3)
        self.assertTrue(delays[0] < delays[1] < delays[2], delays)
        protocol, transport = h.connect()
        protocol.dataReceived(b"-ERR 'Stale Connection'\r\n")
        self.assertTrue(transport.disconnecting)
        h.lose(protocol)
        self.assertTrue(h.retryDelay() <= 0.25)


class ReconnectTests(SynchronousTestCase):
    """
    Losing the connection: backoff, server rotation, re-subscription, buffered publishes, callbacks.
    """

    def test_backoffGrowsAndIsCapped(self) -> None:
        """
        Refused connections are retried through the server list with delays that grow to
        C{reconnectMax} and stay there.
        """
        h = Harness(reconnectMin=0.5, reconnectMax=4.0)
        h.client.start()
        delays, targets = [], []
        for _ in range(8):
            targets.append(h.reactor.tcpClients[-1][1])
            h.refuse()
            delays.append(h.retryDelay())
            h.reactor.advance(delays[-1])
        self.assertEqual(targets, [4222, 4223] * 4)
        self.assertTrue(delays[0] < delays[1] < delays[2] < delays[3], delays)
        self.assertTrue(all(3.2 <= d <= 4.0 for d in delays[3:]), delays)
        self.assertEqual(h.client.connectFailures, 8)

    def test_resubscribe(self) -> None:
        """
        After a reconnect, CONNECT, then every live subscription under its old sid (with what is
        left of an auto-unsubscribe), then PING; ended subscriptions are not sent again.
        """
        h = Harness()
        h.client.start()
        protocol, transport = h.connect()
        received: list[NATSMessage] = []
        client = h.client
        a = client.subscribe("router.*", received.append)
        b = client.subscribe("router.greet", received.append, queue="q")
        c = client.subscribe("gone", received.append)
        d = client.subscribe("twice", received.append)
        client.unsubscribe(c)
        client.unsubscribe(d, 2)
        protocol.dataReceived(b"MSG twice %d 0\r\n\r\n" % (d,))
        h.lose(protocol)
        h.reactor.advance(h.retryDelay())
        protocol, transport = h.accept()
        h.info(protocol)
        sent = lines(transport)
        self.assertTrue(sent[0].startswith(b"CONNECT "))
        self.assertEqual(
            sent[1:],
            [b"SUB router.* %d" % a, b"SUB router.greet q %d" % b, b"SUB twice %d" % d, b"UNSUB %d 1" % d, b"PING"],
        )
        protocol.dataReceived(b"PONG\r\nMSG router.register %d 1\r\nx\r\n" % (a,))
        self.assertEqual([m.payload for m in received], [b"", b"x"])

    def test_subscribeWhileDisconnected(self) -> None:
        """
        A subscription made while disconnected is sent in the next handshake, once.
        """
        h = Harness()
        sid = h.client.subscribe("a", lambda m: None)
        h.client.start()
        protocol, transport = h.accept()
        self.assertEqual(transport.value(), b"")
        h.info(protocol)
        self.assertEqual(lines(transport)[1:], [b"SUB a %d" % sid, b"PING"])

    def test_connectedCallbacks(self) -> None:
        """
        Connected callbacks run after every handshake, in the order added, when CONNECT and the
        subscriptions are already written; one that raises is logged and the rest still run.
        """
        h = Harness()
        calls: list[tuple[str, bytes]] = []
        h.client.subscribe("router.*", lambda m: None)
        transports: list[StringTransport] = []

        def first() -> None:
            calls.append(("first", transports[-1].value()))
            h.client.publish("router.start", b"{}")

        def broken() -> None:
            raise RuntimeError("boom")

        h.client.addConnectedCallback(first)
        h.client.addConnectedCallback(broken)
        h.client.addConnectedCallback(lambda: calls.append(("third", b"")))
        h.client.start()
        for _ in range(2):
            protocol, transport = h.accept()
            transports.append(transport)
            h.info(protocol)
            self.assertEqual(calls[-1:], [] if len(calls) == 0 else [("third", b"")])
            before = len(calls)
            protocol.dataReceived(b"PONG\r\n")
            self.assertEqual([name for name, _ in calls[before:]], ["first", "third"])
            written = calls[before][1]
            self.assertTrue(written.startswith(b"CONNECT ") and written.endswith(b"SUB router.* 1\r\nPING\r\n"))
            self.assertTrue(transport.value().endswith(b"PUB router.start 2\r\n{}\r\n"))
            h.lose(protocol)
            h.reactor.advance(h.retryDelay())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(h.client.callbackErrors, 2)

    def test_publishWhileDisconnected(self) -> None:
        """
        Publishes made while disconnected are sent in order after the handshake, before the
        connected callbacks' own; beyond C{pendingLimit} bytes they are dropped and counted.
        """
        h = Harness(pendingLimit=30)
        h.client.addConnectedCallback(lambda: h.client.publish("c", b"3"))
        h.client.publish("a", b"1")
        h.client.publish("b", b"2")
        h.client.publish("c", b"x" * 20)
        self.assertEqual(h.client.messagesDropped, 1)
        h.client.start()
        protocol, transport = h.accept()
        h.info(protocol)
        transport.clear()
        protocol.dataReceived(b"PONG\r\n")
        self.assertEqual(lines(transport), [b"PUB a 1", b"1", b"PUB b 1", b"2", b"PUB c 1", b"3"])
        self.assertEqual(h.client.messagesOut, 3)

    def test_connectURLs(self) -> None:
        """
        Servers the INFO advertises join the list and are tried after a loss.
        """
        h = Harness(servers=[("127.0.0.1", 4222)])
        h.client.start()
        protocol, _ = h.connect(connect_urls=["127.0.0.1:4222", "127.0.0.1:5222"])
        self.assertEqual(h.client.servers, [("127.0.0.1", 4222), ("127.0.0.1", 5222)])
        h.info(protocol, connect_urls=["127.0.0.1:4222", "127.0.0.1:5222", "127.0.0.1:6222"])
        self.assertEqual(h.client.servers[-1], ("127.0.0.1", 6222))
        h.lose(protocol)
        h.reactor.advance(h.retryDelay())
        self.assertEqual(h.reactor.tcpClients[-1][:2], ("127.0.0.1", 5222))

    def test_stop(self) -> None:
        """
        C{stop} while waiting to retry cancels the timer; while connecting it stops the attempt;
        either way nothing is scheduled after it.
        """
        h = Harness()
        h.client.start()
        h.refuse()
        self.assertEqual(len(h.reactor.getDelayedCalls()), 1)
        self.successResultOf(h.client.stop())
        self.assertEqual(h.reactor.getDelayedCalls(), [])
        h.client.start()
        connector = h.reactor.connectors[-1]
        self.successResultOf(h.client.stop())
        self.assertTrue(connector.stoppedConnecting)
        h.refuse()
        self.assertEqual(h.reactor.getDelayedCalls(), [])
        self.assertEqual(len(h.reactor.tcpClients), 2)

    def test_restartBeforeClosed(self) -> None:
        """
        C{start} right after C{stop}, before the old connection has closed: one new attempt, and
        the old connection's end fires the stop Deferred without scheduling another.
        """
        h = Harness()
        h.client.start()
        protocol, transport = h.connect()
        stopped = h.client.stop()
        h.client.start()
        self.assertEqual(len(h.reactor.tcpClients), 2)
        h.lose(protocol)
        self.successResultOf(stopped)
        self.assertEqual(len(h.reactor.tcpClients), 2)
        self.assertEqual(h.reactor.getDelayedCalls(), [])
        h.connect()
        self.assertTrue(h.client.connected)

    def test_stopDuringCallback(self) -> None:
        """
        A connected callback that stops the client ends the callbacks and the connection.
        """
        h = Harness()
        calls: list[str] = []

        def stop() -> None:
            calls.append("stop")
            h.client.stop()

        h.client.addConnectedCallback(stop)
        h.client.addConnectedCallback(lambda: calls.append("second"))
        h.client.start()
        protocol, transport = h.connect()
        self.assertEqual(calls, ["stop"])
        self.assertTrue(transport.disconnecting)
        self.assertFalse(h.client.connected)
        h.lose(protocol)
        self.assertEqual(h.reactor.getDelayedCalls(), [])


class RequestTests(SynchronousTestCase):
    """
    Request/reply through a one-shot inbox.
    """

    def setUp(self) -> None:
        self.h = Harness()
        self.h.client.start()
        self.protocol, self.transport = self.h.connect()
        self.transport.clear()

    def test_reply(self) -> None:
        """
        SUB to a fresh inbox with UNSUB after one message, PUB with that reply; the reply fires the
        Deferred and the timeout is cancelled.
        """
        d = self.h.client.request("router.greet", b"", timeout=1.0)
        sub, unsub, pub, empty = lines(self.transport)
        inbox = sub.split()[1]
        self.assertTrue(inbox.startswith(b"_INBOX."))
        self.assertEqual((sub.split()[2], unsub), (b"1", b"UNSUB 1 1"))
        self.assertEqual(pub, b"PUB router.greet %s 0" % (inbox,))
        self.assertNoResult(d)
        self.protocol.dataReceived(b"MSG %s 1 2\r\n{}\r\n" % (inbox,))
        self.assertEqual(self.successResultOf(d).payload, b"{}")
        self.assertEqual(self.h.reactor.getDelayedCalls()[0].getTime(), 20.0)
        self.assertEqual(len(self.h.reactor.getDelayedCalls()), 1)
        other = self.h.client.request("router.greet", b"")
        self.assertNotEqual(lines(self.transport)[0].split()[1], inbox)
        other.cancel()
        self.failureResultOf(other, CancelledError)

    def test_timeout(self) -> None:
        """
        No reply in time: L{NATSTimeoutError} and the inbox is unsubscribed.
        """
        d = self.h.client.request("router.greet", b"", timeout=1.5)
        self.transport.clear()
        self.h.reactor.advance(1.4)
        self.assertNoResult(d)
        self.h.reactor.advance(0.1)
        self.failureResultOf(d, NATSTimeoutError)
        self.assertEqual(lines(self.transport), [b"UNSUB 1"])

    def test_stopFailsRequests(self) -> None:
        """
        Stopping fails waiting requests with L{NATSClosedError} and leaves no timer behind.
        """
        d = self.h.client.request("router.greet", b"", timeout=5.0)
        self.h.client.stop()
        self.failureResultOf(d, NATSClosedError)
        self.h.lose(self.protocol)
        self.assertEqual(self.h.reactor.getDelayedCalls(), [])

    def test_badRequest(self) -> None:
        """
        A bad subject or an oversize payload fails at once, subscribing nothing.
        """
        self.failureResultOf(self.h.client.request("a b", b""), ValueError)
        self.failureResultOf(self.h.client.request("a", b"x" * (1024 * 1024 + 1)), NATSPayloadTooLarge)
        self.assertEqual(self.transport.value(), b"")
