"""How a materialization is split on Ray (contextkit.compute.ray.partitions): which views may
read only their share of the source, the time chunks, and the partition function itself.

No Ray here (fast): :func:`contextkit.compute.ray.features.bucket_rows` is what each Ray task
runs, a pure function, so calling it for every (time chunk, entity bucket) of a job and putting
the results together must give the local engine's rows; and each call must have read only its
share of the source, counted here again independently. The same on a real cluster, through
``ctx.materialize``: tests/compute/test_ray_features.py (slow)."""

from __future__ import annotations

import math
from datetime import timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contextkit.compute.materialize import _typed_columns, offline_rows_sql, online_rows_sql
from contextkit.compute.ray.features import INPUTS, OFFLINE, ONLINE, READ, bucket_rows, plan_parts
from contextkit.compute.ray.partitions import (
    analyse,
    first_timestamp,
    read_range,
    time_chunks,
)
from contextkit.framework import transformations
from contextkit.framework.specs import FeatureViewSpec, FileSourceSpec
from tests.compute.test_ray_features import DEFS, START, open_repo, random_events, write_repo

SOURCES = {
    "events": FileSourceSpec(
        name="events", path="e.parquet", format="parquet", timestamp_field="ts"
    ),
    "users": FileSourceSpec(name="users", path="u.parquet", format="parquet"),
}


def sql_view(sql: str, mode: str = "sql") -> FeatureViewSpec:
    return FeatureViewSpec(
        name="v", sources=["events", "users"], entities=["user"], mode=mode, sql=sql,
        features=[], timestamp_field="ts", join_keys=[{"name": "user_id", "dtype": "int64"}],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "keys", "timestamp"),
    [
        ('SELECT user_id, amount, ts FROM "events" WHERE amount > 1', ("user_id",), "ts"),
        ("SELECT * FROM events AS e WHERE e.category <> 'x'", ("user_id",), "ts"),
        ("SELECT e.user_id, e.t AS ts, lower(c) AS c FROM events e", ("user_id",), "t"),
        ("SELECT uid AS user_id, ts FROM events", ("uid",), "ts"),
        # A computed key: only the time range is pushed (the bucket filters the view's output).
        ("SELECT CAST(user_id AS BIGINT) AS user_id, ts FROM events", None, "ts"),
        ("SELECT * EXCLUDE (ts), ts2 AS ts FROM events", ("user_id",), None),
        ("SELECT user_id, payload.amount AS amount, ts FROM events", ("user_id",), "ts"),
        # The key named twice (by the star and again): ambiguous, so not pushed.
        ("SELECT *, user_id FROM events", None, "ts"),
    ],
)
def test_row_wise_sql_over_one_file_source_pushes_its_filters(sql, keys, timestamp):
    analysis = analyse(duckdb.connect(), sql_view(sql), SOURCES)
    assert analysis.pushdown is not None, analysis.reason
    assert (analysis.pushdown.keys, analysis.pushdown.timestamp) == (keys, timestamp)
    assert analysis.pushdown.source == "events"
    if "payload" in sql:  # a struct's field: the task must read the struct column
        assert "payload" in (analysis.pushdown.columns or ())


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT user_id, ts FROM events WHERE amount > (SELECT avg(amount) FROM events)",
         "subquery"),
        ("SELECT user_id, max(ts) AS ts FROM events GROUP BY user_id", "groups"),
        ("SELECT user_id, ts, count(*) OVER () AS n FROM events", "window"),
        ("SELECT user_id, ts, count(*) AS n FROM events", "aggregates"),
        ("SELECT DISTINCT user_id, ts FROM events", "DISTINCT"),
        ("SELECT user_id, ts FROM events LIMIT 10", "LIMIT"),
        ("SELECT e.user_id, e.ts FROM events e JOIN users u USING (user_id)", "more than one"),
        ("SELECT user_id, ts FROM events UNION ALL SELECT user_id, ts FROM events", "UNION"),
        ("WITH x AS (SELECT * FROM events) SELECT user_id, ts FROM x", "WITH"),
        ("SELECT user_id + 1 AS user_id, ts + INTERVAL 1 HOUR AS ts FROM events", "computed"),
    ],
)  # fmt: skip
def test_anything_else_reads_the_whole_source(sql, why):
    analysis = analyse(duckdb.connect(), sql_view(sql), SOURCES)
    assert analysis.pushdown is None and why in analysis.reason, analysis.reason
    python = analyse(duckdb.connect(), sql_view("", mode="pandas"), SOURCES)
    assert python.pushdown is None and "pandas" in python.reason


def test_time_chunks_and_the_rows_each_chunk_reads():
    day = timedelta(days=1)
    start, end = START, START + timedelta(days=2, hours=12)
    assert time_chunks(start, end, day) == [
        (START, START + day), (START + day, START + 2 * day), (START + 2 * day, end),
    ]  # fmt: skip
    assert time_chunks(start, end, None) == [(start, end)]
    assert time_chunks(None, end, day) == [(None, end)]  # no start: one open chunk
    # ... unless the data's first timestamp is known: cut from it, the first chunk open below.
    one = START + timedelta(hours=1)
    assert time_chunks(None, end, day, first=one) == [
        (None, one + day), (one + day, one + 2 * day), (one + 2 * day, end),
    ]  # fmt: skip
    assert time_chunks(end, end, day) == [(end, end)]
    view = FeatureViewSpec.model_validate(
        {**sql_view("SELECT user_id, ts, amount FROM events").model_dump(), "ttl_seconds": 7200,
         "features": [{"kind": "aggregate", "column": "amount", "function": "sum",
                       "window_seconds": 86400 * 3, "name": "s"}]}
    )  # fmt: skip
    # Offline rows of a chunk: the chunk plus its windows' lookback.
    assert read_range(view, start, start + day, offline=True, online_as_of=None) == (
        start - 3 * day, start + day,
    )  # fmt: skip
    # The latest values as of the end: back by the largest window (the ttl is shorter), and
    # rows at the end itself.
    lo, hi = read_range(view, end - day, end, offline=False, online_as_of=end)
    assert (lo, hi) == (end - 3 * day, end + timedelta(microseconds=1))
    attribute = sql_view("SELECT user_id, ts FROM events")
    assert read_range(attribute, start, end, offline=True, online_as_of=end)[0] is None


def _cells(table: pa.Table) -> list[tuple]:
    return sorted((tuple(r.values()) for r in table.to_pylist()), key=lambda r: repr(r[:2]))


def _same(got: pa.Table, want: pa.Table) -> bool:
    """Cell for cell (a double within 1e-12 relative: a window's sum over fewer rows may
    differ in its last bit)."""
    g, w = _cells(got), _cells(want)
    return len(g) == len(w) and all(
        all(
            math.isclose(a, b, rel_tol=1e-12) if isinstance(b, float) and a is not None else a == b
            for a, b in zip(r, s, strict=True)
        )
        for r, s in zip(g, w, strict=True)
    )


def run_parts(
    ctx, name: str, start, end, *, buckets: int, chunk: timedelta, data: pa.Table, first=None
):
    """Every task of the job, called in turn (what Ray would run), against the local engine:
    the union of their offline, input and online rows equals the local engine's, and each task
    read exactly its bucket's source rows of its read range (counted again here from ``data``).
    Returns the local engine's online rows."""
    specs = ctx.runtime.specs("prod")
    root = ctx.runtime.config.root.resolve()
    view = specs.views[name]
    analysis = analyse(duckdb.connect(), view, specs.sources)
    assert analysis.pushdown is not None and analysis.pushdown.keys == ("user_id",), analysis
    with transformations.workspace_session(root, specs.sources, specs.views) as ws:
        want = {
            OFFLINE: offline_rows_sql(
                view, transformations.offline_features_sql(ws, view, start, end)
            ),
            ONLINE: online_rows_sql(view, transformations.online_features_sql(ws, view, end)),
        }
        if view.is_aggregate:
            want[INPUTS] = transformations.aggregate_inputs_sql(ws, view, start, end)
        want = {kind: ws.con.sql(sql).to_arrow_table() for kind, sql in want.items()}
    parts = plan_parts(
        view, start, end, buckets=buckets, chunk=chunk, offline=True, online=True, first=first
    )
    assert len({p.chunk for p in parts}) > 1 and [p.online for p in parts].count(True) == buckets
    got: dict[str, list] = {kind: [] for kind in want}
    source = duckdb.connect()
    source.execute("SET TimeZone = 'UTC'")
    source.register("events", data)
    for part in parts:
        out = bucket_rows(
            root, specs.sources, specs.views, view, part.start, part.end, bucket=part.bucket,
            buckets=part.buckets, pushdown=analysis.pushdown,
            offline=_typed_columns(view, epoch_timestamps=False),
            online=_typed_columns(view, epoch_timestamps=True) if part.online else None,
        )  # fmt: skip
        for kind in got:
            if kind in out:
                got[kind].append(out[kind])
        # What it read, counted again: its bucket's rows of its chunk and lookback only.
        lo, hi = read_range(view, part.start, part.end, offline=True,
                            online_as_of=end if part.online else None)  # fmt: skip
        [(expected,)] = source.execute(
            f"SELECT count(*) FROM events WHERE hash(user_id) % {buckets} = ? "
            "AND (?::TIMESTAMPTZ IS NULL OR ts >= ?) AND ts < ?",
            [part.bucket, lo, lo, hi],
        ).fetchall()
        assert out[READ] == {"events": expected}, part
        assert expected < data.num_rows / 2
    for kind, table in want.items():
        assert table.num_rows, kind
        assert _same(pa.concat_tables(got[kind]), table), kind
    return want[ONLINE]


def test_chunks_times_buckets_equal_the_local_engine_and_each_reads_its_share(tmp_path):
    """A job over 3.5 days cut into 30-hour chunks (windows of up to 3 days cross every chunk
    edge) and 2 entity buckets: 6 tasks. Users 30-31 appear only late (unknown before), some
    rows have no user; ttl drops users with no recent event from the online values."""
    events = random_events(11, 500)
    late = random_events(12, 60, first_id=5000)
    late = late.set_column(0, "user_id", pa.array([30 + i % 2 for i in range(60)], pa.int64()))
    nulls = random_events(13, 20, first_id=9000)
    nulls = nulls.set_column(0, "user_id", pa.nulls(20, pa.int64()))
    data = pa.concat_tables([events, late, nulls])
    ctx = open_repo(write_repo(tmp_path / "repo", DEFS, {"events.parquet": data}, None))
    start, end = START + timedelta(days=2, hours=7), START + timedelta(days=5, hours=19)
    online = run_parts(ctx, "spend", start, end, buckets=2, chunk=timedelta(hours=30), data=data)
    assert {30, 31} <= {r["user_id"] for r in online.to_pylist()}


@pytest.mark.parametrize("where", ["csv", pytest.param("s3", marks=pytest.mark.slow)])
def test_csv_and_s3_sources_read_only_their_share(where, tmp_path, request, monkeypatch):
    """The same pushdown on a local CSV file (parsed by DuckDB) and on Parquet in S3 (an Arrow
    dataset, the time range going into its scan; slow: it starts the moto server)."""
    data = random_events(31, 300)
    root = tmp_path / "repo"
    if where == "csv":
        defs = DEFS.replace('path="data/events.parquet"', 'path="data/events.csv"')
        write_repo(root, defs, {}, None)
        import pyarrow.csv as pacsv

        pacsv.write_csv(data, root / "data" / "events.csv")
    else:
        from contextkit.stores.objectstore import S3Settings

        server = request.getfixturevalue("s3_server")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        bucket = server.create_bucket()
        filesystem = S3Settings.from_env().filesystem()
        pq.write_table(data, f"{bucket}/events.parquet", filesystem=filesystem)
        defs = DEFS.replace('path="data/events.parquet"', f'path="s3://{bucket}/events.parquet"')
        write_repo(root, defs, {}, None)
    ctx = open_repo(root)
    end = START + timedelta(days=5, hours=2)
    # A range without a start (a full recompute), cut from the data's first timestamp.
    specs = ctx.runtime.specs("prod")
    view = specs.views["latest"]
    push = analyse(duckdb.connect(), view, specs.sources).pushdown
    con = transformations.connect_duckdb()
    first = first_timestamp(con, ctx.runtime.config.root.resolve(), specs.sources["events"], push)
    assert first == min(data.column("ts").to_pylist())
    run_parts(ctx, "latest", None, end, buckets=2, chunk=timedelta(days=2), data=data, first=first)


def test_a_view_that_cannot_push_reads_the_whole_source_and_is_still_exact(tmp_path):
    defs = DEFS.replace(
        'f"SELECT user_id, category, amount, ts FROM {events} WHERE event_id % 3 = 0"',
        'f"SELECT user_id, category, amount, ts FROM {events} WHERE event_id % 3 = 0 '
        'AND amount < (SELECT max(amount) FROM {events})"',
    )
    data = random_events(5, 300)
    ctx = open_repo(write_repo(tmp_path / "repo", defs, {"events.parquet": data}, None))
    specs = ctx.runtime.specs("prod")
    root = ctx.runtime.config.root.resolve()
    view = specs.views["latest"]  # attributes, ttl 1 day
    analysis = analyse(duckdb.connect(), view, specs.sources)
    assert analysis.pushdown is None and "subquery" in analysis.reason
    start, end = START + timedelta(days=1), START + timedelta(days=5, hours=3)
    with transformations.workspace_session(root, specs.sources, specs.views) as ws:
        want = ws.con.sql(
            offline_rows_sql(view, transformations.offline_features_sql(ws, view, start, end))
        ).to_arrow_table()
    parts = plan_parts(view, start, end, buckets=2, chunk=timedelta(days=2), offline=True,
                       online=False)  # fmt: skip
    outs = [
        bucket_rows(
            root,
            specs.sources,
            specs.views,
            view,
            p.start,
            p.end,
            bucket=p.bucket,
            buckets=p.buckets,
            offline=_typed_columns(view, epoch_timestamps=False),
            online=None,
        )  # fmt: skip
        for p in parts
    ]
    assert all(out[READ] == {"events": None} for out in outs)  # the whole file: not counted
    assert want.num_rows and _same(pa.concat_tables([o[OFFLINE] for o in outs]), want)


def test_time_chunk_config():
    from contextkit.config import ComputeConfig

    assert ComputeConfig(time_chunk="7d").time_chunk == timedelta(days=7)
    assert ComputeConfig(time_chunk="12h").time_chunk == timedelta(hours=12)
    assert ComputeConfig(time_chunk=90).time_chunk == timedelta(seconds=90)
    assert ComputeConfig().time_chunk is None
    for bad in ("0d", -5, "soon"):
        with pytest.raises(ValueError):
            ComputeConfig(time_chunk=bad)


@pytest.mark.slow  # starts PostgreSQL
def test_a_database_source_reads_each_chunks_range_from_the_database(
    tmp_path, postgres_server, monkeypatch
):
    """A PostgresSource is not pushed (the database's hash is not DuckDB's): each task reads
    its chunk's time range (with the lookback) from the database, the bucket filters the view's
    output, and the tasks together equal the local engine."""
    import psycopg

    data = random_events(41, 400)
    url = postgres_server.create_database()
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(
            "CREATE TABLE events (user_id bigint, event_id bigint, amount double precision, "
            "category text, ts timestamptz)"
        )
        with con.cursor().copy("COPY events FROM STDIN") as copy:
            for row in data.to_pylist():
                copy.write_row(tuple(row.values()))
    monkeypatch.setenv("CK_TEST_PG", url)
    defs = DEFS.replace(
        'events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")',
        'events = PostgresSource(name="events", connection="env:CK_TEST_PG", table="events", '
        'timestamp_field="ts")',
    ).replace("from contextkit import ", "from contextkit import PostgresSource, ")
    ctx = open_repo(write_repo(tmp_path / "repo", defs, {}, None))
    specs = ctx.runtime.specs("prod")
    root = ctx.runtime.config.root.resolve()
    view = specs.views["spend"]
    analysis = analyse(duckdb.connect(), view, specs.sources)
    assert analysis.pushdown is None and "database" in analysis.reason
    start, end = START + timedelta(days=2), START + timedelta(days=5, hours=6)
    with transformations.workspace_session(root, specs.sources, specs.views) as ws:
        want = ws.con.sql(
            offline_rows_sql(view, transformations.offline_features_sql(ws, view, start, end))
        ).to_arrow_table()
    parts = plan_parts(view, start, end, buckets=2, chunk=timedelta(days=2), offline=True,
                       online=True)  # fmt: skip
    source = duckdb.connect()
    source.execute("SET TimeZone = 'UTC'")
    source.register("events", data)
    got = []
    for part in parts:
        out = bucket_rows(
            root, specs.sources, specs.views, view, part.start, part.end, bucket=part.bucket,
            buckets=part.buckets, offline=_typed_columns(view, epoch_timestamps=False),
            online=_typed_columns(view, epoch_timestamps=True) if part.online else None,
        )  # fmt: skip
        got.append(out[OFFLINE])
        lo, hi = read_range(view, part.start, part.end, offline=True,
                            online_as_of=end if part.online else None)  # fmt: skip
        [(rows,)] = source.execute(
            "SELECT count(*) FROM events WHERE ts >= ? AND ts < ?", [lo, hi]
        ).fetchall()
        assert out[READ] == {"events": rows}, part  # the chunk's range, every entity
    assert want.num_rows and _same(pa.concat_tables(got), want)
