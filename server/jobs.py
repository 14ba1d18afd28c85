"""The control plane's API: jobs (``POST /v1/jobs`` to trigger, ``GET /v1/jobs/{job_id}``,
``POST /v1/jobs/{job_id}/cancel`` and ``POST /v1/jobs/{job_id}/retry``) and ``POST /v1/apply``
(apply over HTTP, for CI/CD: ``contextkit apply --remote URL``).

Served only by ``contextkit control-plane`` (the app is given a
:class:`~contextkit.governance.jobs.JobService`); data plane nodes (``contextkit serve``) never run
jobs nor apply. Triggering, cancelling, retrying and applying need the ``admin`` role in the
workspace, reading a job the ``reader`` role. An apply receives the specs the client validated
(``contextkit apply --remote`` loads and validates the repo where it runs, with its data), diffs
them against the workspace and writes them in one transaction; ``base_version`` refuses (409) a
workspace that changed since the client showed its plan. A trigger answers 202 at once with one
job per view; a view whose queued or running job overlaps the requested range answers that job
(``started: false``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.concurrency import run_in_threadpool

from contextkit.errors import WorkspaceError, translating
from contextkit.framework.plan import compute_plan
from contextkit.framework.specs import ObjectSpec
from contextkit.governance.audit import APPLY, JOBS_CANCEL, JOBS_RETRY, JOBS_TRIGGER
from contextkit.governance.jobs import JobService, job_view
from contextkit.server.admin import actor_of, audited
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


class ApplyRequest(BaseModel):
    """A repo's validated specs (``spec.model_dump(mode="json")`` each) for one workspace."""

    model_config = ConfigDict(extra="forbid")

    workspace: str | None = Field(None, description="Default: the server's workspace.")
    specs: list[dict[str, Any]]
    plan_only: bool = Field(False, description="Only answer the plan; write nothing.")
    base_version: int | None = Field(
        None, description="Refuse (409) unless the workspace is still at this version."
    )


class ApplyResponse(BaseModel):
    workspace: str
    base_version: int
    version: int = Field(description="The workspace's version after the call.")
    applied: bool
    plan: dict[str, Any] = Field(description="The plan, as `contextkit plan --json` prints it.")


_SPECS: TypeAdapter[Any] = TypeAdapter(list[ObjectSpec])


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
        target = ",".join(body.views or []) or None
        details = {"full": body.full, "start": body.start, "end": body.end}
        async with audited(state, request, JOBS_TRIGGER, workspace, target, details) as entry:
            state.check_access(request, workspace, ADMIN)
            triggered = await run_in_threadpool(
                service.trigger,
                workspace,
                body.views,
                start=body.start,
                end=body.end,
                full=body.full,
                requested_by=actor_of(request).label,
            )
            entry.details["jobs"] = {t.job.view: t.job.id for t in triggered}
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
        found = await run_in_threadpool(service.registry.get_job, job_id)
        where = found.workspace if found is not None else workspace or state.default_workspace
        async with audited(state, request, JOBS_CANCEL, where, job_id):
            await run_in_threadpool(job_for, request, job_id, ADMIN, workspace)
            return _out(await run_in_threadpool(service.cancel, job_id))

    @router.post("/v1/jobs/{job_id}/retry", status_code=202, response_model=TriggeredJob)
    async def retry_job(request: Request, job_id: str, workspace: str | None = None):
        """Run a finished job again, same view, range and ``full`` (``admin``); 409 while it
        still runs."""
        job = await run_in_threadpool(service.registry.get_job, job_id)
        where = job.workspace if job is not None else workspace or state.default_workspace
        async with audited(state, request, JOBS_RETRY, where, job_id) as entry:
            await run_in_threadpool(job_for, request, job_id, ADMIN, workspace)
            found = await run_in_threadpool(
                service.retry, job_id, requested_by=actor_of(request).label
            )
            entry.details["job"] = found.job.id
        return _out(found.job, started=found.started)

    @router.post("/v1/apply", response_model=ApplyResponse)
    async def apply(request: Request, body: ApplyRequest) -> dict[str, Any]:
        """Diff the specs against the workspace and apply them in one transaction (``admin``);
        ``plan_only`` answers the plan alone."""

        def run(c: Any) -> dict[str, Any]:
            from contextkit.errors import BadRequestError

            try:
                specs = _SPECS.validate_python(body.specs)
            except ValueError as exc:
                raise BadRequestError(
                    f"the specs are not valid: {str(exc).splitlines()[0]}",
                    hint="send what `contextkit apply --remote` sends: the validated specs",
                ) from None
            with translating:
                plan = compute_plan(c.registry, c.workspace, specs)
            if body.base_version is not None and plan.base_version != body.base_version:
                raise WorkspaceError(
                    f"workspace {c.workspace!r} changed since the plan was made (version "
                    f"{body.base_version} -> {plan.base_version})",
                    hint="run the apply again to see and apply the new plan",
                )
            applied = not body.plan_only and not plan.is_empty
            version = c.apply(plan) if applied else plan.base_version
            return {"workspace": c.workspace, "base_version": plan.base_version,
                    "version": version, "applied": applied, "plan": plan.to_json()}  # fmt: skip

        where = body.workspace or state.default_workspace
        details: dict[str, Any] = {"plan_only": body.plan_only}
        async with audited(state, request, APPLY, where, details=details) as entry:
            c = state.context(request, body.workspace, ADMIN)
            out = await run_in_threadpool(run, c)
            entry.details.update(applied=out["applied"], version=out["version"])
        return out

    return router
