"""A `contextkit materialize` SIGKILLed mid-run: its job is reported failed (abandoned) everywhere,
and what it left in the offline store is removed by the next run and by `contextkit gc`, while
every read returns the same data throughout.

The run is made slow deterministically: the view's pandas function blocks, on its second call
(the online snapshot, after the offline rows are staged), until the test kills the process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import contextkit
from contextkit.server.app import create_app

CLI = str(Path(sys.executable).parent / "contextkit")
END = datetime(2024, 6, 1, tzinfo=UTC)
HOUR = 3600

DEFS = """
from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="pandas", features=[Attribute("x")])
def profile(events):
    import os
    import time

    gate = GATE
    if os.path.exists(os.path.join(gate, "armed")):
        calls = os.path.join(gate, "calls")
        n = len(os.listdir(calls))
        open(os.path.join(calls, str(n)), "w").close()
        if n >= 1:  # the online snapshot: the offline rows are staged by now
            open(os.path.join(gate, "blocked"), "w").close()
            while True:
                time.sleep(0.05)
    return events[["user_id", "x", "ts"]]

svc = ContextService(name="svc", features=[profile])
"""


def events_table() -> pa.Table:
    times = [END - timedelta(days=d, hours=h) for d in range(4) for h in (1, 5)]
    return pa.table(
        {
            "user_id": pa.array([1, 2] * 4, pa.int64()),
            "x": pa.array([float(i) for i in range(8)], pa.float64()),
            "ts": pa.array(times, pa.timestamp("us", tz="UTC")),
        }
    )


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run(
        [CLI, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def wait_for(condition, what: str, limit_s: float = 240.0):
    deadline = time.monotonic() + limit_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def offline_rows(ctx) -> list[tuple]:
    files = [str(p) for p in ctx.offline.files("prod/profile")]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute(
        "SELECT user_id, event_timestamp, x FROM read_parquet(?) ORDER BY ALL", [files]
    ).fetchall()


def reads(ctx) -> tuple:
    online = ctx.get_features("svc", entities={"user_id": [1, 2]}).to_dict()
    return offline_rows(ctx), online


def parquet_on_disk(table_dir: Path) -> set[Path]:
    return {p for p in table_dir.rglob("*.parquet") if "_staging" not in p.parts}


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (then, then))


def job_metrics(ctx) -> dict[str, float]:
    with TestClient(create_app(ctx, auth=False)) as client:
        text = client.get("/metrics").text
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "contextkit_materialization_jobs"
        for sample in family.samples
        if sample.labels.get("view") == "profile"
    }


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A repo materialized once, then a `materialize --full` SIGKILLed with its offline rows
    staged. Yields (repo root, context, the killed job's id, the reads before the kill)."""
    tmp_path = tmp_path_factory.mktemp("killed-run")
    gate = tmp_path / "gate"
    (gate / "calls").mkdir(parents=True)
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text("project: abandon\n")
    (root / "abandon_defs.py").write_text(DEFS.replace("GATE", repr(str(gate))))
    pq.write_table(events_table(), root / "data" / "events.parquet")
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=END)
    before = reads(ctx)

    (gate / "armed").touch()
    log = (tmp_path / "materialize.log").open("w")
    run = subprocess.Popen(
        [CLI, "materialize", "--end", END.isoformat(), "--full"],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: (gate / "blocked").exists() or run.poll() is not None,
            "the run to block in the view's function",
        )
        assert run.poll() is None, (tmp_path / "materialize.log").read_text()
        [job] = ctx.jobs("profile", 1)
        assert job.status == "running" and job.owner_pid == run.pid

        # Another process looking at the jobs while the owner runs changes nothing.
        listed = cli("jobs", "--status", "running", cwd=root)
        assert listed.returncode == 0 and job.id in listed.stdout, listed.stdout + listed.stderr

        os.kill(run.pid, signal.SIGKILL)
        run.wait()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        log.close()
    (gate / "armed").unlink()
    yield root, ctx, job.id, before
    ctx.close()


def test_a_killed_runs_job_is_reported_failed_abandoned(killed_run):
    root, ctx, job_id, _before = killed_run

    # The metric is the first reader here (in file order): it must not count the job running.
    metrics = job_metrics(ctx)
    assert metrics.get("running", 0) == 0, metrics
    assert metrics["failed"] == 1, metrics

    listed = cli("jobs", cwd=root)
    assert listed.returncode == 0, listed.stderr
    [line] = [ln for ln in listed.stdout.splitlines() if job_id in ln]
    assert "failed (abandoned)" in line and "ended without finishing" in line
    only = cli("jobs", "--status", "abandoned", cwd=root)
    assert job_id in only.stdout

    with TestClient(create_app(ctx, auth=False)) as client:
        [served] = [j for j in client.get("/v1/jobs").json()["jobs"] if j["id"] == job_id]
    assert served["status"] == "failed" and served["error"].startswith("abandoned")


def test_what_a_killed_run_left_is_removed_without_touching_what_readers_use(killed_run):
    root, ctx, job_id, before = killed_run
    table_dir = ctx.offline.table_dir("prod/profile")
    [killed_staging] = (table_dir / "_staging").iterdir()
    assert killed_staging.name.startswith(f"{job_id}.")
    assert list(killed_staging.rglob("*.parquet")), "the killed run had staged its rows"
    assert reads(ctx) == before, "a killed run changes nothing readers see"

    # Leftovers of older kills: files moved in but never listed, and unowned staging.
    listed = ctx.offline.files("prod/profile")
    orphan = listed[0].parent / "new-orphan.parquet"
    shutil.copy(listed[0], orphan)
    age(orphan, 2 * HOUR)
    legacy = table_dir / "_staging" / "0123456789abcdef"
    (legacy / listed[0].parent.name).mkdir(parents=True)
    shutil.copy(listed[0], legacy / listed[0].parent.name / "new-x.parquet")
    age(legacy, 2 * HOUR)

    dry = cli("gc", "--dry-run", cwd=root)
    assert dry.returncode == 0, dry.stderr
    for leftover in (killed_staging, orphan, legacy):
        assert leftover.name in dry.stdout and leftover.exists(), dry.stdout
    assert "Would remove 3" in dry.stdout

    # The next successful run removes them.
    ctx.materialize(end=END)
    assert not killed_staging.exists() and not orphan.exists() and not legacy.exists()
    assert reads(ctx) == before

    # A full recompute replaces every file; they stay for readers until the grace period ends.
    replaced = set(ctx.offline.files("prod/profile"))
    ctx.materialize(end=END, full=True)
    assert replaced <= parquet_on_disk(table_dir) and not replaced & set(
        ctx.offline.files("prod/profile")
    )
    kept = cli("gc", cwd=root)
    assert kept.returncode == 0 and "Nothing to remove" in kept.stdout, kept.stdout
    assert replaced <= parquet_on_disk(table_dir)

    gone = cli("gc", "--grace", "0", cwd=root)
    assert gone.returncode == 0, gone.stderr
    assert "replaced by a newer version" in gone.stdout
    assert parquet_on_disk(table_dir) == set(ctx.offline.files("prod/profile"))
    assert reads(ctx) == before
