"""Push sources and stream feature views: ingest, online tiles, reads, and the offline log.

**Ingest** (``ingest_records``): records are checked against the push source's schema, each error
reported by its index. With the embedded stores, one SQLite transaction (in the online store's
file, ``synchronous=FULL``) appends them to the source's ingest log, updates the latest values of
attribute stream views and merges them into the tiles of aggregate stream views. Otherwise they
are committed to the durable log first (the PostgreSQL registry's, whatever the online store; see
``durable``) and then applied to the online store. When the call returns, the write is durable
and the next read sees it. A record whose idempotency key was seen before is skipped.

**Tiles.** An aggregate stream view keeps one row per entity and ``aggregation_interval`` tile
with partial aggregates of the tile's events: counts, sums, min, max, the last value (by event
time, then arrival), the distinct values with their latest time, and the newest event time. A read
at time ``t`` combines the ``window / interval`` tiles ending with the tile that holds ``t``, so
it costs one row per tile, whatever the number of events. An event is counted in the tile of its
own timestamp, whenever it arrives (late and out-of-order events land in their past tile); tiles
older than the view's largest window (or ttl) are deleted as new events arrive.

**Offline**, the same definitions are computed from the log (``stream_offline_sql``), as of any
time ``t``: the tiles of the window ending with ``t``'s tile, and only events with a timestamp at
or before ``t``. Online and offline agree whenever no event is timestamped after the read time
(ingest refuses events more than ``ingest.max_future_s`` ahead of the server's clock).

The package, one idea per module: ``records`` (checking pushed records, value forms),
``ingest`` (``ingest_records``), ``durable`` (which store holds the durable ingest log),
``log`` (applying the log online, restoring stream views), ``history`` (a ``batch_source``'s rows
that are not logged records, counted with the log online and offline),
``latest`` and ``tiles`` (the online state of attribute and aggregate stream views), ``reads``
(aggregate reads over tiles), ``flush`` (the log's offline Parquet side) and ``offline_sql``
(the views as SQL over the log). The names below are what the rest of contextkit imports.
"""

from contextkit.compute.streaming.durable import ingest_log
from contextkit.compute.streaming.flush import flush_log, log_arrow
from contextkit.compute.streaming.ingest import ingest_records
from contextkit.compute.streaming.log import (
    applied_table,
    apply_log,
    catch_up,
    last_ingest_time,
    load_histories,
    needs_catch_up,
    rebuild_stream_views,
    stream_views_to_rebuild,
)
from contextkit.compute.streaming.offline_sql import stream_offline_sql
from contextkit.compute.streaming.reads import read_stream_aggregates
from contextkit.compute.streaming.records import (
    EVENT_TIMESTAMP,
    US,
    IngestResult,
    Record,
    check_records,
)
from contextkit.compute.streaming.tiles import retained_us, tile_of
from contextkit.errors import IngestError

__all__ = [
    "EVENT_TIMESTAMP",
    "US",
    "IngestError",
    "IngestResult",
    "Record",
    "applied_table",
    "apply_log",
    "catch_up",
    "check_records",
    "flush_log",
    "ingest_log",
    "ingest_records",
    "last_ingest_time",
    "load_histories",
    "needs_catch_up",
    "log_arrow",
    "read_stream_aggregates",
    "rebuild_stream_views",
    "retained_us",
    "stream_offline_sql",
    "stream_views_to_rebuild",
    "tile_of",
]
