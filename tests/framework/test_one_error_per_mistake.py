"""One error per mistake (issue 18 item 3): each deliberate mistake in a small helpdesk repo
yields exactly one error, at the user's file and line, with a hint; objects that use the broken
one are listed once as skipped, not as errors of their own."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import contextkit
from contextkit.errors import DefinitionError, ValidationErrors

T0 = datetime(2024, 5, 1, tzinfo=UTC)

DEFS = '''\
from contextkit import Aggregate, ContextService, Entity, FileSource, PromptView, batch_feature_view

employee = Entity(name="employee", join_keys=["employee_id"])
laptop = Entity(name="laptop", join_keys=["laptop_id"])
tickets = FileSource(name="tickets", path="data/tickets.parquet", timestamp_field="ts")

SLOW_MINUTES = 15

@batch_feature_view(
    sources=[tickets], entities=[employee], mode="sql",
    features=[Aggregate(column="resolution_min", function="mean", time_window="30d")],
)
def employee_ticket_stats(tickets):
    return f"""
        SELECT employee_id, resolution_min, ts
        FROM {tickets}
    """

@batch_feature_view(sources=[tickets], entities=[employee], mode="pandas")
def slow_tickets(tickets):
    out = tickets[["employee_id", "ts"]].copy()
    out["slow"] = tickets["resolution_min"] > 15
    return out

@batch_feature_view(sources=[employee_ticket_stats], entities=[employee], mode="sql")
def stats_copy(employee_ticket_stats):
    return f"SELECT * FROM {employee_ticket_stats}"

helpdesk_prompt = PromptView(
    name="helpdesk_prompt",
    template="Mean resolution: {{ features.employee_ticket_stats.resolution_min_mean_30d }}",
    features=[employee_ticket_stats],
)
helpdesk = ContextService(
    name="helpdesk", features=[employee_ticket_stats, stats_copy], prompts=[helpdesk_prompt]
)
'''


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# (case, old text, new text, line holding this text, words of the message, words of the hint,
#  skipped objects)
MISTAKES = [
    (
        "wrong SQL column",
        "SELECT employee_id, resolution_min, ts",
        "SELECT employee_id, resolution_mins, ts",
        "SELECT employee_id, resolution_mins, ts",
        ["employee_ticket_stats", "resolution_mins"],
        ["resolution_min"],
        [
            "batch_feature_view 'stats_copy'",
            "prompt_view 'helpdesk_prompt'",
            "context_service 'helpdesk'",
        ],
    ),
    (
        "unknown entity",
        'sources=[tickets], entities=[employee], mode="sql",\n',
        'sources=[tickets], entities=["employe"], mode="sql",\n',
        "@batch_feature_view(",  # the view's decorator
        ["unknown entity 'employe'"],
        ["employee, laptop"],
        [
            "batch_feature_view 'stats_copy'",
            "prompt_view 'helpdesk_prompt'",
            "context_service 'helpdesk'",
        ],
    ),
    (
        "decorator argument typo",
        'entities=[employee], mode="pandas")',
        'entities=[employee], mode="pandas", batch_schedul="1h")',
        'batch_schedul="1h"',
        ["batch_feature_view()", "'batch_schedul'"],
        ["did you mean batch_schedule?"],
        [],
    ),
    (
        "source argument typo",
        'path="data/tickets.parquet", timestamp_field="ts")',
        'path="data/tickets.parquet", timestamp_feild="ts")',
        "timestamp_feild",
        ["FileSource()", "'timestamp_feild'"],
        ["did you mean timestamp_field?"],
        [],
    ),
    (
        "pandas view reads a module-level constant",
        'tickets["resolution_min"] > 15',
        'tickets["resolution_min"] > SLOW_MINUTES',
        "> SLOW_MINUTES",
        ["slow_tickets", "'SLOW_MINUTES'", "self-contained"],
        ["inside the function"],
        [],
    ),
]


@pytest.fixture(autouse=True)
def _fresh_repo_modules():
    yield
    sys.modules.pop("defs", None)


@pytest.fixture
def repo(make_repo) -> Path:
    n = 20
    tickets = pa.table(
        {
            "employee_id": pa.array([i % 4 for i in range(n)], pa.int64()),
            "ticket_id": pa.array(range(n), pa.int64()),
            "resolution_min": pa.array([float(i) for i in range(n)], pa.float64()),
            "ts": pa.array(
                [T0 + timedelta(hours=i) for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    return make_repo({"defs.py": DEFS}, data={"tickets.parquet": tickets})


def test_the_repo_without_mistakes_plans(repo):
    sys.modules.pop("defs", None)
    ctx = contextkit.connect(repo, "prod")
    ctx.create_workspace("prod", live=True)
    assert len(ctx.plan(repo).changes) == 8
    ctx.close()


@pytest.mark.parametrize(
    ("old", "new", "at", "message", "hint", "skipped"),
    [m[1:] for m in MISTAKES],
    ids=[m[0] for m in MISTAKES],
)
def test_each_mistake_is_one_error_at_its_line_with_a_hint(
    repo, monkeypatch, old, new, at, message, hint, skipped
):
    sys.modules.pop("defs", None)
    text = DEFS.replace(old, new)
    assert text != DEFS
    (repo / "defs.py").write_text(text)
    monkeypatch.chdir(repo)  # as `contextkit plan` runs in the repo
    ctx = contextkit.connect(repo, "prod")
    ctx.create_workspace("prod", live=True)

    with pytest.raises((DefinitionError, ValidationErrors)) as info:
        ctx.plan(repo)

    errors = info.value.errors if isinstance(info.value, ValidationErrors) else [info.value]
    assert len(errors) == 1, [e.message for e in errors]
    (error,) = errors
    assert error.location == f"defs.py:{line_of(text, at)}", error.message
    for word in message:
        assert word in error.message, error.message
    for word in hint:
        assert word in (error.hint or ""), error.hint
    got = getattr(info.value, "skipped", {})
    assert sorted(d for ds in got.values() for d in ds) == sorted(skipped)
    if skipped:
        assert "skipped because batch_feature_view 'employee_ticket_stats' failed" in str(
            info.value
        )
    ctx.close()
