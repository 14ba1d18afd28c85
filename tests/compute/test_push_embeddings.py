"""A failed push-based encode is reported, not passed off as done (issue 12, item 16).

Records pushed to a source behind an embedding view whose hosted model fails (a local OpenAI stub
that refuses the key; then the key unset): ``wait_for_embeddings`` raises ``PushEmbeddingError``
naming the view and the error, ``/metrics`` counts the failed encodes, and the registry holds an
error alert (``/v1/alerts``, ``contextkit status``) until a materialization encodes the records.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openai_stub import OpenAIStub

import contextkit
from contextkit.compute.push_embeddings import push_encoder
from contextkit.errors import PushEmbeddingError
from contextkit.server.app import create_app

CLI = str(Path(sys.executable).parent / "contextkit")
KEY_ENV = "CK_PUSH_FAILURE_TEST_KEY"

TICKETS = """\
from contextkit import EmbeddingView, Entity, Field, Int64, PushSource, String, Timestamp

ticket = Entity(name="ticket", join_keys=["ticket_id"])
tickets = PushSource(
    name="tickets",
    schema=[Field("ticket_id", Int64), Field("body", String), Field("ts", Timestamp)],
    timestamp_field="ts",
)
ticket_docs = EmbeddingView(name="ticket_docs", source=tickets, entities=[ticket], text="body",
                            model="hosted")
"""


def tickets(ids: range) -> list[dict]:
    ts = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    return [{"ticket_id": i, "body": f"ticket number {i}", "ts": ts} for i in ids]


def counter(client: TestClient) -> float | None:
    wanted = 'contextkit_push_embedding_failures_total{workspace="live",view="ticket_docs"} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line[len(wanted) :])
    return None


@pytest.fixture
def stub():
    with OpenAIStub(dimension=16) as running:
        yield running


def test_a_failed_push_encode_raises_counts_and_alerts_until_materialized(
    tmp_path, stub, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    root = tmp_path / "tickets"
    root.mkdir()
    (root / "contextkit.yaml").write_text(
        "project: tickets\nmodels:\n  hosted: {type: litellm, model: openai/stub-embedding, "
        f"api_base: '{stub.base_url}', api_key_env: {KEY_ENV}, dimension: 16}}\n"
    )
    (root / "defs.py").write_text(TICKETS)
    ctx = contextkit.connect(root, workspace="live")
    ctx.create_workspace("live", live=True)
    ctx.apply(ctx.plan(root))

    with TestClient(create_app(ctx, auth=False)) as client:
        assert counter(client) == 0  # the series exists before any failure

        # The provider refuses the key: the encode fails, and the wait says so.
        stub.fail(401)
        ctx.ingest("tickets", tickets(range(3)))
        with pytest.raises(PushEmbeddingError) as raised:
            ctx.wait_for_embeddings(timeout=60)
        err = raised.value
        assert "3 pushed record(s) could not be encoded" in err.message
        assert "ticket_docs" in err.message and "401" in err.message
        assert "contextkit materialize ticket_docs" in err.hint
        [failure] = err.details["failures"]
        assert (failure["workspace"], failure["view"], failure["records"]) == (
            "live",
            "ticket_docs",
            3,
        )
        assert ctx.wait_for_embeddings(timeout=60) is True  # reported once
        assert not ctx.vectors.has_table("live__ticket_docs")  # nothing was written
        assert counter(client) == 1

        # The key unset: a second failure adds up in the counter and the alert.
        monkeypatch.delenv(KEY_ENV)
        stub.reset()
        ctx.ingest("tickets", tickets(range(3, 4)))
        with pytest.raises(PushEmbeddingError, match=f"{KEY_ENV} is not set"):
            ctx.wait_for_embeddings(timeout=60)
        assert counter(client) == 2

        alerts = client.get("/v1/alerts").json()
        [alert] = [a for a in alerts["alerts"] if a["kind"] == "push_encode_failed"]
        assert alert["severity"] == "error" and alert["view"] == "ticket_docs"
        assert (
            "4 pushed record(s) are not searchable: 2 push-based encode(s) failed"
            in (alert["message"])
        )
        assert alerts["counts"]["error"] >= 1
        [view] = client.get("/v1/views").json()["views"]
        assert "push_encode_failed" in {a["kind"] for a in view["alerts"]}

    env = {**os.environ, "COLUMNS": "250"}
    status = subprocess.run(
        [CLI, "status"], cwd=root, capture_output=True, text=True, env=env, check=True
    )
    assert "push_encode_failed" in status.stdout and "4 pushed record(s)" in status.stdout

    # A materialization encodes what the log holds: the records are searchable, the alert
    # is resolved.
    monkeypatch.setenv(KEY_ENV, "sk-test")
    [job] = ctx.materialize(["ticket_docs"])
    assert job.status == "succeeded" and job.rows_online == 4
    assert ctx.vectors.count_rows("live__ticket_docs") == 4
    assert not [a for a in ctx.monitoring.alerts() if a.kind == "push_encode_failed"]
    [resolved] = [
        a for a in ctx.monitoring.alerts(include_resolved=True) if a.kind == "push_encode_failed"
    ]
    assert resolved.resolved_at is not None
    assert push_encoder().failure_counts(str(ctx.config.registry_path.resolve())) == {
        ("live", "ticket_docs"): 2
    }
    ctx.close()
