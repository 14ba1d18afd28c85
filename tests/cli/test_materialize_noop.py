"""A `materialize` with nothing to do (issue 18 item 6): it neither opens the vector store nor
loads a model, so it never imports LanceDB or torch; and it skips exactly when the documents,
the view, the model and the vector table are all as the last job left them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import contextkit

HEAVY = ("lancedb", "lance", "torch", "sentence_transformers", "transformers", "litellm")

DEFS = """\
from contextkit import EmbeddingView, Entity, FileSource, embedding_view

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet")

doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body",
                         model="{model}", metadata=["price"])

@embedding_view(sources=[docs], entities=[doc], text="body", model="{model}",
                chunking={{"by": "tokens", "size": 8, "overlap": 2}})
def doc_chunks(docs):
    return f"SELECT doc_id, body FROM {{docs}}"
"""

# Run the CLI in a fresh interpreter, then report which heavy modules it imported.
DRIVER = """\
import json, sys
from contextkit.cli import main
sys.argv = ["contextkit", "materialize"]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print("IMPORTED " + json.dumps([m for m in %r if m in sys.modules]))
sys.exit(code)
"""


def docs(changed: dict[int, str] | None = None, price: dict[int, float] | None = None):
    bodies = [f"Document {i} is about {w} and nothing else at all." for i, w in enumerate(
        ["hiking boots", "rain jackets", "tents", "stoves", "maps"])]  # fmt: skip
    for i, text in (changed or {}).items():
        bodies[i] = text
    return pa.table(
        {
            "doc_id": [f"d{i}" for i in range(len(bodies))],
            "body": bodies,
            "price": [(price or {}).get(i, 10.0 + i) for i in range(len(bodies))],
        }
    )


def write_repo(root: Path, model: str, models: str) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(f"project: noop\n{models}")
    (root / "defs.py").write_text(DEFS.format(model=model))
    pq.write_table(docs(), root / "data" / "docs.parquet")
    ctx = contextkit.connect(root)
    ctx.create_workspace("prod", live=True)
    ctx.select_workspace("prod")
    ctx.apply(ctx.plan(root))
    return root


def run_cli(root: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER % (HEAVY,)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stdout.splitlines()
    imported = [json.loads(line[9:]) for line in lines if line.startswith("IMPORTED ")]
    assert done.returncode == 0 and imported, done.stdout + done.stderr
    return done, imported[0]


@pytest.mark.slow
def test_a_noop_materialize_imports_neither_lancedb_nor_torch(tmp_path):
    # The packaged MiniLM, chunked by its own tokens: the quickstart's help_articles case.
    root = write_repo(tmp_path / "repo", "minilm", "")
    first = contextkit.connect(root, workspace="prod").materialize()
    assert sorted(j.details["texts_encoded"] > 0 for j in first) == [True, True]

    done, imported = run_cli(root)

    assert imported == []
    for view in ("doc_text", "doc_chunks"):
        assert f"ok {view}: 5 documents" in done.stdout and "0 encoded" in done.stdout
    jobs = {j.view: j for j in contextkit.connect(root, workspace="prod").jobs(limit=2)}
    assert {v: j.details["unchanged_since"] for v, j in jobs.items()} == {
        j.view: j.job_id for j in first
    }


HASH_MODEL = "models:\n  fake: {type: hash, dimension: 16}\n"


def test_the_noop_skip_happens_exactly_when_nothing_changed(tmp_path):
    root = write_repo(tmp_path / "repo", "fake", HASH_MODEL)
    ctx = contextkit.connect(root, workspace="prod")
    [first] = ctx.materialize(["doc_text"])
    version = ctx.vectors.version("prod__doc_text")

    [same] = ctx.materialize(["doc_text"])
    assert same.details["unchanged_since"] == first.job_id
    assert (same.rows_offline, same.rows_online, same.details["texts_encoded"]) == (5, 5, 0)
    assert ctx.vectors.version("prod__doc_text") == version  # nothing was written

    # A text changes: that one document is encoded again.
    pq.write_table(docs(changed={2: "Document 2 is now about kayaks."}), root / "data/docs.parquet")
    [changed] = ctx.materialize(["doc_text"])
    assert "unchanged_since" not in changed.details
    assert (changed.details["changed"], changed.details["texts_encoded"]) == (1, 1)

    # The table moves back behind the job's back (same documents, same view): not skipped,
    # the document is encoded again.
    ctx.vectors.restore("prod__doc_text", version)
    [repaired] = ctx.materialize(["doc_text"])
    assert "unchanged_since" not in repaired.details
    assert repaired.details["changed"] == 1
    hits = ctx.search("doc_text", query="Document 2 is now about kayaks.", top_k=1)
    assert hits[0]["text"] == "Document 2 is now about kayaks."

    # Only a price changes: no encoding, but the row is rewritten (not skipped).
    table = docs(changed={2: "Document 2 is now about kayaks."}, price={0: 99.0})
    pq.write_table(table, root / "data/docs.parquet")
    [priced] = ctx.materialize(["doc_text"])
    assert (priced.details["refreshed"], priced.details["texts_encoded"]) == (1, 0)
    assert "unchanged_since" not in priced.details

    # The model behind the view's key changes: the table is rebuilt.
    (root / "contextkit.yaml").write_text(
        "project: noop\n" + textwrap.dedent("models:\n  fake: {type: hash, dimension: 24}\n")
    )
    ctx = contextkit.connect(root, workspace="prod")
    [rebuilt] = ctx.materialize(["doc_text"])
    assert rebuilt.details["full"] and rebuilt.details["dimension"] == 24
    [again] = ctx.materialize(["doc_text"])
    assert again.details["unchanged_since"] == rebuilt.job_id
