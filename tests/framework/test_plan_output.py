"""Plans a person and a pipeline can read (issue 18 items 1, 2 and 7).

A helpdesk repo is edited as an engineer would, one scripted change at a time; each plan's text
and JSON are compared with golden files in ``tests/framework/golden/`` (regenerate them with
``CONTEXTKIT_UPDATE_GOLDEN=1`` and read the diff before committing). Each plan is then applied,
so the next edit is planned against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import contextkit
from contextkit.compute.layout import offline_table, online_table
from contextkit.framework.plan import format_plan

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CONTEXTKIT_UPDATE_GOLDEN") == "1"
T0 = datetime(2024, 5, 1, tzinfo=UTC)
CLI = Path(sys.executable).parent / "contextkit"

DEFS = """\
from datetime import datetime, timedelta, timezone

from contextkit import (
    Aggregate, ContextService, Entity, FileSource, PromptView, TemplateFile, batch_feature_view,
)

employee = Entity(name="employee", join_keys=["employee_id"])
tickets = FileSource(name="tickets", path="data/tickets.parquet", timestamp_field="ts")

@batch_feature_view(
    sources=[tickets], entities=[employee], mode="sql",
    feature_start_time=datetime(2024, 4, 1, tzinfo=timezone.utc),
    features=[
        Aggregate(column="ticket_id", function="count", time_window="30d", name="tickets_30d"),
        Aggregate(column="resolution_min", function="mean", time_window="30d",
                  name="mean_resolution_min_30d"),
        Aggregate(column="reopened", function="sum", time_window="30d", name="reopened_30d"),
    ],
)
def ticket_stats(tickets):
    return f"SELECT employee_id, ticket_id, resolution_min, reopened, ts FROM {tickets}"

helpdesk_prompt = PromptView(
    name="helpdesk_prompt",
    template=TemplateFile("templates/system.jinja"),
    features=[ticket_stats],
)

helpdesk = ContextService(name="helpdesk", features=[ticket_stats], prompts=[helpdesk_prompt])
"""

TEMPLATE = """\
You are the IT helpdesk assistant. Answer using only the facts and articles below.
Keep answers short.

Facts about the employee:
- tickets in the last 30 days: {{ features.ticket_stats.tickets_30d }}
- mean resolution time: {{ features.ticket_stats.mean_resolution_min_30d }} minutes
"""


def tickets_table() -> pa.Table:
    n = 40
    return pa.table(
        {
            "employee_id": pa.array([i % 4 for i in range(n)], pa.int64()),
            "ticket_id": pa.array(range(n), pa.int64()),
            "resolution_min": pa.array([10.0 + i for i in range(n)], pa.float64()),
            "reopened": pa.array([i % 2 for i in range(n)], pa.int64()),
            "ts": pa.array(
                [T0 + timedelta(hours=6 * i) for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
        }
    )


@pytest.fixture(autouse=True)
def _fresh_repo_modules(fresh_repo_modules):
    """Every repo here has a ``defs.py`` (see ``fresh_repo_modules``)."""


def edit(root: Path, old: str, new: str, file: str = "defs.py") -> None:
    path = root / file
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))
    for name in [m for m in sys.modules if m == "defs"]:
        del sys.modules[name]


def check_golden(name: str, text: str, root: Path) -> None:
    text = text.replace(str(root), "<repo>")
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"wrote missing golden file {path}: read it, then run again")
    assert text == path.read_text(), f"{name} differs from its golden file"


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    env["NO_COLOR"] = "1"
    exe = str(CLI) if CLI.exists() else shutil.which("contextkit")
    return subprocess.run(
        [exe, *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def repo(make_repo) -> Path:
    return make_repo(
        {"defs.py": DEFS, "templates/system.jinja": TEMPLATE},
        data={"tickets.parquet": tickets_table()},
    )


STEPS = [
    ("01_create", None),
    (
        "02_template_edit",
        (
            "Keep answers short.",
            "Keep answers short and link the article you used.",
            "templates/system.jinja",
        ),
    ),
    (
        "03_feature_added",
        (
            '        Aggregate(column="reopened", function="sum", time_window="30d", '
            'name="reopened_30d"),\n',
            '        Aggregate(column="reopened", function="sum", time_window="30d", '
            'name="reopened_30d"),\n'
            '        Aggregate(column="ticket_id", function="count", time_window="7d", '
            'name="tickets_7d"),\n',
            "defs.py",
        ),
    ),
    (
        "04_window_changed",
        (
            'Aggregate(column="resolution_min", function="mean", time_window="30d",',
            'Aggregate(column="resolution_min", function="mean", time_window="14d",',
            "defs.py",
        ),
    ),
    (
        "05_feature_removed_while_served",
        (
            '        Aggregate(column="reopened", function="sum", time_window="30d", '
            'name="reopened_30d"),\n',
            "",
            "defs.py",
        ),
    ),
    (
        "06_entity_renamed",
        ('employee = Entity(name="employee",', 'employee = Entity(name="staff_member",', "defs.py"),
    ),
]


def test_plans_of_a_series_of_edits_match_their_golden_files(repo):
    ctx = contextkit.connect(repo, "prod")
    ctx.create_workspace("prod", live=True)
    for name, change in STEPS:
        if change is not None:
            old, new, file = change
            edit(repo, old, new, file)
        plan = ctx.plan(repo)
        check_golden(f"{name}.txt", format_plan(plan) + "\n", repo)
        check_golden(f"{name}.json", json.dumps(plan.to_json(), indent=2) + "\n", repo)
        assert not plan.is_empty
        ctx.apply(plan)
        if name == "01_create":
            ctx.materialize(end=T0 + timedelta(days=10))
    assert ctx.plan(repo).is_empty
    ctx.close()


def test_a_plan_is_a_frozen_value_and_apply_runs_its_drop_steps(repo):
    ctx = contextkit.connect(repo, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(repo))
    ctx.materialize(end=T0 + timedelta(days=10))
    assert ctx.online.has_table(online_table("prod", "ticket_stats"))

    # Deleting the view (and what reads it) plans a data drop, which apply then runs.
    text = (repo / "defs.py").read_text()
    (repo / "defs.py").write_text(text[: text.index("@batch_feature_view")])
    edit(repo, "x", "x")  # forget the module
    plan = ctx.plan(repo)
    with pytest.raises(AttributeError):
        plan.changes = ()  # type: ignore[misc]
    assert [(s.action, s.name, s.run_by) for s in plan.steps] == [
        ("write_registry", "prod", "apply"),
        ("drop_data", "ticket_stats", "apply"),
    ]
    assert [(c.action, c.name) for c in plan.changes] == [
        ("delete", "helpdesk"),
        ("delete", "helpdesk_prompt"),
        ("delete", "ticket_stats"),
    ]
    assert "drop the online and offline data of feature view ticket_stats" in format_plan(plan)

    assert ctx.apply(plan) == 2

    assert not ctx.online.has_table(online_table("prod", "ticket_stats"))
    assert not ctx.offline.files(offline_table("prod", "ticket_stats"))
    ctx.close()


def test_a_dev_workspace_plan_has_no_data_steps(repo):
    ctx = contextkit.connect(repo, "dev")
    ctx.create_workspace("dev", live=False)
    plan = ctx.plan(repo)
    assert [s.action for s in plan.steps] == ["write_registry"]
    assert "needs materialization" not in format_plan(plan)
    ctx.close()


def test_plan_json_and_detailed_exitcode_from_the_cli(repo):
    ctx = contextkit.connect(repo, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.close()

    # What `contextkit plan` prints is the plan's text, line for line (not cut when piped).
    text = run_cli(repo, "plan")
    ctx = contextkit.connect(repo, "prod")
    assert text.returncode == 0 and text.stdout == format_plan(ctx.plan(repo)) + "\n"
    ctx.close()

    pending = run_cli(repo, "plan", "--json", "--detailed-exitcode")
    assert pending.returncode == 2, pending.stderr
    data = json.loads(pending.stdout)
    assert data["schema"] == 1 and data["changes_pending"] is True
    assert data["summary"] == {"create": 5, "update": 0, "delete": 0}
    assert [s["action"] for s in data["steps"]] == ["write_registry", "materialize"]
    assert data["steps"][1]["estimated_rows"] == 40

    assert run_cli(repo, "apply", "--yes").returncode == 0
    clean = run_cli(repo, "plan", "--detailed-exitcode")
    assert clean.returncode == 0, clean.stderr
    assert "No changes" in clean.stdout

    edit(repo, 'mode="sql",', 'mode="sql", batch_schedul="1h",')
    broken = run_cli(repo, "plan", "--detailed-exitcode")
    assert broken.returncode == 1
    assert "error:" in broken.stderr and "Traceback" not in broken.stderr
    # Without the flag, an error keeps its usual exit code (2 for a definition error).
    assert run_cli(repo, "plan").returncode == 2


def test_jobs_json_lists_the_jobs(repo):
    ctx = contextkit.connect(repo, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(repo))
    ctx.materialize(end=T0 + timedelta(days=10))
    ctx.close()

    result = run_cli(repo, "jobs", "--json")

    assert result.returncode == 0, result.stderr
    (job,) = json.loads(result.stdout)["jobs"]
    assert (job["view"], job["status"], job["rows_online"]) == ("ticket_stats", "succeeded", 4)
