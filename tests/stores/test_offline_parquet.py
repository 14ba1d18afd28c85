"""The Parquet offline store, driven directly as materialization drives it.

The story: a job stages the feature rows of a time range, then commits them (or aborts). Readers
only ever see whole committed versions of a table; re-running a range changes nothing; a range
replaces exactly its own rows; and files are laid out in one folder per UTC day.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contextkit.framework.transformations import connect_duckdb
from contextkit.stores.offline import ParquetOfflineStore

TABLE = "prod/user_spend"
D = datetime(2024, 5, 1, tzinfo=UTC)  # a midnight UTC


def at(days: float = 0, **kwargs) -> datetime:
    return D + timedelta(days=days, **kwargs)


@pytest.fixture
def con():
    con = connect_duckdb()
    yield con
    con.close()


@pytest.fixture
def store(tmp_path: Path) -> ParquetOfflineStore:
    return ParquetOfflineStore(tmp_path / "offline")


def rows_query(rows: list[tuple[int, datetime, float]]) -> str:
    """A query of feature rows ``(user_id, event_timestamp, amount)`` as materialization writes."""
    if not rows:
        return (
            "SELECT CAST(NULL AS BIGINT) AS user_id, CAST(NULL AS TIMESTAMPTZ) AS event_timestamp, "
            "CAST(NULL AS DOUBLE) AS amount WHERE false"
        )
    values = ", ".join(
        f"({u}, TIMESTAMPTZ '{ts.isoformat()}', CAST({amount!r} AS DOUBLE))"
        for u, ts, amount in rows
    )
    return f"SELECT * FROM (VALUES {values}) AS t(user_id, event_timestamp, amount)"


def write(store, con, rows, start=None, end=None, replace_all=False, commit=True):
    staged = store.stage_range(
        con, TABLE, rows_query(rows), "event_timestamp", start, end, replace_all
    )
    if commit:
        staged.commit()
    return staged


def read(store, con) -> list[tuple[int, datetime, float]]:
    files = [str(f) for f in store.files(TABLE)]
    if not files:
        return []
    return con.execute(
        "SELECT user_id, event_timestamp, amount FROM read_parquet(?) ORDER BY ALL", [files]
    ).fetchall()


def parquet_on_disk(store) -> set[Path]:
    """Parquet files in the table folder outside staging (what a directory scan would find)."""
    base = store.table_dir(TABLE)
    return {p for p in base.rglob("*.parquet") if "_staging" not in p.parts}


def collected(store) -> set[Path]:
    """Parquet files on disk once garbage collection ran with no grace period: replaced files
    stay after a commit (a reader may still use them) until it runs."""
    store.collect_garbage(TABLE, grace_s=0)
    return parquet_on_disk(store)


# Rows over four days: two users, a few events per day, some right next to midnight.
HISTORY = [
    (1, at(0, hours=1), 1.0),
    (2, at(0, hours=23, minutes=59, seconds=59, microseconds=999_999), 2.0),
    (1, at(1), 3.0),
    (1, at(1, hours=12), 4.0),
    (2, at(1, hours=18), 5.0),
    (1, at(2, hours=6), 6.0),
    (2, at(2, hours=20), 7.0),
    (1, at(3, hours=2), 8.0),
]


def test_a_table_that_was_never_written_has_no_files(store, con):
    assert store.files(TABLE) == []
    assert read(store, con) == []


def test_staged_rows_are_invisible_until_commit(store, con):
    write(store, con, HISTORY[:2], replace_all=True)
    before = read(store, con)

    staged = write(store, con, HISTORY, replace_all=True, commit=False)

    assert staged.rows == len(HISTORY)
    assert read(store, con) == before, "a reader must not see staged rows"
    assert set(store.files(TABLE)) == parquet_on_disk(store), "nothing staged in the live folders"

    staged.commit()

    assert read(store, con) == sorted(HISTORY)
    assert not staged.staging.exists(), "staging is cleaned up"
    replaced = parquet_on_disk(store) - set(store.files(TABLE))
    assert replaced, "replaced files stay for readers that listed them before the commit"
    assert set(store.files(TABLE)) == collected(store), "garbage collection removes them"


def test_an_aborted_write_leaves_the_table_as_it_was(store, con):
    write(store, con, HISTORY, replace_all=True)
    files_before = store.files(TABLE)
    rows_before = read(store, con)

    staged = write(store, con, [(9, at(1, hours=3), 99.0)], start=at(1), end=at(2), commit=False)
    staged.abort()

    assert store.files(TABLE) == files_before
    assert read(store, con) == rows_before
    assert not staged.staging.exists(), "the staged files are dropped"
    assert parquet_on_disk(store) == set(files_before)


def test_an_aborted_first_write_leaves_no_table(store, con):
    staged = write(store, con, HISTORY, replace_all=True, commit=False)
    staged.abort()
    assert store.files(TABLE) == []
    assert parquet_on_disk(store) == set()


def test_writing_the_same_range_twice_is_idempotent(store, con):
    write(store, con, HISTORY, replace_all=True)
    day_two = [r for r in HISTORY if at(1) <= r[1] < at(2)]

    write(store, con, day_two, start=at(1), end=at(2))
    once = read(store, con)
    files_once = len(store.files(TABLE))
    write(store, con, day_two, start=at(1), end=at(2))
    twice = read(store, con)

    assert once == twice == sorted(HISTORY), "no duplicated or lost rows"
    assert len(store.files(TABLE)) == files_once, "no files pile up"
    assert set(store.files(TABLE)) == collected(store)


def test_an_incremental_range_replaces_only_the_rows_inside_it(store, con):
    write(store, con, HISTORY, replace_all=True)
    # Recompute [day 1 12:00, day 2 12:00): it cuts through two day partitions.
    start, end = at(1, hours=12), at(2, hours=12)
    recomputed = [
        (1, at(1, hours=12), 40.0),  # same key and time as an old row, new value
        (3, at(1, hours=13), 30.0),  # a new row
        (1, at(2, hours=11, minutes=59, seconds=59, microseconds=999_999), 60.0),
    ]

    staged = write(store, con, recomputed, start=start, end=end)

    assert staged.rows == len(recomputed)
    outside = [r for r in HISTORY if not (start <= r[1] < end)]
    assert read(store, con) == sorted(outside + recomputed)
    # Rows just outside the range on either side, in the partitions that were rewritten, stay.
    assert (1, at(1), 3.0) in read(store, con)
    assert (1, at(2, hours=6), 6.0) not in read(store, con), "inside the range: replaced"
    assert (2, at(2, hours=20), 7.0) in read(store, con)
    assert set(store.files(TABLE)) == collected(store)


def test_an_empty_range_deletes_the_rows_inside_it(store, con):
    write(store, con, HISTORY, replace_all=True)
    write(store, con, [], start=at(1), end=at(2))
    assert read(store, con) == sorted(r for r in HISTORY if not (at(1) <= r[1] < at(2)))


def test_replace_all_replaces_everything(store, con):
    write(store, con, HISTORY, replace_all=True)
    fresh = [(5, at(10, hours=1), 0.5), (6, at(11, hours=1), 0.25)]

    write(store, con, fresh, start=at(10), end=at(12), replace_all=True)

    assert read(store, con) == sorted(fresh), "rows outside the range are gone too"
    assert set(store.files(TABLE)) == collected(store)
    assert {p.parent.name for p in parquet_on_disk(store)} == {"day=2024-05-11", "day=2024-05-12"}


def test_files_are_partitioned_by_utc_day(store, con):
    write(store, con, HISTORY, replace_all=True)

    base = store.table_dir(TABLE)
    days = {}
    for path in store.files(TABLE):
        assert path.parent.parent == base
        assert path.parent.name.startswith("day=")
        stamps = con.execute(
            "SELECT DISTINCT strftime(event_timestamp, '%Y-%m-%d') FROM read_parquet(?)",
            [str(path)],
        ).fetchall()
        assert stamps == [(path.parent.name.removeprefix("day="),)], "one day per folder"
        days.setdefault(path.parent.name, 0)
    # The event a microsecond before midnight is on its own day, not the next one.
    assert sorted(days) == ["day=2024-05-01", "day=2024-05-02", "day=2024-05-03", "day=2024-05-04"]


def test_an_incremental_write_leaves_other_days_files_untouched(store, con):
    write(store, con, HISTORY, replace_all=True)
    untouched = {p for p in store.files(TABLE) if p.parent.name != "day=2024-05-03"}
    mtimes = {p: p.stat().st_mtime_ns for p in untouched}

    write(store, con, [(1, at(2, hours=6), 60.0)], start=at(2), end=at(3))

    assert untouched <= set(store.files(TABLE)), "partitions outside the range are kept as is"
    assert {p: p.stat().st_mtime_ns for p in untouched} == mtimes
    assert (1, at(2, hours=6), 60.0) in read(store, con)
