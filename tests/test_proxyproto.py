"""
Tests for L{meshproxy.proxyproto}: PROXY protocol v1 and v2 headers, fed one byte at a time.
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING, Callable

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.needmore import NEED_MORE, NeedMore
from meshproxy.proxyproto import ProxyHeader, ProxyHeaderError, parseProxyHeader
from tests.bytewise import assertBytewise, assertDecidedAt, firstDecided

if TYPE_CHECKING:
    from hypothesis.strategies import DrawFn

# Written out from the specification rather than taken from the module under test.
SIGNATURE = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"


def v2(versionCommand: int, family: int, block: bytes, declared: int | None = None) -> bytes:
    """
    A v2 header: signature, version and command, family and transport, length, then C{block}.
    """
    length = len(block) if declared is None else declared
    return SIGNATURE + bytes([versionCommand, family]) + struct.pack("!H", length) + block


def tlv(kind: int, value: bytes) -> bytes:
    """
    One v2 type-length-value extension.
    """
    return struct.pack("!BH", kind, len(value)) + value


def inet4Block(source: str, destination: str, sourcePort: int, destinationPort: int) -> bytes:
    """
    A v2 AF_INET address block.
    """
    ports = struct.pack("!HH", sourcePort, destinationPort)
    return socket.inet_aton(source) + socket.inet_aton(destination) + ports


def inet6Block(source: str, destination: str, sourcePort: int, destinationPort: int) -> bytes:
    """
    A v2 AF_INET6 address block.
    """
    return (
        socket.inet_pton(socket.AF_INET6, source)
        + socket.inet_pton(socket.AF_INET6, destination)
        + struct.pack("!HH", sourcePort, destinationPort)
    )


def unixBlock(source: bytes, destination: bytes) -> bytes:
    """
    A v2 AF_UNIX address block: two NUL-padded 108-byte paths.
    """
    return source.ljust(108, b"\x00") + destination.ljust(108, b"\x00")


# PP2_TYPE_SSL: client flags, verify result, then sub-TLVs for the version and the cipher.
SSL_TLV = b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x23, b"TLS_AES_128_GCM_SHA256")

HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"

# (header bytes, the expected header): each is fed one byte at a time, then followed by a request.
VALID_V1 = [
    # The example from the specification.
    (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ProxyHeader(1, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443), 47),
    ),
    # The longest TCP4 line the specification lists: 56 bytes.
    (
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        ProxyHeader(1, "PROXY", "TCP4", ("255.255.255.255", 65535), ("255.255.255.255", 65535), 56),
    ),
    (
        b"PROXY TCP4 0.0.0.0 10.0.0.1 0 1\r\n",
        ProxyHeader(1, "PROXY", "TCP4", ("0.0.0.0", 0), ("10.0.0.1", 1), 33),
    ),
    # The longest TCP6 line: 104 bytes, upper-case hex accepted and reported compressed.
    (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF"
        b" 65535 65535\r\n",
        ProxyHeader(
            1,
            "PROXY",
            "TCP6",
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
            104,
        ),
    ),
    (
        b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 :: 1234 80\r\n",
        ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::1", 1234), ("::", 80), 44),
    ),
    # What inet_ntop writes for an IPv4-mapped address.
    (
        b"PROXY TCP6 ::ffff:192.0.2.1 ::1 5 6\r\n",
        ProxyHeader(1, "PROXY", "TCP6", ("::ffff:192.0.2.1", 5), ("::1", 6), 37),
    ),
    # The short UNKNOWN form: 15 bytes.
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, "PROXY", "UNKNOWN", None, None, 15)),
    # The worst case of the specification: UNKNOWN with everything after it ignored, 107 bytes.
    (
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        b" 65535 65535\r\n",
        ProxyHeader(1, "PROXY", "UNKNOWN", None, None, 107),
    ),
    # "The receiver must ignore anything presented before the CRLF is found."
    (b"PROXY UNKNOWN \x00garbage\n\r !\r\n", ProxyHeader(1, "PROXY", "UNKNOWN", None, None, 28)),
]

VALID_V2 = [
    (
        v2(0x21, 0x11, inet4Block("192.168.0.1", "192.168.0.11", 56324, 443)),
        ProxyHeader(2, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443), 28),
    ),
    (
        v2(0x21, 0x21, inet6Block("2001:db8::1", "::ffff:10.1.2.3", 65535, 0)),
        ProxyHeader(2, "PROXY", "TCP6", ("2001:db8::1", 65535), ("::ffff:10.1.2.3", 0), 52),
    ),
    (
        v2(0x21, 0x31, unixBlock(b"/run/client.sock", b"/run/meshproxy/\xff.sock")),
        ProxyHeader(2, "PROXY", "UNIX", ("/run/client.sock", 0), ("/run/meshproxy/\udcff.sock", 0), 232),
    ),
    # An abstract-namespace source and an unnamed destination.
    (
        v2(0x21, 0x31, unixBlock(b"\x00meshproxy", b"")),
        ProxyHeader(2, "PROXY", "UNIX", ("\x00meshproxy", 0), ("", 0), 232),
    ),
    # TLVs after the addresses: ALPN, authority, NOOP, unique id, SSL with sub-TLVs, a custom one.
    (
        v2(
            0x21,
            0x11,
            inet4Block("203.0.113.9", "198.51.100.1", 40000, 443)
            + tlv(0x01, b"h2")
            + tlv(0x02, b"example.com")
            + tlv(0x04, b"")
            + tlv(0x05, b"\x01" * 128)
            + tlv(0x20, SSL_TLV)
            + tlv(0xE0, b"\xff\x00"),
        ),
        ProxyHeader(
            2,
            "PROXY",
            "TCP4",
            ("203.0.113.9", 40000),
            ("198.51.100.1", 443),
            16 + 12 + 5 + 14 + 3 + 131 + 43 + 5,
            (
                (0x01, b"h2"),
                (0x02, b"example.com"),
                (0x04, b""),
                (0x05, b"\x01" * 128),
                (0x20, SSL_TLV),
                (0xE0, b"\xff\x00"),
            ),
        ),
    ),
    (
        v2(0x21, 0x21, inet6Block("::1", "::2", 1, 2) + tlv(0x03, b"\x00\x00\x00\x00")),
        ProxyHeader(2, "PROXY", "TCP6", ("::1", 1), ("::2", 2), 59, ((0x03, b"\x00\x00\x00\x00"),)),
    ),
    # LOCAL (a health check): no address, family ignored.
    (v2(0x20, 0x00, b""), ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, 16)),
    # "Receivers MUST always consider this field to skip the appropriate number of bytes", even for LOCAL,
    # whatever the family byte says.
    (
        v2(0x20, 0x12, inet4Block("1.2.3.4", "5.6.7.8", 1, 2)),
        ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, 28),
    ),
    (v2(0x20, 0xFF, b"\x00" * 7), ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, 23)),
    # PROXY for an unspecified family: accepted, address information ignored.
    (v2(0x21, 0x00, b""), ProxyHeader(2, "PROXY", "UNKNOWN", None, None, 16)),
    (v2(0x21, 0x01, b"whatever"), ProxyHeader(2, "PROXY", "UNKNOWN", None, None, 24)),
]


class ValidHeaderTests(SynchronousTestCase):
    """
    Valid v1 and v2 headers parse to the right L{ProxyHeader} however the bytes arrive.
    """

    def test_v1Bytewise(self) -> None:
        """
        Every strict prefix of a valid v1 header needs more bytes; the whole header parses.
        """
        for data, expected in VALID_V1:
            assertBytewise(self, parseProxyHeader, data, expected)

    def test_v2Bytewise(self) -> None:
        """
        Every strict prefix of a valid v2 header needs more bytes; the whole header parses.
        """
        for data, expected in VALID_V2:
            assertBytewise(self, parseProxyHeader, data, expected)

    def test_followingBytesUntouched(self) -> None:
        """
        Bytes after the header do not change it, and C{length} is where they start.
        """
        for data, expected in VALID_V1 + VALID_V2:
            stream = data + HTTP_REQUEST
            header = parseProxyHeader(stream)
            self.assertEqual(header, expected)
            assert isinstance(header, ProxyHeader)
            self.assertEqual(stream[header.length :], HTTP_REQUEST)

    def test_maxLength(self) -> None:
        """
        A v2 header as long as C{maxLength} is accepted.
        """
        data = v2(0x21, 0x11, inet4Block("1.2.3.4", "5.6.7.8", 1, 2) + tlv(0x04, b"\x00" * 100))
        header = parseProxyHeader(data, maxLength=len(data))
        assert isinstance(header, ProxyHeader)
        self.assertEqual(header.length, len(data))

    def test_byteArray(self) -> None:
        """
        A C{bytearray} buffer parses like C{bytes}.
        """
        for data, expected in VALID_V1 + VALID_V2:
            self.assertEqual(parseProxyHeader(bytearray(data)), expected)


# (bytes, how many of them decide, the error): every shorter prefix needs more, every longer one gives it.
INVALID = [
    (b"GET / HTTP/1.1\r\n", 1, "no PROXY protocol signature"),
    (b"\x16\x03\x01", 1, "no PROXY protocol signature"),
    (b"PROXZ TCP4", 5, "no PROXY protocol signature"),
    (b"proxy TCP4", 1, "no PROXY protocol signature"),
    (b"PROXY\tTCP4", 6, "no PROXY protocol signature"),
    (b"PROXY  TCP4 1.2.3.4", 7, "unknown protocol family"),
    (b"PROXY TCP5 1.2.3.4", 10, "unknown protocol family"),
    (b"PROXY tcp4 1.2.3.4", 7, "unknown protocol family"),
    (b"PROXY UNKNOWNX\r\n", 14, "unknown protocol family"),
    (b"PROXY UNKNOWN\n", 14, "unknown protocol family"),
    (b"PROXY TCP4\r\n", 11, "missing addresses"),
    (b"PROXY TCP4  1.2.3.4", 12, "bad source address"),
    (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", 19, "bad source address"),
    (b"PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n", 14, "bad source address"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", 17, "bad source address"),
    (b"PROXY TCP4 1.2.3.4. 5.6.7.8 1 2\r\n", 19, "bad source address"),
    (b"PROXY TCP4 ::1 ::2 1 2\r\n", 12, "bad source address"),
    (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", 20, "bad destination address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", 13, "bad source address"),
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", 27, "bad source address"),
    (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", 17, "bad source address"),
    (b"PROXY TCP6 12345::1 ::1 1 2\r\n", 16, "bad source address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", 19, "bad source address"),
    (b"PROXY TCP6 ::1 ::ffff:1.2.3.4.5 1 2\r\n", 30, "bad destination address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", 29, "bad source port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", 32, "bad source port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", 28, "bad source port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 123456\r\n", 35, "bad destination port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", 31, "too many fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", 29, "missing destination port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 31, "bad destination port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", 32, "bad destination port"),
    (b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", 107, "no CRLF in the first 107 bytes"),
    (SIGNATURE[:4] + b"\x01", 5, "no PROXY protocol signature"),
    (SIGNATURE[:11] + b"\r", 12, "no PROXY protocol signature"),
    (v2(0x11, 0x11, b""), 13, "unsupported version 1"),
    (v2(0x22, 0x11, b""), 13, "unknown command 2"),
    (v2(0x2F, 0x11, b""), 13, "unknown command 15"),
    (v2(0x21, 0x41, b""), 14, "unknown address family 4"),
    (v2(0x21, 0x13, b""), 14, "unknown transport 3"),
    (v2(0x21, 0x12, inet4Block("1.2.3.4", "5.6.7.8", 53, 53)), 14, "datagram transport is not supported"),
    (v2(0x21, 0x32, unixBlock(b"/a", b"/b")), 14, "datagram transport is not supported"),
    (v2(0x21, 0x10, inet4Block("1.2.3.4", "5.6.7.8", 1, 2)), 14, "unspecified transport for a known family"),
    (v2(0x21, 0x11, b"\x00" * 11), 16, "address block shorter than its family needs"),
    (v2(0x21, 0x21, b"\x00" * 35), 16, "address block shorter than its family needs"),
    (v2(0x21, 0x31, b"\x00" * 215), 16, "address block shorter than its family needs"),
    (v2(0x21, 0x11, b"\x00" * 12 + b"\x04\x00"), 30, "truncated TLV"),
    (v2(0x21, 0x11, b"\x00" * 12 + b"\x04\x00\x02\x00"), 32, "TLV longer than the header"),
    (v2(0x21, 0x11, b"", declared=16369), 16, "header longer than 16384 bytes"),
]


class InvalidHeaderTests(SynchronousTestCase):
    """
    Bytes that cannot be a valid header are an error as soon as that is known, and stay one.
    """

    def test_decidedAt(self) -> None:
        """
        Each invalid input waits until the deciding byte, then gives its error from there on.
        """
        for data, length, reason in INVALID:
            assertDecidedAt(self, parseProxyHeader, data, length, ProxyHeaderError(reason))

    def test_validPrefixes(self) -> None:
        """
        Prefixes that a valid header could still follow keep needing more bytes, however long the fields.
        """
        for data in [
            b"PROXY TCP6 ::1 ::2 ",
            b"PROXY TCP6 1:2:3:4:5:6:7",
            b"PROXY TCP6 ::ffff:255.255.25",
            b"PROXY TCP4 255.255.255.255 1.1.1.1 6553",
            b"PROXY UNKNOWN \r\r\r",
            SIGNATURE + b"\x21\x31\x01\x00" + b"\x00" * 200,
        ]:
            assertBytewise(self, parseProxyHeader, data, NEED_MORE)

    def test_v1TooLong(self) -> None:
        """
        A v1 line that cannot end within 107 bytes is an error at byte 107, even when a CRLF follows.
        """
        line = b"PROXY UNKNOWN " + b"x" * 93 + b"\r\n"
        self.assertIs(parseProxyHeader(line[:106]), NEED_MORE)
        self.assertEqual(parseProxyHeader(line), ProxyHeaderError("no CRLF in the first 107 bytes"))
        almost = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
        self.assertEqual(len(almost), 107)
        self.assertIsInstance(parseProxyHeader(almost), ProxyHeader)

    def test_maxLength(self) -> None:
        """
        A v2 header one byte longer than C{maxLength} is refused from its length field on.
        """
        data = v2(0x21, 0x11, inet4Block("1.2.3.4", "5.6.7.8", 1, 2) + tlv(0x04, b"\x00" * 100))
        assertDecidedAt(
            self,
            lambda d: parseProxyHeader(d, maxLength=len(data) - 1),
            data,
            16,
            ProxyHeaderError("header longer than %d bytes" % (len(data) - 1,)),
        )

    def test_empty(self) -> None:
        """
        No bytes yet is not an error.
        """
        self.assertIs(parseProxyHeader(b""), NEED_MORE)


def proxyish() -> st.SearchStrategy[bytes]:
    """
    Bytes that often start like a header: signatures and header pieces glued to arbitrary bytes.
    """
    pieces = st.sampled_from(
        [b"PROXY ", b"TCP4 ", b"TCP6 ", b"UNKNOWN", b" ", b"\r\n", b"\r", b"1.2.3.4", b"::1", b"65535", b"0"]
        + [SIGNATURE, b"\x21\x11\x00\x0c", b"\x20\x00\x00\x00", b"\x21\x31\x00\xd8", b"\x21\x21"]
    )
    return st.lists(st.one_of(pieces, st.binary(max_size=8)), max_size=12).map(b"".join)


@st.composite
def mutated(draw: DrawFn) -> bytes:
    """
    A valid header with one byte replaced, inserted or removed.
    """
    data = draw(st.sampled_from([header for header, _ in VALID_V1 + VALID_V2]))
    where = draw(st.integers(0, len(data) - 1))
    byte = bytes([draw(st.integers(0, 255))])
    kind = draw(st.sampled_from(["replace", "insert", "delete"]))
    if kind == "replace":
        return data[:where] + byte + data[where + 1 :]
    if kind == "insert":
        return data[:where] + byte + data[where:]
    return data[:where] + data[where + 1 :]


class PropertyTests(SynchronousTestCase):
    """
    Properties over arbitrary input: no exceptions, and answers that only firm up as bytes arrive.
    """

    def checkConsistent(self, parse: Callable[[bytes], object], data: bytes) -> None:
        """
        Assert C{parse} never raises on C{data}'s prefixes and that once a prefix is decided, every longer
        prefix gives the same header, or an error.
        """
        decided = firstDecided(parse, data)
        if decided is None:
            return
        length, first = decided
        for end in range(length, len(data) + 1):
            result = parse(data[:end])
            if isinstance(first, ProxyHeader):
                self.assertEqual(result, first)
            else:
                self.assertIsInstance(result, ProxyHeaderError)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_randomBytes(self, data: bytes) -> None:
        """
        Random bytes parse without raising, to one of the three kinds of answer.
        """
        self.assertIsInstance(parseProxyHeader(data), (NeedMore, ProxyHeader, ProxyHeaderError))

    @settings(max_examples=300, deadline=None)
    @given(proxyish())
    def test_headerishConsistent(self, data: bytes) -> None:
        """
        Header-like bytes: a decided answer does not change as more bytes arrive.
        """
        self.checkConsistent(parseProxyHeader, data)

    @settings(max_examples=300, deadline=None)
    @given(mutated())
    def test_mutatedConsistent(self, data: bytes) -> None:
        """
        Valid headers with one byte changed: never raise, and decided answers do not change.
        """
        self.checkConsistent(parseProxyHeader, data)

    def test_consistencyCheckCanFail(self) -> None:
        """
        The consistency check catches a parser whose answer changes after it was decided.
        """
        header = ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, 16)

        def fickle(data: bytes) -> object:
            return NEED_MORE if len(data) < 3 else header if len(data) == 3 else ProxyHeaderError("x")

        self.assertRaises(self.failureException, self.checkConsistent, fickle, b"abcdef")
