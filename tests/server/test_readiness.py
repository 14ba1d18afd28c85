"""Readiness of a real ``contextkit serve``: it listens at once, answers ``/health`` with 503
``starting`` (naming the warm-up step) until it is warm, logs each step, and logs "Ready" only
then. The embedding model is hosted by the local OpenAI stub (the network edge), which can hold
the warm-up's encode call, so the test sees the server mid-warm-up without timing anything."""

from __future__ import annotations

import json
import textwrap
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openai_stub import make_openai_stub, openai_stub  # noqa: F401  (fixtures)
from serverproc import READY_TIMEOUT_S, ServerNotReady, ServerProcess

import contextkit

T0 = datetime(2024, 5, 1, tzinfo=UTC)

DEFS = """\
from contextkit import ContextService, EmbeddingView, Entity, FileSource, Search

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")
doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body", model="stub")
search_docs = ContextService(name="search_docs", searches=[Search(doc_text, top_k=2)])
"""


@pytest.fixture
def repo(tmp_path, openai_stub, monkeypatch):  # noqa: F811
    """A materialized repo whose embedding model is the stub's; ``(root, stub)``."""
    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-test")  # the serve process inherits it
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(
        textwrap.dedent(
            f"""\
            project: ready
            models:
              stub:
                type: litellm
                model: openai/stub-embedding
                api_base: {openai_stub.base_url}
                dimension: 8
                api_key_env: STUB_OPENAI_KEY
                max_retries: 0
                timeout_s: 600
            """
        )
    )
    (root / "defs.py").write_text(DEFS)
    rows = [
        {"doc_id": f"d{i}", "body": f"Doc {i} about lamps.", "updated_at": T0 + timedelta(hours=i)}
        for i in range(4)
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "docs.parquet")
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize()
    ctx.close()
    return root, openai_stub


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def health_while_starting(server: ServerProcess) -> dict:
    """The first /health answer that shows the warm-up waiting on the model."""
    server.wait_listening()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log()
        status, body = get(server.base + "/health")
        assert status == 503 and body["status"] == "starting", body
        if body["step"].startswith("warming model"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"never saw the model step: {server.log()}")


def test_the_server_answers_starting_until_warm_then_ok_and_logs_ready_last(repo, tmp_path):
    root, stub = repo
    stub.hold(path="/v1/embeddings")  # the warm-up's encode call waits here
    server = ServerProcess(
        "--no-auth", "--workspace", "prod", cwd=root, log_path=tmp_path / "serve.log"
    )
    try:
        starting = health_while_starting(server)
        with urllib.request.urlopen(server.base + "/metrics", timeout=30) as metrics:
            served_meanwhile = metrics.status
        log_while_starting = server.log()
        stub.release()
        server.wait_ready()
        ready = get(server.base + "/health")
    finally:
        server.stop()

    assert starting["step"] == "warming model 'stub' (embedding view 'doc_text')"
    assert starting["elapsed_s"] >= 0
    assert served_meanwhile == 200
    assert "Ready" not in log_while_starting
    assert ready == (200, {"status": "ok"})
    messages = [
        json.loads(line)["message"] for line in server.log().splitlines() if line.startswith("{")
    ]
    steps = [m for m in messages if m.startswith(("warm-up:", "Ready"))]
    assert steps[0] == "warm-up: starting"
    assert steps[1].startswith("warm-up: loading the registry in ")
    assert steps[2].startswith("warm-up: opening the vector store in ")
    assert steps[3].startswith("warm-up: warming model 'stub' (embedding view 'doc_text') in ")
    assert steps[4].startswith("warm-up: opening vector table ")
    assert steps[-1].startswith("Ready: workspace 'prod' warmed up in ")
    assert sum(m.startswith("Ready") for m in messages) == 1


def test_a_failed_warm_up_answers_503_failed_and_the_wait_says_so(repo, tmp_path):
    root, stub = repo
    stub.fail(500, path="/v1/embeddings")
    server = ServerProcess(
        "--no-auth", "--workspace", "prod", cwd=root, log_path=tmp_path / "serve.log"
    )
    with pytest.raises(ServerNotReady) as info:
        server.wait_ready()

    assert "the warm-up failed" in str(info.value)
    assert "warming model 'stub' (embedding view 'doc_text')" in str(info.value)
    assert server.proc.poll() is not None  # the failed wait stopped it
    assert '"level":"error"' in server.log() and "warm-up failed at" in server.log()
    assert "Ready" not in server.log()


def test_a_server_that_exits_fails_the_wait_at_once_with_its_log(tmp_path):
    missing = tmp_path / "no-repo"
    missing.mkdir()
    server = ServerProcess("--workspace", "prod", cwd=missing, log_path=tmp_path / "serve.log")

    with pytest.raises(ServerNotReady) as info:
        server.wait_ready()

    assert "the server exited with" in str(info.value) and "contextkit.yaml" in str(info.value)
