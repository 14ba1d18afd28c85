"""The durable ingest log follows the registry (issue 14): with a PostgreSQL registry the log is
in the registry database whatever the online store, so two nodes that each keep their online
values in their own SQLite file share one log. An ingest on either node is in it and served by
the other on its next read, a flush from either node writes it to the offline store once, and a
node that loses its local files loses no acknowledged record: its start-up restores its online
values from the log.

Real server (tests/backends.py): PostgreSQL 15.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import contextkit
from contextkit.compute.layout import log_table
from contextkit.compute.online_rebuild import rebuild_if_empty, rebuilds_on_start
from contextkit.compute.streaming import ingest_log, ingest_records
from contextkit.stores.ingest_log import PostgresIngestLog
from contextkit.stores.online import SQLiteOnlineStore
from tests.compute.test_streaming_rebuild import DEFS  # a push source, two stream views
from tests.compute.test_streaming_shared_log import served

pytest_plugins = ["backends"]


def test_two_nodes_with_local_sqlite_online_stores_share_the_postgres_log(
    tmp_path, postgres_server
):
    stores = f"registry: {postgres_server.create_database()}\noffline_store: {tmp_path / 'off'}\n"
    roots = []
    for name in ("a", "b"):  # no online_store: each node's own .contextkit/online.db
        root = tmp_path / name
        root.mkdir()
        (root / "defs.py").write_text(DEFS)
        (root / "contextkit.yaml").write_text(f"project: shop\n{stores}")
        roots.append(root)
    a = contextkit.connect(roots[0], workspace="prod")
    a.create_workspace("prod", live=True)
    a.apply(a.plan(roots[0]))
    b = contextkit.connect(roots[1], workspace="prod")
    try:
        for node in (a, b):
            assert isinstance(node.online, SQLiteOnlineStore)
            assert isinstance(ingest_log(node), PostgresIngestLog)
            assert rebuilds_on_start(node.runtime)
        now = datetime.now(UTC)
        records = [
            {
                "record": {"user_id": i % 2, "price": float(i), "ts": (now - timedelta(minutes=i))},
                "idempotency_key": f"k{i}",
            }
            for i in range(1, 6)
        ]
        for r in records:
            r["record"]["ts"] = r["record"]["ts"].isoformat()
        assert ingest_records(a, "clicks", records).accepted == 5
        log = log_table("prod", "clicks")
        assert [row[1] for row in ingest_log(b).read_log(log, ["price"], 0, 10)] == [
            1.0, 2.0, 3.0, 4.0, 5.0,
        ]  # fmt: skip
        before = served(a, [0, 1])
        assert before["click_count.price_count_1d"] == [2, 3]
        # Node B serves node A's records on its next read (its own store catches up first);
        # its idempotency check is the shared log's.
        got = b.get_features("svc", {"user_id": [0, 1]})
        assert dict(zip(got.names, got.values, strict=True)) == before
        assert ingest_records(b, "clicks", records).duplicates == [0, 1, 2, 3, 4]
        assert served(b, [0, 1]) == before

        # A flush from both nodes: the rows reach the offline store once.
        flushed = [a.flush_ingest_logs()["clicks"], b.flush_ingest_logs()["clicks"]]
        assert flushed == [5, 0]
        offline = b.offline.dataset(log).to_table()
        assert sorted(offline.column("__seq").to_pylist()) == [1, 2, 3, 4, 5]
        for root in roots:  # neither node keeps a log of its own
            assert not list(root.rglob("ingest_log.db"))
            local = SQLiteOnlineStore(root / ".contextkit" / "online.db")
            assert not local.has_table(log)
            local.close()

        # The scheduler's prune of flushed rows (as it runs it) empties the shared log.
        with ingest_log(b).transaction() as writer:
            assert writer.delete_before(log, "seq", 6) == 5

        # Node A loses its local files: its start-up restores its online values from what is
        # durable (the pruned rows from the offline Parquet log).
        a.close()
        shutil.rmtree(roots[0] / ".contextkit")
        a = contextkit.connect(roots[0], workspace="prod")
        assert served(a, [0, 1])["click_count.price_count_1d"] == [None, None]
        result = rebuild_if_empty(a.runtime)
        assert result is not None and result.log_rows == {"clicks": 5}
        assert served(a, [0, 1]) == before
        assert rebuild_if_empty(a.runtime) is None  # nothing missing any more
    finally:
        a.close()
        b.close()


def test_a_log_an_earlier_version_left_in_a_nodes_sqlite_store_moves_to_the_shared_log(
    make_repo, postgres_server
):
    """Before the log followed the registry, a PostgreSQL registry beside the embedded online
    store kept the log in the online store's file (the SQLite registry's layout, made here).
    The first use moves it into the shared log, seqs and idempotency keys kept, and marks the
    node's values as holding it: nothing is lost, applied twice or flushed twice."""
    root = make_repo({"defs.py": DEFS})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ts = datetime.now(UTC).isoformat()
    old = [
        {"record": {"user_id": u, "price": p, "ts": ts}, "idempotency_key": k}
        for u, p, k in [(0, 1.0, "k1"), (1, 2.0, "k2"), (0, 3.0, "k3")]
    ]
    assert ingest_records(ctx, "clicks", old).accepted == 3
    before = served(ctx, [0, 1])
    ctx.close()
    config = (root / "contextkit.yaml").read_text()
    (root / "contextkit.yaml").write_text(
        config.replace(
            "registry: .contextkit/registry.db", f"registry: {postgres_server.create_database()}"
        )
    )
    ctx = contextkit.connect(root, workspace="prod")
    try:
        ctx.create_workspace("prod", live=True)
        ctx.apply(ctx.plan(root))
        new = {"record": {"user_id": 1, "price": 4.0, "ts": ts}, "idempotency_key": "k4"}
        result = ingest_records(ctx, "clicks", [old[2], new])
        assert (result.accepted, result.duplicates) == (1, [0])  # k3 was adopted with its key
        log = log_table("prod", "clicks")
        shared = ingest_log(ctx)
        assert isinstance(shared, PostgresIngestLog) and not ctx.online.has_table(log)
        assert [r[0] for r in shared.read_log(log, ["price"], 0, 10)] == [1, 2, 3, 4]
        after = served(ctx, [0, 1])
        assert after["click_count.price_count_1d"] == [2, 2]  # the old three, once, and k4
        assert after["click_count.price_sum_1d"] == [4.0, 6.0]
        assert before["click_count.price_count_1d"] == [2, 1]
        assert ctx.flush_ingest_logs() == {"clicks": 4}
    finally:
        ctx.close()
