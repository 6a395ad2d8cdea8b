"""
WebSocket through the HTTP proxy end to end: a C{websockets} client and server (asyncio APIs, so
the same code runs with websockets 10.4 from Debian and current releases) exchange messages both
ways through a real meshproxy; a raw-socket client checks the bytes of the switch.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from typing import Any, Awaitable, Callable

from tests.integration.harness import waitFor
from tests.integration.httpbackends import HTTPProxyTestCase, WebSocketServer, raw
from tests.integration.httpwire import Wire, readResponse

ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def runAsync(factory: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """
    Run the coroutine C{factory()} on a fresh event loop, bounded by C{timeout}.
    """

    async def bounded() -> Any:
        return await asyncio.wait_for(factory(), timeout)

    return asyncio.run(bounded())


def maskedFrame(opcode: int, payload: bytes) -> bytes:
    """
    One final client frame (clients must mask).
    """
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def readFrame(wire: Wire) -> tuple[int, bytes]:
    """
    One unmasked, unfragmented server frame: (opcode, payload).
    """
    head = bytearray()
    wire.readExactly(2, head.extend)
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if head[1] & 0x80:
        raise AssertionError("server frames must not be masked")
    if n >= 126:
        extended = bytearray()
        wire.readExactly(2 if n == 126 else 8, extended.extend)
        n = int.from_bytes(extended, "big")
    payload = bytearray()
    wire.readExactly(n, payload.extend)
    return opcode, bytes(payload)


class WebSocketTests(HTTPProxyTestCase):
    """
    Upgrades relayed, then raw frames both ways.
    """

    def setUp(self) -> None:
        self.server = WebSocketServer()
        self.addCleanup(self.server.stop)

    def start(self) -> str:
        # A short drain: a tunnel left open must not hold up stopping the proxy for long
        # (test_sessionEndClosesConnections is where a left-open tunnel fails).
        self.proxy({"ws": [self.server.address]}, server={"graceful_timeout": "1s"})
        return f"ws://127.0.0.1:{self.port}"

    def test_sessionEndClosesConnections(self) -> None:
        """
        When a session ends with a normal close handshake, the proxy closes both its client and
        its upstream connection (none is left open).
        """
        base = self.start()

        async def session() -> int | None:
            import websockets

            async with websockets.connect(base + "/short", open_timeout=5, close_timeout=5) as ws:
                await ws.recv()
                await ws.send("bye")
                await ws.recv()
            return ws.close_code

        self.assertEqual(runAsync(session), 1000)
        self.assertTrue(waitFor(lambda: self.stat("downstream_cx_active", listener="web") == 0, timeout=5),
                        "the client connection of a finished tunnel is still open")
        self.assertTrue(waitFor(lambda: self.stat("upstream_cx_active", cluster="ws") == 0, timeout=5),
                        "the upstream connection of a finished tunnel is still open")

    def test_messagesBothWays(self) -> None:
        """
        The server's greeting, then twenty text and binary round trips, then a clean close with
        code 1000; the server saw the upgrade with the proxy's forwarding headers.
        """
        base = self.start()

        async def session() -> tuple[list[Any], int | None]:
            import websockets

            seen: list[Any] = []
            async with websockets.connect(base + "/chat?room=1", open_timeout=5, close_timeout=5) as ws:
                seen.append(await ws.recv())
                for i in range(10):
                    await ws.send(f"ping {i}")
                    seen.append(await ws.recv())
                    await ws.send(bytes([i, 1, 2, 3]))
                    seen.append(await ws.recv())
            return seen, ws.close_code

        seen, code = runAsync(session)
        self.assertEqual(seen[0], "hello /chat?room=1")
        self.assertEqual(seen[1::2], [f"echo:ping {i}" for i in range(10)])
        self.assertEqual(seen[2::2], [bytes([3, 2, 1, i]) for i in range(10)])
        self.assertEqual(code, 1000)
        self.assertEqual(len(self.server.received), 20)
        [headers] = self.server.requestHeaders
        self.assertEqual(headers["upgrade"].lower(), "websocket")
        self.assertEqual(headers["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(headers["via"], "1.1 meshproxy")

    def test_largeMessagesBothWays(self) -> None:
        """
        4 MiB messages cross the tunnel in both directions intact.
        """
        base = self.start()
        payload = os.urandom(4 << 20)

        async def session() -> Any:
            import websockets

            async with websockets.connect(base + "/big", open_timeout=5, close_timeout=5, max_size=None) as ws:
                await ws.recv()
                answers = []
                for _ in range(3):
                    await ws.send(payload)
                    answers.append(await ws.recv())
                return answers

        answers = runAsync(session, timeout=40)
        self.assertEqual(len(answers), 3)
        for answer in answers:
            self.assertEqual(hashlib.sha256(answer).digest(), hashlib.sha256(payload[::-1]).digest())

    def test_serverCloses(self) -> None:
        """
        A close the server starts (code 4000) reaches the client through the tunnel.
        """
        base = self.start()

        async def session() -> Any:
            import websockets

            async with websockets.connect(base + "/", open_timeout=5, close_timeout=5) as ws:
                await ws.recv()
                await ws.send("close")
                try:
                    await ws.recv()
                except websockets.exceptions.ConnectionClosed:
                    pass
                return ws.close_code

        self.assertEqual(runAsync(session), 4000)

    def test_concurrentSessions(self) -> None:
        """
        Ten sessions at once each get their own answers.
        """
        base = self.start()

        async def one(n: int) -> list[Any]:
            import websockets

            async with websockets.connect(f"{base}/s{n}", open_timeout=5, close_timeout=5) as ws:
                seen = [await ws.recv()]
                for i in range(5):
                    await ws.send(f"{n}-{i}")
                    seen.append(await ws.recv())
                return seen

        async def sessions() -> list[list[Any]]:
            return list(await asyncio.gather(*[one(n) for n in range(10)]))

        results = runAsync(sessions)
        for n, seen in enumerate(results):
            self.assertEqual(seen, [f"hello /s{n}"] + [f"echo:{n}-{i}" for i in range(5)])

    def test_rawSwitchWithEarlyFrame(self) -> None:
        """
        The 101 carries the right C{Sec-WebSocket-Accept}, and a frame the client wrote in the
        same packet as its upgrade request reaches the server.
        """
        self.start()
        sock, wire = self.rawConnection()
        key = base64.b64encode(os.urandom(16))
        sock.sendall(
            b"GET /raw HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + maskedFrame(0x1, b"early")
        )
        response = readResponse(wire)
        self.assertEqual(response.status, 101)
        self.assertEqual(response.tokens("Connection"), ["upgrade"])
        self.assertEqual(response.header("Sec-WebSocket-Accept"),
                         base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest()).decode())
        self.assertEqual(readFrame(wire), (0x1, b"hello /raw"))
        self.assertEqual(readFrame(wire), (0x1, b"echo:early"))
        sock.sendall(maskedFrame(0x2, b"\x01\x02"))
        self.assertEqual(readFrame(wire), (0x2, b"\x02\x01"))


class RefusedUpgradeTests(HTTPProxyTestCase):
    """
    An upstream that answers an Upgrade request with a normal response.
    """

    def test_upgradeRefusedIsNormalResponse(self) -> None:
        """
        A 200 answer to an Upgrade request is relayed as a normal response (the upstream saw the
        Upgrade and C{Connection: upgrade}), and the connection goes on in HTTP/1.1.
        """
        backend = self.backend()
        self.proxy({"backend": [backend.address]})
        sock, wire = self.rawConnection()
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        response = readResponse(wire)
        self.assertEqual(response.status, 200)
        self.assertIsNone(response.header("Upgrade"))
        self.assertNotIn("close", response.tokens("Connection"), "keep-alive lost after a refused upgrade")
        seen = response.json()
        upgrade = [v for n, v in seen["headers"] if n.lower() == "upgrade"]
        connection = [v.lower() for n, v in seen["headers"] if n.lower() == "connection"]
        self.assertEqual((upgrade, connection), (["websocket"], ["upgrade"]))
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(readResponse(wire).json()["target"], "/next")


class SwitchOrderTests(HTTPProxyTestCase):
    """
    The bytes that follow a 101 leave after it.
    """

    def test_upstreamBytesWithThe101(self) -> None:
        """
        Bytes an upstream sends in the same packet as its 101 reach the client after the 101's
        head, even though meshproxy writes the head through its own writer and the relay writes
        through the transport's queue.
        """
        first = b"server speaks first"
        backend = self.backend(raw(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-test\r\nConnection: Upgrade\r\n\r\n" + first,
            close=False,
        ))
        self.proxy({"backend": [backend.address]})
        for _ in range(5):
            sock, wire = self.rawConnection()
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: x-test\r\n\r\n")
            response = readResponse(wire, "GET")
            self.assertEqual(response.status, 101)
            received: list[bytes] = []
            wire.readExactly(len(first), received.append)
            self.assertEqual(b"".join(received), first)
            sock.close()
