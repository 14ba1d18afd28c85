"""The ingest log shared by every node (issue 14 item 6): with a PostgreSQL registry, push
sources' durable log lives in the registry database, so two nodes (two repos, each with its own
local folder, on one PostgreSQL + Redis and one offline folder) may both take ingests: every
record is served by both, once, and flushed to the offline store once even when both nodes
flush at the same time.

Real servers (tests/backends.py): PostgreSQL 15 and redis-server.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

import contextkit
from contextkit.compute.layout import log_table
from contextkit.compute.online_rebuild import rebuild_online
from contextkit.compute.streaming import ingest_log, ingest_records, log_arrow
from contextkit.errors import ContextKitError
from contextkit.stores.ingest_log import PostgresIngestLog
from tests.compute.test_streaming_rebuild import DEFS  # a push source, two stream views

pytest_plugins = ["backends"]


USERS = 6


@pytest.fixture
def nodes(tmp_path, postgres_server, redis_server):
    """Two connected nodes of one deployment (separate repo folders, shared stores)."""
    stores = (
        f"registry: {postgres_server.create_database()}\n"
        f"online_store: {{url: '{redis_server.url}', prefix: 'ck:{uuid.uuid4().hex[:8]}'}}\n"
        f"offline_store: {tmp_path / 'offline'}\n"
    )
    roots = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        (root / "defs.py").write_text(DEFS)
        (root / "contextkit.yaml").write_text(f"project: shop\n{stores}")
        roots.append(root)
    first = contextkit.connect(roots[0], workspace="prod")
    first.create_workspace("prod", live=True)
    first.apply(first.plan(roots[0]))
    second = contextkit.connect(roots[1], workspace="prod")
    yield first, second, roots
    first.close()
    second.close()


def served(ctx, users: list[int]) -> dict:
    result = ctx.service_reader("svc").read(ctx.online, {"user_id": users})
    return dict(zip(result.names, result.values, strict=True))


def test_records_ingested_on_two_nodes_are_served_by_both_and_flushed_once(nodes):
    a, b, roots = nodes
    assert isinstance(ingest_log(a), PostgresIngestLog)
    now = datetime.now(UTC)
    sent: dict[str, tuple[int, float]] = {}  # idempotency key -> (user, price)
    lock = threading.Lock()

    def ingest(node, thread: int) -> None:
        for batch in range(8):
            records = []
            for i in range(3):
                key = f"{thread}-{batch}-{i}"
                user, price = (thread + batch + i) % USERS, float(thread * 100 + batch * 3 + i)
                ts = (now - timedelta(seconds=1000 - batch * 10 - i)).isoformat()
                records.append({"record": {"user_id": user, "price": price, "ts": ts},
                                "idempotency_key": key})  # fmt: skip
                with lock:
                    sent[key] = (user, price)
            # The same batch again on the other node: its keys are logged already.
            ingest_records(node, "clicks", records)
            other = b if node is a else a
            again = ingest_records(other, "clicks", records)
            assert again.accepted == 0 and again.duplicates == [0, 1, 2]

    threads = [threading.Thread(target=ingest, args=(n, t)) for t, n in enumerate([a, b, a, b])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sent) == 4 * 8 * 3

    users = list(range(USERS))
    counts = [sum(1 for u, _ in sent.values() if u == user) for user in users]
    sums = [sum(p for u, p in sent.values() if u == user) for user in users]
    for node in (a, b):
        got = served(node, users)
        assert got["click_count.price_count_1d"] == counts
        assert got["click_count.price_sum_1d"] == pytest.approx(sums)
        assert all(v is not None for v in got["last_click.price"])

    # A record taken by node B is served by node A on the next read.
    late = {"user_id": 99, "price": 7.5, "ts": datetime.now(UTC).isoformat()}
    ingest_records(b, "clicks", [late])
    assert served(a, [99])["last_click.price"] == [7.5]

    flushed: list[int] = []
    flushers = [
        threading.Thread(target=lambda n=n: flushed.append(n.flush_ingest_logs()["clicks"]))
        for n in (a, b, a, b)
    ]
    for t in flushers:
        t.start()
    for t in flushers:
        t.join()
    total = len(sent) + 1
    assert sorted(flushed) == [0, 0, 0, total]  # one flusher took every row, the others none
    offline = b.offline.dataset(log_table("prod", "clicks")).to_table()
    assert offline.num_rows == total and len(set(offline.column("__seq").to_pylist())) == total
    assert sorted(offline.column("price").to_pylist()) == sorted(
        [p for _, p in sent.values()] + [7.5]
    )
    for root in roots:  # no node kept a log of its own
        assert not list(root.rglob("ingest_log.db"))

    # The scheduler's prune of flushed rows (as it runs it) empties the shared log; every
    # node's offline reads still see each record once, from the Parquet log.
    log = ingest_log(b)
    assert log.has_table(log_table("prod", "clicks"))
    with log.transaction() as writer:
        assert writer.delete_before(log_table("prod", "clicks"), "seq", total + 1) == total
    assert log.read_log(log_table("prod", "clicks"), ["price"], 0, 10) == []
    for node in (a, b):
        source = node.specs().push_sources["clicks"]
        assert log_arrow(node, "prod", source).num_rows == total

    # A rebuild after the prune (what `contextkit online rebuild` and a start-up on an emptied
    # Redis run) reads the pruned rows back from the offline Parquet log: the same answers.
    before = served(a, [*users, 99])
    assert rebuild_online(b.runtime).log_rows == {"clicks": total}
    for node in (a, b):
        assert served(node, [*users, 99]) == before


def test_an_ingest_while_postgres_is_down_is_a_503_and_writes_nothing(nodes, postgres_server):
    a, b, _roots = nodes
    a.specs(), b.specs()  # definitions cached, as on a serving node
    record = {"user_id": 3, "price": 1.5, "ts": datetime.now(UTC).isoformat()}
    postgres_server.stop()
    try:
        with pytest.raises(ContextKitError) as err:
            a.ingest("clicks", [{"record": record, "idempotency_key": "pg-down"}])
        assert err.value.code == "store_error" and err.value.http_status == 503
    finally:
        postgres_server.start()
    assert served(b, [3])["last_click.price"] == [None]  # nothing was applied
    assert b.ingest("clicks", [{"record": record, "idempotency_key": "pg-down"}]).accepted == 1
    assert served(a, [3])["last_click.price"] == [1.5]


def test_a_read_only_database_role_serves_but_refuses_ingest_and_writes_nothing(
    tmp_path, postgres_server, redis_server
):
    """A serving node may connect with a role that can only read the registry database: it
    serves, and an ingest on it (which writes the shared log) is a 503 naming the role and the
    refused table, writing nothing."""
    import psycopg

    owner_url = postgres_server.create_database()
    prefix = f"ck:{uuid.uuid4().hex[:8]}"

    def repo(name: str, registry: str):
        root = tmp_path / name
        root.mkdir()
        (root / "defs.py").write_text(DEFS)
        (root / "contextkit.yaml").write_text(
            f"project: shop\nregistry: {registry}\n"
            f"online_store: {{url: '{redis_server.url}', prefix: '{prefix}'}}\n"
            f"offline_store: {tmp_path / 'offline'}\n"
        )
        return root

    owner_root = repo("owner", owner_url)
    owner = contextkit.connect(owner_root, workspace="prod")
    owner.create_workspace("prod", live=True)
    owner.apply(owner.plan(owner_root))
    now = datetime.now(UTC).isoformat()
    ingest_records(owner, "clicks", [{"user_id": 1, "price": 2.5, "ts": now}])
    role = f"reader_{uuid.uuid4().hex[:8]}"  # roles are cluster-wide: one per test run
    with psycopg.connect(owner_url, autocommit=True) as con:
        con.execute(f"CREATE ROLE {role} LOGIN")
        con.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        con.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    reader_url = owner_url.replace(f"{postgres_server.user}@", f"{role}@")
    node = contextkit.connect(repo("node", reader_url), workspace="prod")
    try:
        assert served(node, [1])["last_click.price"] == [2.5]
        with pytest.raises(ContextKitError) as refused:
            node.ingest("clicks", [{"user_id": 2, "price": 9.0, "ts": now}])
        error = refused.value
        assert (error.code, error.http_status) == ("store_error", 503)
        assert role in error.message and "permission denied" in error.message
        assert "role that may write" in error.hint
        assert served(owner, [2])["last_click.price"] == [None]
        log = ingest_log(owner)
        assert len(log.read_log(log_table("prod", "clicks"), ["price"], 0, 10)) == 1
    finally:
        node.close()
        owner.close()
