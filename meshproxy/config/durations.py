"""
Go duration strings (C{time.ParseDuration}), the way MOSN writes every timeout: C{"30s"}, C{"1h2m3.5s"}.
"""

from __future__ import annotations

import re
from fractions import Fraction

#: Nanoseconds per unit, as Go spells the units (both micro signs included).
_UNITS = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,
    "\u03bcs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}

_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_UNIT = re.compile(r"[^0-9.]+")
_INT64_MAX = 2**63 - 1


class DurationError(ValueError):
    """
    A string is not a Go duration; the message says why.
    """


def parseGoDuration(text: str) -> int:
    """
    Parse a Go duration string into integer nanoseconds, as Go's C{time.ParseDuration} does.

    A duration is an optional sign and one or more decimal numbers, each with an optional fraction and a
    unit (C{ns}, C{us}, C{µs}, C{ms}, C{s}, C{m}, C{h}); C{"0"} alone needs no unit.  Fractions of a
    nanosecond are truncated.

    @raise DurationError: if C{text} is not a duration or is out of Go's range (about 292 years).
    """
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise DurationError("empty")
    total = Fraction(0)
    while rest:
        number = _NUMBER.match(rest)
        assert number is not None  # the pattern matches the empty string
        whole, fraction = number.group(1), number.group(2)
        if not whole and not fraction:
            raise DurationError(f"expected a number at {rest!r}")
        rest = rest[number.end() :]
        unit = _UNIT.match(rest)
        if unit is None:
            raise DurationError("missing unit")
        if unit.group() not in _UNITS:
            raise DurationError(f"unknown unit {unit.group()!r}")
        rest = rest[unit.end() :]
        value = Fraction(int(whole or "0"))
        if fraction:
            value += Fraction(int(fraction), 10 ** len(fraction))
        total += value * _UNITS[unit.group()]
    nanoseconds = int(total)
    if nanoseconds > _INT64_MAX:
        raise DurationError("too long: at most about 292 years")
    return -nanoseconds if negative else nanoseconds
