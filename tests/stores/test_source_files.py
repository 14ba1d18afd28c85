"""FileSource paths, local or on S3 (a real moto server), as datasets DuckDB scans.

The story: the same orders are written as files in a local folder and in a bucket; a file, a
glob, a recursive glob and a folder each give DuckDB the same rows from either place, as its own
``read_parquet`` would locally; a path that matches nothing and a missing bucket say so.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from contextkit.framework.transformations import connect_duckdb
from contextkit.stores.errors import BucketMissing, MissingError
from contextkit.stores.objectstore import S3Settings
from contextkit.stores.source_files import resolve_source_files, source_dataset

DAYS = ["2024-05-01", "2024-05-02"]


def orders(day: str, n: int = 3) -> pa.Table:
    ts = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return pa.table(
        {
            "order_id": pa.array([f"{day}-{i}" for i in range(n)]),
            "amount": pa.array([float(i) for i in range(n)]),
            "ts": pa.array([ts] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def write_orders(filesystem, base: str) -> None:
    for day in DAYS:
        filesystem.create_dir(f"{base}/events/day={day}")  # local folders; no-op markers on S3
        pq.write_table(
            orders(day), f"{base}/events/day={day}/part-0.parquet", filesystem=filesystem
        )
    with filesystem.open_output_stream(f"{base}/events/README.txt") as out:
        out.write(b"not data")
    with filesystem.open_output_stream(f"{base}/orders.csv") as out:
        pacsv.write_csv(orders(DAYS[0]), out)
    with filesystem.open_output_stream(f"{base}/orders.jsonl") as out:
        out.write(b'{"order_id": "a", "amount": 1.5}\n{"order_id": "b", "amount": 2.5}\n')


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path) -> tuple[str, S3Settings | None, Path]:
    """``(prefix, settings, root)``: where the files are, and the repo root for local paths."""
    from pyarrow import fs

    if request.param == "local":
        (tmp_path / "data" / "empty-folder").mkdir(parents=True)
        write_orders(fs.LocalFileSystem(), str(tmp_path / "data"))
        return "data", None, tmp_path
    server = request.getfixturevalue("s3_server")
    bucket = server.create_bucket()
    settings = S3Settings(
        endpoint=server.endpoint, access_key=server.access_key, secret_key=server.secret_key
    )
    write_orders(settings.filesystem(), f"{bucket}/raw")
    return f"s3://{bucket}/raw", settings, tmp_path


def scan(place, path: str, format: str = "parquet") -> list[tuple]:
    prefix, settings, root = place
    dataset = source_dataset(f"{prefix}/{path}", format, root=root, s3=settings)
    con = connect_duckdb()
    try:
        con.register("src", dataset)
        return con.execute("SELECT order_id, amount FROM src ORDER BY ALL").fetchall()
    finally:
        con.close()


def expected(*days: str) -> list[tuple]:
    return sorted((r["order_id"], r["amount"]) for d in days for r in orders(d).to_pylist())


def test_a_file_a_glob_and_a_folder_give_duckdb_the_rows(place):
    assert scan(place, "events/day=2024-05-01/part-0.parquet") == expected(DAYS[0])
    assert scan(place, "events/day=*/*.parquet") == expected(*DAYS)
    assert scan(place, "events/**/part-?.parquet") == expected(*DAYS)
    assert scan(place, "events/day=2024-05-0[2]/*.parquet") == expected(DAYS[1])
    assert scan(place, "events") == expected(*DAYS), "a folder: its Parquet files, not the README"


def test_csv_and_jsonl_sources_are_read(place):
    assert scan(place, "orders.csv", "csv") == expected(DAYS[0])
    assert scan(place, "orders.jsonl", "jsonl") == [("a", 1.5), ("b", 2.5)]


def test_the_timestamps_reach_duckdb_as_timestamptz(place):
    prefix, settings, root = place
    con = connect_duckdb()
    con.register("src", source_dataset(f"{prefix}/events", "parquet", root=root, s3=settings))
    [(kind,)] = con.execute("SELECT DISTINCT typeof(ts) FROM src").fetchall()
    con.close()
    assert kind == "TIMESTAMP WITH TIME ZONE"


def test_a_path_that_matches_nothing_is_missing(place):
    prefix, settings, root = place
    for path in ("nope.parquet", "events/day=1999-*/*.parquet", "empty-folder"):
        _, files = resolve_source_files(f"{prefix}/{path}", root=root, s3=settings)
        assert files == []
        with pytest.raises(MissingError, match="no file matches"):
            source_dataset(f"{prefix}/{path}", "parquet", root=root, s3=settings)


def test_a_missing_bucket_is_named(s3_server):
    settings = S3Settings(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    with pytest.raises(BucketMissing, match="bucket 'no-such-source' does not exist"):
        source_dataset("s3://no-such-source/orders.parquet", "parquet", s3=settings)
