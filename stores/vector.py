"""The vector store: embedding-view chunks in LanceDB tables, written atomically, searched fast.

``LanceVectorStore(path)`` keeps one LanceDB table per name in a local folder or on object storage
(``s3://bucket/prefix``; the core names them ``f"{workspace}__{view}"``). A table holds one row
per chunk::

    id            string   chunk id (``doc-1#0``), unique
    <key columns>          the parent document's key (one or more columns, their source types)
    chunk_index   int32    position of the chunk in its document
    char_offset   int64    where the chunk starts in the document's text
    text          string   the chunk text (full-text indexed)
    content_hash  string   sha256(model, dimension, text): decides re-encoding
    row_hash      string   also covers key, offsets, metadata: decides rewriting
    vector        fixed_size_list<float32>[dim]
    <metadata columns>     for filters, returned with each hit
    updated_at    timestamp[us, UTC]   set by the store on every written row

The key column names live in the Arrow schema metadata (``contextkit.key_columns``).

Writes (:meth:`LanceVectorStore.apply_changes`) are one LanceDB commit: upserts stream into a
single ``merge_insert`` on ``id`` that also deletes the given ids
(``when_not_matched_by_source_delete``). Lance commits a new table version only when the whole
stream has been written, so a failure half-way (an encoder error raised from the upserts
iterator) commits nothing and readers keep seeing the previous version; as a second line of
defence the store restores the version it started from if the table moved anyway, and drops a
table it created in the failed call. Old versions stay restorable (:meth:`restore`) until
:meth:`ensure_indexes` prunes those older than a week.

Search (:meth:`LanceVectorStore.search`): ``mode="vector"`` (cosine similarity, score =
1 - cosine distance), ``"text"`` (BM25 over the full-text index on ``text``, score = BM25) or
``"hybrid"`` (both, fused by reciprocal rank fusion, score = sum of 1 / (60 + rank)). Filters are a
dict validated against the table's key and metadata columns and compiled to a LanceDB
``Expr`` (never a spliced SQL string), see :func:`compile_filter`.

Latency (measured on this 2-core machine while other jobs ran; 384-dim vectors, top 10): a
LanceDB query costs 8-12 ms whatever the size up to 20k rows (vector, filtered vector or BM25),
while the same exact search in numpy takes ~0.7 ms at 1k rows, ~2 ms at 5k and ~5 ms at 20k,
including the ~0.3 ms version check. So tables up to ``exact_search_max_rows`` (default 20,000)
are searched exactly in numpy, from a per-process copy of the table (about rows x dim x 4 bytes)
keyed by table version, so another writer's commit is seen on the next query. The copies are
bounded per table (``exact_cache_max_bytes``) and together (``exact_cache_total_bytes``, at most
``exact_cache_tables`` tables), least recently used first out; a table whose copy is not let in
is searched by LanceDB (``_vector_copies``). Its results are LanceDB's flat search's: same
cosine distance (to float rounding), filters evaluated with the same null semantics (pyarrow
compute), ties ordered by id in both paths; the Lance path is used when a filter touches a
float column holding NaN (SQL and IEEE order NaN differently). Hybrid queries still pay
LanceDB's full-text query (~8 ms). ``exact_search_max_rows=0`` turns the copy off. Above the
threshold the ANN index built by :meth:`LanceVectorStore.ensure_indexes` serves vector queries.

On S3 (``s3://bucket/prefix``) LanceDB reads and writes the object store natively, with the
endpoint, region and credentials of the standard AWS variables
(:class:`~contextkit.stores.objectstore.S3Settings`, so MinIO, R2 and moto work) and bounded
timeouts and retries. What it costs: every LanceDB call is one or more object-store requests,
so a query LanceDB answers (full-text, hybrid's text leg, ANN above ``exact_search_max_rows``)
takes tens to hundreds of ms on AWS instead of ~10 ms on a local disk, and opening a table or
loading the exact-search copy downloads it. Small tables therefore keep being served from the
in-memory copy: a vector search costs the one version check a query makes (one request; pass
``read_consistency_interval=timedelta(seconds=1)`` to skip it between checks, so other nodes'
commits are seen within a second) plus the numpy search. Keep large, hot tables on a local disk
of the serving nodes if their latency matters. A missing bucket, refused credentials and an
unreachable endpoint are one :class:`~contextkit.stores.errors.ObjectStoreUnavailable` each,
checked with one request when the store opens. Nothing of the store is a local file on S3:
:attr:`LanceVectorStore.path` raises there (use :attr:`~LanceVectorStore.uri` and
:meth:`~LanceVectorStore.sample_vectors`).

The store is one class assembled from mixins, one concern per file (import everything from
here; the files are private):

- ``_vector_common``: system columns, limits, the errors and the failure-translating decorators;
- ``_vector_filters``: filter dicts -> conditions -> LanceDB ``Expr`` / Arrow mask;
- ``_vector_tables``: listing, opening, versions and checkouts, restore, the pipeline's reads;
- ``_vector_writes``: ``apply_changes`` (one commit, all or nothing) and the table schema;
- ``_vector_plan``: indexes, and the calibrated search plan (exact or ANN, query parameters);
- ``_vector_timing``: timing configurations in interleaved rounds, and the rule choosing among them;
- ``_vector_copies``: the in-memory copies, least recently used first out under the bounds;
- ``_vector_query``: one ranked list: exact numpy search, LanceDB vector search, BM25;
- ``_vector_fusion``: hits, and hybrid fusion (RRF, normalised-score blend);
- ``_vector_search``: ``search`` and ``warm``: the path per request, per-version caches.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from contextkit.stores._vector_common import (
    KEY_COLUMNS_METADATA,
    MAX_TOP_K,
    STORE_NAME,
    SYSTEM_COLUMNS,
    InvalidFilterError,
    InvalidSearchError,
    VectorSchemaError,
    VectorStoreError,
    VectorTableLostError,
    VectorTableMissingError,
    VectorTableUnreadableError,
)
from contextkit.stores._vector_copies import InMemoryCopies
from contextkit.stores._vector_filters import (
    FILTER_OPERATORS,
    MAX_IN_VALUES,
    Condition,
    compile_filter,
    filter_mask,
    parse_filter,
)
from contextkit.stores._vector_fusion import RRF_K
from contextkit.stores._vector_fusion import blend as _blend
from contextkit.stores._vector_fusion import rrf_fuse as _fuse
from contextkit.stores._vector_plan import (
    CALIBRATION_K,
    CALIBRATION_SAMPLE,
    CALIBRATION_TARGET,
    RECALIBRATE_GROWTH,
    IndexReport,
    SearchPlan,
    SearchPlanning,
)
from contextkit.stores._vector_plan import ann_config as _ann_config
from contextkit.stores._vector_search import Layout, VectorSearch
from contextkit.stores._vector_tables import ChunkHashes, TableAccess, local_file_system
from contextkit.stores._vector_writes import ApplyResult, TableWrites
from contextkit.stores.objectstore import Location, S3Settings, is_s3, open_location

__all__ = [
    "CALIBRATION_K",
    "CALIBRATION_SAMPLE",
    "CALIBRATION_TARGET",
    "FILTER_OPERATORS",
    "KEY_COLUMNS_METADATA",
    "MAX_IN_VALUES",
    "MAX_TOP_K",
    "RECALIBRATE_GROWTH",
    "RRF_K",
    "SYSTEM_COLUMNS",
    "ApplyResult",
    "ChunkHashes",
    "Condition",
    "IndexReport",
    "InvalidFilterError",
    "InvalidSearchError",
    "LanceVectorStore",
    "SearchPlan",
    "VectorSchemaError",
    "VectorStoreError",
    "VectorTableLostError",
    "VectorTableMissingError",
    "VectorTableUnreadableError",
    "compile_filter",
    "filter_mask",
    "parse_filter",
]
# Older names some tests and benches import.
_LEGACY = (_ann_config, _blend, _fuse)


class LanceVectorStore(TableAccess, TableWrites, SearchPlanning, VectorSearch):
    """Embedding-view tables in a LanceDB folder: local, or ``s3://bucket/prefix`` (``s3``: the
    S3 settings, default from the AWS variables; see the module docstring for what S3 costs).

    ``read_consistency_interval`` (default 0: every read checks for a newer version) makes writes
    from other processes visible; on a local file system a search makes that check with one ``stat``
    of the table's version folder while the table is unchanged. ``exact_search_max_rows`` bounds the
    numpy exact-search cache of an uncalibrated table (0 disables it); ``exact_cache_max_bytes`` the
    vectors kept in memory for one table, ``exact_cache_total_bytes`` for all of them together
    (:meth:`memory` tells what is held). ``ann_min_rows`` is where :meth:`ensure_indexes` starts
    considering an ANN index; up to ``index_candidates_max_rows`` rows it builds the HNSW kinds that
    can win and keeps the one measured cheaper (see :func:`index_candidates`; set
    ``skip_unwinnable_indexes = False`` to build every kind). Thread-safe.

    >>> store = LanceVectorStore(tmp_path / "vectors")                       # doctest: +SKIP
    >>> store.apply_changes("dev__docs", plan.batches(), plan.delete_ids,
    ...                     dim=384, key_columns=["doc_id"])                 # doctest: +SKIP
    >>> store.search("dev__docs", vector=q, text="SKU-QJW-2363", mode="hybrid",
    ...              filter={"price": {"lt": 50}})                           # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        *,
        s3: S3Settings | None = None,
        read_consistency_interval: timedelta | None = timedelta(0),
        exact_search_max_rows: int = 20_000,
        ann_min_rows: int = 20_000,
        exact_cache_tables: int = 8,
        exact_cache_max_bytes: int = 512 * 2**20,
        index_candidates_max_rows: int = 200_000,
        exact_cache_total_bytes: int = 2 * 2**30,
    ) -> None:
        import lancedb

        self.exact_search_max_rows = exact_search_max_rows
        self.exact_cache_max_bytes = exact_cache_max_bytes
        self.ann_min_rows = ann_min_rows
        self.index_candidates_max_rows = index_candidates_max_rows
        self.calibration_sample = CALIBRATION_SAMPLE  # rows sampled for calibration queries
        # False: ensure_indexes builds every candidate index kind, even those that cannot win
        self.skip_unwinnable_indexes = True
        self._loc: Location | None = None
        self._local: Path | None = None
        if is_s3(path):
            self._loc = open_location(path, settings=s3)
            self.uri = self._loc.url
            # One bounded request names the problem within seconds; LanceDB's own listing
            # retries a failing endpoint for a long while before it gives up.
            self._loc.check(STORE_NAME)
            assert self._loc.settings is not None
            with self._loc.translating(STORE_NAME, "opening the LanceDB database"):
                self._db = lancedb.connect(
                    self.uri,
                    storage_options=self._loc.settings.lance_storage_options(),
                    read_consistency_interval=read_consistency_interval,
                )
        else:
            self._local = Path(path)
            self._local.mkdir(parents=True, exist_ok=True)
            self.uri = str(self._local)
            self._db = lancedb.connect(
                self.uri, read_consistency_interval=read_consistency_interval
            )
        self._tables: dict[str, Any] = {}
        # Searches' version checks (TableAccess._latest_version): table -> (mtime of its
        # _versions folder, the version LanceDB gave while the folder had that mtime).
        self._stat_versions = (
            self._local is not None
            and read_consistency_interval == timedelta(0)
            and local_file_system(self._local)
        )
        self._seen_versions: dict[str, tuple[int, int]] = {}
        self._exact = InMemoryCopies(exact_cache_tables, exact_cache_total_bytes)
        self._layouts: dict[str, Layout] = {}
        self._plans: dict[str, tuple[SearchPlan | None, float]] = {}  # table -> (plan, read at)
        self._lock = threading.RLock()  # guards the dicts only; never held across I/O-heavy work
        self._write_locks: dict[str, threading.Lock] = {}
        # Tables this process opened or created and did not drop: if one is missing later, its
        # files were deleted behind this process's back (VectorTableLostError, not "missing").
        self._opened: set[str] = set()

    @property
    def exact_cache_total_bytes(self) -> int:
        """The bound on the vectors of every in-memory copy this store keeps, together."""
        return self._exact.max_bytes

    @exact_cache_total_bytes.setter
    def exact_cache_total_bytes(self, value: int) -> None:
        self._exact.max_bytes = value

    def _write_lock(self, table: str) -> threading.Lock:
        """Serializes writes to one table in this process (searches never wait on it)."""
        with self._lock:
            return self._write_locks.setdefault(table, threading.Lock())

    def __repr__(self) -> str:
        return f"LanceVectorStore({self.uri!r})"

    @property
    def path(self) -> Path:
        """The local folder of the store; a store on S3 has none (this raises: use :attr:`uri`,
        and :meth:`sample_vectors` instead of opening the folder)."""
        if self._local is None:
            raise VectorStoreError(
                f"vector store {self.uri} is on object storage: it has no local path",
                hint="use LanceVectorStore.uri, and LanceVectorStore.sample_vectors() to read "
                "vectors",
            )
        return self._local
