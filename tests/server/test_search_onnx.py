"""Serving with ``backend: onnx``: a view whose model runs on ONNX Runtime is warmed up on the
ONNX path at start-up, its queries are encoded by the single-query path of the ONNX encoder, and
``/v1/search`` finds the same documents as the same packaged MiniLM on torch (query vectors at a
cosine >= 0.99). The model is exported from the packaged weights into a temp cache (~20 s)."""

from __future__ import annotations

import textwrap
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from serverproc import READY_TIMEOUT_S

import contextkit
from contextkit.embeddings import OnnxEncoder, SentenceTransformerEncoder, encode_query, get_encoder
from contextkit.server.app import create_app

pytest.importorskip("onnxruntime")

DOCS = [
    "How to return a damaged order and get a refund.",
    "Waterproof hiking boots with a rubber sole for wet trails.",
    "Resetting your account password when you forgot it.",
    "Shipping times to Canada and customs fees on imports.",
    "Cleaning a cast iron pan without removing its seasoning.",
    "Choosing a tent for winter camping in the mountains.",
    "Paying with a gift card or store credit at checkout.",
    "Warranty coverage for laptop batteries that stop charging.",
]
QUERIES = [
    "my parcel arrived broken, can I get my money back",
    "boots that keep feet dry on a hike",
    "I can't log in, forgot my password",
    "how long does delivery to Canada take",
    "laptop battery not charging anymore",
]

DEFS = """\
from contextkit import EmbeddingView, Entity, FileSource

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")
docs_torch = EmbeddingView(name="docs_torch", source=docs, entities=[doc], text="body",
                           model="minilm")
docs_onnx = EmbeddingView(name="docs_onnx", source=docs, entities=[doc], text="body",
                          model="minilm_onnx")
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-serving")
    cache = tmp_path_factory.mktemp("onnx-serving-cache")
    (root / "data").mkdir()
    (root / "contextkit.yaml").write_text(
        textwrap.dedent(
            f"""\
            project: onnx_serving
            models:
              minilm_onnx:
                type: sentence-transformers
                path: default
                backend: onnx
                cache_dir: {cache}
            """
        )
    )
    (root / "defs.py").write_text(DEFS)
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    rows = [{"doc_id": f"d{i}", "body": body, "updated_at": t0} for i, body in enumerate(DOCS)]
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "docs.parquet")
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    jobs = ctx.materialize()
    assert {j.view: j.status for j in jobs} == {"docs_torch": "succeeded", "docs_onnx": "succeeded"}
    ctx.close()
    return root


def test_an_onnx_view_is_warmed_and_searched_on_onnx_like_torch(repo):
    ctx = contextkit.connect(repo, workspace="prod")
    onnx = get_encoder("minilm_onnx", ctx.config.models, base_dir=ctx.config.root.resolve())
    torch = get_encoder("minilm", ctx.config.models, base_dir=ctx.config.root.resolve())
    assert isinstance(onnx, OnnxEncoder) and type(torch) is SentenceTransformerEncoder
    with TestClient(create_app(ctx, auth=False, warm=True)) as client:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (health := client.get("/health")).status_code != 200:
            assert health.json()["status"] == "starting", health.json()
            assert time.monotonic() < deadline, health.json()
            time.sleep(0.2)
        # The warm-up loaded the ONNX session (exported it) through the query path.
        assert onnx._runtime is not None and "warm" in _cached(onnx)

        for query in QUERIES:
            hits = {}
            for view in ("docs_torch", "docs_onnx"):
                response = client.post(
                    "/v1/search", json={"view": view, "query": query, "top_k": 3}
                )
                assert response.status_code == 200, response.text
                hits[view] = [h["key"]["doc_id"] for h in response.json()["results"]]
            assert hits["docs_onnx"] == hits["docs_torch"], query
            # Served from ONNX's single-query path (its LRU cache holds the query now).
            assert query in _cached(onnx)
            a, b = encode_query(onnx, query), encode_query(torch, query)
            assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) >= 0.99
    ctx.close()


def _cached(encoder) -> set[str]:
    cache = encoder.query_cache
    return {t for t in (QUERIES + ["warm"]) if cache.get(encoder.cache_identity, t) is not None}
