"""
Counters and gauges, and their Prometheus text exposition.

Hot paths hold a reference to their L{Counter} or L{Gauge} and bump C{.value} directly: no name
lookups, no locks (one reactor thread), no formatting until someone asks for the numbers.
"""

from __future__ import annotations

from typing import Callable, Iterator


class Counter:
    """
    A monotonically increasing number.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        """
        Add C{amount}.
        """
        self.value += amount


class Gauge:
    """
    A number that goes up and down (open connections, healthy hosts).
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class LiveGauge:
    """
    A gauge whose value is read from its owner when the numbers are asked for (a host's active
    requests), so the hot path updates one plain attribute and nothing else.
    """

    __slots__ = ("_read",)

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    @property
    def value(self) -> int:
        return self._read()


Labels = tuple[tuple[str, str], ...]


class Family:
    """
    One metric name with its type, help text and one series per label set.
    """

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.series: dict[Labels, Counter | Gauge | LiveGauge] = {}


class StatsStore:
    """
    Every metric of one meshproxy process, by family name and labels.

    Asking twice for the same name and labels returns the same object, so a rebuilt component
    (after a reload) keeps counting where the old one left off.
    """

    def __init__(self, prefix: str = "meshproxy_") -> None:
        self._prefix = prefix
        self._families: dict[str, Family] = {}

    def _series(self, name: str, kind: str, help: str, labels: dict[str, str]) -> Counter | Gauge:
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = Family(name, kind, help)
        elif family.kind != kind:
            raise ValueError(f"metric {name} is a {family.kind}, not a {kind}")
        key = tuple(sorted(labels.items()))
        metric = family.series.get(key)
        if metric is None or isinstance(metric, LiveGauge):
            metric = family.series[key] = Counter() if kind == "counter" else Gauge()
        return metric

    def counter(self, name: str, help: str, **labels: str) -> Counter:
        """
        The counter C{name} with C{labels}, created at zero on first use.
        """
        metric = self._series(name, "counter", help, labels)
        assert isinstance(metric, Counter)
        return metric

    def gauge(self, name: str, help: str, **labels: str) -> Gauge:
        """
        The gauge C{name} with C{labels}, created at zero on first use.
        """
        metric = self._series(name, "gauge", help, labels)
        assert isinstance(metric, Gauge)
        return metric

    def liveGauge(self, name: str, help: str, read: Callable[[], int], **labels: str) -> LiveGauge:
        """
        Register (or replace: a rebuilt owner takes over its series) the gauge C{name} with C{labels}
        whose value is C{read()}.
        """
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = Family(name, "gauge", help)
        elif family.kind != "gauge":
            raise ValueError(f"metric {name} is a {family.kind}, not a gauge")
        gauge = family.series[tuple(sorted(labels.items()))] = LiveGauge(read)
        return gauge

    def forget(self, **labels: str) -> None:
        """
        Drop every series whose labels include all of C{labels} (an upstream host that went away).
        """
        wanted = set(labels.items())
        for family in self._families.values():
            for key in [key for key in family.series if wanted.issubset(key)]:
                del family.series[key]

    def value(self, name: str, **labels: str) -> int:
        """
        The current value of one series, 0 if it does not exist (for tests and the admin API).
        """
        family = self._families.get(name)
        if family is None:
            return 0
        metric = family.series.get(tuple(sorted(labels.items())))
        return 0 if metric is None else metric.value

    def families(self) -> Iterator[Family]:
        """
        All families, sorted by name.
        """
        for name in sorted(self._families):
            yield self._families[name]

    def asDict(self) -> dict[str, object]:
        """
        A JSON-ready view: C{{name: {"type", "help", "series": [{"labels", "value"}]}}}.
        """
        return {
            self._prefix + f.name: {
                "type": f.kind,
                "help": f.help,
                "series": [{"labels": dict(k), "value": m.value} for k, m in sorted(f.series.items())],
            }
            for f in self.families()
        }

    def prometheus(self) -> str:
        """
        The Prometheus text exposition format (version 0.0.4).
        """
        lines: list[str] = []
        for family in self.families():
            name = self._prefix + family.name
            lines.append(f"# HELP {name} {_escapeHelp(family.help)}")
            lines.append(f"# TYPE {name} {family.kind}")
            for labels, metric in sorted(family.series.items()):
                if labels:
                    rendered = ",".join(f'{k}="{_escapeLabel(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{rendered}}} {metric.value}")
                else:
                    lines.append(f"{name} {metric.value}")
        return "\n".join(lines) + "\n"


def _escapeHelp(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escapeLabel(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
