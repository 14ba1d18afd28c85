"""Cancelling a running embedding-view job (the jobs API's path: ``JobService.cancel``) leaves the
LanceDB table at its previous version: same version number, same rows, same search answers; the
job is recorded ``cancelled``, and the next run encodes everything that changed."""

from __future__ import annotations

import time

import pytest
from openai_stub import OpenAIStub, make_openai_stub, openai_stub  # noqa: F401  (fixtures)

from contextkit.governance.jobs import FINISHED_STATUSES
from tests.test_embedding_views import DIM, applied, docs_table, write_repo

LIMIT_S = 120.0
TABLE = "prod__doc_text"


@pytest.fixture(autouse=True)
def stub_key(monkeypatch):
    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-test")


def wait_for(condition, what: str):
    deadline = time.monotonic() + LIMIT_S
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_cancelling_an_embedding_job_keeps_the_previous_table_version(tmp_path, openai_stub):  # noqa: F811
    import pyarrow.parquet as pq

    stub = openai_stub
    root = write_repo(tmp_path / "repo", stub.base_url)
    ctx = applied(root)
    [first] = ctx.materialize(["doc_text"])
    assert first.status == "succeeded"
    version = ctx.vectors.version(TABLE)
    rows = sorted(ctx.vectors._open(TABLE).to_arrow().to_pylist(), key=lambda r: r["id"])
    query = OpenAIStub.vector_for("Doc 3 about garden hoses, size 3.", DIM)
    before = ctx.search("doc_text", vector=query, top_k=5)

    # Every text changes; the encoder's first request is held, so the job is mid-encoding.
    changed = {i: f"Rewritten document number {i}." for i in range(20)}
    pq.write_table(docs_table(changed=changed), root / "data" / "docs.parquet")
    stub.reset()
    stub.hold(path="/v1/embeddings")
    service = ctx.job_service
    (triggered,) = service.trigger("prod", ["doc_text"])
    job_id = triggered.job.id
    wait_for(lambda: stub.requests_to("/v1/embeddings"), "the job to start encoding")
    assert ctx.registry.get_job(job_id).status == "running"
    service.cancel(job_id)
    stub.release()
    job = wait_for(
        lambda: (j := ctx.registry.get_job(job_id)).status in FINISHED_STATUSES and j,
        "the cancelled job to stop",
    )
    assert job.status == "cancelled", (job.status, job.error)
    assert len(stub.requests_to("/v1/embeddings")) < 5  # 20 texts in batches of 4: it stopped

    assert ctx.vectors.version(TABLE) == version
    after = sorted(ctx.vectors._open(TABLE).to_arrow().to_pylist(), key=lambda r: r["id"])
    assert after == rows
    assert ctx.search("doc_text", vector=query, top_k=5).hits == before.hits

    # The next run still sees every document as changed (nothing of the cancelled run counts).
    stub.reset()
    [again] = ctx.materialize(["doc_text"])
    assert again.status == "succeeded" and again.details["changed"] == 20
    assert ctx.vectors.version(TABLE) != version
