"""
Tests for L{meshproxy.routing.edits}: header edits merged across levels, and C{%variable%} expansion.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import HeaderEdits, HeaderValueConfig
from meshproxy.routing.edits import HeaderAdd, mergeHeaderEdits

VARIABLES = {
    "downstream_remote_address": b"10.0.0.1:5555",
    "downstream_local_address": b"10.0.0.2:80",
    "downstream_protocol": b"Http1",
    "request_id": b"abc-123",
}


class HeaderAddTests(SynchronousTestCase):
    """
    A header value template is compiled once and expanded per request.
    """

    def test_constant(self) -> None:
        """
        A value without references is encoded once and returned as the same object every time.
        """
        add = HeaderAdd(HeaderValueConfig("X-Team", "platform", append=True))
        self.assertEqual(
            (add.name, add.lowerName, add.append, add.variables), (b"X-Team", b"x-team", True, ())
        )
        first = add.value(VARIABLES)
        self.assertEqual(first, b"platform")
        self.assertIs(add.value({}), first)

    def test_expansion(self) -> None:
        """
        References anywhere in the value are replaced; names are case-insensitive; C{%%} is a literal
        percent sign, and a C{%} that starts no reference stays as it is.
        """
        cases = [
            ("%downstream_remote_address%", b"10.0.0.1:5555", ("downstream_remote_address",)),
            (
                "for=%DOWNSTREAM_REMOTE_ADDRESS%;by=%downstream_local_address%",
                b"for=10.0.0.1:5555;by=10.0.0.2:80",
                ("downstream_remote_address", "downstream_local_address"),
            ),
            ("%request_id%%downstream_protocol%", b"abc-123Http1", ("request_id", "downstream_protocol")),
            ("100%% sure", b"100% sure", ()),
            ("50% off", b"50% off", ()),
            ("%%request_id%%", b"%request_id%", ()),
            ("caf\u00e9 %request_id%", "caf\u00e9 abc-123".encode(), ("request_id",)),
            ("", b"", ()),
        ]
        for template, expected, variables in cases:
            add = HeaderAdd(HeaderValueConfig("X", template))
            self.assertEqual((template, add.value(VARIABLES), add.variables), (template, expected, variables))

    def test_missingVariable(self) -> None:
        """
        A variable the caller does not supply expands to nothing.
        """
        add = HeaderAdd(HeaderValueConfig("X", "<%request_id%>"))
        self.assertEqual(add.value({}), b"<>")

    def test_equality(self) -> None:
        """
        Additions compare by name, append flag and template.
        """
        add = HeaderAdd(HeaderValueConfig("X", "a"))
        self.assertEqual(add, HeaderAdd(HeaderValueConfig("X", "a")))
        self.assertEqual(len({add, HeaderAdd(HeaderValueConfig("X", "a"))}), 1)
        self.assertNotEqual(add, HeaderAdd(HeaderValueConfig("X", "a", append=True)))
        self.assertNotEqual(add, HeaderAdd(HeaderValueConfig("Y", "a")))
        self.assertIn("append=False", repr(add))


def edits(
    add: tuple[HeaderValueConfig, ...] = (),
    remove: tuple[str, ...] = (),
    responseAdd: tuple[HeaderValueConfig, ...] = (),
) -> HeaderEdits:
    """
    One level's edits.
    """
    return HeaderEdits(
        requestHeadersToAdd=add,
        requestHeadersToRemove=remove,
        responseHeadersToAdd=responseAdd,
        responseHeadersToRemove=tuple(name + "-r" for name in remove),
    )


class MergeHeaderEditsTests(SynchronousTestCase):
    """
    Levels are folded least specific first; for one header without append, the most specific level wins.
    """

    def test_mostSpecificWins(self) -> None:
        """
        A replacing addition drops what less specific levels (or earlier entries) add to the same header,
        whatever their append flag; appends accumulate in router, virtual host, route order.
        """
        router = edits(
            add=(
                HeaderValueConfig("X-Level", "router"),
                HeaderValueConfig("X-Tag", "router", append=True),
                HeaderValueConfig("X-Router-Only", "r"),
            )
        )
        vhost = edits(
            add=(
                HeaderValueConfig("x-level", "vhost", append=True),
                HeaderValueConfig("X-Tag", "vhost", True),
            )
        )
        route = edits(add=(HeaderValueConfig("X-LEVEL", "route"),))
        merged = mergeHeaderEdits([router, vhost, route])
        self.assertEqual(
            [(add.name, add.template, add.append) for add in merged.requestHeadersToAdd],
            [
                (b"X-Tag", "router", True),
                (b"X-Router-Only", "r", False),
                (b"X-Tag", "vhost", True),
                (b"X-LEVEL", "route", False),
            ],
        )

    def test_appendAfterReplace(self) -> None:
        """
        An append at a more specific level adds to a less specific level's replacing value.
        """
        merged = mergeHeaderEdits(
            [
                edits(add=(HeaderValueConfig("X", "a"),)),
                edits(),
                edits(add=(HeaderValueConfig("X", "b", True),)),
            ]
        )
        self.assertEqual([add.template for add in merged.requestHeadersToAdd], ["a", "b"])

    def test_removals(self) -> None:
        """
        Removals of every level form one set of lower-cased names, for requests and responses apart.
        """
        merged = mergeHeaderEdits([edits(remove=("X-Debug",)), edits(remove=("Server", "x-debug")), edits()])
        self.assertEqual(merged.requestHeadersToRemove, frozenset({b"x-debug", b"server"}))
        self.assertEqual(merged.responseHeadersToRemove, frozenset({b"x-debug-r", b"server-r"}))

    def test_variablesNeeded(self) -> None:
        """
        The variables the merged additions reference are listed per direction.
        """
        merged = mergeHeaderEdits(
            [
                edits(add=(HeaderValueConfig("A", "%request_id%"),)),
                edits(responseAdd=(HeaderValueConfig("B", "%downstream_protocol%"),)),
                edits(add=(HeaderValueConfig("C", "%downstream_remote_address% %request_id%", True),)),
            ]
        )
        self.assertEqual(merged.requestVariables, frozenset({"request_id", "downstream_remote_address"}))
        self.assertEqual(merged.responseVariables, frozenset({"downstream_protocol"}))

    def test_overriddenVariablesNotNeeded(self) -> None:
        """
        A variable used only by an overridden addition is not asked for.
        """
        merged = mergeHeaderEdits(
            [edits(add=(HeaderValueConfig("A", "%request_id%"),)), edits(add=(HeaderValueConfig("a", "x"),))]
        )
        self.assertEqual(merged.requestVariables, frozenset())

    def test_empty(self) -> None:
        """
        No levels, or empty ones, merge to nothing.
        """
        for levels in ([], [HeaderEdits(), HeaderEdits()]):
            merged = mergeHeaderEdits(levels)
            self.assertEqual(
                (merged.requestHeadersToAdd, merged.requestHeadersToRemove, merged.responseHeadersToAdd),
                ((), frozenset(), ()),
            )
