"""Whole documents over long texts (issue 19 item 3) and the search plan in a job record.

- ``chunking="auto"`` splits to the model's window with overlap;
- ``group_by="document"`` on ``ctx.search``, ``/v1/search`` and ``Search``: one hit per
  document, scored by its best chunk, which comes along as the highlight;
- an embedding job records the vector table's calibrated search plan in its details.

A real repo in a tmp dir, served by TestClient; the only stand-in is the OpenAI stub behind the
hosted embedding model (the network edge).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from openai_stub import make_openai_stub, openai_stub  # noqa: F401  (fixtures)

import contextkit
from contextkit.compute.embedding import group_documents
from contextkit.embeddings.chunking import Chunker, whitespace_spans
from contextkit.framework.definitions.embedding_views import EmbeddingView
from contextkit.framework.definitions.prompt_views import Search
from contextkit.server.app import create_app


class WindowedModel:
    """What the chunker asks of an encoder: its input limit and its tokenizer's spans."""

    max_tokens = 12

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return whitespace_spans(text)


def test_auto_chunking_fills_the_model_window_with_overlap():
    chunker = Chunker.from_config({"by": "auto"}, WindowedModel())
    assert (chunker.unit, chunker.size, chunker.overlap, chunker.mode) == ("tokens", 10, 1, "auto")
    text = " ".join(f"w{i}" for i in range(25))
    chunks = chunker.split(text)
    assert [len(c.text.split()) for c in chunks] == [10, 10, 7]
    assert chunks[1].text.split()[0] == "w9"  # one token shared with the chunk before
    for c in chunks:
        assert text[c.char_offset : c.char_offset + len(c.text)] == c.text
    # an explicit overlap; no tokenizer: words at 3/4 of the window; no window: characters
    assert Chunker.from_config({"by": "auto", "overlap": 3}, WindowedModel()).overlap == 3

    class NoTokenizer:
        max_tokens = 130

    assert (Chunker.auto(NoTokenizer()).unit, Chunker.auto(NoTokenizer()).size) == ("tokens", 96)
    assert (Chunker.auto(None).unit, Chunker.auto(None).size) == ("chars", 2000)


def test_an_embedding_view_takes_chunking_auto():
    view = EmbeddingView(name="v", source="s", entities=["e"], text="body", chunking="auto")
    spec = view.to_spec()
    assert spec.chunking.by == "auto" and spec.chunking.overlap == 0
    with pytest.raises(Exception, match=r"chunking .*auto.* is not valid"):
        EmbeddingView(
            name="v", source="s", entities=["e"], text="body", chunking={"by": "auto", "size": 9}
        ).to_spec()
    assert Search("v", group_by="document").to_spec().group_by == "document"
    with pytest.raises(ValueError, match="group_by"):
        Search("v", group_by="chunks")


def test_group_documents_keeps_the_best_chunk_and_asks_deeper_when_short():
    # document a has many chunks at the top, so the first depth holds too few documents
    chunks = [
        {"id": f"a#{i}", "key": {"doc_id": "a"}, "score": 1 - i / 100, "text": f"a{i}",
         "metadata": {}, "chunk_index": i, "char_offset": 10 * i}
        for i in range(30)
    ] + [
        {"id": f"{d}#0", "key": {"doc_id": d}, "score": 0.5 - n / 100, "text": d,
         "metadata": {"n": n}, "chunk_index": 0, "char_offset": 0}
        for n, d in enumerate("bcd")
    ]  # fmt: skip
    asked = []

    def run(k):
        asked.append(k)
        return chunks[:k]

    docs = group_documents(run, 3)
    assert asked == [23, 92]  # max(4 x 3, 3 + 20), then four times deeper
    assert [d["id"] for d in docs] == ["a", "b", "c"]
    assert docs[0]["highlight"] == {"id": "a#0", "text": "a0", "chunk_index": 0, "char_offset": 0}
    assert docs[0]["matched_chunks"] == 30 and docs[0]["score"] == 1.0
    assert docs[1]["metadata"] == {"n": 0} and docs[1]["matched_chunks"] == 1


DEFS = """\
from contextkit import ContextService, EmbeddingView, Entity, FileSource, Search

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")
doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body", model="stub",
                         chunking={"by": "chars", "size": 40, "overlap": 5})
by_doc = ContextService(name="by_doc",
                        searches=[Search(doc_text, top_k=3, group_by="document")])
"""


def repo(root: Path, stub_url: str) -> Path:
    root.mkdir(parents=True)
    (root / "contextkit.yaml").write_text(
        textwrap.dedent(
            f"""\
            project: documents
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
    (root / "defs.py").write_text(DEFS)
    (root / "data").mkdir()
    bodies = [
        " ".join(f"garden hose part {j} of document {i}." for j in range(8)) for i in range(5)
    ]
    table = pa.table(
        {
            "doc_id": [f"d{i}" for i in range(5)],
            "body": bodies,
            "updated_at": pa.array([1_700_000_000_000_000 + i for i in range(5)]).cast(
                pa.timestamp("us", tz="UTC")
            ),
        }
    )
    pq.write_table(table, root / "data" / "docs.parquet")
    return root


def test_documents_not_chunks_over_sdk_http_and_services(tmp_path, openai_stub, monkeypatch):  # noqa: F811
    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-test")
    root = repo(tmp_path / "repo", openai_stub.base_url)
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    job = ctx.materialize(["doc_text"])[0]
    plan = job.details["search"]
    assert plan["method"] == "exact" and plan["rows"] == job.rows_online > 5
    assert plan["reason"] == "no ANN index" and job.details["search_calibrated"] is True

    chunks = ctx.search("doc_text", "garden hose part 3", top_k=10, mode="text")
    assert len({tuple(h["key"].values()) for h in chunks}) < 10  # chunks repeat documents
    docs = ctx.search("doc_text", "garden hose part 3", top_k=4, mode="text", group_by="document")
    best = {}
    for h in ctx.search("doc_text", "garden hose part 3", top_k=1000, mode="text"):
        best.setdefault(h["key"]["doc_id"], h)  # the first chunk of a document is its best
    assert len(docs) == 4 and len({d["id"] for d in docs}) == 4
    for d in docs:
        assert d["id"] == d["key"]["doc_id"]
        assert d["highlight"]["id"].startswith(d["id"] + "#") and d["matched_chunks"] >= 1
        assert d["highlight"]["id"] == best[d["id"]]["id"] and d["score"] == best[d["id"]]["score"]

    with TestClient(create_app(ctx, auth=False), raise_server_exceptions=False) as client:
        body = {"view": "doc_text", "query": "garden hose", "top_k": 3, "group_by": "document"}
        response = client.post("/v1/search", json=body)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len({r["id"] for r in results}) == 3
        assert all("highlight" in r for r in results)
        bad = client.post("/v1/search", json={**body, "group_by": "page"})
        assert bad.status_code == 400, bad.text
        assert "group_by" in bad.json()["error"]["message"]
        context = client.post("/v1/context", json={"service": "by_doc", "query": "garden hose"})
        assert context.status_code == 200, context.text
        assert "highlight" in context.text
    ctx.close()


LONG_DEFS = """\
from contextkit import EmbeddingView, Entity, FileSource

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")
whole = EmbeddingView(name="whole", source=docs, entities=[doc], text="body")
chunked = EmbeddingView(name="chunked", source=docs, entities=[doc], text="body", chunking="auto")
"""


def test_plan_warns_when_texts_exceed_the_model_window_without_chunking(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "contextkit.yaml").write_text("project: long\n")
    (root / "defs.py").write_text(LONG_DEFS)
    (root / "data").mkdir()
    long = " ".join(["encyclopedia"] * 400)  # far past MiniLM's 256 tokens
    bodies = [long if i % 4 == 0 else f"short text {i}" for i in range(40)]  # 10 of 40
    table = pa.table(
        {
            "doc_id": [f"d{i}" for i in range(40)],
            "body": bodies,
            "updated_at": pa.array([1_700_000_000_000_000 + i for i in range(40)]).cast(
                pa.timestamp("us", tz="UTC")
            ),
        }
    )
    pq.write_table(table, root / "data" / "docs.parquet")
    ctx = contextkit.connect(root, "dev")
    ctx.create_workspace("dev")
    plan = ctx.plan(root)
    warnings = [w for w in plan.warnings if "model's window" in w]
    assert len(warnings) == 1, plan.warnings
    assert "25.0% of 40 sampled texts" in warnings[0]
    assert "'whole'" in warnings[0] or "whole" in warnings[0]
    assert "defs.py:5" in warnings[0] and "256 tokens" in warnings[0]
    assert 'chunking="auto"' in warnings[0]
    # the finding describes the data, not the view: it is not stored, so applying it and
    # planning again shows no change
    ctx.apply(plan)
    assert ctx.plan(root).is_empty
    ctx.close()


def tiny_cross_encoder(folder: Path) -> Path:
    """A one-layer BERT cross-encoder with random weights, built and saved here (no download)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True)
    words = ["garden", "hose", "part", "of", "doc", ".", *(str(i) for i in range(10))]
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])
    )
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    config = BertConfig(
        vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=128, num_labels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_local_cross_encoder_reranks_the_candidates(tmp_path, openai_stub, monkeypatch):  # noqa: F811
    from sentence_transformers import CrossEncoder

    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-test")
    root = repo(tmp_path / "repo", openai_stub.base_url)
    model = tiny_cross_encoder(root / "models" / "tiny-ce")
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(["doc_text"])
    first = ctx.search("doc_text", "garden hose part 3", top_k=12, mode="text")
    result = ctx.search(
        "doc_text", "garden hose part 3", top_k=4, mode="text",
        rerank={"model": "local:models/tiny-ce", "depth": 12},
    )  # fmt: skip
    assert len(result) == 4
    assert result.timings_ms["rerank"] > 0 and result.timings_ms["rerank_candidates"] == 12
    expected = CrossEncoder(str(model)).predict([("garden hose part 3", h["text"]) for h in first])
    by_id = {h["id"]: float(s) for h, s in zip(first, expected, strict=True)}
    best = sorted(by_id.values(), reverse=True)[:4]
    assert [h["score"] for h in result] == pytest.approx(best, abs=1e-5)
    for h in result:
        assert h["scores"]["rerank"] == pytest.approx(by_id[h["id"]], abs=1e-5)
        assert h["scores"]["retrieval"] == next(f["score"] for f in first if f["id"] == h["id"])

    # a depth past the table: the candidates counted are the ones reranked
    everything = ctx.search("doc_text", "garden hose part 3", top_k=500, mode="text")
    deep = ctx.search(
        "doc_text", "garden hose part 3", top_k=4, mode="text",
        rerank={"model": "local:models/tiny-ce", "depth": 500},
    )  # fmt: skip
    assert 12 <= len(everything) < 500
    assert deep.timings_ms["rerank_candidates"] == len(everything)

    with TestClient(create_app(ctx, auth=False), raise_server_exceptions=False) as client:
        body = {"view": "doc_text", "query": "garden hose", "top_k": 2, "mode": "text"}
        ok = client.post("/v1/search", json={**body, "rerank": "local:models/tiny-ce"})
        assert ok.status_code == 200, ok.text
        assert "rerank" in ok.json()["metadata"]["timings_ms"]
        for refused in (f"local:{model}", {"model": "cohere/x", "api_base": "http://10.0.0.1"}):
            bad = client.post("/v1/search", json={**body, "rerank": refused})
            assert bad.status_code == 400, bad.text
        missing = client.post("/v1/search", json={**body, "rerank": "local:models/none"})
        assert missing.status_code == 400 and "does not exist" in missing.text
    ctx.close()


class RerankStub:
    """A Cohere-style ``POST /v1/rerank`` on 127.0.0.1: scores each document by how many of the
    query's words it holds; records the requests; ``fail`` makes it answer 500."""

    def __init__(self) -> None:
        import http.server
        import threading

        stub = self
        self.requests: list[dict] = []
        self.fail = False

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                      "body": body})  # fmt: skip
                if stub.fail:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"message": "overloaded"}')
                    return
                words = set(body["query"].lower().split())
                scored = [
                    {"index": i, "relevance_score": float(len(words & set(d.lower().split())))}
                    for i, d in enumerate(body["documents"])
                ]
                scored.sort(key=lambda r: -r["relevance_score"])
                meta = {"billed_units": {"search_units": 1}}
                out = json.dumps({"id": "r1", "results": scored[: body.get("top_n")],
                                  "meta": meta}).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_hosted_rerank_model_through_litellm(tmp_path, openai_stub, monkeypatch):  # noqa: F811
    from contextkit.errors import RerankError

    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-test")
    monkeypatch.setenv("STUB_RERANK_KEY", "rr-secret")
    root = repo(tmp_path / "repo", openai_stub.base_url)
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(["doc_text"])
    stub = RerankStub()
    try:
        options = {"model": "cohere/rerank-english-v3.0", "api_base": stub.url,
                   "api_key_env": "STUB_RERANK_KEY", "depth": 8}  # fmt: skip
        first = ctx.search("doc_text", "part 3 of doc 4", top_k=8, mode="text")
        result = ctx.search("doc_text", "part 3 of doc 4", top_k=3, mode="text", rerank=options)
        sent = stub.requests[-1]
        # litellm speaks Cohere's v2 rerank API here
        assert sent["path"].endswith("/rerank") and sent["auth"] == "Bearer rr-secret"
        assert sent["body"]["documents"] == [h["text"] for h in first]  # the candidates, in order
        words = {"part", "3", "of", "doc", "4"}
        expected = sorted(
            (float(len(words & set(h["text"].lower().split()))) for h in first), reverse=True
        )[:3]
        assert [h["score"] for h in result] == expected
        assert all("retrieval" in h["scores"] for h in result)
        assert result.timings_ms["rerank"] > 0
        stub.fail = True  # a provider failure is upstream's (502), not the request's
        with pytest.raises(RerankError, match="rerank model 'cohere/rerank-english-v3.0'"):
            ctx.search("doc_text", "part 3", top_k=3, mode="text", rerank=options)
    finally:
        stub.close()
        ctx.close()


def test_a_failing_rerank_provider_is_a_502_and_bad_rerank_options_a_400(
    tmp_path,
    openai_stub,  # noqa: F811
    monkeypatch,
):
    """Over HTTP, with the local OpenAI stub also serving Cohere's rerank route (the server's
    environment points litellm's Cohere provider at it: a request may not name api_base): the
    provider failing (503) or unreachable is 502 ``rerank_failed``; an unknown provider, a model
    the provider does not know (404) or bad options are 400; it works again once the provider
    is back."""
    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-test")
    monkeypatch.setenv("COHERE_API_KEY", "rr-secret")
    monkeypatch.setenv("COHERE_API_BASE", openai_stub.base_url)
    root = repo(tmp_path / "repo", openai_stub.base_url)
    ctx = contextkit.connect(root, "prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(["doc_text"])
    hosted = {"model": "cohere/rerank-english-v3.0", "depth": 8}
    body = {"view": "doc_text", "query": "part 3 of document 4", "top_k": 3, "mode": "text"}
    with TestClient(create_app(ctx, auth=False), raise_server_exceptions=False) as client:
        ok = client.post("/v1/search", json={**body, "rerank": hosted})
        assert ok.status_code == 200, ok.text
        rerank_path = openai_stub.requests[-1].path  # litellm's Cohere v2 route under the base
        assert rerank_path.endswith("/rerank")
        assert all("rerank" in h["scores"] for h in ok.json()["results"])

        openai_stub.fail(503, path=rerank_path)
        failed = client.post("/v1/search", json={**body, "rerank": hosted})
        assert failed.status_code == 502, failed.text
        error = failed.json()["error"]
        assert error["code"] == "rerank_failed" and "cohere/rerank-english-v3.0" in error["message"]
        assert error["details"]["upstream_status"] == 503
        openai_stub.reset()

        openai_stub.fail(404, path=rerank_path)
        unknown_model = client.post("/v1/search", json={**body, "rerank": hosted})
        assert unknown_model.status_code == 400, unknown_model.text
        openai_stub.reset()
        for bad in ({"model": "nosuchprovider/x"}, {**hosted, "depth": 0}, {"model": ""}):
            refused = client.post("/v1/search", json={**body, "rerank": bad})
            assert refused.status_code == 400, (bad, refused.text)
            assert refused.json()["error"]["code"] == "bad_request"
        assert client.post("/v1/search", json={**body, "rerank": hosted}).status_code == 200

        monkeypatch.setenv("COHERE_API_BASE", "http://127.0.0.1:9")  # nothing listens there
        unreachable = client.post("/v1/search", json={**body, "rerank": hosted})
        assert unreachable.status_code == 502, unreachable.text
        assert unreachable.json()["error"]["code"] == "rerank_failed"
    ctx.close()
