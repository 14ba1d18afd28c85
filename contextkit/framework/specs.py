"""Versioned, JSON-serialisable specs: what the registry stores for each object.

User-facing objects (``Entity``, ``FileSource``, ``batch_feature_view``, ``ContextService``) are
thin Python classes; ``to_spec()`` turns each into one of these pydantic models. The registry stores
``spec.model_dump_json()``; plan diffs specs field by field (ignoring ``location``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SPEC_VERSION = 1

AGGREGATE_FUNCTIONS = ("count", "sum", "mean", "min", "max", "last", "count_distinct")
# Stream feature views also have the latest n distinct values of a column (a list, newest first).
STREAM_AGGREGATE_FUNCTIONS = (*AGGREGATE_FUNCTIONS, "last_distinct")
# Functions whose input column must be numeric.
NUMERIC_AGGREGATES = ("sum", "mean")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Location(_Spec):
    """Where an object was defined in the repo (file relative to the repo root, 1-based line)."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class FieldSpec(_Spec):
    name: str
    dtype: str | None = None


class _ObjectSpec(_Spec):
    spec_version: int = SPEC_VERSION
    name: str
    description: str = ""
    owner: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    location: Location | None = None


class EntitySpec(_ObjectSpec):
    kind: Literal["entity"] = "entity"
    join_keys: list[FieldSpec]


class FileSourceSpec(_ObjectSpec):
    kind: Literal["file_source"] = "file_source"
    path: str
    format: Literal["parquet", "csv", "jsonl"]
    timestamp_field: str | None = None
    # The file's columns and their dtypes, read at validation time.
    columns: list[FieldSpec] = Field(default_factory=list)


class DatabaseSourceSpec(_ObjectSpec):
    """A table or query of a database read through ADBC (``PostgresSource``). ``connection`` is
    a URL without a password or ``env:NAME`` (the URL read from the environment when the source
    is read): a password is never stored."""

    kind: Literal["database_source"] = "database_source"
    dialect: Literal["postgres"] = "postgres"
    connection: str
    table: str | None = None
    query: str | None = None
    timestamp_field: str | None = None
    # The result's columns and their dtypes, read at validation time.
    columns: list[FieldSpec] = Field(default_factory=list)


class AttributeSpec(_Spec):
    kind: Literal["attribute"] = "attribute"
    name: str
    dtype: str | None = None
    description: str = ""


class AggregateSpec(_Spec):
    kind: Literal["aggregate"] = "aggregate"
    name: str
    column: str | None
    function: str
    window_seconds: int
    dtype: str | None = None
    description: str = ""
    # last_distinct: how many values to keep.
    n: int | None = None


FeatureSpec = Annotated[AttributeSpec | AggregateSpec, Field(discriminator="kind")]


class ExpectationsSpec(_Spec):
    """Checks every materialization job runs on a view's rows (see docs/monitoring.md)."""

    # column -> the largest share of nulls allowed (0: none)
    not_null: dict[str, float] = Field(default_factory=dict)
    # column -> inclusive (low, high); None leaves a side open
    between: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    max_staleness_seconds: int | None = None
    max_drift: float | None = None  # population stability index vs the drift reference
    on_failure: Literal["warn", "fail"] = "warn"


class _ViewProperties:
    """What batch and stream feature views share: their windows, keys and features by name
    (a plain mixin: the pydantic fields ``features`` and ``join_keys`` are the models' own)."""

    @property
    def is_aggregate(self) -> bool:
        return any(f.kind == "aggregate" for f in self.features)

    @property
    def max_window_seconds(self) -> int:
        return max((f.window_seconds for f in self.features if f.kind == "aggregate"), default=0)

    @property
    def join_key_names(self) -> list[str]:
        return [k.name for k in self.join_keys]

    def feature(self, name: str) -> AttributeSpec | AggregateSpec | None:
        return next((f for f in self.features if f.name == name), None)


class FeatureViewSpec(_ViewProperties, _ObjectSpec):
    kind: Literal["batch_feature_view"] = "batch_feature_view"
    sources: list[str]
    entities: list[str]
    mode: Literal["sql", "pandas", "arrow"]
    # SQL mode: the query, with each source's name as a table. Python modes: the function's source.
    sql: str | None = None
    python_source: str | None = None
    function_name: str | None = None
    features: list[FeatureSpec]
    timestamp_field: str
    ttl_seconds: int | None = None
    online: bool = True
    offline: bool = True
    batch_schedule_seconds: int = 86400
    feature_start_time: datetime | None = None
    expectations: ExpectationsSpec | None = None
    # Filled by validation: join keys (from the entities) and the transformation's output schema.
    join_keys: list[FieldSpec] = Field(default_factory=list)
    output_schema: list[FieldSpec] = Field(default_factory=list)


class PushSourceSpec(_ObjectSpec):
    """Records that arrive over the ingest API, with a declared schema (``columns``)."""

    kind: Literal["push_source"] = "push_source"
    columns: list[FieldSpec]
    timestamp_field: str
    # A FileSource holding the same events from before the push source existed (backfills and
    # offline retrieval read it together with the ingest log).
    batch_source: str | None = None


class StreamFeatureViewSpec(_ViewProperties, _ObjectSpec):
    """Features of a push source kept up to date as records arrive: the latest values of
    attributes, and aggregates over sliding windows of ``aggregation_interval_seconds`` tiles."""

    kind: Literal["stream_feature_view"] = "stream_feature_view"
    source: str
    entities: list[str]
    features: list[FeatureSpec]
    aggregation_interval_seconds: int = 60
    ttl_seconds: int | None = None
    online: bool = True
    offline: bool = True
    # Filled by validation.
    join_keys: list[FieldSpec] = Field(default_factory=list)
    timestamp_field: str = ""


class RealtimeFeatureViewSpec(_ObjectSpec):
    """Features computed at request time by a Python function over request-context values and
    other views' features."""

    kind: Literal["realtime_feature_view"] = "realtime_feature_view"
    request_schema: list[FieldSpec] = Field(default_factory=list)
    # Feature views (batch or stream) whose features the function receives, one dict each.
    inputs: list[str] = Field(default_factory=list)
    features: list[AttributeSpec]
    python_source: str
    function_name: str
    online: bool = True
    # The TransformServerGroup whose worker processes run it when serving (None: see the groups'
    # own lists of views; else the serving process).
    transform_server_group: str | None = None
    # Filled by validation: the join keys of the input views.
    join_keys: list[FieldSpec] = Field(default_factory=list)

    @property
    def join_key_names(self) -> list[str]:
        return [k.name for k in self.join_keys]

    def feature(self, name: str) -> AttributeSpec | None:
        return next((f for f in self.features if f.name == name), None)


class FeatureRefSpec(_Spec):
    """A service's use of a view: all its features (``features=None``) or a selection."""

    view: str
    features: list[str] | None = None


class ChunkingSpec(_Spec):
    """How an embedding view splits each document: windows of ``size`` units, ``overlap`` shared
    (``by="auto"``: windows of the model's input limit in its tokens, ``size`` unused, 0)."""

    by: Literal["chars", "tokens", "auto"]
    size: int
    overlap: int = 0


class EmbeddingViewSpec(_ObjectSpec):
    """A source's text, one row per entity key, chunked and encoded into a vector table."""

    kind: Literal["embedding_view"] = "embedding_view"
    sources: list[str]
    entities: list[str]
    # "column": the source's rows as they are; else a transformation like a feature view's.
    mode: Literal["column", "sql", "pandas", "arrow"] = "column"
    sql: str | None = None
    python_source: str | None = None
    function_name: str | None = None
    text_column: str
    model: str
    chunking: ChunkingSpec | None = None
    metadata: list[str] = Field(default_factory=list)
    timestamp_field: str | None = None
    online: bool = True
    # Filled by validation: key types, metadata types, and the model's identity and dimension.
    join_keys: list[FieldSpec] = Field(default_factory=list)
    metadata_schema: list[FieldSpec] = Field(default_factory=list)
    model_name: str | None = None
    dimension: int | None = None
    expectations: ExpectationsSpec | None = None
    # Filled by validation, never stored nor diffed (it describes the data, not the view): the
    # share of sampled texts longer than the model's window when the view does not chunk.
    long_texts: dict[str, Any] | None = Field(default=None, exclude=True)

    @property
    def join_key_names(self) -> list[str]:
        return [k.name for k in self.join_keys]


SEARCH_MODES = ("vector", "text", "hybrid")


class SearchSpec(_Spec):
    """One similarity search a service or prompt runs: which view, how many, how, on what text.

    ``query_from`` names where the query text comes from: ``"query"`` (the request's query) or a
    request-context field.
    """

    name: str
    view: str
    top_k: int = 5
    mode: Literal["vector", "text", "hybrid"] = "vector"
    filter: dict[str, Any] | None = None
    query_from: str = "query"
    # "document": one hit per document (its best chunk as the highlight); None: chunks
    group_by: Literal["document"] | None = None
    # hybrid fusion: "rrf" (None) or "blend"; candidates per list; weights (vector, text)
    fusion: Literal["rrf", "blend"] | None = None
    depth: int | None = None
    weights: tuple[float, float] | None = None
    # a reranker stage: {"model": "local:<folder>" | <litellm rerank model>, "depth": 50, ...}
    rerank: dict[str, Any] | None = None

    def ranking(self) -> dict[str, Any]:
        """How its hits are found and ranked, as ``search_view``'s keyword arguments (mode,
        grouping, fusion, depth, weights, reranker): one source for the online search and the
        same search in rendered datasets, so the two cannot drift apart."""
        return {
            "mode": self.mode,
            "group_by": self.group_by,
            "fusion": self.fusion,
            "depth": self.depth,
            "weights": self.weights,
            "rerank": self.rerank,
        }


class RequestFieldSpec(_Spec):
    """A request-context value a prompt reads, with its type; optional ones have a default."""

    name: str
    dtype: str
    required: bool = True
    default: Any = None
    description: str = ""


class PromptViewSpec(_ObjectSpec):
    """A Jinja template and what it reads; renders to text or chat messages within a budget."""

    kind: Literal["prompt_view"] = "prompt_view"
    format: Literal["text", "messages"] = "text"
    # format "text": one template; "messages": (role, template) turns in order. Templates read
    # from files are stored as their text (so `plan` sees an edit); the file names are kept for
    # error locations.
    template: str | None = None
    messages: list[tuple[str, str]] = Field(default_factory=list)
    template_file: str | None = None
    message_files: list[str | None] = Field(default_factory=list)
    features: list[FeatureRefSpec] = Field(default_factory=list)
    searches: list[SearchSpec] = Field(default_factory=list)
    request_context: list[RequestFieldSpec] = Field(default_factory=list)
    max_tokens: int | None = None
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # Filled by validation: the template's variables (dotted paths), for docs and the UI.
    variables: list[str] = Field(default_factory=list)


class ContextServiceSpec(_ObjectSpec):
    kind: Literal["context_service"] = "context_service"
    features: list[FeatureRefSpec]
    searches: list[SearchSpec] = Field(default_factory=list)
    prompts: list[str] = Field(default_factory=list)
    # Serving cache: how long the data plane may answer from memory (None: no cache). At most
    # 24 h; an apply or a materialization of one of the service's views invalidates it sooner.
    cache_seconds: float | None = None


class ServerGroupSpec(_ObjectSpec):
    """A feature server group: the services ``contextkit serve --server-group NAME`` serves."""

    kind: Literal["server_group"] = "server_group"
    services: list[str]


class TransformServerGroupSpec(_ObjectSpec):
    """A transform server group: realtime views run in a pool of worker processes of their own
    in every serving process, each call answered within ``timeout_seconds``."""

    kind: Literal["transform_server_group"] = "transform_server_group"
    views: list[str]
    workers: int = 2
    timeout_seconds: float = 5.0


AnySpec = (
    EntitySpec
    | FileSourceSpec
    | DatabaseSourceSpec
    | PushSourceSpec
    | FeatureViewSpec
    | StreamFeatureViewSpec
    | RealtimeFeatureViewSpec
    | EmbeddingViewSpec
    | PromptViewSpec
    | ContextServiceSpec
    | ServerGroupSpec
    | TransformServerGroupSpec
)
ObjectSpec = Annotated[AnySpec, Field(discriminator="kind")]

# Fields whose change does not require re-materializing a view.
METADATA_FIELDS = frozenset(
    {
        "description",
        "owner",
        "tags",
        "location",
        "batch_schedule_seconds",
        "spec_version",
        "expectations",
    }  # fmt: skip
)
