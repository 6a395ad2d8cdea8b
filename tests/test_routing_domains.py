"""
Tests for L{meshproxy.routing.domains}: Host parsing, Envoy's domain precedence and the bounded cache.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.routing import domains
from meshproxy.routing.domains import (
    CATCH_ALL,
    EXACT,
    PREFIX,
    SUFFIX,
    DomainMatch,
    DomainTable,
    classifyDomain,
    splitHost,
)

#: Every precedence class, with and without ports, mapped to itself so a lookup says which one won.
DOMAINS = [
    "example.com",
    "example.com:8080",
    "*.example.com",
    "*.b.example.com",
    "*-bar.example.com",
    "*.example.com:9090",
    "foo*",
    "foo-bar*",
    "foo*:7070",
    "*",
    "*:8443",
    "[::1]",
    "[::1]:8080",
    "127.0.0.1:80",
]


def table(domainList: list[str] = DOMAINS, maxCacheSize: int = 4096) -> DomainTable[str]:
    """
    A table whose value for each domain is the domain itself.
    """
    return DomainTable([(domain, domain) for domain in domainList], maxCacheSize)


class SplitHostTests(SynchronousTestCase):
    """
    L{splitHost} separates name and port without breaking IPv6 literals.
    """

    def test_names(self) -> None:
        """
        Names are lower-cased, ports parsed, one trailing dot dropped, IPv6 literals compressed.
        """
        cases = [
            (b"Example.COM", (b"example.com", None)),
            (b"example.com:8080", (b"example.com", 8080)),
            (b"example.com.", (b"example.com", None)),
            (b"example.com.:80", (b"example.com", 80)),
            (b"example.com:", (b"example.com", None)),
            (b"[::1]", (b"[::1]", None)),
            (b"[::1]:8080", (b"[::1]", 8080)),
            (b"[0:0:0:0:0:0:0:1]:80", (b"[::1]", 80)),
            (b"[FE80::1]", (b"[fe80::1]", None)),
            (b"::1", (b"[::1]", None)),
            (b"127.0.0.1:443", (b"127.0.0.1", 443)),
            (None, (b"", None)),
            (b"", (b"", None)),
        ]
        for host, expected in cases:
            self.assertEqual((host, splitHost(host)), (host, expected))

    def test_malformed(self) -> None:
        """
        A value that is not C{host[:port]} is kept whole (lower-cased) rather than guessed at.
        """
        for host in (b"example.com:http", b"[::1", b"[::1]x", b"[::1]:80:80", b"example.com:123456"):
            self.assertEqual(splitHost(host), (host.lower(), None))
        self.assertEqual(splitHost(b"[not-ipv6]:80"), (b"[not-ipv6]", 80))


class ClassifyDomainTests(SynchronousTestCase):
    """
    L{classifyDomain} sorts configured domains into the four precedence classes.
    """

    def test_classes(self) -> None:
        """
        Exact, suffix, prefix and catch-all, each with or without a port.
        """
        cases = [
            ("Example.com", (EXACT, b"example.com", None)),
            ("example.com.:8080", (EXACT, b"example.com", 8080)),
            ("*.example.com", (SUFFIX, b".example.com", None)),
            ("*-bar.example.com:9", (SUFFIX, b"-bar.example.com", 9)),
            ("foo*", (PREFIX, b"foo", None)),
            ("foo*:7070", (PREFIX, b"foo", 7070)),
            ("*", (CATCH_ALL, b"", None)),
            ("*:8443", (CATCH_ALL, b"", 8443)),
            ("[::1]:80", (EXACT, b"[::1]", 80)),
        ]
        for domain, expected in cases:
            self.assertEqual((domain, classifyDomain(domain)), (domain, expected))


class DomainPrecedenceTests(SynchronousTestCase):
    """
    Exact names, then suffix wildcards (longest first), then prefix wildcards (longest first), then C{*};
    a port in a domain must be the Host's port, a domain without one takes any port.
    """

    def test_precedenceTable(self) -> None:
        """
        Each Host selects the domain Envoy's precedence gives it.
        """
        lookup = table()
        cases = [
            # exact beats every wildcard, with the port ignored unless the domain has one
            (b"example.com", "example.com"),
            (b"example.com:80", "example.com"),
            (b"example.com:8080", "example.com:8080"),
            (b"EXAMPLE.Com:8080", "example.com:8080"),
            (b"example.com.", "example.com"),
            # suffix: longest first; the * needs at least one character
            (b"a.example.com", "*.example.com"),
            (b"a.b.example.com", "*.b.example.com"),
            (b"a.b.example.com:9090", "*.b.example.com"),
            (b"x.example.com:9090", "*.example.com:9090"),
            (b"foo-bar.example.com", "*-bar.example.com"),
            (b"b.example.com", "*.example.com"),
            (b".example.com", "*"),
            # suffix beats prefix
            (b"foo.example.com", "*.example.com"),
            # prefix: longest first, ports as above
            (b"foo-bar-baz", "foo-bar*"),
            (b"foo-baz", "foo*"),
            (b"foo-baz:7070", "foo*:7070"),
            (b"foo-bar-baz:7070", "foo-bar*"),
            (b"foo", "*"),
            # catch-all, a port-specific one first
            (b"other.test", "*"),
            (b"other.test:8443", "*:8443"),
            (b"example.org:8443", "*:8443"),
            (None, "*"),
            (b"", "*"),
            # IPv6 and IPv4 literals
            (b"[::1]", "[::1]"),
            (b"[::1]:9999", "[::1]"),
            (b"[::1]:8080", "[::1]:8080"),
            (b"[0::1]:8080", "[::1]:8080"),
            (b"127.0.0.1:80", "127.0.0.1:80"),
            (b"127.0.0.1", "*"),
            (b"127.0.0.1:8080", "*"),
        ]
        for host, expected in cases:
            self.assertEqual((host, lookup.select(host)), (host, expected))
            match = lookup.lookup(host)
            assert match is not None
            self.assertEqual((host, match.domain), (host, expected))

    def test_precedenceClass(self) -> None:
        """
        L{DomainTable.lookup} names the class that decided and the normalised host and port.
        """
        lookup = table()
        self.assertEqual(
            lookup.lookup(b"A.Example.com:9090"),
            DomainMatch("*.example.com:9090", "*.example.com:9090", SUFFIX, "a.example.com", 9090),
        )
        classes = [lookup.lookup(host) for host in (b"example.com", b"foo-x", b"zzz")]
        self.assertEqual([match and match.precedence for match in classes], [EXACT, PREFIX, CATCH_ALL])

    def test_portedDomainOnly(self) -> None:
        """
        Without a portless domain, a Host without a port or with another port matches nothing.
        """
        lookup = table(["example.com:8080", "*.example.com:8080"])
        self.assertEqual(lookup.select(b"example.com:8080"), "example.com:8080")
        self.assertIsNone(lookup.select(b"example.com"))
        self.assertIsNone(lookup.select(b"example.com:80"))
        self.assertIsNone(lookup.select(b"a.example.com"))
        self.assertEqual(lookup.select(b"a.example.com:8080"), "*.example.com:8080")

    def test_noMatch(self) -> None:
        """
        Without C{*}, an unknown, empty or missing Host selects nothing.
        """
        lookup = table(["example.com", "*.example.com", "foo*"])
        for host in (b"other.test", b"example.org", b"", None, b"example.com:http"):
            self.assertIsNone(lookup.select(host))
            self.assertIsNone(lookup.lookup(host))

    def test_firstDuplicateWins(self) -> None:
        """
        A domain listed twice (after normalisation) keeps the value it was first listed with.
        """
        lookup = DomainTable([("Example.com", "first"), ("example.com.", "second"), ("*", "any")])
        self.assertEqual(lookup.select(b"example.com"), "first")

    def test_equalLengthPortFirst(self) -> None:
        """
        Among wildcards of equal length, the one naming the Host's port wins whatever the order.
        """
        lookup = table(["*.example.com", "*.example.com:8080", "foo*", "foo*:8080"])
        self.assertEqual(lookup.select(b"a.example.com:8080"), "*.example.com:8080")
        self.assertEqual(lookup.select(b"a.example.com:80"), "*.example.com")
        self.assertEqual(lookup.select(b"foox:8080"), "foo*:8080")


class DomainCacheTests(SynchronousTestCase):
    """
    Answers are remembered per raw Host, up to a bound.
    """

    def test_cached(self) -> None:
        """
        A Host seen once is answered again without matching (hits and misses alike).
        """
        lookup = table(["example.com", "*.example.com"])
        self.assertEqual(lookup.select(b"a.example.com"), "*.example.com")
        self.assertIsNone(lookup.select(b"other.test"))
        self.assertEqual(lookup.cacheSize, 2)

        def fail(host: bytes | None) -> None:
            raise AssertionError(f"matched {host!r} again")

        self.patch(lookup, "lookup", fail)
        self.assertEqual(lookup.select(b"a.example.com"), "*.example.com")
        self.assertIsNone(lookup.select(b"other.test"))
        self.assertRaises(AssertionError, lookup.select, b"b.example.com")

    def test_bounded(self) -> None:
        """
        The cache never holds more than its bound: when full it is emptied and starts over, and answers
        stay right across the clearing.
        """
        lookup = table(["*.example.com", "*"], maxCacheSize=3)
        sizes = []
        for index in range(8):
            self.assertEqual(lookup.select(b"h%d.example.com" % (index,)), "*.example.com")
            sizes.append(lookup.cacheSize)
        self.assertEqual(sizes, [1, 2, 3, 1, 2, 3, 1, 2])
        self.assertEqual(lookup.select(b"h7.example.com"), "*.example.com")
        self.assertEqual(lookup.cacheSize, 2)
        self.assertEqual(lookup.select(b"zzz"), "*")

    def test_defaultBound(self) -> None:
        """
        The default bound is L{domains.DEFAULT_CACHE_SIZE}, 4096 Hosts.
        """
        lookup = table(["*"])
        self.assertEqual((lookup.maxCacheSize, domains.DEFAULT_CACHE_SIZE), (4096, 4096))
        for index in range(4097):
            lookup.select(b"h%d" % (index,))
        self.assertEqual(lookup.cacheSize, 1)
