"""Windowed aggregates agree with a brute-force oracle, offline and online.

The story: a data scientist declares a few ``Aggregate`` features over an events file (entities,
out-of-order and tied timestamps, nulls everywhere), materializes, and then

- reads the offline table: one row per entity and distinct event time ``t`` before the
  materialization end, each aggregate computed over the window ``(t - w, t]``;
- serves the online store: one row per entity with an event in ``(end - ttl, end]`` (ttl defaults
  to the largest window), each aggregate computed over ``(end - w, end]``.

Every value is checked against a pure-Python computation written straight from those rules.
"""

from __future__ import annotations

import textwrap
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contextkit
from contextkit.framework.transformations import connect_duckdb

US = 1_000_000  # microseconds per second
DAY = 86_400
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CONFIG = """\
project: test
registry: .contextkit/registry.db
online_store: {type: sqlite, path: .contextkit/online.db}
offline_store: {type: parquet, path: .contextkit/offline}
"""

KEYS = (1, 2, 3, 4)
ABSENT_KEY = 99  # never has an event: always served as missing

# Which columns each function may read (sum/mean need a numeric column).
COLUMNS_FOR = {
    "count": (None, "ix", "fx", "sx"),
    "sum": ("ix", "fx"),
    "mean": ("ix", "fx"),
    "min": ("ix", "fx", "sx"),
    "max": ("ix", "fx", "sx"),
    "last": ("ix", "fx", "sx"),
    "count_distinct": ("ix", "fx", "sx"),
}
NAMED_WINDOWS = (
    60,  # 1 minute
    5 * 60,
    3600,
    6 * 3600,
    DAY,
    7 * DAY,
    30 * DAY,
    365 * DAY,
    2 * 365 * DAY,
)


# ---------------------------------------------------------------------------------------------
# The oracle: the documented semantics, in plain Python over integer microseconds.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Agg:
    name: str
    function: str
    column: str | None
    window_s: int


@dataclass(frozen=True)
class Event:
    key: int | None
    ts: int | None  # microseconds since the epoch, UTC
    ix: int | None
    fx: float | None
    sx: str | None


def micros(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * DAY + delta.seconds) * US + delta.microseconds


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def aggregate(agg: Agg, rows: list[Event]) -> Any:
    """``agg`` over ``rows`` (the rows of one entity inside one window)."""
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
        return None  # SQL: sum/mean/min/max/last of nothing is null
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


def window(rows: list[Event], key: int, t: int, window_s: int) -> list[Event]:
    """The rows of entity ``key`` with ``t - w < ts <= t``."""
    lo = t - window_s * US
    return [r for r in rows if r.key == key and lo < r.ts <= t]


def servable(events: list[Event]) -> list[Event]:
    """Rows with a null join key or a null timestamp are dropped."""
    return [e for e in events if e.key is not None and e.ts is not None]


def expected_offline(events: list[Event], aggs: list[Agg], end: int) -> list[tuple]:
    rows = servable(events)
    out = []
    for key, t in sorted({(r.key, r.ts) for r in rows if r.ts < end}):
        out.append((key, t, *(aggregate(a, window(rows, key, t, a.window_s)) for a in aggs)))
    return out


def expected_online(
    events: list[Event], aggs: list[Agg], end: int, ttl_s: int | None, key: int
) -> tuple[int, list[Any]] | None:
    """``(latest event time, values)`` for ``key`` as of ``end``; None when not served."""
    rows = servable(events)
    ttl = ttl_s or max(a.window_s for a in aggs)
    recent = window(rows, key, end, ttl)
    if not recent:
        return None
    latest = max(r.ts for r in rows if r.key == key and r.ts <= end)
    return latest, [aggregate(a, window(rows, key, end, a.window_s)) for a in aggs]


def assert_value(actual: Any, expected: Any, where: str) -> None:
    if expected is None:
        assert actual is None, f"{where}: expected null, got {actual!r}"
    elif isinstance(expected, float) or isinstance(actual, float):
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-6), where
    else:
        assert actual == expected, where
        assert type(actual) is type(expected), f"{where}: {actual!r} vs {expected!r}"


# ---------------------------------------------------------------------------------------------
# Building a real repo, materializing it, and reading both stores back.
# ---------------------------------------------------------------------------------------------
def write_repo(root: Path, aggs: list[Agg], events: list[Event], ttl_s: int | None) -> None:
    features = ",\n        ".join(
        f"Aggregate(column={a.column!r}, function={a.function!r}, "
        f"time_window=timedelta(seconds={a.window_s}), name={a.name!r})"
        for a in aggs
    )
    ttl = f"timedelta(seconds={ttl_s})" if ttl_s else "None"
    defs = f"""\
        from datetime import timedelta
        from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view

        user = Entity(name="user", join_keys=["user_id"])
        events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

        @batch_feature_view(sources=[events], entities=[user], mode="sql", ttl={ttl}, features=[
            {features}
        ])
        def activity(events):
            return f"SELECT user_id, ix, fx, sx, ts FROM {{events}}"

        svc = ContextService(name="svc", features=[activity])
        """
    root.mkdir(parents=True, exist_ok=True)
    (root / "contextkit.yaml").write_text(CONFIG)
    # A module name of its own, so a failure here never comes from another example's repo (that
    # case has its own test below).
    (root / f"defs_{uuid.uuid4().hex}.py").write_text(textwrap.dedent(defs))
    (root / "data").mkdir(exist_ok=True)
    table = pa.table(
        {
            "user_id": pa.array([e.key for e in events], pa.int64()),
            "ix": pa.array([e.ix for e in events], pa.int64()),
            "fx": pa.array([e.fx for e in events], pa.float64()),
            "sx": pa.array([e.sx for e in events], pa.string()),
            "ts": pa.array(
                [None if e.ts is None else from_micros(e.ts) for e in events],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    pq.write_table(table, root / "data" / "events.parquet")


def deploy(root: Path) -> contextkit.Context:
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    return ctx


def read_offline(ctx: contextkit.Context, aggs: list[Agg]) -> list[tuple]:
    files = [str(p) for p in ctx.offline.files("prod/activity")]
    if not files:
        return []
    cols = ", ".join(f'"{a.name}"' for a in aggs)
    con = connect_duckdb()
    try:
        return con.execute(
            f"SELECT user_id, epoch_us(event_timestamp), {cols} FROM read_parquet(?) ORDER BY 1, 2",
            [files],
        ).fetchall()
    finally:
        con.close()


def check_offline(ctx, events, aggs, end) -> None:
    actual = read_offline(ctx, aggs)
    expected = expected_offline(events, aggs, end)
    assert [r[:2] for r in actual] == [r[:2] for r in expected], "offline (entity, time) rows"
    for got, want in zip(actual, expected, strict=True):
        for a, g, w in zip(aggs, got[2:], want[2:], strict=True):
            where = f"offline user {want[0]} at {from_micros(want[1])}: {a}"
            assert_value(g, w, where)


def check_online(ctx, events, aggs, end, ttl_s) -> None:
    keys = [*KEYS, ABSENT_KEY]
    served = ctx.get_features("svc", entities={"user_id": keys})
    table = served.to_dict()
    assert table["user_id"] == keys
    for i, key in enumerate(keys):
        want = expected_online(events, aggs, end, ttl_s, key)
        statuses = {served.statuses[j][i] for j in range(len(aggs))}
        if want is None:
            assert statuses == {"MISSING"}, f"user {key} should not be served"
            for a in aggs:
                assert table[f"activity.{a.name}"][i] is None
            continue
        latest, values = want
        assert statuses == {"PRESENT"}, f"user {key} should be served"
        stamp = served.event_timestamps[0][i]
        assert datetime.fromisoformat(stamp.replace("Z", "+00:00")) == from_micros(latest)
        for a, w in zip(aggs, values, strict=True):
            where = f"online user {key} at {from_micros(end)}: {a}"
            assert_value(table[f"activity.{a.name}"][i], w, where)


# ---------------------------------------------------------------------------------------------
# The property: random definitions and data, checked row by row.
# ---------------------------------------------------------------------------------------------
BASE_END = micros(datetime(2024, 6, 1, 12, tzinfo=UTC))

any_window = st.one_of(st.sampled_from(NAMED_WINDOWS), st.integers(60, 2 * 365 * DAY))


def windows_near(scale: int):
    """Windows mostly comparable to the spacing of the events (so they cut through them)."""
    near = st.sampled_from((scale // 4, scale // 2, scale, scale * 3 // 2, 2 * scale))
    return st.one_of(near, near, any_window).map(lambda w: max(w, 60))


@st.composite
def aggregates(draw, scale: int) -> list[Agg]:
    """Every function over every column it accepts (20 features), each with its own window."""
    pairs = [(fn, col) for fn, cols in COLUMNS_FOR.items() for col in cols]
    return [Agg(f"f{i}", fn, col, draw(windows_near(scale))) for i, (fn, col) in enumerate(pairs)]


floats = st.one_of(
    st.integers(-16, 16).map(lambda k: k / 8),  # exact in binary, and often equal
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False).map(
        lambda x: x + 0.0  # no -0.0
    ),
)


@st.composite
def scenarios(draw):
    # One time scale per example, from a minute to two years: event spacing and most windows
    # follow it, so windows hold some events and leave out others.
    scale = draw(st.sampled_from(NAMED_WINDOWS))
    aggs = draw(aggregates(scale))
    ttl_s = draw(st.one_of(st.none(), st.none(), windows_near(scale)))
    end = BASE_END + draw(st.integers(0, 2 * DAY * US))
    # A pool of instants (microseconds before the end; negative = after it), so that events tie;
    # some sit exactly on (or 1 us off) a window edge of another instant or of the end itself.
    offsets = st.integers(-scale * US // 2, 3 * scale * US)
    pool = set(draw(st.lists(offsets, min_size=2, max_size=10)))
    edges = [a.window_s for a in aggs] + ([ttl_s] if ttl_s else [])
    for _ in range(draw(st.integers(1, 8))):
        anchor = draw(st.sampled_from(sorted(pool | {0})))
        pool.add(anchor + draw(st.sampled_from(edges)) * US + draw(st.sampled_from((0, 0, -1, 1))))
    instants = sorted(end - o for o in pool)

    event = st.builds(
        Event,
        key=st.sampled_from((1, 1, 1, 2, 2, 3, 4, 1, 2, None)),
        ts=st.sampled_from([*instants] * 6 + [None]),
        ix=st.one_of(st.none(), st.integers(-5, 5), st.integers(-5, 5)),
        fx=st.one_of(st.none(), floats, floats),
        sx=st.one_of(st.none(), st.sampled_from(("a", "b", "c")), st.sampled_from(("a", "b"))),
    )
    # The file's order is whatever the list's order is: out of order and with ties.
    events = draw(st.lists(event, min_size=5, max_size=30))
    # Optionally materialize twice: first up to an earlier end, then incrementally to `end`.
    first_end = draw(
        st.one_of(
            st.none(),
            st.sampled_from([t for t in instants if t < end] or [end - US]),
            st.integers(1, 2 * scale * US).map(lambda o: end - o),
        )
    )
    return aggs, ttl_s, end, first_end, events


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_offline_and_online_aggregates_match_a_brute_force_oracle(tmp_path_factory, scenario):
    aggs, ttl_s, end, first_end, events = scenario
    root = tmp_path_factory.mktemp("oracle")
    write_repo(root, aggs, events, ttl_s)
    ctx = deploy(root)
    try:
        if first_end is not None:
            ctx.materialize(end=from_micros(first_end))
            check_offline(ctx, events, aggs, first_end)
        ctx.materialize(end=from_micros(end))
        check_offline(ctx, events, aggs, end)
        check_online(ctx, events, aggs, end, ttl_s)
    finally:
        ctx.close()


# ---------------------------------------------------------------------------------------------
# Edge cases, as examples.
# ---------------------------------------------------------------------------------------------
T = datetime(2024, 6, 1, 12, tzinfo=UTC)
WEEK = 7 * DAY


def ev(key, at: datetime, ix=None, fx=None, sx=None) -> Event:
    return Event(key, micros(at), ix, fx, sx)


def deploy_events(tmp_path: Path, aggs, events, ttl_s=None) -> contextkit.Context:
    write_repo(tmp_path / "repo", aggs, events, ttl_s)
    return deploy(tmp_path / "repo")


def offline_row(ctx, aggs, key: int, at: datetime) -> tuple:
    rows = {(r[0], r[1]): r[2:] for r in read_offline(ctx, aggs)}
    return rows[(key, micros(at))]


def online_row(ctx, aggs, key: int) -> list:
    table = ctx.get_features("svc", entities={"user_id": [key]}).to_dict()
    return [table[f"activity.{a.name}"][0] for a in aggs]


def test_an_event_exactly_one_window_before_is_out_and_one_exactly_at_t_is_in(tmp_path):
    aggs = [Agg("n", "count", None, WEEK), Agg("total", "sum", "ix", WEEK)]
    events = [
        ev(1, T - timedelta(days=7), ix=1000),  # exactly t - w: out
        ev(1, T - timedelta(days=7) + timedelta(microseconds=1), ix=100),  # just inside
        ev(1, T - timedelta(days=1), ix=10),
        ev(1, T, ix=1),  # exactly t: in
    ]
    ctx = deploy_events(tmp_path, aggs, events)
    try:
        # Online as of T: the window is (T - 7d, T].
        ctx.materialize(end=T)
        assert online_row(ctx, aggs, 1) == [3, 111]
        # Offline, the row at T (written once the range reaches past T) has the same window.
        ctx.materialize(end=T + timedelta(hours=1))
        assert offline_row(ctx, aggs, 1, T) == (3, 111)
        assert offline_row(ctx, aggs, 1, T - timedelta(days=7)) == (1, 1000)
        assert offline_row(ctx, aggs, 1, T - timedelta(days=1)) == (3, 1110)
    finally:
        ctx.close()


def test_a_365_day_window_is_365_days_not_a_calendar_year(tmp_path):
    # 2024 is a leap year: 365 days before 2024-06-01 12:00 is 2023-06-02 12:00.
    aggs = [Agg("n", "count", "ix", 365 * DAY), Agg("first_seen", "min", "ix", 365 * DAY)]
    events = [
        ev(1, datetime(2023, 6, 1, 12, tzinfo=UTC), ix=1),  # a calendar year ago: out
        ev(1, datetime(2023, 6, 2, 12, tzinfo=UTC), ix=2),  # exactly 365 days ago: out
        ev(1, datetime(2023, 6, 2, 12, 0, 0, 1, tzinfo=UTC), ix=3),  # 1 us later: in
        ev(1, T - timedelta(days=1), ix=4),
    ]
    ctx = deploy_events(tmp_path, aggs, events)
    try:
        ctx.materialize(end=T)
        assert online_row(ctx, aggs, 1) == [2, 3]
        # The day before, the window (2023-06-01 12:00, 2024-05-31 12:00] crosses 2024-02-29:
        # it starts a calendar year back and so leaves out the event exactly at its start.
        assert offline_row(ctx, aggs, 1, T - timedelta(days=1)) == (3, 2)
        # A row sees the event a day before it in a 365-day window.
        assert offline_row(ctx, aggs, 1, datetime(2023, 6, 2, 12, tzinfo=UTC)) == (2, 1)
    finally:
        ctx.close()


def test_an_entity_inside_ttl_with_an_empty_window_is_served_with_empty_aggregates(tmp_path):
    aggs = [
        Agg("n", "count", None, DAY),
        Agg("n_ix", "count", "ix", DAY),
        Agg("total", "sum", "ix", DAY),
        Agg("avg", "mean", "fx", DAY),
        Agg("latest", "last", "sx", DAY),
        Agg("kinds", "count_distinct", "sx", DAY),
    ]
    events = [
        ev(1, T - timedelta(days=10), ix=5, fx=1.5, sx="a"),  # in the 30d ttl, not the 1d window
        ev(2, T - timedelta(days=30), ix=5, fx=1.5, sx="a"),  # exactly at the ttl edge: not served
        ev(3, T - timedelta(hours=1), ix=7, fx=2.5, sx="b"),
    ]
    ctx = deploy_events(tmp_path, aggs, events, ttl_s=30 * DAY)
    try:
        ctx.materialize(end=T)
        served = ctx.get_features("svc", entities={"user_id": [1, 2, 3]})
        table = served.to_dict()
        rows = [[table[f"activity.{a.name}"][i] for a in aggs] for i in range(3)]
        assert rows[0] == [0, 0, None, None, None, 0]
        assert rows[1] == [None] * len(aggs)
        assert rows[2] == [1, 1, 7, 2.5, "b", 1]
        assert [served.statuses[0][i] for i in range(3)] == ["PRESENT", "MISSING", "PRESENT"]
        # The served event time is the entity's latest event, even outside every window.
        assert served.event_timestamps[0][0] == "2024-05-22T12:00:00Z"
    finally:
        ctx.close()


def test_ties_nulls_and_unservable_rows(tmp_path):
    aggs = [
        Agg("latest", "last", "ix", DAY),
        Agg("latest_f", "last", "fx", DAY),
        Agg("kinds", "count_distinct", "sx", DAY),
        Agg("n", "count", None, DAY),
    ]
    t1 = T - timedelta(hours=2)
    events = [
        ev(1, T - timedelta(hours=3), ix=100, fx=100.0, sx="z"),
        ev(1, t1, ix=3, fx=None, sx="a"),
        ev(1, t1, ix=5, fx=-1.0, sx=None),  # tie on time: the largest value wins
        ev(1, t1, ix=4, fx=-2.0, sx="a"),
        ev(1, T - timedelta(hours=1), ix=None, fx=None, sx=None),  # later, but all null
        Event(None, micros(T - timedelta(minutes=5)), 999, 999.0, "q"),  # no key: dropped
        Event(1, None, 999, 999.0, "q"),  # no time: dropped
    ]
    ctx = deploy_events(tmp_path, aggs, events)
    try:
        ctx.materialize(end=T)
        assert online_row(ctx, aggs, 1) == [5, -1.0, 2, 5]
        assert offline_row(ctx, aggs, 1, t1) == (5, -1.0, 2, 4)
        # The all-null row still gets its own offline row, carrying the earlier values.
        assert offline_row(ctx, aggs, 1, T - timedelta(hours=1)) == (5, -1.0, 2, 5)
        assert {r[0] for r in read_offline(ctx, aggs)} == {1}
    finally:
        ctx.close()


# ---------------------------------------------------------------------------------------------
# Loading repos one after another in one process (what the property above, and any test suite,
# does): each load must see its own files.
# ---------------------------------------------------------------------------------------------
def test_a_second_repo_with_the_same_file_names_loads_its_own_definitions(make_repo):
    template = """\
        from datetime import timedelta
        from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view
        user = Entity(name="user", join_keys=["user_id"])
        events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")
        @batch_feature_view(sources=[events], entities=[user], mode="sql",
                            features=[Aggregate(column="x", function="FN", time_window="7d")])
        def v(events):
            return f"SELECT user_id, x, ts FROM {events}"
        svc = ContextService(name="svc", features=[v])
        """
    data = {
        "events.parquet": pa.table(
            {
                "user_id": pa.array([1], pa.int64()),
                "x": pa.array([1], pa.int64()),
                "ts": pa.array([T], pa.timestamp("us", tz="UTC")),
            }
        )
    }
    functions = {}
    for name, fn in (("first", "sum"), ("second", "max")):
        root = make_repo({"defs_same_name.py": template.replace("FN", fn)}, data=data, name=name)
        ctx = deploy(root)
        functions[name] = [f.function for f in ctx.specs().views["v"].features]
        ctx.close()
    assert functions == {"first": ["sum"], "second": ["max"]}
