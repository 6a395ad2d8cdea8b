"""
Tests for the value types of L{meshproxy.http.events}: equality by value
(which every transcript test relies on), defaults and errors.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http import (
    BodyData,
    ConnectionClosed,
    EndOfMessage,
    HTTPLimits,
    HTTPParseError,
    RequestHead,
    ResponseHead,
)

REQUEST_FIELDS: dict[str, object] = dict(
    method=b"GET",
    target=b"/",
    version=b"1.1",
    headers=[(b"Host", b"a")],
    contentLength=None,
    chunked=False,
    keepAlive=True,
    connectionTokens=frozenset(),
    host=b"a",
    upgrade=None,
    expectContinue=False,
)
REQUEST_CHANGES: dict[str, object] = dict(
    method=b"PUT",
    target=b"/x",
    version=b"1.0",
    headers=[(b"Host", b"b")],
    contentLength=0,
    chunked=True,
    keepAlive=False,
    connectionTokens=frozenset([b"close"]),
    host=b"b",
    upgrade=b"websocket",
    expectContinue=True,
)
RESPONSE_FIELDS: dict[str, object] = dict(
    status=200,
    reason=b"OK",
    version=b"1.1",
    headers=[],
    contentLength=None,
    chunked=False,
    keepAlive=True,
    connectionTokens=frozenset(),
)
RESPONSE_CHANGES: dict[str, object] = dict(
    status=201,
    reason=b"Created",
    version=b"1.0",
    headers=[(b"A", b"b")],
    contentLength=1,
    chunked=True,
    keepAlive=False,
    connectionTokens=frozenset([b"close"]),
)


class HeadEqualityTests(SynchronousTestCase):
    """
    Heads are equal exactly when every field is.
    """

    def test_requestHead(self) -> None:
        """
        Equal fields make equal request heads; any one field differing makes
        them unequal.
        """
        head = RequestHead(**REQUEST_FIELDS)  # type: ignore[arg-type]
        self.assertEqual(head, RequestHead(**REQUEST_FIELDS))  # type: ignore[arg-type]
        self.assertEqual(sorted(REQUEST_CHANGES), sorted(RequestHead.__slots__))
        for name, value in REQUEST_CHANGES.items():
            other = RequestHead(**{**REQUEST_FIELDS, name: value})  # type: ignore[arg-type]
            self.assertNotEqual(head, other, name)
            self.assertIn(f"{name}={value!r}", repr(other))

    def test_responseHead(self) -> None:
        """
        Equal fields make equal response heads; any one field differing makes
        them unequal.
        """
        head = ResponseHead(**RESPONSE_FIELDS)  # type: ignore[arg-type]
        self.assertEqual(head, ResponseHead(**RESPONSE_FIELDS))  # type: ignore[arg-type]
        self.assertEqual(sorted(RESPONSE_CHANGES), sorted(ResponseHead.__slots__))
        for name, value in RESPONSE_CHANGES.items():
            other = ResponseHead(**{**RESPONSE_FIELDS, name: value})  # type: ignore[arg-type]
            self.assertNotEqual(head, other, name)
            self.assertIn(f"{name}={value!r}", repr(other))

    def test_differentTypes(self) -> None:
        """
        Events of different types are never equal.
        """
        request = RequestHead(**REQUEST_FIELDS)  # type: ignore[arg-type]
        response = ResponseHead(**RESPONSE_FIELDS)  # type: ignore[arg-type]
        events = [request, response, BodyData(b""), EndOfMessage(), ConnectionClosed()]
        for i, a in enumerate(events):
            for j, b in enumerate(events):
                self.assertEqual(a == b, i == j, (a, b))


class SmallEventTests(SynchronousTestCase):
    """
    BodyData, EndOfMessage and ConnectionClosed.
    """

    def test_bodyData(self) -> None:
        """
        Body data compares by its bytes.
        """
        self.assertEqual(BodyData(b"a"), BodyData(b"a"))
        self.assertNotEqual(BodyData(b"a"), BodyData(b"b"))
        self.assertEqual(repr(BodyData(b"a")), "BodyData(b'a')")

    def test_endOfMessage(self) -> None:
        """
        Ends of messages compare by their trailers; no trailers is empty.
        """
        self.assertEqual(EndOfMessage(), EndOfMessage([]))
        self.assertEqual(EndOfMessage().trailers, [])
        self.assertNotEqual(EndOfMessage(), EndOfMessage([(b"A", b"b")]))
        self.assertEqual(EndOfMessage([(b"A", b"b")]), EndOfMessage([(b"A", b"b")]))

    def test_connectionClosed(self) -> None:
        """
        All closes are alike.
        """
        self.assertEqual(ConnectionClosed(), ConnectionClosed())
        self.assertEqual(repr(ConnectionClosed()), "ConnectionClosed()")


class LimitsAndErrorTests(SynchronousTestCase):
    """
    HTTPLimits defaults and HTTPParseError.
    """

    def test_defaults(self) -> None:
        """
        The defaults are those of reference/defaults.md.
        """
        self.assertEqual(
            HTTPLimits(),
            HTTPLimits(maxHeaderBytes=64 * 1024, maxHeaders=100, maxURIBytes=8 * 1024, maxChunkLineBytes=4096),
        )

    def test_error(self) -> None:
        """
        A parse error carries its status and reason, and shows both.
        """
        error = HTTPParseError(431, "too-many-headers")
        self.assertEqual((error.status, error.reason, str(error)), (431, "too-many-headers", "431 too-many-headers"))


class PurityTests(SynchronousTestCase):
    """
    The codec is sans-io.
    """

    def test_noTwisted(self) -> None:
        """
        Importing the whole codec imports nothing from Twisted.
        """
        import os
        import subprocess
        import sys

        import meshproxy

        root = os.path.dirname(os.path.dirname(os.path.abspath(meshproxy.__file__)))
        code = (
            "import sys, meshproxy.http, meshproxy.http.serialize, meshproxy.http.parser; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONPATH": root},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.assertEqual(out.strip(), "[]")
