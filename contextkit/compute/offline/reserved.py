"""Reserved column names of the query over the caller's events, where each view's data comes from,
and the small records that describe one request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from contextkit.framework.specs import (
    FeatureViewSpec,
    RealtimeFeatureViewSpec,
    StreamFeatureViewSpec,
)

if TYPE_CHECKING:
    pass


# Internal names all start with RESERVED; events columns with that prefix are refused, so an
# internal column can never be confused with one of the events' own.
RESERVED = "__ck_"


ROW = "__ck_row"


EVENT_TS = "__ck_ts"


EVENTS = "__ck_events"


FILE = "__ck_file"


TIME = "__ck_t"


INPUT = "__ck_input"


LOG = "__ck_log"


HIDDEN = "__ck_in__"  # a realtime view's input feature that the result does not show


OFFLINE_STORE = "offline_store"


SOURCE = "source"


INGEST_LOG = "ingest_log"


REALTIME = "realtime"


BATCH_ROWS = 65_536


# Any feature view: batch, stream or realtime.
AnyView = FeatureViewSpec | StreamFeatureViewSpec | RealtimeFeatureViewSpec


@dataclass(frozen=True)
class ViewRequest:
    view: AnyView
    features: list[str]  # what is computed: the selected features, or all for a realtime input
    use: str  # OFFLINE_STORE, SOURCE, INGEST_LOG or REALTIME
    files: list[PurePath]
    # OFFLINE_STORE: the offline table as a pyarrow dataset (local or S3), scanned by DuckDB.
    dataset: Any = None
    # On Ray: (join keys, partitions, this partition): only the view's rows whose keys hash to
    # this partition are read, as only its events' entities are joined (when the keys' types
    # are the same on both sides, so that the hashes are).
    bucket: tuple[tuple[str, ...], int, int] | None = None


@dataclass
class JoinPlan:
    """What the driver decides once, before any query runs: where each view is read from, and
    the data that only it can read (the ingest logs). Picklable: the Ray engine sends it to every
    partition's task, which builds the same query over its share of the events."""

    requests: list[ViewRequest]
    outputs: list[tuple[AnyView, list[str]]]
    # (view, feature) -> its column in the query's result (hidden realtime inputs included)
    where: dict[tuple[str, str], str]
    inputs: dict[str, AnyView]  # every view a realtime view reads, by name
    logs: dict[str, Any]  # push source name -> its ingest log as an Arrow table


@dataclass
class Prepared:
    """One run's plan: the query of every SQL-computed column, and what Python adds after."""

    query: str
    columns: list[str]  # the events' own columns, in order
    outputs: list[tuple[AnyView, list[str]]]
    realtime: list[ViewRequest]
    # (view, feature) -> its column in the query's result (hidden realtime inputs included)
    where: dict[tuple[str, str], str]
    inputs: dict[str, AnyView]  # every view a realtime view reads, by name
