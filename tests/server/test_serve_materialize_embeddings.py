"""``contextkit serve --materialize-embeddings`` (what ``make run`` starts): the server serves
features at once while it encodes the workspace's embedding views in the background. Until a
view's job lands, a search of it is a 503 ``view_warming`` naming the running job, and
``/v1/context`` answers with the features and that search marked warming; then the same server
serves the documents. The embedding model is hosted by the local OpenAI stub (the network
edge), which holds the job's encode call, so the test sees the server mid-job without timing
anything.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from openai_stub import make_openai_stub, openai_stub  # noqa: F401  (fixtures)
from serverproc import READY_TIMEOUT_S, ServerProcess

import contextkit

T0 = datetime(2024, 5, 1, tzinfo=UTC)

DEFS = """\
from datetime import timedelta
from contextkit import (Aggregate, ContextService, EmbeddingView, Entity, FileSource, Search,
                        batch_feature_view)

user = Entity(name="user", join_keys=["user_id"])
doc = Entity(name="doc", join_keys=["doc_id"])
orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="ts")

@batch_feature_view(sources=[orders], entities=[user], mode="sql",
                    features=[Aggregate(column="amount", function="sum",
                                        time_window=timedelta(days=7))])
def spend(orders):
    return f"SELECT user_id, amount, ts FROM {orders}"

doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body", model="stub")
svc = ContextService(name="svc", features=[spend],
                     searches=[Search(doc_text, name="articles", top_k=2, mode="text")])
"""


@pytest.fixture
def repo(tmp_path, openai_stub, monkeypatch):  # noqa: F811
    """Applied, its feature view materialized, its embedding view not; ``(root, stub)``."""
    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-test")  # the serve process inherits it
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    config = {"project": "warming", "models": {"stub": openai_stub.embedding_model()}}
    (root / "contextkit.yaml").write_text(yaml.safe_dump(config))
    (root / "defs.py").write_text(DEFS)
    stamps = pa.array([T0, T0 + timedelta(hours=1)], pa.timestamp("us", tz="UTC"))
    pq.write_table(
        pa.table({"user_id": pa.array([1, 1], pa.int64()), "amount": [5, 7], "ts": stamps}),
        root / "data" / "orders.parquet",
    )
    bodies = [f"Lamp article {i}: brass desk lamps." for i in range(4)]
    pq.write_table(
        pa.table({"doc_id": [f"d{i}" for i in range(4)], "body": bodies, "ts": [T0] * 4}),
        root / "data" / "docs.parquet",
    )
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(["spend"], end=T0 + timedelta(hours=2))
    ctx.close()
    return root, openai_stub


def post(server: ServerProcess, path: str, body: dict) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        server.base + path, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, _lower(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, _lower(err.headers), json.loads(err.read())


def health(server: ServerProcess) -> tuple[int, dict]:
    with urllib.request.urlopen(server.base + "/health", timeout=60) as response:
        return response.status, json.loads(response.read())


def _lower(headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


SEARCH = {"view": "doc_text", "query": "lamps", "top_k": 2, "mode": "text"}
CONTEXT = {"service": "svc", "entities": {"user_id": 1}, "query": "lamps"}


def until(what: str, server: ServerProcess, check):
    """Wait (on the server's state, not a clock) until ``check()`` returns something."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, server.log()
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"never saw {what}:\n{server.log()}")


@pytest.mark.slow  # a real server process (the warming semantics: tests/retrieval, fast)
def test_features_served_at_once_documents_once_the_background_job_lands(repo, tmp_path):
    root, stub = repo
    stub.hold(path="/v1/embeddings")  # the job's encode call waits here
    server = ServerProcess(
        "--no-auth", "--workspace", "prod", "--materialize-embeddings", cwd=root,
        log_path=tmp_path / "serve.log",
    )  # fmt: skip
    try:
        server.wait_ready()
        features = post(server, "/v1/features", {"service": "svc", "entities": {"user_id": [1]}})

        def warming_while_encoding():
            status, headers, body = post(server, "/v1/search", SEARCH)
            assert status == 503, body
            return (headers, body) if "is running, encoding" in body["error"]["message"] else None

        headers, warming = until("the job encoding", server, warming_while_encoding)
        context = post(server, "/v1/context", CONTEXT)
        ready_warming = health(server)
        stub.release()
        until("the job land", server, lambda: "materialized in" in server.log())
        found = post(server, "/v1/search", SEARCH)
        after = post(server, "/v1/context", CONTEXT)
        ready_after = health(server)
    finally:
        server.stop()

    assert features[0] == 200 and features[2]["results"][1]["values"] == [12]  # column-major
    error = warming["error"]
    assert error["code"] == "view_warming" and "'doc_text'" in error["message"]
    assert error["details"]["job"]["status"] == "running"
    assert int(headers["retry-after"]) >= 1
    status, _, body = context
    assert status == 200 and body["features"]["spend"]["values"] == {"amount_sum_7d": 12}
    assert body["documents"] == {"articles": []}
    assert body["metadata"]["warming"]["articles"]["job"]["id"] == error["details"]["job"]["id"]
    # readiness stays 200 while the view warms, and says which view, by which job
    assert ready_warming[0] == 200 and ready_warming[1]["status"] == "ok"
    (listed,) = ready_warming[1]["warming"]
    assert (listed["view"], listed["job"]) == ("doc_text", error["details"]["job"]["id"])
    assert listed["status"] == "running" and listed["workspace"] == "prod"
    assert ready_after == (200, {"status": "ok"})
    assert found[0] == 200 and len(found[2]["results"]) == 2
    assert after[0] == 200 and len(after[2]["documents"]["articles"]) == 2
    assert "warming" not in after[2]["metadata"]
    log = server.log()
    assert "materializing embedding view(s) 'doc_text' in the background" in log
    assert "embedding view 'doc_text' materialized in" in log
