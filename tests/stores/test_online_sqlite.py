"""The SQLite online store, driven directly as materialization and serving drive it.

The story: a materialization replaces a view's online table in one transaction; a service then
reads a batch of entities in one query and gets one row (or None) per requested key, in request
order. A failed materialization must leave the previous table serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contextkit.stores.errors import StoreFailure
from contextkit.stores.online import SQLiteOnlineStore

TABLE = "prod__user_spend"
USER_KEY = [("user_id", "int64")]
COLUMNS = [("event_timestamp", "timestamp"), ("amount_sum_7d", "float64"), ("tier", "string")]
NAMES = [c for c, _ in COLUMNS]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteOnlineStore]:
    store = SQLiteOnlineStore(tmp_path / "online.db")
    yield store
    store.close()


def user_rows(n: int, scale: float = 1.0) -> list[tuple]:
    return [(u, 1_700_000_000_000_000 + u, u * scale, f"tier{u % 3}") for u in range(1, n + 1)]


def count_selects(store: SQLiteOnlineStore) -> list[str]:
    """Record the SELECT statements the store's connection runs from now on."""
    statements: list[str] = []
    store._con().set_trace_callback(
        lambda sql: statements.append(sql) if sql.lstrip().upper().startswith("SELECT") else None
    )
    return statements


def test_a_batch_read_returns_one_row_per_key_in_request_order(store):
    assert store.replace_table(TABLE, USER_KEY, COLUMNS, user_rows(5)) == 5

    got = store.read(TABLE, ["user_id"], NAMES, [(4,), (99,), (1,), (4,)])

    assert got == [
        (1_700_000_000_000_004, 4.0, "tier1"),
        None,  # no such user: None, not an error
        (1_700_000_000_000_001, 1.0, "tier1"),
        (1_700_000_000_000_004, 4.0, "tier1"),  # asked twice, answered twice
    ]


def test_a_single_key_read(store):
    store.replace_table(TABLE, USER_KEY, COLUMNS, user_rows(3))
    assert store.read(TABLE, ["user_id"], NAMES, [(2,)]) == [(1_700_000_000_000_002, 2.0, "tier2")]
    assert store.read(TABLE, ["user_id"], NAMES, [(7,)]) == [None]
    assert store.read(TABLE, ["user_id"], NAMES, []) == []


def test_composite_keys(store):
    keys = [("tenant", "string"), ("user_id", "int64")]
    rows = [("acme", 1, 10, 1.5, "a"), ("acme", 2, 20, 2.5, "b"), ("globex", 1, 30, 3.5, "c")]
    store.replace_table("prod__tenant_users", keys, COLUMNS, rows)

    got = store.read(
        "prod__tenant_users",
        ["tenant", "user_id"],
        NAMES,
        [("globex", 1), ("acme", 1), ("globex", 2), ("acme", 2)],
    )

    assert got == [(30, 3.5, "c"), (10, 1.5, "a"), None, (20, 2.5, "b")]
    # A single composite key works too.
    assert store.read("prod__tenant_users", ["tenant", "user_id"], NAMES, [("acme", 2)]) == [
        (20, 2.5, "b")
    ]


def test_a_subset_of_columns_can_be_read(store):
    store.replace_table(TABLE, USER_KEY, COLUMNS, user_rows(2))
    assert store.read(TABLE, ["user_id"], ["tier"], [(2,), (1,)]) == [("tier2",), ("tier1",)]


def test_a_batch_is_one_query_however_many_keys(store):
    store.replace_table(TABLE, USER_KEY, COLUMNS, user_rows(2000))
    keys = [(u,) for u in range(0, 2500, 3)]
    selects = count_selects(store)

    got = store.read(TABLE, ["user_id"], NAMES, keys)

    assert len(selects) == 1
    assert [r is not None for r in got] == [1 <= u <= 2000 for (u,) in keys]

    composite = [("t", "int64"), ("user_id", "int64")]
    store.replace_table("prod__composite", composite, COLUMNS, [(0, *r) for r in user_rows(500)])
    selects.clear()
    got = store.read("prod__composite", ["t", "user_id"], NAMES, [(0, u) for u in range(600)])
    assert len(selects) == 1
    assert sum(r is not None for r in got) == 500


def test_replacing_a_table_drops_entities_that_are_gone(store):
    store.replace_table(TABLE, USER_KEY, COLUMNS, user_rows(5))
    store.replace_table(TABLE, USER_KEY, COLUMNS, user_rows(2, scale=10.0))

    got = store.read(TABLE, ["user_id"], NAMES, [(1,), (2,), (3,)])

    assert [r and r[1] for r in got] == [10.0, 20.0, None]


def test_duplicate_keys_in_a_write_keep_the_last_row(store):
    rows = [(1, 1, 1.0, "old"), (2, 2, 2.0, "x"), (1, 3, 3.0, "new")]
    assert store.replace_table(TABLE, USER_KEY, COLUMNS, rows) == 2
    assert store.read(TABLE, ["user_id"], NAMES, [(1,)]) == [(3, 3.0, "new")]


def test_nulls_round_trip(store):
    store.replace_table(TABLE, USER_KEY, COLUMNS, [(1, 5, None, None)])
    assert store.read(TABLE, ["user_id"], NAMES, [(1,)]) == [(5, None, None)]


def test_a_failure_while_writing_leaves_the_previous_table_serving(store):
    store.replace_table(TABLE, USER_KEY, COLUMNS, user_rows(3))
    before = store.read(TABLE, ["user_id"], NAMES, [(1,), (2,), (3,)])

    def failing_rows():
        yield (1, 0, -1.0, "partial")
        yield (7, 0, -7.0, "partial")
        raise RuntimeError("source file truncated")

    with pytest.raises(RuntimeError, match="truncated"):
        store.replace_table(TABLE, USER_KEY, COLUMNS, failing_rows())

    assert store.read(TABLE, ["user_id"], NAMES, [(1,), (2,), (3,)]) == before
    assert store.read(TABLE, ["user_id"], NAMES, [(7,)]) == [None]
    assert not store.has_table(f"{TABLE}__staging"), "the staging table is rolled back"
    # The store is still usable: the next write goes through.
    assert store.replace_table(TABLE, USER_KEY, COLUMNS, user_rows(1, scale=9.0)) == 1
    assert store.read(TABLE, ["user_id"], ["amount_sum_7d"], [(1,), (2,)]) == [(9.0,), None]


def test_a_failed_first_write_creates_no_table(store):
    def failing_rows():
        yield (1, 0, 1.0, "a")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.replace_table(TABLE, USER_KEY, COLUMNS, failing_rows())
    assert not store.has_table(TABLE)
    with pytest.raises(StoreFailure):
        store.read(TABLE, ["user_id"], NAMES, [(1,)])


def test_reading_a_table_that_was_never_materialized_raises_store_failure(store):
    with pytest.raises(StoreFailure, match="does not exist") as info:
        store.read("prod__never_materialized", ["user_id"], NAMES, [(1,), (2,)])
    assert "materialize" in (info.value.hint or "")


def test_a_dropped_table_is_gone(store):
    store.replace_table(TABLE, USER_KEY, COLUMNS, user_rows(1))
    assert store.has_table(TABLE)
    store.drop_table(TABLE)
    assert not store.has_table(TABLE)
    with pytest.raises(StoreFailure):
        store.read(TABLE, ["user_id"], NAMES, [(1,)])
    store.drop_table(TABLE)  # dropping twice is fine


def test_another_connection_sees_the_committed_table(store, tmp_path):
    store.replace_table(TABLE, USER_KEY, COLUMNS, user_rows(2))
    reader = SQLiteOnlineStore(tmp_path / "online.db")
    try:
        assert reader.read(TABLE, ["user_id"], ["amount_sum_7d"], [(2,)]) == [(2.0,)]
        store.replace_table(TABLE, USER_KEY, COLUMNS, user_rows(2, scale=100.0))
        assert reader.read(TABLE, ["user_id"], ["amount_sum_7d"], [(2,)]) == [(200.0,)]
    finally:
        reader.close()
