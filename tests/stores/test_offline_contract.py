"""The offline store's contract, the same on a local folder and on S3 (a real moto server).

The story: a job stages a table's rows and publishes them; readers see whole versions only, from
this store or from another process's; a range replaces its own rows; a writer killed between
moving its files in and committing the manifest leaves the previous version served, and garbage
collection later removes what it left. On S3, a missing bucket, refused credentials and an
unreachable endpoint are each one clear error, within the timeouts, and write nothing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from contextkit.framework.transformations import connect_duckdb
from contextkit.stores.errors import (
    BucketMissing,
    CredentialsRefused,
    EndpointUnreachable,
    StoreUnavailable,
    WriteConflict,
)
from contextkit.stores.objectstore import S3Settings
from contextkit.stores.offline import GC_GRACE_S, ParquetOfflineStore
from tests.stores.s3_failures import closed_endpoint, s3_auth_server, silent_endpoint

__all__ = ["s3_auth_server", "silent_endpoint"]  # fixtures used below

TABLE = "prod/spend"
INPUTS = "prod/spend/inputs"
D = datetime(2024, 5, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def at(days: float = 0, **kwargs) -> datetime:
    return D + timedelta(days=days, **kwargs)


def settings_for(server, **overrides) -> S3Settings:
    return S3Settings(
        endpoint=server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        region=server.region,
        **overrides,
    )


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path) -> tuple[str, S3Settings | None]:
    """Where a store lives: ``(location, settings)``. Two stores on one location are two
    processes sharing the data."""
    if request.param == "local":
        return str(tmp_path / "offline"), None
    server = request.getfixturevalue("s3_server")
    return f"s3://{server.create_bucket()}/team/offline", settings_for(server)


@pytest.fixture
def store(location) -> ParquetOfflineStore:
    root, settings = location
    return ParquetOfflineStore(root, s3=settings)


@pytest.fixture
def con():
    con = connect_duckdb()
    yield con
    con.close()


def rows_query(rows: list[tuple[int, datetime, float]]) -> str:
    values = ", ".join(
        f"({u}, TIMESTAMPTZ '{ts.isoformat()}', CAST({amount!r} AS DOUBLE))"
        for u, ts, amount in rows
    )
    return f"SELECT * FROM (VALUES {values}) AS t(user_id, event_timestamp, amount)"


def write(store, con, rows, start=None, end=None, table=TABLE, owner=None, commit=True):
    staged = store.stage_range(
        con, table, rows_query(rows), "event_timestamp", start, end, start is None, owner
    )
    if commit:
        staged.commit()
    return staged


def read(store, con, table=TABLE) -> list[tuple]:
    """The table as a reader of its current version sees it (a dataset registered in DuckDB)."""
    dataset = store.dataset(table)
    if dataset is None:
        return []
    con.register("t", dataset)
    try:
        return con.execute("SELECT user_id, event_timestamp, amount FROM t ORDER BY ALL").fetchall()
    finally:
        con.unregister("t")


def later() -> float:
    """A moment past the grace period (files on S3 cannot be aged by hand)."""
    return time.time() + GC_GRACE_S + 1


HISTORY = [
    (1, at(0, hours=1), 1.0),
    (2, at(0, hours=23, minutes=59, seconds=59, microseconds=999_999), 2.0),
    (1, at(1, hours=12), 4.0),
    (2, at(2, hours=20), 7.0),
]


def test_a_published_table_is_read_whole_by_another_store(store, location, con):
    assert store.dataset(TABLE) is None and store.files(TABLE) == []

    staged = write(store, con, HISTORY, commit=False)
    assert staged.rows == len(HISTORY)
    assert read(store, con) == [], "staged rows are invisible"
    new = staged.new_rows()
    assert new is not None and new.to_table().num_rows == len(HISTORY)

    staged.commit()

    other = ParquetOfflineStore(location[0], s3=location[1])
    assert read(other, con) == sorted(HISTORY)
    assert sorted(p.parent.name for p in other.files(TABLE)) == [
        "day=2024-05-01",
        "day=2024-05-02",
        "day=2024-05-03",
    ]
    assert not staged.local_dir.exists(), "the local copy goes with the commit"


def test_a_range_replaces_its_rows_and_a_full_write_replaces_everything(store, con):
    write(store, con, HISTORY)
    recomputed = [(3, at(1, hours=13), 30.0)]

    write(store, con, recomputed, start=at(1), end=at(2))

    outside = [r for r in HISTORY if not at(1) <= r[1] < at(2)]
    assert read(store, con) == sorted(outside + recomputed)

    fresh = [(5, at(10, hours=1), 0.5)]
    write(store, con, fresh)
    assert read(store, con) == fresh


def test_an_aborted_write_leaves_the_table_and_no_staging(store, con):
    write(store, con, HISTORY)
    before = store.files(TABLE)

    staged = write(store, con, [(9, at(1, hours=3), 9.0)], start=at(1), end=at(2), commit=False)
    staged.abort()

    assert store.files(TABLE) == before
    assert read(store, con) == sorted(HISTORY)
    assert store.collect_garbage(TABLE, grace_s=0, job_running=lambda _j: False) == []


def test_append_adds_a_file_readers_see_whole(store, con):
    table = "prod__clicks__log"
    rows = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "event_timestamp": pa.array([at(0), at(1)], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([1.5, 2.5]),
        }
    )
    store.append(table, rows)
    store.append(table, rows.slice(0, 1))

    assert len(store.files(table)) == 2
    assert read(store, con, table) == sorted([(1, at(0), 1.5), (2, at(1), 2.5), (1, at(0), 1.5)])


def test_a_replaced_version_is_collected_after_the_grace_period(store, con):
    write(store, con, HISTORY)
    old = set(store.files(TABLE))
    write(store, con, HISTORY[:1])
    current = set(store.files(TABLE))

    assert store.collect_garbage(TABLE) == [], "a reader may still use the old files"
    found = store.collect_garbage(TABLE, now=later())

    assert {g.path for g in found} >= old
    assert not {g.path for g in found} & current, "listed files are never collected"
    assert {g.reason for g in found} <= {
        "replaced by a newer version of the table",
        "note of replaced files",
    }
    assert store.collect_garbage(TABLE, now=later()) == [], "nothing left to collect"
    assert read(store, con) == HISTORY[:1]


def test_staging_of_a_dead_job_goes_and_a_running_jobs_stays(store, con):
    write(store, con, HISTORY)
    running = write(store, con, HISTORY[:1], owner="job_alive", commit=False)
    dead = write(store, con, HISTORY[:2], owner="job_dead", commit=False)

    found = store.collect_garbage(
        TABLE, grace_s=0, job_running={"job_alive": True, "job_dead": False}.get
    )

    assert [g.path for g in found] == [dead.staging]
    assert "job_dead" in found[0].reason
    running.commit()
    assert read(store, con) == HISTORY[:1]


def test_nested_tables_are_listed_and_collected_on_their_own(store, con):
    write(store, con, HISTORY)
    write(store, con, HISTORY[:1], table=INPUTS)
    write(store, con, HISTORY[:2], table="dev/other")

    first_write = write(store, con, HISTORY[:1], table=f"{TABLE}/fresh", owner="gone", commit=False)

    assert store.tables() == ["dev/other", TABLE, f"{TABLE}/fresh", INPUTS]
    assert store.collect_garbage(TABLE, now=later(), job_running=lambda _j: False) == []
    found = store.collect_garbage(f"{TABLE}/fresh", now=later(), job_running=lambda _j: False)
    assert [g.path for g in found] == [first_write.staging], "its own call collects it"
    assert read(store, con, INPUTS) == HISTORY[:1]

    store.drop_table(TABLE)
    assert store.tables() == ["dev/other"], "nested tables go with their parent"
    assert store.dataset(TABLE) is None and store.dataset(INPUTS) is None


def test_a_second_writer_from_the_same_version_gets_a_conflict(store, con):
    write(store, con, HISTORY)
    first = write(store, con, HISTORY[:1], owner="job_a", commit=False)
    second = write(store, con, HISTORY[:2], owner="job_b", commit=False)

    first.commit()
    with pytest.raises(WriteConflict, match="another writer"):
        second.commit()
    second.abort()

    assert read(store, con) == HISTORY[:1], "the first writer's version stands"


def test_a_listed_file_that_is_gone_is_a_store_error_naming_it(store, location, con):
    write(store, con, HISTORY)
    filesystem, root = raw_filesystem(location)
    victim = store.files(TABLE)[0].relative_to(store.root).as_posix()
    filesystem.delete_file(f"{root}/{victim}")

    with pytest.raises(StoreUnavailable, match="1 of the 3 file"):
        store.dataset(TABLE)


# -- a writer killed between moving its files in and committing the manifest ---------------------

KILLED_WRITER = """
import os, signal, sys
from datetime import datetime, UTC
from contextkit.framework.transformations import connect_duckdb
from contextkit.stores.objectstore import S3Settings
from contextkit.stores.offline import ParquetOfflineStore

root, endpoint = sys.argv[1], sys.argv[2]
settings = None
if endpoint:
    settings = S3Settings(endpoint=endpoint, access_key="testing", secret_key="testing")
store = ParquetOfflineStore(root, s3=settings)
staged = store.stage_range(
    connect_duckdb(),
    "prod/spend",
    "SELECT 42 AS user_id, TIMESTAMPTZ '2024-05-02 10:00:00+00' AS event_timestamp, "
    "CAST(4.2 AS DOUBLE) AS amount",
    "event_timestamp", None, None, True, "job_killed",
)

def die(*args, **kwargs):  # the files are moved in and the old ones noted: die before the swap
    print("moved-in", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

store._write_manifest = die
staged.commit()
"""


def test_a_writer_killed_before_the_manifest_leaves_the_previous_version(
    store, location, con, tmp_path
):
    write(store, con, HISTORY)
    before = store.files(TABLE)
    root, settings = location
    script = tmp_path / "killed_writer.py"
    script.write_text(textwrap.dedent(KILLED_WRITER))

    done = subprocess.run(
        [sys.executable, str(script), root, settings.endpoint if settings else ""],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )

    assert done.returncode == -9 and "moved-in" in done.stdout, done.stderr
    fresh = ParquetOfflineStore(root, s3=settings)
    assert fresh.files(TABLE) == before
    assert read(fresh, con) == sorted(HISTORY), "the previous version is served"

    # What the killed job left: its files moved in but never listed, and its staging folder.
    assert fresh.collect_garbage(TABLE, job_running=lambda _j: None) == [], "within the grace"
    found = fresh.collect_garbage(TABLE, job_running=lambda _j: False, now=later())
    reasons = {g.reason for g in found}
    assert "listed by no manifest (left by an interrupted write)" in reasons
    assert "staged by job job_killed, which is no longer running" in reasons
    assert not {g.path for g in found} & set(before)
    assert read(fresh, con) == sorted(HISTORY)

    write(fresh, con, HISTORY[:1])  # and the table keeps working
    assert read(store, con) == HISTORY[:1]


# -- object-store failures (S3 only) ------------------------------------------------------------


def test_a_missing_bucket_is_one_clear_error(s3_server, con):
    store = ParquetOfflineStore("s3://no-such-bucket-ck/offline", s3=settings_for(s3_server))

    for attempt in (
        lambda: store.files(TABLE),
        lambda: store.dataset(TABLE),
        lambda: write(store, con, HISTORY),
    ):
        with pytest.raises(BucketMissing, match="bucket 'no-such-bucket-ck' does not exist") as e:
            attempt()
        assert "aws s3 mb" in e.value.hint


def test_refused_credentials_are_one_clear_error_and_write_nothing(s3_auth_server, con):
    bucket = s3_auth_server.create_bucket()
    location = (f"s3://{bucket}/o", settings_for(s3_auth_server))
    good = ParquetOfflineStore(location[0], s3=location[1])
    write(good, con, HISTORY)
    objects = everything(location)

    for key, secret in [(s3_auth_server.access_key, "wrong-secret-1"), ("AKIAUNKNOWN", "x-2")]:
        bad = ParquetOfflineStore(
            f"s3://{bucket}/o",
            s3=S3Settings(endpoint=s3_auth_server.endpoint, access_key=key, secret_key=secret),
        )
        with pytest.raises(CredentialsRefused, match="refused the credentials") as e:
            write(bad, con, HISTORY[:1])
        assert secret not in str(e.value) and secret not in (e.value.hint or "")
        assert "AWS_SECRET_ACCESS_KEY" in e.value.hint

    assert everything(location) == objects, "nothing was written"
    assert read(good, con) == sorted(HISTORY)


def test_an_unreachable_endpoint_is_an_error_not_a_hang(silent_endpoint, con):
    for endpoint in (closed_endpoint(), silent_endpoint):
        store = ParquetOfflineStore(
            "s3://some-bucket/offline",
            s3=S3Settings(
                endpoint=endpoint,
                access_key="k",
                secret_key="s",
                connect_timeout_s=1,
                request_timeout_s=1,
                max_attempts=1,
            ),
        )
        with pytest.raises(EndpointUnreachable, match="cannot be reached") as e:
            store.files(TABLE)
        assert "AWS_ENDPOINT_URL" in e.value.hint


def test_a_password_in_the_endpoint_is_masked(con):
    endpoint = closed_endpoint().replace("http://", "http://user:hunter2@")
    store = ParquetOfflineStore(
        "s3://some-bucket/offline",
        s3=S3Settings(endpoint=endpoint, access_key="k", secret_key="s", max_attempts=1),
    )
    with pytest.raises(EndpointUnreachable) as e:
        store.files(TABLE)
    assert "hunter2" not in str(e.value) and "user:***@" in str(e.value)


def test_the_store_reads_its_settings_from_the_aws_variables(s3_server, monkeypatch, con):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store = ParquetOfflineStore(f"s3://{s3_server.create_bucket()}/env")

    write(store, con, HISTORY)

    assert read(store, con) == sorted(HISTORY)
    assert store.url.startswith("s3://") and repr(store).startswith("ParquetOfflineStore('s3://")


def raw_filesystem(location) -> tuple:
    """The location's pyarrow filesystem and root, opened without the store."""
    from pyarrow import fs

    root, settings = location
    if settings is None:
        return fs.LocalFileSystem(), str(Path(root).absolute())
    return settings.filesystem(), root.removeprefix("s3://")


def everything(location) -> set[str]:
    """Every object (file) under the location."""
    from pyarrow import fs

    filesystem, root = raw_filesystem(location)
    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    return {i.path for i in infos if i.type == fs.FileType.File}
