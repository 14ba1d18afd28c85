"""Embedding views in the core: materialize (encode into the vector store) and search.

Materialization composes the two leaves: the transformation runs in DuckDB (one row per
document), :func:`contextkit.embeddings.plan_encode` chunks and hashes every document and keeps only
new or changed chunks, and :meth:`LanceVectorStore.apply_changes` writes them, with the deletions,
as one table version. A failure anywhere leaves the previous version current (and searchable).
The job is recorded in the registry like a feature view's, with the encode statistics.

Search encodes the query with the view's model (same model as the table, so the vectors are
comparable) and asks the store; results are plain dicts ``{"id", "text", "score", "key",
"metadata", "chunk_index", "char_offset"}``, best first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.compute.layout import vector_table
from contextkit.compute.materialize import JobResult, cancellation_check, spec_hash
from contextkit.compute.quality.job_monitor import JobMonitor
from contextkit.compute.quality.statistics import VECTOR_SAMPLE
from contextkit.errors import (
    BadRequestError,
    ContextKitError,
    JobCancelledError,
    StoreError,
    ViewWarmingError,
    leaf_error,
)
from contextkit.framework import transformations
from contextkit.framework.specs import EmbeddingViewSpec, FeatureViewSpec, FileSourceSpec
from contextkit.stores.registry import RegistryStore

if TYPE_CHECKING:
    import numpy as np

    from contextkit.config import ComputeConfig
    from contextkit.embeddings import EncodeProgress, Encoder
    from contextkit.stores.vector import LanceVectorStore

log = logging.getLogger("contextkit.compute.embedding")

# Hybrid search's defaults (see search_view).
DEFAULT_FUSION = "blend"
DEFAULT_DEPTH = 50
# Rows handed from DuckDB to the encode pipeline per Arrow batch.
_ROWS_PER_BATCH = 4096
# How often a job writes its encode progress to the registry (a warming search reports it).
PROGRESS_EVERY_S = 2.0
# Retry-After of a search on a view still warming, when no job says how long it has left.
WARMING_RETRY_S = 5


def encoder_for(view: EmbeddingViewSpec, models: Mapping[str, Any] | None, root: Path) -> Encoder:
    """The view's encoder, built once per process and model config."""
    from contextkit.embeddings import get_encoder

    return get_encoder(view.model, models, base_dir=root)


def materialize_embedding_view(
    *,
    registry: RegistryStore,
    vectors: LanceVectorStore | Callable[[], LanceVectorStore],
    root: Path,
    workspace: str,
    view: EmbeddingViewSpec,
    sources: dict[str, FileSourceSpec],
    views: dict[str, FeatureViewSpec],
    models: Mapping[str, Any] | None,
    full: bool = False,
    on_progress: Callable[[EncodeProgress], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    monitoring: bool = True,
    pushed: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    compute: ComputeConfig | None = None,
    vector_location: str | Path | None = None,
) -> JobResult:
    """Encode the view's new or changed documents into its vector table, in one commit.

    ``job_id`` and ``should_stop``: as for :func:`~contextkit.compute.materialize.materialize_view`
    (a cancelled job stops at its next encoded batch; the previous table version stays current).

    ``compute``: the engine (None: local). When it picks ``ray`` for this view, the chunks to
    encode go through an actor pool on Ray Data (:mod:`contextkit.compute.ray.embedding`); the
    plan, the checks and the one commit stay here, so the result is the local engine's.

    ``monitoring``: measure the documents and vectors (see :mod:`contextkit.compute.quality`);
    the view's expectations are checked either way, on the documents, before anything is encoded.

    ``pushed`` maps the name of a push source the view reads to an Arrow table of its events.
    ``full`` rebuilds the table from scratch (every chunk encoded again). The table is also
    rebuilt when it no longer fits the view: another vector dimension, key or metadata columns.

    ``vectors`` is the store, or a function that opens it, with ``vector_location`` (where its
    tables live): then a run with nothing to do never opens it, so never imports LanceDB. Nothing
    to do means the view's documents, spec and model are those of its last job, whose table has
    not been written since (see :func:`_unchanged_since`); the job is recorded with the last
    job's numbers and ``unchanged_since`` naming it.
    """
    from contextkit.embeddings import Chunker, EncodeStats, plan_encode

    opened: list[LanceVectorStore] = []

    def store() -> LanceVectorStore:
        if not opened:
            opened.append(vectors() if callable(vectors) else vectors)
        return opened[0]

    location = vector_location if callable(vectors) else vectors.uri
    end = datetime.now(UTC)
    stage = on_stage or (lambda _s: None)
    job_id = registry.start_job(
        workspace,
        view.name,
        range_start=None,
        range_end=end.isoformat(),
        spec_hash=spec_hash(view),
        details={"kind": "embedding_view", "full": full},
        **({"job_id": job_id} if job_id else {}),
    )
    check = cancellation_check(registry, job_id, should_stop)
    user_progress = on_progress
    recorded = [0.0]  # when the encode progress was last written to the job

    def on_progress(progress: EncodeProgress) -> None:  # noqa: F811 - checks, then reports
        check()
        if time.monotonic() - recorded[0] >= PROGRESS_EVERY_S:
            recorded[0] = time.monotonic()
            record_progress(registry, job_id, progress)
        if user_progress is not None:
            user_progress(progress)

    monitor = JobMonitor.start(registry, workspace, view, job_id, as_of=end, enabled=monitoring)
    began = time.perf_counter()
    table = vector_table(workspace, view.name)
    previous = None
    engine = compute.engine_for(view.name) if compute is not None else "local"
    pool: list[Any] = []  # the Ray actor pool's settings, once sized
    try:
        ray = None
        if engine == "ray":
            from contextkit.compute.ray.runtime import connect

            stage("connecting to ray")
            ray = connect(compute)
        encoder = encoder_for(view, models, root)
        check()
        stage("reading")
        with transformations.workspace_session(root, sources, views) as ws:
            for name, rows in (pushed or {}).items():  # push sources: their logged events
                ws.con.register(name, rows)
            documents = transformations.embedding_documents_sql(ws, view)
            # Pushed documents are also written by the push path: never skipped.
            fingerprint = (
                None if pushed else documents_fingerprint(ws.con, documents, view, encoder)
            )
            if not full and fingerprint is not None:
                previous = _unchanged_since(
                    registry, workspace, view.name, job_id, fingerprint, location, table
                )
            reader = ws.con.sql(documents).to_arrow_reader(_ROWS_PER_BATCH)
            layout = reader.schema  # what an empty table is made of when there are no rows
            if monitor is not None:
                reader = monitor.watch_documents(reader)
            if previous is not None:
                stage("unchanged")
                stats = EncodeStats(
                    documents=int(previous.details.get("documents") or 0),
                    chunks=int(previous.details.get("chunks") or 0),
                    unchanged=int(previous.details.get("chunks") or 0),
                )
                if monitor is not None:
                    for _batch in reader:  # the documents' statistics, as on any run
                        pass
                    monitor.check_documents(ws.con, stats)
            else:
                chunking = view.chunking.model_dump() if view.chunking else None
                chunker = Chunker.from_config(chunking, encoder)
                vectors_now = store()
                replace = full or _must_rebuild(vectors_now, table, view, encoder)
                existing = {} if replace else vectors_now.existing_hashes(table)
                check()
                stage("encoding")
                with plan_encode(
                    reader,
                    encoder=encoder,
                    key_columns=view.join_key_names,
                    text_column=view.text_column,
                    metadata_columns=view.metadata,
                    chunker=chunker,
                    existing=existing,
                    schema=layout,
                    fetch_vectors=None
                    if replace
                    else (lambda ids: vectors_now.fetch_vectors(table, ids)),
                    on_progress=on_progress,
                ) as plan:
                    if monitor is not None:  # every document was read; nothing is encoded yet
                        monitor.check_documents(ws.con, plan.stats)
                    check()
                    batches = _encoded_batches(plan, ray, compute, view, models, root, stage, pool)
                    result = vectors_now.apply_changes(
                        table,
                        batches,
                        plan.delete_ids,
                        dim=encoder.dimension,
                        key_columns=view.join_key_names,
                        replace=replace,
                        # no documents: the table is created empty, so the view has landed
                        schema=plan.schema,
                    )
                stats = plan.stats
        if previous is not None:
            chunks = int(previous.rows_online or 0)
            version = previous.details.get("table_version")
            run = {
                "full": False,
                "table_version": version,
                "indexes_created": [],
                "search": previous.details.get("search"),
                "search_calibrated": False,
                "unchanged_since": previous.details.get("unchanged_since") or previous.id,
            }
        else:
            stage("indexing")
            vectors_now = store()
            report = vectors_now.ensure_indexes(table) if vectors_now.has_table(table) else None
            chunks = vectors_now.count_rows(table) if vectors_now.has_table(table) else 0
            version = result.version
            run = {
                "full": replace,
                "table_version": version,
                "indexes_created": report.created if report else [],
                # how vector queries are answered (exact or ANN, its parameters, the recall)
                "search": report.plan.as_dict() if report and report.plan else None,
                "search_calibrated": bool(report and report.calibrated),
            }
        if monitor is not None and chunks:
            monitor.add_vectors(
                lambda: store().sample_vectors(table, VECTOR_SAMPLE), table_version=version
            )
    except BaseException as exc:
        if isinstance(exc, JobCancelledError):
            registry.finish_job(job_id, "cancelled", error=exc.message)
            raise
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        registry.finish_job(job_id, "failed", error=message[:500])
        if isinstance(exc, ContextKitError):
            raise
        retry = (
            "the previous version of its vector table is still served; fix the cause (source "
            "data, model config, provider) and run `contextkit materialize` again"
        )
        translated = leaf_error(exc)
        if translated is not None:
            translated.hint = translated.hint or retry
            raise translated from exc
        if isinstance(exc, Exception):
            raise StoreError(
                f"materializing embedding view {view.name!r} failed: {message}", hint=retry
            ) from exc
        raise
    duration = time.perf_counter() - began
    details = {
        "kind": "embedding_view",
        "engine": engine,
        **({"ray": pool[0].as_dict()} if pool else {}),
        "model": encoder.name,
        "dimension": encoder.dimension,
        **run,
        **stats.as_dict(),
    }
    if fingerprint is not None:  # what the next run compares (see _unchanged_since)
        details["documents_fingerprint"] = fingerprint
        details["table_state"] = table_state(location, table)
    status, warning = monitor.finish() if monitor is not None else ("succeeded", None)
    registry.finish_job(
        job_id,
        status,
        rows_offline=stats.documents,
        rows_online=chunks,
        details=details,
        error=warning,
    )
    return JobResult(
        job_id,
        view.name,
        status,
        None,
        end,
        stats.documents,
        chunks,
        duration,
        kind="embedding_view",
        details=details,
        error=warning,
    )


def record_progress(registry: RegistryStore, job_id: str, progress: EncodeProgress) -> None:
    """Write a job's encode progress into its details (``encoded``): what a search of the view
    answers while the view warms (:func:`view_warming`), and ``contextkit jobs show``."""
    eta = progress.eta_s
    try:
        registry.set_job_progress(
            job_id,
            {
                "encoded": {
                    "chunks_done": progress.chunks_done,
                    "chunks_total": progress.chunks_total,
                    "documents_done": progress.documents_done,
                    "docs_per_s": round(progress.docs_per_s, 1),
                    "eta_s": None if eta is None else round(eta, 1),
                }
            },
        )
    except Exception as exc:  # noqa: BLE001 - progress is informative; the job goes on
        log.warning("could not record the encode progress of job %s: %s", job_id, exc)


def view_warming(
    registry: RegistryStore | None, workspace: str, view: str
) -> ViewWarmingError | None:
    """The error of a search of ``view``, an applied embedding view whose vector table holds
    nothing yet, when no materialization of it has landed: 503 ``view_warming``, naming the job
    that builds it (its id, status and encode progress) when one is queued or running, with a
    ``Retry-After`` from the job's ETA. None when a job of the view did land (the table is
    empty or gone for another reason: the caller answers as it would have). Reads the registry
    only (a serving node may have a read-only role)."""
    jobs = []
    if registry is not None:
        try:
            jobs = registry.list_jobs(workspace, view, limit=20)  # the newest first
        except Exception as exc:  # noqa: BLE001 - which job builds it is informative only
            log.warning("could not list the jobs of embedding view %r: %s", view, exc)
    if any(j.status in ("succeeded", "warning") for j in jobs):
        return None
    active = [j for j in jobs if j.status in ("queued", "running")]
    job = next((j for j in active if j.status == "running"), active[0] if active else None)
    where = f"embedding view {view!r} of workspace {workspace!r} is warming"
    if job is None:
        failed = next((j for j in jobs if j.status == "failed"), None)
        last = f"; its last one (job {failed.id}) failed: {failed.error}" if failed else ""
        return ViewWarmingError(
            f"{where}: it is applied, but its vector table is not built yet (no "
            f"materialization of it has landed, and none is running{last})",
            workspace=workspace,
            view=view,
            retry_after=WARMING_RETRY_S,
            hint=f"materialize it (`contextkit materialize {view}`, or `contextkit jobs run "
            f"{view}`); its documents are searchable as soon as the job lands, without a restart",
        )
    encoded = (job.details or {}).get("encoded") or {}
    progress = None
    retry = WARMING_RETRY_S
    if encoded.get("chunks_total"):
        progress = f"{encoded['chunks_done']}/{encoded['chunks_total']} chunks encoded"
        if encoded.get("eta_s") is not None:
            progress += f", about {encoded['eta_s']:.0f} s left"
            retry = max(1, min(60, math.ceil(float(encoded["eta_s"]))))
    elif (job.details or {}).get("progress") not in (None, "", job.status):
        progress = str(job.details["progress"])  # the job's stage (reading, encoding, ...)
    return ViewWarmingError(
        f"{where}: its first materialization (job {job.id}) is {job.status}"
        + (f", {progress}" if progress else ""),
        workspace=workspace,
        view=view,
        retry_after=retry,
        job={"id": job.id, "status": job.status, "progress": progress, "encoded": encoded or None},
        hint=f"retry after {retry} s; follow the job with `contextkit jobs show {job.id}`",
    )


def _landed_empty(registry: RegistryStore | None, workspace: str, view: str) -> bool:
    """Whether the view's newest landed job wrote no chunks: its view has nothing to find, table
    or not (a job that landed before empty tables were created left none)."""
    if registry is None:
        return False
    try:
        jobs = registry.list_jobs(workspace, view, limit=20)
    except Exception:  # noqa: BLE001 - then the store's own answer stands
        return False
    landed = next((j for j in jobs if j.status in ("succeeded", "warning")), None)
    return landed is not None and not landed.rows_online


def documents_fingerprint(
    con: Any, documents: str, view: EmbeddingViewSpec, encoder: Encoder
) -> str | None:
    """A digest of what decides a view's vector table: its spec, its model (name, dimension,
    normalisation) and every document row (keys, text, metadata, as JSON), in any order. None
    when the model's dimension is unknown without calling it (a hosted model without
    ``dimension``): such views always take the full path."""
    from contextkit.embeddings import vectors_id
    from contextkit.embeddings.models import known_dimension

    dimension = known_dimension(encoder)
    if dimension is None:
        return None
    # Order-independent: a 128-bit XOR of the rows' MD5s, a sum of their 64-bit hashes, and the
    # count; one pass, constant memory.
    ((count, xor, total),) = con.execute(
        "SELECT count(*), bit_xor(md5_number(j)), sum(hash(j)) FROM "
        f"(SELECT CAST(to_json(d) AS VARCHAR) AS j FROM ({documents}) AS d)"
    ).fetchall()
    identity = [spec_hash(view), vectors_id(encoder), dimension, encoder.normalize, count, str(xor)]
    identity.append(str(total))
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def table_state(location: str | Path | None, table: str) -> str | None:
    """A token that changes whenever a local vector table is written, read without LanceDB: the
    names of its version manifests (every commit adds one; pruning removes some). None on object
    storage or when the folder is not laid out so (then nothing is skipped)."""
    if location is None or str(location).startswith("s3://"):
        return None
    versions = Path(location) / f"{table}.lance" / "_versions"
    try:
        names = sorted(n for n in os.listdir(versions) if n.endswith(".manifest"))
    except OSError:
        return None
    if not names:
        return None
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:32]


def _unchanged_since(
    registry: RegistryStore,
    workspace: str,
    view: str,
    job_id: str,
    fingerprint: str,
    location: str | Path | None,
    table: str,
) -> Any:
    """The view's last job when this run has nothing to do, else None: it succeeded, saw the
    same fingerprint (documents, spec, model), and the table is as it left it."""
    state = table_state(location, table)
    if state is None:
        return None
    for job in registry.list_jobs(workspace, view, 5):
        if job.id == job_id or job.status in ("queued", "running"):
            continue
        ok = job.status in ("succeeded", "warning")
        same = job.details.get("documents_fingerprint") == fingerprint
        return job if ok and same and job.details.get("table_state") == state else None
    return None


def _encoded_batches(
    plan: Any,
    ray: Any,
    compute: ComputeConfig | None,
    view: EmbeddingViewSpec,
    models: Mapping[str, Any] | None,
    root: Path,
    stage: Callable[[str], None],
    pool: list[Any],
) -> Iterator[Any]:
    """The plan's encoded batches: encoded here, or by an actor pool when ``ray`` is connected
    (the pool's settings are appended to ``pool`` and shown as a stage)."""
    if ray is None:
        return plan.batches()
    from contextkit.compute.ray.embedding import encode_on_ray

    def on_start(settings: Any) -> None:
        pool.append(settings)
        stage(
            f"encoding on ray: {settings.concurrency} actor(s), batches of "
            f"{settings.batch_size}, {settings.num_gpus:g} GPU(s) each"
        )

    assert compute is not None
    return encode_on_ray(
        plan, ray=ray, compute=compute, view=view, models=models, root=root, on_start=on_start
    )


def _must_rebuild(
    vectors: LanceVectorStore, table: str, view: EmbeddingViewSpec, encoder: Encoder
) -> bool:
    """Whether the existing table no longer fits the view (and must be replaced whole)."""
    if not vectors.has_table(table):
        return False
    if vectors.dimension(table) != encoder.dimension:
        return True
    if vectors.key_columns(table) != view.join_key_names:
        return True
    stored = set(vectors.filterable_columns(table)) - set(view.join_key_names)
    return stored != set(view.metadata)


@dataclass
class Documents:
    """Search results, best first: each ``{"id", "text", "score", "key", "metadata",
    "chunk_index", "char_offset"}`` (hybrid hits add ``"scores"``)."""

    view: str
    mode: str
    hits: list[dict[str, Any]]
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.hits[index]

    def to_list(self) -> list[dict[str, Any]]:
        return list(self.hits)

    def to_pandas(self):
        """One row per hit: id, text, score, then the key and metadata columns."""
        import pandas as pd

        rows = [
            {"id": h["id"], "text": h["text"], "score": h["score"], **h["key"], **h["metadata"]}
            for h in self.hits
        ]
        return pd.DataFrame(rows)

    def to_response(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "mode": self.mode,
            "results": self.hits,
            "metadata": {"timings_ms": self.timings_ms},
        }


def search_view(
    vectors: LanceVectorStore,
    encoder: Encoder | None,
    workspace: str,
    view: EmbeddingViewSpec,
    *,
    query: str | None = None,
    vector: Sequence[float] | np.ndarray | None = None,
    top_k: int = 10,
    filter: Mapping[str, Any] | None = None,
    mode: str = "vector",
    group_by: str | None = None,
    fusion: str | None = None,
    depth: int | None = None,
    weights: Sequence[float] | None = None,
    rerank: Any = None,
    root: Path | None = None,
    version: int | None = None,
    registry: RegistryStore | None = None,
) -> Documents:
    """Search one embedding view (see :meth:`contextkit.client.Context.search`); ``version``
    searches a past version of its table (rendered datasets search the version of each event's
    time), with the same fusion, grouping and reranking as a search of the current one.

    ``group_by="document"``: the ``top_k`` best documents instead of chunks, each scored by its
    best chunk, which comes along as its ``highlight`` (see :func:`group_documents`). Hybrid
    options: ``fusion`` (``"blend"``, the default, or ``"rrf"``), ``depth`` (candidates per
    list, default 50) and ``weights`` (vector, text), see :meth:`LanceVectorStore.search`.
    ``rerank``: a reranker stage over the first ``depth`` candidates (see
    :mod:`contextkit.compute.rerank`; ``root`` resolves a relative ``local:`` folder).

    A view whose vector table is not built yet (applied, never materialized, or its first job
    still running) raises :class:`ViewWarmingError` (503, see :func:`view_warming`; ``registry``
    names the job), not the store's 404: the view exists, its documents are on their way."""
    from contextkit.compute import rerank as reranking

    rerank_with = reranking.rerank_options(rerank, root)
    hybrid: dict[str, Any] = {}
    if mode == "hybrid":
        # defaults measured on the eval sets (bench/fusion_eval.py, bench/README.md): the blend
        # of normalised scores over 50 candidates per list beat RRF on MRR@10 and nDCG@10 on
        # both sets (+0.014/+0.016 and +0.031/+0.023), recall@10 +0.024 and -0.002
        hybrid = {"fusion": fusion or DEFAULT_FUSION, "depth": depth or DEFAULT_DEPTH}
        if weights is not None:
            hybrid["weights"] = tuple(weights)
    if group_by not in (None, "chunk", "document"):
        raise BadRequestError(
            f"unknown group_by {group_by!r}",
            hint='use "document" (one hit per document, its best chunk as the highlight) or '
            '"chunk" (the default)',
        )
    timings: dict[str, float] = {}
    if mode in ("vector", "hybrid") and vector is None:
        if not isinstance(query, str) or not query.strip():
            raise BadRequestError(
                f"a {mode} search needs a query text or a vector",
                hint='send "query": "..." (encoded with the view\'s model) or "vector": [...]',
            )
        assert encoder is not None
        from contextkit.embeddings import encode_query

        began = time.perf_counter()
        # The single-query path (no batching, the encoder's LRU cache; ONNX Runtime when the
        # model is configured with backend: onnx), not a batch of one.
        vector = encode_query(encoder, query)
        timings["encode"] = (time.perf_counter() - began) * 1000
    began = time.perf_counter()
    table = vector_table(workspace, view.name)

    def run(k: int) -> list[dict[str, Any]]:
        return vectors.search(
            table,
            vector=vector,
            text=query,
            mode=mode,  # type: ignore[arg-type]
            top_k=k,
            filter=filter,
            version=version,
            **hybrid,
        )

    first = max(top_k, rerank_with.depth) if rerank_with is not None else top_k
    try:
        hits = group_documents(run, first) if group_by == "document" else run(first)
    except Exception as exc:
        from contextkit.stores.vector import VectorTableLostError, VectorTableMissingError

        # A table deleted behind the server's back stays a 503 store_error (rebuild it).
        if isinstance(exc, VectorTableMissingError) and not isinstance(exc, VectorTableLostError):
            warming = view_warming(registry, workspace, view.name)
            if warming is not None:
                raise warming from exc
            if version is None and _landed_empty(registry, workspace, view.name):
                return Documents(view.name, mode, [], timings)
        raise
    # The first job creates the table empty, then fills it in one commit: an empty table whose
    # view has no landed job is warming too (the registry is read for empty answers only).
    if not hits and version is None and registry is not None and not vectors.count_rows(table):
        warming = view_warming(registry, workspace, view.name)
        if warming is not None:
            raise warming
    timings["search"] = (time.perf_counter() - began) * 1000
    if rerank_with is not None:
        began = time.perf_counter()
        timings["rerank_candidates"] = float(len(hits))  # fewer than the depth in small tables
        hits = reranking.rerank(rerank_with, query or "", hits, top_k)
        timings["rerank"] = (time.perf_counter() - began) * 1000
    return Documents(view.name, mode, hits, timings)


_MAX_DEPTH = 1000  # the vector store's top_k limit


def group_documents(
    run: Callable[[int], list[dict[str, Any]]], top_k: int, *, depth: int | None = None
) -> list[dict[str, Any]]:
    """The ``top_k`` best documents from chunk hits: ``run(k)`` returns the best ``k`` chunks.

    Asks for ``max(4 x top_k, top_k + 20)`` chunks, four times deeper while fewer documents
    come out (up to 1,000 chunks). A document scores its best chunk's score; its hit is
    ``{"id": the document's key (values joined by '|'), "key", "score", "text": the best chunk's
    text, "metadata", "highlight": {"id", "text", "chunk_index", "char_offset"} of that chunk,
    "matched_chunks": how many of its chunks were among the candidates}`` (plus ``"scores"``
    for hybrid).
    """
    depth = min(_MAX_DEPTH, depth or max(4 * top_k, top_k + 20))
    while True:
        chunks = run(depth)
        documents: dict[tuple, dict[str, Any]] = {}
        for hit in chunks:
            key = tuple(hit["key"].values())
            doc = documents.get(key)
            if doc is not None:
                doc["matched_chunks"] += 1
                continue
            documents[key] = doc = {
                "id": "|".join(str(v) for v in key),
                "key": hit["key"],
                "score": hit["score"],
                "text": hit["text"],
                "metadata": hit["metadata"],
                "highlight": {
                    "id": hit["id"],
                    "text": hit["text"],
                    "chunk_index": hit["chunk_index"],
                    "char_offset": hit["char_offset"],
                },
                "matched_chunks": 1,
            }
            if "scores" in hit:
                doc["scores"] = hit["scores"]
        if len(documents) >= top_k or len(chunks) < depth or depth >= _MAX_DEPTH:
            return list(documents.values())[:top_k]
        depth = min(_MAX_DEPTH, depth * 4)
