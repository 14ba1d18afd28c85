"""OpenAI-compatible embeddings and vector-store search, as an OpenAI SDK user sees them.

The official ``openai`` package talks to a real ``contextkit serve`` process (auth on, a reader
key as the SDK's ``api_key``) serving a small repo: product notes in an embedding view encoded by
the packaged MiniLM, plus a second declared model (``hash``). ``embeddings.create`` gives exactly
the vectors the repo's encoder gives, in both encodings; ``vector_stores.search`` gives the hits
``/v1/search`` gives, with OpenAI's filters translated; errors are ``APIStatusError`` with
contextkit's code and OpenAI's ``type`` and ``param``.
"""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pyarrow as pa
import pytest
from ops_fixtures import ServerProcess

import contextkit
from contextkit.embeddings import get_encoder

CONFIG_MODELS = """
models:
  tiny: {type: hash, dimension: 16}
"""

DEFS = """\
from contextkit import EmbeddingView, Entity, FileSource

note = Entity(name="note", join_keys=["note_id"])
notes = FileSource(name="notes", path="data/notes.parquet")
product_notes = EmbeddingView(
    name="product_notes", source=notes, entities=[note], text="body", model="minilm",
    metadata=["category", "price", "in_stock"], description="Notes about products.",
)
"""

NOTES = [
    ("Waterproof hiking boots with a grippy sole for muddy trails.", "shoes", 129.0, True),
    ("Lightweight running shoes with a breathable mesh upper.", "shoes", 89.0, True),
    ("Leather office shoes, resoled twice, still comfortable.", "shoes", 159.0, False),
    ("A stainless steel water bottle that keeps drinks cold all day.", "outdoor", 25.0, True),
    ("A two-person tent that packs down small for backpacking.", "outdoor", 210.0, True),
    ("A rain jacket with taped seams for wet autumn hikes.", "outdoor", 149.0, False),
    ("Noise-cancelling headphones with a thirty hour battery.", "electronics", 299.0, True),
    ("A smartwatch that tracks heart rate on long hikes.", "electronics", 199.0, True),
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai-embeddings") / "repo"
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(
        "project: openai_embeddings\nregistry: .contextkit/registry.db\n"
        "online_store: {type: sqlite, path: .contextkit/online.db}\n"
        "offline_store: {type: parquet, path: .contextkit/offline}\n" + CONFIG_MODELS
    )
    (root / "defs.py").write_text(DEFS)
    table = pa.table(
        {
            "note_id": pa.array(range(1, len(NOTES) + 1), pa.int64()),
            "body": [n[0] for n in NOTES],
            "category": [n[1] for n in NOTES],
            "price": [n[2] for n in NOTES],
            "in_stock": [n[3] for n in NOTES],
        }
    )
    import pyarrow.parquet as pq

    pq.write_table(table, root / "data" / "notes.parquet")
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize()
    reader = ctx.access.create_key("app", workspace="prod", role="reader").key
    ctx.close()
    return root, reader


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    root, _reader = repo
    log = tmp_path_factory.mktemp("openai-embeddings-log") / "serve.log"
    process = ServerProcess("--repo", str(root), "--workspace", "prod", log_path=log)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(repo, server):
    _root, reader = repo
    return openai.OpenAI(base_url=server.base + "/v1", api_key=reader, max_retries=0, timeout=120)


def search_http(server, reader: str, body: dict) -> list[dict]:
    response = httpx.post(
        server.base + "/v1/search",
        json={"view": "product_notes", **body},
        headers={"Authorization": f"Bearer {reader}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


# -- embeddings ----------------------------------------------------------------------------------


def test_embeddings_are_the_repos_encoder_output_in_both_encodings(client, repo):
    root, _reader = repo
    texts = ["waterproof boots for muddy trails", "a tent for two", "Kopfhörer"]
    expected = get_encoder("minilm", None, base_dir=root).encode(texts)

    packed = client.embeddings.create(model="contextkit/minilm", input=texts)  # SDK: base64
    plain = client.embeddings.create(
        model="contextkit/minilm", input=texts, encoding_format="float"
    )
    for response in (packed, plain):
        assert response.model == "contextkit/minilm" and response.object == "list"
        assert [d.index for d in response.data] == [0, 1, 2]
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        assert got.shape == (3, 384)
        np.testing.assert_array_equal(got, expected.astype(np.float32))
        assert response.usage.prompt_tokens == response.usage.total_tokens >= len(texts)

    # One text alone (no padding in its batch): what the encoder gives that text alone.
    alone = get_encoder("minilm", None, base_dir=root).encode([texts[0]])[0]
    one = client.embeddings.create(model="contextkit/minilm", input=texts[0], dimensions=384)
    np.testing.assert_array_equal(np.float32(one.data[0].embedding), alone)


def test_every_declared_model_is_served(client, repo):
    root, _reader = repo
    models = {"tiny": {"type": "hash", "dimension": 16}}
    expected = get_encoder("tiny", models, base_dir=root).encode(["same text", "other"])
    response = client.embeddings.create(model="contextkit/tiny", input=["same text", "other"])
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "param"),
    [
        ({"model": "contextkit/nope", "input": "x"}, 404, "not_found", "model"),
        ({"model": "contextkit/minilm", "input": ""}, 400, "bad_request", "input"),
        ({"model": "contextkit/minilm", "input": [[1, 2, 3]]}, 400, "bad_request", "input"),
        ({"model": "contextkit/minilm", "input": "x", "dimensions": 12}, 400, "bad_request",
         "dimensions"),
    ],
)  # fmt: skip
def test_embedding_errors_are_api_status_errors_naming_the_param(client, kwargs, status, code,
                                                                 param):  # fmt: skip
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(**kwargs)
    error = info.value
    assert error.status_code == status
    assert error.body["code"] == code and error.param == param
    assert error.type == "invalid_request_error"


def test_a_key_is_needed_and_its_refusal_has_openai_fields(server):
    anonymous = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        anonymous.embeddings.create(model="contextkit/minilm", input="x")
    assert info.value.body["code"] == "unauthenticated"
    assert info.value.type == "authentication_error"


# -- vector-store search -------------------------------------------------------------------------


def test_vector_store_search_gives_the_hits_of_v1_search(client, repo, server):
    _root, reader = repo
    query = "boots for wet hiking trails"
    page = client.vector_stores.search("product_notes", query=query, max_num_results=4)
    expected = search_http(server, reader, {"query": query, "top_k": 4})

    assert [hit.attributes["chunk_id"] for hit in page.data] == [h["id"] for h in expected]
    assert [hit.score for hit in page.data] == [h["score"] for h in expected]
    first = page.data[0]
    assert first.content[0].type == "text" and first.content[0].text == expected[0]["text"]
    assert first.file_id == f"note_id={expected[0]['key']['note_id']}"
    assert first.filename == f"product_notes/{first.file_id}"
    assert first.attributes["category"] == expected[0]["metadata"]["category"]
    assert first.attributes["price"] == expected[0]["metadata"]["price"]


def test_openai_filters_become_contextkit_filters(client, repo, server):
    _root, reader = repo
    query = "something for a hike"
    cases = [
        (
            {"type": "and", "filters": [
                {"key": "category", "type": "eq", "value": "outdoor"},
                {"key": "price", "type": "lt", "value": 200},
            ]},
            {"category": "outdoor", "price": {"lt": 200}},
        ),
        (
            {"type": "or", "filters": [
                {"key": "category", "type": "eq", "value": "shoes"},
                {"key": "category", "type": "eq", "value": "electronics"},
            ]},
            {"category": {"in": ["shoes", "electronics"]}},
        ),
        (
            {"key": "category", "type": "nin", "value": ["shoes"]},
            {"category": {"not_in": ["shoes"]}},
        ),
        ({"key": "in_stock", "type": "eq", "value": False}, {"in_stock": False}),
    ]  # fmt: skip
    for openai_filter, contextkit_filter in cases:
        page = client.vector_stores.search(
            "product_notes", query=query, filters=openai_filter, max_num_results=8
        )
        expected = search_http(
            server, reader, {"query": query, "top_k": 8, "filter": contextkit_filter}
        )
        assert expected, contextkit_filter
        assert [h.attributes["chunk_id"] for h in page.data] == [h["id"] for h in expected]


def test_search_options_mode_workspace_and_threshold(client, repo, server):
    _root, reader = repo
    query = "noise cancelling headphones"
    hybrid = client.vector_stores.search(
        "product_notes", query=query, extra_body={"contextkit": {"mode": "hybrid"}}
    )
    expected = search_http(server, reader, {"query": query, "mode": "hybrid"})
    assert [h.attributes["chunk_id"] for h in hybrid.data] == [h["id"] for h in expected]

    everything = client.vector_stores.search("product_notes", query=query, max_num_results=8)
    cut = everything.data[2].score
    strong = client.vector_stores.search(
        "product_notes", query=query, max_num_results=8, ranking_options={"score_threshold": cut}
    )
    assert [h.file_id for h in strong.data] == [h.file_id for h in everything.data[:3]]

    with pytest.raises(openai.PermissionDeniedError):  # a reader of prod, asking for staging
        client.vector_stores.search(
            "product_notes", query=query, extra_headers={"X-Contextkit-Workspace": "staging"}
        )


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "param"),
    [
        ({"vector_store_id": "nope", "query": "x"}, 404, "not_found", None),
        ({"vector_store_id": "product_notes", "query": "x", "max_num_results": 51}, 400,
         "bad_request", "max_num_results"),
        ({"vector_store_id": "product_notes", "query": "x",
          "filters": {"key": "colour", "type": "eq", "value": "red"}}, 400, "invalid_filter", None),
        ({"vector_store_id": "product_notes", "query": "x", "filters": {"type": "or", "filters": [
            {"key": "price", "type": "lt", "value": 5},
            {"key": "category", "type": "eq", "value": "shoes"}]}}, 400, "bad_request", "filters"),
    ],
)  # fmt: skip
def test_search_errors_are_api_status_errors(client, kwargs, status, code, param):
    with pytest.raises(openai.APIStatusError) as info:
        client.vector_stores.search(**kwargs)
    assert info.value.status_code == status
    assert info.value.body["code"] == code and info.value.param == param
