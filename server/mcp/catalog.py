"""What an MCP client sees of one live workspace: tools, prompts and resources, generated from
the registry (never one tool per HTTP route).

- per context service: ``get_context_<service>`` (features, documents and the rendered prompt for
  one entity; input: ``entities`` typed from the join keys, ``query``, ``request_context`` from
  the prompt views' request fields, ``top_k``) and ``get_features_<service>`` (latest values for
  one or more entities), when it has feature views;
- per embedding view: ``search_<view>`` (``query``, ``top_k`` bounded by the server's limit,
  ``mode``, and a ``filter`` whose properties are the view's key and metadata columns);
- per push source, only when the server enables it and only for ingester keys:
  ``ingest_<source>``;
- per prompt view used by a service: an MCP prompt whose arguments are its entity keys, ``query``
  and request fields;
- resources: each view's and service's definition (with lineage and freshness for views), each
  view's lineage alone, and the workspace's freshness.

Names and descriptions come from the definitions (``description``, ``tags``, feature names,
types and descriptions). The server's default workspace has plain names; another workspace's
names start with ``<workspace>__``. A :class:`WorkspaceCatalog` is built once per workspace
version (see :mod:`contextkit.server.mcp`, which caches and serves it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types

from contextkit.client import Context
from contextkit.errors import ContextKitError
from contextkit.server.common import INGESTER, READER

log = logging.getLogger("contextkit.mcp")

SEARCH_MODES = ("vector", "text", "hybrid")
MAX_ENTITIES = 100  # entity rows per get_features call
MAX_IN_VALUES = 1000  # values of an in / not_in filter (the vector store's limit)
RESOURCE_SCHEME = "contextkit"

# Filter operators per JSON type of a column (the vector store's grammar, see docs/embeddings.md).
_OPERATORS = {
    "string": ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "contains"),
    "integer": ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in"),
    "number": ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in"),
    "boolean": ("eq", "ne", "in", "not_in"),
    "date-time": ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in"),
}
_READ_ONLY = types.ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
_WRITE = types.ToolAnnotations(
    read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
)


def json_schema(dtype: str | None) -> dict[str, Any]:
    """The JSON Schema of a value of a contextkit dtype (``{}``: any, when it is unknown)."""
    if dtype is None:
        return {}
    if dtype.startswith("array<") and dtype.endswith(">"):
        return {"type": "array", "items": json_schema(dtype[6:-1])}
    return {
        "string": {"type": "string"},
        "int64": {"type": "integer"},
        "float64": {"type": "number"},
        "bool": {"type": "boolean"},
        "timestamp": {"type": "string", "format": "date-time"},
    }.get(dtype, {})


_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}
_ANNOTATIONS = frozenset({"description", "default", "title", "format"})
_APPLIES_TO: dict[str, Any] = {
    **dict.fromkeys(("properties", "required", "additionalProperties", "minProperties"), dict),
    **dict.fromkeys(("items", "minItems", "maxItems"), list),
    "minLength": str,
    **dict.fromkeys(("minimum", "maximum"), int | float),
}


def conforms(schema: dict[str, Any], value: Any) -> bool:
    """Whether ``value`` surely fits ``schema``, for the keywords this module writes (a fast
    check: ~50x cheaper than ``jsonschema``). False also when unsure (another keyword, a value
    that only ``jsonschema``'s rules would accept): the caller then asks ``jsonschema``, which
    decides and says why."""
    for keyword, expected in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        if keyword in _APPLIES_TO and not isinstance(value, _APPLIES_TO[keyword]):
            return False  # unsure: such keywords ignore other types; jsonschema decides
        if keyword == "type":
            if not _TYPES[expected](value):
                return False
        elif keyword == "properties":
            if any(k in value and not conforms(s, value[k]) for k, s in expected.items()):
                return False
        elif keyword == "required":
            if any(k not in value for k in expected):
                return False
        elif keyword == "additionalProperties":
            if expected is False and any(k not in schema.get("properties", ()) for k in value):
                return False
        elif keyword == "items":
            if not all(conforms(expected, item) for item in value):
                return False
        elif keyword == "anyOf":
            if not any(conforms(option, value) for option in expected):
                return False
        elif keyword == "enum":
            if value not in expected:
                return False
        elif keyword in ("minimum", "maximum"):
            if value < expected if keyword == "minimum" else value > expected:
                return False
        elif keyword in ("minLength", "minItems", "minProperties"):
            if len(value) < expected:
                return False
        elif keyword == "maxItems":
            if len(value) > expected:
                return False
        else:
            return False
    return True


# -- the catalog ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolDef:
    """One generated tool: what it calls (``kind`` on ``target``) and who may see it."""

    tool: types.Tool
    workspace: str
    kind: str  # get_context | get_features | search | ingest
    target: str  # the service, embedding view or push source
    role: str  # the role a key needs in the workspace

    @property
    def name(self) -> str:
        return self.tool.name


@dataclass(frozen=True)
class PromptArg:
    """Where a prompt argument goes in the context request: ``entities``, ``query`` or
    ``request_context``, and the dtype its text is read as."""

    name: str
    place: str
    dtype: str | None


@dataclass(frozen=True)
class PromptDef:
    prompt: types.Prompt
    workspace: str
    view: str  # the prompt view
    service: str  # the service it is rendered through
    args: tuple[PromptArg, ...]

    @property
    def name(self) -> str:
        return self.prompt.name


@dataclass(frozen=True)
class ResourceDef:
    resource: types.Resource
    workspace: str
    kind: str  # view | lineage | service | prompt | freshness
    target: str

    @property
    def uri(self) -> str:
        return self.resource.uri


@dataclass(frozen=True)
class WorkspaceCatalog:
    """Everything one workspace offers over MCP, by name (tools, prompts) and URI (resources)."""

    workspace: str
    version: int
    tools: dict[str, ToolDef] = field(default_factory=dict)
    prompts: dict[str, PromptDef] = field(default_factory=dict)
    resources: dict[str, ResourceDef] = field(default_factory=dict)

    def fingerprint(self, kind: str) -> str:
        """A digest of what a client lists of ``kind`` (tools, prompts, resources): it changes
        when, and only when, the listing does."""
        items: Iterable[Any] = {
            "tools": (t.tool for t in self.tools.values()),
            "prompts": (p.prompt for p in self.prompts.values()),
            "resources": (r.resource for r in self.resources.values()),
        }[kind]
        dumped = [i.model_dump(mode="json", exclude_none=True) for i in items]
        return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()


def build_catalog(ctx: Context, *, prefix: str, max_top_k: int, ingest: bool) -> WorkspaceCatalog:
    """The catalog of ``ctx``'s workspace (which must be live). ``prefix`` starts every tool and
    prompt name; ``max_top_k`` bounds search sizes; ``ingest`` adds the ingest tools."""
    specs = ctx.specs()
    ws = specs.workspace.name
    catalog = WorkspaceCatalog(ws, specs.workspace.version)
    entity_of = {k.name: e for e in specs.entities.values() for k in e.join_keys}

    def add_tool(tool: ToolDef) -> None:
        if tool.name in catalog.tools:
            log.warning(
                "MCP tool name %r is generated twice in %r; keeping the first", tool.name, ws
            )
            return
        catalog.tools[tool.name] = tool

    for service in sorted(specs.services.values(), key=lambda s: s.name):
        try:
            add_tool(_context_tool(ctx, service, prefix, entity_of, max_top_k))
            if service.features:
                add_tool(_features_tool(ctx, service, prefix, entity_of))
        except ContextKitError as exc:  # a service that cannot be planned serves no tool
            log.warning("MCP: no tools for service %r in %r: %s", service.name, ws, exc.message)
    for view in sorted(specs.embedding_views.values(), key=lambda v: v.name):
        add_tool(_search_tool(ws, view, prefix, max_top_k))
    if ingest:
        for source in sorted(specs.push_sources.values(), key=lambda s: s.name):
            add_tool(_ingest_tool(ws, source, prefix))

    for prompt in _prompts(ctx, prefix, entity_of):
        catalog.prompts.setdefault(prompt.name, prompt)
    for resource in _resources(specs):
        catalog.resources[resource.uri] = resource
    return catalog


# -- tools ---------------------------------------------------------------------------------------


def _entities_schema(
    join_keys: Iterable[tuple[str, str]], entity_of: dict[str, Any], *, batch: bool
) -> dict[str, Any]:
    properties = {}
    for name, dtype in join_keys:
        value = json_schema(dtype)
        entity = entity_of.get(name)
        about = f"Join key of entity {entity.name!r}" if entity else "Join key"
        if entity is not None and entity.description:
            about += f" ({entity.description.rstrip('.')})"
        if batch:
            value = {
                "anyOf": [
                    value,
                    {"type": "array", "items": value, "minItems": 1, "maxItems": MAX_ENTITIES},
                ]
            }
            about += "; one value, or a list of values (one per entity row, all keys alike)"
        properties[name] = {**value, "description": about + "."}
    return _object(properties, list(properties))


def _request_schema(
    fields: Iterable[tuple[str, str | None, bool, Any, str]],
) -> dict[str, Any]:
    """The ``request_context`` object's schema from ``(name, dtype, required, default,
    description)`` of each field."""
    properties: dict[str, Any] = {}
    required = []
    for name, dtype, needed, default, description in fields:
        prop = {**json_schema(dtype)}
        if description:
            prop["description"] = description
        if needed:
            required.append(name)
        elif default is not None:
            prop["default"] = default
        properties[name] = prop
    return _object(properties, required)


def _context_tool(
    ctx: Context, service: Any, prefix: str, entity_of: dict[str, Any], max_top_k: int
) -> ToolDef:
    specs = ctx.specs()
    prompts = list(service.prompts)
    plans = [ctx.context_plan(service.name, p) for p in prompts or [None]]
    plan = plans[0]
    properties: dict[str, Any] = {}
    required: list[str] = []
    if plan.join_keys:
        properties["entities"] = _entities_schema(plan.join_keys, entity_of, batch=False)
        required.append("entities")
    if any(p.needs_query for p in plans):
        properties["query"] = {
            "type": "string",
            "minLength": 1,
            "description": "The user's question or request: what the searches look for "
            "and what the prompt answers.",
        }
        if plan.needs_query:
            required.append("query")
    fields: dict[str, Any] = {}
    for p in plans:  # every prompt's fields; required as the default prompt needs them
        for f in p.request_fields:
            fields.setdefault(f.name, f)
    if fields:
        schema = _request_schema(
            (f.name, f.dtype, f.required, f.default, f.description) for f in fields.values()
        )
        schema["description"] = "Request-time values the prompt and realtime features read."
        properties["request_context"] = schema
        if any(f.required for f in plan.request_fields):
            required.append("request_context")
    if len(prompts) > 1:
        properties["prompt"] = {
            "type": "string",
            "enum": prompts,
            "description": f"Which prompt view to render (default: {prompts[0]!r}).",
        }
    searches = {s.name: s for p in plans for s in p.searches}
    if searches:
        properties["top_k"] = {
            "type": "integer",
            "minimum": 1,
            "maximum": max_top_k,
            "description": "Documents per search (default: each search's own top_k).",
        }
    lines = [_sentence(service.description) or f"Context of service {service.name!r}."]
    views = [ref.view for ref in service.features]
    if views:
        lines.append(
            "Features: "
            + "; ".join(_view_brief(specs.feature_views.get(v), v) for v in views)
            + "."
        )
    if searches:
        lines.append(
            "Documents: "
            + "; ".join(
                f"{s.name} (top {s.top_k}, {s.mode} search of "
                + _view_brief(specs.embedding_views.get(s.view), s.view)
                + ")"
                for s in searches.values()
            )
            + "."
        )
    if prompts:
        first = specs.prompts.get(prompts[0])
        lines.append(
            f"Prompt: {prompts[0]!r}"
            + (
                f" ({_sentence(first.description).rstrip('.')})"
                if first and first.description
                else ""
            )
            + ", rendered with the features and documents."
        )
    return _tool(
        specs.workspace.name,
        "get_context",
        service.name,
        f"{prefix}get_context_{service.name}",
        f"Get context: {service.name}",
        [*lines, *_tags(service.tags)],
        _object(properties, required),
    )


def _features_tool(ctx: Context, service: Any, prefix: str, entity_of: dict[str, Any]) -> ToolDef:
    specs = ctx.specs()
    reader = ctx.service_reader(service.name)
    properties: dict[str, Any] = {
        "entities": _entities_schema(reader.join_keys, entity_of, batch=True)
    }
    required = ["entities"]
    if reader.request_fields:
        schema = _request_schema((n, t, True, None, "") for n, t in reader.request_fields)
        schema["description"] = "Request-time values the realtime feature views read."
        properties["request_context"] = schema
        required.append("request_context")
    lines = [
        f"Latest feature values of service {service.name!r} for one or more entities"
        + (f": {_sentence(service.description).rstrip('.')}." if service.description else ".")
    ]
    for ref in service.features:
        view = specs.feature_views.get(ref.view)
        if view is None:
            continue
        wanted = set(ref.features) if ref.features else None
        features = [f for f in view.features if wanted is None or f.name in wanted]
        described = ", ".join(
            f"{f.name} ({f.dtype or 'any'})" + (f": {f.description}" if f.description else "")
            for f in features
        )
        lines.append(
            f"{view.name}"
            + (f" ({_sentence(view.description).rstrip('.')})" if view.description else "")
            + f": {described}."
        )
    return _tool(
        specs.workspace.name,
        "get_features",
        service.name,
        f"{prefix}get_features_{service.name}",
        f"Get features: {service.name}",
        [*lines, *_tags(service.tags)],
        _object(properties, required),
    )


def _filter_schema(view: Any) -> dict[str, Any]:
    """A ``filter`` object: one property per key or metadata column, a value (equals) or an
    object of operators typed like the column."""
    properties = {}
    for col in [*view.join_keys, *view.metadata_schema]:
        value = json_schema(col.dtype)
        kind = value.get("format") or value.get("type")
        if kind not in _OPERATORS:
            continue
        ops = {}
        for op in _OPERATORS[kind]:
            if op in ("in", "not_in"):
                ops[op] = {
                    "type": "array",
                    "items": value,
                    "minItems": 1,
                    "maxItems": MAX_IN_VALUES,
                }
            else:
                ops[op] = value
        properties[col.name] = {
            "anyOf": [
                value,
                {
                    "type": "object",
                    "properties": ops,
                    "additionalProperties": False,
                    "minProperties": 1,
                },
            ],
            "description": f"{col.dtype}: a value (equals) or an object of operators "
            f"({', '.join(_OPERATORS[kind])}).",
        }
    return {
        **_object(properties, []),
        "description": "Conditions on key and metadata columns, all of which must hold.",
    }


def _search_tool(ws: str, view: Any, prefix: str, max_top_k: int) -> ToolDef:
    properties = {
        "query": {"type": "string", "minLength": 1, "description": "What to look for."},
        "top_k": {
            "type": "integer",
            "minimum": 1,
            "maximum": max_top_k,
            "default": min(5, max_top_k),
            "description": "How many chunks to return, best first.",
        },
        "mode": {
            "type": "string",
            "enum": list(SEARCH_MODES),
            "default": "vector",
            "description": "vector: by meaning; text: by keywords (BM25); hybrid: both.",
        },
        "filter": _filter_schema(view),
    }
    columns = ", ".join(c.name for c in view.metadata_schema)
    lines = [
        _sentence(view.description) or f"Documents of embedding view {view.name!r}.",
        f"Searches the chunks of {view.text_column!r} (model {view.model_name or view.model})"
        + (f"; each hit carries {columns}" if columns else "")
        + ".",
        *_tags(view.tags),
    ]
    return _tool(
        ws,
        "search",
        view.name,
        f"{prefix}search_{view.name}",
        f"Search: {view.name}",
        lines,
        _object(properties, ["query"]),
    )


def _ingest_tool(ws: str, source: Any, prefix: str) -> ToolDef:
    columns = {c.name: {**json_schema(c.dtype)} for c in source.columns}
    record = _object(columns, list(columns))
    properties = {
        "records": {
            "type": "array",
            "items": record,
            "minItems": 1,
            "description": "Records with every field of the source's schema.",
        },
        "dry_run": {"type": "boolean", "default": False, "description": "Only validate."},
    }
    lines = [
        _sentence(source.description) or f"Push records to source {source.name!r}.",
        "Writes them to the source's log and its stream feature views (needs an ingester key).",
        *_tags(source.tags),
    ]
    return _tool(
        ws,
        "ingest",
        source.name,
        f"{prefix}ingest_{source.name}",
        f"Ingest: {source.name}",
        lines,
        _object(properties, ["records"]),
        write=True,
    )


def _tool(
    ws: str,
    kind: str,
    target: str,
    name: str,
    title: str,
    lines: list[str],
    schema: dict[str, Any],
    *,
    write: bool = False,
) -> ToolDef:
    """A tool of ``kind`` on ``target``: read-only for readers, or (``write``) for ingesters."""
    tool = types.Tool(
        name=name,
        title=title,
        description="\n".join(lines),
        input_schema=schema,
        annotations=_WRITE if write else _READ_ONLY,
    )
    return ToolDef(tool, ws, kind, target, INGESTER if write else READER)


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _sentence(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def _view_brief(view: Any, name: str) -> str:
    if view is None or not view.description:
        return name
    return f"{name} ({_sentence(view.description).rstrip('.')})"


def _tags(tags: dict[str, str]) -> list[str]:
    return ["Tags: " + ", ".join(f"{k}={v}" for k, v in sorted(tags.items()))] if tags else []


# -- prompts -------------------------------------------------------------------------------------


def _prompts(ctx: Context, prefix: str, entity_of: dict[str, Any]) -> list[PromptDef]:
    """Each prompt view a service renders, through the first service (by name) that lists it."""
    specs = ctx.specs()
    out = []
    seen: set[str] = set()
    for service in sorted(specs.services.values(), key=lambda s: s.name):
        for view_name in service.prompts:
            if view_name in seen or view_name not in specs.prompts:
                continue
            seen.add(view_name)
            try:
                out.append(_prompt_def(ctx, service.name, view_name, prefix, entity_of))
            except ContextKitError as exc:
                log.warning("MCP: no prompt %r in %r: %s", view_name, ctx.workspace, exc.message)
    return out


def _prompt_def(
    ctx: Context, service: str, view_name: str, prefix: str, entity_of: dict[str, Any]
) -> PromptDef:
    view = ctx.specs().prompts[view_name]
    plan = ctx.context_plan(service, view_name)
    args: dict[str, tuple[PromptArg, types.PromptArgument]] = {}

    def add(arg: PromptArg, about: str, required: bool) -> None:
        # A request field named like a join key (or "query"): the first one wins.
        args.setdefault(
            arg.name,
            (arg, types.PromptArgument(name=arg.name, description=about, required=required)),
        )

    for key, dtype in plan.join_keys:
        entity = entity_of.get(key)
        about = f"{dtype} join key" + (f" of entity {entity.name!r}" if entity else "")
        add(PromptArg(key, "entities", dtype), about, True)
    if plan.needs_query:
        add(PromptArg("query", "query", "string"), "The user's question.", True)
    for f in plan.request_fields:
        about = f"{f.dtype} request field" + (f": {f.description}" if f.description else "")
        if not f.required and f.default is not None:
            about += f" (default: {f.default!r})"
        add(PromptArg(f.name, "request_context", f.dtype), about, f.required)
    description = _sentence(view.description) or f"Prompt view {view_name!r}."
    description += f" Rendered ({view.format}) with fresh features and documents of {service!r}."
    prompt = types.Prompt(
        name=f"{prefix}{view_name}",
        title=view_name,
        description=description,
        arguments=[listed for _arg, listed in args.values()] or None,
    )
    return PromptDef(
        prompt, plan.workspace, view_name, service, tuple(arg for arg, _ in args.values())
    )


# -- resources -----------------------------------------------------------------------------------


def resource_uri(workspace: str, *parts: str) -> str:
    return f"{RESOURCE_SCHEME}://{workspace}/" + "/".join(parts)


def _resources(specs: Any) -> list[ResourceDef]:
    ws = specs.workspace.name

    def resource(kind: str, target: str, title: str, about: str, *parts: str) -> ResourceDef:
        listed = types.Resource(
            name=f"{ws}: {title}",
            uri=resource_uri(ws, *parts),
            description=about,
            mime_type="application/json",
        )
        return ResourceDef(listed, ws, kind, target)

    def opening(description: str | None) -> str:
        about = _sentence(description)
        return about + " " if about else ""

    out = [
        resource(
            "freshness",
            "",
            "freshness",
            f"Freshness, newest job and open alerts of every view of {ws!r}.",
            "freshness",
        )
    ]
    views = {**specs.feature_views, **specs.embedding_views}
    for name in sorted(views):
        view = views[name]
        about = f"Definition ({view.kind}), lineage, freshness and statistics."
        out.append(
            resource("view", name, f"view {name}", opening(view.description) + about, "views", name)
        )
        out.append(
            resource(
                "lineage",
                name,
                f"lineage of {name}",
                f"What {name!r} is computed from and what reads it.",
                "views",
                name,
                "lineage",
            )
        )
    for name in sorted(specs.services):
        about = opening(specs.services[name].description) + "Definition of the service."
        out.append(resource("service", name, f"service {name}", about, "services", name))
    for name in sorted(specs.prompts):
        about = (
            opening(specs.prompts[name].description)
            + "Definition of the prompt view (template, features, searches)."
        )
        out.append(resource("prompt", name, f"prompt view {name}", about, "prompts", name))
    return out
