"""Checks of embedding views: their source, text and metadata columns, chunking and model."""

from __future__ import annotations

from contextkit.framework import transformations
from contextkit.framework.expectations import expectation_problems
from contextkit.framework.specs import (
    EmbeddingViewSpec,
    FieldSpec,
)
from contextkit.framework.transformations import Workspace
from contextkit.types import String, Timestamp


class EmbeddingViewChecks:
    """The embedding views checks of :class:`~contextkit.framework.validation.checker.Checker`."""

    # -- embedding views --------------------------------------------------------------------
    def check_embedding_view(
        self, ws: Workspace, view: EmbeddingViewSpec, good: set[str], models: dict | None
    ) -> EmbeddingViewSpec | None:
        ok = True
        for name in view.sources:
            if (
                name not in self.sources
                and name not in self.views
                and (name not in self.push_sources)
            ):
                self.error(
                    view,
                    f"unknown source {name!r}",
                    hint="define it in the repo (a FileSource or a feature view) or fix the name",
                )
                ok = False
        if view.mode == "column" and len(view.sources) != 1:
            self.error(view, "an embedding view without a transformation reads one source")
            ok = False
        for e in view.entities:
            if e not in self.entities:
                self.error(view, f"unknown entity {e!r}", hint=self.entities_hint())
                ok = False
        if view.mode != "column" and any(s in self.push_sources for s in view.sources):
            self.error(
                view,
                "an embedding view over a push source takes its text from a column, without a "
                "transformation",
                hint="use EmbeddingView(source=<push source>, text=<column>, ...)",
            )
            ok = False
        if not ok or any(s not in good and s not in self.push_sources for s in view.sources):
            return None
        join_keys: list[FieldSpec] = []
        for e in view.entities:
            for k in self.entities[e].join_keys:
                if k.name not in [j.name for j in join_keys]:
                    join_keys.append(k)
        ts = view.timestamp_field
        if ts is None and view.mode == "column":
            pushed = self.push_sources.get(view.sources[0])
            # The source's timestamp field, if any.
            ts = pushed.timestamp_field if pushed else self._default_timestamp(view)
        probe = view.model_copy(update={"join_keys": join_keys, "timestamp_field": ts})
        schema = self._output_schema(ws, view, transformations.embedding_transformation(probe))
        if schema is None:
            return None
        types = {c.name: c.dtype for c in schema}
        columns = ", ".join(types)
        for key in join_keys:
            if key.name not in types:
                self.error(
                    view,
                    f"join key {key.name!r} is missing from the view's output",
                    hint=f"select {key.name} (output columns: {columns})",
                )
                ok = False
        text = view.text_column
        if text not in types:
            self.error(
                view,
                f"text column {text!r} is not in the view's output",
                hint=f"pass text=<one of: {columns}>",
            )
            ok = False
        elif types[text] != String:
            self.error(
                view,
                f"text column {text!r} has type {types[text]}, not string",
                hint=f"cast it in a transformation: CAST({text} AS VARCHAR)",
            )
            ok = False
        if ts is not None and ts not in types:
            self.error(
                view,
                f"timestamp_field {ts!r} is not in the view's output",
                hint=f"output columns: {columns}",
            )
            ok = False
        elif ts is not None and types[ts] != Timestamp:
            self.error(view, f"timestamp_field {ts!r} has type {types[ts]}, not a timestamp")
            ok = False
        from contextkit.embeddings.pipeline import SYSTEM_COLUMNS

        metadata_schema = []
        keys = {k.name for k in join_keys}
        for column in view.metadata:
            if column in SYSTEM_COLUMNS or column in keys or column == text:
                self.error(
                    view,
                    f"metadata column {column!r} clashes with a key or a column every vector "
                    "table has",
                    hint="rename it in a transformation (reserved: "
                    + ", ".join(SYSTEM_COLUMNS)
                    + ")",
                )
                ok = False
            elif column not in types:
                self.error(
                    view,
                    f"metadata column {column!r} is not in the view's output",
                    hint=f"output columns: {columns}",
                )
                ok = False
            else:
                metadata_schema.append(FieldSpec(name=column, dtype=types[column]))
        if len(set(view.metadata)) != len(view.metadata):
            self.error(view, "a metadata column is listed twice")
            ok = False
        checked = {text: String, **{m.name: m.dtype for m in metadata_schema}}
        for message, hint in expectation_problems(view.expectations, checked, what="column"):
            self.error(view, message, hint)
            ok = False
        model = self._check_model(view, models)
        if model is None or not ok:
            return None
        long_texts = None
        if view.chunking is None:
            long_texts = self._long_texts(ws, probe, models)
        return probe.model_copy(
            update={
                "join_keys": [FieldSpec(name=k.name, dtype=types[k.name]) for k in join_keys],
                "metadata_schema": metadata_schema,
                "model_name": model[0],
                "dimension": model[1],
                "long_texts": long_texts,
            }
        )

    def _long_texts(
        self, ws: Workspace, view: EmbeddingViewSpec, models: dict | None, sample: int = 500
    ) -> dict | None:
        """For a view without chunking: how many of ``sample`` texts (a reservoir sample of the
        view's output) are longer than the model's window, in its own tokens, so that the model
        would silently truncate them. None when the model states no window, or all fit. Counted
        with the model folder's tokenizer when it has one (not the model: no weights are
        loaded), else whitespace words (a lower bound). Never fails a plan. 500 texts give the
        share within about 4 points and cost a quarter of 2,000's tokenizing (0.85 s of CPU
        for the quickstart's 2,000 descriptions, most of a `plan`)."""
        from contextkit.embeddings import get_encoder

        try:
            encoder = get_encoder(view.model, models, base_dir=self.root)
            window = getattr(encoder, "max_tokens", None)
            if not window:
                return None
            body = transformations.output_sql(
                ws, transformations.embedding_transformation(view), sample_rows=sample
            )
            column = transformations.quote(view.text_column)
            texts = [
                t
                for (t,) in ws.con.execute(
                    f"SELECT {column} FROM ({body}) WHERE {column} IS NOT NULL "
                    f"USING SAMPLE reservoir({int(sample)} ROWS) REPEATABLE (7)"
                ).fetchall()
            ]
            # a token covers at least one character: shorter texts cannot exceed the window
            candidates = [t for t in texts if len(t) > window - 2]
            lengths = _token_counts(encoder, candidates)
        except Exception:  # a size check never fails validation
            return None
        over = [n for n in lengths if n > window]
        if not texts or not over:
            return None
        return {
            "sampled": len(texts),
            "over": len(over),
            "share": len(over) / len(texts),
            "window": int(window),
            "longest": max(over),
        }

    def _check_model(
        self, view: EmbeddingViewSpec, models: dict | None
    ) -> tuple[str, int | None] | None:
        """The model's identity and dimension, from the config alone (no model load, no call)."""
        from contextkit.embeddings import Chunker, EmbeddingError, get_encoder
        from contextkit.embeddings.models import known_dimension

        try:
            encoder = get_encoder(view.model, models, base_dir=self.root)
            if view.chunking is not None:  # checks token chunks fit the model (no load)
                Chunker.from_config(view.chunking.model_dump(), encoder)
            return encoder.name, known_dimension(encoder)
        except EmbeddingError as exc:
            self.error(view, exc.message, hint=exc.hint)
            return None


def arrow_types(view: EmbeddingViewSpec) -> dict:
    """The filterable columns of a view's vector table (keys and metadata), as Arrow types."""
    from contextkit.types import arrow_type

    columns = [*view.join_keys, *view.metadata_schema]
    return {f.name: arrow_type(f.dtype or String) for f in columns}


def _token_counts(encoder: object, texts: list[str]) -> list[int]:
    """Tokens per text as the model sees them (special tokens included)."""
    if not texts:
        return []
    path = getattr(encoder, "path", None)
    if path is not None and (path / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.no_truncation()
        return [len(e.ids) for e in tokenizer.encode_batch(texts)]
    return [len(t.split()) for t in texts]
