"""
Property tests: random valid messages serialized by L{meshproxy.http.serialize}
and cut at random places parse back to exactly what was serialized, in both
roles; and no input, however broken, makes the parser fail other than with
L{HTTPParseError}.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http import (
    CLIENT,
    SERVER,
    BodyData,
    EndOfMessage,
    HTTP1Parser,
    HTTPParseError,
    NEED_DATA,
    PAUSED,
    chunk,
    lastChunk,
    requestHead,
    responseHead,
)
from meshproxy.http.fields import FORBIDDEN_TRAILERS, SPECIAL_NAMES
from tests.test_http_parser import CLOSED, drive, req, resp

TOKEN_ALPHABET = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
VALUE_BYTES = [0x09, 0x20, *range(0x21, 0x7F), *range(0x80, 0x100)]
TARGET_BYTES = [b for b in range(0x21, 0x7F) if b != ord("#")]
HOST_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-."

tokens = st.text(TOKEN_ALPHABET, min_size=1, max_size=12).map(str.encode)
names = tokens.filter(lambda n: n.lower() not in SPECIAL_NAMES and n.lower() != b"trailer")
values = st.lists(st.sampled_from(VALUE_BYTES), max_size=24).map(lambda v: bytes(v).strip(b" \t"))
fields = st.lists(st.tuples(names, values), max_size=8)
trailerFields = st.lists(
    st.tuples(names.filter(lambda n: n.lower() not in FORBIDDEN_TRAILERS), values), max_size=4
)
bodies = st.binary(max_size=300)
extensions = st.lists(
    st.tuples(tokens, st.one_of(st.none(), tokens, st.just(b'"a \\" b"'))), max_size=2
)
slow = settings(deadline=None, max_examples=150)


def cutAt(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    C{data} cut at the given offsets (clamped, deduplicated).
    """
    edges = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    return [data[a:b] for a, b in zip(edges, edges[1:])]


@st.composite
def chunkedBody(draw: Any, body: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """
    C{body} chunked at random places, with random chunk extensions and
    trailers; return the wire bytes and the trailers.
    """
    points = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=5))))
    edges = [0, *[p for p in points if p < len(body)], len(body)] if body else [0]
    wire = []
    for a, b in zip(edges, edges[1:]):
        size, data, crlf = chunk(body[a:b])
        ext = b"".join(b";" + n + (b"" if v is None else b"=" + v) for n, v in draw(extensions))
        wire += [size[:-2] + ext + b"\r\n", data, crlf]
    trailers = draw(trailerFields)
    wire.append(lastChunk(trailers))
    return b"".join(wire), trailers


@st.composite
def requests(draw: Any) -> tuple[bytes, list[object]]:
    """
    One random valid request: its wire bytes and the events it must give.
    """
    method = draw(tokens.filter(lambda m: m != b"CONNECT"))
    target = b"/" + bytes(draw(st.lists(st.sampled_from(TARGET_BYTES), max_size=30)))
    host = draw(st.text(HOST_ALPHABET, max_size=20)).encode() + draw(st.sampled_from([b"", b":8080"]))
    headers = [(b"Host", host), *draw(fields)]
    body = draw(bodies)
    framing = draw(st.sampled_from(["length", "chunked", "none"] if not body else ["length", "chunked"]))
    derived: dict[str, Any] = {}
    trailers: list[tuple[bytes, bytes]] = []
    if framing == "length":
        headers.append((draw(st.sampled_from([b"Content-Length", b"content-length"])), b"%d" % len(body)))
        wireBody = body
        derived["contentLength"] = len(body)
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked"]))))
        wireBody, trailers = draw(chunkedBody(body))
        derived["chunked"] = True
    else:
        wireBody = b""
    wire = requestHead(method, target, headers) + wireBody
    events: list[object] = [req(method, target, headers, **derived)]
    if body:
        events.append(BodyData(body))
    events.append(EndOfMessage(trailers))
    return wire, events


@st.composite
def responses(draw: Any, last: bool) -> tuple[bytes, bytes, list[object]]:
    """
    One random valid response (after optional 1xx ones): the request method
    it answers, its wire bytes and its events.  Only the C{last} may be
    close-delimited.
    """
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD"]))
    wire = []
    events: list[object] = []
    for status in draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2)):
        headers = draw(fields)
        wire.append(responseHead(status, b"Info", headers))
        events.append(resp(status, b"Info", headers))
    status = draw(st.integers(200, 599))
    reason = draw(st.lists(st.sampled_from(VALUE_BYTES), max_size=12).map(bytes))
    headers = draw(fields)
    body = draw(bodies)
    choices = ["length", "chunked"] + (["close"] if last else [])
    framing = draw(st.sampled_from(choices))
    noBody = method == b"HEAD" or status in (204, 304)
    derived: dict[str, Any] = {}
    trailers: list[tuple[bytes, bytes]] = []
    wireBody = b""
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
        derived["contentLength"] = len(body)
        wireBody = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        derived["chunked"] = True
        wireBody, trailers = draw(chunkedBody(body))
    elif not noBody:
        derived["keepAlive"] = False
        wireBody = body
    if noBody:
        wireBody, trailers = b"", []
    wire.append(responseHead(status, reason, headers) + wireBody)
    events.append(resp(status, reason, headers, **derived))
    if not noBody and body:
        events.append(BodyData(body))
    events.append(EndOfMessage(trailers))
    return method, b"".join(wire), events


class RoundTripTests(SynchronousTestCase):
    """
    Serialize, cut, parse: the same messages come back.
    """

    @slow
    @given(st.lists(requests(), min_size=1, max_size=3), st.lists(st.integers(0, 3000), max_size=12))
    def test_requests(self, messages: list[tuple[bytes, list[object]]], cuts: list[int]) -> None:
        """
        Pipelined random requests parse back to their heads, bodies and
        trailers, however the stream is cut.
        """
        wire = b"".join(w for w, _ in messages)
        expected = [e for _, events in messages for e in events]
        self.assertEqual(drive(SERVER, cutAt(wire, cuts)), (expected, None))

    @slow
    @given(st.data(), st.lists(st.integers(0, 3000), max_size=12))
    def test_responses(self, data: Any, cuts: list[int]) -> None:
        """
        Pipelined random responses (1xx, HEAD, 204/304, close-delimited
        included) parse back to what was serialized.
        """
        count = data.draw(st.integers(1, 3))
        messages = [data.draw(responses(last=i == count - 1)) for i in range(count)]
        wire = b"".join(w for _, w, _ in messages)
        expected = [e for _, _, events in messages for e in events]
        lastHead = [e for e in expected if not isinstance(e, (BodyData, EndOfMessage))][-1]
        eof = not lastHead.keepAlive  # type: ignore[attr-defined]
        if eof:
            expected.append(CLOSED)
        events, error = drive(CLIENT, cutAt(wire, cuts), methods=[m for m, _, _ in messages], eof=eof)
        self.assertIsNone(error)
        self.assertEqual(events, expected)


def feedAll(parser: HTTP1Parser, chunks: list[bytes]) -> None:
    """
    Feed and drain, resuming any pause, until the input is used up; only
    L{HTTPParseError} may escape.
    """
    for piece in chunks:
        parser.feed(piece)
        while True:
            event = parser.nextEvent()
            if event is NEED_DATA or event == CLOSED:
                break
            if event is PAUSED:
                parser.resume()
            elif isinstance(event, BodyData):
                assert type(event.data) is bytes and event.data


class RobustnessTests(SynchronousTestCase):
    """
    Garbage in, L{HTTPParseError} (or events) out, never anything else.
    """

    @slow
    @given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6), st.booleans())
    def test_arbitraryBytes(self, data: bytes, cuts: list[int], server: bool) -> None:
        """
        Arbitrary bytes never raise anything but L{HTTPParseError}.
        """
        parser = HTTP1Parser(SERVER if server else CLIENT)
        if not server:
            for _ in range(3):
                parser.expectResponse(b"GET")
        try:
            feedAll(parser, cutAt(data, cuts))
            parser.feedEOF()
            feedAll(parser, [])
            parser.nextEvent()
        except HTTPParseError as e:
            self.assertIn(e.status, (400, 413, 414, 431, 501, 502, 505))

    @slow
    @given(requests(), st.integers(0, 10000), st.binary(min_size=1, max_size=3), st.integers(0, 3))
    def test_mutatedRequests(self, message: tuple[bytes, list[object]], at: int, junk: bytes, drop: int) -> None:
        """
        A valid request with a few bytes replaced parses or is refused with
        L{HTTPParseError}, nothing else.
        """
        wire = message[0]
        at %= len(wire)
        mutated = wire[:at] + junk + wire[at + drop :]
        parser = HTTP1Parser(SERVER)
        try:
            feedAll(parser, [mutated[i : i + 7] for i in range(0, len(mutated), 7)])
        except HTTPParseError:
            pass

