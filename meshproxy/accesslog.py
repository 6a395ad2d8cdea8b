"""
Access logs: one record per HTTP request or TCP session, written to the listener's
C{access_logs} (MOSN's key).

A record is built only when the listener has an access log, so the request path pays nothing
otherwise. Writes are buffered in memory and flushed on a one-second tick (and on stop), never
one write call per request.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from meshproxy.config import AccessLogConfig
from meshproxy.config.accesslogs import VARIABLE

#: MOSN/Envoy response flags for meshproxy's failure reasons.
RESPONSE_FLAGS = {
    "no_route": "NR",
    "no_cluster_header": "NR",
    "cluster_not_found": "NC",
    "upstream_connect_failed": "UF",
    "upstream_connect_timeout": "UF",
    "connect_failed": "UF",
    "no_healthy_upstream": "UH",
    "no_healthy_host": "UH",
    "upstream_overflow": "UO",
    "upstream_queue_timeout": "UO",
    "upstream_timeout": "UT",
    "upstream_reset": "UC",
    "upstream_tls_failed": "UF",
    "upstream_protocol_error": "UPE",
    "request_header_timeout": "DT",
    "request_body_timeout": "DT",
    "idle_timeout": "SI",
    "downstream_reset": "DC",
}

FLUSH_INTERVAL = 1.0
FLUSH_BYTES = 256 * 1024


def responseFlag(reason: str) -> str:
    """
    The response flag for a failure reason (C{-} when there was none), as MOSN and Envoy spell
    them; a malformed request is C{DPE}.
    """
    if not reason:
        return "-"
    return RESPONSE_FLAGS.get(reason, "DPE")


def formatRecord(record: Mapping[str, Any], logFormat: str | None) -> str:
    """
    One line: the record as JSON, or C{logFormat} with each C{%variable%} replaced (C{-} when the
    record has no value for it).
    """
    if logFormat is None:
        return json.dumps(record, separators=(",", ":"), default=str)

    def value(match: Any) -> str:
        found = record.get(match.group(1).lower())
        return "-" if found is None or found == "" else str(found)

    return VARIABLE.sub(value, logFormat)


class AccessLogWriter:
    """
    One access log destination (a file, or stdout/stderr), shared by every listener naming it.
    """

    log = Logger()

    def __init__(self, path: str, clock: IReactorTime, opener: Callable[[str], IO[str]] | None = None) -> None:
        self.path = path
        self._opener = opener or (lambda p: open(p, "a", encoding="utf-8"))
        self._file: IO[str] | None = None
        self._lines: list[str] = []
        self._size = 0
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = clock

    def start(self) -> None:
        """
        Open the destination and start the flush tick.
        """
        self._file = self._open()
        if not self._flusher.running:
            self._flusher.start(FLUSH_INTERVAL, now=False)

    def _open(self) -> IO[str]:
        if self.path == "stdout":
            return sys.stdout
        if self.path == "stderr":
            return sys.stderr
        return self._opener(self.path)

    def write(self, line: str) -> None:
        """
        Queue one line (flushed within a second, or at once past 256 KiB).
        """
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """
        Write out what is queued.
        """
        if not self._lines or self._file is None:
            return
        lines, self._lines, self._size = self._lines, [], 0
        try:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()
        except OSError as e:
            self.log.error("access log {path}: {error}; {count} records lost", path=self.path, error=e,
                           count=len(lines))

    def reopen(self) -> None:
        """
        Close and open the file again (after logrotate moved it).
        """
        self.flush()
        if self._file is not None and self.path not in ("stdout", "stderr"):
            self._file.close()
        self._file = self._open()

    def stop(self) -> None:
        """
        Flush and close.
        """
        if self._flusher.running:
            self._flusher.stop()
        self.flush()
        if self._file is not None and self.path not in ("stdout", "stderr"):
            self._file.close()
        self._file = None


class AccessLog:
    """
    A listener's access logs: each record goes to every configured destination in its format.
    """

    def __init__(self, targets: list[tuple[AccessLogWriter, str | None]]) -> None:
        self.targets = targets

    def __bool__(self) -> bool:
        return bool(self.targets)

    def record(self, record: Mapping[str, Any]) -> None:
        """
        Write one record to every destination.
        """
        for writer, logFormat in self.targets:
            writer.write(formatRecord(record, logFormat))


class AccessLogs:
    """
    Every access log writer of one configuration, one per destination path.
    """

    def __init__(self, clock: IReactorTime, opener: Callable[[str], IO[str]] | None = None) -> None:
        self._clock = clock
        self._opener = opener
        self.writers: dict[str, AccessLogWriter] = {}

    def forListener(self, configs: tuple[AccessLogConfig, ...]) -> AccessLog:
        """
        The L{AccessLog} for a listener's C{access_logs}.
        """
        targets = []
        for config in configs:
            writer = self.writers.get(config.path)
            if writer is None:
                writer = self.writers[config.path] = AccessLogWriter(config.path, self._clock, self._opener)
            targets.append((writer, config.logFormat))
        return AccessLog(targets)

    def start(self) -> None:
        for writer in self.writers.values():
            writer.start()

    def stop(self) -> None:
        for writer in self.writers.values():
            writer.stop()

    def reopen(self) -> None:
        for writer in self.writers.values():
            writer.reopen()


def startTime(seconds: float) -> str:
    """
    An ISO 8601 UTC timestamp with milliseconds.
    """
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + ".%03dZ" % int((seconds - whole) * 1000)


def formatAddress(address: tuple[str, int] | None) -> str | None:
    """
    C{host:port}, with IPv6 hosts in brackets; L{None} for no address (a unix socket peer).
    """
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def httpRecord(
    downstream: Any,
    head: Any,
    started: float,
    now: float,
    responseAt: float,
    bytesReceived: int,
    bytesSent: int,
    status: int,
    failure: str,
    host: Any,
    cluster: Any,
    requestId: bytes,
) -> dict[str, Any]:
    """
    The access-log record of one HTTP exchange (times in milliseconds).
    """
    return {
        "start_time": startTime(started),
        "duration": round((now - started) * 1000, 3),
        "response_received_duration": round((responseAt - started) * 1000, 3) if responseAt else None,
        "bytes_received": bytesReceived,
        "bytes_sent": bytesSent,
        "protocol": "HTTP/" + head.version.decode("ascii"),
        "response_code": status or None,
        "response_flag": responseFlag(failure),
        "downstream_remote_address": formatAddress(downstream.clientAddress),
        "downstream_local_address": formatAddress(downstream.localAddress),
        "upstream_host": host.address if host is not None else None,
        "upstream_cluster": cluster.name if cluster is not None else None,
        "listener_name": downstream.listenerName,
        "request_method": head.method.decode("latin-1"),
        "request_host": head.host.decode("latin-1") if head.host is not None else None,
        "request_path": head.target.decode("latin-1"),
        "request_id": requestId.decode("latin-1") or None,
    }
