"""
Tests for L{meshproxy.classify}: exact transcripts of first bytes and the verdicts they get, fed one byte at
a time, and properties over arbitrary bytes.
"""

from __future__ import annotations

from typing import Callable

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.classify import PROTOCOLS, Verdict, classify
from meshproxy.clienthello import ClientHello, parseClientHello
from meshproxy.needmore import NEED_MORE, NeedMore
from tests.bytewise import assertBytewise, assertDecidedAt, firstDecided
from tests.test_clienthello import (
    handMade,
    handshake,
    helloBody,
    mutatedHello,
    records,
    serverNameExtension,
    sslHello,
    sslv2Hello,
)

# An HTTP/1.1 head and a body byte, to follow a request line.
HEAD_REST = b"Host: example.com\r\nContent-Length: 1\r\n\r\nx"
# A SETTINGS frame, to follow the HTTP/2 preface.
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

HTTP1 = Verdict("http1", reason="request-line")
HTTP1_LF = Verdict("http1", reason="request-line-lf")
NOT_HTTP = Verdict("raw", reason="not-http")

REQUEST_LINES = [
    b"GET / HTTP/1.1\r\n",
    b"GET /index.html?a=b&c=%20d HTTP/1.0\r\n",
    b"POST /submit HTTP/1.1\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\n",
    b"CONNECT 192.0.2.1:443 HTTP/1.1\r\n",
    b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n",
    b"GET http://example.com/a HTTP/1.1\r\n",
    b"M-SEARCH * HTTP/1.1\r\n",
    b"PRI * HTTP/1.1\r\n",
    # Methods are case-sensitive tokens; an unknown or lower-case one is for the HTTP layer to refuse.
    b"get / HTTP/1.1\r\n",
    b"BREW /pot HTTP/1.1\r\n",
    b"A" * 32 + b" / HTTP/1.1\r\n",
    # Bytes the strict codec will answer with 400, which is better than relaying them raw.
    b'GET /a"b{c}|d\\e^ HTTP/1.1\r\n',
    b"GET /caf\xc3\xa9 HTTP/1.1\r\n",
]

# (bytes, how many of them decide): every one of these is raw, "not-http".
NOT_HTTP_CASES = [
    (b"\x00GET / HTTP/1.1\r\n", 1),
    (b"\r\nGET / HTTP/1.1\r\n", 1),
    (b" GET / HTTP/1.1\r\n", 1),
    (b"GET  / HTTP/1.1\r\n", 5),
    (b"GET /\x00 HTTP/1.1\r\n", 6),
    (b"GET /\t HTTP/1.1\r\n", 6),
    (b"GET ?a HTTP/1.1\r\n", 5),
    (b"GET\t/ HTTP/1.1\r\n", 4),
    (b"GET /\r\n", 6),
    (b"GET / HTTP/1.2\r\n", 14),
    (b"GET / HTTP/2.0\r\n", 12),
    (b"GET / http/1.1\r\n", 7),
    (b"GET / HTTP/1.1 \r\n", 15),
    (b"GET / HTTP/1.1\rX", 16),
    (b"GET / HTTP/1.1\r\r\n", 16),
    (b"A" * 33 + b" / HTTP/1.1\r\n", 33),
    (b"PRI * HTTP/2.0\r\n\r\nXX", 19),
    (b"SSH-2.0-OpenSSH_9.2p1\r\n", 22),
    (b"HELO mail.example.com\r\n", 22),
    (b"*1\r\n$4\r\nPING\r\n", 3),
    (b"get key\r\n", 8),
    (b"\x00\x00\x00\x0c\x00\x00\x00\x00", 1),
    (b"\x05\x01\x00", 1),
]


class HTTPTests(SynchronousTestCase):
    """
    HTTP/1 request lines, the HTTP/2 preface, and the near misses that are raw.
    """

    def test_requestLines(self) -> None:
        """
        A valid request line is HTTP/1 as soon as its CRLF arrives, and stays so whatever follows.
        """
        for line in REQUEST_LINES:
            assertDecidedAt(self, classify, line + HEAD_REST, len(line), HTTP1)

    def test_bareLF(self) -> None:
        """
        A request line ended by a bare LF is HTTP/1 with its own reason, so the HTTP layer judges it and
        operators can count it.
        """
        for line in [b"GET / HTTP/1.1\n", b"get /x HTTP/1.0\n"]:
            assertDecidedAt(self, classify, line + HEAD_REST, len(line), HTTP1_LF)

    def test_h2Preface(self) -> None:
        """
        The HTTP/2 preface is HTTP/2 once complete; before that it waits, although its start is also the
        start of an HTTP/1 request line.
        """
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        expected = Verdict("http2", reason="h2-preface")
        assertDecidedAt(self, classify, preface + H2_SETTINGS, len(preface), expected)

    def test_brokenH2Preface(self) -> None:
        """
        Bytes that leave the HTTP/2 preface after its first line are raw.
        """
        for data in [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[:-1] + b"\x00"]:
            length = len(data) - 1
            self.assertIs(classify(data[:length]), NEED_MORE)
            self.assertEqual(classify(data[: length + 1]), NOT_HTTP)

    def test_notHTTP(self) -> None:
        """
        Bytes that cannot begin a request line are raw as soon as the deciding byte arrives.
        """
        for data, length in NOT_HTTP_CASES:
            assertDecidedAt(self, classify, data, length, NOT_HTTP)


def tlsVerdict(data: bytes) -> Verdict:
    """
    The verdict for a complete ClientHello, built from its own parse.
    """
    hello = parseClientHello(data)
    assert isinstance(hello, ClientHello), hello
    return Verdict("tls", hello.serverName, hello.alpn, "clienthello", clientHello=hello)


class TLSTests(SynchronousTestCase):
    """
    TLS ClientHellos, good and bad.
    """

    def test_clientHellos(self) -> None:
        """
        A real ClientHello is TLS with its name and ALPN offer once its record is complete.
        """
        for data, serverName, alpn in [
            (sslHello("www.example.com", ["h2", "http/1.1"]), "www.example.com", ("h2", "http/1.1")),
            (sslHello(None, ["http/1.1"]), None, ("http/1.1",)),
            (records(sslHello("split.example")[5:], size=100), "split.example", ()),
        ]:
            expected = tlsVerdict(data)
            self.assertEqual((expected.serverName, expected.alpn), (serverName, alpn))
            assertDecidedAt(self, classify, data + b"\x17\x03\x03\x00\x01x", len(data), expected)

    def test_malformed(self) -> None:
        """
        Bytes that began as TLS but are not an acceptable ClientHello are still TLS, without a name, so a
        TLS library answers them; the parser's reason is kept as the detail.
        """
        badName = handMade(serverNameExtension(b"bad name"))
        for data, length, detail in [
            (badName, len(badName), "server name is not a DNS name or IP address"),
            (records(handshake(helloBody(), 2)), 6, "first handshake message is not a ClientHello"),
        ]:
            expected = Verdict("tls", reason="malformed-clienthello", detail=detail)
            assertDecidedAt(self, classify, data, length, expected)

    def test_sslv2(self) -> None:
        """
        An SSLv2-format hello is TLS with its own reason.
        """
        detail = "SSLv2-format ClientHello is not supported"
        expected = Verdict("tls", reason="sslv2-clienthello", detail=detail)
        assertDecidedAt(self, classify, sslv2Hello(), 11, expected)

    def test_notTLS(self) -> None:
        """
        Bytes that start like a handshake record but are not one are raw.
        """
        for data, length, detail in [
            (b"\x16\x03\x05\x00\x10", 3, "bad record version"),
            (b"\x16\x03\x01\x00\x00", 5, "empty handshake record"),
            (b"\x80\x01\x01\x03\x01", 2, "not a TLS handshake record"),
            (b"\xff\xfe\xfd", 3, "not a TLS handshake record"),
        ]:
            assertDecidedAt(self, classify, data, length, Verdict("raw", reason="not-tls", detail=detail))


class BufferFullTests(SynchronousTestCase):
    """
    A buffer that fills up undecided gets a verdict.
    """

    def test_longURI(self) -> None:
        """
        A request line still going at C{maxBytes} is HTTP/1, so the HTTP layer can answer 414; bytes beyond
        C{maxBytes} are not looked at.
        """
        data = b"GET /" + b"a" * 59
        full = Verdict("http1", reason="buffer-full")
        assertBytewise(self, lambda d: classify(d, maxBytes=64), data, full)
        self.assertEqual(classify(data + b"\x00 HTTP/9\n", maxBytes=64), full)

    def test_longURIDefault(self) -> None:
        """
        The default buffer is 16 KiB.
        """
        data = b"GET /" + b"a" * (16384 - 5)
        self.assertIs(classify(data[:-1]), NEED_MORE)
        self.assertEqual(classify(data), Verdict("http1", reason="buffer-full"))

    def test_longClientHello(self) -> None:
        """
        A ClientHello longer than the buffer is TLS without a name.
        """
        data = sslHello("x.example")[:100]
        assertBytewise(self, lambda d: classify(d, maxBytes=100), data, Verdict("tls", reason="buffer-full"))

    def test_undecidedOther(self) -> None:
        """
        An undecided buffer that does not yet look like TLS or HTTP is raw at C{maxBytes}; the HTTP/2
        preface is an HTTP request line start.
        """
        for data, maxBytes, expected in [
            (b"", 0, Verdict("raw", reason="buffer-full")),
            (b"\x16\x03", 2, Verdict("raw", reason="buffer-full")),
            (b"\x80\x40\x01", 3, Verdict("raw", reason="buffer-full")),
            (b"PRI * HTT", 9, Verdict("http1", reason="buffer-full")),
        ]:
            self.assertEqual(classify(data, maxBytes=maxBytes), expected)
            self.assertIs(classify(data[:-1], maxBytes=maxBytes + 1), NEED_MORE)


class EOFTests(SynchronousTestCase):
    """
    With no more bytes to come, every buffer gets a verdict.
    """

    def test_undecided(self) -> None:
        """
        An undecided buffer at end of input is decided by what it has shown so far.
        """
        partialHello = sslHello("x.example")[:50]
        for data, expected in [
            (b"", Verdict("raw", reason="eof")),
            (b"G", Verdict("raw", reason="eof")),
            (b"GET", Verdict("raw", reason="eof")),
            (b"GET ", Verdict("http1", reason="eof")),
            (b"GET /index.html HTT", Verdict("http1", reason="eof")),
            (b"GET / HTTP/1.1\r", Verdict("http1", reason="eof")),
            (b"PRI * HTTP/2.0\r\n", Verdict("http1", reason="eof")),
            (b"\x16", Verdict("raw", reason="eof")),
            (b"\x16\x03\x01\x02", Verdict("raw", reason="eof")),
            (b"\x16\x03\x01\x02\x00", Verdict("tls", reason="eof")),
            (partialHello, Verdict("tls", reason="eof")),
            (b"\x80\x2e\x01", Verdict("raw", reason="eof")),
        ]:
            self.assertIs(classify(data), NEED_MORE, data)
            self.assertEqual(classify(data, eof=True), expected, data)

    def test_decided(self) -> None:
        """
        End of input does not change a verdict the bytes already gave.
        """
        for data in [b"GET / HTTP/1.1\r\n", b"GET  /", sslHello("x.example"), sslv2Hello(), b"\x16\x05"]:
            verdict = classify(data)
            self.assertIsInstance(verdict, Verdict)
            self.assertEqual(classify(data, eof=True), verdict)


class VerdictTests(SynchronousTestCase):
    """
    The L{Verdict} value object.
    """

    def test_protocols(self) -> None:
        """
        Only the four known protocols are accepted.
        """
        for protocol in PROTOCOLS:
            self.assertEqual(Verdict(protocol).protocol, protocol)
        self.assertRaises(ValueError, Verdict, "ftp")

    def test_byteArray(self) -> None:
        """
        A C{bytearray} buffer is classified like C{bytes}, also when it is longer than C{maxBytes}.
        """
        for data in [b"GET / HTTP/1.1\r\n", b"GET /" + b"a" * 100, sslHello("x.example"), b"\x00"]:
            self.assertEqual(classify(bytearray(data)), classify(data))
            self.assertEqual(classify(bytearray(data), maxBytes=20), classify(data, maxBytes=20))

    def test_needMore(self) -> None:
        """
        The sentinel shows its name.
        """
        self.assertEqual(repr(NEED_MORE), "NEED_MORE")
        self.assertEqual(str(NEED_MORE), "NEED_MORE")


HTTP_PIECES = [
    b"GET",
    b"get",
    b"PRI",
    b"OPTIONS",
    b" ",
    b"  ",
    b"/",
    b"*",
    b"/index.html",
    b"http://a/",
    b"[::1]:80",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"HTTP/1.",
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\r\n\r\nSM",
    b"\x16\x03\x01",
    b"\x80\x2e\x01\x03\x01",
]


def httpish() -> st.SearchStrategy[bytes]:
    """
    Bytes built from pieces of request lines, the HTTP/2 preface and TLS records, with random bytes mixed in.
    """
    return st.lists(st.one_of(st.sampled_from(HTTP_PIECES), st.binary(max_size=4)), max_size=10).map(b"".join)


class PropertyTests(SynchronousTestCase):
    """
    Properties over arbitrary input.
    """

    def checkConsistent(self, classifier: Callable[[bytes], object], data: bytes) -> None:
        """
        Assert that once a prefix of C{data} gets a verdict, every longer prefix gets a verdict for the same
        protocol.
        """
        decided = firstDecided(classifier, data)
        if decided is None:
            return
        length, first = decided
        assert isinstance(first, Verdict), first
        for end in range(length, len(data) + 1):
            result = classifier(data[:end])
            assert isinstance(result, Verdict), (data[:end], result)
            self.assertEqual(result.protocol, first.protocol, data[:end])

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=200), st.booleans(), st.integers(0, 300))
    def test_randomBytes(self, data: bytes, eof: bool, maxBytes: int) -> None:
        """
        Random bytes never raise; with end of input or a full buffer they always get a verdict.
        """
        result = classify(data, eof=eof, maxBytes=maxBytes)
        if eof or len(data) >= maxBytes:
            assert isinstance(result, Verdict), result
        else:
            self.assertIsInstance(result, (NeedMore, Verdict))
        if isinstance(result, Verdict):
            self.assertIn(result.protocol, PROTOCOLS)

    @settings(max_examples=500, deadline=None)
    @given(httpish())
    def test_httpishConsistent(self, data: bytes) -> None:
        """
        Once bytes built from protocol pieces get a verdict, more bytes do not change its protocol.
        """
        self.checkConsistent(classify, data)

    @settings(max_examples=200, deadline=None)
    @given(httpish(), st.integers(1, 40))
    def test_smallBufferConsistent(self, data: bytes, maxBytes: int) -> None:
        """
        The same holds with a small buffer that fills up.
        """
        self.checkConsistent(lambda d: classify(d, maxBytes=maxBytes), data)

    @settings(max_examples=150, deadline=None)
    @given(mutatedHello())
    def test_mutatedHelloConsistent(self, data: bytes) -> None:
        """
        Damaged ClientHellos: never raise, and a verdict does not change as more bytes arrive.
        """
        self.checkConsistent(classify, data)

    @settings(max_examples=300, deadline=None)
    @given(httpish())
    def test_eofKeepsVerdicts(self, data: bytes) -> None:
        """
        End of input decides only undecided buffers.
        """
        verdict = classify(data)
        atEOF = classify(data, eof=True)
        assert isinstance(atEOF, Verdict), atEOF
        if isinstance(verdict, Verdict):
            self.assertEqual(atEOF, verdict)
        else:
            self.assertEqual(atEOF.reason, "eof")

    def test_consistencyCheckCanFail(self) -> None:
        """
        The consistency check catches a classifier that changes its verdict's protocol.
        """

        def fickle(data: bytes) -> object:
            if len(data) < 3:
                return NEED_MORE
            return Verdict("raw" if len(data) == 3 else "http1")

        self.assertRaises(self.failureException, self.checkConsistent, fickle, b"abcdef")
