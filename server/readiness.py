"""Readiness: the server listens at once and warms up in a background thread.

``contextkit serve`` binds its port first, then loads what the first requests would need (the
registry, each embedding model, each vector table, the prompt tokenizers, the context plans:
``Context.warm_steps``), one logged step at a time::

    {"message": "warm-up: warming model 'minilm' (embedding view 'products') in 4.21 s", ...}
    {"message": "Ready: workspace 'prod' warmed up in 9.87 s", ...}

``GET /health`` tells a load balancer or a test when to send traffic:

- ``503 {"status": "starting", "step": "...", "elapsed_s": 3.2}`` while warming up;
- ``200 {"status": "ok"}`` once warm ("Ready" is logged at that moment, not before), with
  ``"warming": [{"workspace", "view", "job", "status", "progress", "retry_after_s"}]`` while
  embedding views of the server's workspace are warming (their first materialization has not
  landed: their searches answer 503 ``view_warming``). Warming views never make the node unready:
  features and prompts are served meanwhile. A probe costs one ``change_token()`` call while the
  registry did not change (see :meth:`Readiness.warming`);
- ``503 {"status": "failed", "step": "...", "error": {...}}`` when a step failed (logged as an
  error; the server keeps answering, and requests that need the failed part fail on their own).

Requests are served during warm-up too; they pay for whatever is not loaded yet. An app built
without warm-up (``create_app(..., warm=False)``, the tests' ``TestClient``) is ready at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from contextkit.errors import ContextKitError

if TYPE_CHECKING:
    from contextkit.client import Context

log = logging.getLogger("contextkit.server")

STARTING, READY, FAILED = "starting", "ok", "failed"

# How long /health may answer its last list of warming views while the registry did not change,
# and how often a warming view's vector table is asked whether pushes filled it.
RECHECK_S = 10.0


class Readiness:
    """Where warm-up stands: ``status`` (starting, ok, failed), the current ``step``, the error."""

    def __init__(self, *, ready: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.status = READY if ready else STARTING
        self.step: str | None = None
        self.error: dict[str, Any] | None = None
        self._began = time.monotonic()
        self._clock = clock  # for warming()'s rechecks
        self._warming_lock = threading.Lock()
        # warming()'s last answer: ((incarnation, change token), when, answer)
        self._answer: tuple[Hashable, float, list[dict[str, Any]]] | None = None
        # (workspace, created_at, view) of the embedding views seen landed: not read again, and
        # when each one's vector table was last seen empty (so it is asked once per RECHECK_S)
        self._landed: set[tuple[str, float, str]] = set()
        self._seen_empty: dict[tuple[str, float, str], float] = {}

    def health(self) -> tuple[int, dict[str, Any]]:
        """The ``/health`` answer: 200 when ready, else 503 saying what it is waiting for."""
        if self.status == READY:
            return 200, {"status": READY}
        body: dict[str, Any] = {"status": self.status, "step": self.step}
        if self.status == STARTING:
            body["elapsed_s"] = round(time.monotonic() - self._began, 1)
        else:
            body["error"] = self.error
        return 503, body

    def warming(self, ctx: Context) -> list[dict[str, Any]]:
        """The embedding views of ``ctx``'s workspace that are warming: applied, no job of theirs
        landed and their vector table holds nothing, each with the job building it (id, status,
        encode progress; None when none runs) and the ``Retry-After`` its searches answer.

        A probe must stay cheap however slow the stores are, so the answer is kept and given
        again while the registry's ``change_token()`` has not moved (a job queued, progressing
        or landing, an apply, a delete all move it), for at most :data:`RECHECK_S`: then a probe
        costs that one call. Otherwise it reads the jobs of the views not yet seen landed and,
        for a view without a landed job, whether its vector table has rows (filled by pushes,
        which the registry does not see): at most once per :data:`RECHECK_S` per view, so a
        slow object store is not asked on every probe while a job reports progress. A view seen
        landed is not read again until its workspace is deleted and created again. Never
        raises: a store that cannot answer is logged, and its views are left out."""
        with self._warming_lock:  # concurrent probes: one reads the stores, the rest reuse it
            try:
                token = ctx.registry.change_token()  # before the specs: a change between is seen
                specs = ctx.specs()
            except ContextKitError:  # no workspace (yet): nothing to list, nothing to log
                return []
            except Exception as exc:  # noqa: BLE001 - readiness answers whatever stores say
                log.warning("/health: could not list the embedding views: %s", exc)
                return []
            # A workspace deleted and created again under its name is another incarnation.
            incarnation = (specs.workspace.name, specs.workspace.created_at)
            now = self._clock()
            kept = self._answer
            if kept is not None and kept[0] == (incarnation, token) and now - kept[1] < RECHECK_S:
                return [dict(view) for view in kept[2]]
            answer = self._read_warming(ctx, incarnation, list(specs.embedding_views), now)
            self._answer = ((incarnation, token), now, answer)
            return [dict(view) for view in answer]

    def _read_warming(
        self, ctx: Context, incarnation: tuple[str, float], views: list[str], now: float
    ) -> list[dict[str, Any]]:
        from contextkit.compute.embedding import view_warming
        from contextkit.compute.layout import vector_table

        workspace = incarnation[0]
        # What is known of another incarnation (or an earlier workspace) is of no use any more.
        self._landed = {key for key in self._landed if key[:2] == incarnation}
        self._seen_empty = {k: t for k, t in self._seen_empty.items() if k[:2] == incarnation}
        out: list[dict[str, Any]] = []
        for view in views:
            key = (*incarnation, view)
            if key in self._landed:
                continue
            try:
                warming = view_warming(ctx.registry, workspace, view)
                seen_empty = self._seen_empty.get(key)
                if warming is not None and (seen_empty is None or now - seen_empty >= RECHECK_S):
                    table = vector_table(workspace, view)
                    vectors = ctx.vectors
                    if vectors.has_table(table) and vectors.count_rows(table):
                        warming = None  # documents pushed without a job: served
                    else:
                        self._seen_empty[key] = now
            except Exception as exc:  # noqa: BLE001
                log.warning("/health: could not tell whether view %r is warming: %s", view, exc)
                continue
            if warming is None:
                self._landed.add(key)
                continue
            details = warming.to_dict()["error"]["details"]
            job = details.get("job") or {}
            out.append(
                {
                    "workspace": workspace,
                    "view": view,
                    "job": job.get("id"),
                    "status": job.get("status", "not materialized"),
                    "progress": job.get("progress"),
                    "retry_after_s": details.get("retry_after_s"),
                }
            )
        return out

    def warm_in_background(self, ctx: Context) -> threading.Thread:
        """Run ``ctx``'s warm-up steps in a daemon thread, logging each; then mark ready."""
        thread = threading.Thread(
            target=self._warm, args=(ctx,), name="contextkit-warm-up", daemon=True
        )
        thread.start()
        return thread

    def _warm(self, ctx: Context) -> None:
        self._began = time.monotonic()
        workspace = ctx.workspace
        log.info("warm-up: starting", extra={"fields": {"workspace": workspace}})
        try:
            for description, run in ctx.warm_steps():
                self.step = description
                began = time.monotonic()
                run()
                seconds = round(time.monotonic() - began, 2)
                log.info(
                    f"warm-up: {description} in {seconds:.2f} s",
                    extra={"fields": {"step": description, "duration_s": seconds}},
                )
        except Exception as exc:
            self.error = (
                exc.to_dict()["error"]
                if isinstance(exc, ContextKitError)
                else {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            )
            self.status = FAILED
            log.exception(
                f"warm-up failed at {self.step!r}: the server answers /health with 503",
                extra={"fields": {"step": self.step, "workspace": workspace}},
            )
            return
        self.step = None
        seconds = round(time.monotonic() - self._began, 2)
        self.status = READY
        log.info(
            f"Ready: workspace {workspace!r} warmed up in {seconds:.2f} s",
            extra={"fields": {"workspace": workspace, "duration_s": seconds}},
        )
