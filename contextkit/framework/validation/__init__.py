"""Validation: turn a loaded repo into checked, enriched specs, or say exactly what is wrong.

Checks (each error names the file and line of the object and gives a hint): references to unknown
entities, sources and views; dependency cycles; missing or unreadable source files; timestamp
columns of the wrong type; SQL that does not bind (run with LIMIT 0 in DuckDB against the sources'
real schemas); join keys and timestamps missing from a view's output; features over missing or
non-numeric columns; services over unknown views or features; prompt views whose model litellm
does not know (offline) or whose params are not generation parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from contextkit.config import LLMConfig
from contextkit.errors import DefinitionError, ValidationErrors
from contextkit.framework import transformations
from contextkit.framework.repo import Repo
from contextkit.framework.specs import (
    AnySpec,
    EmbeddingViewSpec,
    FeatureViewSpec,
    PromptViewSpec,
    RealtimeFeatureViewSpec,
    StreamFeatureViewSpec,
)
from contextkit.framework.transformations import Workspace
from contextkit.framework.validation.checker import Checker
from contextkit.framework.validation.messages import object_error
from contextkit.framework.validation.prompt_views import TEMPLATE_NAMES, load_template

if TYPE_CHECKING:
    from contextkit.prompts import RenderLimits

__all__ = ["TEMPLATE_NAMES", "build_specs", "load_template", "validate"]


def build_specs(repo: Repo) -> list[AnySpec]:
    """Specs of every object in the repo (not yet validated)."""
    root = str(repo.config.root.resolve())
    specs, errors = [], []
    for obj in repo.objects:
        try:
            specs.append(obj.to_spec(root))
        except DefinitionError as exc:
            errors.append(exc)
        except Exception as exc:  # a user function that raised while rendering its SQL
            errors.append(object_error(obj, f"{type(exc).__name__}: {exc}", root))
    if errors:
        raise ValidationErrors(errors)
    return specs


def validate(
    specs: list[AnySpec],
    root: Path,
    models: dict[str, dict] | None = None,
    llm: LLMConfig | None = None,
    *,
    render_limits: RenderLimits | None = None,
) -> list[AnySpec]:
    """Check ``specs`` against each other and the data; return them enriched with schemas.

    ``render_limits`` (``prompts.RenderLimits``, default: the defaults) bound each prompt view's
    sample render.

    ``models`` is the repo config's ``models:`` section (embedding views name one), ``llm`` its
    ``llm:`` section (prompt views' models are checked against it). Raises
    :class:`ValidationErrors` listing every problem found.
    """
    checker = Checker(specs, root, render_limits)
    con = transformations.connect_duckdb()
    try:
        good_sources = checker.check_sources(con)
        checker.failed |= set(checker.sources) - set(good_sources)
        order = checker.view_order()
        ws = Workspace(con, root, good_sources, {})
        for source in checker.push_sources.values():  # empty, with the declared schema
            con.register(source.name, transformations.empty_table(source.columns))
        checked: dict[str, FeatureViewSpec] = {}
        good = set(good_sources)
        for name in order:
            view = checker.views[name]
            if checker.blocked(view, view.sources):
                continue
            result = checker.check_view(ws, view, good)
            if result is not None:
                checked[name] = result
                ws.views[name] = result
                good.add(name)
            else:
                checker.failed.add(name)
        embedded: dict[str, EmbeddingViewSpec] = {}
        for name, view in checker.embedding_views.items():
            if checker.blocked(view, view.sources):
                continue
            result = checker.check_embedding_view(ws, view, good, models)
            if result is not None:
                embedded[name] = result
            else:
                checker.failed.add(name)

        for source in checker.push_sources.values():
            checker.check_push_source(source)
        streams: dict[str, StreamFeatureViewSpec] = {}
        for name, view in checker.stream_views.items():
            if checker.blocked(view, [view.source]):
                continue
            result = checker.check_stream_view(view)
            if result is not None:
                streams[name] = result
            else:
                checker.failed.add(name)
        realtime: dict[str, RealtimeFeatureViewSpec] = {}
        for name, view in checker.realtime_views.items():
            if checker.blocked(view, view.inputs):
                continue
            result = checker.check_realtime_view(view, {**checked, **streams})
            if result is not None:
                realtime[name] = result
            else:
                checker.failed.add(name)
        servable = {**checked, **streams, **realtime}
        prompts: dict[str, PromptViewSpec] = {}
        for name, prompt in checker.prompts.items():
            uses = [r.view for r in prompt.features] + [s.view for s in prompt.searches]
            if checker.blocked(prompt, uses):
                continue
            checker.check_prompt_llm(prompt, llm or LLMConfig())
            result = checker.check_prompt(prompt, servable, embedded)
            if result is not None:
                prompts[name] = result
            else:
                checker.failed.add(name)
        for service in checker.services.values():
            uses = [r.view for r in service.features] + [s.view for s in service.searches]
            if checker.blocked(service, [*uses, *service.prompts]):
                continue
            checker.check_service(service, servable, embedded)
        checker.check_server_groups()
        checker.check_transform_server_groups()
    finally:
        con.close()
    if checker.errors:
        raise ValidationErrors(checker.errors, checker.skipped)
    enriched = {**checker.sources, **checked, **streams, **realtime, **embedded, **prompts}
    groups = checker.transform_groups_with_views()
    return [
        groups[s.name]
        if s.kind == "transform_server_group"
        else enriched.get(s.name, s)
        if s.kind not in ("entity", "context_service", "server_group")
        else s
        for s in specs
    ]
