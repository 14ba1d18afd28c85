"""PostgresSource (issue 14 item 5) on a real PostgreSQL 15 (tests/backends.py): a view over a
Postgres table materializes the same features as over the same rows in a Parquet file; each run
sends its time range to Postgres (checked in the server's statement log); the connection comes
from an environment variable and its password is never stored or shown.
"""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta

import psycopg
import pyarrow as pa
import pytest

import contextkit
from contextkit import PostgresSource
from contextkit.errors import ContextKitError, DefinitionError, ValidationErrors

pytest_plugins = ["backends"]

T0 = datetime(2024, 1, 1, tzinfo=UTC)
N = 2_000

VIEWS = """
from datetime import timedelta
from contextkit import Aggregate, Attribute, ContextService, Entity, {imports}, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
orders = {source}

@batch_feature_view(sources=[orders], entities=[user], mode="sql", features=[
    Aggregate(column="amount", function="sum", time_window=timedelta(days=2)),
    Aggregate(column="amount", function="count", time_window=timedelta(days=2)),
])
def spend(orders):
    return f"SELECT user_id, amount, created_at FROM {{orders}}"

@batch_feature_view(sources=[orders], entities=[user], mode="sql", features=[Attribute("amount")],
                    ttl=timedelta(days=3))
def last_order(orders):
    return f"SELECT user_id, amount, created_at FROM {{orders}}"

svc = ContextService(name="svc", features=[spend, last_order])
"""


def rows() -> list[tuple[int, float, datetime]]:
    return [(i % 37, float(i % 101), T0 + timedelta(minutes=7 * i)) for i in range(N)]


@pytest.fixture
def orders_db(postgres_server):
    url = postgres_server.create_database()
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(
            "CREATE TABLE orders (id serial PRIMARY KEY, user_id bigint NOT NULL, "
            "amount double precision, created_at timestamptz NOT NULL)"
        )
        con.execute("CREATE INDEX ON orders (created_at)")
        with con.cursor().copy("COPY orders (user_id, amount, created_at) FROM STDIN") as copy:
            for row in rows():
                copy.write_row(row)
        con.execute("ANALYZE orders")
    return url


def statements(postgres_server, marker: str) -> list[str]:
    """The statements the server logged (log_statement=all) that mention ``marker``."""
    log = (postgres_server.dir / "pg.log").read_text(errors="replace")
    return [
        line
        for line in log.splitlines()
        if re.search(r"LOG:\s+(statement|execute [^:]*):", line) and marker in line
    ]


def features(ctx, users: list[int], service: str = "svc") -> dict:
    result = ctx.service_reader(service).read(ctx.online, {"user_id": users})
    return dict(zip(result.names, result.values, strict=True))


def test_a_postgres_table_serves_what_the_same_rows_in_parquet_serve(
    make_repo, postgres_server, orders_db, monkeypatch
):
    password_url = orders_db.replace("ck@", "ck:s3cret-pw@")  # trust auth: any password works
    monkeypatch.setenv("CK_TEST_PG", password_url)
    source = (
        'PostgresSource(name="orders", connection="env:CK_TEST_PG", table="public.orders", '
        'timestamp_field="created_at")'
    )
    root = make_repo({"defs.py": VIEWS.format(imports="PostgresSource", source=source)}, name="pg")
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))

    # The same rows in a Parquet file: the reference.
    table = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows()], pa.int64()),
            "amount": pa.array([r[1] for r in rows()], pa.float64()),
            "created_at": pa.array([r[2] for r in rows()], pa.timestamp("us", tz="UTC")),
        }
    )
    file_source = (
        'FileSource(name="orders", path="data/orders.parquet", timestamp_field="created_at")'
    )
    ref_root = make_repo(
        {"defs.py": VIEWS.format(imports="FileSource", source=file_source)},
        data={"orders.parquet": table},
        name="ref",
    )
    ref = contextkit.connect(ref_root, workspace="prod")
    ref.create_workspace("prod", live=True)
    ref.apply(ref.plan(ref_root))

    # Log every statement the database receives from now on (new connections).
    dbname = orders_db.rsplit("/", 1)[1]
    with psycopg.connect(orders_db, autocommit=True) as con:
        con.execute(f"ALTER DATABASE \"{dbname}\" SET log_statement = 'all'")

    day = lambda n: T0 + timedelta(days=n)  # noqa: E731
    users = list(range(40))
    for end in (day(4), day(7), day(9.5)):
        ctx.materialize(end=end)
        ref.materialize(end=end)
        assert features(ctx, users) == features(ref, users)
    got = features(ctx, users)
    assert got["last_order.amount"][36] is not None and got["last_order.amount"][38] is None

    # Each run sent its range: the first up to its end, the next from the previous end less
    # the 2-day window, never a read of the whole table.
    sent = statements(postgres_server, '"orders"')
    assert sent, (postgres_server.dir / "pg.log").read_text(errors="replace")[-3000:]
    for line in sent:
        assert re.search(r'"created_at" < TIMESTAMPTZ', line), line
    lows = re.findall(r'"created_at" >= TIMESTAMPTZ \'([^\']+)\'', "\n".join(sent))
    assert "2024-01-03 00:00:00.000000+00" in lows  # run 2: from day 4 less the 2-day window
    assert "2024-01-06 00:00:00.000000+00" in lows  # run 3: from day 7 less the 2-day window
    for line in sent:  # only the first run reads from the start of the table, up to its end
        if ">=" not in line:
            high = re.search(r'"created_at" < TIMESTAMPTZ \'([^\']+)\'', line).group(1)
            assert high.startswith("2024-01-05 00:00:00"), line

    # The password is in no spec and nowhere in the registry's file.
    specs = ctx.specs()
    assert specs.sources["orders"].connection == "env:CK_TEST_PG"
    assert "s3cret-pw" not in specs.sources["orders"].model_dump_json()
    dump = subprocess.run(
        ["sqlite3", str(root / ".contextkit" / "registry.db"), ".dump"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    assert "s3cret-pw" not in dump


def test_a_password_in_the_connection_is_refused_masked(make_repo):
    with pytest.raises(DefinitionError) as err:
        PostgresSource(
            name="o", connection="postgresql://u:hunter2@db:5432/x", table="o", timestamp_field="t"
        )
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
    assert "env:" in (err.value.hint or "")
    with pytest.raises(DefinitionError):
        PostgresSource(name="o", connection="env:X", table="o", query="SELECT 1")


def test_an_unreachable_database_names_it_masked_and_a_bad_column_is_a_plan_error(
    make_repo, postgres_server, orders_db, monkeypatch
):
    monkeypatch.setenv("CK_TEST_PG", orders_db)
    source = (
        'PostgresSource(name="orders", connection="env:CK_TEST_PG", '
        'query="SELECT user_id, amount, created_at AS placed FROM orders", '
        'timestamp_field="created_at")'
    )
    root = make_repo({"defs.py": VIEWS.format(imports="PostgresSource", source=source)})
    ctx = contextkit.connect(root, workspace="prod")
    with pytest.raises(ValidationErrors) as err:
        ctx.plan(root)
    assert "timestamp_field 'created_at' is not a column of the query" in str(err.value.errors)

    ok = source.replace("created_at AS placed", "created_at")
    (root / "defs.py").write_text(VIEWS.format(imports="PostgresSource", source=ok))
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    monkeypatch.setenv("CK_TEST_PG", "postgresql://ck:hunter2@127.0.0.1:1/nowhere")
    with pytest.raises(ContextKitError) as failed:
        ctx.materialize(end=T0 + timedelta(days=3))
    text = f"{failed.value} {failed.value.hint}"
    assert "hunter2" not in text and "127.0.0.1:1" in text and "***" in text
    monkeypatch.delenv("CK_TEST_PG")
    with pytest.raises(ContextKitError) as unset:
        ctx.materialize(end=T0 + timedelta(days=3))
    assert "CK_TEST_PG" in str(unset.value)
