"""Errors raised by contextkit: the one tree of the core, every subclass defined here.

Every error carries a short machine-readable ``code``, a message that says what went wrong and
where, and a ``hint`` that says how to fix it. The CLI prints them as one line plus the hint; the
server turns them into ``{"error": {"code", "message", "details"}}`` with the matching HTTP status::

    class                          code                    HTTP  raised by
    ContextKitError                error                   400
    └── ConfigError                config_error            400  config (contextkit.yaml)
    └── DefinitionError            invalid_definition      400  framework: loading, validation
    └── ValidationErrors           invalid_repo            400  framework: every problem of a plan
    └── NotFoundError              not_found               404  every part
    └── BadRequestError            bad_request             400  every part
        └── IngestError            invalid_records         400  compute.streaming
        └── ChatRequestError       bad_request             400  retrieval.chat
            └── InvalidChatBody    invalid_request         422  retrieval.chat
    └── RegistryError              registry_error          500  stores.registry, translated
    └── StoreError                 store_error             500  stores, translated
        └── StoreUnavailableError  store_error             503  a store down, or its data damaged
    └── InternalError              internal_error          500  the server's last resort
    └── WorkspaceError             workspace_error         409  framework.workspace
    └── AuthenticationError        unauthenticated         401  governance.access
        └── KeyRejected            unauthenticated         401  governance.access
    └── PermissionDeniedError      permission_denied       403  governance.access
    └── PayloadTooLargeError       payload_too_large       413  server limits
    └── RateLimitedError           rate_limited            429  server limits
    └── BatchTooLargeError         batch_too_large         413  compute.streaming
    └── ExpectationFailedError     expectation_failed      422  compute.quality
    └── MonitoringError            monitoring_error        500  compute.quality
    └── RealtimeFeatureError       realtime_feature_error  500  framework.realtime
        └── TransformTimeoutError  transform_timeout       504  framework.transform_workers
        └── TransformWorkerError   transform_worker_failed 503  framework.transform_workers
        └── TransformBusyError     transform_busy          503  framework.transform_workers
    └── PushEmbeddingError         push_embedding_failed   500  compute.push_embeddings
    └── JobConflictError           job_conflict            409  governance.jobs
    └── JobCancelledError          job_cancelled           409  compute (a cancelled job)
    └── RerankError                rerank_failed           502  compute.rerank (the provider failed)
    └── ComputeError               compute_error           503  compute.ray (engine unavailable)
    └── ViewWarmingError           view_warming            503  compute.embedding (no table yet)

The leaves (``stores``, ``embeddings``, ``prompts``) import nothing of the core, so they keep
their own small bases; :func:`translate_store_errors` and :data:`translating` turn their errors
into this tree once, where the core calls them. The codes and statuses above are read from the
classes by ``tests/test_errors.py`` (indentation = subclass), so this drawing cannot drift.
"""

from __future__ import annotations

from typing import Any


class ContextKitError(Exception):
    """Base class of every error contextkit raises on purpose."""

    code = "error"
    http_status = 400
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        details = self.details if self.details is not None else {}
        if self.hint and isinstance(details, dict):
            details = {**details, "hint": self.hint}
        return {"error": {"code": self.code, "message": self.message, "details": details}}

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:
        # Pickled whole (hint, details, a subclass's own fields): an error raised in a Ray task
        # reaches the driver as it was raised, whatever the subclass's __init__ takes.
        return (_restore_error, (type(self), self.args, self.__dict__))


def _restore_error(cls: type[ContextKitError], args: tuple, state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigError(ContextKitError):
    """The repo config (``contextkit.yaml``) is missing or malformed."""

    code = "config_error"
    exit_code = 2


class DefinitionError(ContextKitError):
    """A context-as-code object is defined incorrectly (caught while loading or validating)."""

    code = "invalid_definition"
    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        location: str | None = None,
        hint: str | None = None,
        details: Any = None,
    ) -> None:
        self.location = location
        full = f"{location}: {message}" if location else message
        super().__init__(full, hint=hint, details=details)


class ValidationErrors(ContextKitError):
    """Several definition problems found in one pass; each is a :class:`DefinitionError`."""

    code = "invalid_repo"
    exit_code = 2

    def __init__(
        self, errors: list[DefinitionError], skipped: dict[str, list[str]] | None = None
    ) -> None:
        # skipped: a failed object -> the objects that depend on it, not checked (not errors)
        self.errors = errors
        self.skipped = skipped or {}
        lines = [f"{len(errors)} problem(s) in the repo:"]
        for err in errors:
            lines.append(f"  - {err.message}" + (f"\n    hint: {err.hint}" if err.hint else ""))
        for failed, dependents in self.skipped.items():
            lines.append(f"  skipped because {failed} failed: {', '.join(dependents)}")
        details: dict[str, Any] = {"errors": [e.message for e in errors]}
        if self.skipped:
            details["skipped"] = self.skipped
        super().__init__("\n".join(lines), details=details)


class NotFoundError(ContextKitError):
    """A named workspace, service, view, feature or job does not exist."""

    code = "not_found"
    http_status = 404


class BadRequestError(ContextKitError):
    """A request is well-formed JSON but asks for something invalid (wrong key type, empty list)."""

    code = "bad_request"
    http_status = 400


class RegistryError(ContextKitError):
    """The registry file cannot be used (corrupt, or written by a newer contextkit)."""

    code = "registry_error"
    http_status = 500
    exit_code = 2


class StoreError(ContextKitError):
    """A data file or store cannot be read or written (missing source file, corrupt Parquet)."""

    code = "store_error"
    http_status = 500


class StoreUnavailableError(StoreError):
    """A store cannot serve: its server is down, refuses the credentials, is read-only or full
    (Redis, PostgreSQL, an S3 endpoint or bucket), or its data is missing, unreadable or damaged
    (a vector table deleted under the server, an online SQLite file that is not a database,
    offline Parquet files gone): HTTP 503. The message names the store (password masked); the
    hint says what to check or re-materialize. Clients reconnect by themselves once the server
    is back."""

    http_status = 503


class InternalError(ContextKitError):
    """An unexpected error (a bug): HTTP 500; the traceback goes to the server log only."""

    code = "internal_error"
    http_status = 500


class WorkspaceError(ContextKitError):
    """An operation is not allowed in this workspace (materializing a dev workspace)."""

    code = "workspace_error"
    http_status = 409


class AuthenticationError(ContextKitError):
    """A request carries no API key, or one that is unknown, revoked or expired (HTTP 401)."""

    code = "unauthenticated"
    http_status = 401
    # RFC 9110: a 401 names the scheme(s) the server accepts.
    headers = {"WWW-Authenticate": 'Bearer realm="contextkit"'}


class PermissionDeniedError(ContextKitError):
    """A valid API key whose role or workspace does not allow the request (HTTP 403)."""

    code = "permission_denied"
    http_status = 403


class PayloadTooLargeError(ContextKitError):
    """A request body over the server's size limit (HTTP 413)."""

    code = "payload_too_large"
    http_status = 413


class RateLimitedError(ContextKitError):
    """Too many requests from one API key (HTTP 429); retry after ``retry_after`` seconds."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, details={"retry_after_s": retry_after})
        self.headers = {"Retry-After": str(retry_after)}


class JobConflictError(ContextKitError):
    """A job action that does not fit the job's state: cancelling a finished job, retrying one
    that still runs."""

    code = "job_conflict"
    http_status = 409


class JobCancelledError(ContextKitError):
    """Raised inside a job's worker when someone cancelled the job: the job stops at its next
    batch, leaves the stores as they were and is recorded ``cancelled``."""

    code = "job_cancelled"
    http_status = 409


class RerankError(ContextKitError):
    """A hosted rerank model failed upstream: the provider answered an error, timed out,
    refused the key or could not be reached (HTTP 502, like an LLM provider's failure). Bad
    rerank options are a :class:`BadRequestError` (400)."""

    code = "rerank_failed"
    http_status = 502


class ComputeError(ContextKitError):
    """The distributed compute engine cannot run the job: Ray is not installed, the cluster
    address does not answer within ``compute.connect_timeout_s``, or the cluster lost the job
    (HTTP 503; nothing was published). A partition that fails for a data reason raises the
    data error of the local engine instead, naming the view, the partition and the value."""

    code = "compute_error"
    http_status = 503


_LEAF_MODULES = ("contextkit.embeddings", "contextkit.prompts", "contextkit.stores")


class ViewWarmingError(ContextKitError):
    """A search of an applied embedding view whose vector table is not built yet: its first
    materialization has not landed (it may be running). Temporary, so HTTP 503 with
    ``Retry-After``; ``details``: ``workspace``, ``view``, ``retry_after_s`` and, when a job is
    queued or running, ``job`` (``id``, ``status``, ``progress``). A context request answers
    without that search's documents instead (``metadata.warming``)."""

    code = "view_warming"
    http_status = 503

    def __init__(
        self,
        message: str,
        *,
        workspace: str,
        view: str,
        retry_after: int,
        job: dict[str, Any] | None = None,
        hint: str | None = None,
    ) -> None:
        details: dict[str, Any] = {"workspace": workspace, "view": view}
        details["retry_after_s"] = retry_after
        if job is not None:
            details["job"] = job
        super().__init__(message, hint=hint, details=details)
        self.headers = {"Retry-After": str(retry_after)}


class ExpectationFailedError(ContextKitError):
    """A job's rows failed an expectation of a view declared with on_expectation_failure="fail";
    the job is failed and the stores are left as they were."""

    code = "expectation_failed"
    http_status = 422


class MonitoringError(ContextKitError):
    """The quality statistics of a job could not be computed."""

    code = "monitoring_error"
    http_status = 500


class RealtimeFeatureError(ContextKitError):
    """A realtime view's function raised, or returned something other than its features."""

    code = "realtime_feature_error"
    http_status = 500


class TransformTimeoutError(RealtimeFeatureError):
    """A realtime view of a transform server group did not answer within the group's timeout
    (or every worker of the group stayed busy that long)."""

    code = "transform_timeout"
    http_status = 504


class TransformWorkerError(RealtimeFeatureError):
    """A worker process of a transform server group died (or could not start) during a call."""

    code = "transform_worker_failed"
    http_status = 503


class TransformBusyError(RealtimeFeatureError):
    """Every worker of a transform server group is busy and as many calls already wait for one:
    answered at once, so one held group cannot take every thread the server shares."""

    code = "transform_busy"
    http_status = 503


class IngestError(BadRequestError):
    """Records that do not fit the push source; ``details["errors"]`` lists them by index."""

    code = "invalid_records"


class BatchTooLargeError(ContextKitError):
    code = "batch_too_large"
    http_status = 413


class PushEmbeddingError(ContextKitError):
    """Records pushed to a source behind an embedding view could not be encoded; they are in the
    ingest log, and the next materialization of the view encodes them. ``details["failures"]``
    lists each failed encode (workspace, view, records, error, at)."""

    code = "push_embedding_failed"
    http_status = 500


class ChatRequestError(BadRequestError):
    """A chat request this endpoint cannot serve as asked (400). ``param`` is the OpenAI
    request parameter at fault (``"messages[2].content"``, ``"n"``, ``"contextkit.entities"``)."""

    def __init__(
        self, message: str, *, param: str | None, hint: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, hint=hint, details={"field": param} if param else None)
        self.param = param
        if code:
            self.code = code


class InvalidChatBody(ChatRequestError):
    """A chat body of the wrong shape: a field of the wrong JSON type, a missing field (422)."""

    code = "invalid_request"
    http_status = 422

    def __init__(self, message: str, *, param: str, problem: str | None = None) -> None:
        super().__init__(message, param=param)
        self.details = {"errors": [{"path": f"body.{param}", "message": problem or message}]}


class KeyRejected(AuthenticationError):
    """A key that is not (or no longer) valid. ``reason`` and ``key_id`` are for the log only:
    the client sees the message, which names neither the key nor whose it was."""

    def __init__(self, reason: str, key_id: str | None = None) -> None:
        message = {
            "invalid": "the API key is not valid",
            "revoked": "the API key has been revoked",
            "expired": "the API key has expired",
        }[reason]
        super().__init__(
            message,
            hint="send `Authorization: Bearer <key>` with an active key (an admin creates one "
            "with `contextkit access create-key`)",
        )
        self.reason = reason
        self.key_id = key_id


# -- translating the leaves' errors, once, at the boundary -----------------------------------------
def leaf_error(exc: BaseException) -> ContextKitError | None:
    """A leaf layer's error (embeddings, prompts, stores) as a :class:`ContextKitError`.

    The leaves don't import the core; their errors carry the same fields (``code``,
    ``http_status``, ``message``, ``hint``, ``details``), which this copies. None for anything else.
    """
    if not type(exc).__module__.startswith(_LEAF_MODULES):
        return None
    message = getattr(exc, "message", None)
    if not isinstance(message, str):
        return None
    details = getattr(exc, "details", None)
    details = dict(details) if isinstance(details, dict) else {}
    hint = getattr(exc, "hint", None)
    details.pop("hint", None)
    err = ContextKitError(message, hint=hint, details=details)
    err.code = getattr(exc, "code", None) or "error"
    err.http_status = int(getattr(exc, "http_status", 500) or 500)
    err.exit_code = 1
    return err


def translate_store_errors(exc: BaseException) -> ContextKitError:
    """A store's failure (``contextkit.stores.errors.StoreFailure``) as the user-facing error of
    the matching kind."""
    from contextkit.stores.errors import (
        ApplyConflictError,
        MissingError,
        RegistryVersionError,
        StoreServerUnavailable,
        StoreUnavailable,
    )

    if isinstance(exc, StoreUnavailable):
        return StoreUnavailableError(exc.message, hint=exc.hint)
    if isinstance(exc, StoreServerUnavailable):  # Redis, PostgreSQL, S3: down, refused, full
        return StoreUnavailableError(
            exc.message,
            hint=exc.hint
            or "check that the store's server is running and reachable, and its URL and "
            "credentials (contextkit.yaml or the CONTEXTKIT_* / AWS_* variables); requests "
            "succeed again once it is back",
        )
    if isinstance(exc, RegistryVersionError):
        return RegistryError(exc.message, hint=exc.hint)
    if isinstance(exc, MissingError):
        return NotFoundError(exc.message, hint=exc.hint)
    if isinstance(exc, ApplyConflictError):
        return WorkspaceError(exc.message, hint=exc.hint)
    if hasattr(type(exc), "http_status"):  # a store error that knows its status (vector store)
        translated = leaf_error(exc)
        if translated is not None:
            return translated
    return StoreError(exc.message, hint=getattr(exc, "hint", None))


class _Translating:
    """``with translating:`` turns store and other leaf failures (embeddings, prompts) raised in
    the block into contextkit errors; anything else passes through unchanged."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None or isinstance(exc, ContextKitError):
            return
        from contextkit.stores.errors import StoreFailure

        if isinstance(exc, StoreFailure):
            raise translate_store_errors(exc) from exc
        translated = leaf_error(exc)
        if translated is not None:
            raise translated from exc


translating = _Translating()
