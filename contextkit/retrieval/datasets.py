"""Rendered datasets: a prompt view rendered for every event, as the online path would have then.

``ctx.generate_dataset(events, "support_assistant", label_column="answer")`` renders the service's
prompt view once per event row, with:

- the features **as of the event's time** (``get_features_for_events``: point in time, no leakage);
- when asked (``documents=True``, or the names of some searches), the documents each search
  would have returned **at the event's time**: the vector table's version current then (LanceDB
  keeps a table's versions for a week; an event older than every version on disk is searched in
  the oldest one, and counted in the report);
- the request-context values and the query from the events' columns named like the request
  fields and ``query``.

Rendering is the online code: each row is checked by ``assemble.parse_request`` and rendered by
``assemble.render_prompt`` (the same template context, sandbox and token budget), so a row equals
what ``ctx.get_context`` renders for the same entity, query, request context and data.

Output (lazy: nothing runs until a ``to_*`` method):

- ``to_jsonl(path)``: the chat fine-tuning format, one ``{"messages": [...]}`` per line (a text
  prompt is one user message); with ``label_column``, the label is appended as the assistant turn;
- ``to_parquet(path)`` / ``to_pandas()`` / ``to_arrow()``: one row per event with ``prompt`` (the
  text, or the messages as a list of ``{role, content}``), ``features`` (a struct of
  ``<view>__<feature>``), ``label`` (with ``label_column``), ``tokens``, ``truncated`` and, with
  documents, ``document_ids`` (per search, the ids rendered).

Row ``i`` of the output is row ``i`` of the events, always; a bad row raises an error naming it.

With ``compute: ray`` (contextkit.yaml), the point-in-time feature join runs in Ray tasks
(events partitioned by entity hash, see :mod:`contextkit.compute.ray.offline`), and the searches
and rendering in Ray Data ``map_batches`` actors over the joined rows, in event order
(:mod:`contextkit.retrieval.datasets_ray`); this process only writes the rendered batches.

Searches encode a batch's query texts in one call per search group (each distinct text once),
then search by vector.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contextkit.compute.offline import OfflineFeatures, select_features
from contextkit.compute.offline.reserved import RESERVED, ROW
from contextkit.errors import (
    BadRequestError,
    ContextKitError,
    NotFoundError,
    leaf_error,
    translating,
)
from contextkit.framework.specs import ContextServiceSpec, FeatureRefSpec, SearchSpec
from contextkit.retrieval.assemble import (
    ContextPlan,
    ContextResult,
    completion_messages,
    executor,
    merge_refs,
    parse_request,
    render_prompt,
    request_fields,
)
from contextkit.retrieval.online import ServiceReader

if TYPE_CHECKING:
    import pyarrow as pa

    from contextkit.config import ComputeConfig
    from contextkit.framework.workspace import Runtime

QUERY_COLUMN = "query"
BATCH_ROWS = 8192
TABLE, CHAT = "table", "chat"  # the output formats
# render_block's per-row counts (a Ray Data actor's output, read back by count_block)
_TRUNCATED, _DROPPED, _NO_LABEL = (
    f"{RESERVED}truncated",
    f"{RESERVED}dropped",
    f"{RESERVED}no_label",
)
_LINE, _EXACT = f"{RESERVED}line", f"{RESERVED}exact_"  # + the search's position
Progress = Callable[[int, int | None], None]  # (rows done, rows in all or None)


@dataclass
class DatasetReport:
    """What one run of a dataset wrote or returned."""

    rows: int = 0
    path: Path | None = None
    format: str = ""
    seconds: float = 0.0
    truncated: int = 0  # rows whose text was cut to fit the token budget
    dropped_documents: int = 0  # documents left out to fit the budget, over all rows
    labels_missing: int = 0  # rows with a null label (written without an assistant turn)
    # Per search: events searched in the version current at their time ("as_of"), and events
    # older than every version on disk, searched in the oldest one ("oldest_kept").
    documents: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


@dataclass
class _Row:
    prompt: dict[str, Any]
    documents: dict[str, list[dict[str, Any]]]


class RenderedDataset:
    """A lazy rendered dataset (see the module docstring); ``report`` describes the last run."""

    def __init__(
        self,
        runtime: Runtime,
        events: Any,
        plan: ContextPlan,
        refs: list[FeatureRefSpec],
        *,
        timestamp_key: str,
        documents: bool | Sequence[str],
        label_column: str | None,
        from_source: bool | None,
        top_k: int | None,
        filter: Mapping[str, Any] | None,
        searches: Mapping[str, Mapping[str, Any]] | None,
        on_progress: Progress | None,
        batch_size: int = BATCH_ROWS,
        compute: ComputeConfig | None = None,
    ) -> None:
        self._ctx = runtime
        self._compute = compute
        self._events = events
        self.plan = plan
        self._refs = select_features(runtime, [(r.view, r.features) for r in refs])
        self.timestamp_key = timestamp_key
        self.label_column = label_column
        self._from_source = from_source
        self._on_progress = on_progress
        self._batch_size = batch_size
        names = [s.name for s in plan.searches]
        unknown = sorted(set(searches or {}) - set(names))
        if unknown:
            raise BadRequestError(
                f"unknown search(es) {', '.join(map(repr, unknown))} in searches",
                hint="the prompt's searches: " + (", ".join(names) or "none"),
            )
        if documents is True:
            wanted = names
        elif documents is False or documents is None:
            wanted = []
        else:
            wanted = [documents] if isinstance(documents, str) else list(documents)
            unknown = [n for n in wanted if n not in names]
            if unknown:
                raise BadRequestError(
                    f"unknown search(es) {', '.join(map(repr, unknown))} in documents",
                    hint="the prompt's searches: " + (", ".join(names) or "none"),
                )
        self._searched = tuple(s for s in plan.searches if s.name in wanted)
        # Overrides of searches that do not run here have nothing to change.
        overrides = {k: v for k, v in (searches or {}).items() if k in wanted}
        self._options = {"top_k": top_k, "filter": filter, "searches": overrides}
        self.report = DatasetReport()
        # Per searched search, whether each row of the last batch found its time's version.
        self._exact: dict[str, list[bool]] = {}
        # What rebuilds this dataset elsewhere (a Ray actor): generate_dataset's arguments.
        self.arguments = {
            "service_or_prompt": plan.service,
            "prompt": plan.prompt.name,
            "timestamp_key": timestamp_key,
            "documents": [s.name for s in self._searched],
            "label_column": label_column,
            "from_source": from_source,
            "top_k": top_k,
            "filter": dict(filter) if filter is not None else None,
            "searches": {k: dict(v) for k, v in (searches or {}).items()},
        }

    @property
    def features(self) -> OfflineFeatures:
        """The point-in-time features the prompts are rendered with (lazy, like the dataset)."""
        return OfflineFeatures(
            self._ctx,
            self._events,
            self._refs,
            self.timestamp_key,
            self._from_source,
            compute=self._compute,
        )

    # -- outputs ----------------------------------------------------------------------------------

    def to_jsonl(self, path: str | Path) -> DatasetReport:
        """Write the chat fine-tuning format: one ``{"messages": [...]}`` per event."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        report = self._start("chat", target)
        with target.open("w", encoding="utf-8") as out:
            for lines in self._outputs(CHAT, report):
                if lines:
                    out.write("\n".join(lines) + "\n")
        return self._end(report)

    def to_batches(self) -> Iterator[pa.RecordBatch]:
        """The table format as Arrow record batches, in events order."""
        report = self._start("table", None)
        yield from self._outputs(TABLE, report)
        self._end(report)

    def to_arrow(self) -> pa.Table:
        """The table format as a ``pyarrow.Table``."""
        import pyarrow as pa

        batches = list(self.to_batches())
        if not batches:
            return self._empty_table()
        return pa.Table.from_batches(batches)

    def to_pandas(self):
        """The table format as a pandas DataFrame (``features`` as dicts, ``prompt`` a string or
        a list of message dicts)."""
        return self.to_arrow().to_pandas()

    def to_parquet(self, path: str | Path) -> DatasetReport:
        """Write the table format to a Parquet file, batch by batch."""
        import pyarrow.parquet as pq

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        writer = None
        report = self._start("table", target)
        try:
            for table_batch in self._outputs(TABLE, report):
                if writer is None:
                    writer = pq.ParquetWriter(target, table_batch.schema)
                writer.write_batch(table_batch)
            if writer is None:
                pq.write_table(self._empty_table(), target)
        finally:
            if writer is not None:
                writer.close()
        return self._end(report)

    # -- the work ---------------------------------------------------------------------------------

    def _start(self, kind: str, path: Path | None) -> DatasetReport:
        self.report = DatasetReport(path=path, format=kind)
        self.report.documents = {s.name: {"as_of": 0, "oldest_kept": 0} for s in self._searched}
        self._began = time.perf_counter()
        return self.report

    def _end(self, report: DatasetReport) -> DatasetReport:
        report.seconds = time.perf_counter() - self._began
        return report

    def _outputs(self, kind: str, report: DatasetReport) -> Iterator[Any]:
        """The output per batch of events, in order: table-format record batches
        (``kind="table"``) or JSONL lines (``"chat"``); ``report`` counts as they come. With
        compute on Ray, the rows are joined and rendered on the cluster (``datasets_ray``)."""
        total = _count_rows(self._events)
        if self._on_ray():
            from contextkit.retrieval.datasets_ray import render_on_ray

            batches = render_on_ray(self, kind, report, generate_dataset)
        else:
            batches = self._rendered(kind, report)
        for out in batches:
            if self._on_progress is not None:
                self._on_progress(report.rows, total)
            yield out

    def _on_ray(self) -> bool:
        """Whether rows are joined and rendered on Ray: ``compute`` names Ray for a feature
        view or an embedding view the dataset reads."""
        compute = self._compute
        names = [view.name for view, _features in self._refs]
        names += [s.view for s in self._searched]
        return compute is not None and any(compute.engine_for(n) == "ray" for n in names)

    def _rendered(self, kind: str, report: DatasetReport) -> Iterator[Any]:
        checked = False
        for batch in self.features.to_batches(self._batch_size):
            if not checked:
                self._check_columns(batch.schema.names)
                checked = True
            yield self._render_output(batch, report.rows, kind, report)

    def _render_output(
        self, batch: pa.RecordBatch, offset: int, kind: str, report: DatasetReport
    ) -> Any:
        """One batch of joined rows (events row ``offset`` first) rendered to ``kind``."""
        rows = self._render(batch, offset, report)
        report.rows += len(rows)
        if kind == TABLE:
            return self._table_batch(batch, rows, report)
        return self._lines(batch, rows, report)

    def _lines(self, batch: pa.RecordBatch, rows: list[_Row], report: DatasetReport) -> list[str]:
        """The JSONL lines of rendered rows (the label, when asked, as the assistant turn)."""
        labels = self._labels(batch)
        lines = []
        for i, row in enumerate(rows):
            messages = completion_messages(_as_result(row))
            if labels is not None:
                if labels[i] is None:
                    report.labels_missing += 1
                else:
                    messages = [*messages, {"role": "assistant", "content": labels[i]}]
            lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
        return lines

    def render_block(self, table: pa.Table, kind: str) -> pa.Table:
        """Joined rows (the row id ``__ck_row`` last, contiguous) rendered to ``kind`` with the
        report's per-row counts as extra ``__ck_`` columns: what a Ray Data actor does
        (:mod:`~contextkit.retrieval.datasets_ray`); :meth:`count_block` reads them back."""
        import pyarrow as pa

        offset = int(table.column(ROW)[0].as_py())
        batch = table.drop_columns([ROW]).combine_chunks().to_batches()[0]
        report = DatasetReport(documents={s.name: {"as_of": 0, "oldest_kept": 0} for s in
                                          self._searched})  # fmt: skip
        rows = self._render(batch, offset, report)
        labels = self._labels(batch)
        counts = {
            _TRUNCATED: pa.array([bool(r.prompt["truncated"]) for r in rows], pa.bool_()),
            _DROPPED: pa.array([len(r.prompt["dropped"]) for r in rows], pa.int64()),
            _NO_LABEL: pa.array([v is None for v in labels or [0] * len(rows)], pa.bool_()),
        }
        for i, spec in enumerate(self._searched):
            counts[f"{_EXACT}{i}"] = pa.array(self._exact[spec.name], pa.bool_())
        if kind == TABLE:
            out = pa.Table.from_batches([self._table_batch(batch, rows, report)])
        else:
            out = pa.table({_LINE: pa.array(self._lines(batch, rows, report), pa.string())})
        for name, values in counts.items():
            out = out.append_column(name, values)
        return out

    def count_block(self, block: pa.Table, kind: str, report: DatasetReport) -> Any:
        """A block of :meth:`render_block` as ``_outputs`` yields it (one record batch of the
        table format, or the JSONL lines), its per-row counts added to ``report``."""
        import pyarrow.compute as pc

        def total(name: str) -> int:
            return int(pc.sum(block.column(name).cast("int64")).as_py() or 0)

        report.rows += block.num_rows
        report.truncated += total(_TRUNCATED)
        report.dropped_documents += total(_DROPPED)
        report.labels_missing += total(_NO_LABEL)
        for i, spec in enumerate(self._searched):
            exact = total(f"{_EXACT}{i}")
            report.documents[spec.name]["as_of"] += exact
            report.documents[spec.name]["oldest_kept"] += block.num_rows - exact
        if kind != TABLE:
            return block.column(_LINE).to_pylist()
        names = [n for n in block.column_names if not n.startswith(RESERVED)]
        return block.select(names).combine_chunks().to_batches()[0]

    def _check_columns(self, names: list[str]) -> None:
        features = {f"{view.name}__{f}" for view, fs in self._refs for f in fs}
        columns = [n for n in names if n not in features]  # the events' own
        if self.label_column is not None and self.label_column not in columns:
            raise BadRequestError(
                f"the events have no label column {self.label_column!r}",
                hint=f"columns: {', '.join(columns)}",
            )
        for spec in self.plan.request_fields:
            if spec.required and spec.name not in columns:
                raise BadRequestError(
                    f"the events have no column {spec.name!r}, a request-context field of "
                    f"prompt {self.plan.prompt.name!r}",
                    hint=f"add a {spec.dtype} column {spec.name!r}: each row's value is that "
                    "event's request context",
                )
        needs_query = self._parse_plan().needs_query
        if needs_query and QUERY_COLUMN not in columns:
            raise BadRequestError(
                f"the events have no {QUERY_COLUMN!r} column, which the prompt "
                + ("and its searches use" if self._searched else "uses"),
                hint="add a string column 'query' with each event's question",
            )

    def _parse_plan(self) -> ContextPlan:
        """The plan as requests are checked: only the searches run here need a query."""
        uses_query = "query" in self.plan.template.names()
        return replace(
            self.plan,
            searches=self._searched,
            needs_query=uses_query or any(s.query_from == "query" for s in self._searched),
        )

    def _render(self, batch: pa.RecordBatch, offset: int, report: DatasetReport) -> list[_Row]:
        plan = self._parse_plan()
        columns = batch.schema.names
        n = batch.num_rows
        keys = [k for k, _ in plan.join_keys]
        key_values = {k: batch.column(k).to_pylist() for k in keys}
        queries = batch.column(QUERY_COLUMN).to_pylist() if QUERY_COLUMN in columns else [None] * n
        fields = [f.name for f in plan.request_fields if f.name in columns]
        field_values = {f: batch.column(f).to_pylist() for f in fields}
        by_view = _feature_columns(batch, self._refs)
        requests = []
        for i in range(n):
            with _row_errors(offset + i):
                requests.append(
                    parse_request(
                        plan,
                        entities={k: key_values[k][i] for k in keys} if keys else None,
                        query=queries[i],
                        request_context={f: field_values[f][i] for f in fields},
                        **self._options,
                    )
                )
        found = self._search(batch, requests, offset, report) if self._searched else {}
        rows = []
        for i, request in enumerate(requests):
            result = ContextResult(
                workspace=plan.workspace,
                service=plan.service,
                entities={k: v[0] for k, v in request.entities.items()},
                features={
                    view: {"values": {f: values[i] for f, values in features.items()}}
                    for view, features in by_view.items()
                },
                documents={
                    s.name: (found[s.name][i] if s.name in found else [])
                    for s in self.plan.searches
                },
                prompt=None,
                completion=None,
                metadata={"timings_ms": {}},
            )
            with _row_errors(offset + i):
                render_prompt(self.plan, request, result)
            report.truncated += bool(result.prompt["truncated"])
            report.dropped_documents += len(result.prompt["dropped"])
            rows.append(_Row(result.prompt, result.documents))
        return rows

    def _search(
        self, batch: pa.RecordBatch, requests: list, offset: int, report: DatasetReport
    ) -> dict[str, list[list[dict[str, Any]]]]:
        """Each searched search's hits per row, in the vector table's version of the row's
        time. Searches sharing a model and a query text encode it once, in batches."""
        from contextkit.compute.embedding import encoder_for
        from contextkit.compute.layout import vector_table

        ctx = self._ctx
        moments = [_utc(v) for v in batch.column(self.timestamp_key).to_pylist()]
        groups: dict[tuple[str, str], list[SearchSpec]] = {}
        for spec in self._searched:
            model = self.plan.embedding_views[spec.view].model
            groups.setdefault((model, spec.query_from), []).append(spec)
        found: dict[str, list[list[dict[str, Any]]]] = {}
        for group in groups.values():
            texts = []
            for i, request in enumerate(requests):
                spec = group[0]
                text = (
                    request.query
                    if spec.query_from == "query"
                    else request.request.get(spec.query_from)
                )
                if not isinstance(text, str) or not text.strip():
                    raise BadRequestError(
                        f"events row {offset + i}: search {spec.name!r} takes its query from "
                        f"{spec.query_from!r}, which is empty",
                        hint=f"give every event a non-empty {spec.query_from!r}, or leave the "
                        f"search out of documents=",
                        details={"row": offset + i, "field": spec.query_from},
                    )
                texts.append(text)
            vectors: dict[str, Any] = {}
            if any(s.mode != "text" for s in group):
                view = self.plan.embedding_views[group[0].view]
                encoder = encoder_for(view, ctx.config.models, ctx.config.root.resolve())
                unique = list(dict.fromkeys(texts))
                with translating:
                    vectors = dict(zip(unique, encoder.encode(unique), strict=True))
            for spec in group:
                table = vector_table(self.plan.workspace, spec.view)
                with translating:
                    versions = ctx.vectors.versions_at(table, [m or _NEVER for m in moments])
                counts = report.documents[spec.name]
                for _version, exact in versions:
                    counts["as_of" if exact else "oldest_kept"] += 1
                self._exact[spec.name] = [exact for _version, exact in versions]
                found[spec.name] = _search_rows(
                    ctx,
                    self.plan.workspace,
                    spec,
                    requests,
                    texts,
                    vectors,
                    [v for v, _ in versions],
                    offset,
                )
        return found

    def _labels(self, batch: pa.RecordBatch) -> list[str | None] | None:
        if self.label_column is None:
            return None
        return [_label_text(v) for v in batch.column(self.label_column).to_pylist()]

    def _table_schema(self) -> pa.Schema:
        import pyarrow as pa

        message = pa.struct([("role", pa.string()), ("content", pa.string())])
        prompt = pa.list_(message) if self.plan.prompt.format == "messages" else pa.string()
        return pa.schema([("prompt", prompt), ("tokens", pa.int64()), ("truncated", pa.bool_())])

    def _table_batch(self, batch: pa.RecordBatch, rows: list[_Row], report) -> pa.RecordBatch:
        import pyarrow as pa

        schema = self._table_schema()
        is_chat = self.plan.prompt.format == "messages"
        prompts = [r.prompt["messages"] if is_chat else r.prompt["text"] for r in rows]
        names = [f"{view.name}__{f}" for view, features in self._refs for f in features]
        arrays = [
            pa.array(prompts, schema.field("prompt").type),
            _struct([batch.column(n) for n in names], names, batch.num_rows),
        ]
        out_names = ["prompt", "features"]
        if self.label_column is not None:
            arrays.append(batch.column(self.label_column))
            out_names.append("label")
            report.labels_missing += batch.column(self.label_column).null_count
        arrays += [
            pa.array([r.prompt["tokens"] for r in rows], pa.int64()),
            pa.array([bool(r.prompt["truncated"]) for r in rows], pa.bool_()),
        ]
        out_names += ["tokens", "truncated"]
        if self._searched:
            ids = [
                {s.name: [h["id"] for h in r.documents[s.name]] for s in self._searched}
                for r in rows
            ]
            kind = pa.struct([(s.name, pa.list_(pa.string())) for s in self._searched])
            arrays.append(pa.array(ids, kind))
            out_names.append("document_ids")
        return pa.RecordBatch.from_arrays(arrays, names=out_names)

    def _empty_table(self) -> pa.Table:
        """The table format with no rows (its columns typed from the features' query)."""
        import pyarrow as pa

        features = self.features.to_arrow()
        empty = pa.RecordBatch.from_pylist([], schema=features.schema)
        return pa.Table.from_batches([self._table_batch(empty, [], DatasetReport())])


def generate_dataset(
    runtime: Runtime,
    events: Any,
    service_or_prompt: str,
    *,
    prompt: str | None = None,
    timestamp_key: str = "ts",
    documents: bool | Sequence[str] = False,
    label_column: str | None = None,
    from_source: bool | None = None,
    top_k: int | None = None,
    filter: Mapping[str, Any] | None = None,
    searches: Mapping[str, Mapping[str, Any]] | None = None,
    on_progress: Progress | None = None,
    compute: ComputeConfig | None = None,
    batch_size: int = BATCH_ROWS,
) -> RenderedDataset:
    """A prompt view rendered for every event (see :meth:`contextkit.client.Context.
    generate_dataset` and the module docstring). ``compute``: the engine (``compute: ray`` joins
    on Ray, partitioned by entity hash, and renders, searches included, in Ray Data actors);
    None: local. ``batch_size``: events rendered per batch."""
    plan, refs = dataset_plan(runtime, service_or_prompt, prompt)
    return RenderedDataset(
        runtime,
        events,
        plan,
        refs,
        timestamp_key=timestamp_key,
        documents=documents,
        label_column=label_column,
        from_source=from_source,
        top_k=top_k,
        filter=filter,
        searches=searches,
        on_progress=on_progress,
        batch_size=batch_size,
        compute=compute,
    )


def dataset_plan(
    runtime: Runtime, name: str, prompt_name: str | None
) -> tuple[ContextPlan, list[FeatureRefSpec]]:
    """The context plan of a service's prompt view (``prompt_name``, default its first), or of
    a prompt view alone, and the feature refs it reads: what ``assemble.build_plan`` computes,
    in any workspace (datasets read the offline data, which dev workspaces have too)."""
    from contextkit.framework.validation import load_template

    specs = runtime.specs()
    service_refs: list[FeatureRefSpec] = []
    service_searches: list[SearchSpec] = []
    if name in specs.services:
        service = specs.services[name]
        service_refs, service_searches = list(service.features), list(service.searches)
        prompt_name = prompt_name or (service.prompts[0] if service.prompts else None)
        if prompt_name is None:
            raise BadRequestError(
                f"service {name!r} has no prompt view to render",
                hint="add prompts=[...] to the ContextService, or pass prompt=<a prompt view>",
            )
    elif name in specs.prompts:
        if prompt_name not in (None, name):
            raise BadRequestError(
                f"{name!r} is a prompt view; prompt={prompt_name!r} names another",
                hint="pass a service with prompt=..., or the prompt view alone",
            )
        prompt_name = name
    else:
        raise NotFoundError(
            f"no service or prompt view named {name!r} in workspace {specs.workspace.name!r}",
            hint="services: "
            + (", ".join(sorted(specs.services)) or "none")
            + "; prompt views: "
            + (", ".join(sorted(specs.prompts)) or "none"),
        )
    prompt = specs.prompts.get(prompt_name)
    if prompt is None:
        raise NotFoundError(
            f"unknown prompt view {prompt_name!r} in workspace {specs.workspace.name!r}",
            hint="prompt views: " + (", ".join(sorted(specs.prompts)) or "none applied"),
        )
    refs = merge_refs([*service_refs, *prompt.features])
    reader = None
    if refs:
        merged = ContextServiceSpec(name=name, features=refs)
        reader = ServiceReader.build(specs.workspace.name, merged, specs.feature_views)
    by_name: dict[str, SearchSpec] = {s.name: s for s in service_searches}
    for search in prompt.searches:
        by_name.setdefault(search.name, search)
    template = load_template(prompt, runtime.config.root.resolve())
    needs_query = "query" in template.names() or any(
        s.query_from == "query" for s in by_name.values()
    )
    plan = ContextPlan(
        workspace=specs.workspace.name,
        workspace_version=specs.workspace.version,
        service=name,
        prompt=prompt,
        reader=reader,
        searches=tuple(by_name.values()),
        embedding_views={s.view: specs.embedding_views[s.view] for s in by_name.values()},
        template=template,
        request_fields=request_fields(prompt, reader),
        needs_query=needs_query,
        render_limits=runtime.config.prompts.render_limits(),
    )
    return plan, refs


# -- helpers ---------------------------------------------------------------------------------


def _search_rows(
    runtime: Runtime,
    workspace: str,
    spec: SearchSpec,
    requests: list,
    texts: list[str],
    vectors: Mapping[str, Any],
    versions: list[int],
    offset: int,
) -> list[list[dict[str, Any]]]:
    """One search for each row, in the row's table version, in threads (LanceDB's queries and
    numpy's exact search release the GIL), in row order."""

    from contextkit.compute.embedding import search_view

    view = runtime.specs(workspace).embedding_views[spec.view]

    def one(i: int) -> list[dict[str, Any]]:
        top_k, filter_ = requests[i].search_options[spec.name]
        with _row_errors(offset + i), translating:
            return search_view(  # the online search's options, in the row's table version
                runtime.vectors,
                None,
                workspace,
                view,
                query=texts[i],
                vector=vectors.get(texts[i]) if spec.mode != "text" else None,
                top_k=top_k,
                filter=filter_,
                **spec.ranking(),
                root=runtime.config.root.resolve(),
                version=versions[i],
            ).hits

    return list(executor().map(one, range(len(requests))))


_NEVER = datetime(1, 1, 2, tzinfo=UTC)  # a null event time: before every version


def _feature_columns(batch: pa.RecordBatch, refs) -> dict[str, dict[str, list[Any]]]:
    """``{view: {feature: values}}`` as the online path gives them to templates (timestamps as
    ISO 8601 strings ending in ``Z``)."""
    out: dict[str, dict[str, list[Any]]] = {}
    for view, features in refs:
        block = out.setdefault(view.name, {})
        for f in features:
            values = batch.column(f"{view.name}__{f}").to_pylist()
            block[f] = [_online_value(v) for v in values]
    return out


def _online_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def _label_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _struct(arrays: list, names: list[str], n: int):
    import pyarrow as pa

    if not arrays:
        return pa.array([{}] * n, pa.struct([]))
    return pa.StructArray.from_arrays(arrays, names=names)


def _as_result(row: _Row) -> ContextResult:
    return ContextResult("", "", {}, {}, row.documents, row.prompt, None)


def _count_rows(events: Any) -> int | None:
    """The number of events when it is cheap to know (for progress), else None."""
    try:
        if isinstance(events, str | Path):
            import duckdb

            from contextkit.framework.transformations import literal

            con = duckdb.connect()
            try:
                query = f"SELECT count(*) FROM read_parquet({literal(str(events))})"
                return int(con.execute(query).fetchone()[0])
            finally:
                con.close()
        if hasattr(events, "num_rows"):
            return int(events.num_rows)
        if hasattr(events, "shape"):
            return int(events.shape[0])
    except Exception:  # only a progress total: never worth failing over
        return None
    return None


class _row_errors:
    """Name the events row in a contextkit error raised while handling it."""

    def __init__(self, row: int) -> None:
        self.row = row

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            return
        err = exc if isinstance(exc, ContextKitError) else leaf_error(exc)
        if err is None:
            return
        if not err.message.startswith("events row "):
            err.message = f"events row {self.row}: {err.message}"
            err.args = (err.message,)
        if err.details is None or isinstance(err.details, dict):
            err.details = {**(err.details or {}), "row": self.row}
        if err is not exc:
            raise err from exc
