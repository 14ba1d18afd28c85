"""Garbage collection of the Parquet offline store: what killed and replaced writes leave behind
goes, and nothing a reader may still use goes with it.

The story: a table is written, rewritten (its old files are replaced), and writers die at
every step (a staging folder, files moved in but never listed). Collection removes each leftover
once it is safe, keeps the current version byte for byte, and leaves nested tables to themselves.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contextkit.framework.transformations import connect_duckdb
from contextkit.stores.offline import GC_GRACE_S, ParquetOfflineStore

TABLE = "prod/spend"
INPUTS = "prod/spend/inputs"
D = datetime(2024, 5, 1, tzinfo=UTC)
HOUR = 3600.0


@pytest.fixture
def con():
    con = connect_duckdb()
    yield con
    con.close()


@pytest.fixture
def store(tmp_path: Path) -> ParquetOfflineStore:
    return ParquetOfflineStore(tmp_path / "offline")


def rows_query(day: int, value: float) -> str:
    ts = (D + timedelta(days=day, hours=1)).isoformat()
    return (
        f"SELECT * FROM (VALUES (1, TIMESTAMPTZ '{ts}', CAST({value} AS DOUBLE))) "
        "AS t(user_id, event_timestamp, amount)"
    )


def write(store, con, table=TABLE, value=1.0, owner=None, commit=True):
    staged = store.stage_range(
        con, table, rows_query(0, value), "event_timestamp", None, None, True, owner
    )
    if commit:
        staged.commit()
    return staged


def read(store, con, table=TABLE) -> list[float]:
    """The table's amounts, as a reader of its current version sees them."""
    files = [str(f) for f in store.files(table)]
    rows = con.execute("SELECT amount FROM read_parquet(?) ORDER BY ALL", [files]).fetchall()
    return [r[0] for r in rows]


def age(path: Path, seconds: float) -> None:
    """Make a file (and everything in a folder) look ``seconds`` old."""
    then = time.time() - seconds
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (then, then))


def test_a_replaced_version_stays_for_the_grace_period_then_goes(store, con):
    write(store, con, value=1.0)
    old_files = store.files(TABLE)
    write(store, con, value=2.0)

    kept = store.collect_garbage(TABLE)
    assert kept == [] and all(f.exists() for f in old_files), "a reader may still use them"

    later = time.time() + GC_GRACE_S + 1
    found = store.collect_garbage(TABLE, now=later)

    assert {g.path for g in found} >= set(old_files)
    assert all("replaced" in g.reason or "note" in g.reason for g in found)
    assert not any(f.exists() for f in old_files)
    notes = list((store.table_dir(TABLE) / "_retired").glob("*.json"))
    assert notes == [], "the notes go with the files they list"
    assert read(store, con) == [2.0]


def test_files_the_manifest_lists_are_never_collected_however_old(store, con):
    write(store, con, value=3.0)
    for f in store.files(TABLE):
        age(f, 100 * HOUR)

    assert store.collect_garbage(TABLE, grace_s=0) == []
    assert read(store, con) == [3.0]


def test_staging_goes_once_its_job_stops_running(store, con):
    write(store, con, value=1.0)
    running = write(store, con, value=2.0, owner="job_alive", commit=False)
    dead = write(store, con, value=3.0, owner="job_dead", commit=False)
    states = {"job_alive": True, "job_dead": False}

    found = store.collect_garbage(TABLE, job_running=states.get, grace_s=0)

    assert [g.path for g in found] == [dead.staging]
    assert "job_dead" in found[0].reason and "no longer running" in found[0].reason
    assert not dead.staging.exists() and running.staging.exists()
    running.commit()  # the live job was not disturbed
    assert read(store, con) == [2.0]


def test_staging_of_an_unknown_writer_goes_only_when_old(store, con):
    write(store, con, value=1.0)
    young = write(store, con, value=2.0, commit=False)  # no owner: written by an older version
    old = write(store, con, value=3.0, commit=False)
    age(old.staging, 2 * GC_GRACE_S)

    found = store.collect_garbage(TABLE)

    assert [g.path for g in found] == [old.staging]
    assert young.staging.exists()


def test_files_moved_in_but_never_listed_go_after_the_grace_period(store, con):
    """A writer killed between moving its files in and swapping the manifest."""
    write(store, con, value=1.0)
    [listed] = store.files(TABLE)
    orphan = listed.parent / "new-orphan.parquet"
    shutil.copy(listed, orphan)
    tmp_manifest = store.table_dir(TABLE) / "manifest.0123.tmp"
    tmp_manifest.write_text("{")

    assert store.collect_garbage(TABLE) == [], "it could be a commit in progress"

    age(orphan, 2 * GC_GRACE_S)
    age(tmp_manifest, 2 * GC_GRACE_S)
    dry = store.collect_garbage(TABLE, dry_run=True)
    assert {g.path for g in dry} == {orphan, tmp_manifest}
    assert orphan.exists() and tmp_manifest.exists(), "a dry run removes nothing"

    found = store.collect_garbage(TABLE)

    assert {g.path for g in found} == {orphan, tmp_manifest}
    assert all("no manifest" in g.reason for g in found)
    assert not orphan.exists() and listed.exists()
    assert read(store, con) == [1.0]


def test_a_nested_table_is_left_to_its_own_collection(store, con):
    write(store, con, value=1.0)
    write(store, con, table=INPUTS, value=5.0)
    for f in store.files(INPUTS):
        age(f, 100 * HOUR)
    dead_inputs = write(store, con, table=INPUTS, value=6.0, owner="gone", commit=False)

    assert store.collect_garbage(TABLE, grace_s=0, job_running=lambda _j: False) == []
    assert dead_inputs.staging.exists()
    assert set(store.tables()) == {TABLE, INPUTS}

    found = store.collect_garbage(INPUTS, grace_s=0, job_running=lambda _j: False)
    assert [g.path for g in found] == [dead_inputs.staging]
    assert read(store, con, INPUTS) == [5.0]
