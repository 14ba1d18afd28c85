"""MCP results of contextkit's answers: structured content (the HTTP API's JSON) plus a text
block an agent can read, tool errors carrying the HTTP error's code and hint, and prompt views'
rendered messages as an MCP prompt result. Used by :mod:`contextkit.server.mcp`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mcp_types as types
import orjson

from contextkit.errors import BadRequestError, ContextKitError

if TYPE_CHECKING:
    from contextkit.server.mcp_catalog import PromptDef

# Of one document in the text block (the structured content has it all, and the rendered prompt
# the parts its template uses): the block stays readable and the response small.
MAX_TEXT_CHARS = 300


def _json(value: Any) -> Any:
    """``value`` as plain JSON types (timestamps and other objects as strings)."""
    return orjson.loads(orjson.dumps(value, default=str))


def _result(structured: dict[str, Any], text: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=_json(structured),
    )


def tool_error(exc: ContextKitError) -> types.CallToolResult:
    """A tool error: ``code: message`` and the hint as text; the HTTP API's error body (plus its
    status) as structured content."""
    body = exc.to_dict()
    body["error"]["status"] = exc.http_status
    text = f"{exc.code}: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else "")
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=_json(body),
        is_error=True,
    )


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "null" if value is None else str(value)


def _clip(text: str) -> str:
    text = " ".join(text[: MAX_TEXT_CHARS + 100].split())
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def _hits_text(hits: list[dict[str, Any]]) -> list[str]:
    lines = []
    for rank, hit in enumerate(hits, 1):
        about = ", ".join(f"{k}={_value(v)}" for k, v in {**hit["key"], **hit["metadata"]}.items())
        lines.append(f"{rank}. [{hit['id']}] score {hit['score']:.4g}; {about}")
        lines.append(f"   {_clip(hit['text'])}")
    return lines or ["(no documents)"]


def context_result(result: Any) -> types.CallToolResult:
    """``get_context``: features, documents and the rendered prompt."""
    body = result.to_response()
    body.pop("completion", None)  # tools never call an LLM: the agent is the LLM
    lines = [f"Context of {body['service']} ({body['workspace']})"]
    if body["entities"]:
        lines[0] += " for " + ", ".join(f"{k}={_value(v)}" for k, v in body["entities"].items())
    for view, block in body["features"].items():
        lines.append("")
        lines.append(f"## Features: {view} ({block['status']}, as of {block['event_timestamp']})")
        lines += [f"- {k}: {_value(v)}" for k, v in block["values"].items()]
    warming = (body.get("metadata") or {}).get("warming") or {}
    for search, hits in body["documents"].items():
        lines.append("")
        lines.append(f"## Documents: {search}")
        if search in warming:  # its view is not built yet: say so, not just "no documents"
            lines.append(f"(warming: {warming[search]['message']})")
        lines += _hits_text(hits)
    prompt = body.get("prompt")
    if prompt:
        lines.append("")
        lines.append(f"## Prompt: {prompt['name']} ({prompt['tokens']} tokens)")
        if prompt.get("messages"):
            for message in prompt["messages"]:
                lines.append(f"[{message['role']}]")
                lines.append(message["content"])
        elif prompt.get("text") is not None:
            lines.append(prompt["text"])
    return _result(body, "\n".join(lines))


def features_result(online: Any) -> types.CallToolResult:
    """``get_features``: one row per entity, the features' types and each row's statuses."""
    columns = online.to_dict()
    n = len(next(iter(online.join_keys.values()), []))
    rows = [{name: values[i] for name, values in columns.items()} for i in range(n)]
    statuses = [
        {name: online.statuses[j][i] for j, name in enumerate(online.names)} for i in range(n)
    ]
    body = {
        "workspace": online.workspace,
        "service": online.service,
        "rows": rows,
        "types": {**online.join_key_types, **dict(zip(online.names, online.types, strict=True))},
        "statuses": statuses,
    }
    lines = [
        f"Features of {online.service} ({online.workspace}), {n} entit{'y' if n == 1 else 'ies'}"
    ]
    for row, status in zip(rows, statuses, strict=True):
        keys = ", ".join(f"{k}={_value(row[k])}" for k in online.join_keys)
        lines.append("")
        lines.append(f"## {keys}")
        lines += [
            f"- {name}: {_value(row[name])}" + (" (missing)" if status[name] != "PRESENT" else "")
            for name in online.names
        ]
    return _result(body, "\n".join(lines))


def search_result(documents: Any) -> types.CallToolResult:
    """``search``: the hits, best first."""
    body = documents.to_response()
    lines = [f"{len(body['results'])} result(s) from {body['view']} ({body['mode']} search)"]
    lines += _hits_text(body["results"])
    return _result(body, "\n".join(lines))


def ingest_result(result: Any) -> types.CallToolResult:
    body = result.to_response()
    text = (
        f"{'validated' if body['dry_run'] else 'ingested'} {body['accepted']} record(s) into "
        f"{body['source']} ({body['workspace']}); {len(body['duplicates'])} duplicate(s), "
        f"{body['rejected']} rejected"
    )
    return _result(body, text)


def prompt_messages(prompt: PromptDef, result: Any) -> types.GetPromptResult:
    """A prompt view's rendered messages. MCP prompts have user and assistant turns only: a
    system (or developer) turn becomes a user turn, first, as the instructions it is."""
    rendered = result.prompt or {}
    turns = rendered.get("messages") or [{"role": "user", "content": rendered.get("text") or ""}]
    messages = [
        types.PromptMessage(
            role="assistant" if turn["role"] == "assistant" else "user",
            content=types.TextContent(type="text", text=turn["content"]),
        )
        for turn in turns
    ]
    meta = {
        "contextkit": _json(
            {
                "workspace": result.workspace,
                "service": result.service,
                "roles": [turn["role"] for turn in turns],
                "tokens": rendered.get("tokens"),
                "dropped": rendered.get("dropped"),
            }
        )
    }
    return types.GetPromptResult(
        description=prompt.prompt.description, messages=messages, _meta=meta
    )


def text_to_value(name: str, dtype: str | None, text: str) -> Any:
    """An MCP prompt argument (always text) as a value of ``dtype``; a 400 naming it if not."""
    if not isinstance(text, str):
        return text
    value = text.strip()
    try:
        if dtype == "int64":
            return int(value)
        if dtype == "float64":
            return float(value)
        if dtype == "bool":
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
    except ValueError:
        raise BadRequestError(
            f"argument {name!r} must be {dtype}, got {text!r}",
            details={"field": name, "expected": dtype},
        ) from None
    return text
