"""One contract for the durable ingest log (stores/ingest_log.py): the SQLite file of one node
and the PostgreSQL log shared by every node answer the core's calls alike. What the core relies
on: idempotency keys seen once, seqs without holes that grow in commit order (``apply_log``
and the flush keep only the last seq they took, and read a gap as rows pruned after their
flush), pruning by seq, and one flusher at a time. PostgreSQL is real (tests/backends.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from contextkit.stores.ingest_log import IngestLog
from contextkit.stores.online import SQLiteOnlineStore
from contextkit.stores.postgres_registry import PostgresRegistry

pytest_plugins = ["backends"]

LOG = "prod__clicks__log"
COLUMNS = [("user_id", "int64"), ("price", "float64"), ("ts", "timestamp")]
NAMES = [n for n, _ in COLUMNS]


@pytest.fixture(params=["sqlite", "postgres"])
def log(request, tmp_path: Path) -> Iterator[IngestLog]:
    if request.param == "sqlite":
        store = SQLiteOnlineStore(tmp_path / "ingest_log.db")
        yield store
        store.close()
        return
    registry = PostgresRegistry(request.getfixturevalue("postgres_server").create_database())
    shared = registry.ingest_log()
    assert shared is not None
    yield shared
    registry.close()


def append(log: IngestLog, rows: list[tuple], at: int = 1_000) -> list[int]:
    """What ingest does: skip the ids already logged, append the rest; the seqs given."""

    def work(w) -> list[int]:
        w.ensure_table(LOG, [], COLUMNS, log=True)
        ids = [r[0] for r in rows if r[0] is not None]
        seen = w.existing(LOG, "ingest_id", ids) if ids else set()
        fresh = [r for r in rows if r[0] is None or r[0] not in seen]
        if not fresh:
            return []
        first, last = w.append_log(LOG, NAMES, fresh, at)
        return list(range(first, last + 1))

    return log.transact(work)


def test_appends_read_back_in_seq_order_with_their_values(log):
    assert log.read_log(LOG, NAMES, 0, 10) == [] and log.last_ingested_at(LOG) is None
    assert not log.has_table(LOG)
    assert append(log, [("a", 1, 2.5, 10), (None, 2, None, 11)], at=5_000) == [1, 2]
    assert append(log, [("a", 1, 9.0, 12), ("b", 3, 1.0, 13)], at=6_000) == [3]  # "a" seen
    assert log.has_table(LOG)
    assert log.read_log(LOG, NAMES, 0, 10) == [(1, 1, 2.5, 10), (2, 2, None, 11), (3, 3, 1.0, 13)]
    assert log.read_log(LOG, ["price"], 1, 1) == [(2, None)]
    assert log.last_ingested_at(LOG) == 6_000


def test_concurrent_appends_get_seqs_without_holes_in_commit_order(log):
    """Eight threads append 20 batches each: every seq from 1 to the total is used once, and a
    reader that only remembers the last seq it took never misses a row."""
    total = 8 * 20 * 3
    taken: list[int] = []
    seen_by_reader: list[int] = []
    done = threading.Event()

    def writer(t: int) -> None:
        for b in range(20):
            taken.extend(append(log, [(f"{t}-{b}-{i}", t, float(b), i) for i in range(3)]))

    def reader() -> None:  # what apply_log does: rows after the last seq it took
        last = 0
        while not done.is_set() or last < total:
            rows = log.read_log(LOG, [], last, 1000)
            for (seq,) in rows:
                assert seq == last + 1, f"seq {seq} after {last}: a hole or a late commit"
                seen_by_reader.append(seq)
                last = seq

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    follower = threading.Thread(target=reader)
    follower.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    follower.join(timeout=120)
    assert sorted(taken) == list(range(1, total + 1))
    assert seen_by_reader == list(range(1, total + 1))


def test_pruned_rows_are_gone_and_seqs_keep_growing(log):
    append(log, [(None, u, 1.0, u) for u in range(5)])
    with log.transaction() as w:
        assert w.delete_before(LOG, "seq", 6) == 5  # everything
    assert log.read_log(LOG, NAMES, 0, 10) == []
    assert append(log, [(None, 9, 1.0, 9)]) == [6]  # never reused


def test_one_flusher_at_a_time(log):
    inside, overlapped = [], []
    lock = threading.Lock()

    def flush() -> None:
        with log.exclusive(LOG):
            with lock:
                inside.append(1)
                overlapped.append(len(inside) > 1)
            threading.Event().wait(0.05)  # hold it while the other thread tries
            with lock:
                inside.pop()

    threads = [threading.Thread(target=flush) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlapped == [False] * 4


def test_reads_before_the_first_ingest_create_nothing_in_postgres(postgres_server):
    """A serving node's start-up reads the log (is anything to rebuild?): on a database where
    nothing was ingested yet that is an empty answer, and no table is created (a read-only
    role may serve)."""
    import psycopg

    url = postgres_server.create_database()
    registry = PostgresRegistry(url)
    try:
        log = registry.ingest_log()
        assert log.read_log(LOG, NAMES, 0, 10) == [] and log.last_ingested_at(LOG) is None
        assert not log.has_table(LOG)
        with psycopg.connect(url) as con:
            assert con.execute("SELECT to_regclass('ingest_log')").fetchone() == (None,)
    finally:
        registry.close()
