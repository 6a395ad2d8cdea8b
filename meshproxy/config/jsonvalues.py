"""
Decoded JSON values: loading a document with its line and column on errors, showing values in messages,
did-you-mean suggestions, JSON paths, and checks of integers and durations.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any, Sequence

from meshproxy.config.durations import DurationError, parseGoDuration
from meshproxy.config.errors import ConfigError, Problem, Problems

#: Go's C{uint32}, the type of most MOSN integer settings.
UINT32_MAX = 2**32 - 1


class JSONObject:
    """
    A decoded JSON object that keeps every key in order, duplicates included, so they can be reported.
    """

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs

    def __repr__(self) -> str:
        return f"JSONObject({self.pairs!r})"


class _NonFiniteNumber(Exception):
    """
    The document holds C{NaN}, C{Infinity} or a number too large for a float: not JSON, Go rejects it.
    """


def _rejectConstant(name: str) -> float:
    raise _NonFiniteNumber(name)


def _parseFloat(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteNumber(text)
    return value


def loadJSON(data: bytes | str) -> Any:
    """
    Decode a JSON document, keeping objects as L{JSONObject}s.

    @raise ConfigError: with one problem at path C{$} naming the line and column of a syntax error.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ConfigError([Problem("$", f"the file is not UTF-8 text: {e}")])
    else:
        text = data
    try:
        return json.loads(
            text, object_pairs_hook=JSONObject, parse_constant=_rejectConstant, parse_float=_parseFloat
        )
    except json.JSONDecodeError as e:
        message = f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        raise ConfigError([Problem("$", message)])
    except _NonFiniteNumber as e:
        message = f"invalid JSON: {e} is not a finite number (JSON has no NaN or Infinity)"
        raise ConfigError([Problem("$", message)])


def describe(value: Any) -> str:
    """
    Show a JSON value in a message: strings quoted, objects and lists by kind.
    """
    if isinstance(value, (JSONObject, dict)):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = repr(value)
        return shown if len(shown) <= 100 else shown[:96] + "...'"
    return repr(value)


def didYouMean(word: str, candidates: Sequence[str]) -> str:
    """
    Return C{" (did you mean 'x'?)"} for the candidate closest to C{word}, or C{""} if none is close.
    """
    folded = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(word.lower(), list(folded), n=1, cutoff=0.6)
    return f" (did you mean {folded[close[0]]!r}?)" if close else ""


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def joinKey(path: str, key: str) -> str:
    """
    The path of C{key} inside the object at C{path}.
    """
    part = key if _PLAIN_KEY.match(key) else f"[{json.dumps(key)}]"
    if not path:
        return part
    return path + part if part.startswith("[") else f"{path}.{part}"


def joinIndex(path: str, index: int) -> str:
    """
    The path of element C{index} of the list at C{path}.
    """
    return f"{path}[{index}]"


def expectInteger(value: Any, path: str, problems: Problems, low: int, high: int) -> int | None:
    """
    Check an integer from C{low} to C{high} inclusive (JSON booleans and fractions are not integers).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(path, f"{describe(value)} is not an integer: expected an integer from {low} to {high}")
        return None
    if not low <= value <= high:
        problems.add(path, f"{value} is out of range: expected an integer from {low} to {high}")
        return None
    return value


_DURATION_EXAMPLES = (
    "a Go duration string such as '30s', '500ms' or '1h2m3.5s' (units ns, us, µs, ms, s, m, h)"
)


def expectDuration(value: Any, path: str, problems: Problems, *, positive: bool = False) -> float | None:
    """
    Check a Go duration string and convert it to seconds; negative durations are errors.
    """
    if not isinstance(value, str):
        problems.add(path, f"{describe(value)} is not a duration: expected {_DURATION_EXAMPLES}")
        return None
    try:
        nanoseconds = parseGoDuration(value)
    except DurationError as e:
        problems.add(path, f"{describe(value)} is not a valid duration ({e}): expected {_DURATION_EXAMPLES}")
        return None
    return _checkedSeconds(value, nanoseconds, path, problems, positive)


def expectNanoseconds(value: Any, path: str, problems: Problems, *, positive: bool = False) -> float | None:
    """
    Check a duration written as integer nanoseconds (Go's raw C{time.Duration}) or as a Go duration string.
    """
    if isinstance(value, str):
        return expectDuration(value, path, problems, positive=positive)
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(
            path,
            f"{describe(value)} is not a duration: expected integer nanoseconds (90000000000 is 90s) "
            f"or {_DURATION_EXAMPLES}",
        )
        return None
    if value > 2**63 - 1:
        problems.add(path, f"{value} is out of range: expected at most 9223372036854775807 nanoseconds")
        return None
    return _checkedSeconds(value, value, path, problems, positive)


def _checkedSeconds(
    value: Any, nanoseconds: int, path: str, problems: Problems, positive: bool
) -> float | None:
    if nanoseconds < 0:
        problems.add(path, f"{describe(value)} is negative: expected a duration of 0 or more, such as '30s'")
        return None
    if positive and nanoseconds == 0:
        problems.add(path, f"{describe(value)} is zero: expected a duration greater than 0, such as '3s'")
        return None
    return nanoseconds / 1e9
