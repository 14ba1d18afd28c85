"""A push source's ``batch_source`` history loaded into Redis in chunks (issue 14): a history
larger than one chunk gives the stream views the values the embedded SQLite store gives, one
transaction per chunk; a load interrupted half way resumes at the next ingest or serving's
start-up (beside another node's loader: counted once), not against a batch file that changed.

A real redis-server of its own (tests/backends.py), so its command counts are this test's.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import contextkit
from contextkit.compute.online_rebuild import rebuild_if_empty, rebuild_online
from contextkit.compute.streaming import ingest_records
from contextkit.compute.streaming import log as stream_log
from contextkit.errors import StoreUnavailableError

pytest_plugins = ["backends"]

DEFS = """
from contextkit import (
    Aggregate, Attribute, ContextService, Entity, Field, FileSource, Float64, Int64, PushSource,
    StreamFeatureView, Timestamp,
)

user = Entity(name="user", join_keys=["user_id"])
history = FileSource(name="history", path="data/history.parquet", timestamp_field="ts")
clicks = PushSource(
    name="clicks",
    schema=[Field("user_id", Int64), Field("price", Float64), Field("ts", Timestamp)],
    timestamp_field="ts",
    batch_source=history,
)
last_click = StreamFeatureView(
    name="last_click", source=clicks, entities=[user], features=[Attribute("price")],
)
click_count = StreamFeatureView(
    name="click_count", source=clicks, entities=[user],
    features=[Aggregate("price", "count", "1d"), Aggregate("price", "sum", "1d"),
              Aggregate("price", "max", "1d")],
    aggregation_interval="1h",
)
svc = ContextService(name="svc", features=[last_click, click_count])
"""

NOW = datetime.now(UTC).replace(microsecond=0)
USERS = list(range(60))
CHUNK = 200  # history rows per transaction here (5,000 by default)


def history_rows() -> list[tuple[int, float, int]]:
    """(user, price, minutes ago): 1,500 rows over 60 users, within the day's window and
    older; some rows twice (two events)."""
    rows = [(i % 60, float(i % 97), (i * 7) % 2000 + 5) for i in range(1500)]
    return rows + rows[:40]


# Pushed after the history: a record equal to a history row (the same event: counted once),
# and new ones.
PUSHES = [[(3, 3.0, 5 + (3 * 7) % 2000), (3, 500.0, 1)], [(59, 7.5, 2), (0, 1.0, 3)]]


def table(rows) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([u for u, _, _ in rows], pa.int64()),
            "price": pa.array([p for _, p, _ in rows], pa.float64()),
            "ts": pa.array(
                [NOW - timedelta(minutes=m) for _, _, m in rows], pa.timestamp("us", tz="UTC")
            ),
        }
    )


def open_repo(make_repo, redis_url: str | None):
    root = make_repo(
        {"defs.py": DEFS},
        data={"history.parquet": table(history_rows())},
        name="on-redis" if redis_url else "embedded",
    )
    if redis_url is not None:
        config = (root / "contextkit.yaml").read_text()
        prefix = f"ck:{uuid.uuid4().hex[:8]}"
        (root / "contextkit.yaml").write_text(
            config.replace(
                "online_store: {type: sqlite, path: .contextkit/online.db}",
                f"online_store: {{url: '{redis_url}', prefix: '{prefix}'}}",
            )
        )
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    return ctx


def push(ctx, records) -> None:
    rows = [{"user_id": u, "price": p, "ts": (NOW - timedelta(minutes=m)).isoformat()}
            for u, p, m in records]  # fmt: skip
    assert ingest_records(ctx, "clicks", rows).accepted == len(records)


def served(ctx) -> dict:
    result = ctx.service_reader("svc").read(ctx.online, {"user_id": USERS})
    return dict(zip(result.names, result.values, strict=True))


@pytest.fixture
def stores(make_repo, redis_factory, monkeypatch):
    """The same repo on the embedded SQLite store and on a Redis of its own."""
    monkeypatch.setattr(stream_log, "HISTORY_CHUNK_ROWS", CHUNK)
    server = redis_factory()
    sqlite, redis_ctx = open_repo(make_repo, None), open_repo(make_repo, server.url)
    yield sqlite, redis_ctx, server
    sqlite.close()
    redis_ctx.close()


def redis_client(server):
    import redis

    return redis.Redis.from_url(server.url)


def test_a_history_larger_than_a_chunk_loads_a_chunk_per_transaction_as_sqlite_counts_it(stores):
    sqlite, on_redis, server = stores
    client = redis_client(server)
    client.config_resetstat()
    for records in PUSHES:
        push(sqlite, records)
        push(on_redis, records)
    expected = served(sqlite)
    assert sum(expected["click_count.price_count_1d"]) > CHUNK  # more than one chunk counts
    assert served(on_redis) == expected
    chunks = -(-len(history_rows()) // CHUNK)
    assert client.info("commandstats")["cmdstat_exec"]["calls"] >= chunks

    result = rebuild_online(on_redis.runtime, ["click_count"])  # `contextkit online rebuild`
    assert result.log_rows == {"clicks": len(history_rows()) - 1 + 4}  # one equal row: once
    assert served(on_redis) == expected
    client.close()


class Interrupt:
    """Makes the online state's writes fail from the ``after``-th chunk on (as a store that
    went away would), in each transaction that applies rows."""

    def __init__(self, monkeypatch, after: int) -> None:
        self.calls = 0
        self.after = after
        real = stream_log.apply_records

        def apply_records(*args, **kwargs):
            self.calls += 1
            if self.calls >= self.after:
                raise ConnectionError("the online store went away")
            return real(*args, **kwargs)

        monkeypatch.setattr(stream_log, "apply_records", apply_records)
        self.undo = lambda: monkeypatch.setattr(stream_log, "apply_records", real)


def test_an_interrupted_history_load_resumes_or_is_started_over(stores, monkeypatch):
    sqlite, on_redis, _server = stores
    push(sqlite, PUSHES[0])
    push(on_redis, PUSHES[0])
    expected = served(sqlite)
    assert served(on_redis) == expected

    cut = Interrupt(monkeypatch, after=4)  # three chunks of the rebuild's history commit
    with pytest.raises(ConnectionError):
        rebuild_online(on_redis.runtime, ["click_count"])
    cut.undo()
    # Meanwhile a reader sees the history rows loaded so far, and no logged record yet.
    partial = served(on_redis)["click_count.price_count_1d"]
    assert 0 < sum(c or 0 for c in partial) < sum(expected["click_count.price_count_1d"])
    # Not a view to rebuild: another node may still be loading it (see the next test).
    assert stream_log.stream_views_to_rebuild(on_redis.runtime) == []

    # The next ingest finishes the load where it stopped, then applies the log.
    push(sqlite, PUSHES[1])
    push(on_redis, PUSHES[1])
    expected = served(sqlite)
    assert served(on_redis) == expected
    assert stream_log.stream_views_to_rebuild(on_redis.runtime) == []

    # Interrupted again: serving's start-up finds the unfinished load and resumes it.
    cut = Interrupt(monkeypatch, after=2)
    with pytest.raises(ConnectionError):
        rebuild_online(on_redis.runtime)
    cut.undo()
    assert served(on_redis) != expected
    assert rebuild_if_empty(on_redis.runtime) is not None
    assert served(on_redis) == expected


def test_start_up_beside_another_nodes_unfinished_load_resumes_it_without_counting_twice(
    stores, monkeypatch
):
    """Node A's history load is under way (3 chunks in) when node B's serving starts. B must
    not start it over (drop the tiles, the progress, then load from chunk 1): a chunk A commits
    between those drops was counted twice, for good (review of 56ce321). B resumes it beside
    A: a chunk both try commits once, the other's transaction conflicting on the progress."""
    sqlite, on_redis, _server = stores
    push(sqlite, PUSHES[0])
    expected = served(sqlite)
    cut = Interrupt(monkeypatch, after=4)
    with pytest.raises(ConnectionError):
        push(on_redis, PUSHES[0])  # logged; its history load stopped after 3 chunks
    cut.undo()
    rt = on_redis.runtime
    specs = rt.specs()
    source = specs.push_sources["clicks"]
    views = [v for v in specs.stream_views.values() if v.source == "clicks" and v.online]
    node_a = stream_log.HistoryLoad(rt, "prod", source, views, datetime.now(UTC), CHUNK)

    drops = []
    real_drop = rt.online.drop_table
    monkeypatch.setattr(rt.online, "drop_table", lambda t: (drops.append(t), real_drop(t)))
    real_apply = stream_log._apply_history
    raced = []

    def apply_history(w, *args):
        if not raced:  # B read the progress; A commits the same next chunk right now
            raced.append(None)
            raced[0] = rt.online.transact(node_a.step)
        return real_apply(w, *args)

    monkeypatch.setattr(stream_log, "_apply_history", apply_history)
    assert rebuild_if_empty(rt) is not None  # node B's serving start-up
    monkeypatch.setattr(stream_log, "_apply_history", real_apply)
    assert raced == [CHUNK] and drops == []
    assert served(on_redis) == expected
    # The next ingest applies its records once, on top.
    push(sqlite, PUSHES[1])
    push(on_redis, PUSHES[1])
    assert served(on_redis) == served(sqlite)


def test_a_load_does_not_resume_against_a_batch_file_that_changed(
    stores, make_repo, monkeypatch, caplog
):
    """History seqs are positions in the batch file: a load interrupted after 3 chunks must not
    resume once rows were appended to the file (every position shifts: rows skipped or counted
    twice). The next ingest says so and how to fix it; the rebuild it names gives the values
    of the file as it is now, as SQLite computes them from it."""
    _sqlite, on_redis, _server = stores
    cut = Interrupt(monkeypatch, after=4)
    with pytest.raises(ConnectionError):
        push(on_redis, PUSHES[0])
    cut.undo()
    more = [(u, 1000.0 + u, 30 + u) for u in range(50)]
    path = on_redis.config.root / "data" / "history.parquet"
    pq.write_table(table(history_rows() + more), path)

    with pytest.raises(StoreUnavailableError) as raised:
        push(on_redis, PUSHES[1])
    assert "changed while its history was loading" in str(raised.value)
    assert "contextkit online rebuild" in raised.value.hint  # the records are logged
    # Serving's start-up leaves that load as it is, with a warning, and goes on serving.
    with caplog.at_level(logging.WARNING, logger="contextkit.compute.streaming.log"):
        rebuild_if_empty(on_redis.runtime)
    assert "changed while its history was loading" in caplog.text

    # SQLite, the file with the appended rows from the start
    root = make_repo({"defs.py": DEFS}, data={"history.parquet": table(history_rows() + more)},
                     name="embedded-appended")  # fmt: skip
    fresh = contextkit.connect(root, workspace="prod")
    fresh.create_workspace("prod", live=True)
    fresh.apply(fresh.plan(root))
    for records in PUSHES:
        push(fresh, records)
    rebuild_online(on_redis.runtime, ["click_count", "last_click"])
    assert served(on_redis) == served(fresh)
    fresh.close()
