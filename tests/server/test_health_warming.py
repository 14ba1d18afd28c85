"""``/health``'s list of warming embedding views (server/readiness.py) as a load balancer sees it:
a probe asks no store while the registry did not change (one ``change_token()`` call, however
slow the vector store), a view stops being listed at the first probe after its job landed,
documents pushed without a job end its warming within ``RECHECK_S`` (the registry does not see
pushes), and a workspace deleted and created again lists its views as warming again.

The app's ``Readiness`` gets a hand-driven clock, so nothing here waits or times anything; the
stores are real (SQLite registry, local LanceDB) and counted where the probe calls them.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

import contextkit
from contextkit.server.app import create_app
from contextkit.server.readiness import RECHECK_S, Readiness

T0 = datetime(2024, 5, 1, tzinfo=UTC)

DEFS = """
from contextkit import (EmbeddingView, Entity, Field, FileSource, Int64, PushSource, String,
                        Timestamp)

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="ts")
doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body", model="hashed")

ticket = Entity(name="ticket", join_keys=["ticket_id"])
tickets = PushSource(
    name="tickets",
    schema=[Field("ticket_id", Int64), Field("body", String), Field("ts", Timestamp)],
    timestamp_field="ts",
)
ticket_docs = EmbeddingView(name="ticket_docs", source=tickets, entities=[ticket], text="body",
                            model="hashed")
"""


@pytest.fixture(autouse=True)
def _fresh_repo_modules(fresh_repo_modules):
    """The repo's ``defs.py`` (see ``fresh_repo_modules``)."""


class Probe:
    """``GET /health`` on an app whose readiness clock is ``now``; counts the store calls that
    each probe makes (the calls made between probes, by jobs or pushes, are not counted)."""

    def __init__(self, ctx, client: TestClient, monkeypatch) -> None:
        self.ctx, self.client, self.now = ctx, client, 0.0
        self.calls: Counter[str] = Counter()
        self._probing = False
        client.app.state.readiness = Readiness(ready=True, clock=lambda: self.now)
        for store, name in [
            (ctx.registry, "list_jobs"),
            (ctx.registry, "list_objects"),
            (ctx.vectors, "has_table"),
            (ctx.vectors, "count_rows"),
        ]:
            monkeypatch.setattr(store, name, self._counted(name, getattr(store, name)))

    def _counted(self, name, call):
        def counted(*args, **kwargs):
            if self._probing:
                self.calls[name] += 1
            return call(*args, **kwargs)

        return counted

    def __call__(self) -> dict[str, dict]:
        """The warming views by name (200 asserted); ``self.calls`` holds this probe's calls."""
        self.calls.clear()
        self._probing = True
        try:
            answer = self.client.get("/health")
        finally:
            self._probing = False
        assert answer.status_code == 200 and answer.json()["status"] == "ok", answer.text
        return {w["view"]: w for w in answer.json().get("warming", [])}


@pytest.fixture
def served(make_repo, monkeypatch):
    docs = pa.table({
        "doc_id": [f"d{i}" for i in range(6)],
        "body": [f"Article {i} about desk lamps." for i in range(6)],
        "ts": pa.array([T0] * 6, pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    root = make_repo({"defs.py": DEFS}, data={"docs.parquet": docs})
    with (root / "contextkit.yaml").open("a") as config:
        config.write("models:\n  hashed: {type: hash, dimension: 16}\n")
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    with TestClient(create_app(ctx, auth=False)) as client:
        yield root, ctx, Probe(ctx, client, monkeypatch)
    ctx.close()


def test_a_probe_reads_no_store_until_the_registry_changes_and_sees_the_job_land(served):
    _, ctx, probe = served
    first = probe()
    assert set(first) == {"doc_text", "ticket_docs"}
    assert first["doc_text"]["status"] == "not materialized"
    assert probe.calls["list_jobs"] == 2 and probe.calls["has_table"] == 2  # read once
    for _ in range(5):
        probe.now += RECHECK_S / 10
        assert probe() == first
        assert sum(probe.calls.values()) == 0, probe.calls  # nothing changed: no store asked

    # While the job encodes, its progress moves the registry: the probe shows the job; the
    # vector tables, seen empty a moment ago, are not asked again (a slow S3 on every probe).
    during: list[dict] = []

    def on_progress(view, progress):
        if not during:
            during.append(probe())
            during.append(dict(probe.calls))

    ctx.materialize(["doc_text"], on_progress=on_progress)
    running, calls = during
    assert running["doc_text"]["status"] == "running" and running["doc_text"]["job"]
    assert calls.get("list_jobs", 0) >= 1
    assert calls.get("has_table", 0) == calls.get("count_rows", 0) == 0

    # The job landed: the very next probe (no time passed) no longer lists the view.
    assert set(probe()) == {"ticket_docs"}
    # Once the stores were read, at most RECHECK_S later they are read again, changed or not.
    assert set(probe()) == {"ticket_docs"} and sum(probe.calls.values()) == 0
    probe.now += RECHECK_S
    assert set(probe()) == {"ticket_docs"}
    assert probe.calls["list_jobs"] == 1 and probe.calls["has_table"] == 1  # landed: not read


def test_documents_pushed_without_a_job_end_warming_within_the_recheck_interval(served):
    _, ctx, probe = served
    assert "ticket_docs" in probe()
    ts = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    ctx.ingest("tickets", [{"ticket_id": i, "body": f"ticket {i}", "ts": ts} for i in range(3)])
    assert ctx.wait_for_embeddings(timeout=60) is True
    assert ctx.vectors.count_rows("prod__ticket_docs") == 3

    probe.now += RECHECK_S
    assert set(probe()) == {"doc_text"}  # served from the pushed documents
    assert probe.calls["has_table"] == 2  # both views' tables were asked again


def test_a_workspace_deleted_and_created_again_lists_its_views_as_warming_again(served):
    root, ctx, probe = served
    ctx.materialize(["doc_text"])
    assert set(probe()) == {"ticket_docs"}  # doc_text landed, and is remembered as landed

    ctx.delete_workspace("prod")
    assert probe() == {}  # no workspace: nothing warming, no error
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))

    again = probe()  # no time passed: the re-created workspace is seen at the next probe
    assert set(again) == {"doc_text", "ticket_docs"}
    assert again["doc_text"]["status"] == "not materialized"
    ctx.materialize(["doc_text"])
    assert set(probe()) == {"ticket_docs"}
