"""
Tests for L{meshproxy.proxy.forward}: the header fields of forwarded requests and responses.
"""

from __future__ import annotations

import random
import re

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import HeaderValueConfig
from meshproxy.http import CLIENT, SERVER, HTTP1Parser, RequestHead, ResponseHead
from meshproxy.proxy.forward import (
    RequestDropSets,
    RequestIds,
    applyAdds,
    clientRequestId,
    clientResponseFields,
    upstreamRequestFields,
)
from meshproxy.routing.edits import HeaderAdd

UUID4 = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


def requestOf(raw: bytes) -> RequestHead:
    """
    The head the server-role parser makes of C{raw}.
    """
    parser = HTTP1Parser(SERVER)
    parser.feed(raw)
    head = parser.nextEvent()
    assert isinstance(head, RequestHead)
    return head


def responseOf(raw: bytes, method: bytes = b"GET") -> ResponseHead:
    """
    The head the client-role parser makes of C{raw}, the response to a C{method} request.
    """
    parser = HTTP1Parser(CLIENT)
    parser.expectResponse(method)
    parser.feed(raw)
    head = parser.nextEvent()
    assert isinstance(head, ResponseHead)
    return head


class FakeRoute:
    """
    The one attribute of a route that L{RequestDropSets} reads.
    """

    def __init__(self, *remove: bytes) -> None:
        self.requestHeadersToRemove = frozenset(remove)


def adds(*specs: tuple[str, str, bool]) -> list[HeaderAdd]:
    """
    Compiled header additions from C{(name, value template, append)}.
    """
    return [HeaderAdd(HeaderValueConfig(name, value, append=append)) for name, value, append in specs]


class UpstreamRequestFieldsTests(SynchronousTestCase):
    """
    The forwarded request's fields are rebuilt from the parsed head.
    """

    def fields(self, raw: bytes, **kw: object) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """
        The fields for C{raw} (X-Forwarded-Host from its Host unless C{forwardedHost} is given).
        """
        head = requestOf(raw)
        arguments: dict[str, object] = dict(
            drop=RequestDropSets().forRoute(FakeRoute()), host=b"up", clientIP=b"10.0.0.1", scheme=b"http",
            adds=(), variables={}, bodyFraming=None, newRequestId=RequestIds(random.Random(7)).new,
            forwardedHost=head.host,
        )
        arguments.update(kw)
        return upstreamRequestFields(head, **arguments)  # type: ignore[arg-type]

    def test_rebuilt(self) -> None:
        """
        Hop-by-hop fields (the standard ones and every Connection option), framing and the fields the
        proxy owns are dropped; Host, the forwarding fields, Via and the request id follow the kept
        fields in a fixed order.
        """
        fields, requestId = self.fields(
            b"GET / HTTP/1.1\r\nHost: a.com\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n"
            b"Proxy-Connection: x\r\nTE: trailers\r\nTrailer: X\r\nAccept: */*\r\nX-Forwarded-Proto: https\r\n"
            b"X-Forwarded-Host: evil\r\nX-Request-Id: abc.DEF_1-2\r\nCookie: c=1\r\n\r\n"
        )
        self.assertEqual(
            fields,
            [(b"Accept", b"*/*"), (b"Cookie", b"c=1"), (b"Host", b"up"), (b"X-Forwarded-For", b"10.0.0.1"),
             (b"X-Forwarded-Proto", b"http"), (b"X-Forwarded-Host", b"a.com"), (b"Via", b"1.1 meshproxy"),
             (b"X-Request-Id", b"abc.DEF_1-2")],
        )
        self.assertEqual(requestId, b"abc.DEF_1-2")

    def test_forwardingChainsAppended(self) -> None:
        """
        Every received X-Forwarded-For and Via value is kept, in order, before the proxy's own.
        """
        fields, _ = self.fields(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nVia: 1.0 edge\r\n"
            b"X-Forwarded-For: 2.2.2.2, 3.3.3.3\r\nVia: 1.1 lb\r\nX-Request-Id: r\r\n\r\n"
        )
        self.assertIn((b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1"), fields)
        self.assertIn((b"Via", b"1.0 edge, 1.1 lb, 1.1 meshproxy"), fields)

    def test_requestIdGenerated(self) -> None:
        """
        A missing, malformed or over-long X-Request-Id is replaced by a fresh UUID.
        """
        for header in (b"", b"X-Request-Id: a b\r\n", b"X-Request-Id: " + b"a" * 129 + b"\r\n"):
            fields, requestId = self.fields(b"GET / HTTP/1.1\r\nHost: a\r\n" + header + b"\r\n")
            self.assertTrue(UUID4.match(requestId), requestId)
            self.assertEqual([v for n, v in fields if n.lower() == b"x-request-id"], [requestId])

    def test_firstValidRequestIdKept(self) -> None:
        """
        Of several X-Request-Id fields the first valid one is kept; a 128-byte id is still valid.
        """
        longest = b"b" * 128
        fields, requestId = self.fields(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: bad id\r\nX-Request-Id: " + longest
            + b"\r\nX-Request-Id: other\r\n\r\n"
        )
        self.assertEqual(requestId, longest)
        self.assertEqual([v for n, v in fields if n == b"X-Request-Id"], [longest])

    def test_noHostNoForwardedHost(self) -> None:
        """
        An HTTP/1.0 request without Host gets no X-Forwarded-Host.
        """
        fields, _ = self.fields(b"GET / HTTP/1.0\r\nX-Request-Id: r\r\n\r\n")
        self.assertEqual([n for n, v in fields], [b"Host", b"X-Forwarded-For", b"X-Forwarded-Proto", b"Via",
                                                  b"X-Request-Id"])

    def test_forwardedHostGiven(self) -> None:
        """
        X-Forwarded-Host is the host given (the effective one), not the Host field.
        """
        fields, _ = self.fields(b"GET http://b.com/ HTTP/1.1\r\nHost: a\r\n\r\n", forwardedHost=b"b.com")
        self.assertEqual([v for n, v in fields if n == b"X-Forwarded-Host"], [b"b.com"])

    def test_routeRemovals(self) -> None:
        """
        The route's removals are dropped case-insensitively.
        """
        fields, _ = self.fields(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Debug: 1\r\nx-keep: 2\r\n\r\n",
            drop=RequestDropSets().forRoute(FakeRoute(b"x-debug")),
        )
        self.assertEqual(fields[0], (b"x-keep", b"2"))
        self.assertNotIn(b"X-Debug", [n for n, v in fields])

    def test_upgradeAndFraming(self) -> None:
        """
        A forwarded upgrade gets Connection and Upgrade back; additions see the request id; the framing
        field comes last.
        """
        fields, requestId = self.fields(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Request-Id: r9\r\n\r\n",
            upgrade=True, adds=adds(("X-Id", "%request_id%", False)), variables={"request_id": b""},
            bodyFraming=(b"Content-Length", b"0"),
        )
        self.assertEqual(
            fields[-4:],
            [(b"Connection", b"upgrade"), (b"Upgrade", b"websocket"), (b"X-Id", b"r9"), (b"Content-Length", b"0")],
        )

    def test_upgradeNotAsked(self) -> None:
        """
        C{upgrade} adds nothing to a request that asks for no upgrade.
        """
        fields, _ = self.fields(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\n\r\n", upgrade=True)
        self.assertEqual(fields[-1], (b"X-Request-Id", b"r"))


class ApplyAddsTests(SynchronousTestCase):
    """
    Route additions replace or append.
    """

    def test_replaceAndAppend(self) -> None:
        """
        An addition without append replaces every value of that name (any case), in place at the end;
        with append it adds one more value.
        """
        fields = [(b"x-a", b"1"), (b"Other", b"o"), (b"X-A", b"2"), (b"X-B", b"b")]
        applyAdds(fields, adds(("X-A", "new", False), ("X-B", "%request_id%", True)), {"request_id": b"id"})
        self.assertEqual(fields, [(b"Other", b"o"), (b"X-B", b"b"), (b"X-A", b"new"), (b"X-B", b"id")])


class ClientResponseFieldsTests(SynchronousTestCase):
    """
    The client's response fields are the upstream's minus hop-by-hop, plus framing and Connection.
    """

    def test_hopByHopDropped(self) -> None:
        """
        Connection, its options, the standard hop-by-hop fields and Content-Length are dropped; the
        framing and Connection given are appended in that order.
        """
        head = responseOf(
            b"HTTP/1.1 200 OK\r\nServer: s\r\nConnection: X-Opt\r\nX-Opt: 1\r\nKeep-Alive: t=5\r\n"
            b"Transfer-Encoding: chunked\r\nTrailer: X-T\r\nUpgrade: h2c\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\n"
        )
        self.assertEqual(
            clientResponseFields(head, frozenset(), (), {}, (b"Content-Length", b"3"), b"close"),
            [(b"Server", b"s"), (b"Set-Cookie", b"a"), (b"Set-Cookie", b"b"), (b"Content-Length", b"3"),
             (b"Connection", b"close")],
        )

    def test_removalsAndAdds(self) -> None:
        """
        The route's removals go before its additions, which may use variables.
        """
        head = responseOf(b"HTTP/1.1 200 OK\r\nServer: s\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n")
        fields = clientResponseFields(
            head, frozenset([b"server"]), adds(("X-A", "%request_id%", False)), {"request_id": b"r"}, None, None
        )
        self.assertEqual(fields, [(b"X-A", b"r")])

    def test_upgrade(self) -> None:
        """
        A 101 keeps its Upgrade values and says Connection: upgrade.
        """
        head = responseOf(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Accept: k\r\n\r\n")
        self.assertEqual(
            clientResponseFields(head, frozenset(), (), {}, None, None, upgrade=True),
            [(b"Sec-WebSocket-Accept", b"k"), (b"Upgrade", b"websocket"), (b"Connection", b"upgrade")],
        )


class RequestIdsTests(SynchronousTestCase):
    """
    Generated request ids, and the client's own.
    """

    def test_format(self) -> None:
        """
        Ids are lower-case UUIDs with the version 4 and RFC 4122 variant bits set, and do not repeat.
        """
        ids = RequestIds()
        generated = [ids.new() for _ in range(2000)]
        for requestId in generated:
            self.assertTrue(UUID4.match(requestId), requestId)
        self.assertEqual(len(set(generated)), len(generated))

    def test_fixedBits(self) -> None:
        """
        The version and variant bits are forced whatever the random source gives; the last group
        counts up from a random start.
        """

        class Extreme(random.Random):
            def __init__(self, value: int) -> None:
                super().__init__()
                self.value = value

            def getrandbits(self, bits: int) -> int:
                return self.value

        zeros = RequestIds(Extreme(0))
        self.assertEqual(zeros.new(), b"00000000-0000-4000-8000-000000000001")
        self.assertEqual(zeros.new(), b"00000000-0000-4000-8000-000000000002")
        self.assertEqual(RequestIds(Extreme(2**128 - 1)).new(), b"ffffffff-ffff-4fff-bfff-800000000000")

    def test_seeded(self) -> None:
        """
        The generator draws from the random source it is given, so equal seeds give equal ids.
        """
        self.assertEqual(RequestIds(random.Random(3)).new(), RequestIds(random.Random(3)).new())
        self.assertNotEqual(RequestIds(random.Random(3)).new(), RequestIds(random.Random(4)).new())

    def test_clientRequestId(self) -> None:
        """
        The client's first acceptable X-Request-Id, or None.
        """
        self.assertEqual(
            clientRequestId(requestOf(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: a b\r\nx-request-id: ok\r\n\r\n")),
            b"ok",
        )
        self.assertIsNone(clientRequestId(requestOf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")))


class RequestDropSetsTests(SynchronousTestCase):
    """
    The per-route drop sets.
    """

    def test_cachedPerRoute(self) -> None:
        """
        A route's set is computed once and holds the hop-by-hop names, the owned names and the route's
        removals; another route gets its own.
        """
        sets = RequestDropSets()
        first, second = FakeRoute(b"x-debug"), FakeRoute()
        drop = sets.forRoute(first)
        self.assertIs(sets.forRoute(first), drop)
        self.assertTrue({b"connection", b"keep-alive", b"te", b"upgrade", b"host", b"content-length", b"expect",
                         b"x-forwarded-for", b"via", b"x-request-id", b"x-debug"} <= drop)
        self.assertNotIn(b"x-debug", sets.forRoute(second))
