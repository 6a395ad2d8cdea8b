"""
PROXY protocol (HAProxy's proxy-protocol.txt) header parsing, versions 1 and 2.

A listener that sits behind a load balancer learns the real client address from a header the balancer puts
in front of the stream.  L{parseProxyHeader} is pure and is called again on the growing buffer each time
bytes arrive: it answers L{NEED_MORE} while the bytes are a prefix of a header that could still be valid, a
L{ProxyHeaderError} as soon as they cannot be, and a L{ProxyHeader} (whose C{length} bytes the caller strips)
once a whole valid header is there.  It never raises.

Where the specification leaves room, this parser chooses:

  - v1 addresses are checked strictly (IPv4 without leading zeros, ports 0-65535 without leading zeros,
    single spaces).  A TCP6 address may end in a dotted IPv4 part (C{::ffff:192.0.2.1}), because that is what
    senders that format addresses with C{inet_ntop} emit.
  - v1 C{UNKNOWN} must be followed by CRLF or by a space; everything after that space up to the first CRLF
    is ignored, as the specification requires, within the 107-byte line limit.
  - IPv6 addresses are reported in compressed form, with IPv4-mapped ones as C{::ffff:a.b.c.d} (RFC 5952),
    so the text does not depend on the Python version.
  - v2 C{LOCAL} ignores the family byte and the whole address block (family C{UNKNOWN}, no TLVs), as the
    specification requires.  v2 C{PROXY} with C{AF_UNSPEC} is accepted as family C{UNKNOWN} with its block
    ignored likewise.  C{DGRAM} is an error: meshproxy relays TCP only.
  - v2 C{AF_UNIX} paths are decoded as UTF-8 with C{surrogateescape} (so C{os.fsencode} gives the bytes back)
    up to the first NUL; an abstract-namespace address keeps its leading NUL, with trailing NUL padding
    removed.  The port is 0.
  - v2 TLVs are returned raw and in order, after checking that they exactly fill the rest of the header; the
    CRC32C TLV is not verified (the specification lets a receiver not support it).
  - A v2 header longer than C{maxLength} is an error as soon as its length field arrives, since it could
    never fit in the sniffing buffer.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Final, TypeAlias

import attrs

from meshproxy.needmore import NEED_MORE, NeedMore

__all__ = [
    "NEED_MORE",
    "NeedMore",
    "ProxyHeader",
    "ProxyHeaderError",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "parseProxyHeader",
]

V1_SIGNATURE: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH: Final = 16
DEFAULT_MAX_LENGTH: Final = 16384

_V1_PROTOCOLS: Final = (b"TCP4", b"TCP6", b"UNKNOWN")
_V1_FIELD_NAMES: Final = ("source address", "destination address", "source port", "destination port")

_OCTET: Final = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4: Final = re.compile(rb"(?:%s\.){3}%s" % (_OCTET, _OCTET))
# Every prefix of a valid octet is itself a valid octet, so this is exactly the set of prefixes of _IPV4.
_IPV4_PREFIX: Final = re.compile(rb"(?:%s\.){0,3}%s?" % (_OCTET, _OCTET))
_IPV6_TEXT: Final = re.compile(rb"[0-9A-Fa-f:.]{0,45}")
_PORT: Final = re.compile(rb"0|[1-9][0-9]{0,4}")

_V2_PREAMBLE: Final = struct.Struct("!BBH")
_V2_INET: Final = struct.Struct("!4s4sHH")
_V2_INET6: Final = struct.Struct("!16s16sHH")
_TLV_HEAD: Final = struct.Struct("!BH")
# Address block sizes for AF_UNSPEC, AF_INET, AF_INET6 and AF_UNIX.
_V2_ADDRESS_LENGTHS: Final = (0, 12, 36, 216)
_V2_FAMILIES: Final = ("UNKNOWN", "TCP4", "TCP6", "UNIX")
_UNIX_PATH_LENGTH: Final = 108


@attrs.frozen
class ProxyHeader:
    """
    A complete, valid PROXY protocol header.

    @ivar version: 1 or 2.
    @ivar command: C{"PROXY"} (addresses are the client's) or C{"LOCAL"} (v2 health checks: use the real
        connection's addresses).
    @ivar family: C{"TCP4"}, C{"TCP6"}, C{"UNIX"} or C{"UNKNOWN"}.
    @ivar source: the client's (address text, port), or L{None} for C{UNKNOWN}; for C{UNIX} the path and 0.
    @ivar destination: the address the client connected to, in the same form as C{source}.
    @ivar length: how many bytes at the start of the stream the header takes; strip them before sniffing on.
    @ivar tlvs: the v2 type-length-value extensions as (type, value) pairs, in order.
    """

    version: int
    command: str
    family: str
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int
    tlvs: tuple[tuple[int, bytes], ...] = ()


@attrs.frozen
class ProxyHeaderError:
    """
    The stream does not begin with a valid PROXY protocol header; the specification says to drop it.

    A value rather than an exception, so that callers branch on it like on L{NEED_MORE}.

    @ivar reason: a short human-readable explanation, for logs.
    """

    reason: str


def parseProxyHeader(
    data: bytes | bytearray, *, maxLength: int = DEFAULT_MAX_LENGTH
) -> NeedMore | ProxyHeader | ProxyHeaderError:
    """
    Parse the PROXY protocol header at the start of C{data}.

    @param data: everything received so far on the connection.
    @param maxLength: the most bytes the caller will buffer; a v2 header announcing more is an error.
    @return: L{NEED_MORE} while C{data} is a prefix of a header that could still be valid, a L{ProxyHeader}
        once one is complete (bytes after it are left alone), otherwise a L{ProxyHeaderError}.
    """
    if not data:
        return NEED_MORE
    if not isinstance(data, bytes):
        # No header reaches past these bytes, so no more of a mutable buffer needs copying.
        data = bytes(data[: max(maxLength, V1_MAX_LENGTH)])
    first = data[0]
    if first == V1_SIGNATURE[0]:
        return _parseV1(data)
    if first == V2_SIGNATURE[0]:
        return _parseV2(data, maxLength)
    return ProxyHeaderError("no PROXY protocol signature")


# Version 1


def _parseV1(data: bytes) -> NeedMore | ProxyHeader | ProxyHeaderError:
    """
    Parse a v1 (text) header; C{data} starts with C{P}.
    """
    if not V1_SIGNATURE.startswith(data[: len(V1_SIGNATURE)]):
        return ProxyHeaderError("no PROXY protocol signature")
    if len(data) <= len(V1_SIGNATURE):
        return NEED_MORE
    end = data.find(b"\r\n", len(V1_SIGNATURE), V1_MAX_LENGTH)
    if end >= 0:
        checked = _checkV1Body(data[len(V1_SIGNATURE) : end], True)
        if isinstance(checked, ProxyHeaderError):
            return checked
        assert checked is not None
        family, source, destination = checked
        return ProxyHeader(1, "PROXY", family, source, destination, end + 2)
    body = data[len(V1_SIGNATURE) : V1_MAX_LENGTH]
    if body.endswith(b"\r"):
        # Only a LF can follow, which would end the line here: what is before the CR must be complete.
        checked = _checkV1Body(body[:-1], True)
    else:
        checked = _checkV1Body(body, False)
    if isinstance(checked, ProxyHeaderError):
        return checked
    if len(data) >= V1_MAX_LENGTH:
        return ProxyHeaderError("no CRLF in the first 107 bytes")
    return NEED_MORE


_V1Addresses: TypeAlias = "tuple[str, tuple[str, int] | None, tuple[str, int] | None]"


def _checkV1Body(body: bytes, complete: bool) -> _V1Addresses | ProxyHeaderError | None:
    """
    Check the text between C{"PROXY "} and CRLF.

    @param complete: whether C{body} is the whole line; if not, its last field may still grow.
    @return: (family, source, destination) for a complete valid body, L{None} for a valid partial one, or
        the first error.
    """
    protocol, space, rest = body.partition(b" ")
    if not space:
        if complete:
            if protocol == b"UNKNOWN":
                return ("UNKNOWN", None, None)
            if protocol in _V1_PROTOCOLS:
                return ProxyHeaderError("missing addresses")
        elif any(known.startswith(protocol) for known in _V1_PROTOCOLS):
            return None
        return ProxyHeaderError("unknown protocol family")
    if protocol == b"UNKNOWN":
        return ("UNKNOWN", None, None) if complete else None
    if protocol not in _V1_PROTOCOLS:
        return ProxyHeaderError("unknown protocol family")
    isIPv6 = protocol == b"TCP6"
    fields = rest.split(b" ")
    if len(fields) > 4:
        return ProxyHeaderError("too many fields")
    last = len(fields) - 1
    for index, field in enumerate(fields):
        whole = complete or index < last
        if index < 2:
            if isIPv6:
                valid = _isIPv6(field) if whole else _isIPv6Prefix(field)
            else:
                valid = (_IPV4 if whole else _IPV4_PREFIX).fullmatch(field) is not None
        else:
            valid = _isPort(field) or (not whole and not field)
        if not valid:
            return ProxyHeaderError("bad " + _V1_FIELD_NAMES[index])
    if not complete:
        return None
    if len(fields) < 4:
        return ProxyHeaderError("missing " + _V1_FIELD_NAMES[len(fields)])
    source, destination, sourcePort, destinationPort = (field.decode("ascii") for field in fields)
    if isIPv6:
        source, destination = _ipv6Text(source), _ipv6Text(destination)
    return (
        "TCP6" if isIPv6 else "TCP4",
        (source, int(sourcePort)),
        (destination, int(destinationPort)),
    )


def _isPort(field: bytes) -> bool:
    """
    Whether C{field} is a decimal port 0-65535 without leading zeros.
    """
    return _PORT.fullmatch(field) is not None and int(field) <= 0xFFFF


def _isIPv6(field: bytes) -> bool:
    """
    Whether C{field} is IPv6 address text (hex groups, one C{::} at most, optionally a dotted IPv4 tail).
    """
    if not field or _IPV6_TEXT.fullmatch(field) is None:
        return False
    try:
        ipaddress.IPv6Address(field.decode("ascii"))
    except ValueError:
        return False
    return True


def _isIPv6Prefix(field: bytes) -> bool:
    """
    Whether some continuation of C{field} is valid IPv6 address text.

    When a dotted IPv4 tail has begun, padding it with zeros is the only way on; otherwise one of a few
    short endings completes any viable prefix (a prefix with room for more groups takes C{::}; one ending
    in a single colon takes a group or a second colon).
    """
    if _IPV6_TEXT.fullmatch(field) is None:
        return False
    if b"." in field:
        head, colon, tail = field.rpartition(b":")
        if _IPV4_PREFIX.fullmatch(tail) is None:
            return False
        if not tail or tail.endswith(b"."):
            tail += b"0"
        tail += b".0" * (3 - tail.count(b"."))
        return _isIPv6(head + colon + tail)
    return any(_isIPv6(field + ending) for ending in (b"", b"0", b":", b"::"))


def _ipv6Text(text: str) -> str:
    """
    The compressed form of a valid IPv6 address, with an IPv4-mapped address written as in RFC 5952.
    """
    return _ipv6Format(ipaddress.IPv6Address(text))


def _ipv6Format(address: ipaddress.IPv6Address) -> str:
    """
    Format an IPv6 address the same way on every Python version.
    """
    mapped = address.ipv4_mapped
    if mapped is not None:
        return "::ffff:" + str(mapped)
    return str(address)


# Version 2


def _parseV2(data: bytes, maxLength: int) -> NeedMore | ProxyHeader | ProxyHeaderError:
    """
    Parse a v2 (binary) header; C{data} starts with CR.  Each field is judged as soon as it arrives.
    """
    size = len(data)
    if data[: len(V2_SIGNATURE)] != V2_SIGNATURE[:size]:
        return ProxyHeaderError("no PROXY protocol signature")
    if size <= len(V2_SIGNATURE):
        return NEED_MORE
    versionCommand = data[12]
    if versionCommand >> 4 != 2:
        return ProxyHeaderError("unsupported version %d" % (versionCommand >> 4,))
    command = versionCommand & 0x0F
    if command > 1:
        return ProxyHeaderError("unknown command %d" % (command,))
    isLocal = command == 0
    if size < 14:
        return NEED_MORE
    familyIndex = data[13] >> 4
    transport = data[13] & 0x0F
    if isLocal:
        # The specification says the family is ignored for LOCAL, so any value is accepted.
        addressLength = 0
    else:
        if familyIndex >= len(_V2_FAMILIES):
            return ProxyHeaderError("unknown address family %d" % (familyIndex,))
        if transport > 2:
            return ProxyHeaderError("unknown transport %d" % (transport,))
        if transport == 2:
            return ProxyHeaderError("datagram transport is not supported")
        if transport == 0 and familyIndex != 0:
            return ProxyHeaderError("unspecified transport for a known family")
        addressLength = _V2_ADDRESS_LENGTHS[familyIndex]
    if size < V2_FIXED_LENGTH:
        return NEED_MORE
    _, _, blockLength = _V2_PREAMBLE.unpack_from(data, 12)
    if blockLength < addressLength:
        return ProxyHeaderError("address block shorter than its family needs")
    length = V2_FIXED_LENGTH + blockLength
    if length > maxLength:
        return ProxyHeaderError("header longer than %d bytes" % (maxLength,))
    if size < length:
        return NEED_MORE
    if isLocal:
        return ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, length)
    if familyIndex == 0:
        return ProxyHeader(2, "PROXY", "UNKNOWN", None, None, length)
    source: tuple[str, int]
    destination: tuple[str, int]
    if familyIndex == 1:
        sourceAddress, destinationAddress, sourcePort, destinationPort = _V2_INET.unpack_from(data, 16)
        source = (str(ipaddress.IPv4Address(sourceAddress)), sourcePort)
        destination = (str(ipaddress.IPv4Address(destinationAddress)), destinationPort)
    elif familyIndex == 2:
        sourceAddress, destinationAddress, sourcePort, destinationPort = _V2_INET6.unpack_from(data, 16)
        source = (_ipv6Format(ipaddress.IPv6Address(sourceAddress)), sourcePort)
        destination = (_ipv6Format(ipaddress.IPv6Address(destinationAddress)), destinationPort)
    else:
        middle = V2_FIXED_LENGTH + _UNIX_PATH_LENGTH
        source = (_unixPath(data[V2_FIXED_LENGTH:middle]), 0)
        destination = (_unixPath(data[middle : middle + _UNIX_PATH_LENGTH]), 0)
    tlvs = _parseTLVs(data, V2_FIXED_LENGTH + addressLength, length)
    if isinstance(tlvs, ProxyHeaderError):
        return tlvs
    return ProxyHeader(2, "PROXY", _V2_FAMILIES[familyIndex], source, destination, length, tlvs)


def _unixPath(raw: bytes) -> str:
    """
    Decode a NUL-padded C{sun_path}; an abstract-namespace name keeps its leading NUL.
    """
    if raw[:1] == b"\x00":
        name = raw[1:].rstrip(b"\x00")
        return "\x00" + name.decode("utf-8", "surrogateescape") if name else ""
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _parseTLVs(data: bytes, start: int, end: int) -> tuple[tuple[int, bytes], ...] | ProxyHeaderError:
    """
    Split C{data[start:end]} into (type, value) pairs; they must fill it exactly.
    """
    tlvs = []
    position = start
    while position < end:
        if end - position < _TLV_HEAD.size:
            return ProxyHeaderError("truncated TLV")
        kind, length = _TLV_HEAD.unpack_from(data, position)
        position += _TLV_HEAD.size
        if position + length > end:
            return ProxyHeaderError("TLV longer than the header")
        tlvs.append((kind, bytes(data[position : position + length])))
        position += length
    return tuple(tlvs)
