"""The batch-encode pipeline: rows -> chunks -> only new or changed chunks encoded -> Arrow batches.

It knows nothing of LanceDB: it reads the store's current ``chunk id -> (content hash, row hash)``
map and produces what the store must apply. Two passes, so the store gets everything it needs for
one atomic write:

1. :func:`plan_encode` reads the rows once: chunks each text, hashes each chunk, compares with the
   existing hashes and keeps only the chunks to write (without vectors), spilled to a temporary
   Arrow IPC file past ``spill_threshold_bytes``. It knows then which ids to delete.
2. :meth:`EncodePlan.batches` encodes those chunks in batches of ``encoder.batch_size`` and yields
   one Arrow record batch per encoder call: bounded memory, whatever the corpus size. With
   ``encoded_by``, the encoding runs elsewhere (a Ray actor pool, see
   ``contextkit.compute.ray.embedding``): it receives the pending chunks and gives their vectors
   back, encoded by :func:`encode_pending`; this plan still builds and checks every batch.

The core wires it to the vector store (``contextkit.stores.vector``) like this::

    existing = store.existing_hashes(table)                  # {} for a new table
    with plan_encode(batches, encoder=encoder, key_columns=["doc_id"], text_column="body",
                     metadata_columns=["category", "price"], chunker=chunker,
                     existing=existing,
                     fetch_vectors=lambda ids: store.fetch_vectors(table, ids)) as plan:
        result = store.apply_changes(table, plan.batches(), plan.delete_ids,
                                     dim=encoder.dimension, key_columns=["doc_id"])
    plan.stats  # documents, chunks, new / changed / refreshed / unchanged / deleted, calls

Which chunks are written:

- ``content_hash = sha256(model identity (:func:`~.encoders.vectors_id`: the name, plus a
  quantization), dimension, normalize flag, chunk text)``: a new chunk id or a
  different content hash means the chunk is (re-)encoded;
- ``row_hash`` also covers the parent key, chunk index/offset and metadata values: when only it
  differs (a price changed, the text did not), the row is rewritten with its stored vector
  (``fetch_vectors``), so metadata never goes stale and nothing is re-encoded; without
  ``fetch_vectors`` such chunks are re-encoded;
- ids in ``existing`` that were not produced are deleted (with ``complete=False``, only those of
  the documents seen in this run: for inputs that carry changed documents only).

Output columns (the vector store's table layout, see :data:`SYSTEM_COLUMNS`): ``id``, the key
columns, ``chunk_index`` (int32), ``char_offset`` (int64), ``text``, ``content_hash``,
``row_hash``, ``vector`` (``fixed_size_list<float32>[dimension]``), then the metadata columns with
their input types. ``id`` is :func:`chunk_id` of the parent key and the chunk index.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa

from .chunking import Chunker, whole_text
from .encoders import Encoder, vectors_id
from .errors import EncoderFailure, PipelineInputError

SYSTEM_COLUMNS = (
    "id",
    "chunk_index",
    "char_offset",
    "text",
    "content_hash",
    "row_hash",
    "vector",
    "updated_at",
)
"""Column names the vector table reserves (``updated_at`` is added by the store).

The store spells the same tuple (``contextkit.stores.vector.SYSTEM_COLUMNS``: leaves do not import
each other); tests/embeddings/test_system_columns.py keeps the two equal."""

_ENCODE, _REFRESH = 0, 1
# How many encoder batches are ordered by text length together (see EncodePlan._run).
SORT_WINDOW = 16
_ROWS_PER_DICT_BATCH = 1024
FetchVectors = Callable[[list[str]], Mapping[str, np.ndarray]]
EncodedBy = Callable[[Iterator[pa.Table]], Iterable[tuple[pa.Table, np.ndarray]]]
"""Encodes pending chunks elsewhere: receives the pending windows (see :meth:`EncodePlan.batches`)
and yields ``(rows, vectors)`` for every pending row, in any order and grouping: ``rows`` as
received, ``vectors`` (``rows x dimension`` float32) from :func:`encode_pending`."""


def chunk_id(key: Sequence[Any], index: int) -> str:
    """The id of chunk ``index`` of the document with parent key ``key``.

    Key values are percent-encoded and joined by ``/``, then ``#index``: readable and unambiguous
    (``("doc/1",), 0`` -> ``doc%2F1#0``; ``("a", 7), 2`` -> ``a/7#2``).
    """
    return "/".join(quote(str(v), safe="") for v in key) + f"#{index}"


def content_hash(model_name: str, dimension: int, text: str, normalize: bool = True) -> str:
    """sha256 of what determines a chunk's vector: the model, its dimension and the text."""
    payload = f"{model_name}\x1f{dimension}\x1f{int(normalize)}\x1f{text}"
    return hashlib.sha256(payload.encode()).hexdigest()


def _row_hash(chash: str, key: tuple, index: int, offset: int, metadata: list) -> str:
    payload = json.dumps(
        [chash, list(key), index, offset, metadata], default=str, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class EncodeStats:
    """Counts of one run; ``texts_encoded`` / ``encoder_calls`` are what the model was asked."""

    documents: int = 0
    chunks: int = 0
    new: int = 0
    changed: int = 0
    refreshed: int = 0
    unchanged: int = 0
    deleted: int = 0
    encoder_calls: int = 0
    texts_encoded: int = 0
    plan_seconds: float = 0.0
    encode_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class EncodeProgress:
    """Passed to ``on_progress`` after each encoded batch."""

    chunks_done: int
    chunks_total: int
    documents_done: int
    elapsed_s: float

    @property
    def chunks_per_s(self) -> float:
        return self.chunks_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def docs_per_s(self) -> float:
        return self.documents_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far (None before the first batch)."""
        if self.chunks_done <= 0 or self.elapsed_s <= 0:
            return None
        return (self.chunks_total - self.chunks_done) * self.elapsed_s / self.chunks_done


def rich_progress(
    description: str = "encoding", console: Any = None
) -> Callable[[EncodeProgress], None]:
    """An ``on_progress`` callback drawing a rich progress bar with the docs/s rate."""
    from rich.progress import Progress

    bar = Progress(console=console)
    task = None

    def update(p: EncodeProgress) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=p.chunks_total)
        label = f"{description} ({p.docs_per_s:.0f} docs/s)"
        bar.update(task, completed=p.chunks_done, description=label)
        if p.chunks_done >= p.chunks_total:
            bar.stop()

    return update


class _SpillBuffer:
    """Arrow batches kept in memory up to a byte budget, then in an anonymous temporary file."""

    def __init__(self, threshold_bytes: int, spill_dir: str | Path | None) -> None:
        self.threshold = threshold_bytes
        self.spill_dir = spill_dir
        self.batches: list[pa.RecordBatch] = []
        self.nbytes = 0
        self.rows = 0
        self.schema: pa.Schema | None = None
        self._file: Any = None
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def append(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.schema = self.schema or batch.schema
        self.rows += batch.num_rows
        if self._writer is not None:
            self._writer.write_batch(batch)
            return
        self.batches.append(batch)
        self.nbytes += batch.nbytes
        if self.nbytes > self.threshold:
            # Anonymous, deleted on close(): the buffer outlives any one ``with`` block.
            self._file = tempfile.TemporaryFile(  # noqa: SIM115
                dir=self.spill_dir, prefix="contextkit-encode-"
            )
            self._writer = pa.ipc.new_stream(self._file, self.schema)
            for b in self.batches:
                self._writer.write_batch(b)
            self.batches, self.nbytes = [], 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        if self._writer is None:
            yield from self.batches
            return
        self._writer.close()
        self._writer = None
        self._file.seek(0)
        yield from pa.ipc.open_stream(self._file)

    def close(self) -> None:
        self.batches = []
        if self._file is not None:
            self._file.close()
            self._file = None
            self._writer = None


@dataclass
class EncodePlan:
    """The outcome of pass 1: which chunks to write and which ids to delete.

    ``batches()`` runs pass 2 (the encoding) and can be iterated once. Use the plan as a context
    manager, or call ``close()``, to drop a spilled temporary file early.
    """

    encoder: Encoder
    key_columns: tuple[str, ...]
    metadata_columns: tuple[str, ...]
    delete_ids: list[str]
    stats: EncodeStats
    schema: pa.Schema | None
    batch_size: int
    _pending: _SpillBuffer
    documents_to_write: int = 0
    """Documents with at least one chunk to write (what progress counts in remote encoding)."""
    _fetch_vectors: FetchVectors | None = None
    _on_progress: Callable[[EncodeProgress], None] | None = None
    _consumed: bool = field(default=False, repr=False)

    @property
    def chunks_to_write(self) -> int:
        """Chunks ``batches()`` will yield (new + changed + refreshed)."""
        return self._pending.rows

    @property
    def has_changes(self) -> bool:
        return self.chunks_to_write > 0 or bool(self.delete_ids)

    def __enter__(self) -> EncodePlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pending.close()

    def batches(self, encoded_by: EncodedBy | None = None) -> Iterator[pa.RecordBatch]:
        """Encode the pending chunks and yield them as record batches in :attr:`schema`.

        One encoder call per batch (refreshed rows reuse stored vectors). Encoder failures
        propagate (as :class:`EncoderFailure` or whatever the encoder raised) after the batches
        already yielded: the store's write must be all-or-nothing.

        ``encoded_by`` encodes elsewhere (see :data:`EncodedBy`): it gets the pending windows,
        ordered by text length, and yields their rows with vectors; one record batch is
        yielded per pair it gives back, checked as a local batch is.
        """
        if self._consumed:
            raise RuntimeError("EncodePlan.batches() can be iterated only once")
        self._consumed = True
        return self._run() if encoded_by is None else self._run_remote(encoded_by)

    def _windows(self) -> Iterator[tuple[pa.Table, int]]:
        """The pending chunks in windows of ``batch_size * SORT_WINDOW`` rows, each ordered by
        text length, with how many documents each window starts."""
        import pyarrow.compute as pc

        last_doc = -1
        # Texts are encoded in batches of similar length: within a window of SORT_WINDOW
        # batches the rows are ordered by text length before they are cut into batches, so
        # a model pads each batch to little more than its texts (in source order, batches
        # hold ~25% padding). One encoder call per batch_size texts, memory bounded by the
        # window; rows are written by id, so their order does not matter to the store.
        for window in _rebatch(self._pending, self.batch_size * SORT_WINDOW):
            docs = window.column("_doc").to_numpy()
            new_docs = int(np.count_nonzero(np.diff(docs, prepend=last_doc)))
            last_doc = int(docs[-1])
            lengths = pc.utf8_length(window.column("text")).to_numpy(zero_copy_only=False)
            yield window.take(pa.array(np.argsort(lengths, kind="stable"))), new_docs

    def _run_remote(self, encoded_by: EncodedBy) -> Iterator[pa.RecordBatch]:
        started = time.perf_counter()
        done = 0
        total = self.chunks_to_write
        results = iter(encoded_by(window for window, _ in self._windows()))
        try:
            for rows, vectors in results:
                out = self._encode_batch(rows, vectors)
                encoded = int(np.count_nonzero(_needs_model(rows)))
                if encoded:
                    self.stats.encoder_calls += 1
                    self.stats.texts_encoded += encoded
                done += out.num_rows
                elapsed = time.perf_counter() - started
                self.stats.encode_seconds = elapsed
                yield out
                if self._on_progress is not None:  # batches arrive in any order: docs pro rata
                    docs = round(self.documents_to_write * done / total) if total else 0
                    self._on_progress(EncodeProgress(done, total, docs, elapsed))
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # stop the remote work now (a failure or cancel here, or in the store)
            self.close()

    def _run(self) -> Iterator[pa.RecordBatch]:
        started = time.perf_counter()
        done = docs_done = 0
        try:
            for window, new_docs in self._windows():
                for start in range(0, window.num_rows, self.batch_size):
                    out = self._encode_batch(window.slice(start, self.batch_size))
                    done += out.num_rows
                    elapsed = time.perf_counter() - started
                    self.stats.encode_seconds = elapsed
                    yield out
                    if self._on_progress is not None:
                        share = (start + out.num_rows) / window.num_rows
                        self._on_progress(
                            EncodeProgress(
                                done,
                                self.chunks_to_write,
                                docs_done + round(new_docs * share),
                                elapsed,
                            )
                        )
                docs_done += new_docs
        finally:
            self.close()

    def _encode_batch(self, pending: pa.Table, encoded: np.ndarray | None = None) -> pa.RecordBatch:
        """One output batch; ``encoded``: the vectors of the rows to encode, computed elsewhere
        (then only refreshed rows whose stored vector is gone are encoded here)."""
        n = pending.num_rows
        dim = self.encoder.dimension
        ids = pending.column("id").to_pylist()
        actions = pending.column("_action").to_numpy()
        vectors = np.empty((n, dim), dtype=np.float32)
        to_encode = np.flatnonzero(actions == _ENCODE).tolist()
        refresh = np.flatnonzero(actions == _REFRESH).tolist()
        if encoded is not None:
            if encoded.shape != (n, dim):
                raise EncoderFailure(
                    f"{self.encoder.name} returned shape {encoded.shape} for {n} chunks, "
                    f"expected ({n}, {dim})",
                    model=self.encoder.name,
                )
            vectors[to_encode] = encoded[to_encode]
            to_encode = []
        if refresh and self._fetch_vectors is not None:
            stored = self._fetch_vectors([ids[i] for i in refresh])
            missing = []
            for i in refresh:
                vec = stored.get(ids[i])
                if vec is None or len(vec) != dim:
                    missing.append(i)  # deleted or rewritten meanwhile: encode it instead
                else:
                    vectors[i] = vec
            to_encode = sorted(to_encode + missing)
        elif refresh:
            to_encode = sorted(to_encode + refresh)
        if to_encode:
            texts = pending.column("text").to_pylist()
            encoded = self.encoder.encode([texts[i] for i in to_encode])
            self.stats.encoder_calls += 1
            self.stats.texts_encoded += len(to_encode)
            encoded = np.asarray(encoded, dtype=np.float32)
            if encoded.shape != (len(to_encode), dim):
                raise EncoderFailure(
                    f"{self.encoder.name} returned shape {encoded.shape} for "
                    f"{len(to_encode)} texts, expected ({len(to_encode)}, {dim})",
                    model=self.encoder.name,
                )
            vectors[to_encode] = encoded
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            raise EncoderFailure(
                f"{self.encoder.name} returned NaN/inf vectors for chunk(s) "
                f"{', '.join(ids[i] for i in np.flatnonzero(bad)[:5])}",
                model=self.encoder.name,
            )
        vector_col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
        columns = []
        for f in self.schema:
            column = vector_col if f.name == "vector" else pending.column(f.name).combine_chunks()
            # rows that travelled (a remote encode) may come back in an equivalent Arrow type
            columns.append(column if column.type == f.type else column.cast(f.type))
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)


def _needs_model(pending: pa.Table) -> np.ndarray:
    return pending.column("_action").to_numpy() == _ENCODE


def encode_pending(encoder: Encoder, pending: pa.Table) -> np.ndarray:
    """The vectors of a pending window's rows (see :data:`EncodedBy`): one encoder call for the
    rows that need the model; the other rows (refreshed: their stored vector is reused) get
    zeros. This is what a remote worker runs; the plan checks the result."""
    vectors = np.zeros((pending.num_rows, encoder.dimension), dtype=np.float32)
    rows = np.flatnonzero(_needs_model(pending))
    if rows.size:
        texts = pending.column("text").to_pylist()
        vectors[rows] = np.asarray(encoder.encode([texts[i] for i in rows]), dtype=np.float32)
    return vectors


def _rebatch(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Regroup a stream of batches into tables of exactly ``size`` rows (the last may be less)."""
    buffer: list[pa.RecordBatch] = []
    buffered = 0
    for batch in batches:
        offset = 0
        while offset < batch.num_rows:
            take = min(size - buffered, batch.num_rows - offset)
            buffer.append(batch.slice(offset, take))
            buffered += take
            offset += take
            if buffered == size:
                yield pa.Table.from_batches(buffer)
                buffer, buffered = [], 0
    if buffered:
        yield pa.Table.from_batches(buffer)


def _as_batches(
    rows: Iterable[pa.RecordBatch | pa.Table | Mapping[str, Any]], schema: pa.Schema | None
) -> Iterator[pa.RecordBatch]:
    pending: list[Mapping[str, Any]] = []

    def flush() -> pa.RecordBatch:
        batch = pa.RecordBatch.from_pylist(pending, schema=schema)
        pending.clear()
        return batch

    for item in rows:
        if isinstance(item, Mapping):
            pending.append(item)
            if len(pending) >= _ROWS_PER_DICT_BATCH:
                yield flush()
            continue
        if pending:
            yield flush()
        if isinstance(item, pa.Table):
            yield from item.to_batches()
        elif isinstance(item, pa.RecordBatch):
            yield item
        else:
            raise PipelineInputError(
                f"rows must be Arrow record batches, tables or dicts, got {type(item).__name__}"
            )
    if pending:
        yield flush()


def _check_columns(key_columns: Sequence[str], text_column: str, metadata: Sequence[str]) -> None:
    if not key_columns:
        raise PipelineInputError("an embedding view needs at least one key column")
    for name in [*key_columns, *metadata]:
        if name in SYSTEM_COLUMNS:
            raise PipelineInputError(
                f"column {name!r} is reserved by the vector table",
                hint=f"rename it in the view's source (reserved: {', '.join(SYSTEM_COLUMNS)})",
            )
    for name in [*key_columns, text_column, *metadata]:
        if not name or "." in name or "`" in name:
            raise PipelineInputError(
                f"column name {name!r} cannot be stored in the vector table",
                hint="column names must be non-empty and contain no '.' or '`'",
            )
    seen: set[str] = set()
    for name in [*key_columns, *metadata]:
        if name in seen:
            raise PipelineInputError(f"column {name!r} is listed twice (keys and metadata)")
        seen.add(name)


def plan_encode(
    rows: Iterable[pa.RecordBatch | pa.Table | Mapping[str, Any]],
    *,
    encoder: Encoder,
    key_columns: Sequence[str],
    text_column: str,
    metadata_columns: Sequence[str] = (),
    chunker: Chunker | None = None,
    existing: Mapping[str, tuple[str, str]] | None = None,
    fetch_vectors: FetchVectors | None = None,
    complete: bool = True,
    batch_size: int | None = None,
    schema: pa.Schema | None = None,
    on_progress: Callable[[EncodeProgress], None] | None = None,
    spill_dir: str | Path | None = None,
    spill_threshold_bytes: int = 64 * 1024 * 1024,
) -> EncodePlan:
    """Pass 1: chunk and hash every row, compare with ``existing``, keep what must be written.

    ``rows`` are Arrow record batches / tables or dicts holding the key columns, ``text_column``
    and the metadata columns (dicts are batched, their types inferred from the first
    1,024 rows unless ``schema`` is given; with no rows at all, the plan's ``schema`` still
    follows from it, so an empty table can be created). ``existing`` maps chunk id to its stored
    ``(content_hash, row_hash)`` (what ``LanceVectorStore.existing_hashes`` returns). ``chunker``
    None means one chunk per document. Missing or blank texts give no chunks (their stored chunks
    are deleted). Duplicate parent keys, null keys and missing columns raise
    :class:`PipelineInputError`. Nothing is encoded here, except one probe call for a hosted model
    whose dimension is not configured.
    """
    started = time.perf_counter()
    key_columns = tuple(key_columns)
    metadata_columns = tuple(metadata_columns)
    _check_columns(key_columns, text_column, metadata_columns)
    existing = existing or {}
    model, dim, normalize = vectors_id(encoder), encoder.dimension, encoder.normalize
    split = chunker.split if chunker is not None else whole_text
    stats = EncodeStats()
    pending = _SpillBuffer(spill_threshold_bytes, spill_dir)
    seen_ids: set[str] = set()
    seen_docs: set[str] = set()
    docs_to_write = 0
    out_schema: pa.Schema | None = None
    pending_schema: pa.Schema | None = None
    needed = [*key_columns, text_column, *metadata_columns]

    for batch in _as_batches(rows, schema):
        missing = [c for c in needed if c not in batch.schema.names]
        if missing:
            raise PipelineInputError(
                f"the rows have no column(s) {', '.join(missing)}",
                hint=f"columns present: {', '.join(batch.schema.names)}",
            )
        if out_schema is None:
            out_schema, pending_schema = _schemas(batch.schema, key_columns, metadata_columns, dim)
        keys = list(zip(*(batch.column(k).to_pylist() for k in key_columns), strict=True))
        texts = batch.column(text_column).to_pylist()
        meta_values = [batch.column(m).to_pylist() for m in metadata_columns]
        cols: dict[str, list] = {
            n: [] for n in ("id", "chunk_index", "char_offset", "text", "ch", "rh", "act", "doc")
        }
        take: list[int] = []
        for row, key in enumerate(keys):
            if any(v is None for v in key):
                raise PipelineInputError(
                    f"a row has a null key ({', '.join(key_columns)} = {key})",
                    hint="filter out rows without a key in the view's source query",
                )
            doc = chunk_id(key, 0)[:-2]
            if doc in seen_docs:
                raise PipelineInputError(
                    f"duplicate key {key} for {', '.join(key_columns)}",
                    hint="an embedding view needs one row per key: deduplicate the source",
                )
            seen_docs.add(doc)
            stats.documents += 1
            metadata = [values[row] for values in meta_values]
            text = texts[row]
            if text is not None and not isinstance(text, str):
                raise PipelineInputError(
                    f"text column {text_column!r} holds {type(text).__name__} values, not strings"
                )
            for chunk in split(text, key):
                cid = chunk_id(key, chunk.index)
                seen_ids.add(cid)
                stats.chunks += 1
                chash = content_hash(model, dim, chunk.text, normalize)
                rhash = _row_hash(chash, key, chunk.index, chunk.char_offset, metadata)
                old = existing.get(cid)
                if old is None:
                    stats.new += 1
                    action = _ENCODE
                elif old[0] != chash:
                    stats.changed += 1
                    action = _ENCODE
                elif old[1] != rhash:
                    stats.refreshed += 1
                    action = _REFRESH
                else:
                    stats.unchanged += 1
                    continue
                cols["id"].append(cid)
                cols["chunk_index"].append(chunk.index)
                cols["char_offset"].append(chunk.char_offset)
                cols["text"].append(chunk.text)
                cols["ch"].append(chash)
                cols["rh"].append(rhash)
                cols["act"].append(action)
                if not cols["doc"] or cols["doc"][-1] != stats.documents:
                    docs_to_write += 1
                cols["doc"].append(stats.documents)
                take.append(row)
        if take:
            pending.append(_pending_batch(batch, take, cols, pending_schema, key_columns))

    if out_schema is None and schema is not None and all(c in schema.names for c in needed):
        # no rows at all: the layout still follows from the rows' schema (an empty table)
        out_schema, _ = _schemas(schema, key_columns, metadata_columns, dim)
    if complete:
        delete_ids = sorted(set(existing) - seen_ids)
    else:
        delete_ids = sorted(
            cid for cid in existing if cid not in seen_ids and cid.rsplit("#", 1)[0] in seen_docs
        )
    stats.deleted = len(delete_ids)
    stats.plan_seconds = time.perf_counter() - started
    return EncodePlan(
        encoder=encoder,
        key_columns=key_columns,
        metadata_columns=metadata_columns,
        delete_ids=delete_ids,
        stats=stats,
        schema=out_schema,
        batch_size=batch_size or encoder.batch_size,
        _pending=pending,
        documents_to_write=docs_to_write,
        _fetch_vectors=fetch_vectors,
        _on_progress=on_progress,
    )


def _schemas(
    source: pa.Schema, keys: tuple[str, ...], metadata: tuple[str, ...], dim: int
) -> tuple[pa.Schema, pa.Schema]:
    key_fields = [source.field(k) for k in keys]
    meta_fields = [source.field(m) for m in metadata]
    head = [pa.field("id", pa.string(), nullable=False), *key_fields]
    body = [
        pa.field("chunk_index", pa.int32(), nullable=False),
        pa.field("char_offset", pa.int64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("row_hash", pa.string(), nullable=False),
    ]
    out = pa.schema(
        [
            *head,
            *body,
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
            *meta_fields,
        ]
    )
    work = pa.schema(
        [*head, *body, pa.field("_action", pa.int8()), pa.field("_doc", pa.int64()), *meta_fields]
    )
    return out, work


def _pending_batch(
    batch: pa.RecordBatch,
    take: list[int],
    cols: dict[str, list],
    schema: pa.Schema,
    key_columns: tuple[str, ...],
) -> pa.RecordBatch:
    rows = batch.take(pa.array(take, pa.int64()))
    arrays = []
    computed = {
        "id": cols["id"],
        "chunk_index": cols["chunk_index"],
        "char_offset": cols["char_offset"],
        "text": cols["text"],
        "content_hash": cols["ch"],
        "row_hash": cols["rh"],
        "_action": cols["act"],
        "_doc": cols["doc"],
    }
    for f in schema:
        if f.name in computed:
            arrays.append(pa.array(computed[f.name], f.type))
        else:
            column = rows.column(f.name)
            arrays.append(column if column.type == f.type else column.cast(f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
