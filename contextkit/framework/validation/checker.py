"""The checker's state (the specs by kind, the errors found) and the composed :class:`Checker`."""

from __future__ import annotations

from pathlib import Path

from contextkit.errors import DefinitionError
from contextkit.framework.specs import (
    AnySpec,
    ContextServiceSpec,
    DatabaseSourceSpec,
    EmbeddingViewSpec,
    EntitySpec,
    FeatureViewSpec,
    FileSourceSpec,
    PromptViewSpec,
    PushSourceSpec,
    RealtimeFeatureViewSpec,
    ServerGroupSpec,
    StreamFeatureViewSpec,
    TransformServerGroupSpec,
)
from contextkit.framework.validation.embedding_views import EmbeddingViewChecks
from contextkit.framework.validation.feature_views import FeatureViewChecks
from contextkit.framework.validation.prompt_views import PromptViewChecks
from contextkit.framework.validation.services import ServiceChecks
from contextkit.framework.validation.sources import SourceChecks


class Checker(
    SourceChecks, FeatureViewChecks, EmbeddingViewChecks, PromptViewChecks, ServiceChecks
):
    """Checks specs against each other and the data, collecting every problem in ``errors``."""

    def __init__(self, specs: list[AnySpec], root: Path, render_limits=None) -> None:
        self.root = root
        self.render_limits = render_limits  # prompts.RenderLimits of the sample renders
        self.errors: list[DefinitionError] = []
        self.entities = {s.name: s for s in specs if isinstance(s, EntitySpec)}
        self.sources = {
            s.name: s for s in specs if isinstance(s, FileSourceSpec | DatabaseSourceSpec)
        }
        self.views = {s.name: s for s in specs if isinstance(s, FeatureViewSpec)}
        self.services = {s.name: s for s in specs if isinstance(s, ContextServiceSpec)}
        self.embedding_views = {s.name: s for s in specs if isinstance(s, EmbeddingViewSpec)}
        self.prompts = {s.name: s for s in specs if isinstance(s, PromptViewSpec)}
        self.push_sources = {s.name: s for s in specs if isinstance(s, PushSourceSpec)}
        self.stream_views = {s.name: s for s in specs if isinstance(s, StreamFeatureViewSpec)}
        self.realtime_views = {s.name: s for s in specs if isinstance(s, RealtimeFeatureViewSpec)}
        self.server_groups = {s.name: s for s in specs if isinstance(s, ServerGroupSpec)}
        self.transform_server_groups = {
            s.name: s for s in specs if isinstance(s, TransformServerGroupSpec)
        }
        self.order = [s.name for s in specs]
        # Objects that failed a check (or were skipped because something they use failed), and
        # what was skipped because of which failure: one error per mistake.
        self.failed: set[str] = set()
        self.skipped: dict[str, list[str]] = {}
        self._labels = {s.name: f"{s.kind} {s.name!r}" for s in specs}

    def blocked(self, spec: AnySpec, uses: list[str]) -> bool:
        """Whether ``spec`` uses an object that failed; if so it is noted as skipped (not an
        error of its own) and counts as failed for what uses it in turn."""
        bad = [name for name in uses if name in self.failed and name != spec.name]
        if not bad:
            return False
        self.skipped.setdefault(self._labels.get(bad[0], repr(bad[0])), []).append(
            self._labels.get(spec.name, repr(spec.name))
        )
        self.failed.add(spec.name)
        return True

    def error(
        self, spec: AnySpec, message: str, hint: str | None = None, *, at: str | None = None
    ) -> None:
        """Report a problem of ``spec`` at its definition (or at ``at``, a ``file:line`` inside
        it, such as the SQL line an engine error names)."""
        where = at or (str(spec.location) if spec.location else None)
        self.failed.add(spec.name)
        self.errors.append(
            DefinitionError(f"{spec.kind} {spec.name!r}: {message}", location=where, hint=hint)
        )

    def entities_hint(self) -> str:
        if not self.entities:
            return "no entity is defined: define it with Entity(name=..., join_keys=[...])"
        return (
            "entities defined in the repo: "
            + ", ".join(sorted(self.entities))
            + " (or define it with Entity(...))"
        )
