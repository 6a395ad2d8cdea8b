"""
Header-field grammar of RFC 9110/9112: compiled patterns, field-section
splitting, validation of the fields that decide framing, and the hop-by-hop
helper for proxies.

Field sections are validated and split by one compiled pattern in C; Python
only runs per field for the few names that matter (Host, Content-Length,
Transfer-Encoding, Connection, Upgrade, Expect), and per line only on the
error path, to say precisely what was wrong.
"""

from __future__ import annotations

import re
from typing import Final

from meshproxy.http.events import HTTPParseError

TOKEN_CHARS: Final = rb"-!#$%&'*+.^_`|~0-9A-Za-z"
TOKEN: Final = rb"[" + TOKEN_CHARS + rb"]"
# field-vchar (VCHAR / obs-text) and field-content's inner characters.
_VCHAR: Final = rb"[\x21-\x7e\x80-\xff]"
_CONTENT: Final = rb"[\t \x21-\x7e\x80-\xff]"
FIELD_VALUE: Final = rb"(?:" + _VCHAR + rb"(?:" + _CONTENT + rb"*" + _VCHAR + rb")?)?"

TOKEN_RE: Final = re.compile(TOKEN + rb"+")
FIELD_VALUE_RE: Final = re.compile(FIELD_VALUE)

# One field line.  `^` under MULTILINE only matches at a line start, so a
# failed attempt inside a line costs O(1) and a search over a hostile section
# stays linear; and since a match cannot cross a LF, each match is exactly one
# whole line.  Group 2 always participates (an empty value is b"").  Only
# single-character repeats are possessive: Debian's Python 3.11.2 matches a
# possessive repeat of a group wrongly (fixed in later 3.11 releases).
_FIELD_LINE: Final = re.compile(
    rb"^(" + TOKEN + rb"++):[ \t]*+(" + FIELD_VALUE + rb")[ \t]*+\r\n", re.MULTILINE
)
# The first byte that no compliant message contains outside a line ending.
BAD_BYTE: Final = re.compile(rb"\x00|\r(?=[^\n])|(?<!\r)\n")
_BAD_BYTE_REASONS: Final = {b"\x00": "nul", b"\r": "bare-cr", b"\n": "bare-lf"}

# uri-host [":" port] (RFC 3986), except that "," is refused in a reg-name:
# an intermediary that folds fields into lists would read "a,b" as two Hosts.
_HOST: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9._~!$&'()*+;=%]*)(?::[0-9]*)?"
)
# Host values already found valid: a Host repeats on nearly every request of a connection and
# across clients, so the usual request is checked with a set lookup instead of the pattern.  At most
# _KNOWN_HOSTS_MAX values of at most 255 bytes are kept; the set is emptied when full.
_KNOWN_HOSTS: Final[set[bytes]] = set()
_KNOWN_HOSTS_MAX: Final = 1024


def isValidHost(value: bytes) -> bool:
    """
    Whether C{value} is a valid Host field value (L{_HOST}), remembering short valid values.
    """
    if value in _KNOWN_HOSTS:
        return True
    if _HOST.fullmatch(value) is None:
        return False
    if len(value) <= 255:
        if len(_KNOWN_HOSTS) >= _KNOWN_HOSTS_MAX:
            _KNOWN_HOSTS.clear()
        _KNOWN_HOSTS.add(value)
    return True


_PARAMETERS: Final = (
    rb"(?:[ \t]*;[ \t]*" + TOKEN + rb"+(?:=(?:" + TOKEN + rb"+|\"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*\"))?)*"
)
_CODING: Final = re.compile(TOKEN + rb"+" + _PARAMETERS)

_COMMON_CONNECTION: Final = {
    b"keep-alive": frozenset([b"keep-alive"]),
    b"close": frozenset([b"close"]),
    b"upgrade": frozenset([b"upgrade"]),
}
NO_TOKENS: Final[frozenset[bytes]] = frozenset()

SPECIAL_NAMES: Final = frozenset(
    [b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"]
)
FORBIDDEN_TRAILERS: Final = frozenset([b"content-length", b"transfer-encoding", b"host"])

_HOP_BY_HOP: Final = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
)


def hopByHopNames(connectionTokens: frozenset[bytes]) -> frozenset[bytes]:
    """
    The lower-cased names of the header fields a proxy must not forward: the
    standard hop-by-hop fields plus every option named in Connection.

    @param connectionTokens: a head's C{connectionTokens}.
    """
    if not connectionTokens:
        return _HOP_BY_HOP
    return _HOP_BY_HOP | connectionTokens


def badByteReason(data: bytes | bytearray, start: int, end: int) -> str | None:
    """
    The reason slug for the first NUL, bare CR or bare LF in
    C{data[start:end]}, or L{None} if there is none.

    A CR at the very end is not bare yet: its LF may still come.
    """
    m = BAD_BYTE.search(data, start, end)
    if m is None:
        return None
    return _BAD_BYTE_REASONS[m.group()]


def splitFields(section: bytes) -> list[tuple[bytes, bytes]] | None:
    """
    Validate a field section (field lines, each ending in CRLF, without the
    empty line that ends the section) and split it.

    @return: (name as received, value without surrounding whitespace) pairs,
        or L{None} if any line is not a valid field line (then
        L{fieldSectionError} says why).
    """
    fields = _FIELD_LINE.findall(section)
    # Every match is one whole line: all lines are valid iff every LF ends one.
    if len(fields) != section.count(b"\n"):
        return None
    return fields


def fieldSectionError(section: bytes) -> HTTPParseError:
    """
    Say what is wrong with a field section that L{splitFields} refused.
    """
    reason = badByteReason(section, 0, len(section))
    if reason is not None:
        return HTTPParseError(400, reason)
    for line in section.split(b"\r\n"):
        if _FIELD_LINE.fullmatch(line + b"\r\n"):
            continue
        if line[:1] in (b" ", b"\t"):
            return HTTPParseError(400, "obs-fold")
        name, colon, value = line.partition(b":")
        if not colon:
            return HTTPParseError(400, "missing-colon")
        if name[-1:] in (b" ", b"\t"):
            return HTTPParseError(400, "space-before-colon")
        if not TOKEN_RE.fullmatch(name):
            return HTTPParseError(400, "bad-token")
        return HTTPParseError(400, "bad-field-value")
    # Unreachable for sections that splitFields refused.
    return HTTPParseError(400, "bad-field")


def contentLengthOf(values: list[bytes]) -> int:
    """
    The body length named by the Content-Length field values.

    Repeated fields and comma lists are accepted only when every element is
    the same number (RFC 9112 section 6.3); anything else is refused.
    """
    if len(values) == 1:
        value = values[0]
        if value.isdigit() and len(value) <= 18:
            return int(value)
    lengths = set()
    for value in values:
        for element in value.split(b","):
            element = element.strip(b" \t")
            if not element.isdigit():
                raise HTTPParseError(400, "bad-content-length")
            significant = element.lstrip(b"0")
            if len(significant) > 18:
                raise HTTPParseError(413, "body-too-large")
            lengths.add(int(element))
    if len(lengths) != 1:
        raise HTTPParseError(400, "conflicting-content-length")
    return lengths.pop()


def isChunked(values: list[bytes]) -> bool:
    """
    Check Transfer-Encoding: only a single, final C{chunked} is accepted.

    @return: L{True} (a valid value always means chunked).
    @raise HTTPParseError: 400 unless C{chunked} is the last coding and
        appears once; 501 for any other (unknown to us) coding before it.
    """
    if len(values) == 1 and values[0].lower() == b"chunked":
        return True
    codings = []
    for value in values:
        for element in value.split(b","):
            element = element.strip(b" \t")
            if not _CODING.fullmatch(element):
                raise HTTPParseError(400, "bad-transfer-encoding")
            codings.append(element.lower())
    if codings[-1] != b"chunked":
        raise HTTPParseError(400, "te-not-chunked-last")
    if codings.count(b"chunked") > 1:
        raise HTTPParseError(400, "te-chunked-twice")
    raise HTTPParseError(501, "unknown-te")


def connectionTokensOf(values: list[bytes]) -> frozenset[bytes]:
    """
    The lower-cased options of the Connection field values; empty list
    elements are ignored as RFC 9110 section 5.6.1 asks, anything that is not
    a token is refused.
    """
    if len(values) == 1:
        common = _COMMON_CONNECTION.get(values[0].lower())
        if common is not None:
            return common
    tokens = set()
    for value in values:
        for element in value.split(b","):
            element = element.strip(b" \t")
            if not element:
                continue
            if not TOKEN_RE.fullmatch(element):
                raise HTTPParseError(400, "bad-connection")
            tokens.add(element.lower())
    return frozenset(tokens)


def expectsContinue(values: list[bytes]) -> bool:
    """
    Whether the Expect field values contain the 100-continue expectation.
    """
    return any(v.lower() == b"100-continue" for v in values)


def valuesOf(lnames: list[bytes], fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """
    The values of the fields whose lower-cased name (C{lnames}, parallel to
    C{fields}) is C{name}; C-speed for the usual single occurrence.
    """
    index = lnames.index(name)
    if lnames.count(name) == 1:
        return [fields[index][1]]
    return [v for n, (_, v) in zip(lnames, fields) if n == name]
