"""Embedding views encoded on Ray Data (contextkit.compute.ray.embedding) against the local engine.

Every test runs on the real two-node cluster of the ``ray_cluster`` fixture (a head and a second
node process): the same documents are materialized by the local engine in one repo and by an
actor pool on Ray in another, and the vector tables must hold the same ids, texts, hashes and
metadata, with vectors equal within float tolerance. Marked slow: Ray takes tens of seconds to
start actors on this shared machine.
"""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openai_stub import make_openai_stub, openai_stub  # noqa: F401  (fixtures)

import contextkit
from contextkit.compute.embedding import materialize_embedding_view
from contextkit.compute.layout import vector_table
from contextkit.errors import ContextKitError, JobCancelledError

pytestmark = pytest.mark.slow

VIEW = "doc_text"
TOPICS = ["running shoes", "winter jackets", "coffee grinders", "garden hoses", "desk lamps"]
DEFS = """\
from contextkit import EmbeddingView, Entity, FileSource

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")

doc_text = EmbeddingView(
    name="doc_text",
    source=docs,
    entities=[doc],
    text="body",
    model="{model}",
    metadata=["category", "price"],
    chunking={chunking},
)
"""
# Small batches so that a small view still spreads over both actors (and both nodes).
RAY = "{{engine: ray, address: '{address}', embedding: {{batch_size: {batch}, concurrency: 2}}}}"


def docs_table(n: int, changed: dict[int, str] | None = None, drop=(), prices=None) -> pa.Table:
    rows = [
        {
            "doc_id": f"d{i:03d}",
            "body": (changed or {}).get(
                i, f"Document {i} is about {TOPICS[i % 5]}. " * (1 + i % 4) + f"Size {i}."
            ),
            "category": TOPICS[i % 5].split()[-1],
            "price": (prices or {}).get(i, 10.0 + i),
            "updated_at": 1_700_000_000_000_000 + i,
        }
        for i in range(n)
        if i not in drop
    ]
    schema = pa.schema(
        [
            ("doc_id", pa.string()),
            ("body", pa.string()),
            ("category", pa.string()),
            ("price", pa.float64()),
            ("updated_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    return pa.Table.from_pylist(rows, schema)


def make_repo(
    root: Path,
    table: pa.Table,
    *,
    compute: str = "local",
    model: str = "fast",
    chunking: str = '{"by": "chars", "size": 60, "overlap": 10}',
    models: str = "fast: {type: hash, dimension: 24}",
) -> contextkit.Context:
    (root / "data").mkdir(parents=True, exist_ok=True)
    config = f"project: raytest\nmodels:\n  {models}\ncompute: {compute}\n"
    (root / "contextkit.yaml").write_text(config)
    (root / "defs.py").write_text(textwrap.dedent(DEFS.format(model=model, chunking=chunking)))
    pq.write_table(table, root / "data" / "docs.parquet")
    ctx = contextkit.connect(root, workspace="prod")
    if "prod" not in {w.name for w in ctx.list_workspaces()}:
        ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    return ctx


def rewrite_docs(ctx: contextkit.Context, table: pa.Table) -> None:
    pq.write_table(table, Path(ctx.config.root) / "data" / "docs.parquet")


def stored(ctx: contextkit.Context) -> pa.Table:
    """The view's vector table (every column but the write time), ordered by id."""
    import lancedb

    db = lancedb.connect(str(ctx.vectors.uri))
    table = db.open_table(vector_table("prod", VIEW)).to_arrow().drop_columns(["updated_at"])
    return table.sort_by("id")


def assert_same_tables(local: pa.Table, ray: pa.Table, atol: float = 1e-6) -> None:
    assert ray.column("id").to_pylist() == local.column("id").to_pylist()
    for name in local.column_names:
        if name != "vector":
            assert ray.column(name).to_pylist() == local.column(name).to_pylist(), name
    a = np.asarray(local.column("vector").to_pylist(), dtype=np.float32)
    b = np.asarray(ray.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(b, a, atol=atol, rtol=0)


def ray_config(cluster, batch: int = 8) -> str:
    return RAY.format(address=cluster.address, batch=batch)


def test_hash_view_equals_local_and_is_incremental(tmp_path, ray_cluster):
    base = docs_table(120)
    local = make_repo(tmp_path / "local", base)
    remote = make_repo(tmp_path / "ray", base, compute=ray_config(ray_cluster))
    stages: list[str] = []
    progress = []

    [want] = local.materialize()
    [got] = remote.materialize(
        on_stage=lambda _v, s: stages.append(s), on_progress=lambda _v, p: progress.append(p)
    )
    assert got.status == want.status == "succeeded"
    assert got.details["engine"] == "ray" and want.details["engine"] == "local"
    assert got.details["ray"]["concurrency"] == 2 and got.details["ray"]["num_gpus"] == 0
    assert any(s.startswith("encoding on ray: 2 actor(s)") for s in stages)
    for key in ("documents", "chunks", "new", "texts_encoded", "table_version"):
        assert got.details[key] == want.details[key], key
    assert got.details["chunks"] > 120  # chunked: several chunks per document
    assert_same_tables(stored(local), stored(remote))
    # progress per finished batch, ending at every chunk and document
    assert len(progress) > 2
    assert progress[-1].chunks_done == progress[-1].chunks_total == got.details["chunks"]
    assert progress[-1].documents_done == 120 and progress[-1].eta_s == 0

    # incremental: 4 texts change, 2 documents go, 3 come, one price changes (a refresh: the
    # stored vector is reused, nothing is encoded for it)
    changed = {i: f"Rewritten document {i} on {TOPICS[(i + 1) % 5]}." for i in (3, 17, 40, 99)}
    after = pa.concat_tables(
        [docs_table(120, changed, drop=(5, 6), prices={50: 1.5}), docs_table(123).slice(120)]
    )
    for ctx in (local, remote):
        rewrite_docs(ctx, after)
    [want2] = local.materialize()
    [got2] = remote.materialize()
    for key in ("new", "changed", "refreshed", "unchanged", "deleted", "texts_encoded"):
        assert got2.details[key] == want2.details[key], key
    assert 0 < got2.details["texts_encoded"] < 20  # only what changed was encoded, on Ray too
    assert got2.details["refreshed"] >= 1
    # committed as the local engine commits (the same table versions, one write per run)
    assert got2.details["table_version"] == want2.details["table_version"]
    assert_same_tables(stored(local), stored(remote))


def test_minilm_vectors_equal_local(tmp_path, ray_cluster):
    """The packaged all-MiniLM-L6-v2, loaded once per actor from the model spec."""
    base = docs_table(6)
    kwargs = {"model": "minilm", "chunking": "None", "models": "fast: {type: hash}"}
    local = make_repo(tmp_path / "local", base, **kwargs)
    remote = make_repo(tmp_path / "ray", base, compute=ray_config(ray_cluster, batch=2), **kwargs)
    [want] = local.materialize()
    [got] = remote.materialize()
    assert got.details["engine"] == "ray" and got.details["texts_encoded"] == 6
    assert got.details["model"] == want.details["model"]
    assert_same_tables(stored(local), stored(remote), atol=1e-5)
    # and it means something: the search over the Ray-built table finds the coffee document
    [hit, *_] = remote.search(VIEW, "espresso grinder", top_k=1)
    assert "coffee grinders" in hit["text"]


def test_killed_worker_still_yields_exact_results(tmp_path, ray_cluster):
    """A worker of the second node is SIGKILLed after the first finished batch: Ray restarts
    the actor and runs its batches again, and the table is still exactly the local one."""
    base = docs_table(160)
    local = make_repo(tmp_path / "local", base)
    remote = make_repo(tmp_path / "ray", base, compute=ray_config(ray_cluster, batch=4))
    killed: list[object] = []

    def kill_once(_view, _progress) -> None:
        if not killed:
            killed.append(ray_cluster.kill_worker("MapWorker"))

    [want] = local.materialize()
    [got] = remote.materialize(on_progress=kill_once)
    assert killed and killed[0] and got.status == "succeeded"
    assert got.details["texts_encoded"] == want.details["texts_encoded"]
    assert_same_tables(stored(local), stored(remote))


def _materialize(ctx: contextkit.Context, **kwargs):
    specs = ctx.specs()
    runtime = ctx.runtime
    return materialize_embedding_view(
        registry=runtime.registry,
        vectors=runtime.vectors,
        root=Path(runtime.config.root).resolve(),
        workspace="prod",
        view=specs.embedding_views[VIEW],
        sources=specs.sources,
        views=specs.views,
        models=runtime.config.models,
        compute=runtime.config.compute,
        **kwargs,
    )


def test_cancel_publishes_nothing_and_stops_the_pool(tmp_path, ray_cluster):
    remote = make_repo(tmp_path / "ray", docs_table(120), compute=ray_config(ray_cluster, batch=4))
    [first] = remote.materialize()
    assert first.status == "succeeded"
    before = stored(remote)
    version = remote.vectors.version(vector_table("prod", VIEW))
    rewrite_docs(remote, docs_table(120, {i: f"Changed text {i}." for i in range(0, 120, 2)}))
    stop = threading.Event()

    with pytest.raises(JobCancelledError):
        _materialize(remote, on_progress=lambda _p: stop.set(), should_stop=stop.is_set)
    [job, *_] = remote.runtime.registry.list_jobs("prod", VIEW, 1)
    assert job.status == "cancelled"
    assert stored(remote).equals(before)
    assert remote.vectors.version(vector_table("prod", VIEW)) == version

    # the pool was stopped: a new run gets the cluster's CPUs and finishes the change
    [again] = remote.materialize()
    assert again.status == "succeeded" and again.details["texts_encoded"] == 60
    assert again.details["table_version"] > version


def test_failing_encode_names_view_and_first_bad_row(
    tmp_path,
    ray_cluster,
    openai_stub,  # noqa: F811
    monkeypatch,
):
    """A hosted model that starts failing half-way: the job fails naming the view and the
    chunk, and nothing is published. Its key variable travels to the actors."""
    monkeypatch.setenv("STUB_OPENAI_KEY", "sk-test")
    models = (
        f"stub: {{type: litellm, model: openai/stub-embedding, api_base: '{openai_stub.url}', "
        "dimension: 8, api_key_env: STUB_OPENAI_KEY, batch_size: 4, max_retries: 0}"
    )
    remote = make_repo(
        tmp_path / "ray",
        docs_table(24),
        compute=ray_config(ray_cluster, batch=4),
        model="stub",
        chunking="None",
        models=models,
    )
    openai_stub.fail(400, after=3, path="/v1/embeddings")
    with pytest.raises(ContextKitError) as failure:
        remote.materialize()
    message = failure.value.message
    assert f"embedding view {VIEW!r}" in message and "chunk 'd" in message
    [job, *_] = remote.runtime.registry.list_jobs("prod", VIEW, 1)
    assert job.status == "failed"
    assert not remote.vectors.has_table(vector_table("prod", VIEW))
