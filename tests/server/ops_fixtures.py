"""A small served repo for the access-control and operations tests (imported by them).

Two live workspaces, ``prod`` and ``other``, each with the service ``svc`` (user_id -> the sum of
``x`` over 7 days), applied and materialized as of ``END``. Plus helpers to run the real console
script and to start ``contextkit serve`` as a real uvicorn process (through ``serverproc``).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from serverproc import CLI, READY_TIMEOUT_S, ServerProcess

import contextkit

T0 = datetime(2024, 5, 1, tzinfo=UTC)
END = T0 + timedelta(days=2)

CONFIG = """\
project: ops_tests
registry: .contextkit/registry.db
online_store: {type: sqlite, path: .contextkit/online.db}
offline_store: {type: parquet, path: .contextkit/offline}
"""

DEFS = """\
from datetime import timedelta
from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql",
                    features=[Aggregate(column="x", function="sum", time_window=timedelta(days=7))])
def user_spend(events):
    return f"SELECT user_id, x, ts FROM {events}"

svc = ContextService(name="svc", features=[user_spend])
"""

FEATURES_BODY = {"service": "svc", "entities": {"user_id": [1, 2]}}
SPEND = [18, 7]  # user 1: 5 + 13, user 2: 7


def build_repo(root: Path, workspaces: tuple[str, ...] = ("prod", "other")) -> Path:
    """Write, apply and materialize the repo in every workspace; returns its root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "contextkit.yaml").write_text(CONFIG)
    (root / "defs.py").write_text(textwrap.dedent(DEFS))
    (root / "data").mkdir(exist_ok=True)
    table = pa.table(
        {
            "user_id": pa.array([1, 2, 3, 1], pa.int64()),
            "x": pa.array([5, 7, 11, 13], pa.int64()),
            "ts": pa.array(
                [T0 + timedelta(hours=h) for h in (1, 2, 3, 4)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    pq.write_table(table, root / "data" / "events.parquet")
    for name in workspaces:
        ctx = contextkit.connect(root, name)
        ctx.create_workspace(name, live=True)
        ctx.apply(ctx.plan(root))
        ctx.materialize(end=END)
        ctx.close()
    return root


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, env=env)


class ServeProcess(ServerProcess):
    """``contextkit serve`` of ``repo``'s ``prod`` workspace (see :mod:`serverproc`)."""

    def __init__(self, repo: Path, *args: str, log_path: Path) -> None:
        super().__init__("--repo", str(repo), "--workspace", "prod", *args, log_path=log_path)

    def wait_healthy(self, timeout: float = READY_TIMEOUT_S) -> ServerProcess:
        """The former name of :meth:`wait_ready`; never waits less than ``READY_TIMEOUT_S``."""
        return self.wait_ready(max(timeout, READY_TIMEOUT_S))
