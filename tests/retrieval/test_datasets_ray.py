"""Rendered datasets on Ray Data (issue 16): with ``compute: ray`` the rows are joined by Ray
tasks and rendered, searches included, in ``map_batches`` actors on the two-node cluster
(``ray_cluster``); the oracle is the local engine: the same JSONL bytes, the same table, the
same report.

The repo: a feature view of user tiers and a vector table (the hash model: no download) written
twice, so events before, between and after the two versions are searched in different versions.
That the rendering really runs in the actors is checked by making the driver's own rendering
fail: the actors import contextkit afresh and do not see the patch.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import contextkit
from contextkit.compute.ray import offline as ray_offline
from contextkit.config import ComputeConfig
from contextkit.errors import BadRequestError
from contextkit.retrieval.datasets import RenderedDataset, generate_dataset

pytestmark = pytest.mark.slow

DEFS = """\
from contextkit import (
    Attribute, EmbeddingView, Entity, FileSource, PromptView, Search, batch_feature_view,
)

user = Entity(name="user", join_keys=["user_id"])
doc = Entity(name="doc", join_keys=["doc_id"])
profiles = FileSource(name="profiles", path="data/profiles.parquet", timestamp_field="ts")
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")

@batch_feature_view(sources=[profiles], entities=[user], mode="sql", features=[Attribute("tier")])
def profile(profiles):
    return f"SELECT user_id, tier, ts FROM {profiles}"

doc_text = EmbeddingView(name="doc_text", source=docs, entities=[doc], text="body", model="fast")

answer = PromptView(
    name="answer",
    features=[profile],
    template="tier={{ features.profile.tier }} "
             "{% for d in documents.docs %}{{ d.id }}:{{ d.text }};{% endfor %} Q: {{ query }}",
    searches=[Search(doc_text, name="docs", top_k=3)],
)
"""
CONFIG = """\
project: raydatasets
registry: .contextkit/registry.db
online_store: {type: sqlite, path: .contextkit/online.db}
offline_store: {type: parquet, path: .contextkit/offline}
models:
  fast: {type: hash, dimension: 16}
"""
START = datetime(2024, 1, 1, tzinfo=UTC)


def write_docs(root, bodies: list[str]) -> None:
    table = pa.table(
        {
            "doc_id": list(range(len(bodies))),
            "body": bodies,
            "updated_at": pa.array([START] * len(bodies), pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, root / "data" / "docs.parquet")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Applied; profiles materialized; the vector table written at ``first`` and again (one
    changed and two new documents) before ``second``."""
    root = tmp_path_factory.mktemp("ray_datasets") / "repo"
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(CONFIG)
    (root / "defs_ray_datasets.py").write_text(DEFS)
    rng = np.random.default_rng(3)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(np.arange(20), pa.int64()),
                "tier": [["free", "plus", "pro"][i % 3] for i in range(20)],
                "ts": pa.array([START] * 20, pa.timestamp("us", tz="UTC")),
            }
        ),
        root / "data" / "profiles.parquet",
    )
    write_docs(root, [f"refunds take {d} days" for d in rng.integers(1, 9, 6)])
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    before = datetime.now(UTC)
    time.sleep(0.01)
    ctx.materialize()
    time.sleep(0.01)
    between = datetime.now(UTC)
    write_docs(root, ["refunds take 10 days", *[f"shipping note {i}" for i in range(7)]])
    ctx.materialize()
    time.sleep(0.01)
    after = datetime.now(UTC)
    ctx.close()
    return root, (before, between, after)


def events(moments, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    spread = [m + timedelta(microseconds=int(rng.integers(0, 1000))) for m in moments]
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 25, n),  # 20..24 are unknown users
            "ts": pd.Series([spread[i % 3] for i in range(n)], dtype="M8[us, UTC]"),
            "query": [f"refund question {i % 7}" for i in range(n)],  # repeated queries
            "answer": [None if i % 11 == 0 else f"answer {i}" for i in range(n)],
        }
    )


@pytest.fixture(scope="module")
def compute(ray_cluster) -> ComputeConfig:
    return ComputeConfig(engine="ray", address=ray_cluster.address, partitions=3)


def test_rendered_on_ray_data_equals_the_local_engine(repo, compute, tmp_path, monkeypatch):
    root, moments = repo
    ctx = contextkit.connect(root, workspace="prod")
    frame = events(moments, 90, seed=5)
    monkeypatch.setattr(ray_offline, "CHUNK_ROWS", 40)  # several ranges, several batches
    local = generate_dataset(
        ctx.runtime, frame, "answer", documents=True, label_column="answer", batch_size=16
    )
    want_lines = local.to_jsonl(tmp_path / "local.jsonl")
    local.to_parquet(tmp_path / "local.parquet")
    want = pq.read_table(tmp_path / "local.parquet")
    # Not vacuous: rows were searched in both versions, and some labels are missing.
    assert want_lines.documents["docs"]["as_of"] == 90 - want_lines.documents["docs"]["oldest_kept"]
    assert want_lines.documents["docs"]["oldest_kept"] == 30 and want_lines.labels_missing == 9

    def fail(*args, **kwargs):
        raise AssertionError("rendered in the driver")

    monkeypatch.setattr(RenderedDataset, "_render", fail)  # the actors import their own copy
    on_ray = generate_dataset(
        ctx.runtime, frame, "answer", documents=True, label_column="answer", batch_size=16,
        compute=compute,
    )  # fmt: skip
    got_lines = on_ray.to_jsonl(tmp_path / "ray.jsonl")
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    for field in ("rows", "truncated", "dropped_documents", "labels_missing", "documents"):
        assert getattr(got_lines, field) == getattr(want_lines, field), field
    on_ray.to_parquet(tmp_path / "ray.parquet")
    got = pq.read_table(tmp_path / "ray.parquet")
    assert got.schema == want.schema
    assert got.equals(want)
    assert on_ray.report.documents == local.report.documents
    newer = ["10 days" in p or "shipping note" in p for p in got.column("prompt").to_pylist()]
    assert any(newer) and not all(newer)  # both versions of the table were searched
    ctx.close()


def test_a_bad_row_fails_the_ray_run_naming_it(repo, compute):
    root, moments = repo
    ctx = contextkit.connect(root, workspace="prod")
    frame = events(moments, 30, seed=6)
    frame.loc[17, "query"] = "  "
    for engine in (None, compute):
        dataset = generate_dataset(ctx.runtime, frame, "answer", documents=True, compute=engine)
        with pytest.raises(BadRequestError, match=r"^events row 17: "):
            dataset.to_arrow()
    ctx.close()


def test_stores_on_s3_render_on_ray_as_locally(tmp_path, compute, s3_server, monkeypatch):
    """Offline and vector stores on S3 (moto): the join tasks write their results to the
    offline store's scratch folder on S3 and the actors read them there and search the S3
    vector table, with the driver's AWS variables (the cluster's processes do not have them)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket()
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(
        CONFIG.replace("{type: parquet, path: .contextkit/offline}", f"s3://{bucket}/offline")
        + f"vector_store: s3://{bucket}/vectors\n"
    )
    (root / "defs_ray_datasets.py").write_text(DEFS)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(np.arange(10), pa.int64()),
                "tier": ["free", "pro"] * 5,
                "ts": pa.array([START] * 10, pa.timestamp("us", tz="UTC")),
            }
        ),
        root / "data" / "profiles.parquet",
    )
    write_docs(root, [f"note {i} on refunds and returns" for i in range(8)])
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize()
    frame = events([datetime.now(UTC)] * 3, 40, seed=7)
    tables = []
    for engine in (None, compute):
        dataset = generate_dataset(ctx.runtime, frame, "answer", documents=True, compute=engine)
        tables.append(dataset.to_arrow())
        assert dataset.report.rows == 40
    assert tables[1].equals(tables[0])
    assert tables[0].column("document_ids").to_pylist()[0]["docs"]  # documents were found
    scratch = [k for k in s3_keys(s3_server, bucket) if "/.scratch/" in k]
    assert [k for k in scratch if not k.endswith("/")] == []  # removed once read (no files)
    ctx.close()


def s3_keys(server, bucket: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=server.endpoint, region_name=server.region,
                          aws_access_key_id=server.access_key,
                          aws_secret_access_key=server.secret_key)  # fmt: skip
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
