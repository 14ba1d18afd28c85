"""Offline retrieval: point-in-time-correct features for a table of events.

The story: a data scientist has labelled events (a user id, a time, a label) and asks
``ctx.get_features_for_events(events, "svc")`` for the features each user had *at that time*:

- attribute views: the latest feature row with feature time ``<=`` event time, null when that row
  is ``ttl`` or more older than the event; ties on (key, time) go to the largest feature values;
- aggregate views: the windows ending at the event time (``t - w < ts <= t``), all null when the
  entity has no input row in ``(t - ttl, t]`` (ttl defaults to the largest window);
- every event row comes back exactly once, in input order, with its own columns kept;
- data comes from the offline store when it covers the events, else from the sources.

Every value is checked against a brute-force Python oracle written from those rules, and against
what the online path serves for the same instant.
"""

from __future__ import annotations

import textwrap
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import contextkit
from contextkit.errors import BadRequestError, NotFoundError
from contextkit.framework import transformations
from tests.conftest import DATA_END

US = 1_000_000  # microseconds per second
DAY = 86_400
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CONFIG = """\
project: test
registry: .contextkit/registry.db
online_store: {type: sqlite, path: .contextkit/online.db}
offline_store: {type: parquet, path: .contextkit/offline}
"""


def micros(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * DAY + delta.seconds) * US + delta.microseconds


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


# ---------------------------------------------------------------------------------------------
# The oracle: the documented semantics in plain Python over integer microseconds.
# ---------------------------------------------------------------------------------------------
ATTRIBUTES = ("a", "b")  # the attribute view's features, in tie-break order

# Which columns each aggregate function may read (a: int, x: float, b: string).
COLUMNS_FOR = {
    "count": (None, "a", "x", "b"),
    "sum": ("a", "x"),
    "mean": ("a", "x"),
    "min": ("a", "x", "b"),
    "max": ("a", "x", "b"),
    "last": ("a", "x", "b"),
    "count_distinct": ("a", "b"),
}


@dataclass(frozen=True)
class Row:
    """One source row: feeds both the attribute view (a, b) and the aggregate view."""

    key: int | None
    ts: int | None  # microseconds since the epoch, UTC
    a: int | None
    b: str | None
    x: float | None


@dataclass(frozen=True)
class Agg:
    name: str
    function: str
    column: str | None
    window_s: int


@dataclass(frozen=True)
class Event:
    key: int | None
    ts: int | None


def servable(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.key is not None and r.ts is not None]


def _descending(value: Any) -> tuple:
    """Sort key of one feature value under ``DESC NULLS LAST`` (larger key wins)."""
    return (0,) if value is None else (1, value)


def expected_attributes(rows: list[Row], ttl_s: int | None, key, t) -> list[Any]:
    """``(a, b)`` of the latest row of ``key`` at or before ``t``; nulls when too old."""
    if key is None or t is None:
        return [None, None]
    candidates = [r for r in rows if r.key == key and r.ts <= t]
    if not candidates:
        return [None, None]
    latest = max(r.ts for r in candidates)
    if ttl_s and latest <= t - ttl_s * US:
        return [None, None]
    tied = [r for r in candidates if r.ts == latest]
    best = max(tied, key=lambda r: tuple(_descending(getattr(r, f)) for f in ATTRIBUTES))
    return [best.a, best.b]


def aggregate(agg: Agg, rows: list[Row]) -> Any:
    if agg.function == "count" and agg.column is None:
        return len(rows)
    pairs = [(r.ts, getattr(r, agg.column)) for r in rows]
    values = [v for _, v in pairs if v is not None]
    fn = agg.function
    if fn == "count":
        return len(values)
    if fn == "count_distinct":
        return len(set(values))
    if not values:
        return None
    if fn == "sum":
        return sum(values)
    if fn == "mean":
        return sum(values) / len(values)
    if fn == "min":
        return min(values)
    if fn == "max":
        return max(values)
    if fn == "last":  # latest non-null value; ties on time go to the largest value
        return max((ts, v) for ts, v in pairs if v is not None)[1]
    raise AssertionError(fn)


def expected_aggregates(rows: list[Row], aggs: list[Agg], ttl_s: int | None, key, t) -> list:
    """The windows ``(t - w, t]`` of ``key``; all null without an input in ``(t - ttl, t]``."""
    if key is None or t is None:
        return [None] * len(aggs)
    mine = [r for r in rows if r.key == key and r.ts <= t]
    ttl = ttl_s or max(a.window_s for a in aggs)
    if not any(r.ts > t - ttl * US for r in mine):
        return [None] * len(aggs)
    return [aggregate(a, [r for r in mine if r.ts > t - a.window_s * US]) for a in aggs]


def assert_value(actual: Any, expected: Any, where: str) -> None:
    if expected is None:
        assert actual is None, f"{where}: expected null, got {actual!r}"
    elif isinstance(expected, float) or isinstance(actual, float):
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-9), f"{where}: {actual!r}"
    else:
        assert actual == expected, f"{where}: expected {expected!r}, got {actual!r}"
        assert type(actual) is type(expected), f"{where}: {actual!r} vs {expected!r}"


# ---------------------------------------------------------------------------------------------
# A real repo per example: one source file, an attribute view and an aggregate view.
# ---------------------------------------------------------------------------------------------
def ttl_arg(ttl_s: int | None) -> str:
    return f"timedelta(seconds={ttl_s})" if ttl_s else "None"


def write_repo(
    root: Path, rows: list[Row], aggs: list[Agg], attr_ttl: int | None, agg_ttl: int | None
) -> None:
    features = ",\n            ".join(
        f"Aggregate(column={a.column!r}, function={a.function!r}, "
        f"time_window=timedelta(seconds={a.window_s}), name={a.name!r})"
        for a in aggs
    )
    defs = f"""\
        from datetime import timedelta
        from contextkit import (
            Aggregate, Attribute, ContextService, Entity, FileSource, batch_feature_view,
        )

        user = Entity(name="user", join_keys=["user_id"])
        rows = FileSource(name="rows", path="data/rows.parquet", timestamp_field="ts")

        @batch_feature_view(sources=[rows], entities=[user], mode="sql", ttl={ttl_arg(attr_ttl)},
                            features=[Attribute("a"), Attribute("b")])
        def profile(rows):
            return f"SELECT user_id, a, b, ts FROM {{rows}}"

        @batch_feature_view(sources=[rows], entities=[user], mode="sql", ttl={ttl_arg(agg_ttl)},
                            features=[
            {features}
        ])
        def activity(rows):
            return f"SELECT user_id, a, b, x, ts FROM {{rows}}"

        svc = ContextService(name="svc", features=[profile, activity])
        """
    root.mkdir(parents=True, exist_ok=True)
    (root / "contextkit.yaml").write_text(CONFIG)
    # A module name of its own: repos loaded earlier in this process must not shadow this one.
    (root / f"defs_{uuid.uuid4().hex}.py").write_text(textwrap.dedent(defs))
    (root / "data").mkdir(exist_ok=True)
    table = pa.table(
        {
            "user_id": pa.array([r.key for r in rows], pa.int64()),
            "a": pa.array([r.a for r in rows], pa.int64()),
            "b": pa.array([r.b for r in rows], pa.string()),
            "x": pa.array([r.x for r in rows], pa.float64()),
            "ts": pa.array(
                [None if r.ts is None else from_micros(r.ts) for r in rows],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    pq.write_table(table, root / "data" / "rows.parquet")


def deploy(root: Path, workspace: str = "prod", live: bool = True) -> contextkit.Context:
    ctx = contextkit.connect(root, workspace=workspace)
    ctx.create_workspace(workspace, live=live)
    ctx.apply(ctx.plan(root))
    return ctx


def events_frame(events: list[Event]) -> pd.DataFrame:
    """The events as a user would hold them: keys, a UTC time, a label and a note."""
    return pd.DataFrame(
        {
            "user_id": pd.array([e.key for e in events], dtype="Int64"),
            "ts": pd.Series(
                [None if e.ts is None else from_micros(e.ts) for e in events],
                dtype="datetime64[us, UTC]",
            ),
            "label": list(range(len(events))),
            "note": [f"event {i}" for i in range(len(events))],
        }
    )


def as_input(frame: pd.DataFrame, kind: str, folder: Path):
    if kind == "pandas":
        return frame
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if kind == "arrow":
        return table
    path = folder / f"events-{uuid.uuid4().hex}.parquet"
    pq.write_table(table, path)
    return str(path)


FEATURES = ["profile__a", "profile__b"]


def check_against_oracle(result, events, rows, aggs, attr_ttl, agg_ttl, label: str) -> int:
    """Compare every output row with the oracle; returns how many rows have a feature value."""
    table = result.to_arrow()
    agg_cols = [f"activity__{a.name}" for a in aggs]
    assert table.column_names == ["user_id", "ts", "label", "note", *FEATURES, *agg_cols]
    got = table.to_pylist()
    assert len(got) == len(events), f"{label}: one output row per event"
    with_values = 0
    for i, (ev, out) in enumerate(zip(events, got, strict=True)):
        # The event's own columns come back unchanged, in input order.
        assert out["label"] == i and out["note"] == f"event {i}"
        assert out["user_id"] == ev.key
        assert out["ts"] == (None if ev.ts is None else from_micros(ev.ts))
        stamp = "null" if ev.ts is None else from_micros(ev.ts).isoformat()
        where = f"{label}: event {i} (user {ev.key} at {stamp})"
        want = expected_attributes(rows, attr_ttl, ev.key, ev.ts)
        want += expected_aggregates(rows, aggs, agg_ttl, ev.key, ev.ts)
        for name, w in zip([*FEATURES, *agg_cols], want, strict=True):
            assert_value(out[name], w, f"{where} {name}")
        with_values += any(w is not None for w in want)
    return with_values


# ---------------------------------------------------------------------------------------------
# The property: random data, definitions, events and materializations, checked row by row.
# ---------------------------------------------------------------------------------------------
BASE = micros(datetime(2024, 6, 1, 12, tzinfo=UTC))
KEYS = (1, 2, 3)
NO_FEATURES_KEY = 7  # appears only in events: always null
NAMED_WINDOWS = (60, 3600, 6 * 3600, DAY, 7 * DAY, 30 * DAY)
windows = st.one_of(st.sampled_from(NAMED_WINDOWS), st.integers(60, 60 * DAY))


@st.composite
def aggregates(draw) -> list[Agg]:
    out = []
    for i in range(draw(st.integers(2, 4))):
        function = draw(st.sampled_from(sorted(COLUMNS_FOR)))
        column = draw(st.sampled_from(COLUMNS_FOR[function]))
        out.append(Agg(f"f{i}", function, column, draw(windows)))
    return out


@st.composite
def scenarios(draw):
    aggs = draw(aggregates())
    attr_ttl = draw(st.one_of(st.none(), windows))
    agg_ttl = draw(st.one_of(st.none(), st.none(), windows))
    # A small pool of instants so that rows tie; offsets at the scale of minutes to weeks.
    offsets = st.one_of(st.integers(0, 6 * 3600 * US), st.integers(0, 40 * DAY * US))
    pool = sorted(set(draw(st.lists(offsets.map(lambda o: BASE - o), min_size=1, max_size=6))))
    values = {
        "a": st.one_of(st.none(), st.integers(-5, 5)),
        "b": st.one_of(st.none(), st.sampled_from("pqrs")),
        "x": st.one_of(st.none(), st.integers(-80, 80).map(lambda k: k / 8)),  # exact sums
    }
    row = st.builds(
        Row,
        key=st.sampled_from((*KEYS, *KEYS, *KEYS, None)),
        ts=st.one_of(*[st.sampled_from(pool)] * 4, st.just(None)),
        **values,
    )
    servable_row = st.builds(Row, key=st.sampled_from(KEYS), ts=st.sampled_from(pool), **values)
    # The file's order is the list's order: out of order, with ties.
    rows = draw(st.lists(row, min_size=2, max_size=20))
    kept = draw(st.lists(servable_row, min_size=1, max_size=5))
    rows = draw(st.permutations(rows + kept))

    # Event times: on, just before and just after feature rows; on ttl and window edges;
    # anywhere in between; long before and long after everything.
    edges = [a.window_s for a in aggs] + [t for t in (attr_ttl, agg_ttl) if t]
    # (Ordered so that the simplest choices, the ones hypothesis tries first, see feature rows.)
    near = list(dict.fromkeys(p + d for p in reversed(pool) for d in (0, 1, -1)))
    on_edges = list(dict.fromkeys(p + e * US + d for p in pool for e in edges for d in (-1, 0, 1)))
    far = [pool[0] - 400 * DAY * US, pool[-1] + 90 * DAY * US]
    timestamps = st.one_of(
        st.sampled_from(near),
        st.sampled_from(near),
        st.sampled_from(on_edges),
        st.integers(pool[0], pool[-1] + max(edges) * US + 1),
        st.sampled_from(far),
        st.just(None),
    )
    with_rows = sorted({r.key for r in rows if r.key is not None}) or [NO_FEATURES_KEY]
    keys = st.one_of(
        st.sampled_from(with_rows),
        st.sampled_from(with_rows),
        st.sampled_from((*KEYS, NO_FEATURES_KEY, None)),
    )
    events = draw(st.lists(st.builds(Event, key=keys, ts=timestamps), min_size=3, max_size=25))
    if draw(st.booleans()):  # exact duplicates of earlier events
        events += draw(st.lists(st.sampled_from(events), min_size=1, max_size=4))
        events = draw(st.permutations(events))

    # Materialize once or twice (the second run incremental), ending after every event (the
    # store covers them) or somewhere in the middle (it does not).
    last = max([*pool, *(e.ts for e in events if e.ts is not None)])
    if draw(st.booleans()):
        end = draw(st.sampled_from([last + 1, last + DAY * US]))
    else:
        end = draw(st.sampled_from([*pool, *near, *on_edges]))
    first_end = draw(st.one_of(st.none(), st.sampled_from([p for p in pool if p < end] or [end])))
    kind = draw(st.sampled_from(("pandas", "arrow", "parquet")))
    return aggs, attr_ttl, agg_ttl, rows, events, end, first_end, kind


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_point_in_time_features_match_a_brute_force_oracle(tmp_path_factory, scenario):
    aggs, attr_ttl, agg_ttl, rows, events, end, first_end, kind = scenario
    root = tmp_path_factory.mktemp("pit")
    write_repo(root, rows, aggs, attr_ttl, agg_ttl)
    ctx = deploy(root)
    try:
        if first_end is not None and first_end < end:
            ctx.materialize(end=from_micros(first_end))
        ctx.materialize(end=from_micros(end))
        frame = events_frame(events)
        good = servable(rows)
        stamps = [e.ts for e in events if e.ts is not None]
        materialized = [r for r in good if r.ts < end]
        covered = bool(stamps) and max(stamps) < end and bool(materialized)
        args = (events, good, aggs, attr_ttl, agg_ttl)

        # Default: the offline store where it covers the events, else the sources.
        result = ctx.get_features_for_events(as_input(frame, kind, root), "svc")
        with_values = check_against_oracle(result, *args, label="default")
        where = "offline_store" if covered else "source"
        event(f"read from the {where}")
        event(f"events with a feature value: {min(with_values, 3)}{'+' * (with_values >= 3)}")
        assert result.sources_used == {"profile": where, "activity": where}

        forced = ctx.get_features_for_events(as_input(frame, kind, root), "svc", from_source=True)
        check_against_oracle(forced, *args, label="from_source=True")
        assert forced.sources_used == {"profile": "source", "activity": "source"}

        # Forced onto the store: exactly what was materialized (rows before `end`) is used.
        store = ctx.get_features_for_events(frame, "svc", from_source=False)
        if not materialized:
            with pytest.raises(NotFoundError):
                store.to_arrow()
        else:
            limited = (events, materialized, aggs, attr_ttl, agg_ttl)
            check_against_oracle(store, *limited, label="from_source=False")
            assert store.sources_used == {"profile": "offline_store", "activity": "offline_store"}
    finally:
        ctx.close()


# ---------------------------------------------------------------------------------------------
# Examples: a tiny repo with one attribute view and one aggregate view.
# ---------------------------------------------------------------------------------------------
DEFS = """
from datetime import timedelta
from contextkit import Aggregate, Attribute, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql", features=[
    Aggregate(column="x", function="sum", time_window=timedelta(days=2)),
    Aggregate(column="x", function="count", time_window=timedelta(days=2)),
])
def spend(events):
    return f"SELECT user_id, x, ts FROM {events}"

@batch_feature_view(sources=[events], entities=[user], mode="sql",
                    features=[Attribute("x")], ttl=timedelta(days=3))
def latest(events):
    return f"SELECT user_id, x, ts FROM {events}"

svc = ContextService(name="svc", features=[spend, latest])
"""
COLUMNS = ["spend__x_sum_2d", "spend__x_count_2d", "latest__x"]
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def rows_table(rows: list[tuple[int, float, datetime]]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "x": pa.array([r[1] for r in rows], pa.float64()),
            "ts": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
        }
    )


# user 1: 1.0 at day 0.5, 2.0 at day 1.5, 4.0 at day 3.5; user 2: 5.0 at day 2.5.
ROWS = [(1, 1.0, day(0.5)), (1, 2.0, day(1.5)), (2, 5.0, day(2.5)), (1, 4.0, day(3.5))]


def defs_file(text: str) -> dict[str, str]:
    """The repo's definitions under a module name no other repo in this process uses."""
    return {f"defs_{uuid.uuid4().hex}.py": text}


@pytest.fixture
def repo(make_repo):
    root = make_repo(defs_file(DEFS), data={"events.parquet": rows_table(ROWS)})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    yield root, ctx
    ctx.close()


def features(result) -> list[tuple]:
    table = result.to_arrow()
    return list(zip(*(table.column(c).to_pylist() for c in COLUMNS), strict=True))


def labelled(users: list, times: list) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": users,
            "ts": pd.Series(times, dtype="datetime64[us, UTC]"),
            "label": [i % 2 == 0 for i in range(len(users))],
        }
    )


EVENTS = labelled(
    [1, 1, 2, 1, 3, None, 1],
    [day(1.5), day(1.6), day(2.5), day(10), day(1), day(1), day(1.5)],
)
# sum_2d, count_2d, latest x (ttl 3 days) for each row of EVENTS.
EXPECTED = [
    (3.0, 2, 2.0),  # user 1 at exactly day 1.5: the row at day 1.5 counts
    (3.0, 2, 2.0),
    (5.0, 1, 5.0),
    (None, None, None),  # day 10: nothing within the window, the row at 3.5 is older than ttl
    (None, None, None),  # a user without rows
    (None, None, None),  # a null key
    (3.0, 2, 2.0),  # a duplicate event: the same values again
]


def test_every_event_comes_back_once_in_order_with_its_columns(repo):
    _root, ctx = repo
    result = ctx.get_features_for_events(EVENTS, "svc")
    frame = result.to_pandas()
    assert list(frame.columns) == ["user_id", "ts", "label", *COLUMNS]
    assert len(frame) == len(EVENTS)
    assert frame["label"].tolist() == EVENTS["label"].tolist()
    assert features(result) == EXPECTED
    # A list of views works like a service: all of each view's features.
    by_views = ctx.get_features_for_events(EVENTS, ["latest"]).to_pandas()
    assert list(by_views.columns) == ["user_id", "ts", "label", "latest__x"]
    assert [None if pd.isna(v) else v for v in by_views["latest__x"]] == [e[2] for e in EXPECTED]


def test_count_is_zero_and_sum_null_inside_ttl_but_outside_the_window(make_repo):
    defs = DEFS.replace("])\ndef spend", "], ttl=timedelta(days=5))\ndef spend")  # ttl > window
    assert defs != DEFS
    root = make_repo(defs_file(defs), data={"events.parquet": rows_table(ROWS)})
    ctx = deploy(root)
    # User 2's only row is at day 2.5: at day 5 it is outside the 2-day window, inside the ttl.
    result = ctx.get_features_for_events(labelled([2, 2], [day(5), day(8)]), "svc")
    assert features(result) == [(None, 0, 5.0), (None, None, None)]
    ctx.close()


def test_ties_on_key_and_time_go_to_the_largest_feature_values(make_repo):
    defs = """
    from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

    user = Entity(name="user", join_keys=["user_id"])
    src = FileSource(name="src", path="data/src.parquet", timestamp_field="ts")

    @batch_feature_view(sources=[src], entities=[user], mode="sql",
                        features=[Attribute("a"), Attribute("b")])
    def tied(src):
        return f"SELECT user_id, a, b, ts FROM {src}"

    svc = ContextService(name="svc", features=[tied])
    """
    t = day(1)
    table = pa.table(
        {
            "user_id": [1, 1, 1, 2, 2, 2],
            "a": pa.array([3, None, 3, 1, 1, 0], pa.int64()),
            "b": pa.array(["x", "z", "y", None, "b", "c"]),
            "ts": pa.array([t] * 6, pa.timestamp("us", tz="UTC")),
        }
    )
    root = make_repo(defs_file(defs), data={"src.parquet": table})
    ctx = deploy(root)
    ctx.materialize(end=day(2))
    events = labelled([1, 2], [t, t])
    for source in (None, True):
        result = ctx.get_features_for_events(events, "svc", from_source=source).to_arrow()
        # user 1: a=3 beats null; between the two a=3 rows, b="y" > "x". user 2: a=1, b="b".
        assert result.column("tied__a").to_pylist() == [3, 1]
        assert result.column("tied__b").to_pylist() == ["y", "b"]
    online = ctx.get_features("svc", entities={"user_id": [1, 2]}).to_dict()
    assert online["tied.a"] == [3, 1] and online["tied.b"] == ["y", "b"]
    ctx.close()


def test_ttl_boundary_a_row_exactly_ttl_old_is_null(repo):
    _root, ctx = repo
    ttl = timedelta(days=3)
    edge = day(3.5) + ttl  # user 1's last row is exactly ttl old here
    result = ctx.get_features_for_events(
        labelled([1, 1], [edge - timedelta(microseconds=1), edge]), ["latest"]
    )
    assert result.to_arrow().column("latest__x").to_pylist() == [4.0, None]


# -- leakage ---------------------------------------------------------------------------------
LEAK_ROWS = [(1, 1.0, day(1)), (1, 100.0, day(2) + timedelta(microseconds=1))]


@pytest.mark.parametrize("from_source", [None, True])
def test_a_row_one_microsecond_after_the_event_is_never_used(make_repo, from_source):
    root = make_repo(defs_file(DEFS), data={"events.parquet": rows_table(LEAK_ROWS)})
    ctx = deploy(root)
    ctx.materialize(end=day(5))
    result = ctx.get_features_for_events(labelled([1], [day(2)]), "svc", from_source=from_source)
    assert features(result) == [(1.0, 1, 1.0)]
    assert set(result.sources_used.values()) == {"source" if from_source else "offline_store"}
    # One microsecond later the row is in.
    later = labelled([1], [day(2) + timedelta(microseconds=1)])
    assert features(ctx.get_features_for_events(later, "svc")) == [(101.0, 2, 100.0)]
    ctx.close()


def test_a_nanosecond_event_just_before_a_row_does_not_see_it(make_repo):
    root = make_repo(defs_file(DEFS), data={"events.parquet": rows_table(LEAK_ROWS)})
    ctx = deploy(root)
    row_time = pd.Timestamp(day(2) + timedelta(microseconds=1)).tz_localize(None)
    events = pd.DataFrame(
        {"user_id": [1], "ts": pd.Series([row_time - pd.Timedelta(1, "ns")], dtype="M8[ns]")}
    )
    got = ctx.get_features_for_events(events, "svc", from_source=True).to_arrow()
    assert [got.column(c)[0].as_py() for c in COLUMNS] == [1.0, 1, 1.0]
    ctx.close()


# Rows one microsecond after 2024-01-03 and one before 1970 (where truncating is not flooring).
NS_ROW_TIMES = [day(2) + timedelta(microseconds=1), EPOCH - timedelta(microseconds=1)]


@pytest.mark.parametrize("row_time", NS_ROW_TIMES, ids=["2024", "before-1970"])
@pytest.mark.parametrize("kind", ["naive pandas", "aware pandas", "naive parquet", "aware parquet"])
def test_nanosecond_events_are_floored_to_the_microsecond_in_every_input(
    make_repo, tmp_path, row_time, kind
):
    rows = [(1, 1.0, row_time - timedelta(days=1)), (1, 100.0, row_time)]
    root = make_repo(defs_file(DEFS), data={"events.parquet": rows_table(rows)})
    ctx = deploy(root)
    at = pd.Timestamp(row_time)
    # 1 ns before the row: before it. 999 ns after the row: floored onto it, so it is in.
    stamps = pd.Series([at - pd.Timedelta(1, "ns"), at + pd.Timedelta(999, "ns")])
    stamps = stamps.astype("M8[ns, UTC]")
    if kind.startswith("naive"):
        stamps = stamps.dt.tz_localize(None)
    events = pd.DataFrame({"user_id": [1, 1], "ts": stamps})
    if kind.endswith("parquet"):
        path = tmp_path / "ns-events.parquet"
        pq.write_table(pa.Table.from_pandas(events, preserve_index=False), path)
        assert pq.read_schema(path).field("ts").type.unit == "ns"
        events = path
    for source in (None, True):
        got = ctx.get_features_for_events(events, "svc", from_source=source)
        assert features(got) == [(1.0, 1, 1.0), (101.0, 2, 100.0)], (kind, source)
        # The events' own time column comes back as given, nanoseconds included.
        assert got.to_pandas()["ts"].dt.nanosecond.tolist() == [999, 999]
    ctx.close()


# -- inputs ----------------------------------------------------------------------------------
def test_pandas_arrow_parquet_and_duckdb_inputs_give_the_same_result(repo, tmp_path):
    _root, ctx = repo
    table = pa.Table.from_pandas(EVENTS, preserve_index=False)
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    con = duckdb.connect()
    inputs = {
        "pandas": EVENTS,
        "arrow": table,
        "parquet str": str(path),
        "parquet Path": path,
        "duckdb.sql": duckdb.sql(f"SELECT * FROM read_parquet('{path}')"),
        "connection relation": con.sql(f"SELECT * FROM read_parquet('{path}')"),
        "connection from_arrow": con.from_arrow(table),
    }
    for name, events in inputs.items():
        got = ctx.get_features_for_events(events, "svc").to_arrow()
        assert got.column_names == ["user_id", "ts", "label", *COLUMNS], name
        assert got.column("label").to_pylist() == EVENTS["label"].tolist(), name
        assert features_of(got) == EXPECTED, name
    con.close()


def features_of(table: pa.Table) -> list[tuple]:
    return list(zip(*(table.column(c).to_pylist() for c in COLUMNS), strict=True))


def test_a_parquet_glob_is_read_in_file_then_row_order(repo, tmp_path):
    _root, ctx = repo
    table = pa.Table.from_pandas(EVENTS, preserve_index=False)
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(table.slice(4), folder / "part-1.parquet")
    pq.write_table(table.slice(0, 4), folder / "part-0.parquet")
    got = ctx.get_features_for_events(str(folder / "*.parquet"), "svc").to_arrow()
    assert features_of(got) == EXPECTED


def test_the_same_instants_naive_or_in_any_time_zone_give_the_same_features(repo, tmp_path):
    _root, ctx = repo
    utc = [day(1.5), day(1.6), day(2.5), day(10), day(1), day(1), day(1.5)]
    user_ids = [1, 1, 2, 1, 3, None, 1]
    keys = pd.array(user_ids, dtype="Int64")
    users = pa.array(user_ids, pa.int64())
    naive = [t.replace(tzinfo=None) for t in utc]
    kolkata = ZoneInfo("Asia/Kolkata")  # +05:30: a wrong reading is off by hours, not days
    new_york = ZoneInfo("America/New_York")
    values = ", ".join(
        f"({'NULL' if u is None else u}, '{t.astimezone(kolkata).isoformat()}')"
        for u, t in zip(user_ids, utc, strict=True)
    )
    variants = {
        "naive datetime64": pd.DataFrame({"user_id": keys, "ts": pd.Series(naive, dtype="M8[us]")}),
        "aware UTC": pd.DataFrame({"user_id": keys, "ts": pd.Series(utc, dtype="M8[us, UTC]")}),
        "aware New York": pd.DataFrame(
            {"user_id": keys, "ts": pd.Series(utc, dtype="M8[us, UTC]").dt.tz_convert(new_york)}
        ),
        "objects, mixed zones": pd.DataFrame(
            {
                "user_id": keys,
                "ts": pd.Series(
                    [t.astimezone(kolkata if i % 2 else new_york) for i, t in enumerate(utc)],
                    dtype=object,
                ),
            }
        ),
        "naive objects": pd.DataFrame({"user_id": keys, "ts": pd.Series(naive, dtype=object)}),
        "arrow, Kolkata": pa.table(
            {"user_id": users, "ts": pa.array(utc, pa.timestamp("ms", tz="Asia/Kolkata"))}
        ),
        "arrow, naive seconds": pa.table(
            {"user_id": users, "ts": pa.array(naive, pa.timestamp("s"))}
        ),
        "duckdb, TIMESTAMPTZ": duckdb.sql(
            f"SELECT user_id, ts::TIMESTAMPTZ AS ts FROM (VALUES {values}) AS v(user_id, ts)"
        ),
    }
    naive_file = tmp_path / "naive.parquet"
    pq.write_table(
        pa.table({"user_id": users, "ts": pa.array(naive, pa.timestamp("us"))}), naive_file
    )
    variants["parquet, naive"] = naive_file
    for name, events in variants.items():
        got = ctx.get_features_for_events(events, "svc").to_arrow()
        assert features_of(got) == EXPECTED, name


def test_aware_nanosecond_timestamps_are_read_like_microsecond_ones(repo):
    _root, ctx = repo
    events = EVENTS.assign(ts=EVENTS["ts"].astype("datetime64[ns, UTC]"))
    assert features(ctx.get_features_for_events(events, "svc")) == EXPECTED


def test_a_column_mixing_aware_and_naive_timestamps_is_refused_with_a_hint(repo):
    _root, ctx = repo
    events = pd.DataFrame(
        {"user_id": [1, 1], "ts": pd.Series([day(1.5), datetime(2024, 1, 2)], dtype=object)}
    )
    with pytest.raises(BadRequestError, match="mixes timezone-aware and naive") as info:
        ctx.get_features_for_events(events, "svc").to_pandas()
    assert info.value.hint and "UTC" in info.value.hint


def test_bad_events_are_refused_with_a_hint(repo):
    _root, ctx = repo
    cases = {
        "no column 'ts'": EVENTS.rename(columns={"ts": "when"}),
        "no column 'user_id'": EVENTS.drop(columns=["user_id"]),
        "not a timestamp": EVENTS.assign(ts=EVENTS["ts"].astype(str)),
    }
    for message, events in cases.items():
        with pytest.raises(BadRequestError, match=message) as info:
            ctx.get_features_for_events(events, "svc").to_pandas()
        assert info.value.hint
    # timestamp_key names the column when it is not "ts".
    renamed = EVENTS.rename(columns={"ts": "when"})
    assert features(ctx.get_features_for_events(renamed, "svc", timestamp_key="when")) == EXPECTED
    with pytest.raises(BadRequestError, match="must be a pandas DataFrame"):
        ctx.get_features_for_events([{"user_id": 1}], "svc").to_pandas()
    with pytest.raises(NotFoundError, match="no_such"):
        ctx.get_features_for_events(EVENTS, "no_such")


def test_empty_events_give_an_empty_result_with_every_column(repo):
    _root, ctx = repo
    frame = ctx.get_features_for_events(EVENTS.iloc[:0], "svc").to_pandas()
    assert list(frame.columns) == ["user_id", "ts", "label", *COLUMNS]
    assert len(frame) == 0


def test_null_event_times_keep_their_row_with_null_features(repo):
    _root, ctx = repo
    events = labelled([1, 1, 2], [day(1.6), None, day(2.5)])
    assert features(ctx.get_features_for_events(events, "svc")) == [
        (3.0, 2, 2.0),
        (None, None, None),
        (5.0, 1, 5.0),
    ]


def test_a_float_key_matches_only_an_equal_integer_key(repo):
    _root, ctx = repo
    stamps = pa.array([day(2.6)] * 3, pa.timestamp("us", tz="UTC"))
    events = pa.table({"user_id": pa.array([1.0, 1.5, float("nan")]), "ts": stamps})
    assert features(ctx.get_features_for_events(events, "svc")) == [
        (2.0, 1, 2.0),
        (None, None, None),
        (None, None, None),
    ]


def test_an_events_column_named_like_a_feature_column_is_refused(repo):
    _root, ctx = repo
    events = EVENTS.assign(latest__x=0.0)
    with pytest.raises(BadRequestError, match="latest__x"):
        ctx.get_features_for_events(events, "svc").to_pandas()


def test_an_events_column_with_an_internal_name_never_multiplies_rows(repo):
    _root, ctx = repo
    events = labelled([1, 2, 1], [day(2.6)] * 3).assign(__ck_row=[0, 0, 0])
    try:
        frame = ctx.get_features_for_events(events, "svc").to_pandas()
    except BadRequestError:
        return
    assert len(frame) == 3


def test_the_store_is_not_used_when_the_latest_row_precedes_feature_start_time(make_repo):
    defs = """
    from datetime import UTC, datetime
    from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

    user = Entity(name="user", join_keys=["user_id"])
    events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

    @batch_feature_view(sources=[events], entities=[user], mode="sql", features=[Attribute("x")],
                        feature_start_time=datetime(2024, 1, 3, tzinfo=UTC))
    def latest(events):
        return f"SELECT user_id, x, ts FROM {events}"

    svc = ContextService(name="svc", features=[latest])
    """
    root = make_repo(defs_file(defs), data={"events.parquet": rows_table(ROWS)})
    ctx = deploy(root)
    ctx.materialize(end=day(5))
    # User 1 at day 2.5 (after feature_start_time): the latest row is 2.0 at day 1.5.
    events = labelled([1], [day(2.5)])
    source = ctx.get_features_for_events(events, "svc", from_source=True).to_arrow()
    assert source.column("latest__x").to_pylist() == [2.0]
    default = ctx.get_features_for_events(events, "svc")
    assert default.to_arrow().column("latest__x").to_pylist() == [2.0]
    ctx.close()


def test_composite_join_keys(make_repo):
    defs = """
    from datetime import timedelta
    from contextkit import (
        Aggregate, Attribute, ContextService, Entity, FileSource, batch_feature_view,
    )

    seller = Entity(name="seller", join_keys=["region", "seller_id"])
    sales = FileSource(name="sales", path="data/sales.parquet", timestamp_field="ts")

    @batch_feature_view(sources=[sales], entities=[seller], mode="sql", features=[
        Aggregate(column="amount", function="sum", time_window=timedelta(days=1)),
    ])
    def seller_sales(sales):
        return f"SELECT region, seller_id, amount, ts FROM {sales}"

    @batch_feature_view(sources=[sales], entities=[seller], mode="sql",
                        features=[Attribute("amount")])
    def last_sale(sales):
        return f"SELECT region, seller_id, amount, ts FROM {sales}"

    svc = ContextService(name="svc", features=[seller_sales, last_sale])
    """
    table = pa.table(
        {
            "region": ["eu", "eu", "us", "us"],
            "seller_id": pa.array([1, 1, 1, 2], pa.int64()),
            "amount": [10.0, 20.0, 300.0, 4000.0],
            "ts": pa.array([day(1), day(1.5), day(1.2), day(1.3)], pa.timestamp("us", tz="UTC")),
        }
    )
    root = make_repo(defs_file(defs), data={"sales.parquet": table})
    ctx = deploy(root)
    events = pd.DataFrame(
        {
            "seller_id": [1, 1, 2, 2, 1],
            "region": ["eu", "us", "us", "eu", None],
            "ts": pd.Series([day(1.6)] * 5, dtype="M8[us, UTC]"),
        }
    )
    got = ctx.get_features_for_events(events, "svc").to_arrow()
    assert got.column("seller_sales__amount_sum_1d").to_pylist() == [
        30.0,
        300.0,
        4000.0,
        None,
        None,
    ]
    assert got.column("last_sale__amount").to_pylist() == [20.0, 300.0, 4000.0, None, None]
    ctx.close()


def test_parquet_events_keep_columns_named_filename_and_file_row_number(repo, tmp_path):
    _root, ctx = repo
    events = EVENTS.assign(filename="chat.log", file_row_number=range(100, 100 + len(EVENTS)))
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pandas(events, preserve_index=False), path)
    for events_in in (path, str(tmp_path / "*.parquet")):
        got = ctx.get_features_for_events(events_in, "svc").to_arrow()
        own = ["user_id", "ts", "label", "filename", "file_row_number"]
        assert got.column_names == [*own, *COLUMNS]
        assert got.column("file_row_number").to_pylist() == list(range(100, 107))
        assert got.column("filename").to_pylist() == ["chat.log"] * len(EVENTS)
        assert features_of(got) == EXPECTED


@pytest.mark.parametrize("name", ["__ck_ts", "__CK_ROW", "__ck_t", "__ck_input"])
def test_events_columns_with_the_reserved_prefix_are_refused(repo, tmp_path, name):
    _root, ctx = repo
    events = labelled([1, 2, 1], [day(2.6)] * 3)
    events[name] = pd.Series([day(100)] * 3, dtype="M8[us, UTC]")
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pandas(events, preserve_index=False), path)
    for events_in in (events, path):
        with pytest.raises(BadRequestError, match=f"{name}.*reserved") as info:
            ctx.get_features_for_events(events_in, "svc").to_pandas()
        assert "rename" in info.value.hint


def test_events_columns_differing_only_in_case_are_refused(repo, tmp_path):
    _root, ctx = repo
    # DuckDB names are case-insensitive: it would silently rename one of them.
    events = labelled([1, 2], [day(2.6)] * 2).assign(Label=["a", "b"])
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pandas(events, preserve_index=False), path)
    for events_in in (events, pa.Table.from_pandas(events, preserve_index=False), path):
        with pytest.raises(BadRequestError, match="'label' and 'Label'") as info:
            ctx.get_features_for_events(events_in, "svc").to_pandas()
        assert "rename" in info.value.hint
    # A feature column's name in another case clashes too.
    with pytest.raises(BadRequestError, match="Latest__X"):
        ctx.get_features_for_events(EVENTS.assign(Latest__X=0.0), "svc").to_pandas()
    duplicated = pa.table({"user_id": [1], "ts": pa.array([day(1)], pa.timestamp("us", tz="UTC"))})
    duplicated = duplicated.append_column("user_id", pa.array([2]))
    for events_in in (duplicated, duplicated.to_pandas()):
        with pytest.raises(BadRequestError, match="'user_id' and 'user_id'"):
            ctx.get_features_for_events(events_in, "svc").to_pandas()


def test_a_view_named_twice_gives_its_columns_once(repo):
    _root, ctx = repo
    frame = ctx.get_features_for_events(EVENTS, ["latest", "spend", "latest"]).to_pandas()
    assert list(frame.columns) == ["user_id", "ts", "label", "latest__x", *COLUMNS[:2]]
    assert [None if pd.isna(v) else v for v in frame["latest__x"]] == [e[2] for e in EXPECTED]


def test_event_keys_match_across_numeric_types_and_other_types_are_refused(repo):
    _root, ctx = repo
    stamps = pa.array([day(2.6)] * 3, pa.timestamp("us", tz="UTC"))
    for key_type in (pa.int32(), pa.uint8(), pa.int16(), pa.float32(), pa.decimal128(6, 2)):
        values = [Decimal(k) for k in (1, 2, 3)] if pa.types.is_decimal(key_type) else [1, 2, 3]
        users = pa.array(values, key_type)
        got = ctx.get_features_for_events(pa.table({"user_id": users, "ts": stamps}), "svc")
        assert features(got) == [(2.0, 1, 2.0), (5.0, 1, 5.0), (None, None, None)], key_type
    # Out of the view's key range (int64): no match, never an error or a wrapped value.
    huge = pa.array([Decimal(2**64 + 1), Decimal(-(2**70))], pa.decimal128(38, 0))
    got = ctx.get_features_for_events(pa.table({"user_id": huge, "ts": stamps[:2]}), "svc")
    assert features(got) == [(None, None, None)] * 2
    # Strings are not numbers: refused with the types named, not a raw conversion error.
    events = labelled(["1", "2", "x"], [day(2.6)] * 3)
    with pytest.raises(BadRequestError, match="'user_id'.*VARCHAR.*BIGINT") as info:
        ctx.get_features_for_events(events, "svc").to_pandas()
    assert "int64" in info.value.hint


# -- laziness and outputs --------------------------------------------------------------------
def test_nothing_is_read_until_a_to_method_is_called(repo, tmp_path, monkeypatch):
    _root, ctx = repo
    opened = []
    connect = transformations.connect_duckdb

    def counting(*args, **kwargs):
        opened.append(1)
        return connect(*args, **kwargs)

    monkeypatch.setattr(transformations, "connect_duckdb", counting)
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pandas(EVENTS, preserve_index=False), path)
    result = ctx.get_features_for_events(path, "svc")
    assert opened == []
    path.unlink()  # the file is read only when the result is computed
    with pytest.raises(BadRequestError, match="events.parquet"):
        result.to_pandas()
    assert opened == [1]


def test_to_parquet_writes_what_to_pandas_returns(repo, tmp_path):
    _root, ctx = repo
    result = ctx.get_features_for_events(EVENTS, "svc")
    target = result.to_parquet(tmp_path / "out" / "train.parquet")
    assert target == tmp_path / "out" / "train.parquet"
    written = pq.read_table(target)
    assert written.equals(result.to_arrow())
    pd.testing.assert_frame_equal(
        written.to_pandas(), result.to_pandas(), check_dtype=False, check_index_type=False
    )
    assert "ASOF LEFT JOIN" in result.sql()


def test_to_polars_matches_to_arrow(repo):
    pl = pytest.importorskip("polars")
    _root, ctx = repo
    result = ctx.get_features_for_events(EVENTS, "svc")
    frame = result.to_polars()
    assert isinstance(frame, pl.DataFrame)
    assert frame.to_arrow().equals(result.to_arrow())


# -- where the data comes from ---------------------------------------------------------------
def test_events_after_the_materialized_range_are_read_from_the_sources(repo):
    _root, ctx = repo
    ctx.materialize(end=day(2))
    before = labelled([1, 1], [day(1.5), day(1.6)])
    after = labelled([1, 2], [day(1.6), day(2.5)])  # day 2.5 is past the store's end
    covered = ctx.get_features_for_events(before, "svc")
    assert features(covered) == [(3.0, 2, 2.0), (3.0, 2, 2.0)]
    assert covered.sources_used == {"spend": "offline_store", "latest": "offline_store"}
    uncovered = ctx.get_features_for_events(after, "svc")
    assert features(uncovered) == [(3.0, 2, 2.0), (5.0, 1, 5.0)]
    assert uncovered.sources_used == {"spend": "source", "latest": "source"}
    # Forced onto the store, the row at day 2.5 (not materialized) is not there.
    store_only = ctx.get_features_for_events(after, "svc", from_source=False)
    assert features(store_only) == [(3.0, 2, 2.0), (None, None, None)]
    # An event exactly at the end of the materialized range is not covered ([start, end)).
    at_end = ctx.get_features_for_events(labelled([1], [day(2)]), "svc")
    assert at_end.sources_used == {"spend": "source", "latest": "source"}


def test_the_store_is_read_only_where_it_holds_every_needed_row(repo):
    _root, ctx = repo
    # A range starting at day 1 misses the day-0.5 row: events need the window and ttl before.
    ctx.materialize(start=day(1), end=day(4))
    result = ctx.get_features_for_events(labelled([1], [day(1.6)]), "svc")
    assert features(result) == [(3.0, 2, 2.0)]
    assert result.sources_used == {"spend": "source", "latest": "source"}


def test_a_redefined_view_is_read_from_its_sources_until_rematerialized(repo):
    root, ctx = repo
    ctx.materialize(end=day(5))
    events = labelled([1], [day(4)])
    assert ctx.get_features_for_events(events, "svc").sources_used["latest"] == "offline_store"
    (defs,) = root.glob("defs_*.py")
    defs.write_text(
        textwrap.dedent(DEFS).replace("ttl=timedelta(days=3)", "ttl=timedelta(hours=1)")
    )
    ctx.apply(ctx.plan(root))
    result = ctx.get_features_for_events(events, "svc")
    assert result.sources_used == {"spend": "offline_store", "latest": "source"}
    assert features(result) == [(4.0, 1, None)]  # the day-3.5 row is older than 1 hour


def test_the_store_is_not_used_while_another_definition_may_be_writing_it(repo):
    _root, ctx = repo
    ctx.materialize(end=day(5))
    events = labelled([1], [day(4)])
    assert ctx.get_features_for_events(events, "svc").sources_used["latest"] == "offline_store"
    # A job of another definition that never finished (running now, or it crashed after
    # publishing its files): what the store holds is no longer known.
    ctx.registry.start_job(
        "prod", "latest", range_end=day(5).isoformat(), spec_hash="another", details={"full": True}
    )
    result = ctx.get_features_for_events(events, "svc")
    assert result.sources_used == {"spend": "offline_store", "latest": "source"}
    assert features(result) == [(4.0, 1, 4.0)]


def test_events_at_the_earliest_representable_time_are_served(repo):
    _root, ctx = repo
    ctx.materialize(end=day(5))
    # 0001-01-01 is a common "unknown date" sentinel; its lookback is before any datetime.
    first = datetime(1, 1, 1, tzinfo=UTC)
    events = labelled([1, 1], [first, day(1.6)])
    result = ctx.get_features_for_events(events, "svc")
    assert features(result) == [(None, None, None), (3.0, 2, 2.0)]
    assert result.sources_used == {"spend": "offline_store", "latest": "offline_store"}


def test_forcing_the_store_for_an_unmaterialized_view_is_not_found(repo):
    _root, ctx = repo
    result = ctx.get_features_for_events(EVENTS, "svc", from_source=False)
    with pytest.raises(NotFoundError, match="no offline data") as info:
        result.to_pandas()
    assert "materialize" in info.value.hint


def test_a_dev_workspace_reads_the_sources(repo):
    root, ctx = repo
    dev = ctx.use("dev")
    dev.create_workspace("dev", live=False)
    dev.apply(dev.plan(root))
    for source in (None, False, True):
        result = dev.get_features_for_events(EVENTS, "svc", from_source=source)
        assert features(result) == EXPECTED
        assert result.sources_used == {"spend": "source", "latest": "source"}


def test_the_store_is_not_used_across_a_gap_between_materialized_ranges(repo):
    _root, ctx = repo
    ctx.materialize(end=day(2))
    ctx.materialize(start=day(3), end=day(5))  # a later range: [day 2, day 3) is not stored
    events = labelled([2, 1], [day(2.6), day(3.6)])  # user 2's only row is at day 2.5
    default = ctx.get_features_for_events(events, "svc")
    assert features(default) == [(5.0, 1, 5.0), (4.0, 1, 4.0)]
    assert default.sources_used == {"spend": "source", "latest": "source"}
    # An incremental run fills the gap: the store covers the events again.
    ctx.materialize(start=day(2), end=day(3))
    filled = ctx.get_features_for_events(events, "svc")
    assert filled.sources_used == {"spend": "offline_store", "latest": "offline_store"}
    assert features(filled) == [(5.0, 1, 5.0), (4.0, 1, 4.0)]


def test_the_store_is_not_used_after_another_definition_overwrote_it(repo):
    root, ctx = repo
    (defs,) = root.glob("defs_*.py")
    original = textwrap.dedent(DEFS)
    ctx.materialize(end=day(5))
    events = labelled([1], [day(4)])
    assert features(ctx.get_features_for_events(events, "svc")) == [(4.0, 1, 4.0)]
    # Another definition is applied and materialized: it replaces the stored rows ...
    defs.write_text(original.replace("SELECT user_id, x, ts", "SELECT user_id, x * 10 AS x, ts"))
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=day(5))
    assert features(ctx.get_features_for_events(events, "svc")) == [(40.0, 1, 40.0)]
    # ... so after going back to the first one, the store no longer holds its rows.
    defs.write_text(original)
    ctx.apply(ctx.plan(root))
    result = ctx.get_features_for_events(events, "svc")
    assert features(result) == [(4.0, 1, 4.0)]
    assert result.sources_used == {"spend": "source", "latest": "source"}


# ---------------------------------------------------------------------------------------------
# The quickstart: offline values at the materialization end equal what the online path serves.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quickstart(quickstart_data):
    # A workspace of its own: other modules use "prod" in the same session-scoped repo.
    ctx = contextkit.connect(quickstart_data, workspace="pit")
    ctx.create_workspace("pit", live=True)
    ctx.apply(ctx.plan(quickstart_data))
    # The feature views only: these tests read no documents, and encoding them is most of a full
    # materialization's time.
    specs = ctx.specs()
    ctx.materialize(
        [v for v in specs.materialized_order() if v not in specs.embedding_views], end=DATA_END
    )
    yield ctx
    ctx.close()


def online_vs_offline(ctx, service: str, key: str, ids: list[int]) -> None:
    online = ctx.get_features(service, entities={key: ids})
    values = online.to_dict()
    events = pd.DataFrame({key: ids, "ts": pd.Series([DATA_END] * len(ids), dtype="M8[us, UTC]")})
    offline = ctx.get_features_for_events(events, service)
    table = offline.to_arrow()
    assert table.column(key).to_pylist() == ids
    for name in online.names:
        column = table.column(name.replace(".", "__")).to_pylist()
        for i, (got, want) in enumerate(zip(column, values[name], strict=True)):
            assert_value(got, want, f"{name} for {key}={ids[i]}")


def test_offline_at_the_materialization_end_equals_online(quickstart, quickstart_data):
    con = duckdb.connect()
    orders = quickstart_data / "data" / "orders.parquet"
    users = [r[0] for r in con.execute(f"SELECT DISTINCT user_id FROM '{orders}'").fetchall()]
    ids = sorted(users)[:60] + list(range(190, 201)) + [10_000_000]
    online_vs_offline(quickstart, "support_assistant", "user_id", ids)
    online_vs_offline(quickstart, "product_lookup", "product_id", [*range(1, 101), 5000])
    con.close()


def test_quickstart_store_and_sources_agree(quickstart):
    # Events over the 60 days before the materialization end: the store (one full job) covers
    # them, and gives exactly what the sources give.
    rng = pd.Series(range(3000))
    events = pd.DataFrame(
        {
            "user_id": (rng * 7919 % 230).tolist(),
            "ts": pd.Series(
                [DATA_END - timedelta(seconds=int(s) * 1733 % (60 * DAY) + 1) for s in rng],
                dtype="M8[us, UTC]",
            ),
        }
    )
    default = quickstart.get_features_for_events(events, "support_assistant")
    forced = quickstart.get_features_for_events(events, "support_assistant", from_source=True)
    assert default.sources_used == {
        "user_order_stats": "offline_store",
        "user_profile": "offline_store",
    }
    pd.testing.assert_frame_equal(default.to_pandas(), forced.to_pandas())
