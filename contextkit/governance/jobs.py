"""Jobs as an API: trigger a materialization, follow it, cancel it, run it again.

:class:`JobService` is what the control plane (``contextkit control-plane``: the jobs API and the
CLI's ``contextkit jobs run|cancel|retry|show``) runs jobs with. A trigger records one job per view
``queued`` in the registry (with what to run) and answers its id at once; a worker thread of the
service runs it (:func:`run_view`), recording its stage and a log tail in the job's details. A
trigger that overlaps a queued or running job of the same view and range answers that job instead
of starting a second. A cancel request stops the worker at its next batch; the job leaves the
stores as they were and is recorded ``cancelled``. Queued jobs are in the registry, so a control
plane that restarts picks them up again (:meth:`JobService.resume`); two control planes never run
one job twice (starting a queued job is one conditional update).

:func:`run_view` is also what the scheduler (:mod:`contextkit.governance.scheduler`) runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contextkit.compute.materialize import JobResult, materialize_view
from contextkit.errors import (
    ContextKitError,
    JobCancelledError,
    JobConflictError,
    NotFoundError,
    WorkspaceError,
    translating,
)
from contextkit.framework.workspace import Runtime
from contextkit.stores.registry import JobRecord

log = logging.getLogger("contextkit.jobs")

FINISHED_STATUSES = ("succeeded", "warning", "failed", "cancelled")
LOG_TAIL = 20  # lines of a job's log kept in its details


def run_view(
    runtime: Runtime,
    workspace: str,
    name: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    full: bool = False,
    job_id: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> JobResult:
    """Materialize one view (feature or embedding) of a live workspace: the job
    ``contextkit materialize`` runs for it, optionally as the queued job ``job_id``."""
    specs = runtime.specs(workspace)
    if not specs.workspace.live:
        raise WorkspaceError(
            f"workspace {workspace!r} is a dev workspace: it validates and plans but does not "
            "materialize",
            hint="trigger jobs in a live workspace",
        )
    root = runtime.config.root.resolve()
    monitoring = runtime.config.monitoring.enabled
    if name in specs.embedding_views:
        from contextkit.compute.embedding import materialize_embedding_view
        from contextkit.compute.streaming import log_arrow

        view = specs.embedding_views[name]
        scoped = runtime.use(workspace)
        pushed = {
            source: log_arrow(scoped, workspace, specs.push_sources[source])
            for source in view.sources
            if source in specs.push_sources
        }
        with translating:
            return materialize_embedding_view(
                registry=runtime.registry,
                vectors=lambda: runtime.vectors,  # opened only when something needs encoding
                vector_location=runtime.config.vector_location,
                root=root,
                workspace=workspace,
                view=view,
                sources=specs.sources,
                views=specs.views,
                models=runtime.config.models,
                full=full,
                on_stage=on_stage,
                monitoring=monitoring,
                pushed=pushed,
                job_id=job_id,
                should_stop=should_stop,
                compute=runtime.config.compute,  # compute: ray encodes on Ray Data
            )
    if name not in specs.views:
        raise unknown_view(workspace, [name], specs)
    with translating:
        return materialize_view(
            registry=runtime.registry,
            online=runtime.online,
            offline=runtime.offline,
            root=root,
            workspace=workspace,
            view=specs.views[name],
            sources=specs.sources,
            views=specs.views,
            start=start,
            end=end,
            full=full,
            on_stage=on_stage,
            monitoring=monitoring,
            max_online_shrink=runtime.config.monitoring.max_online_shrink,
            job_id=job_id,
            should_stop=should_stop,
            compute=runtime.config.compute,  # compute: ray computes partitions on Ray
        )


def unknown_view(workspace: str, names: Sequence[str], specs) -> NotFoundError:
    known = sorted([*specs.views, *specs.embedding_views])
    return NotFoundError(
        f"unknown view(s) in workspace {workspace!r}: {', '.join(names)}",
        hint=("materialized views: " + ", ".join(known))
        if known
        else "apply a repo with feature or embedding views first (`contextkit apply`)",
    )


@dataclass(frozen=True)
class Triggered:
    """A job a trigger answers: new (``started``), or the overlapping one already queued or
    running (``started`` False)."""

    job: JobRecord
    started: bool


def _parse(value: str | None) -> datetime | None:
    if value is None:
        return None
    found = datetime.fromisoformat(value)
    return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)


def _overlaps(job: JobRecord, start: datetime | None, end: datetime | None) -> bool:
    """Whether a job's range meets ``[start, end)`` (None: unbounded; a queued job's missing
    end is "now", i.e. open)."""
    low, high = _parse(job.range_start), _parse(job.range_end)
    if start is not None and high is not None and high <= start:
        return False
    return not (end is not None and low is not None and end <= low)


class JobService:
    """Runs the jobs the API triggers, ``workers`` at a time, in this process's threads."""

    def __init__(self, runtime: Runtime, *, workers: int = 2) -> None:
        self.runtime = runtime
        self.registry = runtime.registry
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="contextkit-job")
        self._stopping = threading.Event()
        self._submitted: set[str] = set()
        self._lock = threading.Lock()

    # -- actions --------------------------------------------------------------------------
    def trigger(
        self,
        workspace: str,
        views: Sequence[str] | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        full: bool = False,
        requested_by: str = "api",
    ) -> list[Triggered]:
        """Queue one job per view (default: every materialized view) and return at once."""
        specs = self.runtime.specs(workspace)  # NotFoundError for an unknown workspace
        if not specs.workspace.live:
            raise WorkspaceError(
                f"workspace {workspace!r} is a dev workspace: it does not materialize",
                hint="trigger jobs in a live workspace",
            )
        names = list(views) if views else specs.materialized_order()
        unknown = [n for n in names if n not in specs.views and n not in specs.embedding_views]
        if unknown:
            raise unknown_view(workspace, unknown, specs)
        out = []
        for name in names:
            running = [
                j for j in self.registry.active_jobs(workspace, name) if _overlaps(j, start, end)
            ]
            if running:
                out.append(Triggered(running[0], started=False))
                continue
            request = {
                "start": start.isoformat() if start else None,
                "end": end.isoformat() if end else None,
                "full": full,
                "requested_by": requested_by,
            }
            job_id = self.registry.queue_job(
                workspace,
                name,
                range_start=request["start"],
                range_end=request["end"],
                request=request,
            )
            self.runtime.wrote()
            self._submit(job_id)
            out.append(Triggered(self.get(job_id), started=True))
        return out

    def get(self, job_id: str) -> JobRecord:
        found = self.registry.get_job(job_id)
        if found is None:
            raise NotFoundError(
                f"no job {job_id!r}", hint="list jobs with `contextkit jobs` or GET /v1/jobs"
            )
        return found

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued job at once, or ask a running one to stop at its next batch."""
        job = self.get(job_id)
        if job.status in FINISHED_STATUSES:
            raise JobConflictError(
                f"job {job_id} already finished ({job.display_status}); there is nothing to cancel",
                hint="retry it to run it again",
            )
        self.registry.request_cancel(job_id, time.time())
        self.runtime.wrote()
        return self.get(job_id)

    def retry(self, job_id: str, requested_by: str = "api") -> Triggered:
        """Run a finished job again (same view, range and ``full``)."""
        job = self.get(job_id)
        if job.status not in FINISHED_STATUSES:
            raise JobConflictError(
                f"job {job_id} is still {job.status}",
                hint="wait for it to finish, or cancel it first",
            )
        request = self.registry.job_request(job_id) or {
            "start": job.range_start,
            "end": job.range_end,
            "full": bool(job.details.get("full")) and job.range_start is None,
        }
        (found,) = self.trigger(
            job.workspace,
            [job.view],
            start=_parse(request.get("start")),
            end=_parse(request.get("end")),
            full=bool(request.get("full")),
            requested_by=requested_by,
        )
        return found

    def resume(self) -> int:
        """Submit the queued jobs in the registry (left by a control plane that stopped)."""
        queued = [j for j in self.registry.active_jobs() if j.status == "queued"]
        for job in queued:
            self._submit(job.id)
        return len(queued)

    def close(self, wait: bool = True) -> None:
        """Stop: running jobs are cancelled at their next batch (and recorded so)."""
        self._stopping.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # -- the worker -----------------------------------------------------------------------
    def _submit(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._submitted:
                return
            self._submitted.add(job_id)
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: str) -> None:
        try:
            self._run_job(job_id)
        finally:
            with self._lock:
                self._submitted.discard(job_id)

    def _run_job(self, job_id: str) -> None:
        job = self.registry.get_job(job_id)
        if job is None or job.status != "queued":
            return
        request = self.registry.job_request(job_id) or {}
        lines: list[str] = []

        def on_stage(stage: str) -> None:
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            lines.append(f"{stamp} {stage}")
            del lines[:-LOG_TAIL]
            try:
                self.registry.set_job_progress(job_id, {"progress": stage, "log": list(lines)})
            except Exception as exc:  # noqa: BLE001 - progress is informative only
                log.warning("could not record the progress of job %s: %s", job_id, exc)

        try:
            run_view(
                self.runtime,
                job.workspace,
                job.view,
                start=_parse(request.get("start")),
                end=_parse(request.get("end")),
                full=bool(request.get("full")),
                job_id=job_id,
                should_stop=self._stopping.is_set,
                on_stage=on_stage,
            )
        except JobCancelledError:
            log.info("job %s (%s) was cancelled", job_id, job.view)
        except Exception as exc:  # noqa: BLE001 - recorded on the job, the worker goes on
            log.warning("job %s (%s) failed: %s", job_id, job.view, exc)
            after = self.registry.get_job(job_id)
            if after is not None and after.status == "queued":  # failed before it started
                message = exc.message if isinstance(exc, ContextKitError) else str(exc)
                self.registry.finish_job(job_id, "failed", error=message[:500])
        finally:
            self.runtime.wrote()


def job_view(job: JobRecord) -> dict[str, Any]:
    """A job as the jobs API and ``contextkit jobs show`` present it."""
    details = job.details or {}
    return {
        "id": job.id,
        "workspace": job.workspace,
        "view": job.view,
        "status": job.status,
        "display_status": job.display_status,
        "progress": details.get("progress"),
        "range_start": job.range_start,
        "range_end": job.range_end,
        "rows_offline": job.rows_offline,
        "rows_online": job.rows_online,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "duration_s": job.duration_s,
        "error": job.error,
        "owner": job.owner,
        "log": list(details.get("log") or []),
    }
