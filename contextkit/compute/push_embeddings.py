"""Push-based embedding updates: records pushed to a source behind an embedding view become
searchable without a batch job.

After an ingest commits, its records are queued for each embedding view over the push source. A
background thread (one per process and vector store) takes them in micro-batches: it waits up to
``MAX_WAIT_S`` after the first queued record, or until ``MAX_BATCH`` records are queued, keeps the
latest record per document, encodes only new or changed chunks and upserts them in one LanceDB
commit. A record is therefore searchable about ``MAX_WAIT_S`` plus one encoder call after its
ingest returned.

Nothing is lost if the process stops before a record is encoded: it is in the ingest log, and
``contextkit materialize`` (a full incremental pass over the log) encodes whatever is missing.
Encoding failures are logged and counted (``PushEncoder.failures``); the next materialization
repairs the table.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contextkit.framework.specs import EmbeddingViewSpec
    from contextkit.framework.workspace import Runtime

log = logging.getLogger("contextkit.compute.push_embeddings")

MAX_WAIT_S = 0.2
MAX_BATCH = 256


@dataclass
class _Job:
    ctx: Runtime
    workspace: str
    view: EmbeddingViewSpec
    rows: list[dict[str, Any]]


class PushEncoder:
    """The micro-batching encoder thread of a process (see the module docstring)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self.failures = 0
        self.encoded = 0

    def submit(
        self, ctx: Runtime, workspace: str, view: EmbeddingViewSpec, rows: Sequence[dict]
    ) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="contextkit-push-encoder", daemon=True
                )
                self._thread.start()
        self._queue.put(_Job(ctx, workspace, view, list(rows)))

    def wait(self, timeout: float = 30.0) -> bool:
        """Block until every queued record is encoded (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.monotonic() + MAX_WAIT_S
            while sum(len(j.rows) for j in jobs) < MAX_BATCH:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                jobs.append(item)
            groups: dict[tuple[int, str, str], list[_Job]] = {}
            for job in jobs:
                groups.setdefault((id(job.ctx), job.workspace, job.view.name), []).append(job)
            for group in groups.values():
                try:
                    self.encoded += _encode(group)
                except Exception:
                    self.failures += 1
                    log.exception("push-based encoding of %s failed", group[0].view.name)
            with self._idle:
                self._pending -= len(jobs)
                self._idle.notify_all()


def _encode(jobs: list[_Job]) -> int:
    """Encode and upsert the latest pushed row of each document of one view; returns how many
    chunks were written."""
    import pyarrow as pa

    from contextkit.compute.embedding import encoder_for
    from contextkit.compute.layout import vector_table
    from contextkit.embeddings import Chunker, plan_encode

    ctx, view, workspace = jobs[0].ctx, jobs[0].view, jobs[0].workspace
    keys = view.join_key_names
    ts = view.timestamp_field
    latest: dict[tuple, dict[str, Any]] = {}
    for job in jobs:
        for row in job.rows:
            key = tuple(row[k] for k in keys)
            old = latest.get(key)
            if old is None or ts is None or row[ts] >= old[ts]:
                latest[key] = row
    if ts is not None and view.sources:
        # Only the newest version of a document counts: a late record older than what the log
        # already holds for its key must not replace it.
        from contextkit.compute.layout import log_table
        from contextkit.types import epoch_micros

        newest = ctx.online.max_by_key(
            log_table(workspace, view.sources[0]), keys, list(latest), ts
        )
        latest = {
            key: row
            for key, row in latest.items()
            if key not in newest or epoch_micros(row[ts]) >= newest[key]
        }
    if not latest:
        return 0
    table = vector_table(workspace, view.name)
    encoder = encoder_for(view, ctx.config.models, ctx.config.root.resolve())
    chunking = view.chunking.model_dump() if view.chunking else None
    chunker = Chunker.from_config(chunking, encoder)
    columns = [*keys, view.text_column, *view.metadata]
    rows = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in latest.values()])
    store = ctx.vectors
    wanted = {k: [key[i] for key in latest] for i, k in enumerate(keys)}
    existing = store.existing_hashes(table, wanted)
    with plan_encode(
        [rows],
        encoder=encoder,
        key_columns=keys,
        text_column=view.text_column,
        metadata_columns=view.metadata,
        chunker=chunker,
        existing=existing,
        fetch_vectors=lambda ids: store.fetch_vectors(table, ids),
        complete=False,  # only these documents: leave the others alone
    ) as plan:
        if not plan.has_changes:
            return 0
        result = store.apply_changes(
            table, plan.batches(), plan.delete_ids, dim=encoder.dimension, key_columns=keys
        )
    if result.created:
        store.ensure_indexes(table)
    return plan.stats.new + plan.stats.changed + plan.stats.refreshed


_encoder: PushEncoder | None = None
_encoder_lock = threading.Lock()


def push_encoder() -> PushEncoder:
    """The process's push encoder (started on first use)."""
    global _encoder
    with _encoder_lock:
        if _encoder is None:
            _encoder = PushEncoder()
        return _encoder
