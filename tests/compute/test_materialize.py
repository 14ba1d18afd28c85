"""Materialization jobs: incremental ranges, full recomputes, and failures that change nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import contextkit
from contextkit.errors import ContextKitError

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

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def events_table(rows: list[tuple[int, float, datetime]]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "x": pa.array([r[1] for r in rows], pa.float64()),
            "ts": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
        }
    )


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def offline_rows(ctx, view: str) -> list[tuple]:
    files = [str(p) for p in ctx.offline.files(f"prod/{view}")]
    if not files:
        return []
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute(f"SELECT * FROM read_parquet({files!r}) ORDER BY ALL").fetchall()


@pytest.fixture
def repo(make_repo):
    rows = [(1, 1.0, day(0.5)), (1, 2.0, day(1.5)), (2, 5.0, day(2.5)), (1, 4.0, day(3.5))]
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events_table(rows)})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    return root, ctx, rows


def test_incremental_runs_add_new_rows_and_equal_a_full_recompute(repo):
    root, ctx, rows = repo
    ctx.materialize(end=day(3))
    assert len(offline_rows(ctx, "spend")) == 3
    # New events arrive; the next run covers only [day 3, day 5).
    rows = rows + [(2, 7.0, day(4.0)), (1, 1.0, day(4.5))]
    pq.write_table(events_table(rows), root / "data" / "events.parquet")
    jobs = ctx.materialize(end=day(5))
    assert {j.start for j in jobs} == {day(3)}
    assert next(j for j in jobs if j.view == "spend").rows_offline == 3  # day 3.5, 4.0, 4.5
    incremental = offline_rows(ctx, "spend")
    ctx.materialize(end=day(5), full=True)
    assert offline_rows(ctx, "spend") == incremental
    # Online as of day 5: user 1 has events at 3.5 and 4.5 in (day 3, day 5].
    got = ctx.get_features("svc", entities={"user_id": [1, 2]}).to_dict()
    assert got["spend.x_sum_2d"] == [5.0, 7.0]
    assert got["spend.x_count_2d"] == [2, 1]
    assert got["latest.x"] == [1.0, 7.0]


def test_going_back_to_an_earlier_definition_recomputes_it_whole(repo):
    root, ctx, rows = repo
    ctx.materialize(["spend"], end=day(2))  # definition A, up to day 2
    b = DEFS.replace(
        'time_window=timedelta(days=2)),\n    Aggregate(column="x", function="count"',
        'time_window=timedelta(days=1)),\n    Aggregate(column="x", function="count"',
    )
    assert b != DEFS
    (root / "defs.py").write_text(b)
    ctx.apply(ctx.plan(root))
    ctx.materialize(["spend"], end=day(4))  # B replaces the store's rows
    (root / "defs.py").write_text(DEFS)
    ctx.apply(ctx.plan(root))
    [job] = ctx.materialize(["spend"], end=day(4))  # A again: not a continuation from day 2
    assert job.start is None
    again = offline_rows(ctx, "spend")
    ctx.materialize(["spend"], end=day(4), full=True)
    assert offline_rows(ctx, "spend") == again


def test_rerunning_an_explicit_range_is_idempotent(repo):
    _root, ctx, _rows = repo
    ctx.materialize(end=day(4))
    first = offline_rows(ctx, "spend")
    ctx.materialize(start=day(1), end=day(3))
    ctx.materialize(start=day(1), end=day(3))
    assert offline_rows(ctx, "spend") == first


def test_a_failure_mid_job_leaves_both_stores_as_they_were(repo, monkeypatch):
    root, ctx, rows = repo
    ctx.materialize(end=day(3))
    offline_before = offline_rows(ctx, "spend")
    online_before = ctx.get_features("svc", entities={"user_id": [1, 2]}).to_dict()
    files_before = sorted(p.name for p in ctx.offline.files("prod/spend"))

    # New data, then a crash while the online table is being written (after offline staging).
    pq.write_table(events_table(rows + [(1, 100.0, day(3.2))]), root / "data" / "events.parquet")

    def rows_then_crash(self, table, keys, columns, rows_iter):
        for _ in rows_iter:
            break
        raise RuntimeError("disk on fire")

    from contextkit.stores.online import SQLiteOnlineStore

    monkeypatch.setattr(SQLiteOnlineStore, "replace_table", rows_then_crash)
    with pytest.raises(ContextKitError, match="disk on fire"):
        ctx.materialize(["spend"], end=day(4))
    monkeypatch.undo()

    assert offline_rows(ctx, "spend") == offline_before
    assert sorted(p.name for p in ctx.offline.files("prod/spend")) == files_before
    assert not list((root / ".contextkit/offline/prod/spend/_staging").glob("*/**/*.parquet"))
    assert ctx.get_features("svc", entities={"user_id": [1, 2]}).to_dict() == online_before
    failed = ctx.jobs("spend")[0]
    assert failed.status == "failed" and "disk on fire" in failed.error
    # The failed job does not move the watermark: the next run redoes the range.
    job = ctx.materialize(["spend"], end=day(4))[0]
    assert job.start == day(3)


def test_a_corrupt_source_fails_cleanly(repo):
    root, ctx, _rows = repo
    ctx.materialize(end=day(3))
    before = ctx.get_features("svc", entities={"user_id": [1]}).to_dict()
    (root / "data" / "events.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ContextKitError) as info:
        ctx.materialize(end=day(4))
    assert "events.parquet" in info.value.message or "parquet" in info.value.message.lower()
    assert info.value.hint
    assert ctx.get_features("svc", entities={"user_id": [1]}).to_dict() == before


def test_dev_workspaces_do_not_materialize(repo):
    root, ctx, _rows = repo
    dev = ctx.use("dev")
    dev.create_workspace("dev", live=False)
    dev.apply(dev.plan(root))
    with pytest.raises(ContextKitError, match="dev workspace"):
        dev.materialize()
