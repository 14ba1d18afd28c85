"""The jobs API of the control plane: ``POST /v1/jobs`` (trigger), ``GET /v1/jobs/{job_id}``,
``POST /v1/jobs/{job_id}/cancel`` and ``POST /v1/jobs/{job_id}/retry``.

Served only by ``contextkit control-plane`` (the app is given a
:class:`~contextkit.governance.jobs.JobService`); data plane nodes (``contextkit serve``) never run
jobs. Triggering, cancelling and retrying need the ``admin`` role in the job's workspace, reading
a job the ``reader`` role. A trigger answers 202 at once with one job per view; a view whose
queued or running job overlaps the requested range answers that job (``started: false``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from contextkit.governance.jobs import JobService, job_view
from contextkit.server.common import ADMIN, READER, ServerState


class TriggerJobsRequest(BaseModel):
    """What to materialize: views of a workspace, over an optional range."""

    model_config = ConfigDict(extra="forbid")

    workspace: str | None = Field(None, description="Default: the server's workspace.")
    views: list[str] | None = Field(
        None, description="Feature or embedding views; default: every materialized view."
    )
    start: datetime | None = Field(None, description="Range start (default: the watermark).")
    end: datetime | None = Field(None, description="Range end (default: now).")
    full: bool = Field(False, description="Recompute all history.")


class JobOut(BaseModel):
    id: str
    workspace: str
    view: str
    status: str = Field(description="queued, running, succeeded, warning, failed, cancelled")
    display_status: str
    progress: str | None = Field(None, description="The stage the job is in, or was last in.")
    range_start: str | None = None
    range_end: str | None = None
    rows_offline: int | None = None
    rows_online: int | None = None
    started_at: float
    finished_at: float | None = None
    duration_s: float | None = None
    error: str | None = None
    owner: str | None = None
    log: list[str] = Field(default_factory=list, description="The job log's last lines.")


class TriggeredJob(JobOut):
    started: bool = Field(
        description="False: an overlapping job of the view was already queued or running, and "
        "this is that job."
    )


class TriggerJobsResponse(BaseModel):
    job_id: str = Field(description="The first (or only) job's id.")
    jobs: list[TriggeredJob]


def _out(job: Any, **extra: Any) -> dict[str, Any]:
    return {**job_view(job), **extra}


def routes(state: ServerState, service: JobService) -> APIRouter:
    router = APIRouter(tags=["jobs"])

    def job_for(request: Request, job_id: str, role: str, workspace: str | None):
        """The job, once the caller may act in its workspace as ``role`` (an unknown job is 404
        only to a caller allowed in the workspace it names, or the server's)."""
        found = service.registry.get_job(job_id)
        name = found.workspace if found is not None else workspace or state.default_workspace
        state.check_access(request, name, role)
        return service.get(job_id)  # NotFoundError for an unknown id

    @router.post("/v1/jobs", status_code=202, response_model=TriggerJobsResponse)
    async def trigger_jobs(request: Request, body: TriggerJobsRequest) -> dict[str, Any]:
        """Queue a materialization job per view and answer their ids at once (``admin``)."""
        workspace = body.workspace or state.default_workspace
        state.check_access(request, workspace, ADMIN)
        triggered = await run_in_threadpool(
            service.trigger,
            workspace,
            body.views,
            start=body.start,
            end=body.end,
            full=body.full,
        )
        jobs = [_out(t.job, started=t.started) for t in triggered]
        return {"job_id": jobs[0]["id"], "jobs": jobs}

    @router.get("/v1/jobs/{job_id}", response_model=JobOut)
    async def get_job(request: Request, job_id: str, workspace: str | None = None):
        """A job's status, progress, rows, error and log tail (``reader``)."""
        job = await run_in_threadpool(job_for, request, job_id, READER, workspace)
        return _out(job)

    @router.post("/v1/jobs/{job_id}/cancel", response_model=JobOut)
    async def cancel_job(request: Request, job_id: str, workspace: str | None = None):
        """Cancel a job (``admin``): a queued one at once, a running one at its next batch (it
        leaves the stores as they were). A finished job answers 409."""
        await run_in_threadpool(job_for, request, job_id, ADMIN, workspace)
        return _out(await run_in_threadpool(service.cancel, job_id))

    @router.post("/v1/jobs/{job_id}/retry", status_code=202, response_model=TriggeredJob)
    async def retry_job(request: Request, job_id: str, workspace: str | None = None):
        """Run a finished job again, same view, range and ``full`` (``admin``); 409 while it
        still runs."""
        await run_in_threadpool(job_for, request, job_id, ADMIN, workspace)
        found = await run_in_threadpool(service.retry, job_id)
        return _out(found.job, started=found.started)

    return router
