"""The batch-encode pipeline on its own: chunk, hash, compare, encode only what changed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from contextkit.embeddings import (
    Chunker,
    EncoderFailure,
    HashEncoder,
    PipelineInputError,
    chunk_id,
    content_hash,
    plan_encode,
)

DOCS = [
    {"doc_id": f"d{i}", "body": f"document {i} " + "lorem ipsum " * (i % 4), "price": float(i)}
    for i in range(12)
]


def materialize(rows, existing=None, stored=None, **options):
    """Run both passes; return (plan, {id: output row}) with vectors as numpy arrays."""
    options = {
        "encoder": HashEncoder(dimension=8, batch_size=4),
        "key_columns": ["doc_id"],
        "text_column": "body",
        "metadata_columns": ["price"],
        **options,
    }
    fetch = None
    if stored is not None:

        def fetch(ids):
            return {i: stored[i]["vector"] for i in ids if i in stored}

    with plan_encode(rows, existing=existing, fetch_vectors=fetch, **options) as plan:
        out = {}
        for batch in plan.batches():
            assert batch.schema == plan.schema
            for row in batch.to_pylist():
                row["vector"] = np.asarray(row["vector"], dtype=np.float32)
                out[row["id"]] = row
    return plan, out


def hashes(rows):
    return {i: (r["content_hash"], r["row_hash"]) for i, r in rows.items()}


def test_first_run_encodes_every_chunk_in_bounded_batches():
    encoder = HashEncoder(dimension=8, batch_size=4)
    plan, rows = materialize(DOCS, encoder=encoder)
    assert plan.stats.documents == 12 and plan.stats.new == 12 and plan.delete_ids == []
    assert (encoder.calls, encoder.texts_encoded) == (3, 12)
    assert plan.stats.encoder_calls == 3 and plan.stats.texts_encoded == 12
    row = rows["d3#0"]
    assert row["doc_id"] == "d3" and row["price"] == 3.0
    assert (row["chunk_index"], row["char_offset"], row["text"]) == (0, 0, DOCS[3]["body"])
    assert row["content_hash"] == content_hash(encoder.name, 8, DOCS[3]["body"])
    np.testing.assert_array_equal(row["vector"], encoder.encode([DOCS[3]["body"]])[0])
    assert plan.schema.names == [
        "id",
        "doc_id",
        "chunk_index",
        "char_offset",
        "text",
        "content_hash",
        "row_hash",
        "vector",
        "price",
    ]
    assert plan.schema.field("vector").type == pa.list_(pa.float32(), 8)


def test_second_run_encodes_only_new_and_changed_chunks():
    _, first = materialize(DOCS)
    docs = [dict(d) for d in DOCS[:10]]  # d10, d11 are gone
    docs[0]["body"] = "a brand new text"
    docs[1]["body"] += " edited"
    docs.append({"doc_id": "d99", "body": "a new document", "price": 1.0})
    encoder = HashEncoder(dimension=8, batch_size=4)
    plan, second = materialize(docs, existing=hashes(first), encoder=encoder)
    assert sorted(second) == ["d0#0", "d1#0", "d99#0"]
    assert encoder.texts_encoded == 3 and encoder.calls == 1
    assert plan.delete_ids == ["d10#0", "d11#0"]
    s = plan.stats
    assert (s.new, s.changed, s.refreshed, s.unchanged, s.deleted) == (1, 2, 0, 8, 2)


def test_a_metadata_change_rewrites_the_row_with_its_stored_vector():
    _, first = materialize(DOCS)
    docs = [dict(d) for d in DOCS]
    docs[5]["price"] = 500.0
    encoder = HashEncoder(dimension=8, batch_size=4)
    plan, second = materialize(docs, existing=hashes(first), stored=first, encoder=encoder)
    assert list(second) == ["d5#0"] and second["d5#0"]["price"] == 500.0
    assert encoder.calls == 0 and plan.stats.refreshed == 1
    np.testing.assert_array_equal(second["d5#0"]["vector"], first["d5#0"]["vector"])
    assert second["d5#0"]["content_hash"] == first["d5#0"]["content_hash"]
    assert second["d5#0"]["row_hash"] != first["d5#0"]["row_hash"]
    # without stored vectors at hand, the chunk is re-encoded instead
    encoder = HashEncoder(dimension=8, batch_size=4)
    materialize(docs, existing=hashes(first), encoder=encoder)
    assert encoder.texts_encoded == 1


def test_a_new_model_re_encodes_everything():
    _, first = materialize(DOCS)
    encoder = HashEncoder(dimension=8, batch_size=4, name="another-model")
    plan, _ = materialize(DOCS, existing=hashes(first), encoder=encoder)
    assert plan.stats.changed == 12 and encoder.texts_encoded == 12


def test_chunked_documents_that_shrink_lose_their_tail_chunks():
    chunker = Chunker(unit="tokens", size=2, overlap=0)
    docs = [{"doc_id": "a", "body": "one two three four five", "price": 1.0}]
    _, first = materialize(docs, chunker=chunker)
    assert sorted(first) == ["a#0", "a#1", "a#2"]
    assert [first[f"a#{i}"]["char_offset"] for i in range(3)] == [0, 8, 19]
    docs[0]["body"] = "one two three four"
    plan, second = materialize(docs, existing=hashes(first), chunker=chunker)
    assert plan.delete_ids == ["a#2"] and second == {}


def test_partial_inputs_only_delete_stale_chunks_of_the_documents_they_carry():
    chunker = Chunker(unit="tokens", size=2)
    docs = [
        {"doc_id": "a", "body": "one two three", "price": 1.0},
        {"doc_id": "b", "body": "four five", "price": 2.0},
    ]
    _, first = materialize(docs, chunker=chunker)
    changed = [{"doc_id": "a", "body": "one two", "price": 1.0}]
    plan, _ = materialize(changed, existing=hashes(first), chunker=chunker, complete=False)
    assert plan.delete_ids == ["a#1"]  # b#0 was not in this input: kept
    plan, _ = materialize(changed, existing=hashes(first), chunker=chunker)
    assert plan.delete_ids == ["a#1", "b#0"]


def test_blank_texts_have_no_chunks_and_lose_their_old_ones():
    _, first = materialize(DOCS[:3])
    docs = [dict(d) for d in DOCS[:3]]
    docs[1]["body"] = "   "
    docs[2]["body"] = None
    plan, _ = materialize(docs, existing=hashes(first))
    assert plan.delete_ids == ["d1#0", "d2#0"] and plan.stats.documents == 3


def test_arrow_batches_and_dicts_give_the_same_rows():
    table = pa.Table.from_pylist(DOCS)
    _, from_dicts = materialize(DOCS)
    _, from_batches = materialize(table.to_batches(max_chunksize=5))
    _, from_table = materialize([table])
    assert hashes(from_dicts) == hashes(from_batches) == hashes(from_table)


def test_composite_keys_make_unambiguous_ids():
    assert chunk_id(("a/b", 7), 2) == "a%2Fb/7#2"
    assert chunk_id(("a#1",), 0) == "a%231#0"
    rows = [{"tenant": "t/1", "n": 7, "body": "x"}, {"tenant": "t", "n": 17, "body": "y"}]
    _, out = materialize(rows, key_columns=["tenant", "n"], metadata_columns=[])
    assert sorted(out) == ["t%2F1/7#0", "t/17#0"]


def test_pending_chunks_spill_to_disk_past_the_threshold(tmp_path):
    _, in_memory = materialize(DOCS)
    plan, spilled = materialize(DOCS, spill_dir=tmp_path, spill_threshold_bytes=1)
    assert hashes(spilled) == hashes(in_memory)
    for i in in_memory:
        np.testing.assert_array_equal(spilled[i]["vector"], in_memory[i]["vector"])


def test_progress_is_reported_after_each_batch():
    seen = []
    materialize(DOCS, on_progress=seen.append)
    assert [(p.chunks_done, p.chunks_total) for p in seen] == [(4, 12), (8, 12), (12, 12)]
    assert seen[-1].documents_done == 12 and seen[-1].docs_per_s > 0


def test_a_rich_progress_bar_can_follow_the_run():
    import io

    from rich.console import Console

    from contextkit.embeddings import rich_progress

    out = io.StringIO()
    materialize(DOCS, on_progress=rich_progress("docs", Console(file=out, width=80)))
    assert "docs" in out.getvalue() and "docs/s" in out.getvalue()


def test_a_failing_encoder_stops_the_stream_after_the_batches_already_yielded():
    class FailsOnSecondCall(HashEncoder):
        def encode(self, texts):
            if self.calls == 1:
                raise EncoderFailure("the model fell over", model=self.name)
            return super().encode(texts)

    with plan_encode(
        DOCS,
        encoder=FailsOnSecondCall(dimension=8, batch_size=4),
        key_columns=["doc_id"],
        text_column="body",
    ) as plan:
        stream = plan.batches()
        assert next(stream).num_rows == 4
        with pytest.raises(EncoderFailure, match="fell over"):
            next(stream)
        with pytest.raises(RuntimeError, match="only once"):
            plan.batches()


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        ([{"doc_id": "a", "body": "x"}] * 2, {}, "duplicate key"),
        ([{"doc_id": None, "body": "x"}], {}, "null key"),
        ([{"doc_id": "a", "text": "x"}], {}, "no column"),
        ([{"doc_id": "a", "body": 3}], {}, "not strings"),
        ([{"id": "a", "body": "x"}], {"key_columns": ["id"]}, "reserved"),
        ([{"doc_id": "a", "body": "x", "a.b": 1}], {"metadata_columns": ["a.b"]}, "'.'"),
        ([{"doc_id": "a", "body": "x"}], {"key_columns": []}, "at least one key"),
    ],
)
def test_bad_input_is_refused_with_a_reason(rows, options, message):
    options = {"key_columns": ["doc_id"], "text_column": "body", **options}
    with pytest.raises(PipelineInputError, match=message):
        plan_encode(rows, encoder=HashEncoder(dimension=4), **options)


def test_switching_a_model_to_int8_encodes_its_chunks_again(tmp_path):
    """A quantization is part of the hashed model identity; torch and float32 ONNX, whose vectors
    are the same, are not told apart. Only planned: nothing is exported, loaded or encoded."""
    from contextkit.embeddings import OnnxEncoder, SentenceTransformerEncoder, vectors_id

    torch = SentenceTransformerEncoder(batch_size=4)
    fp32 = OnnxEncoder(batch_size=4, cache_dir=tmp_path)
    int8 = OnnxEncoder(quantize="int8", batch_size=4, cache_dir=tmp_path)
    assert vectors_id(torch) == vectors_id(fp32) == torch.name
    assert vectors_id(int8) == f"{torch.name}+int8"
    stored = {  # what a torch-encoded table holds (row hashes aside)
        chunk_id((d["doc_id"],), 0): (content_hash(torch.name, 384, d["body"]), "") for d in DOCS
    }

    def changed(encoder) -> int:
        options = {"key_columns": ["doc_id"], "text_column": "body"}
        with plan_encode(DOCS, encoder=encoder, existing=stored, **options) as plan:
            return plan.stats.changed

    assert changed(fp32) == 0
    assert changed(int8) == len(DOCS)
    assert not (tmp_path / "onnx").exists() and not any(tmp_path.iterdir())
