"""Rendered datasets: a prompt view rendered for every event, as the online path renders it.

The story: a data scientist has support chats (a user, a time, the question, the channel and the
agent's answer) and wants a fine-tuning set: the quickstart's support prompt rendered for each chat
with what was known then, the answer as the assistant turn. A row at the materialization time is
exactly the prompt ``ctx.get_context`` renders online; documents come from the vector table's
version of the event's time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import contextkit
from contextkit.errors import BadRequestError, NotFoundError
from contextkit.retrieval.datasets import generate_dataset
from tests.conftest import DATA_END

CLI = str(Path(sys.executable).parent / "contextkit")
QUESTION = "My hiking boots leak after a week. Can I return them?"


@pytest.fixture(scope="module")
def shop(quickstart_data, tmp_path_factory):
    """The quickstart copied, applied and materialized (features as of DATA_END)."""
    root = tmp_path_factory.mktemp("datasets") / "shop"
    shutil.copytree(quickstart_data, root, ignore=shutil.ignore_patterns(".contextkit"))
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=DATA_END)
    yield root, ctx
    ctx.close()


def chats(users: list[int], times: list[datetime], **columns) -> pd.DataFrame:
    frame = pd.DataFrame({"user_id": users, "ts": pd.Series(times, dtype="M8[us, UTC]")})
    for name, values in columns.items():
        frame[name] = values
    return frame


def test_a_row_at_the_materialization_time_is_the_prompt_rendered_online(shop, tmp_path):
    _root, ctx = shop
    questions = [QUESTION, "Where is my parcel?"]
    online = [
        ctx.get_context(
            "support_assistant", {"user_id": u}, query=q, request_context={"channel": c}
        ).prompt
        for u, q, c in [(7, questions[0], "email"), (12, questions[1], "chat")]
    ]
    events = chats(
        [7, 12, 7],
        [DATA_END, DATA_END, DATA_END - timedelta(days=20)],
        query=[*questions, QUESTION],
        channel=["email", "chat", "email"],
        answer=["Yes, within 30 days.", None, "Yes."],
    )
    dataset = ctx.generate_dataset(
        events, "support_assistant", documents=True, label_column="answer"
    )
    report = dataset.to_jsonl(tmp_path / "train.jsonl")
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(lines) == report.rows == 3
    rows = [json.loads(line) for line in lines]
    assert all(set(r) == {"messages"} for r in rows)
    assert rows[0]["messages"] == [
        *online[0]["messages"],
        {"role": "assistant", "content": "Yes, within 30 days."},
    ]
    assert rows[1]["messages"] == online[1]["messages"]  # no label: no assistant turn
    assert [m["role"] for m in rows[2]["messages"]] == ["system", "user", "assistant"]
    # Twenty days earlier the same user had another history, so another prompt.
    assert rows[2]["messages"][0]["content"] != rows[0]["messages"][0]["content"]
    assert report.labels_missing == 1
    # The vector tables were written after DATA_END: every event predates them, so the oldest
    # version with rows (here the current one) was searched, and the report says so.
    assert report.documents == {
        "products": {"as_of": 0, "oldest_kept": 3},
        "articles": {"as_of": 0, "oldest_kept": 3},
    }

    table = dataset.to_pandas()
    assert table.columns.tolist() == [
        "prompt",
        "features",
        "label",
        "tokens",
        "truncated",
        "document_ids",
    ]
    assert [dict(m) for m in table["prompt"][0]] == online[0]["messages"]
    assert table["tokens"][0] == online[0]["tokens"]
    assert table["features"][0]["user_order_stats__order_count_30d"] is not None
    # The documents the online prompt rendered are the ones a row lists, search by search.
    assert list(table["document_ids"][1]["products"]) == [
        d["id"]
        for d in ctx.get_context(
            "support_assistant", {"user_id": 12}, query=questions[1]
        ).documents["products"]
    ]


def test_every_event_gives_one_row_in_events_order(shop):
    _root, ctx = shop
    users = [31, 5, 5, 999_999, 17, 5]  # duplicates and a user with no data
    times = [DATA_END - timedelta(days=d) for d in (1, 2, 2, 0, 40, 9)]
    events = chats(users, times, query=[QUESTION] * 6, channel=["chat"] * 6)
    table = ctx.generate_dataset(events, "support_assistant").to_arrow()
    assert table.num_rows == len(events)
    features = ctx.get_features_for_events(events, "support_assistant").to_arrow()
    expected = [{k: v for k, v in row.items() if "__" in k} for row in features.to_pylist()]
    assert table.column("features").to_pylist() == expected
    prompts = table.column("prompt").to_pylist()
    for prompt, row in zip(prompts, expected, strict=True):
        system = prompt[0]["content"]
        tier = row["user_profile__tier"] or "unknown"
        assert f"account tier: {tier}," in system
        count = row["user_order_stats__order_count_30d"] or 0
        assert f"completed orders in the last 30 days: {count}," in system
        assert "(no matching products)" in system  # documents=False: empty searches
    assert prompts[1] == prompts[2]  # the same event twice
    assert prompts[1] != prompts[5]  # the same user a week later


def test_events_without_the_columns_the_prompt_reads_are_refused_with_hints(shop):
    _root, ctx = shop
    events = chats([7], [DATA_END])
    with pytest.raises(BadRequestError, match="'query'") as info:
        ctx.generate_dataset(events, "support_assistant").to_arrow()
    assert info.value.hint and "query" in info.value.hint
    events = events.assign(query=[QUESTION])
    with pytest.raises(BadRequestError, match="label column 'answer'") as info:
        ctx.generate_dataset(events, "support_assistant", label_column="answer").to_arrow()
    assert "user_id, ts, query" in info.value.hint and "__" not in info.value.hint
    with pytest.raises(BadRequestError, match="events row 0") as info:
        ctx.generate_dataset(events.assign(channel=[3]), "support_assistant").to_arrow()
    assert "channel" in info.value.message
    with pytest.raises(BadRequestError, match="unknown search"):
        ctx.generate_dataset(events, "support_assistant", documents=["nope"])
    with pytest.raises(NotFoundError, match="no service or prompt view"):
        ctx.generate_dataset(events, "nope")
    # The channel has a default, so it may be left out; a null query is refused by row.
    assert ctx.generate_dataset(events, "support_assistant").to_arrow().num_rows == 1
    with pytest.raises(BadRequestError, match="events row 1"):
        both = pd.concat([events, events.assign(query=[None])], ignore_index=True)
        ctx.generate_dataset(both, "support_prompt").to_arrow()


# -- documents as of the event's time ----------------------------------------------------------

DOCS = """\
from contextkit import EmbeddingView, Entity, FileSource, PromptView, Search

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")
doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body", model="fast")

answer = PromptView(
    name="answer",
    template="{% for d in documents.docs | sort(attribute='id') %}{{ d.text }};{% endfor %}"
             " Q: {{ query }}",
    searches=[Search(doc_text, name="docs", top_k=10)],
)
"""


def write_docs(root: Path, bodies: dict[int, str]) -> None:
    table = pa.table(
        {
            "doc_id": list(bodies),
            "body": list(bodies.values()),
            "updated_at": pa.array([DATA_END] * len(bodies), pa.timestamp("us", tz="UTC")),
        }
    )
    (root / "data").mkdir(exist_ok=True)
    pq.write_table(table, root / "data" / "docs.parquet")


def test_documents_come_from_the_vector_table_version_of_the_event_time(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "contextkit.yaml").write_text(
        "project: docs\nmodels:\n  fast: {type: hash, dimension: 16}\n"
    )
    (root / "defs.py").write_text(DOCS)
    write_docs(root, {1: "refunds take 5 days", 2: "shipping is free"})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    before = datetime.now(UTC)
    time.sleep(0.01)
    ctx.materialize()
    time.sleep(0.01)
    between = datetime.now(UTC)
    time.sleep(0.01)
    write_docs(root, {1: "refunds take 10 days", 2: "shipping is free", 3: "returns are free"})
    ctx.materialize()
    time.sleep(0.01)
    after = datetime.now(UTC)

    events = pd.DataFrame(
        {
            "ts": pd.Series([between, after, before, after], dtype="M8[us, UTC]"),
            "query": ["refund?"] * 4,
        }
    )
    dataset = ctx.generate_dataset(events, "answer", documents=True)
    prompts = dataset.to_arrow().column("prompt").to_pylist()
    old = "refunds take 5 days;shipping is free; Q: refund?"
    new = "refunds take 10 days;shipping is free;returns are free; Q: refund?"
    assert prompts == [old, new, old, new]
    # The event before the first materialization is searched in the oldest version with rows.
    assert dataset.report.documents == {"docs": {"as_of": 3, "oldest_kept": 1}}
    # Online, the current version serves.
    online = ctx.search("doc_text", "refund?", top_k=10)
    assert sorted(h["text"] for h in online) == sorted(new.split(" Q:")[0].split(";")[:-1])


def test_queries_are_encoded_once_per_batch_and_search_by_vector_as_online(tmp_path, monkeypatch):
    """Issue 19: a batch's query texts are encoded in one call, each distinct text once; the
    rows' documents are what the online search finds for the same query (encoded alone)."""
    import contextkit.compute.embedding as embedding

    root = tmp_path / "docs"
    root.mkdir()
    (root / "contextkit.yaml").write_text(
        "project: docs\nmodels:\n  fast: {type: hash, dimension: 16}\n"
    )
    (root / "defs.py").write_text(DOCS)
    write_docs(root, {i: f"note {i} on {w}" for i, w in enumerate("abcdefgh")})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize()
    real = embedding.encoder_for
    calls: list[list[str]] = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def encode(self, texts):
            calls.append(list(texts))
            return self.inner.encode(texts)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(embedding, "encoder_for", lambda *a, **k: Counting(real(*a, **k)))
    queries = ["note on a", "b?", "note on a", "note on a", "h h", "b?"]
    events = pd.DataFrame(
        {"ts": pd.Series([datetime.now(UTC)] * 6, dtype="M8[us, UTC]"), "query": queries}
    )
    dataset = generate_dataset(ctx.runtime, events, "answer", documents=True, batch_size=4)
    table = dataset.to_arrow()
    assert calls == [["note on a", "b?"], ["h h", "b?"]]  # one call per batch, deduplicated
    ids = [row["docs"] for row in table.column("document_ids").to_pylist()]
    monkeypatch.setattr(embedding, "encoder_for", real)
    for query, found in zip(queries, ids, strict=True):
        online = ctx.search("doc_text", query, top_k=10)
        assert found == [h["id"] for h in online], query
    assert len({tuple(i) for i in ids}) > 1
    ctx.close()


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_writes_the_chat_and_table_formats(shop, tmp_path):
    root, ctx = shop
    events = chats(
        [7, 8, 9],
        [DATA_END] * 3,
        query=[QUESTION] * 3,
        answer=["Yes.", "No.", "Maybe."],
    )
    events.to_parquet(tmp_path / "events.parquet")
    common = [CLI, "dataset", "--events", str(tmp_path / "events.parquet"), "-r", str(root)]
    common += ["-w", "prod", "--service", "support_assistant", "--label-column", "answer"]
    env = {**os.environ, "COLUMNS": "200"}
    chat = subprocess.run(
        [*common, "--out", str(tmp_path / "out" / "train.jsonl")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert chat.returncode == 0, chat.stderr
    assert "wrote 3 rows" in chat.stdout
    rows = [
        json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().split("\n")[:-1]
    ]
    assert [r["messages"][-1] for r in rows] == [
        {"role": "assistant", "content": a} for a in ["Yes.", "No.", "Maybe."]
    ]
    expected = ctx.generate_dataset(events, "support_assistant", label_column="answer")
    assert [r["messages"] for r in rows] == [
        [dict(m) for m in p] + [{"role": "assistant", "content": a}]
        for p, a in zip(
            expected.to_arrow().column("prompt").to_pylist(), ["Yes.", "No.", "Maybe."], strict=True
        )
    ]

    table = subprocess.run(
        [*common, "--out", str(tmp_path / "train.parquet"), "--format", "table"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert table.returncode == 0, table.stderr
    written = pq.read_table(tmp_path / "train.parquet")
    assert written.column_names == ["prompt", "features", "label", "tokens", "truncated"]
    assert written.column("label").to_pylist() == ["Yes.", "No.", "Maybe."]

    bad = subprocess.run(
        [*common, "--out", str(tmp_path / "x.jsonl"), "--label-column", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 1
    assert "no label column 'nope'" in bad.stderr and "hint:" in bad.stderr
    assert "Traceback" not in bad.stderr
