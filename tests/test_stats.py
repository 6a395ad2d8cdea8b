"""
Tests for L{meshproxy.stats}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.stats import StatsStore


class StatsStoreTests(SynchronousTestCase):
    """
    Counters, gauges and their exposition.
    """

    def test_sameSeriesSameObject(self) -> None:
        """
        Asking twice for a name and labels gives the same counter; other labels another.
        """
        store = StatsStore()
        a = store.counter("x_total", "help", listener="a")
        self.assertIs(store.counter("x_total", "help", listener="a"), a)
        self.assertIsNot(store.counter("x_total", "help", listener="b"), a)
        a.inc()
        a.inc(4)
        self.assertEqual(store.value("x_total", listener="a"), 5)
        self.assertEqual(store.value("x_total", listener="b"), 0)
        self.assertEqual(store.value("missing"), 0)

    def test_kindClash(self) -> None:
        """
        One name cannot be both a counter and a gauge.
        """
        store = StatsStore()
        store.counter("x", "help")
        self.assertRaises(ValueError, store.gauge, "x", "help")

    def test_prometheus(self) -> None:
        """
        The text format has HELP and TYPE lines, sorted label sets and escaped label values.
        """
        store = StatsStore()
        store.counter("cx_total", "Connections.", listener='we"ird').inc(3)
        store.gauge("active", "Open now.").value = 2
        self.assertEqual(
            store.prometheus(),
            "# HELP meshproxy_active Open now.\n"
            "# TYPE meshproxy_active gauge\n"
            "meshproxy_active 2\n"
            "# HELP meshproxy_cx_total Connections.\n"
            "# TYPE meshproxy_cx_total counter\n"
            'meshproxy_cx_total{listener="we\\"ird"} 3\n',
        )

    def test_asDict(self) -> None:
        """
        The JSON view lists each series with its labels.
        """
        store = StatsStore()
        store.counter("cx_total", "Connections.", listener="a").inc()
        self.assertEqual(
            store.asDict(),
            {"meshproxy_cx_total": {"type": "counter", "help": "Connections.",
                                    "series": [{"labels": {"listener": "a"}, "value": 1}]}},
        )
