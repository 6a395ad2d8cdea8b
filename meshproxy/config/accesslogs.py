"""
MOSN's listener C{access_logs}: where each request's (or TCP session's) record goes and in what form.

C{log_format} uses MOSN's C{%variable%} syntax; without it a record is one JSON object per line.
The variables meshproxy knows are listed here so that a misspelt one is a config error.
"""

from __future__ import annotations

import re
from typing import Any

from meshproxy.config.errors import Problems
from meshproxy.config.jsonvalues import didYouMean
from meshproxy.config.model import AccessLogConfig
from meshproxy.config.reader import KeySpec, iterObjects

ACCESS_LOG_KEYS = KeySpec(known=("log_path", "log_format"))

#: Every variable a C{log_format} may use: MOSN's names, plus meshproxy's request fields.
ACCESS_LOG_VARIABLES = (
    "start_time",
    "duration",
    "request_received_duration",
    "response_received_duration",
    "bytes_sent",
    "bytes_received",
    "protocol",
    "response_code",
    "response_flag",
    "upstream_local_address",
    "downstream_local_address",
    "downstream_remote_address",
    "upstream_host",
    "upstream_cluster",
    "upstream_transport_failure_reason",
    "listener_name",
    "request_method",
    "request_host",
    "request_path",
    "request_id",
)

VARIABLE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%")


def parseAccessLogs(items: list[tuple[str, Any]], problems: Problems) -> tuple[AccessLogConfig, ...]:
    """
    Read a listener's C{access_logs} list.
    """
    logs = []
    for _, fields in iterObjects(items, problems, ACCESS_LOG_KEYS):
        path = fields.string("log_path", required=True, nonEmpty=True)
        logFormat = fields.string("log_format") or None
        if logFormat is not None:
            for name in VARIABLE.findall(logFormat):
                if name.lower() not in ACCESS_LOG_VARIABLES:
                    fields.problem(
                        "log_format",
                        f"unknown variable %{name}%{didYouMean(name.lower(), ACCESS_LOG_VARIABLES)}: "
                        f"expected one of {', '.join('%' + v + '%' for v in ACCESS_LOG_VARIABLES)}",
                    )
        if path:
            logs.append(AccessLogConfig(path=path, logFormat=logFormat))
    return tuple(logs)
