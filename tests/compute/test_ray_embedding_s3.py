"""An embedding view encoded on Ray Data whose vector store is ``s3://`` (issue 16): the moto
``s3_server`` as the object store (the standard AWS variables point the driver at it, as
docs/deployment.md says), the two-node ``ray_cluster`` encoding. The oracle is the local engine
writing to a local folder: the same ids, texts, hashes and metadata, vectors within float
tolerance, the same table versions, on a first run and on an incremental one.
"""

from __future__ import annotations

import lancedb
import pyarrow as pa
import pytest

from contextkit.compute.layout import vector_table
from contextkit.stores.objectstore import S3Settings
from tests.compute.test_ray_embedding import (
    TOPICS,
    VIEW,
    assert_same_tables,
    docs_table,
    make_repo,
    ray_config,
    rewrite_docs,
    stored,
)

pytestmark = pytest.mark.slow


def stored_on_s3(uri: str) -> pa.Table:
    """The view's vector table read from S3 by LanceDB itself (every column but the write
    time), ordered by id."""
    db = lancedb.connect(uri, storage_options=S3Settings.from_env().lance_storage_options())
    table = db.open_table(vector_table("prod", VIEW)).to_arrow().drop_columns(["updated_at"])
    return table.sort_by("id")


def test_a_view_encoded_on_ray_writes_the_local_engines_vectors_to_s3(
    tmp_path, ray_cluster, s3_server, monkeypatch
):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    base = docs_table(60)
    local = make_repo(tmp_path / "local", base)  # vectors in a local folder
    uri = f"s3://{s3_server.create_bucket()}/ck/vectors"
    monkeypatch.setenv("CONTEXTKIT_VECTOR_STORE", uri)
    remote = make_repo(tmp_path / "ray", base, compute=ray_config(ray_cluster))
    assert remote.config.vector_location == uri

    [want] = local.materialize()
    [got] = remote.materialize()
    assert got.status == want.status == "succeeded"
    assert got.details["engine"] == "ray" and want.details["engine"] == "local"
    assert got.details["chunks"] == want.details["chunks"] > 60
    assert got.details["table_version"] == want.details["table_version"]
    assert_same_tables(stored(local), stored_on_s3(uri))

    # Incremental: the stored hashes are read back from S3; only changed texts are encoded.
    changed = {i: f"Rewritten document {i} on {TOPICS[(i + 2) % 5]}." for i in (4, 21, 33)}
    after = docs_table(60, changed, drop=(8,), prices={12: 2.5})
    for ctx in (local, remote):
        rewrite_docs(ctx, after)
    [want2] = local.materialize()
    [got2] = remote.materialize()
    for key in ("new", "changed", "refreshed", "deleted", "texts_encoded", "table_version"):
        assert got2.details[key] == want2.details[key], key
    assert 0 < got2.details["texts_encoded"] < 15
    assert_same_tables(stored(local), stored_on_s3(uri))
    # The served search reads the S3 table too.
    hits = remote.search(VIEW, "winter jackets", top_k=3).hits
    assert hits and hits == local.search(VIEW, "winter jackets", top_k=3).hits
    local.close()
    remote.close()
