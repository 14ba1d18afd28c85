"""Admin actions over HTTP: API keys (``/v1/access/keys``), the audit log (``/v1/audit``), and
what every admin route shares: the audit of each call and the cross-site check.

Served by ``contextkit control-plane`` only (with the jobs API, :mod:`contextkit.server.jobs`):
data plane nodes need no write access to the registry. Every admin action (apply, jobs trigger,
cancel and retry, key create and revoke) runs inside :func:`audited`, which records one row of
the audit log (:mod:`contextkit.governance.audit`): the key's principal and id, the action, the
workspace, ``via`` (``ui`` when the web UI sent it, with ``X-ContextKit-Client: ui``; else
``api``) and the outcome, refusals (``denied``) included.

Cross-site requests. A browser sends a page's requests to any site, with that site's cookies.
contextkit's keys are never cookies (the UI sends its key as ``Authorization: Bearer`` from
script), but a server started with ``--no-auth`` needs no key at all, so any page the operator
opens could post to it. :func:`same_origin` refuses (403) a state-changing request that a
browser marks as coming from another site: ``Sec-Fetch-Site`` other than ``same-origin`` or
``none``, or an ``Origin`` whose host is not the server's (``Host``, or ``X-Forwarded-Host``
behind a proxy). Clients that are not browsers send neither header and are not affected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from contextkit.errors import BadRequestError, NotFoundError, PermissionDeniedError
from contextkit.governance.access import ALL_WORKSPACES, ApiKey
from contextkit.governance.audit import (
    KEYS_CREATE,
    KEYS_REVOKE,
    Actor,
    AuditLog,
    Entry,
    audit_dict,
)
from contextkit.server.auth import PRINCIPAL
from contextkit.server.common import ADMIN, ServerState

UI_CLIENT_HEADER = "x-contextkit-client"  # "ui": the web UI's script sent the request
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def same_origin(request: Request) -> None:
    """403 for a state-changing request a browser sent from another site (see the module)."""
    if request.method in SAFE_METHODS:
        return
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise _cross_site(f"the browser marked it {site}")
    origin = request.headers.get("origin")
    if origin is None:
        return
    hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")} - {None}
    found = urlsplit(origin).netloc if origin != "null" else ""
    if found not in hosts:
        raise _cross_site(f"it came from {origin}")


def _cross_site(why: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"a cross-site request may not change anything here ({why})",
        hint="use the contextkit UI on this server, the CLI or an API client without an Origin "
        "header; behind a proxy, forward the Host (or X-Forwarded-Host) the browser used",
    )


def actor_of(request: Request) -> Actor:
    """Who sends ``request``: the verified key's principal and id (``anonymous`` without
    auth), and whether the web UI sent it."""
    via = "ui" if request.headers.get(UI_CLIENT_HEADER) == "ui" else "api"
    key: ApiKey | None = request.scope.get(PRINCIPAL)
    if key is None:
        return Actor("anonymous", None, via)
    return Actor(key.principal, key.id, via)


@asynccontextmanager
async def audited(
    state: ServerState,
    request: Request,
    action: str,
    workspace: str | None,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> AsyncIterator[Entry]:
    """Run an admin route's body as one audited action (the row is written off the event
    loop). Refuses a cross-site request first, and records that refusal too."""
    audit = AuditLog(state.ctx.registry)
    actor = actor_of(request)
    recorder = audit.action(actor, action, workspace=workspace, target=target, details=details)
    entry = recorder.__enter__()
    try:
        same_origin(request)
        yield entry
    except BaseException as exc:
        await run_in_threadpool(recorder.__exit__, type(exc), exc, exc.__traceback__)
        raise
    await run_in_threadpool(recorder.__exit__, None, None, None)


# -- API keys ------------------------------------------------------------------------------------
class CreateKeyRequest(BaseModel):
    """A new API key: one role, in one workspace (``"*"``: every workspace)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The principal (app or user) the key is for.")
    workspace: str | None = Field(None, description="Default: the server's workspace.")
    role: str = Field("reader", description="reader, ingester or admin.")
    kind: str = Field("service", description="service (an app) or user.")
    description: str = ""
    expires_in_s: int | None = Field(None, description="Lifetime in seconds; default: none.")


class KeyOut(BaseModel):
    id: str
    principal: str
    kind: str
    workspace: str
    role: str
    description: str
    status: str = Field(description="active, revoked or expired")
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None


class CreatedKey(BaseModel):
    key: str = Field(description="The key itself: shown only in this response.")
    record: KeyOut


class KeysOut(BaseModel):
    workspace: str
    keys: list[KeyOut]


class AuditOut(BaseModel):
    workspace: str
    entries: list[dict[str, Any]]


def key_dict(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "principal": key.principal,
        "kind": key.kind,
        "workspace": key.workspace,
        "role": key.role,
        "description": key.description,
        "status": key.status(),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    }


def keys_of(state: ServerState, workspace: str, include_inactive: bool) -> list[ApiKey]:
    """The keys that grant something in ``workspace``: its own and those for every workspace
    (``"*"``: every key)."""
    access = state.ctx.access
    found = access.list_keys(None, include_inactive=include_inactive)
    if workspace == ALL_WORKSPACES:
        return found
    return [k for k in found if k.workspace in (workspace, ALL_WORKSPACES)]


def routes(state: ServerState) -> APIRouter:
    router = APIRouter(tags=["admin"])

    @router.get("/v1/access/keys", response_model=KeysOut)
    async def list_keys(
        request: Request, workspace: str | None = None, include_inactive: bool = False
    ) -> dict[str, Any]:
        """The API keys with a role in the workspace (its own, and keys for every workspace),
        never the keys themselves (``admin``; ``workspace=*``: every key, for an admin of all
        workspaces)."""
        name = workspace or state.default_workspace
        state.check_access(request, name, ADMIN)
        found = await run_in_threadpool(keys_of, state, name, include_inactive)
        return {"workspace": name, "keys": [key_dict(k) for k in found]}

    @router.post("/v1/access/keys", status_code=201, response_model=CreatedKey)
    async def create_key(request: Request, body: CreateKeyRequest) -> dict[str, Any]:
        """Create a key (``admin`` in its workspace; a key for every workspace needs an admin
        key for every workspace). The key is in this response only."""
        name = body.workspace or state.default_workspace
        details = {"principal": body.name, "role": body.role, "kind": body.kind}
        async with audited(state, request, KEYS_CREATE, name, details=details) as entry:
            state.check_access(request, name, ADMIN)
            new = await run_in_threadpool(
                state.ctx.access.create_key,
                body.name,
                workspace=name,
                role=body.role,
                kind=body.kind,
                description=body.description,
                expires_in_s=body.expires_in_s,
            )
            entry.target = new.record.id
        return {"key": new.key, "record": key_dict(new.record)}

    @router.post("/v1/access/keys/{key_id}/revoke", response_model=KeyOut)
    async def revoke_key(
        request: Request, key_id: str, workspace: str | None = None
    ) -> dict[str, Any]:
        """Revoke a key (``admin`` in the key's workspace); servers refuse it from their next
        request. Revoking a revoked key is not an error."""
        record = await run_in_threadpool(state.ctx.registry.find_api_key, key_id)
        name = record.workspace if record is not None else workspace or state.default_workspace
        async with audited(state, request, KEYS_REVOKE, name, target=key_id) as entry:
            state.check_access(request, name, ADMIN)
            if record is None:
                raise NotFoundError(
                    f"no API key with id {key_id!r}", hint="list them with GET /v1/access/keys"
                )
            revoked = await run_in_threadpool(state.ctx.access.revoke, key_id)
            entry.details["principal"] = revoked.principal
        return key_dict(revoked)

    # -- the audit log -----------------------------------------------------------------------
    @router.get("/v1/audit", response_model=AuditOut)
    async def audit_log(
        request: Request,
        workspace: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """The audit log, newest first: who did which admin action, when, where, through what,
        and how it ended (``admin``; actions on every workspace are included)."""
        name = workspace or state.default_workspace
        state.check_access(request, name, ADMIN)
        if not 1 <= limit <= 1000:
            raise BadRequestError("`limit` must be in 1..1000", details={"field": "limit"})
        rows = await run_in_threadpool(
            AuditLog(state.ctx.registry).list, name, action=action, actor=actor, limit=limit
        )
        return {"workspace": name, "entries": [audit_dict(r) for r in rows]}

    return router
