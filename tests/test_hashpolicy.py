"""
Tests for L{meshproxy.routing.hashpolicy}.
"""

from __future__ import annotations

import random
import re
from typing import Iterator

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config.routemodel import HashPolicyConfig
from meshproxy.routing.hashpolicy import (
    NO_KEY,
    HashResult,
    combine,
    cookieValue,
    generatedCookieValue,
    hash64,
    hashKey,
    setCookieValue,
)

HEADER = HashPolicyConfig(kind="header", name="x-user")
COOKIE = HashPolicyConfig(kind="cookie", name="sid")
STICKY = HashPolicyConfig(kind="cookie", name="sid", ttl=3600.0)
SOURCE = HashPolicyConfig(kind="source_ip")


class NoHeaders:
    """
    Headers that fail the test if anything looks at them.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.case = case

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        self.case.fail("the headers were read")


class HashTests(SynchronousTestCase):
    """
    The hash and how keys combine.
    """

    def test_stable(self) -> None:
        """
        The hash is BLAKE2b's first 64 bits: fixed across processes and Python versions.
        """
        self.assertEqual(hash64(b"abc"), 0xD8BB14D833D59559)
        self.assertEqual(hash64(b""), 0xE4A6A0577479B2B4)

    def test_combine(self) -> None:
        """
        The running key is rotated left one bit, then xored with the new value; the first value is
        the key itself.
        """
        self.assertEqual(combine(None, 5), 5)
        self.assertEqual(combine(0x8000000000000001, 0), 0x3)
        self.assertEqual(combine(0x10, 0x1), 0x21)
        value = hash64(b"v")
        self.assertNotEqual(combine(value, value), 0)


class HeaderPolicyTests(SynchronousTestCase):
    """
    Hashing a header's values.
    """

    def test_value(self) -> None:
        """
        The key is the hash of the header's value; another value gives another key.
        """
        result = hashKey((HEADER,), [(b"Host", b"a"), (b"X-User", b"alice")], "1.2.3.4")
        self.assertEqual(result, HashResult(hash64(b"alice"), None))
        self.assertNotEqual(hashKey((HEADER,), [(b"x-user", b"bob")], None).key, result.key)

    def test_caseInsensitiveName(self) -> None:
        """
        Header names match whatever their case, in the request and in the policy.
        """
        expected = hash64(b"alice")
        for name in (b"x-user", b"X-USER", b"x-UsEr"):
            self.assertEqual(hashKey((HEADER,), [(name, b"alice")], None).key, expected)
        policy = HashPolicyConfig(kind="header", name="X-User")
        self.assertEqual(hashKey((policy,), [(b"x-user", b"alice")], None).key, expected)

    def test_absent(self) -> None:
        """
        Without the header there is no key (nor with no headers at all).
        """
        self.assertIs(hashKey((HEADER,), [(b"x-users", b"alice"), (b"x-use", b"b")], "1.2.3.4"), NO_KEY)
        self.assertEqual(hashKey((HEADER,), [], None), HashResult(None, None))

    def test_severalValuesInAnyOrder(self) -> None:
        """
        Several fields of the header hash together, in any order, and differently from one value.
        """
        one = hashKey((HEADER,), [(b"x-user", b"a"), (b"x-user", b"b")], None).key
        two = hashKey((HEADER,), [(b"X-User", b"b"), (b"x-user", b"a")], None).key
        self.assertEqual(one, two)
        self.assertNotIn(one, (None, hash64(b"a"), hash64(b"b")))
        self.assertNotEqual(hashKey((HEADER,), [(b"x-user", b"ab"), (b"x-user", b"c")], None).key,
                            hashKey((HEADER,), [(b"x-user", b"a"), (b"x-user", b"bc")], None).key)


class CookiePolicyTests(SynchronousTestCase):
    """
    Hashing a cookie, and generating one for sticky sessions.
    """

    def test_present(self) -> None:
        """
        The key is the hash of the cookie's value, found among others and in any Cookie header.
        """
        expected = HashResult(hash64(b"abc"), None)
        self.assertEqual(hashKey((COOKIE,), [(b"Cookie", b"a=1; sid=abc; b=2")], "1.2.3.4"), expected)
        headers = [(b"cookie", b"a=1"), (b"Accept", b"*/*"), (b"COOKIE", b"b=2;sid=abc")]
        self.assertEqual(hashKey((COOKIE,), headers, None), expected)
        self.assertEqual(hashKey((STICKY,), headers, None), expected)

    def test_absentWithoutTTL(self) -> None:
        """
        Without the cookie and without a ttl there is no key and no cookie is set.
        """
        self.assertIs(hashKey((COOKIE,), [(b"cookie", b"other=1; xsid=2")], "1.2.3.4"), NO_KEY)
        self.assertIs(hashKey((COOKIE,), [], "1.2.3.4"), NO_KEY)

    def test_generatedWithTTL(self) -> None:
        """
        Without the cookie and with a ttl, one is generated: the response sets it, and the key is
        the one the client will get when it sends the cookie back.
        """
        result = hashKey((STICKY,), [(b"cookie", b"other=1")], "10.0.0.7")
        self.assertIsNotNone(result.setCookie)
        assert result.setCookie is not None
        match = re.fullmatch(rb"sid=([0-9a-f]{16}); Max-Age=3600; Path=/; HttpOnly", result.setCookie)
        assert match is not None, result.setCookie
        value = match.group(1)
        self.assertEqual(result.key, hash64(value))
        back = hashKey((STICKY,), [(b"Cookie", b"sid=" + value)], "10.9.9.9")
        self.assertEqual(back, HashResult(result.key, None))

    def test_generatedFromClientIP(self) -> None:
        """
        The generated value depends on the client IP address (so one client's parallel first
        requests agree) and the cookie name, not on anything else.
        """
        one = hashKey((STICKY,), [], "10.0.0.7")
        self.assertEqual(hashKey((STICKY,), [(b"x", b"y")], b"10.0.0.7"), one)
        self.assertEqual(hashKey((STICKY,), [], "::ffff:10.0.0.7"), one)
        self.assertNotEqual(hashKey((STICKY,), [], "10.0.0.8").key, one.key)
        other = HashPolicyConfig(kind="cookie", name="route", ttl=60.0)
        self.assertNotEqual(hashKey((other,), [], "10.0.0.7").key, one.key)

    def test_generatedWithoutIP(self) -> None:
        """
        A client without an IP address gets a random value, from the injected random source.
        """
        first = hashKey((STICKY,), [], None, random.Random(5))
        self.assertEqual(hashKey((STICKY,), [], None, random.Random(5)), first)
        self.assertNotEqual(hashKey((STICKY,), [], None, random.Random(6)).key, first.key)
        self.assertNotEqual(hashKey((STICKY,), [], None).setCookie, hashKey((STICKY,), [], None).setCookie)
        self.assertEqual(generatedCookieValue(b"sid", None, random.Random(5)), b"%016x" % random.Random(5).getrandbits(64))

    def test_setCookieShape(self) -> None:
        """
        Max-Age is the ttl's whole seconds, Path the policy's or /, always HttpOnly; less than a
        second of ttl makes a session cookie; a path cannot break out of its attribute.
        """
        self.assertEqual(setCookieValue(b"s", b"v", 90.7, "/app"), b"s=v; Max-Age=90; Path=/app; HttpOnly")
        self.assertEqual(setCookieValue(b"s", b"v", 10.0), b"s=v; Max-Age=10; Path=/; HttpOnly")
        self.assertEqual(setCookieValue(b"s", b"v", 0.5), b"s=v; Path=/; HttpOnly")
        self.assertEqual(setCookieValue(b"s", b"v", None), b"s=v; Path=/; HttpOnly")
        self.assertEqual(
            setCookieValue(b"s", b"v", 5.0, "/a;b c\r\n\u00e9"),
            b"s=v; Max-Age=5; Path=/a%3Bb%20c%0D%0A%C3%A9; HttpOnly",
        )
        policy = HashPolicyConfig(kind="cookie", name="sid", path="/shop", ttl=120.0)
        setCookie = hashKey((policy,), [], "10.0.0.1").setCookie
        assert setCookie is not None
        self.assertTrue(setCookie.endswith(b"; Max-Age=120; Path=/shop; HttpOnly"), setCookie)

    def test_malformedIgnored(self) -> None:
        """
        Pieces without '=', with an empty name or an empty value, and other names that merely
        contain the cookie's name are skipped; a later good value is found.
        """
        header = b"junk; =x; sid; ;; xsid=no; sid2=no; sid=; SID=no; sid = good ; sid=late"
        self.assertEqual(cookieValue([header], b"sid"), b"good")
        self.assertIsNone(cookieValue([b"junk; =x; sid; xsid=1; SID=2; sid="], b"sid"))
        self.assertIsNone(cookieValue([b"=x"], b""))
        self.assertEqual(hashKey((COOKIE,), [(b"cookie", header)], None).key, hash64(b"good"))

    def test_quotedAndFirstWins(self) -> None:
        """
        Surrounding double quotes are removed; the first occurrence across the headers wins.
        """
        self.assertEqual(cookieValue([b'sid="abc"'], b"sid"), b"abc")
        self.assertEqual(cookieValue([b"a=1", b"sid=one; sid=two", b"sid=three"], b"sid"), b"one")
        self.assertEqual(cookieValue([b'sid="'], b"sid"), b'"')

    def test_oneGeneratedCookie(self) -> None:
        """
        When two sticky policies both lack their cookie, only the first generates one; the second
        adds nothing.
        """
        second = HashPolicyConfig(kind="cookie", name="other", ttl=60.0)
        both = hashKey((STICKY, second), [], "10.0.0.1")
        alone = hashKey((STICKY,), [], "10.0.0.1")
        self.assertEqual(both, alone)


class SourceIPPolicyTests(SynchronousTestCase):
    """
    Hashing the client's address.
    """

    def test_address(self) -> None:
        """
        The key is the hash of the IP address, given as text or bytes; an IPv4-mapped IPv6 address
        counts as its IPv4 address.
        """
        expected = HashResult(hash64(b"192.0.2.1"), None)
        self.assertEqual(hashKey((SOURCE,), [], "192.0.2.1"), expected)
        self.assertEqual(hashKey((SOURCE,), [], b"192.0.2.1"), expected)
        self.assertEqual(hashKey((SOURCE,), [], "::ffff:192.0.2.1"), expected)
        self.assertEqual(hashKey((SOURCE,), [], "2001:db8::1").key, hash64(b"2001:db8::1"))

    def test_noAddress(self) -> None:
        """
        A client without an IP address gives no key.
        """
        self.assertIs(hashKey((SOURCE,), [], None), NO_KEY)

    def test_headersNotRead(self) -> None:
        """
        A source_ip policy alone does not look at the headers at all.
        """
        self.assertEqual(hashKey((SOURCE,), NoHeaders(self), "192.0.2.1").key, hash64(b"192.0.2.1"))  # type: ignore[arg-type]


class CombinationTests(SynchronousTestCase):
    """
    Several policies.
    """

    def test_inOrder(self) -> None:
        """
        Each policy that yields a value folds it into the key, in order; order matters.
        """
        headers = [(b"x-user", b"alice"), (b"cookie", b"sid=s1")]
        user, sid, ip = hash64(b"alice"), hash64(b"s1"), hash64(b"192.0.2.1")
        self.assertEqual(
            hashKey((HEADER, COOKIE, SOURCE), headers, "192.0.2.1").key,
            combine(combine(user, sid), ip),
        )
        self.assertNotEqual(
            hashKey((SOURCE, HEADER), headers, "192.0.2.1").key, hashKey((HEADER, SOURCE), headers, "192.0.2.1").key
        )

    def test_missingOnesSkipped(self) -> None:
        """
        A policy that yields nothing leaves the key as the others make it.
        """
        self.assertEqual(hashKey((HEADER, SOURCE), [(b"cookie", b"sid=1")], "192.0.2.1").key, hash64(b"192.0.2.1"))
        self.assertEqual(hashKey((HEADER, COOKIE), [(b"X-User", b"bob")], None).key, hash64(b"bob"))

    def test_generatedCookieWithOthers(self) -> None:
        """
        A generated cookie contributes its value's hash like any other policy, and is returned.
        """
        result = hashKey((HEADER, STICKY), [(b"x-user", b"alice")], "10.0.0.7")
        value = generatedCookieValue(b"sid", "10.0.0.7")
        self.assertEqual(result.key, combine(hash64(b"alice"), hash64(value)))
        self.assertEqual(result.setCookie, setCookieValue(b"sid", value, 3600.0))

    def test_duplicatesDoNotCancel(self) -> None:
        """
        The same policy twice gives a key, not zero.
        """
        key = hashKey((HEADER, HEADER), [(b"x-user", b"alice")], None).key
        self.assertEqual(key, combine(hash64(b"alice"), hash64(b"alice")))
        self.assertNotIn(key, (0, None))

    def test_unpacks(self) -> None:
        """
        The result unpacks as (key, setCookie).
        """
        key, setCookie = hashKey((HEADER,), [(b"x-user", b"a")], None)
        self.assertEqual((key, setCookie), (hash64(b"a"), None))
