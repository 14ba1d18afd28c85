"""Checks of prompt views and their searches: features and documents they read, the template's
variables (with the template's own line), the model and its generation parameters."""

from __future__ import annotations

from pathlib import Path

from contextkit.config import LLMConfig
from contextkit.errors import DefinitionError
from contextkit.framework.specs import (
    AnySpec,
    EmbeddingViewSpec,
    FeatureRefSpec,
    FeatureViewSpec,
    PromptViewSpec,
    SearchSpec,
)
from contextkit.framework.validation.embedding_views import arrow_types


class PromptViewChecks:
    """The prompt views checks of :class:`~contextkit.framework.validation.checker.Checker`."""

    # -- searches and prompts -----------------------------------------------------------------
    def check_search(
        self,
        owner: AnySpec,
        search: SearchSpec,
        embedding_views: dict[str, EmbeddingViewSpec],
        request_fields: set[str] | None,
    ) -> None:
        if search.view not in self.embedding_views:
            hint = "embedding views: " + (", ".join(sorted(self.embedding_views)) or "none")
            if search.view in self.views:
                hint = f"{search.view!r} is a feature view; searches run over embedding views"
            self.error(
                owner, f"search {search.name!r}: unknown embedding view {search.view!r}", hint
            )
            return
        view = embedding_views.get(search.view)
        if view is None:
            return  # its own problem was reported
        if search.filter is not None:
            from contextkit.stores.vector import InvalidFilterError, parse_filter

            try:
                parse_filter(search.filter, arrow_types(view))
            except InvalidFilterError as exc:
                self.error(owner, f"search {search.name!r}: {exc.message}", hint=exc.hint)
        if (
            request_fields is not None
            and search.query_from != "query"
            and search.query_from not in request_fields
        ):
            self.error(
                owner,
                f"search {search.name!r} takes its query from {search.query_from!r}, which is "
                "not a request-context field",
                hint="declare it with RequestField(...) in the prompt's request_context, or use "
                'query_from="query" (the request\'s query text)',
            )

    def check_feature_refs(
        self, owner: AnySpec, refs: list[FeatureRefSpec], views: dict[str, FeatureViewSpec]
    ) -> dict[str, tuple[str, str | None]]:
        """Check a service's or prompt's use of feature views; returns join key -> (view, type)."""
        key_types: dict[str, tuple[str, str | None]] = {}
        all_views = self.views.keys() | self.stream_views.keys() | self.realtime_views.keys()
        for ref in refs:
            if ref.view not in all_views:
                self.error(
                    owner,
                    f"unknown feature view {ref.view!r}",
                    hint="views: " + (", ".join(sorted(all_views)) or "none defined"),
                )
                continue
            view = views.get(ref.view)
            if view is None:
                continue
            if not view.online:
                self.error(
                    owner,
                    f"view {ref.view!r} is offline-only (online=False) but "
                    f"{owner.kind.replace('_', ' ')}s serve online",
                    hint=f"set online=True on {ref.view!r} or leave it out",
                )
            known = {f.name for f in view.features}
            for name in ref.features or []:
                if name not in known:
                    self.error(
                        owner,
                        f"view {ref.view!r} has no feature {name!r}",
                        hint=f"its features are: {', '.join(sorted(known))}",
                    )
            for key in view.join_keys:
                seen = key_types.setdefault(key.name, (ref.view, key.dtype))
                if seen[1] != key.dtype:
                    self.error(
                        owner,
                        f"join key {key.name!r} is {key.dtype} in view {ref.view!r} but "
                        f"{seen[1]} in view {seen[0]!r}",
                        hint="make the key the same type in both views",
                    )
        return key_types

    def check_prompt(
        self,
        prompt: PromptViewSpec,
        views: dict[str, FeatureViewSpec],
        embedding_views: dict[str, EmbeddingViewSpec],
    ) -> PromptViewSpec | None:
        from contextkit.prompts import PromptError

        before = len(self.errors)
        key_types = self.check_feature_refs(prompt, prompt.features, views)
        fields = {f.name for f in prompt.request_context}
        for search in prompt.searches:
            self.check_search(prompt, search, embedding_views, fields)
        names = [s.name for s in prompt.searches]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            self.error(prompt, f"two searches are named {dup!r}", hint="pass Search(..., name=...)")
        for f in prompt.request_context:
            if f.name in key_types:
                self.error(prompt, f"request field {f.name!r} has the name of a join key")
        try:
            template = load_template(prompt, self.root)
        except PromptError as exc:
            self.errors.append(prompt_error(prompt, exc, self.root))
            return None
        selected = {}
        for ref in prompt.features:
            view = views.get(ref.view)
            if view is not None:
                selected[ref.view] = set(ref.features or [f.name for f in view.features])
        available = {
            "features": selected,
            "documents": set(names),
            "request": fields,
            "entities": set(key_types),
        }
        used = []
        for var in template.variables():
            where = template_location(prompt, var, self.root)
            top = var.path[0]
            used.append(var.dotted)
            if top not in TEMPLATE_NAMES:
                self.errors.append(
                    DefinitionError(
                        f"prompt {prompt.name!r}: unknown variable {top!r}",
                        location=where,
                        hint="templates read " + ", ".join(TEMPLATE_NAMES),
                    )
                )
                continue
            if top == "query" or len(var.path) < 2:
                continue
            second = var.path[1]
            if top == "features":
                if second not in selected:
                    self.errors.append(
                        DefinitionError(
                            f"prompt {prompt.name!r}: unknown feature view {second!r} in "
                            f"{var.dotted}",
                            location=where,
                            hint="the prompt's features are: "
                            + (", ".join(sorted(selected)) or "none (pass features=[...])"),
                        )
                    )
                elif len(var.path) > 2 and var.path[2] not in selected[second]:
                    self.errors.append(
                        DefinitionError(
                            f"prompt {prompt.name!r}: unknown feature {var.path[2]!r} of view "
                            f"{second!r} in {var.dotted}",
                            location=where,
                            hint=f"{second} has: {', '.join(sorted(selected[second]))}",
                        )
                    )
            elif second not in available[top]:
                what = {"documents": "search", "request": "request field", "entities": "join key"}
                self.errors.append(
                    DefinitionError(
                        f"prompt {prompt.name!r}: unknown {what[top]} {second!r} in {var.dotted}",
                        location=where,
                        hint=f"declared: {', '.join(sorted(available[top])) or 'none'}",
                    )
                )
        if len(self.errors) > before:
            return None
        self.check_sample_render(prompt, template, views, names, key_types)
        if len(self.errors) > before:
            return None
        return prompt.model_copy(update={"variables": sorted(set(used))})

    def check_sample_render(self, prompt, template, views, searches, key_types) -> None:
        """Render the template once with a sample of every value it may read (one value per
        feature, ``top_k`` documents per search) within the render limits: a template that
        cannot render even that in time, or builds too much text, fails here, not in serving.
        Only limit errors count: the sample's values are not the data's."""
        from contextkit.prompts import PromptError, PromptLimitError

        features = {}
        for ref in prompt.features:
            view = views.get(ref.view)
            if view is not None:
                wanted = ref.features or [f.name for f in view.features]
                dtypes = {f.name: f.dtype for f in view.features}
                features[ref.view] = {name: sample_value(dtypes.get(name)) for name in wanted}
        top_k = {s.name: s.top_k for s in prompt.searches}
        context = {
            "features": features,
            "documents": {name: sample_documents(name, top_k.get(name, 5)) for name in searches},
            "request": {f.name: sample_value(f.dtype) for f in prompt.request_context},
            "query": "a sample question",
            "entities": {key: sample_value(dtype) for key, (_, dtype) in key_types.items()},
        }
        limits = self.render_limits
        # No model: token filters count with the offline approximation. The prompt's own
        # tokenizer would import litellm (seconds of every `plan`) for sample values whose
        # token counts mean nothing; only the limits are checked here.
        try:
            if prompt.format == "messages":
                template.render_messages(context, model=None, limits=limits)
            else:
                template.render(context, model=None, limits=limits)
        except PromptLimitError as exc:
            setting = {"timeout_s": "render_timeout_s"}.get(exc.limit, exc.limit)
            where = None
            if exc.line:
                line = TemplateLine(exc.template or "", exc.line)
                where = template_location(prompt, line, self.root)
            self.errors.append(
                DefinitionError(
                    f"prompt {prompt.name!r}: a sample render failed: {exc.reason}",
                    location=where or prompt_error(prompt, exc, self.root).location,
                    hint="make the template loop over fewer items and build less text, or raise "
                    f"prompts.{setting} in contextkit.yaml",
                )
            )
        except PromptError:
            pass  # a missing or odd sample value: the data decides, at request time

    def check_prompt_llm(self, prompt: PromptViewSpec, llm: LLMConfig) -> None:
        """The prompt view's ``model`` is one litellm knows (offline) or the repo declares
        (``llm.models``, or any name when ``llm.api_base`` is set), and its ``params`` are
        generation parameters from the one allow list: a repo may not pick the endpoint, key
        or headers through params either."""
        from contextkit.prompts import (
            LLMNotConfiguredError,
            LLMParamError,
            check_generation_params,
            check_model,
        )

        try:
            check_generation_params(prompt.params, where="params")
        except LLMParamError as exc:
            self.error(
                prompt,
                exc.message,
                hint="allowed: " + ", ".join(exc.allowed) + "; the endpoint and key come from "
                "llm.api_base and llm.api_key_env in contextkit.yaml",
            )
        if prompt.model:
            try:
                check_model(prompt.model, declared=llm.models, api_base=llm.api_base)
            except LLMNotConfiguredError as exc:
                self.error(prompt, exc.message, hint=exc.hint)


# What a prompt template can read at the top level (see PromptView).
TEMPLATE_NAMES = ("features", "documents", "request", "query", "entities")


class TemplateLine:
    """Where in a prompt's template something happened (the fields of a TemplateVariable
    that ``template_location`` reads)."""

    def __init__(self, template: str, line: int) -> None:
        self.template = template
        self.line = line


def sample_value(dtype: str | None):
    from datetime import UTC, datetime

    from contextkit.types import Bool, Float64, Int64, Timestamp, list_item_dtype

    item = list_item_dtype(dtype) if dtype else None
    if item is not None:
        return [sample_value(item)] * 3
    samples = {Int64: 1, Float64: 1.5, Bool: True, Timestamp: datetime(2024, 1, 1, tzinfo=UTC)}
    return samples.get(dtype, "sample")


def sample_documents(search: str, top_k: int) -> list[dict]:
    return [
        {
            "id": f"{search}-{i}",
            "text": f"Sample document {i} of {search}.",
            "score": 1.0 / (1 + i),
            "key": {},
            "metadata": {},
            "chunk_index": 0,
            "char_offset": 0,
        }
        for i in range(top_k)
    ]


def load_template(prompt: PromptViewSpec, root: Path | None = None):
    """The prompt's compiled template: a ``PromptTemplate``, or for messages a ``ChatTemplate``.

    Templates are compiled from the spec's text (files were read at plan time), named after
    their file when they came from one, so errors point there.
    """
    from contextkit.prompts import ChatTemplate, PromptTemplate

    if prompt.format == "messages":
        return ChatTemplate(list(prompt.messages), name=prompt.name)
    return PromptTemplate(prompt.template or "", name=prompt.template_file or prompt.name)


def template_location(prompt: PromptViewSpec, var, root: Path) -> str | None:
    """file:line of a template variable: in its template file, or in the Python file that
    holds the inline template (found by looking for the template's text after the PromptView
    line)."""
    source, file = prompt.template or "", prompt.template_file
    if prompt.messages and var.template.endswith("]"):
        index = int(var.template.rsplit("[", 1)[1][:-1])
        source = prompt.messages[index][1]
        file = prompt.message_files[index] if prompt.message_files else None
    if file:
        return f"{file}:{var.line}"
    if prompt.location is None:
        return None
    line = _inline_line(root / prompt.location.file, prompt.location.line, source, var.line)
    if line is None:
        return f"{prompt.location} (template line {var.line})"
    return f"{prompt.location.file}:{line}"


def _inline_line(file: Path, start: int, source: str, template_line: int) -> int | None:
    first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
    if not first:
        return None
    try:
        lines = file.read_text().splitlines()
    except OSError:
        return None
    offset = next((i for i, ln in enumerate(source.splitlines()) if ln.strip() == first), 0)
    probe = first[:40]
    for number in range(max(start, 1), len(lines) + 1):
        if probe in lines[number - 1]:
            return number + (template_line - 1) - offset
    return None


def prompt_error(prompt: PromptViewSpec, exc, root: Path) -> DefinitionError:
    line = getattr(exc, "line", None)
    template = getattr(exc, "template", None) or ""
    file = prompt.template_file
    if template.endswith("]") and prompt.message_files:
        file = prompt.message_files[int(template.rsplit("[", 1)[1][:-1])]
    if file:
        where = f"{file}:{line}" if line else file
    else:
        where = str(prompt.location) if prompt.location else None
        if where and line:
            where += f" (template {template}, line {line})"
    return DefinitionError(f"prompt {prompt.name!r}: {exc.message}", location=where, hint=exc.hint)
