"""Registry and workspace user stories: what `plan`/`apply` record, and what they refuse to do.

A team keeps a live `prod` workspace and dev workspaces; every apply is a numbered version (who,
when, what changed); an edit to one view changes only that view; a failed apply changes nothing;
removing a view from the repo removes its materialized data.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import contextkit
from contextkit.compute.layout import offline_table, online_table
from contextkit.errors import BadRequestError, NotFoundError, WorkspaceError
from contextkit.stores.errors import ApplyConflictError

T0 = datetime(2024, 5, 1, tzinfo=UTC)
END = T0 + timedelta(hours=12)

DEFS = """\
from datetime import timedelta
from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql",
                    features=[Aggregate(column="x", function="sum", time_window=timedelta(days=7))])
def spend(events):
    return f"SELECT user_id, x, ts FROM {events}"

@batch_feature_view(sources=[events], entities=[user], mode="sql",
                    features=[Aggregate(column="x", function="count", time_window="1d")])
def counts(events):
    return f"SELECT user_id, x, ts FROM {events}"

svc = ContextService(name="svc", features=[spend, counts])
"""


def events_table() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1, 2, 1], pa.int64()),
            "x": pa.array([5, 7, 11], pa.int64()),
            "ts": pa.array(
                [T0 + timedelta(hours=h) for h in (1, 2, 3)], pa.timestamp("us", tz="UTC")
            ),
        }
    )


@pytest.fixture(autouse=True)
def _fresh_repo_modules(fresh_repo_modules):
    """Every repo here has a ``defs.py`` (see ``fresh_repo_modules``)."""


@pytest.fixture
def repo(make_repo) -> Path:
    return make_repo({"defs.py": DEFS}, data={"events.parquet": events_table()})


def edit(root: Path, old: str, new: str) -> None:
    """Change the repo's definitions as an engineer would, in their editor."""
    path = root / "defs.py"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def deploy(root: Path, materialize: bool = False) -> contextkit.Context:
    """A live `prod` workspace with the repo applied (version 1)."""
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    assert ctx.apply(ctx.plan(root)) == 1
    if materialize:
        ctx.materialize(end=END)
    return ctx


def snapshot(ctx: contextkit.Context, workspace: str = "prod") -> tuple:
    """Everything the registry holds about a workspace."""
    registry = ctx.registry
    return (
        registry.get_workspace(workspace),
        registry.list_objects(workspace),
        registry.list_applies(workspace),
    )


CONTEXTKIT = Path(sys.executable).parent / "contextkit"


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the installed `contextkit` script in ``cwd`` (wide, uncoloured output)."""
    exe = str(CONTEXTKIT) if CONTEXTKIT.exists() else shutil.which("contextkit")
    assert exe, "the contextkit console script is not installed"
    env = {k: v for k, v in os.environ.items() if k not in ("CONTEXTKIT_DEBUG", "FORCE_COLOR")}
    env.update(COLUMNS="400", NO_COLOR="1")
    return subprocess.run(
        [exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def table_rows(output: str) -> list[list[str]]:
    """The cells of a rich table printed by the CLI, one list per body row."""
    rows = []
    for line in output.splitlines():
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


# -- workspaces -------------------------------------------------------------------------------
def test_workspaces_are_created_listed_selected_and_deleted_from_the_cli(repo):
    assert "Created live workspace 'prod'" in ok(
        run_cli(repo, "workspace", "create", "prod", "--live")
    )
    assert "Created dev workspace 'alice'" in ok(run_cli(repo, "workspace", "create", "alice"))
    assert "Selected workspace 'alice'" in ok(run_cli(repo, "workspace", "select", "alice"))

    rows = table_rows(ok(run_cli(repo, "workspace", "list")))
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("*", "alice", "dev", "0"),
        ("", "prod", "live", "0"),
    ]
    # Later commands default to the selected workspace.
    ctx = contextkit.connect(repo)
    assert ctx.workspace == "alice"
    ctx.close()

    assert "Deleted workspace 'alice'" in ok(run_cli(repo, "workspace", "delete", "alice", "--yes"))

    ctx = contextkit.connect(repo)
    assert [w.name for w in ctx.list_workspaces()] == ["prod"]
    assert ctx.workspace == "prod"  # the deleted selection is forgotten; prod is the only one
    ctx.close()


def test_workspace_mistakes_are_refused(repo):
    ctx = contextkit.connect(repo)
    ctx.create_workspace("prod", live=True)

    with pytest.raises(WorkspaceError, match="'prod' already exists"):
        ctx.create_workspace("prod")
    with pytest.raises(BadRequestError, match="not valid"):
        ctx.create_workspace("my workspace")
    with pytest.raises(NotFoundError, match="'staging' does not exist") as info:
        ctx.select_workspace("staging")
    assert "contextkit workspace create staging" in info.value.hint
    with pytest.raises(NotFoundError):
        ctx.delete_workspace("staging")

    assert [(w.name, w.live, w.version) for w in ctx.list_workspaces()] == [("prod", True, 0)]
    ctx.close()


def test_deleting_a_live_workspace_removes_its_objects_and_data(repo):
    ctx = deploy(repo, materialize=True)
    ctx.create_workspace("dev")
    assert ctx.online.has_table(online_table("prod", "spend"))
    assert ctx.offline.files(offline_table("prod", "spend"))

    ctx.delete_workspace("prod")

    assert [w.name for w in ctx.list_workspaces()] == ["dev"]
    assert ctx.registry.list_objects("prod") == []
    assert ctx.registry.list_applies("prod") == []
    assert ctx.registry.list_jobs("prod") == []
    for view in ("spend", "counts"):
        assert not ctx.online.has_table(online_table("prod", view))
        assert not ctx.offline.table_dir(offline_table("prod", view)).exists()
    ctx.close()


# -- versions -----------------------------------------------------------------------------------
def test_an_apply_is_a_version_with_who_when_and_what(repo):
    ctx = contextkit.connect(repo)
    ctx.create_workspace("prod", live=True)
    before = time.time()

    applied = ok(run_cli(repo, "apply", "--yes"))

    assert "workspace 'prod' is at version 1" in applied
    assert "contextkit materialize" in applied  # new views need computing
    (record,) = ctx.registry.list_applies("prod")
    assert record.version == 1
    assert record.applied_by == getpass.getuser()
    assert before <= record.applied_at <= time.time()
    assert (record.summary["create"], record.summary["update"], record.summary["delete"]) == (
        5,
        0,
        0,
    )
    assert sorted(record.summary["rematerialize"]) == ["counts", "spend"]
    assert {(c["kind"], c["name"]) for c in record.summary["changes"]} == {
        ("entity", "user"),
        ("file_source", "events"),
        ("batch_feature_view", "spend"),
        ("batch_feature_view", "counts"),
        ("context_service", "svc"),
    }

    (row,) = table_rows(ok(run_cli(repo, "versions")))
    version, _applied_at, by, create, update, delete, changed = row
    assert (version, by, create, update, delete) == ("1", getpass.getuser(), "5", "0", "0")
    assert "c:spend" in changed and "c:svc" in changed
    ctx.close()


def test_applying_the_same_repo_twice_is_a_no_op(repo):
    ctx = deploy(repo)
    state = snapshot(ctx)

    again = ctx.plan(repo)
    assert again.is_empty and again.base_version == 1
    assert ctx.apply(again) == 1
    assert "No changes: workspace 'prod' (live) is up to date" in ok(
        run_cli(repo, "apply", "--yes")
    )

    assert snapshot(ctx) == state
    ctx.close()


# -- changing definitions -------------------------------------------------------------------------
def test_changing_one_views_window_updates_only_that_view(repo):
    ctx = deploy(repo)
    edit(repo, "time_window=timedelta(days=7)", "time_window=timedelta(days=30)")

    plan = ctx.plan(repo)

    (change,) = plan.changes
    assert (change.action, change.kind, change.name) == ("update", "batch_feature_view", "spend")
    fields = {f.path: (f.old, f.new) for f in change.fields}
    assert fields["features[0].window_seconds"] == (7 * 86400, 30 * 86400)
    assert fields["features[0].name"] == ("x_sum_7d", "x_sum_30d")
    assert change.rematerialize

    assert ctx.apply(plan) == 2
    versions = {o.name: o.version for o in ctx.registry.list_objects("prod")}
    assert versions == {"user": 1, "events": 1, "spend": 2, "counts": 1, "svc": 1}
    assert ctx.registry.list_applies("prod")[-1].summary["rematerialize"] == ["spend"]
    ctx.close()


def test_a_description_only_change_needs_no_rematerialization(repo):
    ctx = deploy(repo)
    edit(repo, "def counts(events):", 'def counts(events):\n    """Events per user per day."""')

    plan = ctx.plan(repo)

    (change,) = plan.changes
    assert (change.action, change.name) == ("update", "counts")
    assert [(f.path, f.old, f.new) for f in change.fields] == [
        ("description", "", "Events per user per day.")
    ]
    assert not change.rematerialize
    ctx.close()


def test_a_same_length_edit_within_a_second_is_seen_by_plan(repo, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as outside this test environment
    defs = repo / "defs.py"
    stamp = int(time.time())
    os.utime(defs, (stamp, stamp))
    ctx = deploy(repo)
    edit(repo, "time_window=timedelta(days=7)", "time_window=timedelta(days=3)")
    os.utime(defs, (stamp, stamp))  # saved again within the same second

    plan = ctx.plan(repo)

    assert [(c.action, c.name) for c in plan.changes] == [("update", "spend")]
    ctx.close()


# -- failed applies change nothing ----------------------------------------------------------------
def test_an_apply_from_a_stale_plan_is_refused_and_changes_nothing(repo):
    ctx = deploy(repo)
    edit(repo, "time_window=timedelta(days=7)", "time_window=timedelta(days=30)")
    mine = ctx.plan(repo)
    theirs = ctx.plan(repo)  # a colleague planned from the same version
    assert mine.base_version == theirs.base_version == 1
    assert ctx.apply(mine) == 2
    after_mine = snapshot(ctx)

    with pytest.raises(WorkspaceError, match="changed since the plan") as info:
        ctx.apply(theirs)

    assert isinstance(info.value.__cause__, ApplyConflictError)
    assert "run `contextkit plan` again" in info.value.hint
    assert snapshot(ctx) == after_mine
    # Planning again from the new version is the way forward (and here there is nothing left).
    assert ctx.plan(repo).is_empty
    ctx.close()


def test_applying_a_broken_repo_from_the_cli_changes_nothing(repo):
    ctx = deploy(repo)
    before = snapshot(ctx)
    edit(repo, 'column="x", function="sum"', 'column="amount", function="sum"')  # no such column

    result = run_cli(repo, "apply", "--yes", "--workspace", "prod")

    assert result.returncode == 2, result.stdout + result.stderr
    assert "'amount'" in result.stderr and "Traceback" not in result.stderr
    assert "Applied" not in result.stdout
    assert snapshot(ctx) == before
    ctx.close()


# -- deleting a view ----------------------------------------------------------------------------
def test_removing_a_view_from_the_repo_drops_its_online_table_and_offline_files(repo):
    ctx = deploy(repo, materialize=True)
    counts_online, counts_offline = online_table("prod", "counts"), offline_table("prod", "counts")
    assert ctx.online.has_table(counts_online)
    assert ctx.offline.files(counts_offline)
    assert ctx.get_features("svc", {"user_id": [1]}).to_dict()["counts.x_count_1d"] == [2]

    text = (repo / "defs.py").read_text()
    start = text.index(
        '@batch_feature_view(sources=[events], entities=[user], mode="sql",\n'
        '                    features=[Aggregate(column="x", function="count"'
    )
    end = text.index("svc = ")
    (repo / "defs.py").write_text(
        text[:start] + text[end:].replace("features=[spend, counts]", "features=[spend]")
    )
    plan = ctx.plan(repo)
    assert [(c.action, c.name) for c in plan.changes] == [("update", "svc"), ("delete", "counts")]

    assert ctx.apply(plan) == 2

    assert not ctx.online.has_table(counts_online)
    assert not ctx.offline.table_dir(counts_offline).exists()
    # The remaining view keeps its data and is still served.
    assert ctx.online.has_table(online_table("prod", "spend"))
    assert ctx.offline.files(offline_table("prod", "spend"))
    assert ctx.get_features("svc", {"user_id": [1]}).to_dict() == {
        "user_id": [1],
        "spend.x_sum_7d": [16],
    }
    ctx.close()
