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

**Failures are reported, not only logged.** When an encode fails (a hosted model whose key is
unset, a provider that refuses the call), its records stay out of the vector table until the next
materialization of the view, and the failure surfaces in three places:

* :meth:`PushEncoder.wait` (``Context.wait_for_embeddings``) raises :class:`PushEmbeddingError`,
  listing the failures of records pushed to the same repo since the previous call;
* the process counts them per view (``contextkit_push_embedding_failures_total`` in ``/metrics``);
* the registry holds an open ``push_encode_failed`` alert of the view (``/v1/alerts``,
  ``contextkit status``) with the number of records and the last error, until a materialization
  of the view (which encodes what is missing from the log) resolves it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from contextkit.errors import ContextKitError, PushEmbeddingError

if TYPE_CHECKING:
    from contextkit.framework.specs import EmbeddingViewSpec
    from contextkit.framework.workspace import Runtime

log = logging.getLogger("contextkit.compute.push_embeddings")

MAX_WAIT_S = 0.2
MAX_BATCH = 256
ALERT_KIND = "push_encode_failed"
_KEPT_FAILURES = 100  # unreported failures kept per repo (the oldest are dropped)


@dataclass(frozen=True)
class PushFailure:
    """One failed encode of a micro-batch: which view, how many records, why, and when."""

    workspace: str
    view: str
    records: int
    error: str
    at: float  # Unix seconds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        # Per registry file: failures not yet reported by wait(), and failed encodes per view.
        self._unreported: dict[str, list[PushFailure]] = {}
        self._counts: dict[str, dict[tuple[str, str], int]] = {}

    def submit(
        self, runtime: Runtime, workspace: str, view: EmbeddingViewSpec, rows: Sequence[dict]
    ) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="contextkit-push-encoder", daemon=True
                )
                self._thread.start()
        self._queue.put(_Job(runtime, workspace, view, list(rows)))

    def wait(self, timeout: float = 30.0, *, registry: str | None = None) -> bool:
        """Block until every queued record is processed: True when done, False when ``timeout``
        passed first.

        Raises :class:`PushEmbeddingError` when an encode of records pushed to the repo whose
        registry file is ``registry`` (None: any repo) failed since the previous call; those
        failures are then reported (a second call does not raise them again).
        """
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            if registry is None:
                failed = [f for found in self._unreported.values() for f in found]
                self._unreported.clear()
            else:
                failed = self._unreported.pop(registry, [])
        if failed:
            raise _error(failed)
        return True

    def failure_counts(self, registry: str) -> dict[tuple[str, str], int]:
        """Failed encodes of this process per ``(workspace, view)`` of one repo (its registry
        file), since the process started."""
        with self._lock:
            return dict(self._counts.get(registry, {}))

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
                except Exception as exc:
                    self._failed(group, exc)
            with self._idle:
                self._pending -= len(jobs)
                self._idle.notify_all()

    def _failed(self, jobs: list[_Job], exc: Exception) -> None:
        """Count, keep (for wait) and raise an alert for a failed encode of one view's jobs.
        Runs before the jobs leave the pending count, so a waiter sees the failure."""
        ctx, workspace, view = jobs[0].ctx, jobs[0].workspace, jobs[0].view.name
        failure = PushFailure(
            workspace, view, sum(len(j.rows) for j in jobs), _describe(exc), time.time()
        )
        log.error(
            "push-based encoding of %d record(s) of %s/%s failed: %s",
            failure.records,
            workspace,
            view,
            failure.error,
            exc_info=exc,
        )
        registry = _registry_key(ctx)
        with self._lock:
            self.failures += 1
            counts = self._counts.setdefault(registry, {})
            counts[(workspace, view)] = counts.get((workspace, view), 0) + 1
            kept = self._unreported.setdefault(registry, [])
            kept.append(failure)
            del kept[:-_KEPT_FAILURES]
        try:
            _raise_alert(ctx, failure)
        except Exception:  # the encoder thread must go on; the failure is counted and kept
            log.exception("recording the alert of a failed push-based encode of %s failed", view)


def _registry_key(runtime: Runtime) -> str:
    return runtime.config.registry_key


def _describe(exc: Exception) -> str:
    if isinstance(exc, ContextKitError):
        text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    else:
        lines = str(exc).strip().splitlines()
        text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text[:500]


def _error(failed: list[PushFailure]) -> PushEmbeddingError:
    records = sum(f.records for f in failed)
    views = sorted({f.view for f in failed})
    return PushEmbeddingError(
        f"{records} pushed record(s) could not be encoded into embedding view(s) "
        f"{', '.join(views)}: {failed[-1].error}",
        hint="they are kept in the ingest log: fix the cause, then run `contextkit materialize "
        f"{' '.join(views)}` to encode them",
        details={"failures": [f.to_dict() for f in failed]},
    )


def _raise_alert(runtime: Runtime, failure: PushFailure) -> None:
    """Open (or update) the view's ``push_encode_failed`` alert in the registry, adding up the
    records that failed since it was opened."""
    from contextkit.stores.registry import AlertRecord

    registry = runtime.registry
    current = next(
        (a for a in registry.list_alerts(failure.workspace, failure.view) if a.kind == ALERT_KIND),
        None,
    )
    before = current.details if current is not None else {}
    records = int(before.get("records", 0)) + failure.records
    encodes = int(before.get("failed_encodes", 0)) + 1
    first = float(before.get("first_at", failure.at))
    registry.open_alert(
        AlertRecord(
            id=uuid.uuid4().hex[:12],
            workspace=failure.workspace,
            view=failure.view,
            kind=ALERT_KIND,
            subject="",
            severity="error",
            message=f"{records} pushed record(s) are not searchable: {encodes} push-based "
            f"encode(s) failed, the last with {failure.error}; fix the cause and run "
            f"`contextkit materialize {failure.view}`",
            details={
                "records": records,
                "failed_encodes": encodes,
                "first_at": first,
                "last_error": failure.error,
            },
            job_id=None,
            created_at=failure.at,
            updated_at=failure.at,
        )
    )


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
