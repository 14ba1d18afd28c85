"""A view that serves nothing is reported, never called fresh (issue 12, item 9).

Stories through the CLI on a real repo: a run with the default end (now) on data older than the
view's ttl empties an online table that held every user; the run warns (output, job record),
``status`` calls the view ``empty`` with an error alert, and so does ``/v1/alerts``. A run that
shrinks the table by more than ``monitoring.max_online_shrink`` warns too; a smaller shrink, or one
the config allows, does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

import contextkit
from contextkit.server.app import create_app

CLI = str(Path(sys.executable).parent / "contextkit")
END = datetime(2024, 6, 1, tzinfo=UTC)
USERS = 2000

DEFS = """
from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
users = FileSource(name="users", path="data/users.parquet", timestamp_field="ts")

@batch_feature_view(sources=[users], entities=[user], features=[Attribute("visits")],
                    ttl="3d", batch_schedule="1d")
def profile(users):
    return f"SELECT user_id, visits, ts FROM {users}"

svc = ContextService(name="svc", features=[profile])
"""


def write_users(root: Path, count: int) -> None:
    """``count`` users, each with one row in the day before END."""
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(range(count), pa.int64()),
                "visits": pa.array([i % 7 for i in range(count)], pa.int64()),
                "ts": pa.array(
                    [END - timedelta(minutes=1 + i % 1000) for i in range(count)],
                    pa.timestamp("us", "UTC"),
                ),
            }
        ),
        root / "data" / "users.parquet",
    )


@pytest.fixture
def repo(make_repo):
    def build(config: str = "") -> Path:
        root = make_repo({"defs.py": DEFS}, name="shop")
        (root / "data").mkdir(exist_ok=True)
        if config:
            with (root / "contextkit.yaml").open("a") as f:
                f.write(config)
        write_users(root, USERS)
        ctx = contextkit.connect(root, "prod")
        ctx.create_workspace("prod", live=True)
        ctx.apply(ctx.plan(root))
        ctx.close()
        return root

    return build


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run([CLI, *args], cwd=root, capture_output=True, text=True, env=env)


def status_json(root: Path) -> dict:
    out = cli(root, "status", "--json")
    assert out.returncode == 0, out.stderr
    [view] = json.loads(out.stdout)["views"]
    return view


def test_a_run_that_empties_the_online_table_warns_and_the_view_is_empty(repo):
    root = repo()
    first = cli(root, "materialize", "--end", END.isoformat())
    assert first.returncode == 0, first.stderr
    assert f"{USERS} online entities" in first.stdout and "WARNING" not in first.stdout

    # Default end (now): every row is older than the 3-day ttl, so no user has a value.
    emptied = cli(root, "materialize")
    assert emptied.returncode == 0, emptied.stderr
    assert "0 online entities" in emptied.stdout
    assert "online table of 'profile' is empty" in emptied.stdout
    assert f"the previous job left {USERS:,}" in emptied.stdout
    assert "WARNING: 1 job(s) ended with warnings: profile" in emptied.stdout

    ctx = contextkit.connect(root, "prod")
    newest, before = ctx.jobs("profile")[:2]
    assert before.status == "succeeded" and before.rows_online == USERS
    assert newest.status == "warning" and newest.rows_online == 0
    assert "online table of 'profile' is empty" in newest.error

    view = status_json(root)
    assert view["freshness"]["state"] == "empty" and view["freshness"]["online_rows"] == 0
    [empty] = [a for a in view["alerts"] if a["kind"] == "empty"]
    assert empty["severity"] == "error" and empty["job_id"] == newest.id
    assert f"job {newest.id} left 0 entities" in empty["message"]
    table = cli(root, "status")
    assert "empty" in table.stdout and "No alerts" not in table.stdout

    with TestClient(create_app(ctx, auth=False)) as client:
        alerts = client.get("/v1/alerts").json()
        assert ("freshness", "empty", "error") in {
            (a["source"], a["kind"], a["severity"]) for a in alerts["alerts"]
        }
        [listed] = client.get("/v1/views").json()["views"]
        assert listed["freshness"]["state"] == "empty"
        metrics = client.get("/metrics").text
        sample = 'contextkit_view_freshness_state{workspace="prod",view="profile",state="empty"} 1'
        assert sample in metrics

    # A run that fills the table again clears the state and the alert.
    refilled = cli(root, "materialize", "--end", (END + timedelta(hours=1)).isoformat(), "--full")
    assert refilled.returncode == 0 and "WARNING" not in refilled.stdout, refilled.stdout
    view = status_json(root)
    assert view["freshness"]["online_rows"] == USERS
    assert view["freshness"]["state"] != "empty"
    assert not [a for a in view["alerts"] if a["kind"] in ("empty", "online_shrink")]
    ctx.close()


def test_a_run_that_shrinks_the_online_table_past_the_configured_share_warns(repo):
    root = repo("monitoring: {max_online_shrink: 0.8}\n")
    assert cli(root, "materialize", "--end", END.isoformat()).returncode == 0

    # 70% fewer users: within the configured 80%, no warning.
    write_users(root, USERS * 3 // 10)
    allowed = cli(root, "materialize", "--end", (END + timedelta(hours=1)).isoformat())
    assert allowed.returncode == 0 and "WARNING" not in allowed.stdout, allowed.stdout
    assert not [a for a in status_json(root)["alerts"] if a["kind"] == "online_shrink"]

    # With the default (50%), the next 70% shrink warns: output, job record, alert.
    config = root / "contextkit.yaml"
    config.write_text(config.read_text().replace("monitoring: {max_online_shrink: 0.8}\n", ""))
    write_users(root, USERS * 3 // 10 * 3 // 10)
    shrunk = cli(root, "materialize", "--end", (END + timedelta(hours=2)).isoformat())
    assert shrunk.returncode == 0, shrunk.stderr
    assert "online table of 'profile' shrank by 70%: 180 entities, 600 before" in shrunk.stdout
    ctx = contextkit.connect(root, "prod")
    [newest] = ctx.jobs("profile", 1)
    assert newest.status == "warning" and "shrank by 70%" in newest.error
    [alert] = [a for a in ctx.monitoring.alerts() if a.kind == "online_shrink"]
    assert alert.severity == "warning" and alert.job_id == newest.id
    with TestClient(create_app(ctx, auth=False)) as client:
        kinds = {a["kind"] for a in client.get("/v1/alerts").json()["alerts"]}
        assert "online_shrink" in kinds
    assert status_json(root)["freshness"]["state"] != "empty"
    ctx.close()


def test_an_empty_snapshot_is_empty_without_monitoring_and_a_backfill_does_not_hide_it(repo):
    root = repo("monitoring: {enabled: false}\n")
    ctx = contextkit.connect(root, "prod")
    [filled] = ctx.materialize(end=END)
    assert filled.status == "succeeded" and filled.rows_online == USERS
    [emptied] = ctx.materialize()  # default end: now, past the ttl
    assert emptied.status == "warning" and emptied.rows_online == 0
    [status] = ctx.monitoring.status()
    assert status.stats is None  # nothing measured: the state comes from the job records
    assert status.freshness.state == "empty"
    assert [a.kind for a in status.alerts if a.severity == "error"] == ["empty"]

    # A backfill of a past range leaves the online table alone: the view is still empty.
    [backfill] = ctx.materialize(start=END - timedelta(days=2), end=END - timedelta(days=1))
    assert backfill.status == "succeeded" and backfill.rows_online == 0
    [status] = ctx.monitoring.status()
    assert status.freshness.state == "empty"
    ctx.close()
