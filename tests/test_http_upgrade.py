"""
Upgrade and CONNECT hand-off in the SERVER role of
L{meshproxy.http.parser.HTTP1Parser}, each transcript also fed one byte at a
time and in random splits.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http import PAUSED, SERVER, HTTP1Parser
from tests.test_http_parser import CLOSED, END, GET, GET_HEAD, Switched, TranscriptMixin, req


class UpgradeTests(TranscriptMixin, SynchronousTestCase):
    """
    Upgrade and CONNECT requests pause the parser until the owner decides.
    """

    UPGRADE = (
        b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    UPGRADE_HEAD = req(
        b"GET",
        b"/chat",
        [
            (b"Host", b"h"),
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Version", b"13"),
        ],
        connectionTokens=frozenset([b"upgrade"]),
        upgrade=b"websocket",
    )

    def test_upgradeSwitched(self) -> None:
        """
        After an Upgrade request the parser pauses; on switching it returns
        every byte that followed the head, for the raw relay.
        """
        self.assertTranscript(
            SERVER,
            self.UPGRADE + b"\x81\x05hello" + GET,
            [self.UPGRADE_HEAD, PAUSED, Switched(b"\x81\x05hello" + GET)],
            pauses=["switch"],
        )

    def test_upgradeRefused(self) -> None:
        """
        A refused upgrade resumes HTTP/1.1: the request ends and the next
        one is parsed.
        """
        self.assertTranscript(
            SERVER,
            self.UPGRADE + GET,
            [self.UPGRADE_HEAD, PAUSED, END, GET_HEAD, END],
            pauses=["resume"],
        )

    def test_pausedKeepsBuffering(self) -> None:
        """
        While paused, nextEvent keeps saying PAUSED and fed bytes are kept.
        """
        parser = HTTP1Parser(SERVER)
        parser.feed(self.UPGRADE)
        self.assertEqual(parser.nextEvent(), self.UPGRADE_HEAD)
        self.assertIs(parser.nextEvent(), PAUSED)
        parser.feed(b"abc")
        parser.feed(b"def")
        self.assertIs(parser.nextEvent(), PAUSED)
        self.assertEqual(parser.bufferedBytes, 6)
        self.assertEqual(parser.switchedProtocols(), b"abcdef")
        self.assertEqual(parser.bufferedBytes, 0)
        self.assertRaises(RuntimeError, parser.feed, b"x")
        self.assertRaises(RuntimeError, parser.nextEvent)

    def test_upgradeNeedsConnectionOption(self) -> None:
        """
        Upgrade without the C{upgrade} connection option, or in HTTP/1.0, is
        not a protocol switch (RFC 9110 section 7.8).
        """
        data = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"
        head = req(b"GET", b"/", [(b"Host", b"h"), (b"Upgrade", b"websocket")])
        self.assertTranscript(SERVER, data, [head, END])
        data = b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        head = req(
            b"GET",
            b"/",
            [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade")],
            version=b"1.0",
            keepAlive=False,
            connectionTokens=frozenset([b"upgrade"]),
        )
        self.assertTranscript(SERVER, data, [head, END])

    def test_connectSwitched(self) -> None:
        """
        A CONNECT request pauses the parser; bytes after it (say a TLS
        ClientHello) go to the tunnel.
        """
        data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01\x02\x00"
        head = req(b"CONNECT", b"example.com:443", [(b"Host", b"example.com:443")])
        self.assertTranscript(
            SERVER, data, [head, PAUSED, Switched(b"\x16\x03\x01\x02\x00")], pauses=["switch"]
        )

    def test_connectIPv6(self) -> None:
        """
        An IPv6 literal with a port is a valid CONNECT target.
        """
        data = b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n"
        head = req(b"CONNECT", b"[2001:db8::1]:8443", [(b"Host", b"[2001:db8::1]:8443")])
        self.assertTranscript(SERVER, data, [head, PAUSED, Switched(b"")], pauses=["switch"])

    def test_connectRefused(self) -> None:
        """
        A refused CONNECT ends there, and the connection with it: the client
        may already have sent tunnel bytes, which are never parsed as HTTP.
        """
        data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + GET
        head = req(b"CONNECT", b"example.com:443", [(b"Host", b"example.com:443")])
        self.assertTranscript(SERVER, data, [head, PAUSED, END, CLOSED], pauses=["resume"], eof=True)

    def test_misuse(self) -> None:
        """
        switchedProtocols() and resume() are only for a paused parser.
        """
        parser = HTTP1Parser(SERVER)
        self.assertRaises(RuntimeError, parser.switchedProtocols)
        self.assertRaises(RuntimeError, parser.resume)
        self.assertRaises(RuntimeError, parser.expectResponse, b"GET")
