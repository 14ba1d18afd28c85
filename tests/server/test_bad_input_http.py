"""What the server answers when the input or a store is bad, found by probing it from outside.

- an int64 join key of thousands of digits, or outside int64, is a 400 naming the key (it was a 500:
  Python refuses to convert more than 4,300 digits);
- a Tecton ``get-features`` join key given as a list says that batches go to
  ``get-features-batch``;
- a 500 is an ordinary response: the client's next request on the same keep-alive connection is
  served (uvicorn used to close the connection, and the client got "connection reset by peer");
- a vector table deleted under a running server, or an online SQLite file that is not a database,
  is a 503 ``store_error`` with a hint to re-materialize, never a 500 ``internal_error``;
- ``/v1/context`` requests are counted under their service in ``/metrics``.

Real repos in tmp dirs, served by TestClient or by ``contextkit serve`` as a real process; the only
stand-in is the OpenAI stub behind the hosted embedding model (the network edge).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from openai_stub import make_openai_stub, openai_stub  # noqa: F401  (fixtures)
from ops_fixtures import FEATURES_BODY, ServeProcess, build_repo
from prometheus_client.parser import text_string_to_metric_families

import contextkit
from contextkit.server.app import create_app

TECTON = "/api/v1/feature-service"
INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return build_repo(tmp_path_factory.mktemp("bad_input") / "repo", workspaces=("prod",))


@pytest.fixture(scope="module")
def client(repo):
    ctx = contextkit.connect(repo, "prod")
    with TestClient(create_app(ctx, auth=False), raise_server_exceptions=False) as test_client:
        yield test_client
    ctx.close()


def tecton_body(value) -> dict:
    return {"params": {"featureServiceName": "svc", "joinKeyMap": {"user_id": value}}}


# -- join keys ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    [
        "9" * 4301,  # over Python's int-conversion limit
        "1" * 20,
        str(INT64_MAX + 1),
        str(-(2**63) - 1),
        "0" * 5000 + "1" * 20,  # leading zeros count against Python's limit too
    ],
    ids=["4301 digits", "20 digits", "int64 max + 1", "int64 min - 1", "zeros then 20 digits"],
)
def test_an_int64_key_outside_int64_is_a_400_naming_the_key(client, key):
    features = client.post("/v1/features", json={"service": "svc", "entities": {"user_id": [key]}})
    tecton = client.post(f"{TECTON}/get-features", json=tecton_body(key))

    assert features.status_code == 400, features.text
    error = features.json()["error"]
    assert error["code"] == "bad_request"
    assert "join key 'user_id' is out of the int64 range" in error["message"]
    assert len(error["message"]) < 200  # the start of the value, not all of it
    assert error["details"]["join_key"] == "user_id"
    assert str(INT64_MAX) in error["details"]["hint"]

    assert tecton.status_code == 400, tecton.text
    assert tecton.json()["code"] == 3  # INVALID_ARGUMENT
    assert "join key 'user_id' is out of the int64 range" in tecton.json()["message"]


def test_int64_keys_at_the_edges_of_the_range_are_served(client):
    keys = [str(INT64_MAX), str(-(2**63)), "0" * 30 + "1"]
    response = client.post("/v1/features", json={"service": "svc", "entities": {"user_id": keys}})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["values"] == [INT64_MAX, -(2**63), 1]
    assert response.json()["results"][1]["values"] == [None, None, 18]  # user 1's spend


def test_tecton_get_features_with_a_list_says_batches_go_to_get_features_batch(client):
    response = client.post(f"{TECTON}/get-features", json=tecton_body([17611]))
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert "join key 'user_id'" in message and "must be one value, got a list" in message
    assert f"{TECTON}/get-features-batch" in message  # Tecton's clients show the message only

    batch = client.post(
        f"{TECTON}/get-features-batch",
        json={
            "params": {
                "featureServiceName": "svc",
                "requestData": [{"joinKeyMap": {"user_id": "1"}}, {"joinKeyMap": {"user_id": [2]}}],
            }
        },
    )
    assert batch.status_code == 400, batch.text
    assert "params.requestData[1].joinKeyMap" in batch.json()["message"]
    assert "one requestData item is one entity" in batch.json()["message"]


# -- /metrics ----------------------------------------------------------------------------------
def test_context_requests_are_counted_under_their_service(client):
    response = client.post("/v1/context", json={"service": "svc", "entities": {"user_id": 1}})
    assert response.status_code == 200, response.text

    scraped = client.get("/metrics")
    counted = [
        sample.labels
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
        if sample.name == "contextkit_http_requests_total"
        and sample.labels["endpoint"] == "/v1/context"
    ]
    assert counted == [
        {
            "method": "POST",
            "endpoint": "/v1/context",
            "status": "200",
            "workspace": "prod",
            "service": "svc",
        }
    ]


# -- a 500 on a keep-alive connection --------------------------------------------------------------
# A realtime view whose int64 feature overflows int64: the function's value passes its type check,
# and the response cannot be encoded (orjson refuses integers over 64 bits), an error nobody
# foresaw, answered 500 internal_error.
OVERFLOWING = """

from contextkit import Attribute, Field, Int64, RequestSource, realtime_feature_view

@realtime_feature_view(sources=[RequestSource([Field("scale", Int64)]), user_spend],
                       features=[Attribute("scaled", Int64)])
def scaled_spend(request, user_spend):
    return {"scaled": request["scale"] * 10**20}

scaled = ContextService(name="scaled", features=[scaled_spend])
"""


def test_a_500_leaves_the_keep_alive_connection_usable(tmp_path):
    root = build_repo(tmp_path / "repo", workspaces=("prod",))
    with (root / "defs.py").open("a") as defs:
        defs.write(textwrap.dedent(OVERFLOWING))
    ctx = contextkit.connect(root, "prod")
    ctx.apply(ctx.plan(root))
    ctx.close()
    body = {"service": "scaled", "entities": {"user_id": [1]}, "request_context": {"scale": 1}}

    server = ServeProcess(root, "--no-auth", log_path=tmp_path / "serve.log")
    try:
        server.wait_healthy(timeout=180)
        with httpx.Client(base_url=server.base, timeout=60) as http:
            failed = http.post("/v1/features", json=body, headers={"X-Request-ID": "boom-1"})
            failed_from = failed.extensions["network_stream"].get_extra_info("client_addr")
            after = http.post("/v1/features", json=FEATURES_BODY)
            after_from = after.extensions["network_stream"].get_extra_info("client_addr")
    finally:
        server.stop()

    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "internal_error"
    assert "Traceback" not in failed.text and "64-bit" not in failed.text
    assert failed.headers["x-request-id"] == "boom-1"
    assert failed.headers.get("connection", "").lower() != "close"
    assert after.status_code == 200, after.text
    assert after_from == failed_from  # the same connection served the next request

    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    errors = [line for line in lines if line.get("message") == "unhandled error"]
    assert len(errors) == 1 and errors[0]["request_id"] == "boom-1"
    assert "Integer exceeds 64-bit range" in errors[0]["exception"]
    access = next(line for line in lines if line.get("request_id") == "boom-1" and "status" in line)
    assert access["status"] == 500 and access["service"] == "scaled"
    assert "Exception in ASGI application" not in server.log()  # nothing escaped to uvicorn


# -- stores gone or damaged under a running server -----------------------------------------------
DOCS_DEFS = """\
from contextkit import ContextService, EmbeddingView, Entity, FileSource, Search

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")
doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body", model="stub")
search_docs = ContextService(name="search_docs", searches=[Search(doc_text, top_k=3)])
"""


def docs_repo(root: Path, stub_url: str) -> Path:
    root.mkdir(parents=True)
    (root / "contextkit.yaml").write_text(
        textwrap.dedent(
            f"""\
            project: store_errors
            models:
              stub:
                type: litellm
                model: openai/stub-embedding
                api_base: {stub_url}
                dimension: 8
                api_key_env: STUB_OPENAI_KEY
                max_retries: 0
            """
        )
    )
    (root / "defs.py").write_text(DOCS_DEFS)
    (root / "data").mkdir()
    table = pa.table(
        {
            "doc_id": [f"d{i}" for i in range(6)],
            "body": [f"Doc {i} about garden hoses and desk lamps." for i in range(6)],
            "updated_at": pa.array([1_700_000_000_000_000 + i for i in range(6)]).cast(
                pa.timestamp("us", tz="UTC")
            ),
        }
    )
    pq.write_table(table, root / "data" / "docs.parquet")
    return root


def test_a_vector_table_deleted_under_the_server_is_a_503_store_error(
    tmp_path,
    openai_stub,  # noqa: F811
    monkeypatch,
):
    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-test")
    root = docs_repo(tmp_path / "repo", openai_stub.base_url)
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(["doc_text"])
    search = {"view": "doc_text", "query": "garden hoses", "top_k": 3}
    context = {"service": "search_docs", "query": "garden hoses"}

    with TestClient(create_app(ctx, auth=False), raise_server_exceptions=False) as client:
        assert client.post("/v1/search", json=search).status_code == 200
        tables = list(root.rglob("prod__doc_text.lance"))
        assert len(tables) == 1
        shutil.rmtree(tables[0])

        for path, body in [
            ("/v1/search", search),
            ("/v1/search", search),
            ("/v1/context", context),
        ]:
            response = client.post(path, json=body)
            assert response.status_code == 503, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "store_error", path
            assert "prod__doc_text" in error["message"] and "deleted" in error["message"]
            assert "re-materialize" in error["details"]["hint"]

        ctx.materialize(["doc_text"])  # what the hint says: the running server serves it again
        assert client.post("/v1/search", json=search).status_code == 200
        assert client.post("/v1/context", json=context).status_code == 200
    ctx.close()


def test_an_online_store_that_is_not_a_database_is_a_503_store_error(tmp_path):
    root = build_repo(tmp_path / "repo", workspaces=("prod",))
    for path in (root / ".contextkit").glob("online.db*"):
        path.unlink()
    (root / ".contextkit" / "online.db").write_bytes(b"not a database " * 512)

    ctx = contextkit.connect(root, "prod")
    with TestClient(create_app(ctx, auth=False), raise_server_exceptions=False) as client:
        features = client.post("/v1/features", json=FEATURES_BODY)
        tecton = client.post(f"{TECTON}/get-features", json=tecton_body("1"))
    ctx.close()

    assert features.status_code == 503, features.text
    error = features.json()["error"]
    assert error["code"] == "store_error"
    assert "online.db" in error["message"] and "file is not a database" in error["message"]
    assert "re-materialize" in error["details"]["hint"]
    assert tecton.status_code == 503, tecton.text
    assert tecton.json()["code"] == 14  # UNAVAILABLE
    assert "online.db" in tecton.json()["message"]
