"""Prometheus metrics: counters and histograms observed in-process plus *collectors*, functions
called at scrape time that read a gauge's current values (for example from the registry's job
records). ``GET /metrics`` renders them all in the Prometheus text format (version 0.0.4).
Adding a gauge is one call::

    state.metrics.collector(
        "contextkit_online_rows", "Rows in the online store per view.", "gauge",
        ("workspace", "view"), lambda: [(("prod", "user_profile"), 1000)],
    )
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# Latency buckets (seconds): dense below 10 ms, where the online endpoints live.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Family:
    def __init__(self, name: str, help: str, kind: str, labels: Sequence[str]) -> None:
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name):
            raise ValueError(f"invalid metric name {name!r}")
        self.name, self.help, self.kind, self.labels = name, help, kind, tuple(labels)
        self._lock = threading.Lock()


class Counter(_Family):
    """A monotonic count per label values: ``counter.inc("GET", "/health")``."""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        super().__init__(name, help, "counter", labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        with self._lock:
            self.values[label_values] = self.values.get(label_values, 0.0) + amount

    def samples(self) -> Iterable[tuple[str, tuple[str, ...], float]]:
        for labels, value in list(self.values.items()):
            yield self.name, labels, value


class Histogram(_Family):
    """Observations in cumulative buckets: ``histogram.observe(0.0012, "/v1/features")``."""

    def __init__(
        self, name: str, help: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help, "histogram", labels)
        self.buckets = tuple(sorted(buckets))
        # label values -> [count per bucket (non-cumulative; last = +Inf), sum]
        self.values: dict[tuple[str, ...], list[Any]] = {}

    def observe(self, value: float, *label_values: str) -> None:
        with self._lock:
            entry = self.values.get(label_values)
            if entry is None:
                entry = self.values[label_values] = [[0] * (len(self.buckets) + 1), 0.0]
            entry[0][bisect_left(self.buckets, value)] += 1
            entry[1] += value

    def samples(self) -> Iterable[tuple[str, tuple[str, ...], float]]:
        for labels, (counts, total) in list(self.values.items()):
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                yield f"{self.name}_bucket", (*labels, _number(bound)), running
            yield f"{self.name}_sum", labels, total
            yield f"{self.name}_count", labels, running


class _Collected(_Family):
    def __init__(self, name, help, kind, labels, collect) -> None:
        super().__init__(name, help, kind, labels)
        self.collect = collect

    def samples(self) -> Iterable[tuple[str, tuple[str, ...], float]]:
        for labels, value in self.collect():
            yield self.name, tuple(str(v) for v in labels), value


class Metrics:
    """The server's metric families, rendered by :meth:`render` for ``GET /metrics``."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self.requests = self.counter(
            "contextkit_http_requests_total",
            "HTTP requests answered, by endpoint (route template), status and service.",
            ("method", "endpoint", "status", "workspace", "service"),
        )
        self.latency = self.histogram(
            "contextkit_http_request_duration_seconds",
            "Time from the request's arrival to its last response byte, per endpoint and service.",
            ("method", "endpoint", "workspace", "service"),
        )
        self.auth_failures = self.counter(
            "contextkit_auth_failures_total",
            "Requests refused by access control (missing, invalid, revoked, expired, forbidden).",
            ("reason",),
        )
        self.rate_limited = self.counter(
            "contextkit_rate_limited_total", "Requests refused with 429 by the rate limiter.", ()
        )
        self.started_at = time.time()
        self.collector(
            "contextkit_process_start_time_seconds",
            "When this server process started (Unix time).",
            "gauge",
            ("pid",),
            lambda: [((str(os.getpid()),), self.started_at)],
        )

    def _add(self, family: _Family) -> Any:
        if family.name in self._families:
            raise ValueError(f"metric {family.name!r} is already registered")
        self._families[family.name] = family
        return family

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return self._add(Histogram(name, help, labels, buckets))

    def collector(
        self,
        name: str,
        help: str,
        kind: str,
        labels: Sequence[str],
        collect: Callable[[], Iterable[tuple[Sequence[Any], float]]],
    ) -> None:
        """A family whose samples ``collect()`` returns at each scrape, as
        ``(label values, value)`` pairs."""
        if kind not in ("gauge", "counter"):
            raise ValueError("a collector is a gauge or a counter")
        self._add(_Collected(name, help, kind, labels, collect))

    def render(self) -> str:
        """Every family in the Prometheus text exposition format."""
        lines: list[str] = []
        for family in self._families.values():
            try:
                samples = list(family.samples())
            except Exception:  # a failing collector must not take /metrics down with it
                logging.getLogger("contextkit.server").exception(
                    "metrics collector %s failed", family.name
                )
                continue
            help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(f"# HELP {family.name} {help_text}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            names = family.labels
            for sample_name, values, value in samples:
                label_names = (*names, "le") if len(values) > len(names) else names
                if label_names:
                    pairs = ",".join(
                        f'{n}="{_escape(v)}"' for n, v in zip(label_names, values, strict=True)
                    )
                    lines.append(f"{sample_name}{{{pairs}}} {_number(value)}")
                else:
                    lines.append(f"{sample_name} {_number(value)}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
