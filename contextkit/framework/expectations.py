"""Declarative expectations on a view's data, checked by every materialization job.

A view declares them as keyword arguments::

    @batch_feature_view(
        ...,
        expect_not_null=["tier"],                     # or {"tier": 0.01}: at most 1% nulls
        expect_between={"amount_sum_7d": (0, 10_000)},  # inclusive; None leaves a side open
        max_staleness=timedelta(hours=2),             # newest value at most 2 h older than the job
        max_drift=0.25,                               # population stability index vs the reference
        on_expectation_failure="warn",                # or "fail"
    )

:func:`expectations_spec` turns them into an :class:`~contextkit.framework.specs.ExpectationsSpec`
(raising ``ValueError`` for malformed ones); :func:`expectation_problems` checks them against a
view's columns at ``plan`` time; :func:`evaluate` checks them against the statistics of a job's rows
(see :mod:`contextkit.compute.quality`). Everything here is pure: no I/O, no heavy imports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from contextkit.framework.durations import format_seconds, to_seconds
from contextkit.framework.specs import ExpectationsSpec
from contextkit.types import NUMERIC_DTYPES

ON_FAILURE = ("warn", "fail")


def expectations_spec(
    *,
    not_null: Sequence[str] | Mapping[str, float] | None = None,
    between: Mapping[str, Sequence[float | None]] | None = None,
    max_staleness: timedelta | str | int | None = None,
    max_drift: float | None = None,
    on_failure: str = "warn",
) -> ExpectationsSpec | None:
    """The spec of a view's expectations, or None when it declares none."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f'on_expectation_failure must be "warn" or "fail", got {on_failure!r}')
    rates: dict[str, float] = {}
    if isinstance(not_null, str):
        raise ValueError(f'expect_not_null must be a list of columns: write ["{not_null}"]')
    if isinstance(not_null, Mapping):
        for column, rate in not_null.items():
            if not _number(rate) or not 0 <= rate < 1:
                raise ValueError(
                    f"expect_not_null[{column!r}] must be the largest null rate allowed, a "
                    f"number in [0, 1), got {rate!r}"
                )
            rates[str(column)] = float(rate)
    elif not_null is not None:
        rates = {str(column): 0.0 for column in not_null}
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for column, bounds in (between or {}).items():
        if isinstance(bounds, str | bytes) or not isinstance(bounds, Sequence) or len(bounds) != 2:
            raise ValueError(
                f"expect_between[{column!r}] must be a (low, high) pair, got {bounds!r}"
            )
        low, high = bounds
        for bound in (low, high):
            if bound is not None and (not _number(bound) or not math.isfinite(bound)):
                raise ValueError(f"expect_between[{column!r}]: bounds are numbers or None")
        if low is None and high is None:
            raise ValueError(f"expect_between[{column!r}] needs a low or a high bound")
        if low is not None and high is not None and low > high:
            raise ValueError(f"expect_between[{column!r}]: low {low} is above high {high}")
        ranges[str(column)] = (
            None if low is None else float(low),
            None if high is None else float(high),
        )
    staleness = None
    if max_staleness is not None:
        staleness = to_seconds(max_staleness, what="max_staleness")
    if max_drift is not None and (not _number(max_drift) or max_drift <= 0):
        raise ValueError(f"max_drift must be a positive number (a PSI), got {max_drift!r}")
    if not rates and not ranges and staleness is None and max_drift is None:
        if on_failure != "warn":
            raise ValueError("on_expectation_failure is set but the view declares no expectation")
        return None
    return ExpectationsSpec(
        not_null=rates,
        between=ranges,
        max_staleness_seconds=staleness,
        max_drift=None if max_drift is None else float(max_drift),
        on_failure=on_failure,  # type: ignore[arg-type]
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def expectation_problems(
    expectations: ExpectationsSpec | None,
    columns: Mapping[str, str | None],
    *,
    what: str = "feature",
) -> list[tuple[str, str]]:
    """``(message, hint)`` for each expectation that names a column the view does not have, or
    a range over a column that is not numeric. ``columns``: name -> dtype."""
    if expectations is None:
        return []
    out = []
    known = ", ".join(columns) or "none"
    for option, names in (("expect_not_null", expectations.not_null), ("expect_between",
                          expectations.between)):  # fmt: skip
        for name in names:
            if name not in columns:
                out.append(
                    (f"{option} names {name!r}, which is not a {what} of the view",
                     f"{what}s: {known}"),
                )  # fmt: skip
    for name in expectations.between:
        dtype = columns.get(name)
        if name in columns and dtype not in NUMERIC_DTYPES:
            out.append(
                (f"expect_between over {name!r} of type {dtype}: needs a numeric column",
                 "check a range only on int64 or float64 columns"),
            )  # fmt: skip
    return out


@dataclass(frozen=True)
class Outcome:
    """One expectation checked against a job's rows."""

    kind: str  # not_null | between | max_staleness | max_drift
    subject: str  # the column ("" for the view as a whole)
    ok: bool
    message: str
    observed: float | None = None
    threshold: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "ok": self.ok,
            "message": self.message,
            "observed": self.observed,
            "threshold": self.threshold,
        }


def evaluate(
    expectations: ExpectationsSpec | None, stats: Mapping[str, Any], *, as_of_us: int | None
) -> list[Outcome]:
    """Check each expectation against the statistics of a job's rows (``monitoring`` stats).

    ``as_of_us``: the job's "as of" time (microseconds since the epoch) that staleness is
    measured against.
    """
    if expectations is None:
        return []
    columns = stats.get("columns", {})
    rows = stats.get("rows", 0)
    out = []
    for name, allowed in expectations.not_null.items():
        column = columns.get(name, {})
        nulls = column.get("nulls", 0)
        rate = nulls / rows if rows else 0.0
        ok = rate <= allowed
        limit = "no nulls" if allowed == 0 else f"at most {allowed:.2%} nulls"
        out.append(
            Outcome(
                "not_null",
                name,
                ok,
                f"{name}: {nulls} of {rows} values are null ({rate:.2%}); expected {limit}",
                rate,
                allowed,
            )
        )
    for name, (low, high) in expectations.between.items():
        column = columns.get(name, {})
        outside = column.get("outside", 0)
        bounds = (
            f"[{'-inf' if low is None else _fmt(low)}, {'inf' if high is None else _fmt(high)}]"
        )
        seen = f"min {_fmt(column.get('min'))}, max {_fmt(column.get('max'))}"
        out.append(
            Outcome(
                "between",
                name,
                outside == 0,
                f"{name}: {outside} of {rows} values outside {bounds} ({seen})",
                outside,
                [low, high],
            )
        )
    limit_s = expectations.max_staleness_seconds
    if limit_s is not None:
        newest = stats.get("newest_event_us")
        if newest is None or as_of_us is None:
            # Nothing served at all is as stale as it gets.
            age, ok = None, False
            message = "the view holds no values, so nothing is fresh"
        else:
            age = max(0.0, (as_of_us - newest) / 1e6)
            ok = age <= limit_s
            message = (
                f"newest value is {format_age(age)} old at the job's end; expected at most "
                f"{format_seconds(limit_s)}"
            )
        out.append(Outcome("max_staleness", "", ok, message, age, limit_s))
    if expectations.max_drift is not None:
        for name, column in sorted(columns.items()):
            psi = (column.get("drift") or {}).get("psi")
            if psi is None:
                continue
            ok = psi <= expectations.max_drift
            out.append(
                Outcome(
                    "max_drift",
                    name,
                    ok,
                    f"{name}: drift (PSI) {psi:.3f} vs job {column['drift'].get('reference_job')}"
                    f"; expected at most {expectations.max_drift:g}",
                    psi,
                    expectations.max_drift,
                )
            )
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_age(seconds: float | None) -> str:
    """``"3h 12m"``, ``"2d 4h"``, ``"45s"``: a duration for people."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, _ = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"
