"""Batch feature views on the Ray engine (contextkit.compute.ray): the config that picks the
engine, connecting to a cluster, and materialization equal to the local engine's.

The config tests are fast; every test that runs Ray uses the session's real two-node cluster
(``ray_cluster``, tests/ray_backend.py) and is marked slow (still run in CI)."""

from __future__ import annotations

import math
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from contextkit.config import ComputeConfig, RepoConfig, apply_env_overrides
from contextkit.errors import ComputeError
from tests.conftest import DATA_END

ROOT = Path(__file__).resolve().parents[2]

# -- config (fast) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "engine", "address"),
    [
        ("local", "local", None),
        ("ray", "ray", None),
        ("ray://head:10001", "ray", "ray://head:10001"),
        ("10.0.0.5:6379", "ray", "10.0.0.5:6379"),
        ({"address": "head:6379"}, "ray", "head:6379"),
        ({"engine": "local", "views": {"docs": "ray"}}, "local", None),
    ],
)
def test_compute_shorthands(value, engine, address):
    config = RepoConfig(project="p", compute=value).compute
    assert (config.engine, config.address) == (engine, address)
    assert config.ray_address == (address or "local")


def test_default_is_local_and_views_override():
    assert RepoConfig(project="p").compute.engine_for("any") == "local"
    config = ComputeConfig(engine="local", views={"docs": "ray"})
    assert (config.engine_for("docs"), config.engine_for("stats")) == ("ray", "local")
    assert config.uses_ray
    config = ComputeConfig.model_validate(
        {"engine": "ray", "views": {"small": "local"}, "embedding": {"num_gpus": 0.5}}
    )
    assert (config.engine_for("small"), config.engine_for("big")) == ("local", "ray")
    assert config.embedding.num_gpus == 0.5 and config.embedding.batch_size > 0


@pytest.mark.parametrize(
    "value",
    [
        "spark",
        "http://head:6379",
        "head",
        "head:notaport",
        {"engine": "dask"},
        {"engine": "ray", "adress": "h:1"},
        {"engine": "ray", "partitions": 0},
        {"engine": "ray", "views": {"v": "spark"}},
        {"engine": "ray", "connect_timeout_s": 0},
    ],
)
def test_bad_compute_config_is_rejected(value):
    with pytest.raises(ValueError):
        RepoConfig(project="p", compute=value)


def test_env_overrides_engine_and_keeps_the_files_other_settings():
    raw = {"compute": {"engine": "local", "partitions": 3, "views": {"docs": "ray"}}}
    out = apply_env_overrides(raw, {"CONTEXTKIT_COMPUTE": "ray://head:10001"})
    config = RepoConfig(project="p", **out).compute
    assert (config.engine, config.address, config.partitions) == ("ray", "ray://head:10001", 3)
    assert config.views == {"docs": "ray"}
    # `local` in the environment means everything local, per-view engines included.
    config = RepoConfig(project="p", **apply_env_overrides(raw, {"CONTEXTKIT_COMPUTE": "local"}))
    assert config.compute.engine_for("docs") == "local" and config.compute.partitions == 3
    # No variable: the file as written.
    assert apply_env_overrides(raw, {}) == raw


def test_config_file_and_env(tmp_path, monkeypatch):
    from contextkit.config import load_config

    (tmp_path / "contextkit.yaml").write_text("project: p\ncompute: {engine: ray, partitions: 4}\n")
    monkeypatch.delenv("CONTEXTKIT_COMPUTE", raising=False)
    assert load_config(tmp_path).compute.partitions == 4
    monkeypatch.setenv("CONTEXTKIT_COMPUTE", "127.0.0.1:6379")
    assert load_config(tmp_path).compute.address == "127.0.0.1:6379"
    (tmp_path / "contextkit.yaml").write_text("project: p\ncompute: {engine: flink}\n")
    monkeypatch.delenv("CONTEXTKIT_COMPUTE")
    from contextkit.errors import ConfigError

    with pytest.raises(ConfigError, match="compute"):
        load_config(tmp_path)


def test_unreachable_address_fails_within_seconds():
    from contextkit.compute.ray.runtime import connect

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ComputeConfig(address=f"127.0.0.1:{port}", connect_timeout_s=2)
    with pytest.raises(ComputeError, match=f"127.0.0.1:{port}") as info:
        connect(config)
    assert info.value.http_status == 503 and "ray status" in (info.value.hint or "")


def _driver(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python (a connect() that gives up leaves its init thread behind,
    which must not share this test process with the cluster tests)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_a_port_that_is_no_ray_head_fails_within_the_timeout():
    with socket.socket() as server:  # accepts connections, never speaks Ray's protocol
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        out = _driver(
            f"""
            from contextkit.config import ComputeConfig
            from contextkit.compute.ray.runtime import connect
            from contextkit.errors import ComputeError
            try:
                connect(ComputeConfig(address="127.0.0.1:{port}", connect_timeout_s=3))
            except ComputeError as exc:
                print("ERROR", exc)
            """
        )
    assert "ERROR could not connect to the Ray cluster at 127.0.0.1" in out.stdout, out.stderr


def test_missing_ray_says_how_to_install_it(tmp_path):
    # The driver cannot import ray (as if the extra were not installed); the core still loads.
    out = _driver(
        """
        import sys
        sys.modules["ray"] = None
        import contextkit
        from contextkit.config import ComputeConfig
        from contextkit.compute.ray.runtime import connect
        from contextkit.errors import ComputeError
        try:
            connect(ComputeConfig(engine="ray"))
        except ComputeError as exc:
            print("ERROR", exc.code, exc.hint)
        """
    )
    assert "ERROR compute_error pip install 'contextkit[ray]'" in out.stdout, out.stderr


# -- the cluster (slow) ----------------------------------------------------------------------


@pytest.mark.slow
def test_connect_joins_the_cluster_and_tasks_run_on_both_nodes(ray_cluster):
    from contextkit.compute.ray.runtime import connect, partition_count, run_tasks, task_options

    config = ComputeConfig(address=ray_cluster.address, connect_timeout_s=60)
    ray = connect(config)
    assert connect(config) is ray  # joined once per process
    assert partition_count(config, ray) == 4  # two nodes of one CPU each

    def node_of_task(x: int) -> tuple[str, int]:  # defined here: pickled by value
        return ray.get_runtime_context().get_node_id(), x * 2

    task = ray.remote(node_of_task)
    results = run_tasks(ray, [task.options(**task_options()).remote(i) for i in range(8)])
    assert [value for _, value in results] == [i * 2 for i in range(8)]
    # Both nodes run contextkit's tasks (pinned to each node: SPREAD is only a preference).
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    pinned = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(1)
        for node in nodes
    ]
    assert sorted(node for node, _ in run_tasks(ray, pinned)) == sorted(nodes) and len(nodes) == 2


# -- materialization on the cluster: equal to the local engine (slow) ------------------------

DEFS = """
from datetime import timedelta

from contextkit import Aggregate, Attribute, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")


@batch_feature_view(
    sources=[events],
    entities=[user],
    mode="sql",
    ttl=timedelta(days=2),
    features=[
        Aggregate(column="amount", function="sum", time_window=timedelta(hours=1)),
        Aggregate(column="amount", function="mean", time_window=timedelta(days=3)),
        Aggregate(column="amount", function="max", time_window=timedelta(days=1)),
        Aggregate(column="event_id", function="count", time_window=timedelta(days=1),
                  name="events_1d"),
        Aggregate(column="category", function="count_distinct", time_window=timedelta(days=1),
                  name="categories_1d"),
        Aggregate(column="category", function="last", time_window=timedelta(days=3),
                  name="last_category"),
    ],
)
def spend(events):
    return f"SELECT user_id, event_id, amount, category, ts FROM {events}"


@batch_feature_view(
    sources=[events],
    entities=[user],
    mode="sql",
    ttl=timedelta(days=1),
    features=[Attribute("category"), Attribute("amount")],
)
def latest(events):
    return f"SELECT user_id, category, amount, ts FROM {events} WHERE event_id % 3 = 0"
"""

START = datetime(2024, 5, 1, tzinfo=UTC)


def random_events(seed: int, n: int, first_id: int = 0, days: float = 6.0) -> pa.Table:
    """Seeded events of 25 users over ``days`` days, at random microseconds, with nulls among
    the amounts (some users have no event within a ttl of the end: they are not online)."""
    rng = np.random.default_rng(seed)
    micros = rng.integers(0, int(days * 86400e6), n)
    ts = [START + timedelta(microseconds=int(m)) for m in micros]
    amount = rng.gamma(2.0, 20.0, n).round(2)
    return pa.table(
        {
            "user_id": pa.array(rng.integers(0, 25, n), pa.int64()),
            "event_id": pa.array(np.arange(first_id, first_id + n), pa.int64()),
            "amount": pa.array([None if i % 17 == 0 else float(a) for i, a in enumerate(amount)]),
            "category": pa.array(rng.choice(["a", "b", "c", "d"], n).tolist()),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        }
    )


def ray_compute(cluster, **extra) -> dict:
    return {"engine": "ray", "address": cluster.address, "partitions": 3,
            "connect_timeout_s": 60, **extra}  # fmt: skip


def write_repo(root: Path, defs: str, data: dict[str, pa.Table], compute: dict | None) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    config = {
        "project": "t",
        "registry": ".contextkit/registry.db",
        "online_store": ".contextkit/online.db",
        "offline_store": ".contextkit/offline",
    }
    if compute is not None:
        config["compute"] = compute
    (root / "contextkit.yaml").write_text(yaml.safe_dump(config))
    (root / "defs.py").write_text(defs)
    for name, table in data.items():
        pq.write_table(table, root / "data" / name)
    return root


def open_repo(root: Path):
    import contextkit

    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    return ctx


def stored(ctx, view: str, keys: list[str]) -> tuple[list[tuple], list[tuple]]:
    """The view's offline rows (and an aggregate's input rows) and online rows, sorted."""
    from contextkit.compute.layout import inputs_table, offline_table, online_table

    runtime = ctx.runtime
    out = []
    for table in (offline_table("prod", view), inputs_table("prod", view)):
        dataset = runtime.offline.dataset(table)
        rows = [] if dataset is None else dataset.to_table().to_pylist()
        out += [sorted((tuple(sorted(r.items())) for r in rows), key=_order)]
    path = runtime.config.online_path
    with sqlite3.connect(path) as con:
        name = online_table("prod", view)
        exists = con.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = ?", (name,)
        ).fetchone()[0]
        online = con.execute(f'SELECT * FROM "{name}"').fetchall() if exists else []
    online = sorted(online, key=_order)
    return out[0] + [("inputs",)] + out[1], online


def _order(row) -> str:
    return repr(tuple(round(v, 6) if isinstance(v, float) else v for v in _flat(row)))


def _flat(row) -> list:
    return [x for v in row for x in (_flat(v) if isinstance(v, tuple) else [v])]


def assert_same_rows(got: list, want: list, what: str) -> None:
    """Cell for cell; a float equal to within 1e-12 relative (DuckDB sums a window in another
    order over a partition than over the whole table, which moves the last bit of a mean)."""
    assert len(got) == len(want), f"{what}: {len(got)} rows, the local engine {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        g, w = _flat(g), _flat(w)
        same = len(g) == len(w) and all(
            math.isclose(a, b, rel_tol=1e-12) if isinstance(b, float) and a is not None else a == b
            for a, b in zip(g, w, strict=True)
        )
        assert same, f"{what}, row {i}: {g} != {w}"


def assert_same_stores(local, remote, views: list[str]) -> None:
    for view in views:
        want, got = stored(local, view, ["user_id"]), stored(remote, view, ["user_id"])
        assert_same_rows(got[0], want[0], f"offline rows of {view}")
        assert_same_rows(got[1], want[1], f"online rows of {view}")
        assert want[0] and want[1], f"{view}: the oracle has rows"


def both(tmp_path, defs, data, cluster, **compute):
    local = open_repo(write_repo(tmp_path / "local", defs, data, None))
    remote = open_repo(write_repo(tmp_path / "ray", defs, data, ray_compute(cluster, **compute)))
    return local, remote


@pytest.mark.slow
def test_random_data_equals_local_with_late_data_and_ttl(tmp_path, ray_cluster):
    local, remote = both(tmp_path, DEFS, {"events.parquet": random_events(7, 1500)}, ray_cluster)
    mid, end = START + timedelta(days=4), START + timedelta(days=6, hours=12)
    for ctx in (local, remote):
        ctx.materialize(["spend", "latest"], end=mid)
    assert_same_stores(local, remote, ["spend", "latest"])
    # Late data: events before the first job's end arrive after it; the next (incremental) job
    # covers [mid, end) and its windows reach back across the partition and job edges.
    late = random_events(8, 400, first_id=10_000, days=6.4)
    for ctx in (local, remote):
        path = Path(ctx.runtime.config.root) / "data" / "events.parquet"
        pq.write_table(pa.concat_tables([pq.read_table(path), late]), path)
        [spend, _] = ctx.materialize(["spend", "latest"], end=end)
        assert spend.start == mid
    assert_same_stores(local, remote, ["spend", "latest"])
    [job, *_] = remote.runtime.registry.list_jobs("prod", "spend", 1)
    assert job.details.get("engine") == "ray" and job.status == "succeeded"


# The same views from a feature_start_time (a first job is a backfill cut into time chunks),
# served by a service (online reads compared too).
CHUNKED = (
    DEFS.replace(
        "from datetime import timedelta", "from datetime import UTC, datetime, timedelta"
    ).replace(
        'mode="sql",', 'mode="sql",\n    feature_start_time=datetime(2024, 5, 1, tzinfo=UTC),'
    )
    + """
from contextkit import ContextService

stats = ContextService("stats", features=[spend, latest])
"""
)


def _rows_read_are_the_shares(job, data: pa.Table, view, chunk: timedelta) -> None:
    """Every task of ``job`` read only its bucket's source rows of its chunk and lookback:
    counted again here from the source file, task by task."""
    import duckdb

    from contextkit.compute.ray.partitions import read_range, time_chunks

    ray = job.details["ray"]
    assert ray["pushdown"]["pushed"], ray["pushdown"]
    start, end = datetime.fromisoformat(job.range_start), datetime.fromisoformat(job.range_end)
    chunks = time_chunks(start, end, chunk)
    assert (ray["chunks"], ray["tasks"]) == (len(chunks), len(chunks) * ray["buckets"])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events", data)
    for index, bucket, rows in ray["rows_read_per_task"]:
        lo, hi = chunks[index]
        last = index == len(chunks) - 1
        lo, hi = read_range(view, lo, hi, offline=True, online_as_of=end if last else None)
        [(want,)] = con.execute(
            "SELECT count(*) FROM events WHERE hash(user_id) % ? = ? AND ts >= ? AND ts < ?",
            [ray["buckets"], bucket, lo, hi],
        ).fetchall()
        assert rows == want, (index, bucket, rows, want)
    assert ray["rows_read"]["max_task"] < data.num_rows / 2, ray["rows_read"]


@pytest.mark.slow
def test_time_chunks_and_buckets_equal_local_offline_and_online(tmp_path, ray_cluster):
    """A backfill from feature_start_time in 1-day chunks x 3 buckets (windows of up to 3 days
    cross every chunk edge), then an incremental job with late data, users never seen before
    and rows without a user: every stored cell and every online read equals the local
    engine's, and each task read only its share of the source."""
    first = random_events(21, 900)
    local, remote = both(tmp_path, CHUNKED, {"events.parquet": first}, ray_cluster,
                         time_chunk="1d")  # fmt: skip
    mid, end = START + timedelta(days=4, hours=5), START + timedelta(days=6, hours=12)
    local.materialize(["spend", "latest"], end=mid)
    stages: list[tuple[str, str]] = []
    remote.materialize(["spend", "latest"], end=mid, on_stage=lambda v, s: stages.append((v, s)))
    assert_same_stores(local, remote, ["spend", "latest"])
    specs = remote.runtime.specs("prod")
    [job] = remote.runtime.registry.list_jobs("prod", "spend", 1)
    assert job.details["ray"]["chunks"] == 5  # [START, mid): 4 days and 5 hours
    # Progress, as the CLI shows it: tasks done and the source rows they read.
    total = job.details["ray"]["rows_read"]["total"]
    assert ("spend", f"ray: 15/15 tasks (5 chunk(s) x 3 bucket(s)), {total:,} source rows read") \
        in stages, stages  # fmt: skip
    _rows_read_are_the_shares(job, first, specs.views["spend"], timedelta(days=1))

    late = random_events(22, 300, first_id=10_000, days=6.4)
    newcomers = pa.array([40 + i % 3 if i % 4 else None for i in range(300)], pa.int64())
    late = late.set_column(0, "user_id", newcomers)  # unknown users, and rows with none
    data = pa.concat_tables([first, late])
    for ctx in (local, remote):
        path = Path(ctx.runtime.config.root) / "data" / "events.parquet"
        pq.write_table(data, path)
        [spend, latest] = ctx.materialize(["spend", "latest"], end=end)
        assert spend.start == mid
    assert_same_stores(local, remote, ["spend", "latest"])
    [job] = remote.runtime.registry.list_jobs("prod", "spend", 1)
    assert job.status == "succeeded" and job.details["ray"]["chunks"] == 3
    _rows_read_are_the_shares(job, data, specs.views["spend"], timedelta(days=1))
    assert spend.details["ray"]["rows_read"] == job.details["ray"]["rows_read"]
    # Online reads: known users, the newcomers, and users nobody has seen.
    users = {"user_id": [*range(25), 40, 41, 42, 999, -1]}
    want = local.get_features("stats", users, cache=False).to_dict()
    got = remote.get_features("stats", users, cache=False).to_dict()
    assert got.keys() == want.keys()
    for column, values in want.items():
        assert_same_rows([(v,) for v in got[column]], [(v,) for v in values], column)
    assert any(v is not None for v in want["spend.amount_sum_1h"] + want["latest.amount"])


@pytest.mark.slow
def test_a_full_recompute_without_a_start_is_cut_from_the_first_row(tmp_path, ray_cluster):
    """No feature_start_time, no watermark: the range has no start; with time_chunk the job is
    cut from the source's first timestamp (the first chunk open below), equal to local."""
    data = random_events(23, 600)  # 6 days from START
    local, remote = both(tmp_path, DEFS, {"events.parquet": data}, ray_cluster, time_chunk="2d")
    end = START + timedelta(days=6, hours=6)
    for ctx in (local, remote):
        [job] = ctx.materialize(["spend"], end=end)
        assert job.start is None
    assert_same_stores(local, remote, ["spend"])
    ray = job.details["ray"]
    assert ray["chunks"] == 4 and ray["rows_read"]["total"] > data.num_rows  # + lookbacks


@pytest.mark.slow
def test_quickstart_equals_local(tmp_path, quickstart_data, ray_cluster):
    import shutil

    roots = {}
    for name, compute in (("local", None), ("ray", ray_compute(ray_cluster))):
        root = tmp_path / name
        shutil.copytree(quickstart_data, root, ignore=shutil.ignore_patterns(".contextkit"))
        config = yaml.safe_load((root / "contextkit.yaml").read_text())
        config.pop("compute", None)
        if compute:
            config["compute"] = compute
        (root / "contextkit.yaml").write_text(yaml.safe_dump(config))
        roots[name] = root
    views = ["user_order_stats", "user_profile", "product_attributes"]
    local, remote = open_repo(roots["local"]), open_repo(roots["ray"])
    for ctx in (local, remote):
        ctx.materialize(views, end=DATA_END)
    assert_same_stores(local, remote, views)


# -- failures on the cluster (slow) ----------------------------------------------------------

HELD = """
from contextkit import Attribute, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")


@batch_feature_view(
    sources=[events],
    entities=[user],
    mode="pandas",
    timestamp_field="ts",
    features=[Attribute("category"), Attribute("amount")],
)
def held(events):
    # Waits while the test holds the job (the file exists), so a worker can be killed or the
    # job cancelled mid-task; plan and the local engine run it with no hold.
    import pathlib
    import time

    while pathlib.Path(HOLD).exists():
        time.sleep(0.05)
    return events[["user_id", "category", "amount", "ts"]]
"""


def held_repo(tmp_path, name: str, compute: dict | None):
    hold = tmp_path / f"{name}.hold"
    defs = HELD.replace("HOLD", repr(str(hold)))
    ctx = open_repo(write_repo(tmp_path / name, defs, {"events.parquet": random_events(3, 300)},
                               compute))  # fmt: skip
    return ctx, hold


def run_in_thread(work):
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = work()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_result_is_exact(tmp_path, ray_cluster):
    end = START + timedelta(days=7)
    local, _ = held_repo(tmp_path, "local", None)
    local.materialize(["held"], end=end)
    remote, hold = held_repo(tmp_path, "ray", ray_compute(ray_cluster))
    hold.touch()
    thread, outcome = run_in_thread(lambda: remote.materialize(["held"], end=end))
    try:
        killed = ray_cluster.kill_worker("_partition_task", timeout_s=60)
    finally:
        hold.unlink()
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert killed and outcome["result"][0].status == "succeeded"
    assert_same_stores(local, remote, ["held"])


@pytest.mark.slow
def test_cancelling_stops_the_tasks_and_publishes_nothing(tmp_path, ray_cluster):
    from contextkit.errors import JobCancelledError

    # A backfill cut into time chunks x buckets (12 tasks): none of them publishes anything.
    remote, hold = held_repo(tmp_path, "ray", ray_compute(ray_cluster, time_chunk="2d"))
    hold.touch()
    try:
        thread, outcome = run_in_thread(
            lambda: remote.materialize(["held"], start=START, end=START + timedelta(days=7))
        )
        registry = remote.runtime.registry
        while not ray_cluster.workers("_partition_task"):
            assert thread.is_alive(), outcome
        [job] = [j for j in registry.running_jobs() if j.view == "held"]
        registry.request_cancel(job.id, time.time())
        thread.join(timeout=300)
        assert isinstance(outcome.get("error"), JobCancelledError), outcome
        # The tasks were cancelled (their workers killed), not left holding the cluster.
        while ray_cluster.workers("_partition_task"):
            time.sleep(0.05)
    finally:
        hold.unlink()
    assert registry.get_job(job.id).status == "cancelled"
    assert stored(remote, "held", ["user_id"]) == ([("inputs",)], [])


@pytest.mark.slow
def test_a_bad_row_fails_the_job_naming_view_partition_and_value(tmp_path, ray_cluster):
    from contextkit.errors import StoreError

    defs = DEFS.replace(
        'f"SELECT user_id, event_id, amount, category, ts FROM {events}"',
        'f"SELECT user_id, event_id, CAST(code AS INTEGER) AS amount, category, ts FROM {events}"',
    )
    events = random_events(5, 200)
    codes = ["12"] * events.num_rows
    codes[137] = "twelve"
    events = events.append_column("code", pa.array(codes))
    remote = open_repo(write_repo(tmp_path / "ray", defs, {"events.parquet": events},
                                  ray_compute(ray_cluster, time_chunk="3d")))  # fmt: skip
    with pytest.raises(StoreError) as info:
        remote.materialize(["spend"], start=START, end=START + timedelta(days=7))
    message = str(info.value)
    assert "'spend'" in message and "partition" in message and "twelve" in message, message
    assert "time chunk" in message and 0 <= info.value.details["chunk"] < 3
    assert info.value.details["view"] == "spend" and 0 <= info.value.details["partition"] < 3
    [job] = remote.runtime.registry.list_jobs("prod", "spend", 1)
    assert job.status == "failed" and "twelve" in job.error
    assert stored(remote, "spend", ["user_id"]) == ([("inputs",)], [])


@pytest.mark.slow
def test_per_view_engines(tmp_path, ray_cluster):
    compute = {**ray_compute(ray_cluster), "engine": "local", "views": {"latest": "ray"}}
    remote = open_repo(
        write_repo(tmp_path / "mixed", DEFS, {"events.parquet": random_events(9, 300)}, compute)
    )
    remote.materialize(["spend", "latest"], end=START + timedelta(days=7))
    registry = remote.runtime.registry
    engines = {
        v: registry.list_jobs("prod", v, 1)[0].details.get("engine") for v in ("spend", "latest")
    }
    assert engines == {"spend": None, "latest": "ray"}


def test_an_unreachable_cluster_fails_the_job_and_publishes_nothing(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    compute = {"address": f"127.0.0.1:{port}", "connect_timeout_s": 2}
    ctx = open_repo(
        write_repo(tmp_path / "down", DEFS, {"events.parquet": random_events(1, 50)}, compute)
    )
    with pytest.raises(ComputeError, match=f"127.0.0.1:{port}"):
        ctx.materialize(["latest"], end=START + timedelta(days=7))
    [job] = ctx.runtime.registry.list_jobs("prod", "latest", 1)
    assert job.status == "failed" and "does not answer" in job.error
    assert stored(ctx, "latest", ["user_id"]) == ([("inputs",)], [])


@pytest.mark.slow
def test_a_killed_driver_leaves_the_stores_on_the_previous_version(tmp_path, ray_cluster):
    remote, hold = held_repo(tmp_path, "ray", ray_compute(ray_cluster))
    remote.materialize(["held"], end=START + timedelta(days=3))
    before = stored(remote, "held", ["user_id"])
    root = Path(remote.runtime.config.root)
    hold.touch()
    try:
        driver = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                from datetime import datetime
                import contextkit
                ctx = contextkit.connect({str(root)!r}, workspace="prod")
                ctx.materialize(["held"], end=datetime.fromisoformat({
                    (START + timedelta(days=7)).isoformat()!r}))
                """)],
            cwd=ROOT,
        )  # fmt: skip
        while not ray_cluster.workers("_partition_task"):  # its tasks run (and are held)
            assert driver.poll() is None, "the driver ended before its tasks ran"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
        # Ray ends a dead driver's tasks; nothing was published.
        while ray_cluster.workers("_partition_task"):
            time.sleep(0.05)
    finally:
        hold.unlink()
    registry = remote.runtime.registry
    [job] = [j for j in registry.list_jobs("prod", "held", 5) if j.status != "succeeded"]
    registry.reap_abandoned_jobs()
    job = registry.get_job(job.id)
    assert job.status == "failed" and "abandoned" in (job.error or "")
    assert stored(remote, "held", ["user_id"]) == before and before[1]


@pytest.mark.slow
def test_the_cli_runs_on_the_cluster_named_by_the_environment(tmp_path, ray_cluster):
    import os

    root = write_repo(tmp_path / "cli", DEFS, {"events.parquet": random_events(4, 200)}, None)
    ctx = open_repo(root)
    env = {**os.environ, "CONTEXTKIT_COMPUTE": ray_cluster.address}
    cli = str(Path(sys.executable).parent / "contextkit")
    end = (START + timedelta(days=6)).isoformat()  # within the ttl of the last events
    args = [cli, "materialize", "latest", "--repo", str(root), "--workspace", "prod"]
    done = subprocess.run([*args, "--end", end], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [job] = ctx.runtime.registry.list_jobs("prod", "latest", 1)
    assert job.status == "succeeded", job.error
    assert job.details.get("engine") == "ray" and job.rows_online
    # A cluster that is down: the CLI fails within seconds, exit code and message say why.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env["CONTEXTKIT_COMPUTE"] = f"127.0.0.1:{s.getsockname()[1]}"
    failed = subprocess.run([*args, "--end", end, "--full"], env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert failed.returncode != 0 and "does not answer" in failed.stdout + failed.stderr
