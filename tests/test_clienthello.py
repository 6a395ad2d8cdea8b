"""
Tests for L{meshproxy.clienthello}: ClientHellos made by real TLS libraries and by hand, fed one byte at a
time.
"""

from __future__ import annotations

import ssl
import struct
from typing import TYPE_CHECKING, Callable, Sequence

from hypothesis import given, settings, strategies as st
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.clienthello import ClientHello, NotClientHello, parseClientHello
from meshproxy.needmore import NEED_MORE, NeedMore
from tests.bytewise import assertBytewise, assertDecidedAt, firstDecided

if TYPE_CHECKING:
    from hypothesis.strategies import DrawFn

TLS13 = 0x0304
TLS12 = 0x0303


def sslHello(
    serverName: str | None, alpn: Sequence[str] = (), maximumVersion: ssl.TLSVersion | None = None
) -> bytes:
    """
    The first flight of Python's C{ssl} module as a client: a real ClientHello.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if maximumVersion is not None:
        context.maximum_version = maximumVersion
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=serverName)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def pyOpenSSLHello(serverName: bytes | None, alpn: Sequence[bytes] = (), tls12: bool = False) -> bytes:
    """
    The first flight of pyOpenSSL as a client, which sends the server name bytes exactly as given.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if alpn:
        context.set_alpn_protos(list(alpn))
    if tls12:
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
    connection = SSL.Connection(context, None)
    connection.set_connect_state()
    if serverName is not None:
        connection.set_tlsext_host_name(serverName)
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        pass
    return connection.bio_read(65536)


def extension(kind: int, value: bytes) -> bytes:
    """
    One ClientHello extension.
    """
    return struct.pack("!HH", kind, len(value)) + value


def serverNameExtension(*names: bytes, nameType: int = 0) -> bytes:
    """
    A C{server_name} extension listing C{names}.
    """
    entries = b"".join(struct.pack("!BH", nameType, len(name)) + name for name in names)
    return extension(0, struct.pack("!H", len(entries)) + entries)


def alpnExtension(*names: bytes) -> bytes:
    """
    An ALPN extension offering C{names}.
    """
    entries = b"".join(bytes([len(name)]) + name for name in names)
    return extension(16, struct.pack("!H", len(entries)) + entries)


def versionsExtension(*versions: int) -> bytes:
    """
    A ClientHello C{supported_versions} extension.
    """
    return extension(43, bytes([2 * len(versions)]) + struct.pack("!%dH" % len(versions), *versions))


def helloBody(
    extensions: bytes | None = b"",
    *,
    legacyVersion: bytes = b"\x03\x03",
    sessionId: bytes = b"",
    suites: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
) -> bytes:
    """
    A ClientHello body; C{extensions=None} leaves the extensions block out, as pre-TLS-1.3 clients may.
    """
    body = legacyVersion + b"\x5a" * 32 + bytes([len(sessionId)]) + sessionId
    body += struct.pack("!H", len(suites)) + suites + bytes([len(compression)]) + compression
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return body


def handshake(body: bytes, messageType: int = 1) -> bytes:
    """
    A handshake message around C{body}.
    """
    return bytes([messageType]) + len(body).to_bytes(3, "big") + body


def records(
    message: bytes, sizes: Sequence[int] = (), size: int = 16384, version: bytes = b"\x03\x01"
) -> bytes:
    """
    Split C{message} into handshake records: first of the given C{sizes}, then of C{size} bytes.
    """
    out = []
    position = 0
    index = 0
    while position < len(message):
        step = sizes[index] if index < len(sizes) else size
        index += 1
        fragment = message[position : position + step]
        out.append(b"\x16" + version + struct.pack("!H", len(fragment)) + fragment)
        position += step
    return b"".join(out)


def handMade(extensions: bytes | None = b"", **fields: bytes) -> bytes:
    """
    A hand-built ClientHello in one record.
    """
    return records(handshake(helloBody(extensions, **fields)))


def hello(
    data: bytes, serverName: str | None, alpn: tuple[str, ...] = (), versions: tuple[int, ...] = ()
) -> ClientHello:
    """
    The expected parse of a ClientHello that fills C{data}, with TLS 1.2's legacy version.
    """
    return ClientHello(serverName, alpn, TLS12, versions, len(data))


def malformed(reason: str) -> NotClientHello:
    """
    The expected parse of bytes that began as TLS but are not an acceptable ClientHello.
    """
    return NotClientHello(reason, True)


def notTLS(reason: str = "not a TLS handshake record") -> NotClientHello:
    """
    The expected parse of bytes that are not TLS at all.
    """
    return NotClientHello(reason, False)


BAD_NAME = "server name is not a DNS name or IP address"

# What comes after a TLS 1.3 ClientHello in a middlebox-compatible client: ChangeCipherSpec, early data.
FOLLOWING = b"\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x05hello"

REAL_CASES: list[tuple[Callable[[], bytes], str | None, tuple[str, ...], bool]] = [
    (lambda: sslHello("example.com"), "example.com", (), True),
    (lambda: sslHello("www.example.org", ["h2", "http/1.1"]), "www.example.org", ("h2", "http/1.1"), True),
    (lambda: sslHello("bücher.example", ["http/1.1"]), "xn--bcher-kva.example", ("http/1.1",), True),
    (lambda: sslHello(None, ["h2"]), None, ("h2",), True),
    (lambda: sslHello("127.0.0.1"), None, (), True),  # Python sends no SNI for an IP address.
    (lambda: sslHello("api.example.net", ["h2"], ssl.TLSVersion.TLSv1_2), "api.example.net", ("h2",), False),
    (lambda: sslHello(None, (), ssl.TLSVersion.TLSv1_2), None, (), False),
    (lambda: pyOpenSSLHello(b"Example.COM", [b"h2", b"http/1.1"]), "example.com", ("h2", "http/1.1"), True),
    (lambda: pyOpenSSLHello(b"example.com."), "example.com", (), True),
    (lambda: pyOpenSSLHello(b"_acme-challenge.a-1.example"), "_acme-challenge.a-1.example", (), True),
    (lambda: pyOpenSSLHello(b"localhost", [b"x" * 255], True), "localhost", ("x" * 255,), False),
    (lambda: pyOpenSSLHello(b"2001:DB8::1"), "2001:db8::1", (), True),
]


class RealClientHelloTests(SynchronousTestCase):
    """
    ClientHellos made by OpenSSL through Python's C{ssl} module and pyOpenSSL.
    """

    def test_bytewise(self) -> None:
        """
        Every strict prefix of a real ClientHello needs more bytes; the whole gives its name and ALPN offer.
        """
        for make, serverName, alpn, tls13 in REAL_CASES:
            data = make()
            result = parseClientHello(data)
            assert isinstance(result, ClientHello), result
            if tls13:
                self.assertIn(TLS13, result.supportedVersions)
            else:
                self.assertEqual(result.supportedVersions, ())
            expected = ClientHello(serverName, alpn, TLS12, result.supportedVersions, len(data))
            assertBytewise(self, parseClientHello, data, expected)

    def test_followingRecords(self) -> None:
        """
        Records after the ClientHello do not change it, and C{length} is where they start.
        """
        for make, serverName, alpn, _ in REAL_CASES:
            data = make()
            result = parseClientHello(data + FOLLOWING)
            assert isinstance(result, ClientHello), result
            self.assertEqual((result.serverName, result.alpn, result.length), (serverName, alpn, len(data)))

    def test_invalidServerName(self) -> None:
        """
        OpenSSL sends whatever name it is given; one that is not a DNS name makes the hello malformed, which
        is known once the extensions are complete.
        """
        for name in [b"exa mple.com", b"*.example.com", b"example.com:443", b"caf\xc3\xa9.example"]:
            data = pyOpenSSLHello(name, [b"h2"])
            assertBytewise(self, parseClientHello, data, malformed(BAD_NAME))

    def test_resplit(self) -> None:
        """
        A real ClientHello re-framed into several records, with the handshake header itself split, parses
        the same; C{length} counts all the records.
        """
        original = sslHello("split.example", ["h2"])
        self.assertEqual(struct.unpack("!H", original[3:5])[0], len(original) - 5, "expected one record")
        message = original[5:]
        for sizes, size in [((1, 2), 100), ((3,), 16), ((4,), 200), ((), 9), ((), 300)]:
            data = records(message, sizes, size, version=b"\x03\x03")
            result = parseClientHello(original)
            assert isinstance(result, ClientHello)
            expected = ClientHello("split.example", ("h2",), TLS12, result.supportedVersions, len(data))
            assertBytewise(self, parseClientHello, data, expected)

    def test_tooManyRecords(self) -> None:
        """
        Sixty-four records are accepted; a sixty-fifth is refused as soon as its header is in.
        """
        message = sslHello("many.example")[5:]
        size = -(-len(message) // 64)
        self.assertIsInstance(parseClientHello(records(message, size=size)), ClientHello)
        data = records(message, size=size - 1)
        assertDecidedAt(
            self,
            parseClientHello,
            data,
            64 * (5 + size - 1) + 5,
            malformed("ClientHello split over more than 64 records"),
        )


# Byte offsets in a one-record hand-made hello with an empty session id and one cipher suite.
HANDSHAKE_TYPE = 5
BODY_LENGTH_END = 9
SESSION_LENGTH = 43
SUITES_LENGTH_END = 46
COMPRESSION_LENGTH = 48
EXTENSIONS_LENGTH_END = 52

BASIC = handMade(serverNameExtension(b"example.com") + alpnExtension(b"h2"))

VALID_HAND_MADE = [
    (BASIC, "example.com", ("h2",), ()),
    # No extensions block at all, as before TLS 1.3.
    (handMade(None), None, (), ()),
    (handMade(b""), None, (), ()),
    # GREASE values are reported as sent, GREASE extensions skipped.
    (handMade(versionsExtension(0x0A0A, TLS13) + extension(0x1A1A, b"")), None, (), (0x0A0A, TLS13)),
    (handMade(alpnExtension(b"\xff\x00", b"h2")), None, ("\xff\x00", "h2"), ()),
    (handMade(serverNameExtension(b"A.Example.COM.")), "a.example.com", (), ()),
    (handMade(serverNameExtension(b"x")), "x", (), ()),
    (handMade(serverNameExtension(b"192.0.2.1")), "192.0.2.1", (), ()),
    (handMade(serverNameExtension(b"::1")), "::1", (), ()),
    (handMade(serverNameExtension(b"a" * 63 + b".example")), "a" * 63 + ".example", (), ()),
    (handMade(serverNameExtension(b"a." * 126 + b"a")), "a." * 126 + "a", (), ()),
    (handMade(serverNameExtension(b"xn--bcher-kva.example")), "xn--bcher-kva.example", (), ()),
    # pre_shared_key last is fine; unknown extensions are skipped.
    (handMade(extension(0xFFCE, b"\x01\x02") + extension(41, b"psk")), None, (), ()),
    (handMade(sessionId=b"\x01" * 32, suites=b"\x00\x2f" * 100, compression=b"\x01\x00"), None, (), ()),
]


MESSAGE = handshake(helloBody())
OVERRUN = "ClientHello fields overrun its length"
ONE_NAME = "server_name must hold exactly one name"

# (bytes, how many of them decide, the reason): bytes that are not TLS at all.
NOT_TLS = [
    (b"GET / HTTP/1.1\r\n", 1, "not a TLS handshake record"),
    (b"\x00\x16\x03\x01", 1, "not a TLS handshake record"),
    (b"\x15\x03\x03\x00\x02\x02\x28", 1, "not a TLS handshake record"),
    (b"\x16\x02\x00\x00\x30", 2, "bad record version"),
    (b"\x16\x03\x05\x00\x30", 3, "bad record version"),
    (b"\x16\x03\x01\x41\x00", 4, "record longer than 2^14 bytes"),
    (b"\x16\x03\x01\x40\x01", 5, "record longer than 2^14 bytes"),
    (b"\x16\x03\x01\x00\x00", 5, "empty handshake record"),
]

# (bytes, how many of them decide or None for all, the reason): bytes that began as TLS.
MALFORMED = [
    (records(handshake(helloBody(), 2)), HANDSHAKE_TYPE + 1, "first handshake message is not a ClientHello"),
    (records(b"\x01\x00\x00\x28" + b"\x03" * 40), BODY_LENGTH_END, "impossible ClientHello length 40"),
    (b"\x16\x03\x01\x00\x10\x01\xff\xff\xff", BODY_LENGTH_END, "impossible ClientHello length 16777215"),
    (handMade(legacyVersion=b"\x02\x00"), BODY_LENGTH_END + 1, "bad ClientHello version"),
    (handMade(sessionId=b"\x00" * 33), SESSION_LENGTH + 1, "session id longer than 32 bytes"),
    (handMade(suites=b"\x13\x01\x13"), SUITES_LENGTH_END, "bad cipher suites length"),
    (handMade(suites=b""), SUITES_LENGTH_END, "bad cipher suites length"),
    (handMade(compression=b""), COMPRESSION_LENGTH + 1, "no compression methods"),
    # An extensions block announcing 5 bytes that are not there; a stray byte after the compression methods;
    # 255 compression methods in a body without room for them.
    (handMade(b"")[:-2] + b"\x00\x05", EXTENSIONS_LENGTH_END, "extensions do not fill the ClientHello"),
    (records(handshake(helloBody(None) + b"\x00")), EXTENSIONS_LENGTH_END - 2, OVERRUN),
    (records(handshake(helloBody(None)[:-2] + b"\xff\x00")), COMPRESSION_LENGTH + 1, OVERRUN),
    # The record carries a byte beyond the message, known once the message length is.
    (records(MESSAGE + b"\x00"), BODY_LENGTH_END, "more data in the record after the ClientHello"),
    (records(MESSAGE[:20]) + b"\x17\x03\x03\x00\x01\x00", 26, "non-handshake record inside the ClientHello"),
    (records(MESSAGE[:20]) + records(MESSAGE[20:], version=b"\x03\x07"), 28, "bad record version"),
    (handMade(alpnExtension(b"h2") + alpnExtension(b"h2")), None, "extension 16 sent twice"),
    (handMade(extension(41, b"psk") + alpnExtension(b"h2")), None, "pre_shared_key is not the last extension"),
    (handMade(b"\x00\x00\x00"), None, "truncated extension header"),
    (handMade(b"\x00\x10\x00\x05\x00"), None, "extension overruns the ClientHello"),
    (handMade(serverNameExtension(b"a.example", b"b.example")), None, ONE_NAME),
    (handMade(extension(0, b"\x00\x05\x00\x00\x01a")), None, ONE_NAME),
    (handMade(serverNameExtension(b"a.example", nameType=1)), None, "server_name entry is not a host_name"),
    (handMade(extension(0, b"\x00\x00")), None, "bad server_name extension"),
    (handMade(extension(16, b"\x00\x00")), None, "bad ALPN extension"),
    (handMade(extension(16, b"\x00\x04\x02h2")), None, "bad ALPN list length"),
    (handMade(extension(16, b"\x00\x03\x00h2")), None, "bad ALPN protocol name"),
    (handMade(extension(16, b"\x00\x03\x03h2")), None, "bad ALPN protocol name"),
    (handMade(extension(43, b"\x00")), None, "bad supported_versions extension"),
    (handMade(extension(43, b"\x03\x03\x04\x03")), None, "bad supported_versions extension"),
    (handMade(extension(43, b"\x04\x03\x04")), None, "bad supported_versions extension"),
]

INVALID_NAMES = [
    b"",
    b".",
    b"example..com",
    b"example.com..",
    b".example.com",
    b"-a.example",
    b"a-.example",
    b"a" * 64 + b".example",
    b"a." * 126 + b"ab",
    b"*.example.com",
    b"b\xc3\xbccher.example",
    b"[::1]",
    b"fe80::1%eth0",
    b"1.2.3.4:443",
    b"exam\x00ple.com",
    b"example.com\n",
]


def sslv2Hello(cipherSpecs: bytes = b"\x00\x00\x2f\x00\x00\x35", challenge: bytes = b"\x42" * 16) -> bytes:
    """
    An SSLv2-format ClientHello offering TLS 1.0, as very old clients sent.
    """
    lengths = struct.pack("!HHH", len(cipherSpecs), 0, len(challenge))
    body = b"\x01\x03\x01" + lengths + cipherSpecs + challenge
    return struct.pack("!H", 0x8000 | len(body)) + body


class HandMadeClientHelloTests(SynchronousTestCase):
    """
    Hand-built ClientHellos: edge cases of the format, and each way to break it.
    """

    def test_validBytewise(self) -> None:
        """
        Each valid hand-made hello needs more bytes until it is complete, then parses as expected.
        """
        for data, serverName, alpn, versions in VALID_HAND_MADE:
            assertBytewise(self, parseClientHello, data, hello(data, serverName, alpn, versions))

    def test_legacyVersion(self) -> None:
        """
        The ClientHello's own version field is reported, not the record's.
        """
        result = parseClientHello(handMade(None, legacyVersion=b"\x03\x01"))
        assert isinstance(result, ClientHello)
        self.assertEqual(result.legacyVersion, 0x0301)

    def test_invalidDecidedAt(self) -> None:
        """
        Each broken input waits until the byte that breaks it, then gives the same answer from there on;
        errors inside the extensions are known when the message is complete.
        """
        for data, length, reason in NOT_TLS:
            assertDecidedAt(self, parseClientHello, data, length, notTLS(reason))
        for data, maybeLength, reason in MALFORMED:
            length = len(data) if maybeLength is None else maybeLength
            assertDecidedAt(self, parseClientHello, data, length, malformed(reason))

    def test_invalidNames(self) -> None:
        """
        A server name that is neither a DNS name nor an IP address makes the hello malformed.
        """
        for name in INVALID_NAMES:
            data = handMade(serverNameExtension(name))
            assertBytewise(self, parseClientHello, data, malformed(BAD_NAME))

    def test_sslv2(self) -> None:
        """
        An SSLv2-format hello is recognised as TLS from its first 11 bytes, but not parsed.
        """
        assertDecidedAt(
            self, parseClientHello, sslv2Hello(), 11, malformed("SSLv2-format ClientHello is not supported")
        )

    def test_notSSLv2(self) -> None:
        """
        Bytes with the high bit set that do not go on like an SSLv2 hello are not TLS.
        """
        for data, length in [
            (b"\x80\x05\x01\x03\x01", 2),
            (b"\xff\xff\x02\x03\x01", 3),
            (b"\x80\x2e\x01\x04\x01", 5),
            (b"\x80\x2e\x01\x00\x03", 5),
            (sslv2Hello(cipherSpecs=b"\x00\x00\x2f\x00"), 11),
            (sslv2Hello(challenge=b"\x42" * 15), 11),
            (sslv2Hello()[:2] + b"\x01\x03\x01\x00\x06\x00\x00\x00\x11", 11),
            (sslv2Hello()[:2] + b"\x01\x03\x01\x00\x03\x00\x01\x00\x12", 11),
        ]:
            assertDecidedAt(self, parseClientHello, data, length, notTLS())

    def test_byteArray(self) -> None:
        """
        A C{bytearray} buffer parses like C{bytes}, and can still grow afterwards.
        """
        buffer = bytearray(BASIC[:40])
        self.assertIs(parseClientHello(buffer), NEED_MORE)
        buffer.extend(BASIC[40:])
        self.assertEqual(parseClientHello(buffer), hello(BASIC, "example.com", ("h2",)))


@st.composite
def mutatedHello(draw: DrawFn) -> bytes:
    """
    A valid ClientHello, optionally re-framed into records, with up to three bytes replaced, inserted or
    removed.
    """
    data = draw(st.sampled_from([data for data, _, _, _ in VALID_HAND_MADE] + REAL_SAMPLES))
    if draw(st.booleans()):
        data = records(data[5:], size=draw(st.integers(8, 600)))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(0, len(data) - 1))
        byte = bytes([draw(st.integers(0, 255))])
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        if kind == "replace":
            data = data[:where] + byte + data[where + 1 :]
        elif kind == "insert":
            data = data[:where] + byte + data[where:]
        else:
            data = data[:where] + data[where + 1 :]
    return data


REAL_SAMPLES = [sslHello("sample.example", ["h2", "http/1.1"]), sslHello(None, (), ssl.TLSVersion.TLSv1_2)]


class PropertyTests(SynchronousTestCase):
    """
    Properties over arbitrary input: no exceptions, and answers that only firm up as bytes arrive.
    """

    def checkConsistent(self, parse: Callable[[bytes], object], data: bytes) -> None:
        """
        Assert that once a prefix of C{data} is decided, every longer prefix gives the same ClientHello, or
        an error with the same opinion on whether the bytes are TLS.
        """
        decided = firstDecided(parse, data)
        if decided is None:
            return
        length, first = decided
        for end in range(length, len(data) + 1):
            result = parse(data[:end])
            if isinstance(first, NotClientHello):
                assert isinstance(result, NotClientHello), result
                self.assertEqual(result.looksLikeTLS, first.looksLikeTLS)
            else:
                self.assertEqual(result, first)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_randomBytes(self, data: bytes) -> None:
        """
        Random bytes parse without raising.
        """
        self.assertIsInstance(parseClientHello(data), (NeedMore, ClientHello, NotClientHello))

    @settings(max_examples=500, deadline=None)
    @given(st.sampled_from([b"\x16\x03\x01", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]), st.binary())
    def test_recordLikeBytes(self, head: bytes, tail: bytes) -> None:
        """
        Random bytes behind a plausible record header parse without raising, and consistently.
        """
        self.assertIsInstance(parseClientHello(head + tail), (NeedMore, ClientHello, NotClientHello))
        self.checkConsistent(parseClientHello, head + tail[:80])

    @settings(max_examples=150, deadline=None)
    @given(mutatedHello())
    def test_mutatedConsistent(self, data: bytes) -> None:
        """
        Damaged ClientHellos: never raise, and decided answers do not change as more bytes arrive.
        """
        self.checkConsistent(parseClientHello, data)

    def test_consistencyCheckCanFail(self) -> None:
        """
        The consistency check catches a parser that changes its mind about whether the bytes are TLS.
        """

        def fickle(data: bytes) -> object:
            if len(data) < 3:
                return NEED_MORE
            return NotClientHello("x", len(data) == 3)

        self.assertRaises(self.failureException, self.checkConsistent, fickle, b"abcdef")
