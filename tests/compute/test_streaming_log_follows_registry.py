"""The durable ingest log follows the registry (issue 14): with a PostgreSQL registry the log is
in the registry database whatever the online store, so two nodes that each keep their online
values in their own SQLite file share one log. An ingest on either node is in it, a flush from
either node writes it to the offline store once, and a node that loses its local files loses
no acknowledged record: its start-up restores its online values from the log.

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
        # Node B's idempotency check is the shared log's; its ingest catches its own online
        # store up with what node A took.
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

        # Node A loses its local files: its start-up restores its online values from the log.
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
