"""A small repo for the scheduler and jobs tests (imported by them).

``daily``: a daily batch view from ``feature_start_time`` T0 over events spread across seven days.
``broken``: a pandas view that raises once ``<gate>/break`` exists (made after the apply), so
every job of it fails. The pandas view ``gated`` blocks while ``<gate>/armed`` exists (a job
that a test kills or cancels mid-run) and records each call in ``<gate>/calls``.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import contextkit

T0 = datetime(2024, 5, 1, tzinfo=UTC)
DAY = 86400

CONFIG = """\
project: sched
registry: REGISTRY
online_store: {type: sqlite, path: .contextkit/online.db}
offline_store: {type: parquet, path: .contextkit/offline}
"""

DEFS = """\
from datetime import datetime, timedelta, timezone
from contextkit import Attribute, ContextService, Entity, FileSource, batch_feature_view

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql", features=[Attribute("x")],
                    batch_schedule=timedelta(days=1), feature_start_time=T0)
def daily(events):
    return f"SELECT user_id, x, ts FROM {events}"
"""

GATED = """
@batch_feature_view(sources=[events], entities=[user], mode="pandas", features=[Attribute("x")],
                    batch_schedule=timedelta(days=1), feature_start_time=T0)
def broken(events):
    import os

    if os.path.exists(os.path.join(GATE, "break")):
        raise RuntimeError("the broken view fails on purpose")
    return events[["user_id", "x", "ts"]]

@batch_feature_view(sources=[events], entities=[user], mode="pandas", features=[Attribute("x")],
                    batch_schedule=timedelta(days=1), feature_start_time=T0)
def gated(events):
    import os
    import time

    gate = GATE
    calls = os.path.join(gate, "calls")
    os.makedirs(calls, exist_ok=True)
    open(os.path.join(calls, str(len(os.listdir(calls)))), "w").close()
    while os.path.exists(os.path.join(gate, "armed")):
        open(os.path.join(gate, "blocked"), "w").close()
        time.sleep(0.05)
    return events[["user_id", "x", "ts"]]

svc = ContextService(name="svc", features=[daily, gated])
"""


def events_table() -> pa.Table:
    times = [T0 + timedelta(days=d, hours=h) for d in range(7) for h in (1, 13)]
    return pa.table(
        {
            "user_id": pa.array([1, 2] * 7, pa.int64()),
            "x": pa.array([float(i) for i in range(14)], pa.float64()),
            "ts": pa.array(times, pa.timestamp("us", tz="UTC")),
        }
    )


def build(
    root: Path, gate: Path, *, dev: bool = True, registry: str = ".contextkit/registry.db"
) -> Path:
    """Write and apply the repo (workspace ``prod`` live, and ``dev`` a dev workspace; the
    registry a SQLite path or a PostgreSQL URL); then ``broken`` starts failing. Nothing is
    materialized."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (gate / "calls").mkdir(parents=True, exist_ok=True)
    (root / "contextkit.yaml").write_text(CONFIG.replace("REGISTRY", registry))
    defs = textwrap.dedent(DEFS) + GATED.replace("GATE", repr(str(gate)))
    (root / "sched_defs.py").write_text(defs)
    pq.write_table(events_table(), root / "data" / "events.parquet")
    for name, live in (("prod", True), ("dev", False)) if dev else (("prod", True),):
        ctx = contextkit.connect(root, name)
        ctx.create_workspace(name, live=live)
        ctx.apply(ctx.plan(root))
        ctx.close()
    (gate / "break").write_text("")
    return root
