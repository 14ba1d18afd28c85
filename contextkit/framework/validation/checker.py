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
    StreamFeatureViewSpec,
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
        self.order = [s.name for s in specs]

    def error(self, spec: AnySpec, message: str, hint: str | None = None) -> None:
        where = str(spec.location) if spec.location else None
        self.errors.append(
            DefinitionError(f"{spec.kind} {spec.name!r}: {message}", location=where, hint=hint)
        )
