"""LanceVectorStore: atomic writes, versions, indexes, filters, exact and hybrid search."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contextkit.stores._vector_plan import index_candidates
from contextkit.stores._vector_tables import LOCAL_FILE_SYSTEMS, local_file_system
from contextkit.stores.vector import (
    ChunkHashes,
    InvalidFilterError,
    InvalidSearchError,
    LanceVectorStore,
    VectorSchemaError,
    VectorStoreError,
    VectorTableMissingError,
    _ann_config,
    _fuse,
    compile_filter,
    parse_filter,
)

DIM = 8
CATEGORIES = ["shoes", "hats", "bags", None]
BRANDS = ["acme", "O'Neil", 'say "hi"', "back\\slash", "100%_cotton", "naïve", "shoes' OR 1=1 --"]
START = datetime(2024, 1, 1, tzinfo=UTC)


def unit(rng, n, dim=DIM):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def records(n=48, seed=7):
    rng = np.random.default_rng(seed)
    vectors = unit(rng, n)
    out = []
    for i in range(n):
        out.append(
            {
                "sku": f"s{i:03d}",
                "text": f"item {i} {CATEGORIES[i % 4] or 'misc'} {BRANDS[i % len(BRANDS)]}",
                "vector": vectors[i],
                "category": CATEGORIES[i % 4],
                "brand": BRANDS[i % len(BRANDS)],
                "price": None if i % 11 == 5 else round(5.0 + 2.5 * i, 2),
                "stock": (i * 7) % 23,
                "active": None if i % 9 == 4 else i % 2 == 0,
                "released": START + timedelta(days=i),
                "launch": date(2024, 1, 1) + timedelta(days=i),
                "it's": "a'b" if i % 3 == 0 else "c",
                "tags": ["x", "y"] if i % 2 else ["z"],
            }
        )
    return out


def to_batch(recs, dim=DIM, extra=None):
    """Rows in the pipeline's layout (what plan.batches() yields)."""
    cols = {
        "id": pa.array([f"{r['sku']}#0" for r in recs]),
        "sku": pa.array([r["sku"] for r in recs]),
        "chunk_index": pa.array([0] * len(recs), pa.int32()),
        "char_offset": pa.array([0] * len(recs), pa.int64()),
        "text": pa.array([r["text"] for r in recs]),
        "content_hash": pa.array([hashlib.sha256(r["text"].encode()).hexdigest() for r in recs]),
        "row_hash": pa.array([hashlib.sha256(repr(r).encode()).hexdigest() for r in recs]),
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(np.concatenate([r["vector"] for r in recs]).astype(np.float32)), dim
        ),
        "category": pa.array([r["category"] for r in recs], pa.string()),
        "brand": pa.array([r["brand"] for r in recs]),
        "price": pa.array([r["price"] for r in recs], pa.float64()),
        "stock": pa.array([r["stock"] for r in recs], pa.int64()),
        "active": pa.array([r["active"] for r in recs], pa.bool_()),
        "released": pa.array([r["released"] for r in recs], pa.timestamp("us", tz="UTC")),
        "launch": pa.array([r["launch"] for r in recs], pa.date32()),
        "it's": pa.array([r["it's"] for r in recs]),
        "tags": pa.array([r["tags"] for r in recs], pa.list_(pa.string())),
        **(extra or {}),
    }
    return pa.RecordBatch.from_pydict(cols)


RECORDS = records()
QUERY = unit(np.random.default_rng(99), 1)[0]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """One table, searched through the numpy exact path and through LanceDB's own flat search."""
    path = tmp_path_factory.mktemp("vectors")
    exact = LanceVectorStore(path)
    exact.apply_changes("ws__catalog", [to_batch(RECORDS)], dim=DIM, key_columns=["sku"])
    exact.ensure_indexes("ws__catalog")
    return exact, LanceVectorStore(path, exact_search_max_rows=0)


def search_both(catalog, **kwargs):
    exact, lance = catalog
    kwargs = {"vector": QUERY, "top_k": 100, **kwargs}
    a = exact.search("ws__catalog", **kwargs)
    b = lance.search("ws__catalog", **kwargs)
    assert [h["id"] for h in a] == [h["id"] for h in b]
    np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-5)
    return a


def skus(hits):
    return {h["key"]["sku"] for h in hits}


def expected(pred):
    out = set()
    for r in RECORDS:
        try:
            if pred(r):
                out.add(r["sku"])
        except TypeError:  # a comparison with None: SQL says "not true"
            pass
    return out


# -- writes, versions, atomicity -----------------------------------------------------------------


def test_rows_are_written_with_their_key_and_a_write_time(tmp_path):
    store = LanceVectorStore(tmp_path)
    result = store.apply_changes("t", [to_batch(RECORDS[:5])], dim=DIM, key_columns=["sku"])
    assert result.created and result.inserted == 5 and result.previous_version is None
    assert store.key_columns("t") == ["sku"] and store.dimension("t") == DIM
    assert store.existing_hashes("t")["s001#0"] == ChunkHashes(
        hashlib.sha256(RECORDS[1]["text"].encode()).hexdigest(),
        hashlib.sha256(repr(RECORDS[1]).encode()).hexdigest(),
    )
    np.testing.assert_array_equal(
        store.fetch_vectors("t", ["s002#0"])["s002#0"], RECORDS[2]["vector"]
    )
    assert store.fetch_vectors("t", ["nope#0"]) == {}
    table = store._open("t").to_arrow()
    assert table.schema.field("updated_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)


def test_upserts_and_deletes_land_in_one_new_version(tmp_path):
    store = LanceVectorStore(tmp_path)
    first = store.apply_changes("t", [to_batch(RECORDS[:10])], dim=DIM, key_columns=["sku"])
    changed = [dict(r, text=r["text"] + " v2") for r in RECORDS[3:5]]
    second = store.apply_changes(
        "t", [to_batch(changed), to_batch(RECORDS[10:12])], ["s000#0", "s001#0"], dim=DIM
    )
    assert second.version == first.version + 1 and second.previous_version == first.version
    assert (second.inserted, second.updated, second.deleted) == (2, 2, 2)
    hashes = store.existing_hashes("t")
    assert sorted(hashes) == [f"s{i:03d}#0" for i in range(2, 12)]
    # deletes only: still one commit
    third = store.apply_changes("t", [], ["s002#0"], dim=DIM)
    assert third.version == second.version + 1 and third.deleted == 1
    # nothing to do: no commit
    assert not store.apply_changes("t", [], [], dim=DIM).committed


def test_no_rows_with_their_layout_create_the_table_empty_in_one_commit(tmp_path):
    store = LanceVectorStore(tmp_path)
    assert store.apply_changes("t", [], dim=DIM, key_columns=["sku"]).version is None
    assert not store.has_table("t")  # no layout: nothing to create
    layout = to_batch(RECORDS[:1]).schema
    result = store.apply_changes("t", [], dim=DIM, key_columns=["sku"], schema=layout)
    assert result.created and result.committed and result.inserted == 0
    assert store.count_rows("t") == 0 and store.key_columns("t") == ["sku"]
    assert store.dimension("t") == DIM and store.search("t", vector=QUERY, top_k=3) == []
    # the next write fills it as any table (the layout checked against it)
    store.apply_changes("t", [to_batch(RECORDS[:3])], dim=DIM)
    assert store.count_rows("t") == 3


class Boom(Exception):
    pass


def failing_upserts(batches, fail_after):
    for i, batch in enumerate(batches):
        if i == fail_after:
            raise Boom("the upstream iterator broke half-way")
        yield batch


def test_an_iterator_raising_half_way_commits_nothing(tmp_path):
    store = LanceVectorStore(tmp_path)
    store.apply_changes("t", [to_batch(RECORDS[:20])], dim=DIM, key_columns=["sku"])
    store.ensure_indexes("t")
    version = store.version("t")
    before = store.search("t", vector=QUERY, top_k=5)
    before_text = store.search("t", text="shoes", mode="text", top_k=5)
    changed = [dict(r, vector=-r["vector"], text="changed") for r in RECORDS[:20]]
    upserts = failing_upserts([to_batch(changed[i : i + 5]) for i in range(0, 20, 5)], 2)
    with pytest.raises(Boom):  # the original exception, not LanceDB's wrapper
        store.apply_changes("t", upserts, ["s019#0"], dim=DIM)
    assert store.version("t") == version
    assert store.search("t", vector=QUERY, top_k=5) == before
    assert store.search("t", text="shoes", mode="text", top_k=5) == before_text
    assert len(store.existing_hashes("t")) == 20


def test_a_table_created_by_a_failed_write_is_dropped(tmp_path):
    store = LanceVectorStore(tmp_path)
    upserts = failing_upserts([to_batch(RECORDS[:5]), to_batch(RECORDS[5:10])], 1)
    with pytest.raises(Boom):
        store.apply_changes("t", upserts, dim=DIM, key_columns=["sku"])
    assert store.tables() == []
    with pytest.raises(VectorTableMissingError):
        store.search("t", vector=QUERY)


def test_old_versions_can_be_restored(tmp_path):
    store = LanceVectorStore(tmp_path)
    v1 = store.apply_changes("t", [to_batch(RECORDS[:5])], dim=DIM, key_columns=["sku"]).version
    before = store.search("t", vector=QUERY, top_k=3)
    store.apply_changes("t", [to_batch(RECORDS[5:10])], [f"s00{i}#0" for i in range(5)], dim=DIM)
    assert store.search("t", vector=QUERY, top_k=3) != before
    new = store.restore("t", v1)
    assert new > v1 and store.version("t") == new and v1 in store.versions("t")
    assert store.search("t", vector=QUERY, top_k=3) == before
    with pytest.raises(VectorStoreError, match="cannot restore"):
        store.restore("t", 999)


def test_rows_that_do_not_fit_the_table_are_refused_before_writing(tmp_path):
    store = LanceVectorStore(tmp_path)
    store.apply_changes("t", [to_batch(RECORDS[:5])], dim=DIM, key_columns=["sku"])
    version = store.version("t")
    with pytest.raises(VectorSchemaError, match="stores 8-dimensional") as err:
        store.apply_changes("t", [], ["s000#0"], dim=16)
    assert "replace=True" in err.value.hint
    extra = {"colour": pa.array(["red"] * 3)}
    with pytest.raises(VectorSchemaError, match="new colour"):
        store.apply_changes("t", [to_batch(RECORDS[:3], extra=extra)], dim=DIM)
    with pytest.raises(VectorSchemaError, match="keyed by"):
        store.apply_changes("t", [to_batch(RECORDS[:3])], dim=DIM, key_columns=["brand"])
    assert store.version("t") == version
    # a rebuild replaces the table (another dimension, another column) in one commit
    rng = np.random.default_rng(1)
    wide = [dict(r, vector=v) for r, v in zip(RECORDS[:4], unit(rng, 4, 16), strict=True)]
    result = store.apply_changes(
        "t", [to_batch(wide, dim=16, extra={"colour": pa.array(["red"] * 4)})], dim=16, replace=True
    )
    assert result.version == version + 1 and store.dimension("t") == 16
    assert store.count_rows("t") == 4 and "colour" in store.filterable_columns("t")
    assert store.key_columns("t") == ["sku"]


def test_a_new_table_needs_its_key_columns(tmp_path):
    with pytest.raises(VectorSchemaError, match="needs key_columns"):
        LanceVectorStore(tmp_path).apply_changes("t", [to_batch(RECORDS[:2])], dim=DIM)


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "a b", "x" * 200, ".hidden"])
def test_table_names_are_checked(tmp_path, name):
    with pytest.raises(VectorStoreError, match="invalid vector table name"):
        LanceVectorStore(tmp_path).search(name, vector=QUERY)


def test_tables_can_be_listed_warmed_and_dropped(tmp_path):
    store = LanceVectorStore(tmp_path)
    store.apply_changes("a", [to_batch(RECORDS[:3])], dim=DIM, key_columns=["sku"])
    store.apply_changes("b", [to_batch(RECORDS[:3])], dim=DIM, key_columns=["sku"])
    assert store.tables() == ["a", "b"] and store.has_table("a")
    store.warm("a")
    assert "a" in store._exact  # the first search will not pay for loading it
    store.drop_table("a")
    store.drop_table("a")  # no-op
    assert store.tables() == ["b"] and store.existing_hashes("a") == {}


def test_writes_from_another_process_are_seen_by_the_exact_cache(tmp_path):
    reader = LanceVectorStore(tmp_path)
    writer = LanceVectorStore(tmp_path)  # stands in for the materialization job's process
    writer.apply_changes("t", [to_batch(RECORDS[:10])], dim=DIM, key_columns=["sku"])
    target = RECORDS[30]
    assert reader.search("t", vector=target["vector"], top_k=1)[0]["id"] != "s030#0"
    writer.apply_changes("t", [to_batch([target])], dim=DIM)
    assert reader.search("t", vector=target["vector"], top_k=1)[0]["id"] == "s030#0"


def test_every_commit_of_another_process_is_seen_by_the_next_search(tmp_path):
    # Commits land right after searches, within the file system's mtime granularity: the
    # version check that stands in for LanceDB's (one stat of _versions) must still see each.
    reader = LanceVectorStore(tmp_path)
    writer = LanceVectorStore(tmp_path)
    writer.apply_changes("t", [to_batch(RECORDS[:2])], dim=DIM, key_columns=["sku"])
    for record in RECORDS[2:30]:
        reader.search("t", vector=record["vector"], top_k=1)
        writer.apply_changes("t", [to_batch([record])], dim=DIM)
        assert reader.search("t", vector=record["vector"], top_k=1)[0]["id"] == f"{record['sku']}#0"


class CountingHandle:
    """A LanceDB table handle that counts how often its version is asked."""

    def __init__(self, handle):
        self._handle, self.asked = handle, 0

    @property
    def version(self):
        self.asked += 1
        return self._handle.version

    def __getattr__(self, name):
        return getattr(self._handle, name)


def test_searches_of_an_unchanged_local_table_skip_lancedbs_version_check(tmp_path):
    store = LanceVectorStore(tmp_path)
    assert store._stat_versions, "the test folder should be on a local file system"
    store.apply_changes("t", [to_batch(RECORDS[:10])], dim=DIM, key_columns=["sku"])
    versions = tmp_path / "t.lance" / "_versions"
    settled = versions.stat().st_mtime_ns // 1_000_000_000 - 60
    os.utime(versions, (settled, settled))  # the last commit is long past
    handle = store._tables["t"] = CountingHandle(store._open("t"))
    for _ in range(5):
        assert store.search("t", vector=RECORDS[3]["vector"], top_k=1)[0]["id"] == "s003#0"
    assert handle.asked == 1
    LanceVectorStore(tmp_path).apply_changes("t", [to_batch([RECORDS[40]])], dim=DIM)
    assert store.search("t", vector=RECORDS[40]["vector"], top_k=1)[0]["id"] == "s040#0"
    assert handle.asked == 2


def test_only_local_file_systems_stand_in_for_lancedbs_version_check(tmp_path):
    assert local_file_system(tmp_path)
    assert not local_file_system(Path("/proc/self"))  # proc: not a store's file system
    # a store on a network mount keeps LanceDB's check
    assert "nfs" not in LOCAL_FILE_SYSTEMS and "cifs" not in LOCAL_FILE_SYSTEMS


# -- indexes -------------------------------------------------------------------------------------


def test_indexes_are_created_once_and_used(tmp_path):
    rng = np.random.default_rng(3)
    many = [dict(RECORDS[i % 48], sku=f"n{i:04d}", vector=v) for i, v in enumerate(unit(rng, 300))]
    # one index kind (comparing kinds: tests/stores/test_vector_calibration.py)
    store = LanceVectorStore(
        tmp_path, ann_min_rows=256, exact_search_max_rows=0, index_candidates_max_rows=0
    )
    store.apply_changes("t", [to_batch(many)], dim=DIM, key_columns=["sku"])
    report = store.ensure_indexes("t")
    assert report.created == ["fts:text", "HnswSq:vector", "btree:id"]
    assert store.ensure_indexes("t").created == []
    hit = store.search("t", vector=many[123]["vector"], top_k=1)[0]
    assert hit["id"] == "n0123#0" and hit["score"] == pytest.approx(1.0, abs=1e-2)
    # rows added after the index was built are still found (searched flat until optimized)
    late = dict(RECORDS[0], sku="late", vector=unit(rng, 1)[0], text="zebra crossing")
    store.apply_changes("t", [to_batch([late])], dim=DIM)
    assert store.search("t", vector=late["vector"], top_k=1)[0]["id"] == "late#0"
    assert store.search("t", text="zebra", mode="text", top_k=1)[0]["id"] == "late#0"


def test_ann_index_settings_follow_the_table_size():
    # up to index_candidates_max_rows both HNSW kinds are built and compared; above, one
    kinds = [type(c).__name__ for c in index_candidates(25_000, 384, max_rows=200_000)]
    assert kinds == ["HnswSq", "HnswFlat"]
    assert [type(c).__name__ for c in index_candidates(300_000, 384, 200_000)] == ["HnswSq"]
    assert [type(c).__name__ for c in index_candidates(16_000_000, 384, 10**9)] == ["IvfPq"]
    small = _ann_config(25_000, 384)
    assert type(small).__name__ == "HnswSq" and small.num_partitions == 1
    assert small.distance_type == "cosine"
    assert _ann_config(3_000_000, 384).num_partitions == 3
    big = _ann_config(16_000_000, 384)
    assert type(big).__name__ == "IvfPq" and big.num_partitions == 4000
    assert big.num_sub_vectors == 24 and _ann_config(16_000_000, 1000).num_sub_vectors == 125


# -- filters -------------------------------------------------------------------------------------

OPERATOR_CASES = [
    ({"category": "shoes"}, lambda r: r["category"] == "shoes"),
    ({"category": {"eq": "hats"}}, lambda r: r["category"] == "hats"),
    ({"category": {"ne": "hats"}}, lambda r: r["category"] is not None and r["category"] != "hats"),
    ({"price": {"lt": 50}}, lambda r: r["price"] < 50),
    ({"price": {"lte": 50}}, lambda r: r["price"] <= 50),
    ({"price": {"gt": 60.5, "lte": 90}}, lambda r: 60.5 < r["price"] <= 90),
    ({"price": {"gte": 100}}, lambda r: r["price"] >= 100),
    ({"stock": {"lt": 5.5}}, lambda r: r["stock"] < 5.5),
    ({"stock": {"in": [0, 7, 14]}}, lambda r: r["stock"] in (0, 7, 14)),
    ({"stock": {"not_in": [0, 7]}}, lambda r: r["stock"] not in (0, 7)),
    ({"brand": {"in": ["acme", "O'Neil"]}}, lambda r: r["brand"] in ("acme", "O'Neil")),
    (
        {"category": {"not_in": ["shoes"]}},
        lambda r: r["category"] is not None and r["category"] != "shoes",
    ),
    ({"brand": {"contains": "%_"}}, lambda r: "%_" in r["brand"]),
    ({"brand": {"contains": "Ne"}}, lambda r: "Ne" in r["brand"]),
    ({"active": True}, lambda r: r["active"] is True),
    ({"active": {"ne": True}}, lambda r: r["active"] is False),
    (
        {"released": {"gte": "2024-02-01T00:00:00Z"}},
        lambda r: r["released"] >= START + timedelta(31),
    ),
    (
        {"released": {"lt": datetime(2024, 1, 10, 2, tzinfo=timezone(timedelta(hours=2)))}},
        lambda r: r["released"] < datetime(2024, 1, 10, tzinfo=UTC),
    ),
    ({"launch": {"lte": "2024-01-05"}}, lambda r: r["launch"] <= date(2024, 1, 5)),
    ({"it's": "a'b"}, lambda r: r["it's"] == "a'b"),
    ({"sku": {"in": ["s001", "s002"]}}, lambda r: r["sku"] in ("s001", "s002")),
    (
        {"category": "shoes", "price": {"lt": 80}, "active": True},
        lambda r: r["category"] == "shoes" and r["price"] < 80 and r["active"] is True,
    ),
]


@pytest.mark.parametrize(("spec", "pred"), OPERATOR_CASES, ids=[str(c[0]) for c in OPERATOR_CASES])
def test_every_operator_matches_sql_semantics_in_both_search_paths(catalog, spec, pred):
    want = expected(pred)
    assert want, "the case should match something"
    assert skus(search_both(catalog, filter=spec)) == want


INJECTIONS = [
    ({"category": "shoes' OR 1=1 --"}, lambda r: False),
    ({"category": "shoes' OR '1'='1"}, lambda r: False),
    ({"category": {"in": ["shoes') OR (1=1"]}}, lambda r: False),
    (
        {"category": {"ne": "x' OR category IS NULL OR 'a'='a"}},
        lambda r: r["category"] is not None,  # every non-null row, and no null one
    ),
    # the brand that really holds SQL-looking text is matched literally, and only it
    ({"brand": {"contains": "' OR 1=1 --"}}, lambda r: r["brand"] == "shoes' OR 1=1 --"),
    ({"brand": "shoes' OR 1=1 --"}, lambda r: r["brand"] == "shoes' OR 1=1 --"),
    ({"it's": "a''b"}, lambda r: False),
    ({"brand": "back\\\\slash"}, lambda r: False),  # backslashes are not escapes either
    ({"brand": "back\\slash"}, lambda r: r["brand"] == "back\\slash"),
]


@pytest.mark.parametrize(("spec", "pred"), INJECTIONS, ids=[str(c[0]) for c in INJECTIONS])
def test_injected_values_are_plain_literals(catalog, spec, pred):
    assert skus(search_both(catalog, filter=spec)) == expected(pred)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"category = 'shoes' OR 1=1": "x"}, "unknown filter column"),
        ({"OR 1=1": 1}, "unknown filter column"),
        ({"`category`": "shoes"}, "unknown filter column"),
        ({"vector": 1}, "unknown filter column"),
        ({"text": "x"}, "unknown filter column"),
        ({"tags": "x"}, "cannot be filtered"),
        ({"price": "1 OR 1=1"}, "must be a number"),
        ({"price": True}, "must be a number"),
        ({"price": float("nan")}, "finite"),
        ({"stock": 2**70}, "64-bit"),
        ({"category": 3}, "must be a string"),
        ({"active": "true"}, "true or false"),
        ({"category": None}, "null filter value"),
        ({"category": ["a", "b"]}, "needs a single value"),
        ({"category": {"in": "shoes"}}, "needs a list"),
        ({"category": {"in": []}}, "needs a list"),
        ({"category": {"in": [{"nested": 1}]}}, "must be a string"),
        ({"price": {"lt": {"gt": 1}}}, "must be a number"),
        ({"price": {"between": [1, 2]}}, "unknown filter operator"),
        ({"price": {"contains": 1}}, "does not apply"),
        ({"category": {}}, "no operator"),
        ({"released": {"gt": "yesterday"}}, "ISO-8601"),
        ({"launch": {"gt": "2024-13-01"}}, "ISO date"),
        ({"category": {"contains": ""}}, "non-empty"),
        (["category", "shoes"], "must be an object"),
    ],
)
def test_invalid_filters_are_rejected_with_the_column_named(catalog, spec, message):
    with pytest.raises(InvalidFilterError, match=message) as err:
        catalog[0].search("ws__catalog", vector=QUERY, filter=spec)
    assert err.value.http_status == 400


def test_filters_compile_to_quoted_identifiers_and_literals():
    columns = {"it's": pa.string(), "category": pa.string(), "price": pa.float64()}
    spec = {"it's": "a'b", "category": {"in": ["x') OR (1=1"]}, "price": {"lt": 5}}
    sql = compile_filter(parse_filter(spec, columns)).to_sql()
    assert "`it's` = 'a''b'" in sql
    assert "`category` IN ('x'') OR (1=1')" in sql
    assert "price < 5.0" in sql


filter_values = {
    "category": st.sampled_from(["shoes", "hats", "bags", "nope"]),
    "brand": st.sampled_from(BRANDS),
    "price": st.floats(0, 150, allow_nan=False) | st.integers(0, 150),
    "stock": st.integers(-1, 25) | st.floats(-1, 25, allow_nan=False),
    "active": st.booleans(),
    "released": st.integers(0, 60).map(lambda d: (START + timedelta(days=d)).isoformat()),
    "it's": st.sampled_from(["a'b", "c"]),
}
OPS = {
    "category": ["eq", "ne", "lt", "gte", "in", "not_in", "contains"],
    "brand": ["eq", "ne", "in", "not_in", "contains"],
    "price": ["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in"],
    "stock": ["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in"],
    "active": ["eq", "ne", "in", "not_in"],
    "released": ["eq", "ne", "lt", "lte", "gt", "gte"],
    "it's": ["eq", "ne", "in"],
}


@st.composite
def filters(draw):
    spec = {}
    for column in draw(st.sets(st.sampled_from(sorted(OPS)), min_size=1, max_size=3)):
        op = draw(st.sampled_from(OPS[column]))
        value = draw(filter_values[column])
        if op in ("in", "not_in"):
            value = draw(st.lists(filter_values[column], min_size=1, max_size=3))
        elif op == "contains":
            value = draw(st.sampled_from(["s", "a", "'", "%", "ho"]))
        spec[column] = {op: value}
    return spec


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=filters(), top_k=st.integers(1, 60), seed=st.integers(0, 2**16))
def test_exact_search_equals_lancedb_flat_search(catalog, spec, top_k, seed):
    query = unit(np.random.default_rng(seed), 1)[0]
    search_both(catalog, vector=query, top_k=top_k, filter=spec)


def test_exact_search_defers_to_lancedb_when_a_filtered_float_column_holds_nan(tmp_path):
    recs = [dict(r, price=float("nan") if i % 2 else r["price"]) for i, r in enumerate(RECORDS)]
    store = LanceVectorStore(tmp_path)
    store.apply_changes("t", [to_batch(recs)], dim=DIM, key_columns=["sku"])
    hits = store.search("t", vector=QUERY, top_k=100, filter={"price": {"lt": 1000}})
    lance = LanceVectorStore(tmp_path, exact_search_max_rows=0)
    assert hits == lance.search("t", vector=QUERY, top_k=100, filter={"price": {"lt": 1000}})


# -- search modes --------------------------------------------------------------------------------


def test_vector_hits_carry_key_metadata_and_cosine_score(catalog):
    target = RECORDS[17]
    [hit] = catalog[0].search("ws__catalog", vector=target["vector"] * 3, top_k=1)
    assert hit["id"] == "s017#0" and hit["key"] == {"sku": "s017"}
    assert hit["score"] == pytest.approx(1.0, abs=1e-5)
    assert hit["text"] == target["text"] and (hit["chunk_index"], hit["char_offset"]) == (0, 0)
    assert hit["metadata"]["brand"] == target["brand"] and hit["metadata"]["it's"] == "c"
    assert "vector" not in hit["metadata"] and "updated_at" not in hit["metadata"]


def test_text_search_ranks_by_bm25(catalog):
    hits = catalog[0].search("ws__catalog", text="cotton", mode="text", top_k=10)
    assert skus(hits) == expected(lambda r: "cotton" in r["brand"])
    assert all(h["score"] > 0 for h in hits)
    filtered = catalog[0].search(
        "ws__catalog", text="cotton", mode="text", filter={"category": "shoes"}
    )
    assert skus(filtered) == expected(lambda r: "cotton" in r["brand"] and r["category"] == "shoes")


def test_reciprocal_rank_fusion():
    def row(i, **extra):
        return {"id": i, "text": i, "chunk_index": 0, "char_offset": 0, "k": i, **extra}

    by_vector = [row("a", _distance=0.1), row("b", _distance=0.2), row("c", _distance=0.3)]
    by_text = [row("c", _score=9.0), row("d", _score=5.0)]
    hits = _fuse(by_vector, by_text, top_k=4, keys=["k"])
    assert [h["id"] for h in hits] == ["c", "a", "b", "d"]  # b and d tie (both rank 2): by id
    assert hits[0]["score"] == pytest.approx(1 / 63 + 1 / 61)
    assert hits[0]["scores"] == {"vector": pytest.approx(0.7), "text": 9.0}
    assert hits[1]["scores"] == {"vector": pytest.approx(0.9), "text": None}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "semantic"}, "unknown search mode"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 1001}, "top_k"),
        ({"vector": None}, "needs the query vector"),
        ({"vector": [1.0, 2.0]}, "8 dimensions"),
        ({"vector": [float("nan")] * DIM}, "NaN"),
        ({"vector": [0.0] * DIM}, "all zeros"),
        ({"mode": "text", "text": "  "}, "non-empty query text"),
        ({"mode": "hybrid", "text": None}, "non-empty query text"),
    ],
)
def test_malformed_searches_are_rejected(catalog, kwargs, message):
    with pytest.raises(InvalidSearchError, match=message):
        catalog[0].search("ws__catalog", **{"vector": QUERY, **kwargs})


# -- hybrid search with the real model -----------------------------------------------------------

PRODUCTS = {
    "kw": "Descaling tablets for espresso machines, pack of 12 (SKU-QJW-2363).",
    "meaning": "Waterproof hiking boots with a grippy sole.",
    "lamp": "A brass desk lamp with a warm LED bulb.",
    "kettle": "Electric kettle, 1.7 litres, stainless steel.",
    "scarf": "Wool scarf in navy blue.",
    "tent": "Two-person camping tent, lightweight.",
    "mug": "Ceramic coffee mug, dishwasher safe.",
    "bike": "City bicycle with a basket and dynamo lights.",
    "socks": "Cotton socks, pack of five.",
    "phone": "Smartphone case with a card holder.",
    "pan": "Non-stick frying pan, 28 cm.",
    "chair": "Ergonomic office chair with lumbar support.",
}


def test_hybrid_finds_keyword_only_and_meaning_only_matches(tmp_path):
    from contextkit.embeddings import get_encoder

    encoder = get_encoder("minilm")  # shared with tests/embeddings: loaded once per process
    ids = list(PRODUCTS)
    vectors = encoder.encode(list(PRODUCTS.values()))
    recs = [
        dict(RECORDS[i], sku=key, text=PRODUCTS[key], vector=vectors[i])
        for i, key in enumerate(ids)
    ]
    store = LanceVectorStore(tmp_path)
    store.apply_changes("t", [to_batch(recs, dim=384)], dim=384, key_columns=["sku"])
    store.ensure_indexes("t")

    text = "SKU-QJW-2363 footwear for wet mountain trails"
    query = encoder.encode([text])[0]
    by_vector = skus(store.search("t", vector=query, top_k=2))
    by_text = skus(store.search("t", text=text, mode="text", top_k=2))
    hybrid = store.search("t", vector=query, text=text, mode="hybrid", top_k=2)
    assert "kw" not in by_vector and "meaning" in by_vector  # the code means nothing to the model
    assert "meaning" not in by_text and by_text == {"kw"}  # no shared word with the boots
    assert skus(hybrid) == {"kw", "meaning"}
    kw = next(h for h in hybrid if h["id"] == "kw#0")
    assert kw["scores"]["text"] > 0 and kw["score"] > 1 / 61
