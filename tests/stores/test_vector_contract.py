"""The vector store's contract, the same on a local folder and on S3 (LanceDB on a real moto
server).

The story: a view's chunks are written in one commit, searched (vector, text, hybrid, filtered;
from the in-memory exact copy and through LanceDB), rewritten, restored and dropped; another
process sees each commit; a write that fails half-way commits nothing. Local and S3 give the
same answers. On S3 a missing bucket, refused credentials, an unreachable endpoint and an
endpoint that goes away are each one clear error within the timeouts, never a damaged-table
error, and a refused write leaves the table as it was.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest

from contextkit.stores.errors import BucketMissing, CredentialsRefused, EndpointUnreachable
from contextkit.stores.objectstore import S3Settings
from contextkit.stores.vector import LanceVectorStore, VectorStoreError, VectorTableMissingError
from tests.stores.s3_failures import (
    closed_endpoint,
    private_s3_server,
    s3_auth_server,
    silent_endpoint,
)

__all__ = ["private_s3_server", "s3_auth_server", "silent_endpoint"]  # fixtures used below

DIM = 8
TABLE = "prod__docs"
WORDS = ["boots", "hat", "scarf", "gloves", "jacket", "socks"]


def settings_for(server, **overrides) -> S3Settings:
    return S3Settings(
        endpoint=server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        region=server.region,
        **overrides,
    )


def chunks(ids: range, *, seed: int = 7, suffix: str = "") -> pa.RecordBatch:
    """Rows in the pipeline's layout: one chunk per document ``doc-<i>``."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((max(ids) + 1, DIM)).astype(np.float32)[list(ids)]
    texts = [f"{WORDS[i % len(WORDS)]} number {i}{suffix}" for i in ids]
    return pa.RecordBatch.from_pydict(
        {
            "id": [f"doc-{i}#0" for i in ids],
            "doc_id": [f"doc-{i}" for i in ids],
            "chunk_index": pa.array([0] * len(ids), pa.int32()),
            "char_offset": pa.array([0] * len(ids), pa.int64()),
            "text": texts,
            "content_hash": [f"c{i}{suffix}" for i in ids],
            "row_hash": [f"r{i}{suffix}" for i in ids],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
            "category": [WORDS[i % 3] for i in ids],
            "price": pa.array([float(i) for i in ids]),
        }
    )


QUERY = np.random.default_rng(99).standard_normal(DIM).astype(np.float32)


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path) -> tuple[str, S3Settings | None]:
    if request.param == "local":
        return str(tmp_path / "vectors"), None
    server = request.getfixturevalue("s3_server")
    return f"s3://{server.create_bucket()}/team/vectors", settings_for(server)


def open_store(location, **kwargs) -> LanceVectorStore:
    root, settings = location
    return LanceVectorStore(root, s3=settings, **kwargs)


def ids(hits) -> list[str]:
    return [h["id"] for h in hits]


def test_writes_are_one_commit_each_and_another_process_sees_them(location):
    store, other = open_store(location), open_store(location)

    first = store.apply_changes(TABLE, [chunks(range(20))], dim=DIM, key_columns=["doc_id"])
    assert other.tables() == [TABLE] and other.count_rows(TABLE) == 20
    before = other.search(TABLE, vector=QUERY, top_k=5)  # loads its exact-search copy

    second = store.apply_changes(TABLE, [chunks(range(20, 24))], ["doc-0#0", "doc-1#0"], dim=DIM)

    assert second.version == first.version + 1
    assert (second.inserted, second.deleted) == (4, 2)
    after = other.search(TABLE, vector=QUERY, top_k=30)
    assert len(after) == 22 and "doc-0#0" not in ids(after), "the copy follows the new version"
    assert store.restore(TABLE, first.version) > second.version
    assert other.search(TABLE, vector=QUERY, top_k=5) == before


class Broken(Exception):
    pass


def test_a_write_failing_half_way_commits_nothing(location):
    store = open_store(location)
    store.apply_changes(TABLE, [chunks(range(12))], dim=DIM, key_columns=["doc_id"])
    version, before = store.version(TABLE), store.search(TABLE, vector=QUERY, top_k=5)

    def upserts():
        yield chunks(range(4), suffix=" v2")
        raise Broken("the encoder died half-way")

    with pytest.raises(Broken):
        store.apply_changes(TABLE, upserts(), ["doc-11#0"], dim=DIM)

    fresh = open_store(location)
    assert fresh.version(TABLE) == version
    assert fresh.search(TABLE, vector=QUERY, top_k=5) == before


def test_every_search_mode_works_and_both_paths_agree(location):
    store = open_store(location)
    store.apply_changes(TABLE, [chunks(range(40))], dim=DIM, key_columns=["doc_id"])
    store.ensure_indexes(TABLE)
    through_lance = open_store(location, exact_search_max_rows=0)
    filters = {"category": {"in": ["boots", "hat"]}, "price": {"lt": 30}}

    for kwargs in ({}, {"filter": filters}):
        exact = store.search(TABLE, vector=QUERY, top_k=10, **kwargs)
        lance = through_lance.search(TABLE, vector=QUERY, top_k=10, **kwargs)
        assert ids(exact) == ids(lance)
        np.testing.assert_allclose(
            [h["score"] for h in exact], [h["score"] for h in lance], atol=1e-5
        )
    text = store.search(TABLE, text="gloves", mode="text", top_k=5)
    assert text and all("gloves" in h["text"] for h in text)
    hybrid = store.search(TABLE, vector=QUERY, text="gloves", mode="hybrid", top_k=5)
    assert len(hybrid) == 5
    assert store.sample_vectors(TABLE, limit=7).shape == (7, DIM)


def test_search_results_are_the_same_locally_and_on_s3(tmp_path, s3_server):
    local = LanceVectorStore(tmp_path / "vectors")
    remote = LanceVectorStore(f"s3://{s3_server.create_bucket()}/v", s3=settings_for(s3_server))
    for store in (local, remote):
        store.apply_changes(TABLE, [chunks(range(60))], dim=DIM, key_columns=["doc_id"])
        store.apply_changes(TABLE, [chunks(range(10), suffix=" v2")], ["doc-59#0"], dim=DIM)
        store.ensure_indexes(TABLE)

    searches = [
        {"vector": QUERY},
        {"vector": QUERY, "filter": {"category": "scarf"}},
        {"text": "jacket number", "mode": "text"},
        {"vector": QUERY, "text": "socks v2", "mode": "hybrid"},
    ]
    for kwargs in searches:
        a, b = local.search(TABLE, top_k=8, **kwargs), remote.search(TABLE, top_k=8, **kwargs)
        assert ids(a) == ids(b), kwargs
        np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], rtol=1e-5)
    assert local.existing_hashes(TABLE) == remote.existing_hashes(TABLE)


def test_tables_are_listed_and_dropped(location):
    store = open_store(location)
    for name in ("a__docs", "b__docs"):
        store.apply_changes(name, [chunks(range(3))], dim=DIM, key_columns=["doc_id"])

    store.drop_table("a__docs")

    assert store.tables() == ["b__docs"]
    with pytest.raises(VectorTableMissingError):
        store.search("a__docs", vector=QUERY)
    assert open_store(location).tables() == ["b__docs"]


def test_a_store_on_s3_has_no_local_path(s3_server):
    store = LanceVectorStore(f"s3://{s3_server.create_bucket()}/v", s3=settings_for(s3_server))
    assert store.uri.startswith("s3://") and "s3://" in repr(store)
    with pytest.raises(VectorStoreError, match="no local path") as e:
        _ = store.path
    assert "sample_vectors" in e.value.hint


# -- object-store failures ------------------------------------------------------------------------


def test_a_missing_bucket_is_one_clear_error(s3_server):
    with pytest.raises(BucketMissing, match="bucket 'no-such-vectors' does not exist") as e:
        LanceVectorStore("s3://no-such-vectors/v", s3=settings_for(s3_server))
    assert e.value.http_status == 503 and "aws s3 mb" in e.value.hint


def test_refused_credentials_are_one_clear_error_and_write_nothing(s3_auth_server):
    url = f"s3://{s3_auth_server.create_bucket()}/v"
    good = LanceVectorStore(url, s3=settings_for(s3_auth_server))
    good.apply_changes(TABLE, [chunks(range(5))], dim=DIM, key_columns=["doc_id"])
    version = good.version(TABLE)

    for key, secret in [(s3_auth_server.access_key, "wrong-secret-1"), ("AKIAUNKNOWN", "x-2")]:
        wrong = S3Settings(endpoint=s3_auth_server.endpoint, access_key=key, secret_key=secret)
        with pytest.raises(CredentialsRefused, match="refused the credentials") as e:
            LanceVectorStore(url, s3=wrong)
        assert secret not in str(e.value) and "AWS_ACCESS_KEY_ID" in e.value.hint

    assert good.version(TABLE) == version and good.count_rows(TABLE) == 5


def test_an_unreachable_endpoint_is_an_error_not_a_hang(silent_endpoint):
    for endpoint in (closed_endpoint(), silent_endpoint):
        settings = S3Settings(
            endpoint=endpoint,
            access_key="k",
            secret_key="s",
            connect_timeout_s=1,
            request_timeout_s=1,
            max_attempts=1,
        )
        with pytest.raises(EndpointUnreachable, match="cannot be reached"):
            LanceVectorStore("s3://some-bucket/v", s3=settings)


def test_an_endpoint_that_goes_away_is_unreachable_not_a_damaged_table(private_s3_server):
    settings = settings_for(private_s3_server, connect_timeout_s=1, request_timeout_s=2)
    store = LanceVectorStore(
        f"s3://{private_s3_server.create_bucket()}/v",
        s3=settings,
        read_consistency_interval=timedelta(0),
    )
    store.apply_changes(TABLE, [chunks(range(5))], dim=DIM, key_columns=["doc_id"])
    assert store.search(TABLE, vector=QUERY, top_k=2)

    private_s3_server.stop()

    with pytest.raises(EndpointUnreachable, match="cannot be reached") as e:
        store.search(TABLE, vector=QUERY, top_k=2)
    assert e.value.http_status == 503
    with pytest.raises(EndpointUnreachable):
        store.apply_changes(TABLE, [chunks(range(5, 8))], dim=DIM)
