"""
Parse one complete message head (start line and field section) into a
L{RequestHead} or L{ResponseHead}, enforcing RFC 9112's rules on the fields
that decide framing.

These are pure functions over bytes; the parser finds the head's end and
calls them once per message.  Anything that two parsers could read two ways
is refused here with L{HTTPParseError}.
"""

from __future__ import annotations

import re
from typing import Final

from meshproxy.http.events import HTTPParseError, RequestHead, ResponseHead
from meshproxy.http.fields import (
    NO_TOKENS,
    TOKEN,
    SPECIAL_NAMES,
    TOKEN_RE,
    badByteReason,
    connectionTokensOf,
    contentLengthOf,
    expectsContinue,
    fieldSectionError,
    isChunked,
    isValidHost,
    splitFields,
    valuesOf,
)

# Request targets are visible ASCII; "#" is refused separately (a fragment is
# not part of any request-target form and proxies disagree on stripping it).
_REQUEST_LINE: Final = re.compile(
    rb"(" + TOKEN + rb"+) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])\r\n"
)
_STATUS_LINE: Final = re.compile(
    rb"HTTP/([0-9]\.[0-9]) ([1-5][0-9][0-9])(?: ([\t \x21-\x7e\x80-\xff]*))?\r\n"
)
_VERSION: Final = re.compile(rb"HTTP/[0-9]\.[0-9]")
_VERSION_LIKE: Final = re.compile(rb"HTTP/[0-9]+\.[0-9]+")
_TARGET_CHARS: Final = re.compile(rb"[\x21-\x7e]+")
_AUTHORITY: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9._~!$&'()*+,;=%]+):[0-9]+"
)
_ABSOLUTE: Final = re.compile(rb"[A-Za-z][-A-Za-z0-9+.]*://")
_SLASH: Final = ord("/")


def _startLine(data: bytes, start: int, end: int) -> tuple[bytes, HTTPParseError | None]:
    """
    The start line of a refused head, and the error for a bad byte in it (if any).
    """
    line = data[start : data.find(b"\r\n", start, end + 2)]
    reason = badByteReason(line, 0, len(line))
    return line, None if reason is None else HTTPParseError(400, reason)


def requestLineError(data: bytes, start: int, end: int) -> HTTPParseError:
    """
    Say what is wrong with a request line that the fast pattern refused.
    """
    line, badByte = _startLine(data, start, end)
    if badByte is not None:
        return badByte
    parts = line.split(b" ")
    if len(parts) != 3:
        return HTTPParseError(400, "bad-request-line")
    method, target, version = parts
    if not TOKEN_RE.fullmatch(method):
        return HTTPParseError(400, "bad-token")
    if not _TARGET_CHARS.fullmatch(target):
        return HTTPParseError(400, "bad-target")
    if _VERSION_LIKE.fullmatch(version):
        return HTTPParseError(505, "bad-version")
    return HTTPParseError(400, "bad-request-line")


def statusLineError(data: bytes, start: int, end: int) -> HTTPParseError:
    """
    Say what is wrong with a status line that the fast pattern refused.
    """
    line, badByte = _startLine(data, start, end)
    if badByte is not None:
        return badByte
    version, _, rest = line.partition(b" ")
    if _VERSION.fullmatch(version) is None:
        if _VERSION_LIKE.fullmatch(version):
            return HTTPParseError(505, "bad-version")
        return HTTPParseError(400, "bad-status-line")
    code = rest[:3]
    if not (code.isdigit() and len(code) == 3 and rest[3:4] in (b"", b" ")):
        return HTTPParseError(400, "bad-status")
    if not 100 <= int(code) <= 599:
        return HTTPParseError(400, "bad-status")
    return HTTPParseError(400, "bad-status-line")


def targetTooLong(line: bytes, maxURIBytes: int) -> bool:
    """
    Whether the request line C{line} (of a head too large to parse) carries a
    target longer than C{maxURIBytes}, which makes it a 414 rather than a 431.
    """
    parts = line.split(b" ", 2)
    return len(parts) > 1 and len(parts[1]) > maxURIBytes


def _checkTarget(method: bytes, target: bytes) -> None:
    """
    Refuse a request target that is not in the form its method requires
    (RFC 9112 section 3.2).
    """
    if b"#" in target:
        raise HTTPParseError(400, "bad-target")
    if method == b"CONNECT":
        if _AUTHORITY.fullmatch(target) is None:
            raise HTTPParseError(400, "bad-target")
    elif target == b"*":
        if method != b"OPTIONS":
            raise HTTPParseError(400, "bad-target")
    elif target[0] != _SLASH and _ABSOLUTE.match(target) is None:
        raise HTTPParseError(400, "bad-target")


def _section(
    data: bytes, lineEnd: int, end: int, maxHeaders: int
) -> tuple[list[tuple[bytes, bytes]], list[bytes], frozenset[bytes]]:
    """
    Split and validate the field section of a head whose start line ends at
    C{lineEnd}; return the fields, their lower-cased names and which of the
    framing-relevant names are present.
    """
    section = data[lineEnd : end + 2]
    fields = splitFields(section)
    if fields is None:
        raise fieldSectionError(section)
    if len(fields) > maxHeaders:
        raise HTTPParseError(431, "too-many-headers")
    lnames = [name.lower() for name, _ in fields]
    return fields, lnames, SPECIAL_NAMES.intersection(lnames)


def _framing(
    lnames: list[bytes], headers: list[tuple[bytes, bytes]], hits: frozenset[bytes], version: bytes
) -> tuple[int | None, bool]:
    """
    The (contentLength, chunked) pair named by the fields, refusing every
    ambiguous combination.
    """
    if b"transfer-encoding" in hits:
        if b"content-length" in hits:
            raise HTTPParseError(400, "cl-and-te")
        if version == b"1.0":
            # RFC 9112 section 6.1: such framing is faulty.
            raise HTTPParseError(400, "te-in-http10")
        return None, isChunked(valuesOf(lnames, headers, b"transfer-encoding"))
    if b"content-length" in hits:
        return contentLengthOf(valuesOf(lnames, headers, b"content-length")), False
    return None, False


def parseRequestHead(
    data: bytes, start: int, end: int, maxURIBytes: int, maxHeaders: int
) -> RequestHead:
    """
    Parse the request head in C{data[start:end + 4]} (C{end} is where its
    final CRLF CRLF starts).
    """
    m = _REQUEST_LINE.match(data, start, end + 2)
    if m is None:
        raise requestLineError(data, start, end)
    method, target, version = m.groups()
    if version != b"1.1" and version != b"1.0":
        raise HTTPParseError(505, "bad-version")
    if len(target) > maxURIBytes:
        raise HTTPParseError(414, "uri-too-long")
    if target[0] != _SLASH or method == b"CONNECT" or b"#" in target:
        _checkTarget(method, target)
    lineEnd = m.end()
    contentLength = None
    chunked = False
    tokens = NO_TOKENS
    host = None
    upgrade = None
    expect = False
    if lineEnd == end + 2:
        headers: list[tuple[bytes, bytes]] = []
        lnames: list[bytes] = []
    else:
        headers, lnames, hits = _section(data, lineEnd, end, maxHeaders)
        if b"host" in hits:
            if lnames.count(b"host") > 1:
                raise HTTPParseError(400, "duplicate-host")
            host = headers[lnames.index(b"host")][1]
            if not isValidHost(host):
                raise HTTPParseError(400, "bad-host")
            if len(hits) == 1:
                hits = NO_TOKENS
        if hits:
            contentLength, chunked = _framing(lnames, headers, hits, version)
            if b"connection" in hits:
                tokens = connectionTokensOf(valuesOf(lnames, headers, b"connection"))
            if version == b"1.1":
                if b"upgrade" in hits and b"upgrade" in tokens:
                    upgrade = b", ".join(valuesOf(lnames, headers, b"upgrade"))
                if b"expect" in hits:
                    expect = expectsContinue(valuesOf(lnames, headers, b"expect"))
    if version == b"1.1":
        if host is None:
            raise HTTPParseError(400, "missing-host")
        keepAlive = b"close" not in tokens
    else:
        keepAlive = b"keep-alive" in tokens and b"close" not in tokens
    if method == b"CONNECT" and (chunked or contentLength):
        raise HTTPParseError(400, "connect-with-body")
    return RequestHead(
        method,
        target,
        version,
        headers,
        contentLength,
        chunked,
        keepAlive,
        tokens,
        host,
        upgrade,
        expect,
        lnames,
    )


def parseResponseHead(data: bytes, start: int, end: int, maxHeaders: int) -> ResponseHead:
    """
    Parse the response head in C{data[start:end + 4]}.  The caller decides
    framing from the request method and status, and clears C{keepAlive} for
    close-delimited bodies.
    """
    m = _STATUS_LINE.match(data, start, end + 2)
    if m is None:
        raise statusLineError(data, start, end)
    version, code, reason = m.groups()
    if version != b"1.1" and version != b"1.0":
        raise HTTPParseError(505, "bad-version")
    lineEnd = m.end()
    contentLength = None
    chunked = False
    tokens = NO_TOKENS
    if lineEnd == end + 2:
        headers: list[tuple[bytes, bytes]] = []
        lnames: list[bytes] = []
    else:
        headers, lnames, hits = _section(data, lineEnd, end, maxHeaders)
        if hits:
            contentLength, chunked = _framing(lnames, headers, hits, version)
            if b"connection" in hits:
                tokens = connectionTokensOf(valuesOf(lnames, headers, b"connection"))
    if version == b"1.1":
        keepAlive = b"close" not in tokens
    else:
        keepAlive = b"keep-alive" in tokens and b"close" not in tokens
    return ResponseHead(
        int(code),
        reason or b"",
        version,
        headers,
        contentLength,
        chunked,
        keepAlive,
        tokens,
        lnames,
    )
