"""Readiness: the server listens at once and warms up in a background thread.

``contextkit serve`` binds its port first, then loads what the first requests would need (the
registry, each embedding model, each vector table, the prompt tokenizers, the context plans:
``Context.warm_steps``), one logged step at a time::

    {"message": "warm-up: warming model 'minilm' (embedding view 'products') in 4.21 s", ...}
    {"message": "Ready: workspace 'prod' warmed up in 9.87 s", ...}

``GET /health`` tells a load balancer or a test when to send traffic:

- ``503 {"status": "starting", "step": "...", "elapsed_s": 3.2}`` while warming up;
- ``200 {"status": "ok"}`` once warm ("Ready" is logged at that moment, not before);
- ``503 {"status": "failed", "step": "...", "error": {...}}`` when a step failed (logged as an
  error; the server keeps answering, and requests that need the failed part fail on their own).

Requests are served during warm-up too; they pay for whatever is not loaded yet. An app built
without warm-up (``create_app(..., warm=False)``, the tests' ``TestClient``) is ready at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from contextkit.errors import ContextKitError

if TYPE_CHECKING:
    from contextkit.client import Context

log = logging.getLogger("contextkit.server")

STARTING, READY, FAILED = "starting", "ok", "failed"


class Readiness:
    """Where warm-up stands: ``status`` (starting, ok, failed), the current ``step``, the error."""

    def __init__(self, *, ready: bool) -> None:
        self.status = READY if ready else STARTING
        self.step: str | None = None
        self.error: dict[str, Any] | None = None
        self._began = time.monotonic()

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
