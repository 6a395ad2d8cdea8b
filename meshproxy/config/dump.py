"""
L{configDump}: the effective configuration as JSON-ready data, for the admin C{/api/v1/config_dump}.

The dump walks the attrs model generically, so new fields appear in it without changes here.  Network
filters carry their MOSN C{type}.  TLS private keys (any field called C{privateKey}) are redacted.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import attrs

from meshproxy.config.model import Config

REDACTED = "[redacted]"
_SECRET_FIELDS = frozenset({"privatekey"})


def configDump(config: Config) -> dict[str, Any]:
    """
    The whole model, with every default filled in, as C{json.dumps}-able data.
    """
    dumped = _dump(config)
    assert isinstance(dumped, dict)
    return dumped


def _dump(value: Any) -> Any:
    if attrs.has(type(value)):
        result: dict[str, Any] = {}
        filterType = getattr(type(value), "filterType", None)
        if isinstance(filterType, str):
            result["type"] = filterType
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            if field.name.lower().replace("_", "") in _SECRET_FIELDS and item:
                result[field.name] = REDACTED
            else:
                result[field.name] = _dump(item)
        return result
    if isinstance(value, (tuple, list)):
        return [_dump(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _dump(item) for key, item in value.items()}
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
