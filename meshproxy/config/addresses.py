"""
Addresses: MOSN's C{ip:port} and unix socket paths, Twisted server endpoint strings, and port ranges.

Listener addresses become Twisted server endpoint strings (C{"127.0.0.1:2046"} is
C{"tcp:2046:interface=127.0.0.1"}); host addresses of clusters become a host, a port and an address family.
Hosts and ports are split with L{ipaddress}, never by splitting on every colon, so IPv6 literals work.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from meshproxy.config.jsonvalues import didYouMean

#: Endpoint types taken as Twisted server endpoint strings when written before the first colon.
ENDPOINT_TYPES = ("tcp", "tcp6", "unix", "systemd")

_TLS_ENDPOINT_TYPES = ("ssl", "tls")

#: Each endpoint type's parameters, in Twisted's positional order (as in Twisted 22.4).
_PARAMETERS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "unix": ("address", "mode", "backlog", "lockfile"),
    "systemd": ("domain", "index"),
}
_REQUIRED = {"tcp": ("port",), "tcp6": ("port",), "unix": ("address",), "systemd": ("domain", "index")}

_LISTENER_EXPECTED = (
    "expected host:port with port 1-65535, a unix socket path, or a Twisted endpoint string such as "
    "'tcp:8080:interface=127.0.0.1'"
)
_HOST_EXPECTED = (
    "expected IP:port ('10.0.0.1:80', '[::1]:80') or a unix socket path ('unix:/run/app.sock' or "
    "'/run/app.sock')"
)
_PORT = re.compile(r"[0-9]{1,5}\Z")
_DIGITS = re.compile(r"[0-9]+\Z")


class AddressError(ValueError):
    """
    An address is not valid; the message is complete and names the address.
    """


class HostnameError(AddressError):
    """
    A host address names a host instead of an IP address: that needs DNS resolution.
    """


@attrs.frozen
class HostAddress:
    """
    An upstream host's address, split.

    @ivar host: the IP address without brackets, or the unix socket path.
    @ivar port: the TCP port, 0 for a unix socket.
    @ivar family: C{"ipv4"}, C{"ipv6"} or C{"unix"}.
    """

    host: str
    port: int
    family: str


def escapeEndpoint(text: str) -> str:
    """
    Escape a value for a Twisted endpoint string (backslash, colon and equals sign).
    """
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _tokenize(description: str) -> list[str | tuple[str, str]]:
    """
    Split an endpoint string as Twisted does: arguments at unescaped colons; the first unescaped equals sign
    of an argument makes it a keyword argument; a backslash escapes the next character.
    """
    arguments: list[str | tuple[str, str]] = []
    pieces: list[str] = []
    current: list[str] = []
    characters = iter(description)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise AddressError(f"{description!r} is not a valid endpoint: it ends with a lone backslash")
            current.append(escaped)
        elif character == ":":
            pieces.append("".join(current))
            arguments.append(pieces[0] if len(pieces) == 1 else (pieces[0], pieces[1]))
            pieces, current = [], []
        elif character == "=" and not pieces:
            pieces.append("".join(current))
            current = []
        else:
            current.append(character)
    pieces.append("".join(current))
    arguments.append(pieces[0] if len(pieces) == 1 else (pieces[0], pieces[1]))
    return arguments


def checkEndpoint(description: str) -> str:
    """
    Check a Twisted server endpoint string of a type meshproxy listens on (tcp, tcp6, unix, systemd).

    @return: C{description}, unchanged.
    @raise AddressError: naming what is wrong.
    """

    def bad(reason: str) -> AddressError:
        return AddressError(f"{description!r} is not a valid endpoint: {reason}")

    arguments = _tokenize(description)
    kind = arguments[0]
    if not isinstance(kind, str):
        raise bad("it must start with the endpoint type, such as 'tcp:'")
    if kind.lower() in _TLS_ENDPOINT_TYPES:
        raise bad(
            f"{kind!r} endpoints are not used for TLS: listen on 'tcp:...' and put the certificate in the "
            "filter chain's 'tls_context'"
        )
    if kind not in _PARAMETERS:
        if kind.lower() in _PARAMETERS:
            raise bad(f"write the endpoint type in lower case: {kind.lower()!r}")
        raise bad(f"unknown endpoint type {kind!r}: expected one of {', '.join(ENDPOINT_TYPES)}")
    names = _PARAMETERS[kind]
    positional = [argument for argument in arguments[1:] if isinstance(argument, str)]
    keywords = [argument for argument in arguments[1:] if not isinstance(argument, str)]
    if len(positional) > len(names):
        raise bad(f"too many arguments for {kind}: it takes {', '.join(names)}")
    values = dict(zip(names, positional))
    for name, value in keywords:
        if name not in names:
            if kind == "systemd" and name == "name":
                raise bad("systemd 'name=' needs a newer Twisted than 22.4: use 'index='")
            raise bad(
                f"unknown {kind} parameter {name!r}{didYouMean(name, names)}: expected {', '.join(names)}"
            )
        if name in values:
            raise bad(f"{name!r} is given twice")
        values[name] = value
    for name in _REQUIRED[kind]:
        if name not in values:
            raise bad(f"{kind} needs {name!r}")
    if kind in ("tcp", "tcp6"):
        port = values["port"]
        if not _PORT.match(port) or int(port) > 65535:
            raise bad(f"{kind} needs a numeric port 0-65535, got {port!r}")
        interface = values.get("interface", "")
        if interface:
            try:
                ipaddress.ip_address(interface)
            except ValueError:
                raise bad(f"interface {interface!r} is not an IP address")
    elif kind == "unix":
        if not values["address"]:
            raise bad("unix needs a socket path")
        if not re.match(r"[0-7]{1,4}\Z", values.get("mode", "666")):
            raise bad(f"mode {values['mode']!r} is not an octal file mode such as '660'")
        if values.get("lockfile", "1") not in ("0", "1"):
            raise bad(f"lockfile {values['lockfile']!r} is not '0' or '1'")
    else:
        if values["domain"] not in ("INET", "INET6", "UNIX"):
            raise bad(f"systemd domain {values['domain']!r} is not one of INET, INET6, UNIX")
        if not _DIGITS.match(values["index"]):
            raise bad(f"systemd index {values['index']!r} is not a number")
    backlog = values.get("backlog", "50")
    if not _DIGITS.match(backlog) or int(backlog) < 1:
        raise bad(f"backlog {backlog!r} is not a positive number")
    return description


def _splitHostPort(address: str, expected: str) -> tuple[str, int, bool]:
    """
    Split C{host:port} or C{[ipv6]:port}; return the host (without brackets), the port, and whether the
    host was bracketed.
    """

    def bad(reason: str) -> AddressError:
        return AddressError(f"{address!r} is not a valid address: {reason}{expected}")

    bracketed = address.startswith("[")
    if bracketed:
        host, closing, rest = address[1:].partition("]")
        if not closing or not rest.startswith(":"):
            raise bad("")
        port = rest[1:]
    else:
        if address.count(":") > 1:
            raise bad("an IPv6 address needs brackets, as in '[::1]:8080'; ")
        host, colon, port = address.partition(":")
        if not colon:
            raise bad("")
    if not _PORT.match(port) or not 1 <= int(port) <= 65535:
        raise bad("")
    return host, int(port), bracketed


def listenerEndpoint(address: str, network: str = "tcp") -> str:
    """
    The Twisted server endpoint string for a listener address.

    C{"127.0.0.1:2046"} is C{"tcp:2046:interface=127.0.0.1"}, C{":8080"} is C{"tcp:8080"},
    C{"[::1]:8080"} is C{"tcp6:8080:interface=\\:\\:1"}, a path (or any address with MOSN's C{network}
    C{"unix"}) is C{"unix:/path"}, and a string starting with C{tcp:}, C{tcp6:}, C{unix:} or C{systemd:} is
    taken as an endpoint string as it is.

    @raise AddressError: naming what is wrong.
    """
    if not address:
        raise AddressError(f"'' is not a valid address: {_LISTENER_EXPECTED}")
    if network == "unix" or address.startswith("/"):
        return "unix:" + escapeEndpoint(address)
    kind, colon, _ = address.partition(":")
    if colon and kind.lower() in ENDPOINT_TYPES + _TLS_ENDPOINT_TYPES:
        return checkEndpoint(address)
    host, port, bracketed = _splitHostPort(address, _LISTENER_EXPECTED)
    if not host and not bracketed:
        return f"tcp:{port}"
    return socketEndpoint(host, port, address)


def socketEndpoint(host: str, port: int, written: str | None = None) -> str:
    """
    The Twisted server endpoint string for an IP address and a port (C{tcp6} for IPv6).

    @raise AddressError: if C{host} is not an IP address.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        shown = written if written is not None else host
        raise AddressError(
            f"{shown!r} is not a valid address: {host!r} is not an IP address (listeners bind to IP "
            "literals, such as '127.0.0.1:8080', '[::1]:8080' or ':8080' for all interfaces)"
        )
    kind = "tcp6" if ip.version == 6 else "tcp"
    return f"{kind}:{port}:interface={escapeEndpoint(host)}"


def parseHostAddress(address: str) -> HostAddress:
    """
    Split an upstream host address: C{IP:port}, C{[IPv6]:port}, C{unix:/path} or C{/path}.

    @raise HostnameError: if the host is a name rather than an IP address.
    @raise AddressError: if it is not an address at all.
    """
    if address.startswith("unix:") or address.startswith("/"):
        path = address[5:] if address.startswith("unix:") else address
        if not path:
            raise AddressError(f"{address!r} is not a valid host address: {_HOST_EXPECTED}")
        return HostAddress(path, 0, "unix")
    host, port, _ = _splitHostPort(address, _HOST_EXPECTED)
    if not host:
        raise AddressError(f"{address!r} is not a valid host address: {_HOST_EXPECTED}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise HostnameError(f"{address!r} is not an IP address and port: {_HOST_EXPECTED}")
    return HostAddress(host, port, "ipv6" if ip.version == 6 else "ipv4")


def parsePortRanges(text: str) -> tuple[tuple[int, int], ...]:
    """
    Parse MOSN's port list: C{"8080"}, C{"8000-9000"}, or a comma-separated list of both (inclusive ranges).
    The empty string is the empty list.

    @raise ValueError: naming the bad item.
    """
    if not text.strip():
        return ()
    ranges = []
    for item in text.split(","):
        low, dash, high = item.strip().partition("-")
        high = high if dash else low
        if not (_PORT.match(low) and _PORT.match(high)):
            raise ValueError(f"{item.strip()!r} is not a port or a port range such as '8000-9000'")
        first, last = int(low), int(high)
        if not (1 <= first <= 65535 and 1 <= last <= 65535):
            raise ValueError(f"{item.strip()!r} is out of range: ports are 1-65535")
        if first > last:
            raise ValueError(f"{item.strip()!r} is an empty range: the first port is above the last")
        ranges.append((first, last))
    return tuple(ranges)
