"""
Tests for L{meshproxy.accesslog} and the C{access_logs} config.
"""

from __future__ import annotations

import io
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.accesslog import AccessLogs, AccessLogWriter, formatRecord, responseFlag, startTime
from meshproxy.config import AccessLogConfig, ConfigError
from tests.support import makeConfig, tcpListener


class FormatTests(SynchronousTestCase):
    """
    Record formatting.
    """

    def test_jsonDefault(self) -> None:
        """
        Without a format a record is one compact JSON object.
        """
        line = formatRecord({"response_code": 200, "request_path": "/a b"}, None)
        self.assertEqual(json.loads(line), {"response_code": 200, "request_path": "/a b"})
        self.assertNotIn("\n", line)

    def test_mosnFormat(self) -> None:
        """
        MOSN's %variable% template is filled in; missing or empty values print as '-'; names are
        case-insensitive.
        """
        record = {"response_code": 502, "response_flag": "UF", "upstream_host": None, "request_id": ""}
        self.assertEqual(
            formatRecord(record, "%RESPONSE_CODE% %response_flag% %upstream_host% %request_id% 100%"),
            "502 UF - - 100%",
        )

    def test_flags(self) -> None:
        """
        Failure reasons map to MOSN/Envoy response flags; none is '-', a parse error is DPE.
        """
        self.assertEqual(
            [responseFlag(r) for r in ("", "no_route", "upstream_timeout", "upstream_connect_failed", "bad-token")],
            ["-", "NR", "UT", "UF", "DPE"],
        )

    def test_startTime(self) -> None:
        """
        Timestamps are ISO 8601 UTC with milliseconds.
        """
        self.assertEqual(startTime(86400.25), "1970-01-02T00:00:00.250Z")


class WriterTests(SynchronousTestCase):
    """
    Buffered writing on a clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.files: list[io.StringIO] = []

        def opener(path: str) -> io.StringIO:
            f = io.StringIO()
            f.close = lambda: None  # type: ignore[method-assign]
            self.files.append(f)
            return f

        self.writer = AccessLogWriter("/var/log/x.log", self.clock, opener)
        self.writer.start()

    def test_flushOnTick(self) -> None:
        """
        Lines are held until the one-second tick, then written together.
        """
        self.writer.write("a")
        self.writer.write("b")
        self.assertEqual(self.files[0].getvalue(), "")
        self.clock.advance(1)
        self.assertEqual(self.files[0].getvalue(), "a\nb\n")

    def test_flushWhenLarge(self) -> None:
        """
        Past 256 KiB queued, the lines are written at once.
        """
        self.writer.write("x" * (256 * 1024))
        self.assertEqual(len(self.files[0].getvalue()), 256 * 1024 + 1)

    def test_reopenAndStop(self) -> None:
        """
        reopen() flushes to the old file and opens a new one; stop() flushes and stops the tick.
        """
        self.writer.write("old")
        self.writer.reopen()
        self.writer.write("new")
        self.writer.stop()
        self.assertEqual([f.getvalue() for f in self.files], ["old\n", "new\n"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_sharedPerPath(self) -> None:
        """
        Listeners naming the same path share one writer, each with its own format.
        """
        logs = AccessLogs(self.clock)
        a = logs.forListener((AccessLogConfig("/x"), AccessLogConfig("/y", "%response_code%")))
        b = logs.forListener((AccessLogConfig("/x", "%request_path%"),))
        self.assertEqual(sorted(logs.writers), ["/x", "/y"])
        self.assertIs(a.targets[0][0], b.targets[0][0])
        self.assertFalse(logs.forListener(()))


class AccessLogConfigTests(SynchronousTestCase):
    """
    The listener's access_logs key.
    """

    def test_parsed(self) -> None:
        """
        Each entry keeps its path and format.
        """
        config = makeConfig(listeners=[tcpListener(access_logs=[
            {"log_path": "/var/log/a.log"}, {"log_path": "stdout", "log_format": "%start_time% %duration%"}])])
        self.assertEqual(
            config.listeners[0].accessLogs,
            (AccessLogConfig("/var/log/a.log", None), AccessLogConfig("stdout", "%start_time% %duration%")),
        )

    def test_unknownVariable(self) -> None:
        """
        A misspelt variable is an error naming it, with a suggestion.
        """
        error = self.assertRaises(ConfigError, makeConfig, listeners=[tcpListener(access_logs=[
            {"log_path": "/x", "log_format": "%respons_code%"}])])
        [problem] = error.problems
        self.assertEqual(problem.path, "servers[0].listeners[0].access_logs[0].log_format")
        self.assertIn("unknown variable %respons_code% (did you mean 'response_code'?)", problem.message)
