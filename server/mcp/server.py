"""The MCP server: handlers over a registry's generated catalogs, per caller.

:class:`ContextkitMcp` wraps the SDK's low-level ``Server``: ``tools/list``, ``tools/call``,
``prompts/list``, ``prompts/get``, ``resources/list``, ``resources/read`` and
``subscriptions/listen``. Each request's caller is a :class:`Gate` (which workspaces and roles
it may use), made by the transport: :mod:`contextkit.server.mcp.endpoint` over HTTP,
:func:`local_server` over stdio. A caller sees the catalogs
(:mod:`contextkit.server.mcp.catalog`) of the live workspaces its key may read, and the tools
its role allows. Tools run through the :class:`~contextkit.client.Context` facade in a worker
thread; a failure is a tool error with the HTTP API's code, message and hint
(:mod:`contextkit.server.mcp.results`), never a crash of the session. A watcher, run by the
server's lifespan, publishes list-changed events when an apply changes what clients list.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError

from contextkit.client import Context
from contextkit.errors import (
    BadRequestError,
    ContextKitError,
    InternalError,
    NotFoundError,
    translating,
)
from contextkit.server.common import INGESTER, READER, waits_on_transform_workers
from contextkit.server.mcp.catalog import (
    PromptDef,
    ResourceDef,
    ToolDef,
    WorkspaceCatalog,
    build_catalog,
    conforms,
)
from contextkit.server.mcp.results import (
    context_result,
    features_result,
    ingest_result,
    prompt_messages,
    search_result,
    text_to_value,
    tool_error,
)
from contextkit.server.mcp.settings import McpSettings

if TYPE_CHECKING:
    from starlette.requests import Request

    from contextkit.governance.access import ApiKey
    from contextkit.retrieval.assemble import ContextResult

log = logging.getLogger("contextkit.mcp")

MODERN_PROTOCOL = "2026-07-28"  # clients from this version on listen (subscriptions/listen)

INSTRUCTIONS = """\
contextkit serves governed, fresh context from a context-as-code repo. get_context_<service> \
returns everything one answer needs (the user's features, the documents that match the query and \
the service's prompt rendered with both); search_<view> searches one set of documents; \
get_features_<service> reads feature values. Tools of a workspace other than the server's default \
are named <workspace>__<tool>. Resources describe the views, services, lineage and freshness."""


# -- who is calling ------------------------------------------------------------------------------


class Gate:
    """One request's caller: which workspaces and roles it may use, and their contexts."""

    def may(self, workspace: str, role: str) -> bool:
        raise NotImplementedError

    def context(self, workspace: str, role: str, service: str | None = None) -> Context:
        raise NotImplementedError


class LocalGate(Gate):
    """A stdio caller: everything, or what ``key`` allows (verified on every request, so a
    revoke applies at once)."""

    def __init__(self, contexts: Callable[[str], Context], key: ApiKey | None) -> None:
        self.contexts = contexts
        self.key = key

    def may(self, workspace: str, role: str) -> bool:
        return self.key is None or self.key.allows(workspace, role)

    def context(self, workspace: str, role: str, service: str | None = None) -> Context:
        if not self.may(workspace, role):
            assert self.key is not None
            raise self.key.refusal(workspace, role)
        return self.contexts(workspace)


# -- the server ----------------------------------------------------------------------------------


class ContextkitMcp:
    """contextkit's MCP server over one registry (``ctx``: its default workspace).

    ``gate(request)`` gives the caller of a request (``request`` is None over stdio).
    """

    def __init__(
        self,
        ctx: Context,
        settings: McpSettings,
        gate: Callable[[Request | None], Gate],
    ) -> None:
        import contextkit

        self.ctx = ctx
        self.settings = settings
        self.gate = gate
        self.bus = InMemorySubscriptionBus()
        self._contexts: dict[str, Context] = {}
        self._catalogs: dict[str, tuple[Any, WorkspaceCatalog]] = {}
        self._validators: dict[str, Any] = {}
        # Over stdio (run_stdio), clients of the 2025 protocols get their era's list-changed
        # notifications on their connection; 2026-07-28 clients listen (subscriptions/listen).
        self.legacy_notifications = False
        self._legacy: list[Any] = []
        self.server: Server[Any] = Server(
            "contextkit",
            version=contextkit.__version__,
            title="contextkit",
            description="Features, documents and prompts from a context-as-code repo.",
            instructions=INSTRUCTIONS,
            lifespan=self._lifespan,
            get_tool_input_schema=self._tool_input_schema,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_list_resources=self._list_resources,
            on_read_resource=self._read_resource,
            on_subscriptions_listen=ListenHandler(self.bus),
        )
        # The SDK opens an OpenTelemetry span per message by default. contextkit exports no
        # traces (its access log and /metrics see every request), and the span cost 0.2-0.3 ms
        # of CPU per call here (bench/mcp.py): opt out, as the SDK documents.
        self.server.middleware = [
            m for m in self.server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"
        ]

    # -- catalogs ---------------------------------------------------------------------------------
    def context_of(self, workspace: str) -> Context:
        found = self._contexts.get(workspace)
        if found is None:
            found = self._contexts[workspace] = self.ctx.use(workspace)
        return found

    def catalog(self, workspace: str) -> WorkspaceCatalog | None:
        """The catalog of a live workspace (rebuilt when an apply changed it); None otherwise."""
        ctx = self.context_of(workspace)
        try:
            record = ctx.specs().workspace
        except NotFoundError:
            return None
        if not record.live:
            return None
        cached = self._catalogs.get(workspace)
        if cached is not None and cached[0] == record:
            return cached[1]
        prefix = "" if workspace == self.ctx.workspace else f"{workspace}__"
        with translating:
            built = build_catalog(
                ctx,
                prefix=prefix,
                max_top_k=self.settings.max_top_k,
                ingest=self.settings.ingest,
            )
        self._catalogs[workspace] = (record, built)
        return built

    def visible(self, gate: Gate, role: str | None = None) -> list[WorkspaceCatalog]:
        """The catalogs of the live workspaces ``gate`` may read (or use with ``role``), the
        server's default workspace first."""
        default = self.ctx.workspace
        names = sorted(
            (w.name for w in self.ctx.list_workspaces() if w.live),
            key=lambda n: (n != default, n),
        )
        roles = (role,) if role else (READER, INGESTER)
        out = []
        for name in names:
            if any(gate.may(name, r) for r in roles):
                catalog = self.catalog(name)
                if catalog is not None:
                    out.append(catalog)
        return out

    def _find_tool(self, gate: Gate, name: str) -> ToolDef:
        default = self.ctx.workspace
        found = self._tool_in(gate, default, name)  # the common case: no registry listing
        if found is not None:
            return found
        for record in self.ctx.list_workspaces():
            if record.live and record.name != default:
                found = self._tool_in(gate, record.name, name)
                if found is not None:
                    return found
        raise NotFoundError(
            f"unknown tool {name!r}",
            hint="list the tools (tools/list) to see the ones your key may call",
        )

    def _tool_in(self, gate: Gate, workspace: str, name: str) -> ToolDef | None:
        if not (gate.may(workspace, READER) or gate.may(workspace, INGESTER)):
            return None
        catalog = self.catalog(workspace)
        tool = catalog.tools.get(name) if catalog else None
        return tool if tool is not None and gate.may(workspace, tool.role) else None

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        """The SDK's ``Mcp-Param-*`` header check compares arguments with headers for the
        properties a schema annotates with ``x-mcp-header``; ours annotate none, so there is
        nothing to check (None). Without this hook the SDK would run tools/list per call."""
        return None

    def _remember_legacy(self, rctx: Any) -> None:
        """Remember the session of an older (2025) client at its listings, to send it the
        ``notifications/*/list_changed`` of its era (over stdio: one long-lived session; a
        stateless HTTP request has no channel to send them on)."""
        if not self.legacy_notifications or rctx.protocol_version >= MODERN_PROTOCOL:
            return
        if not any(s is rctx.session for s in self._legacy):
            self._legacy.append(rctx.session)

    async def _notify_legacy(self, kind: str) -> None:
        for session in list(self._legacy):
            send = {
                "tools": session.send_tool_list_changed,
                "prompts": session.send_prompt_list_changed,
                "resources": session.send_resource_list_changed,
            }[kind]
            try:
                await send()
            except Exception:  # the client went away: forget it
                log.debug("MCP: dropping a closed session", exc_info=True)
                self._legacy = [s for s in self._legacy if s is not session]

    # -- handlers ---------------------------------------------------------------------------------
    async def _list_tools(self, rctx: Any, _params: Any) -> types.ListToolsResult:
        self._remember_legacy(rctx)
        with _protocol_errors():
            gate = self.gate(rctx.request)
            tools = [
                t.tool
                for catalog in self.visible(gate)
                for t in catalog.tools.values()
                if gate.may(catalog.workspace, t.role)
            ]
        return types.ListToolsResult(tools=tools)

    async def _call_tool(self, rctx: Any, params: types.CallToolRequestParams) -> Any:
        with _protocol_errors():  # an unknown tool is a protocol error, not a tool's
            gate = self.gate(rctx.request)
            tool = self._find_tool(gate, params.name)
        args = dict(params.arguments or {})
        try:
            self._validate(tool, args)
            ctx = gate.context(tool.workspace, tool.role, service=_service_of(tool))
            return await self._run_tool(ctx, tool, args)
        except ContextKitError as exc:
            return tool_error(exc)
        except Exception:  # a bug: the session lives on, the traceback goes to the server log
            log.exception("MCP tool %s failed", tool.name)
            return tool_error(InternalError("internal server error; see the server log"))

    async def _run_tool(self, ctx: Context, tool: ToolDef, args: dict[str, Any]) -> Any:
        if tool.kind == "get_context":
            request = {k: args.get(k) for k in ("entities", "query", "request_context", "top_k")}
            return context_result(await _assemble(ctx, tool.target, args.get("prompt"), request))
        if tool.kind == "get_features":
            entities = {k: v if isinstance(v, list) else [v] for k, v in args["entities"].items()}
            # On the event loop, as POST /v1/features does: an online-store read costs less
            # than a hop to a worker thread; in a thread when it waits on transform workers.
            call = partial(ctx.get_features, tool.target, entities, args.get("request_context"))
            with translating:
                if waits_on_transform_workers(ctx, tool.target):
                    online = await _in_thread(call)
                else:
                    online = call()
            return features_result(online)
        if tool.kind == "search":
            call = partial(
                ctx.search,
                tool.target,
                args["query"],
                top_k=args.get("top_k", min(5, self.settings.max_top_k)),
                filter=args.get("filter"),
                mode=args.get("mode", "vector"),
            )
            return search_result(await _in_thread(call))
        call = partial(ctx.ingest, tool.target, args["records"], dry_run=args.get("dry_run", False))
        return ingest_result(await _in_thread(call))

    def _validate(self, tool: ToolDef, args: dict[str, Any]) -> None:
        """Check ``args`` against the tool's input schema: the HTTP API's 422 invalid_request,
        every problem listed with its path."""
        from jsonschema.validators import validator_for

        if conforms(tool.tool.input_schema, args):
            return
        validator = self._validators.get(tool.name)
        if validator is None or validator.schema is not tool.tool.input_schema:
            schema = tool.tool.input_schema
            validator = self._validators[tool.name] = validator_for(schema)(schema)
        problems = sorted(validator.iter_errors(args), key=lambda e: list(e.absolute_path))
        if not problems:
            return
        errors = [
            {
                "path": ".".join(str(p) for p in ("arguments", *e.absolute_path)),
                "message": e.message,
            }
            for e in problems
        ]
        first = errors[0]
        err = ContextKitError(
            f"the arguments of {tool.name} are not valid: {first['path']}: {first['message']}",
            hint="see the tool's input schema (tools/list)",
            details={"errors": errors},
        )
        err.code, err.http_status = "invalid_request", 422
        raise err

    async def _list_prompts(self, rctx: Any, _params: Any) -> types.ListPromptsResult:
        self._remember_legacy(rctx)
        with _protocol_errors():
            gate = self.gate(rctx.request)
            prompts = [p.prompt for c in self.visible(gate, READER) for p in c.prompts.values()]
        return types.ListPromptsResult(prompts=prompts)

    async def _get_prompt(
        self, rctx: Any, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        with _protocol_errors():
            gate = self.gate(rctx.request)
            prompt: PromptDef | None = self._find(gate, lambda c: c.prompts.get(params.name))
            if prompt is None:
                raise NotFoundError(
                    f"unknown prompt {params.name!r}",
                    hint="list the prompts (prompts/list) to see the ones your key may get",
                )
            request = _prompt_request(prompt, dict(params.arguments or {}))
            ctx = gate.context(prompt.workspace, READER, service=prompt.service)
            result = await _assemble(ctx, prompt.service, prompt.view, request)
        return prompt_messages(prompt, result)

    async def _list_resources(self, rctx: Any, _params: Any) -> types.ListResourcesResult:
        self._remember_legacy(rctx)
        with _protocol_errors():
            gate = self.gate(rctx.request)
            resources = [
                r.resource for c in self.visible(gate, READER) for r in c.resources.values()
            ]
        return types.ListResourcesResult(resources=resources)

    async def _read_resource(
        self, rctx: Any, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        with _protocol_errors():
            gate = self.gate(rctx.request)
            resource: ResourceDef | None = self._find(gate, lambda c: c.resources.get(uri))
            if resource is None:
                raise NotFoundError(
                    f"unknown resource {uri!r}",
                    hint="list the resources (resources/list) to see the ones your key may read",
                )
            ctx = gate.context(resource.workspace, READER)
            text = await _in_thread(partial(_resource_json, ctx, resource))
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )

    def _find(self, gate: Gate, pick: Callable[[WorkspaceCatalog], Any]) -> Any:
        for catalog in self.visible(gate, READER):
            found = pick(catalog)
            if found is not None:
                return found
        return None

    # -- list-changed events ------------------------------------------------------------------
    @asynccontextmanager
    async def _lifespan(self, _server: Any) -> AsyncIterator[dict[str, Any]]:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._watch)
            try:
                yield {}
            finally:
                tasks.cancel_scope.cancel()

    def _fingerprints(self) -> tuple[Any, dict[str, str]]:
        """The registry's workspaces (the change token) and a digest per listed kind."""
        records = tuple(self.ctx.list_workspaces())
        digests: dict[str, list[str]] = {"tools": [], "prompts": [], "resources": []}
        for record in records:
            catalog = self.catalog(record.name) if record.live else None
            for kind, parts in digests.items():
                parts.append(f"{record.name}:{catalog.fingerprint(kind) if catalog else '-'}")
        return records, {kind: "|".join(parts) for kind, parts in digests.items()}

    async def _watch(self) -> None:
        """Publish list-changed events when an apply changes what clients list: polls the
        workspace versions (one small query) every ``poll_s``; rebuilds only on a change."""
        token: Any = None
        seen: dict[str, str] = {}
        events = {
            "tools": ToolsListChanged(),
            "prompts": PromptsListChanged(),
            "resources": ResourcesListChanged(),
        }
        while True:
            try:
                records = await _in_thread(lambda: tuple(self.ctx.list_workspaces()))
                if records != token:
                    token, digests = await _in_thread(self._fingerprints)
                    if seen:
                        for kind, digest in digests.items():
                            if digest != seen.get(kind):
                                log.info("MCP: %s list changed", kind)
                                await self.bus.publish(events[kind])
                                await self._notify_legacy(kind)
                    seen = digests
            except Exception:  # a registry that is briefly unreadable: try again next time
                log.warning("MCP: cannot check the registry for changes", exc_info=True)
            await anyio.sleep(self.settings.poll_s)


def _service_of(tool: ToolDef) -> str | None:
    return tool.target if tool.kind in ("get_context", "get_features") else None


async def _assemble(
    ctx: Context, service: str, prompt: str | None, request: dict[str, Any]
) -> ContextResult:
    """A context request assembled as ``POST /v1/context`` does it: parsed on the event loop,
    the service's lookups and searches fanned out to the retrieval pool, rendered off the loop
    (no extra hop through a worker thread that would then wait on the pool)."""
    from contextkit.retrieval.assemble import assemble_async

    with translating:
        plan, parsed = ctx.context_request(service, prompt, request)
        return await assemble_async(ctx.runtime, plan, parsed)


async def _in_thread(call: Callable[[], Any]) -> Any:
    """Run blocking work (stores, the encoder, rendering) off the event loop, with leaf errors
    turned into contextkit errors."""

    def run() -> Any:
        with translating:
            return call()

    return await anyio.to_thread.run_sync(run)


@contextmanager
def _protocol_errors() -> Iterator[None]:
    """Raise contextkit errors of the block as JSON-RPC errors (for what is not a tool's own
    failure: listings, an unknown tool, prompts, resources) carrying the HTTP API's error body."""
    try:
        yield
    except ContextKitError as exc:
        code = types.INTERNAL_ERROR if exc.http_status >= 500 else types.INVALID_PARAMS
        body = exc.to_dict()["error"]
        body["status"] = exc.http_status
        hint = f" (hint: {exc.hint})" if exc.hint else ""
        raise MCPError(code, f"{exc.code}: {exc.message}{hint}", data=body) from None


def _prompt_request(prompt: PromptDef, given: dict[str, str]) -> dict[str, Any]:
    """A prompt's text arguments as a context request: entities, query, request_context."""
    known = {a.name for a in prompt.args}
    unknown = sorted(set(given) - known)
    if unknown:
        raise BadRequestError(
            f"unknown argument(s) of prompt {prompt.name!r}: {', '.join(unknown)}",
            hint="arguments: " + (", ".join(sorted(known)) or "none"),
        )
    entities: dict[str, Any] = {}
    request_context: dict[str, Any] = {}
    query = None
    for arg in prompt.args:
        if arg.name not in given:
            continue
        value = text_to_value(arg.name, arg.dtype, given[arg.name])
        if arg.place == "entities":
            entities[arg.name] = value
        elif arg.place == "query":
            query = value
        else:
            request_context[arg.name] = value
    return {"entities": entities or None, "query": query, "request_context": request_context}


def _resource_json(ctx: Context, resource: ResourceDef) -> str:
    import orjson

    from contextkit.server.monitoring import view_detail, view_summary

    specs = ctx.specs()
    if resource.kind == "view":
        body: Any = view_detail(ctx, resource.target)
    elif resource.kind == "lineage":
        body = {"view": resource.target, **view_detail(ctx, resource.target, runs=1)["lineage"]}
    elif resource.kind == "freshness":
        views = {**specs.feature_views, **specs.embedding_views}
        body = {
            "workspace": specs.workspace.name,
            "views": [
                view_summary(views[s.name], s) for s in ctx.monitoring.status() if s.name in views
            ],
        }
    elif resource.kind == "service":
        service = specs.services[resource.target]
        body = {"workspace": specs.workspace.name, "spec": service.model_dump(mode="json")}
        if service.features:
            reader = ctx.service_reader(service.name)
            body["join_keys"] = dict(reader.join_keys)
            body["features"] = [
                {"name": n, "type": t}
                for n, t in zip(reader.feature_names, reader.feature_types, strict=True)
            ]
    else:  # a prompt view
        body = {
            "workspace": specs.workspace.name,
            "spec": specs.prompts[resource.target].model_dump(mode="json"),
        }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2, default=str).decode()


# -- over stdio: `contextkit mcp` ---------------------------------------------------------------


def local_server(ctx: Context, settings: McpSettings, key: str | None = None) -> ContextkitMcp:
    """The MCP server of a repo opened locally; ``key`` (an API key) limits it to what the key
    may see, verified on every request."""
    mcp: ContextkitMcp

    def gate(_request: Any) -> Gate:
        api_key = ctx.access.authenticate(key) if key is not None else None
        return LocalGate(mcp.context_of, api_key)

    mcp = ContextkitMcp(ctx, settings, gate)
    return mcp


async def run_stdio(mcp: ContextkitMcp) -> None:
    """Serve ``mcp`` over this process's stdin/stdout until the client closes them."""
    from mcp.server.stdio import stdio_server

    mcp.legacy_notifications = True
    changes = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
    async with stdio_server() as (read_stream, write_stream):
        options = mcp.server.create_initialization_options(changes)
        await mcp.server.run(read_stream, write_stream, options)
