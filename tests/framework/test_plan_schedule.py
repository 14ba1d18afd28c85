"""`plan` warns when a view's batch_schedule is shorter than its jobs take (measured from its
completed jobs in the registry), with the numbers and the fix; not when it is long enough, and not
in a dev workspace (which never materializes)."""

from __future__ import annotations

import sqlite3

from rich.console import Console

import contextkit
from contextkit.framework.plan import render_plan

DEFS = """
from datetime import timedelta
from contextkit import Attribute, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.csv", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], features=[Attribute("x")],
                    batch_schedule=timedelta(hours=SCHEDULE), description="DESCRIPTION")
def hourly(events):
    return f"SELECT user_id, x, ts FROM {events}"
"""
DATA = {"events.csv": "user_id,x,ts\n1,5,2024-05-01T00:00:00Z\n2,7,2024-05-01T01:00:00Z\n"}


def write(root, hours: int, description: str) -> None:
    (root / "defs.py").write_text(
        DEFS.replace("SCHEDULE", str(hours)).replace("DESCRIPTION", description)
    )


def test_a_schedule_shorter_than_the_jobs_warns_with_the_numbers_and_the_fix(make_repo):
    root = make_repo({"defs.py": DEFS.replace("SCHEDULE", "1")}, data=DATA)
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize()
    [job] = ctx.jobs("hourly", 1)
    assert ctx.plan(root).is_empty
    # The job took 90 minutes, as the registry measured it.
    with sqlite3.connect(ctx.registry.path) as con:
        con.execute("UPDATE jobs SET started_at = finished_at - 5400 WHERE id = ?", (job.id,))

    write(root, 1, "a new description")
    plan = ctx.plan(root)
    [warning] = [w for w in plan.warnings if "batch_schedule" in w]
    assert "batch_schedule of hourly is 1h" in warning
    assert "its last job took 1h 30m" in warning
    assert "batch_schedule=timedelta(seconds=7200) (2h) or longer" in warning
    assert "schedule_too_short" in {
        q["code"] for c in plan.to_json()["changes"] for q in c["consequences"]
    }
    console = Console(record=True, width=400)
    console.print(render_plan(plan))
    assert "! batch_schedule of hourly is 1h" in console.export_text()

    write(root, 2, "a new description")  # long enough now
    assert not [w for w in ctx.plan(root).warnings if "batch_schedule" in w]

    # A dev workspace never materializes: no schedule to warn about.
    dev = contextkit.connect(root, "dev")
    dev.create_workspace("dev", live=False)
    with sqlite3.connect(ctx.registry.path) as con:  # the same measured job, in dev
        con.execute("UPDATE jobs SET workspace = 'dev' WHERE id = ?", (job.id,))
    write(root, 1, "a new description")
    assert not [w for w in dev.plan(root).warnings if "batch_schedule" in w]
