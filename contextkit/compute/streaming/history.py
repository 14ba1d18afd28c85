"""A push source's ``batch_source`` history: its rows that are not logged records.

A push source may declare a ``batch_source``, a FileSource holding the same events from before
pushing began (an export of the event table, say). Its rows and the ingest log's records are
one set of events, for offline reads (:func:`~contextkit.compute.streaming.log_arrow`) and for
the online values of the source's stream views (:mod:`~contextkit.compute.streaming.log`).

**One event, counted once.** A batch row equal, column by column, to a logged record is that
record: each logged record cancels one equal batch row (two equal rows in the file and one in
the log are two events). The rows left are the *history*, numbered ``-n..-1`` in file order: before
every logged seq, so on an event-time tie a logged record is the later arrival.

**Digests** (:func:`row_digest`) name a row by its values in the stores' native form, so the
online store can recognize a record logged later as a history row it already counts.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.errors import StoreUnavailableError
from contextkit.framework.specs import PushSourceSpec
from contextkit.framework.transformations import is_s3_path, quote
from contextkit.types import Bool, Float64, Int64, String, Timestamp, arrow_type

if TYPE_CHECKING:
    import pyarrow as pa

    from contextkit.framework.workspace import Runtime


def log_schema(source: PushSourceSpec) -> pa.Schema:
    """The Arrow schema of a push source's events: its columns, then ``__seq``."""
    import pyarrow as pa

    return pa.schema(
        [(c.name, arrow_type(c.dtype or String)) for c in source.columns] + [("__seq", pa.int64())]
    )


def batch_rows(ctx: Runtime, source: PushSourceSpec) -> pa.Table | None:
    """The batch source's rows, read as materialization reads a FileSource (local or s3://),
    with ``__seq`` ``-n..-1`` in file order; None without a batch source."""
    import duckdb
    import pyarrow as pa

    from contextkit.framework import transformations

    if not source.batch_source:
        return None
    batch = ctx.specs().sources[source.batch_source]
    con = transformations.connect_duckdb()
    try:
        cols = ", ".join(quote(c.name) for c in source.columns)
        scan = transformations.source_scan_sql(batch, ctx.config.root.resolve(), con)
        table = con.sql(f"SELECT {cols} FROM ({scan})").to_arrow_table()
    except (duckdb.Error, OSError, pa.ArrowException) as exc:
        raise StoreUnavailableError(
            f"batch_source {batch.name!r} of push source {source.name!r} cannot be read "
            f"({batch.path}): {str(exc).splitlines()[0]}",
            hint="restore the file: the stream views' online values count its rows, which are "
            "loaded the first time the online store applies the source's records",
        ) from None
    finally:
        con.close()
    seq = pa.array(range(-table.num_rows, 0), pa.int64())
    return table.append_column("__seq", seq).cast(log_schema(source))


def batch_fingerprint(ctx: Runtime, source: PushSourceSpec, batch: pa.Table | None) -> int:
    """A cheap name of the batch source as it is now (its row count, and the size and
    modification time of each local file it reads; row count only for s3://), kept with a
    history load's progress: history seqs are positions in the file, so a load must not
    resume against a file that changed (:class:`~contextkit.compute.streaming.log.HistoryLoad`).
    """
    parts = [str(0 if batch is None else batch.num_rows)]
    spec = ctx.specs().sources[source.batch_source] if source.batch_source else None
    if spec is not None and not is_s3_path(spec.path):
        path = Path(spec.path)
        path = path if path.is_absolute() else ctx.config.root.resolve() / path
        for name in sorted(glob.glob(str(path), recursive=True)):  # DuckDB reads globs too
            try:
                stat = os.stat(name)
            except OSError:
                continue
            parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.blake2b("|".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # an Int64 column's value


def history(
    source: PushSourceSpec, batch: pa.Table, logged: pa.Table, upto: int | None = None
) -> pa.Table:
    """The rows of ``batch`` that no logged record (of ``logged``, those with ``__seq <= upto``
    when given) cancels: the k-th copy of a row in the batch goes when the log holds k copies
    of it. In seq order."""
    from contextkit.framework import transformations

    if not batch.num_rows or not logged.num_rows:
        return batch
    cols = [quote(c.name) for c in source.columns]
    same = " AND ".join(f"b.{c} IS NOT DISTINCT FROM l.{c}" for c in cols)
    copy = f"row_number() OVER (PARTITION BY {', '.join(cols)} ORDER BY __seq) AS __k"
    where = "" if upto is None else f" WHERE __seq <= {int(upto)}"
    con = transformations.connect_duckdb()
    try:
        con.register("__batch", batch)
        con.register("__logged", logged)
        return (
            con.sql(
                f"WITH b AS (SELECT *, {copy} FROM __batch), "
                f"l AS (SELECT {', '.join(cols)}, {copy} FROM __logged{where}) "
                f"SELECT b.* EXCLUDE (__k) FROM b ANTI JOIN l ON {same} AND b.__k = l.__k "
                "ORDER BY b.__seq"
            )
            .to_arrow_table()
            .cast(batch.schema)
        )
    finally:
        con.close()


def history_slice(kept: pa.Table, after: int | None, limit: int) -> pa.Table:
    """The first ``limit`` rows of ``kept`` (history rows in seq order, as :func:`history`
    gives them) whose ``__seq`` is after ``after`` (from the first row when None)."""
    import pyarrow.compute as pc

    start = 0
    if after is not None and kept.num_rows:
        start = int(pc.sum(pc.less_equal(kept.column("__seq"), after)).as_py() or 0)
    return kept.slice(start, limit)


def row_digest(dtypes: Sequence[str], values: Sequence[Any]) -> str:
    """A short name of a row by its values in the stores' native form (timestamps as epoch
    microseconds, booleans as 0/1): the same for a batch row and the equal logged record,
    whichever store the log is in."""
    norm = []
    for dtype, v in zip(dtypes, values, strict=True):
        if v is not None:
            if dtype == Float64:
                v = float(v)
            elif dtype in (Int64, Timestamp, Bool):
                v = int(v)
        norm.append(v)
    text = json.dumps(norm, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
