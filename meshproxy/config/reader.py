"""
Strict reading of decoded JSON: key checking with Go's case-insensitive matching, and typed values.

MOSN decodes its configuration with Go's C{encoding/json}: struct keys match case-insensitively and unknown
keys are silently ignored.  meshproxy keeps the first rule and drops the second: every object is read through
a L{KeySpec} that lists the keys meshproxy implements and, in one place per kind of object, the MOSN keys it
knows but does not implement yet.  Anything else is an error with a did-you-mean.

Every reader records problems in a L{Problems} collector and returns a usable default, so that reading goes on
and all problems are reported together.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import attrs

from meshproxy.config.errors import Problems
from meshproxy.config.jsonvalues import (
    JSONObject,
    describe,
    didYouMean,
    expectDuration,
    expectInteger,
    joinIndex,
    joinKey,
)


@attrs.frozen
class Tolerated:
    """
    The values of a not-supported MOSN key that are accepted because they match what meshproxy does anyway.

    @ivar accepts: whether a value is one of them.
    @ivar description: the accepted values, for the error message.
    """

    accepts: Callable[[Any], bool]
    description: str


def tolerateValues(*values: Any) -> Tolerated:
    """
    Accept exactly these JSON values (C{true} is not C{1}).
    """

    def accepts(value: Any) -> bool:
        return any(type(value) is type(good) and value == good for good in values)

    return Tolerated(accepts, " or ".join(describe(value) for value in values))


def _isEmpty(value: Any) -> bool:
    if isinstance(value, JSONObject):
        return not value.pairs
    return value is None or (isinstance(value, (list, dict, str)) and not value)


def tolerateEmpty() -> Tolerated:
    """
    Accept an empty list, object or string, or null: the key is written but asks for nothing.
    """
    return Tolerated(_isEmpty, 'an empty value ([], {}, "" or null)')


def tolerateWhen(accepts: Callable[[Any], bool], description: str) -> Tolerated:
    """
    Accept the values C{accepts} approves of.
    """
    return Tolerated(accepts, description)


@attrs.frozen(eq=False)
class KeySpec:
    """
    The keys one kind of JSON object may hold.

    @ivar known: the keys meshproxy implements, spelt as MOSN documents them.
    @ivar unsupported: MOSN keys meshproxy knows but does not implement yet, each with the values that are
        accepted anyway (or L{None}: none is).  This mapping is the one place to delete an entry from when
        a key gets implemented.
    @ivar caseSensitive: C{True} for objects MOSN decodes into a Go map rather than a struct.
    """

    known: tuple[str, ...]
    unsupported: Mapping[str, Tolerated | None] = attrs.field(factory=dict)
    caseSensitive: bool = False


def unsupportedMessage(key: str, tolerated: Tolerated | None, value: Any) -> str:
    """
    The message for a MOSN key that meshproxy does not implement.
    """
    message = f"{key!r} is a MOSN key that meshproxy does not support yet"
    if tolerated is not None:
        message += (
            f"; only {tolerated.description} is accepted (what meshproxy does anyway), got {describe(value)}"
        )
    return message


class Fields:
    """
    The checked keys of one JSON object, with typed accessors that report problems and fall back to defaults.
    """

    def __init__(self, path: str, problems: Problems, values: dict[str, tuple[str, Any]]) -> None:
        self.path = path
        self.problems = problems
        self._values = values

    def has(self, key: str) -> bool:
        """
        Whether C{key} (canonical spelling) was given.
        """
        return key in self._values

    def raw(self, key: str, default: Any = None) -> Any:
        """
        The decoded value of C{key}, unchecked.
        """
        return self._values[key][1] if key in self._values else default

    def pathOf(self, key: str) -> str:
        """
        The path of C{key}, spelt as written in the file (or canonically if absent).
        """
        written = self._values[key][0] if key in self._values else key
        return joinKey(self.path, written)

    def problem(self, key: str, message: str) -> None:
        """
        Record a problem with the value of C{key}.
        """
        self.problems.add(self.pathOf(key), message)

    def missing(self, key: str) -> None:
        """
        Record that the required C{key} is absent.
        """
        self.problems.add(self.pathOf(key), f"required key {key!r} is missing")

    def string(self, key: str, default: str = "", *, required: bool = False, nonEmpty: bool = False) -> str:
        """
        A string value.
        """
        if key not in self._values:
            if required:
                self.missing(key)
            return default
        value = self.raw(key)
        if not isinstance(value, str):
            self.problem(key, f"{describe(value)} is not a string: expected a string")
            return default
        if nonEmpty and not value:
            self.problem(key, "'' is empty: expected a non-empty string")
            return default
        return value

    def optionalString(self, key: str) -> str | None:
        """
        A string value, or L{None} if absent, null or empty.
        """
        if self.raw(key) is None:
            return None
        return self.string(key) or None

    def boolean(self, key: str, default: bool = False) -> bool:
        """
        A boolean value.
        """
        if key not in self._values:
            return default
        value = self.raw(key)
        if not isinstance(value, bool):
            self.problem(key, f"{describe(value)} is not a boolean: expected true or false")
            return default
        return value

    def integer(self, key: str, default: int, low: int, high: int, *, required: bool = False) -> int:
        """
        An integer value from C{low} to C{high} inclusive.
        """
        if key not in self._values:
            if required:
                self.missing(key)
            return default
        checked = expectInteger(self.raw(key), self.pathOf(key), self.problems, low, high)
        return default if checked is None else checked

    def duration(
        self, key: str, default: float | None, *, zeroIsNone: bool = False, positive: bool = False
    ) -> float | None:
        """
        A Go duration string such as C{"1m30s"}, in seconds.

        @param zeroIsNone: a zero duration means "disabled": return L{None}.
        @param positive: zero is an error.
        """
        if key not in self._values:
            return default
        seconds = expectDuration(self.raw(key), self.pathOf(key), self.problems, positive=positive)
        if seconds is None:
            return default
        if zeroIsNone and seconds == 0:
            return None
        return seconds

    def choice(
        self,
        key: str,
        default: str,
        choices: Sequence[str],
        notSupported: Sequence[str] = (),
        *,
        what: str = "value",
    ) -> str:
        """
        One string of C{choices}; one of C{notSupported} is a MOSN value meshproxy does not implement yet.
        """
        if key not in self._values:
            return default
        value = self.raw(key)
        expected = ", ".join(repr(choice) for choice in choices)
        if not isinstance(value, str):
            self.problem(key, f"{describe(value)} is not a string: expected one of {expected}")
        elif value in choices:
            return value
        elif value in notSupported:
            self.problem(
                key, f"{what} {value!r} is not supported yet by meshproxy: expected one of {expected}"
            )
        else:
            hint = didYouMean(value, list(choices) + list(notSupported))
            self.problem(key, f"{describe(value)} is not a valid {what}{hint}: expected one of {expected}")
        return default

    def items(self, key: str, *, required: bool = False, nonEmpty: bool = False) -> list[tuple[str, Any]]:
        """
        The elements of a list value, each with its path.
        """
        if key not in self._values:
            if required:
                self.missing(key)
            return []
        value = self.raw(key)
        if value is None and not required:
            return []
        if not isinstance(value, list):
            self.problem(key, f"{describe(value)} is not a list: expected a list")
            return []
        if nonEmpty and not value:
            self.problem(key, "[] is empty: expected at least one element")
        return [(joinIndex(self.pathOf(key), index), element) for index, element in enumerate(value)]

    def strings(self, key: str, *, nonEmpty: bool = False) -> tuple[str, ...]:
        """
        A list of strings.
        """
        result = []
        for path, element in self.items(key, nonEmpty=nonEmpty):
            if isinstance(element, str):
                result.append(element)
            else:
                self.problems.add(path, f"{describe(element)} is not a string: expected a string")
        return tuple(result)

    def object(self, key: str, spec: KeySpec, *, required: bool = False) -> Fields | None:
        """
        A nested object, checked against C{spec}; L{None} if absent, null or wrong.
        """
        if key not in self._values or self.raw(key) is None:
            if required:
                self.missing(key)
            return None
        return readObject(self.raw(key), self.pathOf(key), self.problems, spec)


def objectPairs(value: Any) -> list[tuple[str, Any]] | None:
    """
    The key/value pairs of a decoded JSON object (a L{JSONObject} or a plain C{dict}), else L{None}.
    """
    if isinstance(value, JSONObject):
        return value.pairs
    if isinstance(value, dict):
        return list(value.items())
    return None


def readObject(value: Any, path: str, problems: Problems, spec: KeySpec) -> Fields | None:
    """
    Check the keys of one JSON object against C{spec}.

    Keys match case-insensitively as in Go, preferring an exact match; two keys of one object that are
    equal but for case (or exactly equal) are an error, as are unknown keys and not-supported MOSN keys.

    @return: the accepted keys, or L{None} if C{value} is not an object.
    """
    pairs = objectPairs(value)
    if pairs is None:
        problems.add(path, f"{describe(value)} is not an object: expected an object")
        return None
    canonical = list(spec.known) + list(spec.unsupported)
    exact = set(canonical)
    folded = {} if spec.caseSensitive else {key.lower(): key for key in canonical}
    values: dict[str, tuple[str, Any]] = {}
    for written, element in pairs:
        keyPath = joinKey(path, written)
        key = written if written in exact else folded.get(written.lower())
        if key is None:
            problems.add(keyPath, _unknownKeyMessage(written, spec))
            continue
        if key in values:
            earlier = values[key][0]
            if earlier == written:
                problems.add(keyPath, f"duplicate key {written!r}")
            else:
                problems.add(
                    keyPath,
                    f"duplicate key {written!r}: {earlier!r} is already given and keys match "
                    "case-insensitively",
                )
            continue
        if key in spec.unsupported:
            tolerated = spec.unsupported[key]
            if tolerated is None or not tolerated.accepts(element):
                problems.add(keyPath, unsupportedMessage(key, tolerated, element))
                continue
        values[key] = (written, element)
    return Fields(path, problems, values)


def _unknownKeyMessage(written: str, spec: KeySpec) -> str:
    candidates = list(spec.known) + list(spec.unsupported)
    hint = didYouMean(written, candidates)
    if hint:
        return f"unknown key {written!r}{hint}"
    return f"unknown key {written!r}: expected one of {', '.join(sorted(spec.known))}"


def iterObjects(
    items: list[tuple[str, Any]], problems: Problems, spec: KeySpec
) -> Iterator[tuple[str, Fields]]:
    """
    Check each element of a list as an object of C{spec}; skip (after reporting) those that are not objects.
    """
    for path, element in items:
        fields = readObject(element, path, problems, spec)
        if fields is not None:
            yield path, fields
