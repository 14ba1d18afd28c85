"""Output that is not a terminal (issue 18 item 5): `materialize` with stdout to a pipe prints
plain progress lines (no redrawn bars, nothing swallowed), and tables are not cut at 80 columns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

T0 = datetime(2024, 5, 1, tzinfo=UTC)
CLI = Path(sys.executable).parent / "contextkit"

DEFS = """\
from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view

employee = Entity(name="employee", join_keys=["employee_id"])
tickets = FileSource(name="tickets", path="data/tickets.parquet", timestamp_field="ts")

@batch_feature_view(sources=[tickets], entities=[employee], mode="sql",
                    features=[Aggregate(column="ticket_id", function="count", time_window="30d")])
def ticket_counts(tickets):
    return f"SELECT employee_id, ticket_id, ts FROM {tickets}"

@batch_feature_view(sources=[tickets], entities=[employee], mode="sql",
                    features=[Aggregate(column="resolution_min", function="mean",
                                        time_window="30d")])
def resolution_times_of_every_employee_over_the_last_month(tickets):
    return f"SELECT employee_id, resolution_min, ts FROM {tickets}"

helpdesk = ContextService(name="helpdesk", features=[ticket_counts])
"""


def run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    env["CONTEXTKIT_PROGRESS_INTERVAL"] = "0.5"
    exe = str(CLI) if CLI.exists() else shutil.which("contextkit")
    # stdout is a pipe, as in CI logs or `make run | tee`.
    return subprocess.run(
        [exe, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_materialize_to_a_pipe_prints_plain_progress_lines_and_wide_tables(make_repo):
    n = 30
    tickets = pa.table(
        {
            "employee_id": pa.array([i % 3 for i in range(n)], pa.int64()),
            "ticket_id": pa.array(range(n), pa.int64()),
            "resolution_min": pa.array([5.0 * i for i in range(n)], pa.float64()),
            "ts": pa.array(
                [T0 + timedelta(hours=i) for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    root = make_repo({"defs.py": DEFS}, data={"tickets.parquet": tickets})
    assert run(root, "workspace", "create", "prod", "--live").returncode == 0
    assert run(root, "apply", "--yes", "-w", "prod").returncode == 0

    result = run(root, "materialize", "-w", "prod", "--end", "2024-05-03")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    progress = [line for line in lines if "views done)" in line]
    # One plain line per stage of each view, stamped with the elapsed time, counting views.
    first = progress[0].split("materialize ", 1)[1].split(":")[0]
    assert all(f"materialize {first}:" in line for line in progress if "(0/2 views" in line)
    assert any("materialize ticket_counts:" in line for line in progress), result.stdout
    assert any("(1/2 views done)" in line for line in progress), result.stdout
    assert all(line.startswith("[") and "s] materialize " in line for line in progress)
    assert "\r" not in result.stdout and "\x1b[" not in result.stdout  # no redrawn bars
    assert any(line.startswith("ok ticket_counts:") for line in lines)

    jobs = run(root, "jobs", "-w", "prod")
    assert jobs.returncode == 0, jobs.stderr
    # The long view name and the whole range fit: the table is not cut at 80 columns.
    assert "resolution_times_of_every_employee_over_the_last_month" in jobs.stdout
    assert max(len(line) for line in jobs.stdout.splitlines()) > 80
