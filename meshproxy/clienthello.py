"""
TLS ClientHello parsing from the first bytes of a stream, without handshaking.

The sniffer reads the server name (SNI) and the ALPN offer so that it can pick a filter chain, or pass TLS
through by name, before any TLS library sees the connection.  L{parseClientHello} is pure and is called again
on the growing buffer each time bytes arrive: it walks whole records and fields with C{struct}, never Python
code per byte, and it never raises.

What it accepts, and why:

  - A ClientHello handshake message in one or more consecutive handshake records (type 22, version 3.0 to
    3.4, 1 to 2^14 payload bytes each; empty handshake records are forbidden by RFC 8446).  At most
    L{MAX_RECORDS} records: more is treated as malformed, which bounds the work per call against a client that
    sends one-byte records.  The record that ends the ClientHello must end with it, since a client sends
    nothing else before the server answers.
  - A body of 41 (the smallest legal ClientHello) to 131396 bytes (the largest one the field sizes allow),
    whose fields and extensions exactly fill it, with no extension type twice, and C{pre_shared_key} last
    (RFC 8446 4.2.11).
  - C{server_name} with exactly one entry, of type C{host_name}, as OpenSSL requires.  The name must be a
    DNS name (labels of 1 to 63 letters, digits, hyphens and underscores, not starting or ending with a
    hyphen, 253 characters at most) or an IP address literal; it is lower-cased and one trailing dot is
    removed so that routing compares like with like.  Any other name makes the hello malformed: it is not
    something a route can match, and a name that is not what it seems is how SNI confusion starts.
  - C{application_layer_protocol_negotiation} names are non-empty opaque strings, decoded as Latin-1 so that
    any bytes survive (C{name.encode("latin-1")} gives them back).
  - C{supported_versions} values are returned as sent, GREASE values included.

Errors in the record layer and in the fixed fields are reported as soon as the offending bytes arrive; errors
inside the extensions are reported once the whole message is there.  A hello in the old SSLv2 format is
recognised from its first 11 bytes and reported as a L{NotClientHello} that looks like TLS, since a TLS
library may still accept it.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Final

import attrs

from meshproxy.needmore import NEED_MORE, NeedMore

__all__ = [
    "NEED_MORE",
    "NeedMore",
    "ClientHello",
    "NotClientHello",
    "MAX_RECORDS",
    "parseClientHello",
]

CONTENT_TYPE_HANDSHAKE: Final = 0x16
HANDSHAKE_CLIENT_HELLO: Final = 1
MAX_RECORD_PAYLOAD: Final = 2**14
MAX_RECORDS: Final = 64
# legacy_version, random, an empty session id, one cipher suite, one compression method.
MIN_HELLO_BODY: Final = 2 + 32 + 1 + 2 + 2 + 1 + 1
# Every variable-length field at its largest.
MAX_HELLO_BODY: Final = 2 + 32 + 1 + 32 + 2 + 0xFFFE + 1 + 0xFF + 2 + 0xFFFF

EXTENSION_SERVER_NAME: Final = 0
EXTENSION_ALPN: Final = 16
EXTENSION_PRE_SHARED_KEY: Final = 41
EXTENSION_SUPPORTED_VERSIONS: Final = 43

_RECORD_HEADER: Final = struct.Struct("!BBBH")
_UINT16: Final = struct.Struct("!H")
_EXTENSION_HEADER: Final = struct.Struct("!HH")
_SERVER_NAME_ENTRY: Final = struct.Struct("!BH")
_SSL2_LENGTHS: Final = struct.Struct("!HHH")

_LABEL: Final = rb"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME: Final = re.compile(rb"(?:%s\.)*%s" % (_LABEL, _LABEL))
_IPV6_TEXT: Final = re.compile(rb"[0-9a-f:.]{2,45}")


@attrs.frozen
class ClientHello:
    """
    What the sniffer needs from a complete, well-formed TLS ClientHello.

    @ivar serverName: the SNI host name, lower-cased ASCII without a trailing dot, or L{None} if not sent.
    @ivar alpn: the offered ALPN protocol names, in the client's order.
    @ivar legacyVersion: the ClientHello's C{legacy_version} field (0x0303 for TLS 1.2 and 1.3 clients).
    @ivar supportedVersions: the C{supported_versions} extension's values as sent (TLS 1.3 clients), else
        empty.
    @ivar length: how many bytes of the stream the records carrying the ClientHello take.
    """

    serverName: str | None
    alpn: tuple[str, ...]
    legacyVersion: int
    supportedVersions: tuple[int, ...]
    length: int


@attrs.frozen
class NotClientHello:
    """
    The stream does not begin with a ClientHello this parser accepts.

    @ivar reason: a short human-readable explanation, for logs.
    @ivar looksLikeTLS: L{True} when the stream began as TLS (a plausible handshake record header, or an
        SSLv2-format hello) but the hello is malformed or unsupported: a TLS library is the right thing to
        answer it.  L{False} when the bytes are not TLS at all.
    """

    reason: str
    looksLikeTLS: bool


def parseClientHello(data: bytes | bytearray) -> NeedMore | ClientHello | NotClientHello:
    """
    Parse the ClientHello at the start of a TCP stream.

    @param data: everything received so far on the connection.
    @return: L{NEED_MORE} while C{data} is a prefix of an acceptable ClientHello, the L{ClientHello} once its
        records are complete (bytes after them are left alone), otherwise a L{NotClientHello}.
    """
    if not data:
        return NEED_MORE
    first = data[0]
    if first != CONTENT_TYPE_HANDSHAKE:
        if first & 0x80:
            return _parseSSLv2Hello(data)
        return NotClientHello("not a TLS handshake record", False)
    # The records are sliced through a memoryview; one of a bytearray would stop its owner from growing it
    # while the view lives, so such a buffer is copied.
    gathered = _gatherMessage(data if isinstance(data, bytes) else bytes(data))
    if not isinstance(gathered, tuple):
        return gathered
    message, bodyLength, consumed = gathered
    return _parseBody(message[4:], bodyLength, consumed)


def _recordHeaderProblem(data: bytes, position: int) -> str | None:
    """
    Judge as much of the record header at C{position} as has arrived.
    """
    header = data[position : position + _RECORD_HEADER.size]
    size = len(header)
    if size >= 1 and header[0] != CONTENT_TYPE_HANDSHAKE:
        return "non-handshake record inside the ClientHello"
    if (size >= 2 and header[1] != 3) or (size >= 3 and header[2] > 4):
        return "bad record version"
    if size >= 4 and header[3] > MAX_RECORD_PAYLOAD >> 8:
        return "record longer than 2^14 bytes"
    if size == _RECORD_HEADER.size:
        length = header[3] << 8 | header[4]
        if length == 0:
            return "empty handshake record"
        if length > MAX_RECORD_PAYLOAD:
            return "record longer than 2^14 bytes"
    return None


def _gatherMessage(data: bytes) -> NeedMore | NotClientHello | tuple[memoryview, int, int]:
    """
    Reassemble the handshake message from consecutive handshake records.

    @return: L{NEED_MORE} before the 4-byte handshake header has arrived, an error, or (the message bytes
        available so far including its header, the declared body length, the bytes of records consumed if
        the message is complete or 0 if not).
    """
    view = memoryview(data)
    size = len(data)
    fragments = []
    available = 0
    declared = 0
    position = 0
    records = 0
    total = -1
    while True:
        problem = _recordHeaderProblem(data, position)
        if problem is not None:
            return NotClientHello(problem, records > 0)
        if size - position < _RECORD_HEADER.size:
            break
        length = data[position + 3] << 8 | data[position + 4]
        records += 1
        if records > MAX_RECORDS:
            return NotClientHello("ClientHello split over more than %d records" % (MAX_RECORDS,), True)
        start = position + _RECORD_HEADER.size
        end = start + length
        fragments.append(view[start:end])
        available += len(fragments[-1])
        declared += length
        # Only the last fragment can be empty (its record's payload has not arrived), so fragments[0] holds
        # the first byte of the message if any has arrived.
        if total < 0 and available >= 1 and fragments[0][0] != HANDSHAKE_CLIENT_HELLO:
            return NotClientHello("first handshake message is not a ClientHello", True)
        if total < 0 and available >= 4:
            head = bytes(fragments[0][:4]) if len(fragments[0]) >= 4 else b"".join(fragments)[:4]
            bodyLength = int.from_bytes(head[1:4], "big")
            if not MIN_HELLO_BODY <= bodyLength <= MAX_HELLO_BODY:
                return NotClientHello("impossible ClientHello length %d" % (bodyLength,), True)
            total = 4 + bodyLength
        if total >= 0 and declared > total:
            return NotClientHello("more data in the record after the ClientHello", True)
        if end > size:
            break
        position = end
        if declared == total:
            break
    if total < 0:
        return NEED_MORE
    message = fragments[0] if len(fragments) == 1 else memoryview(b"".join(fragments))
    return message, total - 4, position if available == total else 0


def _parseBody(body: memoryview, bodyLength: int, consumed: int) -> NeedMore | ClientHello | NotClientHello:
    """
    Check the ClientHello body, of which the first C{len(body)} of C{bodyLength} bytes have arrived.

    Each fixed field is judged as soon as it is there; the extensions once the whole body is.
    """
    available = len(body)

    def short(end: int) -> NeedMore | NotClientHello | None:
        if end > bodyLength:
            return NotClientHello("ClientHello fields overrun its length", True)
        if end > available:
            return NEED_MORE
        return None

    problem = short(1)
    if problem is not None:
        return problem
    if body[0] != 3:
        return NotClientHello("bad ClientHello version", True)
    problem = short(2)
    if problem is not None:
        return problem
    legacyVersion = body[0] << 8 | body[1]
    position = 2 + 32
    problem = short(position + 1)
    if problem is not None:
        return problem
    sessionLength = body[position]
    if sessionLength > 32:
        return NotClientHello("session id longer than 32 bytes", True)
    position += 1 + sessionLength
    problem = short(position + 2)
    if problem is not None:
        return problem
    (suitesLength,) = _UINT16.unpack_from(body, position)
    if suitesLength < 2 or suitesLength % 2:
        return NotClientHello("bad cipher suites length", True)
    position += 2 + suitesLength
    problem = short(position + 1)
    if problem is not None:
        return problem
    compressionLength = body[position]
    if compressionLength < 1:
        return NotClientHello("no compression methods", True)
    position += 1 + compressionLength
    problem = short(position)
    if problem is not None:
        return problem
    if position == bodyLength:
        # Before TLS 1.3 the extensions block is optional.
        return ClientHello(None, (), legacyVersion, (), consumed)
    problem = short(position + 2)
    if problem is not None:
        return problem
    (extensionsLength,) = _UINT16.unpack_from(body, position)
    position += 2
    if position + extensionsLength != bodyLength:
        return NotClientHello("extensions do not fill the ClientHello", True)
    if available < bodyLength:
        return NEED_MORE
    return _parseExtensions(body, position, legacyVersion, consumed)


def _parseExtensions(
    body: memoryview, position: int, legacyVersion: int, consumed: int
) -> ClientHello | NotClientHello:
    """
    Walk the extensions of a complete body and pick out the ones the sniffer uses.
    """
    end = len(body)
    seen: set[int] = set()
    serverName: str | None = None
    alpn: tuple[str, ...] = ()
    supportedVersions: tuple[int, ...] = ()
    while position < end:
        if end - position < _EXTENSION_HEADER.size:
            return NotClientHello("truncated extension header", True)
        kind, length = _EXTENSION_HEADER.unpack_from(body, position)
        position += _EXTENSION_HEADER.size
        if position + length > end:
            return NotClientHello("extension overruns the ClientHello", True)
        if EXTENSION_PRE_SHARED_KEY in seen:
            return NotClientHello("pre_shared_key is not the last extension", True)
        if kind in seen:
            return NotClientHello("extension %d sent twice" % (kind,), True)
        seen.add(kind)
        value = body[position : position + length]
        position += length
        if kind == EXTENSION_SERVER_NAME:
            name = _parseServerName(value)
            if isinstance(name, NotClientHello):
                return name
            serverName = name
        elif kind == EXTENSION_ALPN:
            protocols = _parseALPN(value)
            if isinstance(protocols, NotClientHello):
                return protocols
            alpn = protocols
        elif kind == EXTENSION_SUPPORTED_VERSIONS:
            versions = _parseSupportedVersions(value)
            if isinstance(versions, NotClientHello):
                return versions
            supportedVersions = versions
    return ClientHello(serverName, alpn, legacyVersion, supportedVersions, consumed)


def _parseServerName(value: memoryview) -> str | NotClientHello:
    """
    Parse a C{server_name} extension: one C{host_name} entry holding a DNS name or an IP literal.
    """
    size = len(value)
    if size < 2 + _SERVER_NAME_ENTRY.size:
        return NotClientHello("bad server_name extension", True)
    (listLength,) = _UINT16.unpack_from(value, 0)
    nameType, nameLength = _SERVER_NAME_ENTRY.unpack_from(value, 2)
    if listLength != size - 2 or nameLength != size - 2 - _SERVER_NAME_ENTRY.size:
        return NotClientHello("server_name must hold exactly one name", True)
    if nameType != 0:
        return NotClientHello("server_name entry is not a host_name", True)
    name = bytes(value[2 + _SERVER_NAME_ENTRY.size :]).lower()
    if name.endswith(b"."):
        name = name[:-1]
    if not _isHostName(name):
        return NotClientHello("server name is not a DNS name or IP address", True)
    return name.decode("ascii")


def _isHostName(name: bytes) -> bool:
    """
    Whether lower-cased C{name} is a DNS name or an IP address literal.
    """
    if 0 < len(name) <= 253 and _DNS_NAME.fullmatch(name) is not None:
        return True
    if _IPV6_TEXT.fullmatch(name) is None:
        return False
    try:
        ipaddress.IPv6Address(name.decode("ascii"))
    except ValueError:
        return False
    return True


def _parseALPN(value: memoryview) -> tuple[str, ...] | NotClientHello:
    """
    Parse an ALPN extension: a non-empty list of non-empty protocol names.
    """
    size = len(value)
    if size < 3:
        return NotClientHello("bad ALPN extension", True)
    (listLength,) = _UINT16.unpack_from(value, 0)
    if listLength != size - 2:
        return NotClientHello("bad ALPN list length", True)
    names = []
    position = 2
    while position < size:
        length = value[position]
        position += 1
        if length == 0 or position + length > size:
            return NotClientHello("bad ALPN protocol name", True)
        names.append(bytes(value[position : position + length]).decode("latin-1"))
        position += length
    return tuple(names)


def _parseSupportedVersions(value: memoryview) -> tuple[int, ...] | NotClientHello:
    """
    Parse a ClientHello C{supported_versions} extension: a list of 1 to 127 two-byte versions.
    """
    if len(value) < 3 or value[0] != len(value) - 1 or value[0] % 2:
        return NotClientHello("bad supported_versions extension", True)
    return struct.unpack_from("!%dH" % (value[0] // 2,), value, 1)


def _parseSSLv2Hello(data: bytes | bytearray) -> NeedMore | NotClientHello:
    """
    Recognise an SSLv2-format ClientHello (two-byte record header with the high bit set, RFC 6101 E.2) from
    its first 11 bytes, so that it can go to a TLS library rather than to a raw relay.
    """
    size = len(data)
    if size < 2:
        return NEED_MORE
    length = (data[0] & 0x7F) << 8 | data[1]
    # Header fields, at least one cipher spec and the shortest challenge.
    if length < 9 + 3 + 16:
        return NotClientHello("not a TLS handshake record", False)
    if size < 3:
        return NEED_MORE
    if data[2] != HANDSHAKE_CLIENT_HELLO:
        return NotClientHello("not a TLS handshake record", False)
    if size < 5:
        return NEED_MORE
    if not (data[3] == 0 and data[4] == 2) and not (data[3] == 3 and data[4] <= 4):
        return NotClientHello("not a TLS handshake record", False)
    if size < 11:
        return NEED_MORE
    cipherSpecs, session, challenge = _SSL2_LENGTHS.unpack_from(data, 5)
    if (
        cipherSpecs == 0
        or cipherSpecs % 3
        or session not in (0, 16)
        or not 16 <= challenge <= 32
        or 9 + cipherSpecs + session + challenge != length
    ):
        return NotClientHello("not a TLS handshake record", False)
    return NotClientHello("SSLv2-format ClientHello is not supported", True)
