"""Offline retrieval on Ray: the point-in-time join of many events, partitioned by entity hash,
each partition joined in DuckDB in a Ray task on a real two-node cluster (``ray_cluster``).

The oracle is the local engine: on seeded random data (attribute views with a ttl, aggregates of
several windows, rows that arrive after the materialization, entities nobody knows, null keys,
events in shuffled order), the Ray result equals the local one cell for cell and dtype for dtype,
as a DataFrame, as Arrow and written to Parquet; a rendered dataset's JSONL is the same bytes.
The random values are binary fractions (k/8), so sums are exact in any order: with arbitrary
doubles a window's sum may differ in the last bit (the quickstart's test allows for that). The
results are cut into small ranges of rows here, so that the driver's reordering across partitions
and ranges is exercised on small data.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import contextkit
from contextkit.compute.offline import OfflineFeatures, resolve_refs
from contextkit.compute.ray import offline as ray_offline
from contextkit.config import ComputeConfig
from contextkit.errors import JobCancelledError, RealtimeFeatureError
from contextkit.retrieval.datasets import generate_dataset

pytestmark = pytest.mark.slow

BASE = pd.Timestamp("2024-06-01", tz="UTC")
END = BASE + pd.Timedelta(days=30)
USERS = 40  # users 0..39 have rows; events also name 40..49 (unknown) and null

DEFS = """\
from datetime import timedelta
from contextkit import (
    Aggregate, Attribute, ContextService, Entity, Field, FileSource, Float64, RequestSource,
    batch_feature_view, realtime_feature_view,
)

user = Entity(name="user", join_keys=["user_id"])
rows = FileSource(name="rows", path="data/rows.parquet", timestamp_field="ts")

@batch_feature_view(sources=[rows], entities=[user], mode="sql", ttl=timedelta(days=3),
                    features=[Attribute("a"), Attribute("b")])
def profile(rows):
    return f"SELECT user_id, a, b, ts FROM {rows}"

@batch_feature_view(sources=[rows], entities=[user], mode="sql", ttl=timedelta(days=10), features=[
    Aggregate(function="count", time_window=timedelta(days=1), name="n_1d"),
    Aggregate(column="x", function="sum", time_window=timedelta(days=7), name="x_sum_7d"),
    Aggregate(column="a", function="mean", time_window=timedelta(days=1), name="a_mean_1d"),
    Aggregate(column="b", function="last", time_window=timedelta(days=7), name="b_last_7d"),
    Aggregate(column="b", function="count_distinct", time_window=timedelta(days=30), name="b_n"),
    Aggregate(column="x", function="max", time_window=timedelta(hours=1), name="x_max_1h"),
])
def activity(rows):
    return f"SELECT user_id, a, b, x, ts FROM {rows}"

@realtime_feature_view(
    sources=[RequestSource([Field("amount", Float64)]), profile],
    features=[Attribute("score", Float64)],
)
def risk(request, profile):
    import pathlib
    import time

    while pathlib.Path(HOLD).exists():  # a test holds the tasks here to kill one's worker
        time.sleep(0.05)
    if request["amount"] < 0:
        raise ValueError(f"negative amount {request['amount']}")
    a = profile["a"]
    return {"score": None if a is None else request["amount"] * a}

svc = ContextService(name="svc", features=[profile, activity])
risky = ContextService(name="risky", features=[risk, activity])
"""

CONFIG = """\
project: rayoffline
registry: .contextkit/registry.db
online_store: {type: sqlite, path: .contextkit/online.db}
offline_store: {type: parquet, path: .contextkit/offline}
"""


def source_rows(rng: np.random.Generator, n: int, start: pd.Timestamp, days: int) -> pa.Table:
    """Random rows of users 0..USERS-1 with nulls in every value column, times in
    ``[start, start + days)``, tied times included."""
    seconds = rng.integers(0, days * 86_400, n) // 600 * 600  # 10-minute grid: ties
    return pa.table(
        {
            "user_id": pa.array(rng.integers(0, USERS, n), pa.int64()),
            "a": pa.array([None if v < 0 else int(v) for v in rng.integers(-2, 9, n)], pa.int64()),
            "b": pa.array([None if v == 0 else f"s{v}" for v in rng.integers(0, 6, n)]),
            "x": pa.array([None if v < 0.1 else round(v * 8) / 8 for v in rng.random(n)]),
            "ts": pa.array(start + pd.to_timedelta(seconds, unit="s"), pa.timestamp("us", "UTC")),
        }
    )


def random_events(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Events in shuffled order: known, unknown and null users, before, inside and after the
    data, with a label and an amount (the realtime view's request value)."""
    keys = pd.array(rng.integers(0, USERS + 10, n), dtype="Int64")
    keys[rng.random(n) < 0.05] = pd.NA
    offsets = pd.to_timedelta(rng.integers(-5 * 86_400, 40 * 86_400, n), unit="s")
    return pd.DataFrame(
        {
            "user_id": keys,
            "ts": pd.Series(BASE + offsets, dtype="datetime64[us, UTC]"),
            "label": rng.integers(0, 2, n),
            "amount": rng.random(n) * 100,
        }
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The repo applied and materialized up to END; then rows arrive late (times before END,
    written after the job): the sources hold them, the offline store does not."""
    rng = np.random.default_rng(16)
    root = tmp_path_factory.mktemp("ray_offline") / "repo"
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(CONFIG)
    (root / "defs_ray_offline.py").write_text(DEFS.replace("HOLD", repr(str(root / "hold"))))
    pq.write_table(source_rows(rng, 1500, BASE, 30), root / "data" / "rows.parquet")
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=END.to_pydatetime())
    late = source_rows(rng, 200, END - pd.Timedelta(days=6), 6)
    both = pa.concat_tables([pq.read_table(root / "data" / "rows.parquet"), late])
    pq.write_table(both, root / "data" / "rows.parquet")
    ctx.close()
    return root


@pytest.fixture(scope="module")
def compute(ray_cluster) -> ComputeConfig:
    return ComputeConfig(engine="ray", address=ray_cluster.address, partitions=3)


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch):
    """Ranges of 97 rows and splits of 50: many ranges, each mixing every partition, and many
    dealing tasks."""
    monkeypatch.setattr(ray_offline, "CHUNK_ROWS", 97)
    monkeypatch.setattr(ray_offline, "SPLIT_ROWS", 50)


def both(ctx, compute, events, service, from_source=None):
    refs = resolve_refs(ctx.runtime, service)
    local = OfflineFeatures(ctx.runtime, events, refs, "ts", from_source)
    on_ray = OfflineFeatures(ctx.runtime, events, refs, "ts", from_source, compute=compute)
    return local, on_ray


def assert_same_frames(local: pd.DataFrame, on_ray: pd.DataFrame) -> None:
    assert list(on_ray.columns) == list(local.columns)
    assert on_ray.dtypes.to_dict() == local.dtypes.to_dict()
    pd.testing.assert_frame_equal(on_ray, local, check_exact=True)


@pytest.mark.parametrize(
    ("from_source", "as_parquet"),
    [(False, False), (True, True)],
    ids=["offline-store-dataframe", "sources-with-late-rows-parquet-path"],
)
def test_ray_join_equals_the_local_engine_cell_for_cell(
    repo, compute, tmp_path, from_source, as_parquet
):
    ctx = contextkit.connect(repo, workspace="prod")
    events = random_events(np.random.default_rng(7), 700)
    if as_parquet:
        path = tmp_path / "events.parquet"
        pq.write_table(pa.Table.from_pandas(events, preserve_index=False), path)
        events = str(path)
    local, on_ray = both(ctx, compute, events, "svc", from_source)
    want = local.to_pandas()
    got = on_ray.to_pandas()
    assert_same_frames(want, got)
    assert on_ray.sources_used == local.sources_used
    assert set(local.sources_used.values()) == {"source" if from_source else "offline_store"}
    # Not a vacuous equality: known users have values, unknown and null users none.
    assert got["activity__n_1d"].notna().sum() > 50 and got["profile__a"].notna().sum() > 50
    assert got.loc[got["user_id"].isna() | (got["user_id"] >= USERS), "profile__a"].isna().all()
    arrow = on_ray.to_arrow()
    assert arrow.schema == local.to_arrow().schema
    assert arrow.equals(local.to_arrow())
    ctx.close()


def test_late_rows_change_the_source_result_and_ray_sees_them_too(repo, compute):
    """The rows written after the job are in the sources' answer and not the offline store's,
    on both engines: the two paths really read different data."""
    ctx = contextkit.connect(repo, workspace="prod")
    events = random_events(np.random.default_rng(8), 300)
    stored = both(ctx, compute, events, "svc", False)[1].to_pandas()
    sourced = both(ctx, compute, events, "svc", True)[1].to_pandas()
    assert not stored.equals(sourced)
    assert_same_frames(both(ctx, compute, events, "svc", True)[0].to_pandas(), sourced)
    ctx.close()


def test_parquet_output_equals_the_local_engines(repo, compute, tmp_path):
    ctx = contextkit.connect(repo, workspace="prod")
    events = random_events(np.random.default_rng(9), 400).sample(frac=1, random_state=3)
    for service in ("svc", "risky"):  # DuckDB's writer, and pyarrow's with a realtime view
        local, on_ray = both(ctx, compute, events, service, False)
        want = pq.read_table(local.to_parquet(tmp_path / f"{service}-local.parquet"))
        got = pq.read_table(on_ray.to_parquet(tmp_path / f"{service}-ray.parquet"))
        assert got.schema == want.schema, service
        assert got.equals(want), service
        assert got.num_rows == len(events)
    ctx.close()


def test_the_engine_comes_from_the_config(repo, ray_cluster, monkeypatch):
    """CONTEXTKIT_COMPUTE=host:port puts ``get_features_for_events`` on that cluster."""
    events = random_events(np.random.default_rng(10), 200)
    local = contextkit.connect(repo, workspace="prod")
    monkeypatch.setenv("CONTEXTKIT_COMPUTE", ray_cluster.address)
    on_ray = contextkit.connect(repo, workspace="prod")
    assert on_ray.runtime.config.compute.engine == "ray"
    result = on_ray.get_features_for_events(events, "risky")
    assert result._on_ray()
    assert_same_frames(
        local.get_features_for_events(events, "risky").to_pandas(), result.to_pandas()
    )
    local.close()
    on_ray.close()


def test_a_bad_value_fails_the_join_naming_its_partition_and_the_value(repo, compute):
    ctx = contextkit.connect(repo, workspace="prod")
    events = random_events(np.random.default_rng(11), 120)
    events.loc[77, "amount"] = -5.25  # the view's function refuses a negative amount
    local, on_ray = both(ctx, compute, events, "risky", False)
    with pytest.raises(RealtimeFeatureError, match="negative amount -5.25"):
        local.to_pandas()
    with pytest.raises(RealtimeFeatureError, match=r"^partition \d of 3 ") as info:
        on_ray.to_pandas()
    assert "realtime view 'risk' raised ValueError: negative amount -5.25" in info.value.message
    assert info.value.hint
    ctx.close()


def test_a_rendered_dataset_on_ray_is_the_local_one(quickstart_data, compute, tmp_path):
    """The quickstart's support prompt rendered per event: the JSONL and Parquet outputs are
    the same bytes and tables whether its features were joined locally or on Ray."""
    root = tmp_path / "shop"
    shutil.copytree(quickstart_data, root, ignore=shutil.ignore_patterns(".contextkit"))
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    rng = np.random.default_rng(12)
    n = 150
    events = pd.DataFrame(
        {
            "user_id": rng.integers(1, 230, n),  # the quickstart has 200 users
            "ts": pd.Series(
                pd.Timestamp("2024-01-01", tz="UTC")
                + pd.to_timedelta(rng.integers(0, 160 * 86_400, n), unit="s"),
                dtype="datetime64[us, UTC]",
            ),
            "query": [f"question {i}" for i in range(n)],
            "channel": ["chat"] * n,
            "answer": [f"answer {i}" for i in range(n)],
        }
    )
    outputs = {}
    for name, engine in (("local", None), ("ray", compute)):
        dataset = generate_dataset(
            ctx.runtime, events, "support_assistant", label_column="answer",
            from_source=True, compute=engine,
        )  # fmt: skip
        jsonl = dataset.to_jsonl(tmp_path / f"{name}.jsonl")
        assert jsonl.rows == n
        dataset.to_parquet(tmp_path / f"{name}.parquet")
        outputs[name] = (
            (tmp_path / f"{name}.jsonl").read_bytes(),
            pq.read_table(tmp_path / f"{name}.parquet"),
        )
    assert outputs["ray"][0] == outputs["local"][0]
    ray_table, local_table = outputs["ray"][1], outputs["local"][1]
    assert ray_table.schema == local_table.schema
    for name in ("prompt", "label", "tokens", "truncated"):
        assert ray_table[name].equals(local_table[name]), name
    # Sums of arbitrary doubles may differ in the last bit: DuckDB adds a window's values in
    # an order that depends on the other rows the query holds (docs/compute.md).
    pd.testing.assert_frame_equal(
        pd.DataFrame(ray_table["features"].to_pylist()),
        pd.DataFrame(local_table["features"].to_pylist()),
        check_exact=False, rtol=1e-12,
    )  # fmt: skip
    assert len(outputs["ray"][0].splitlines()) == n
    ctx.close()


def reading(on_ray) -> tuple[threading.Thread, dict]:
    """A thread (not started) that reads ``on_ray`` to pandas into ``outcome`` (its result or
    its error)."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = on_ray.to_pandas()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    return threading.Thread(target=run, daemon=True), outcome


def test_a_killed_worker_is_retried_and_the_result_is_exact(repo, compute, ray_cluster):
    """A worker SIGKILLed while its partition's task runs: Ray runs the task again, and the
    rows are still the local engine's, in order."""
    ctx = contextkit.connect(repo, workspace="prod")
    events = random_events(np.random.default_rng(13), 300)
    local, on_ray = both(ctx, compute, events, "risky", False)
    want = local.to_pandas()
    thread, outcome = reading(on_ray)
    hold = repo / "hold"
    hold.touch()
    thread.start()
    try:
        killed = ray_cluster.kill_worker("_join_partition", timeout_s=180)
    finally:
        hold.unlink()
    thread.join(timeout=600)
    assert killed and not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert_same_frames(want, outcome["result"])
    ctx.close()


def test_no_events_and_one_event_give_the_local_result(repo, compute):
    """The edges: no events (nothing to spread: the local query gives the empty result's
    columns and dtypes) and a single event (more partitions asked for than events)."""
    ctx = contextkit.connect(repo, workspace="prod")
    events = random_events(np.random.default_rng(14), 5)
    for subset in (events.iloc[:0], events.iloc[:1]):
        local, on_ray = both(ctx, compute, subset, "risky", False)
        assert_same_frames(local.to_pandas(), on_ray.to_pandas())
        assert on_ray.to_arrow().schema == local.to_arrow().schema
    ctx.close()


def test_cancelling_a_read_stops_its_tasks_and_removes_its_scratch(repo, compute, ray_cluster):
    """``cancel()`` mid-join: the partition tasks are cancelled (their workers killed), the
    run's scratch folder is removed and the read raises JobCancelledError. A folder a dead
    driver left behind is removed by this read too."""
    ctx = contextkit.connect(repo, workspace="prod")
    scratch = repo / ".contextkit" / "offline" / ".scratch"
    stale = scratch / "join-left-by-a-dead-driver"
    stale.mkdir(parents=True, exist_ok=True)
    (stale / ray_offline.OWNER_FILE).write_text(
        json.dumps({"host": "elsewhere", "pid": 1, "start": "", "created": time.time() - 3 * 86400})
    )
    events = random_events(np.random.default_rng(15), 300)
    _local, on_ray = both(ctx, compute, events, "risky", False)
    thread, outcome = reading(on_ray)
    hold = repo / "hold"
    hold.touch()
    try:
        thread.start()
        while not ray_cluster.workers("_join_partition"):  # a partition task holds
            assert thread.is_alive(), outcome
            time.sleep(0.05)
        assert [p.name for p in scratch.iterdir() if p.name != stale.name]  # the run's folder
        on_ray.cancel()
        thread.join(timeout=300)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), JobCancelledError), outcome
        while ray_cluster.workers("_join_partition"):  # cancelled, not left holding the cluster
            time.sleep(0.05)
    finally:
        hold.unlink()
    assert list(scratch.iterdir()) == []  # the run's folder and the stale one
    ctx.close()
