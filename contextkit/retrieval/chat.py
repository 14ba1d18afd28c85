"""OpenAI-compatible chat over a context service: a conversation in, an answer with context out.

``POST /v1/chat/completions`` runs this module, and so can a notebook::

    from contextkit.retrieval.chat import chat
    reply = chat(ctx, [{"role": "user", "content": "Can I still return my boots?"}],
                 service="support_assistant", entities={"user_id": 7})
    reply.text                      # the model's answer
    reply.messages                  # what the model was sent: the prompt around the conversation
    reply.context.documents         # what was retrieved (a ContextResult, as from get_context)

One chat request, step by step:

1. :func:`parse_chat_request` reads an OpenAI chat body, its ``contextkit`` extension object and
   the ``X-Contextkit-*`` headers: the service (``model="contextkit/<service>[/<prompt>]"``), the
   entities and request context, the LLM and its sampling parameters. Tools, ``n > 1``, logprobs
   and audio are refused (400), never silently dropped.
2. The service's features and documents are retrieved with the **last user message** as the
   query, and its prompt view rendered within its token budget
   (:mod:`contextkit.retrieval.assemble`).
3. :func:`merge_conversation` puts the rendered prompt around the conversation.
4. The LLM is called through litellm (``assemble.complete_async`` / ``stream_async``); the answer
   is returned as OpenAI's ``chat.completion`` object, or as ``chat.completion.chunk`` objects.

Errors are contextkit errors; :func:`openai_error` gives their wire body with OpenAI's ``type``
and ``param`` added to contextkit's ``code``, ``message`` and ``details``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contextkit.errors import (
    ChatRequestError,
    ContextKitError,
    InvalidChatBody,
    NotFoundError,
)
from contextkit.prompts.llm import GENERATION_PARAM_TYPES, LLMParamError, check_generation_params

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime
    from contextkit.retrieval.assemble import ContextPlan, ContextRequest, ContextResult

MODEL_PREFIX = "contextkit/"
OWNER = "contextkit"

# The `contextkit` object of a request body (``extra_body={"contextkit": {...}}`` in the OpenAI
# SDK), and the headers that may carry the same fields (a body field wins over its header).
EXTENSION_FIELDS = (
    "service",
    "prompt",
    "workspace",
    "entities",
    "request_context",
    "top_k",
    "filter",
    "searches",
    "llm_model",
)
HEADERS = {
    "service": "X-Contextkit-Service",
    "prompt": "X-Contextkit-Prompt",
    "workspace": "X-Contextkit-Workspace",
    "entities": "X-Contextkit-Entities",
    "request_context": "X-Contextkit-Request-Context",
    "llm_model": "X-Contextkit-LLM-Model",
}
_JSON_HEADERS = ("entities", "request_context")

# OpenAI request parameters passed to the LLM as they are; they override the prompt's `params`.
# The one allow list of generation parameters (prompts.llm), shared with /v1/context and the
# prompt views' params=: name -> the JSON type it takes.
SAMPLING_PARAMS = GENERATION_PARAM_TYPES
# OpenAI parameters this endpoint cannot honour: refused unless null/false/empty (or, for
# `modalities`, ["text"]).
UNSUPPORTED_PARAMS = {
    "tools": "tool calls",
    "tool_choice": "tool calls",
    "parallel_tool_calls": "tool calls",
    "functions": "function calls",
    "function_call": "function calls",
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
    "audio": "audio output",
    "modalities": "audio output",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
}
# OpenAI platform features with no meaning here (storing completions on OpenAI's side).
IGNORED_PARAMS = frozenset({"metadata", "store", "service_tier"})
_OWN_PARAMS = frozenset({"model", "messages", "stream", "stream_options", "n", "contextkit"})

INSTRUCTION_ROLES = ("system", "developer")
CONVERSATION_ROLES = ("user", "assistant")


# -- errors ---------------------------------------------------------------------------------------


def _invalid(param: str, expected: str) -> InvalidChatBody:
    return InvalidChatBody(f"`{param}` must be {expected}", param=param)


_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def openai_error(exc: ContextKitError) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` of an error for OpenAI clients: contextkit's ``{"error": {"code",
    "message", "details"}}`` plus OpenAI's ``type`` and ``param``, which the OpenAI SDKs read
    into ``APIStatusError.type`` / ``.param``."""
    body = exc.to_dict()
    status = exc.http_status
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    param = getattr(exc, "param", None)
    if param is None and isinstance(exc.details, Mapping):
        param = _openai_param(exc.details.get("field"))
    body["error"]["type"] = kind
    body["error"]["param"] = param
    return status, body


def _openai_param(field_name: Any) -> str | None:
    """The request parameter behind a context-request field (``query`` is the last message)."""
    if not isinstance(field_name, str):
        return None
    if field_name == "query":
        return "messages"
    if field_name == "model":
        return "model"
    return f"{OWNER}.{field_name}"


# -- the request ----------------------------------------------------------------------------------


@dataclass
class ChatRequest:
    """A validated chat request. ``model`` is what the client sent (echoed in the response);
    ``service``/``prompt`` are the context service and prompt view to use; ``llm_model``
    overrides the prompt view's LLM; ``params`` are the sampling parameters for the LLM."""

    model: str
    messages: list[dict[str, Any]]
    query: str
    service: str | None = None
    prompt: str | None = None
    workspace: str | None = None
    entities: dict[str, Any] | None = None
    request_context: dict[str, Any] | None = None
    top_k: int | None = None
    filter: dict[str, Any] | None = None
    searches: dict[str, Any] | None = None
    llm_model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False

    def context_options(self) -> dict[str, Any]:
        """Keyword arguments of ``assemble.parse_request`` for this chat's context: what the chat
        request has; the rest keeps parse_request's defaults (render the prompt, no completion)."""
        return {
            "entities": self.entities,
            "query": self.query,
            "request_context": self.request_context,
            "top_k": self.top_k,
            "filter": self.filter,
            "searches": self.searches,
            "model": self.llm_model,
            "params": self.params,
        }


def parse_chat_request(
    body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> ChatRequest:
    """Check an OpenAI chat body (and the ``X-Contextkit-*`` headers) and say what it asks for.

    >>> request = parse_chat_request({
    ...     "model": "contextkit/support_assistant",
    ...     "messages": [{"role": "user", "content": "Where is my parcel?"}],
    ...     "temperature": 0,
    ...     "contextkit": {"entities": {"user_id": 7}},
    ... })
    >>> request.service, request.query, request.entities, request.params
    ('support_assistant', 'Where is my parcel?', {'user_id': 7}, {'temperature': 0})

    Raises :class:`InvalidChatBody` (422) for a value of the wrong type and
    :class:`ChatRequestError` (400) for what this endpoint does not do (tools, ``n > 1``).
    """
    if not isinstance(body, Mapping):
        raise InvalidChatBody("body must be a JSON object", param="body")
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    unknown = sorted(
        set(body) - _OWN_PARAMS - set(SAMPLING_PARAMS) - set(UNSUPPORTED_PARAMS) - IGNORED_PARAMS
    )
    if unknown:
        raise ChatRequestError(
            f"unknown parameter(s): {', '.join(unknown)}",
            param=unknown[0],
            hint="the generation parameters allowed: "
            + ", ".join(sorted(SAMPLING_PARAMS))
            + '; contextkit\'s own fields go in the "contextkit" object '
            '(extra_body={"contextkit": {...}} in the OpenAI SDK)',
            code="unsupported_parameter",
        )
    for name, what in UNSUPPORTED_PARAMS.items():
        value = body.get(name)
        harmless = value in (None, False, [], {}) or (name == "modalities" and value == ["text"])
        if not harmless:
            raise ChatRequestError(
                f"`{name}` is not supported: contextkit's chat endpoint does not do {what}",
                param=name,
                hint=f"leave out {name}",
                code="unsupported_parameter",
            )

    model = body.get("model")
    if model is None:
        raise InvalidChatBody("`model` is required", param="model", problem="field required")
    if not isinstance(model, str):
        raise _invalid("model", "a string")
    stream = _typed(body, "stream", bool, "a boolean") or False
    include_usage = False
    options = _typed(body, "stream_options", dict, "an object")
    if options is not None:
        extra = sorted(set(options) - {"include_usage"})
        if extra:
            raise ChatRequestError(
                f"unknown stream_options: {', '.join(extra)}", param="stream_options"
            )
        include_usage = bool(_typed(options, "include_usage", bool, "a boolean", "stream_options."))
    n = _typed(body, "n", int, "an integer")
    if n is not None and n != 1:
        raise ChatRequestError(
            f"n={n} is not supported: contextkit returns one choice",
            param="n",
            hint="send n=1 or leave it out; make several requests for several answers",
            code="unsupported_parameter",
        )
    params = _sampling_params(body)

    messages = parse_messages(body.get("messages"))
    last = _last_user_index(messages)
    query = _text(messages[last]["content"], f"messages[{last}]")

    extension = _typed(body, OWNER, dict, "an object") or {}
    unknown = sorted(set(extension) - set(EXTENSION_FIELDS))
    if unknown:
        raise ChatRequestError(
            f"unknown field(s) in contextkit: {', '.join(unknown)}",
            param=f"{OWNER}.{unknown[0]}",
            hint="contextkit takes: " + ", ".join(EXTENSION_FIELDS),
        )
    values = {name: _extension_value(extension, lowered, name) for name in EXTENSION_FIELDS}
    service, prompt = _service_and_prompt(model, values["service"], values["prompt"])
    llm_model = values["llm_model"]
    if llm_model is None and not model.startswith(MODEL_PREFIX):
        llm_model = model  # `model="gpt-4o"` with the service named elsewhere: the LLM to use
    return ChatRequest(
        model=model,
        messages=messages,
        query=query,
        service=service,
        prompt=prompt,
        workspace=values["workspace"],
        entities=values["entities"],
        request_context=values["request_context"],
        top_k=values["top_k"],
        filter=values["filter"],
        searches=values["searches"],
        llm_model=llm_model,
        params=params,
        stream=stream,
        include_usage=include_usage and stream,
    )


def parse_messages(raw: Any) -> list[dict[str, Any]]:
    """The conversation, checked: roles system/developer/user/assistant, text content for the
    instructions and the last user message, no tool calls. Each message keeps ``role``,
    ``content`` and ``name``; other fields a client echoes back from a response (``refusal``,
    ``annotations``) are dropped, and tool calls or audio in them are refused."""
    if raw is None:
        raise InvalidChatBody("`messages` is required", param="messages", problem="field required")
    if not isinstance(raw, list):
        raise _invalid("messages", "a list of messages")
    if not raw:
        raise ChatRequestError(
            "`messages` is empty", param="messages", hint="send at least one user message"
        )
    out: list[dict[str, Any]] = []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise _invalid(where, "an object with role and content")
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidChatBody(
                f"`{where}.role` must be a string", param=f"{where}.role", problem="field required"
            )
        if (
            role in ("tool", "function")
            or message.get("tool_calls")
            or message.get("function_call")
        ):
            raise ChatRequestError(
                f"{where}: tool and function calls are not supported",
                param=where,
                hint="send the conversation's text turns only",
                code="unsupported_parameter",
            )
        if message.get("audio"):
            raise ChatRequestError(
                f"{where}: audio is not supported",
                param=f"{where}.audio",
                code="unsupported_parameter",
            )
        if role not in INSTRUCTION_ROLES + CONVERSATION_ROLES:
            raise ChatRequestError(
                f"{where}: unknown role {role!r}",
                param=f"{where}.role",
                hint="roles: " + ", ".join(INSTRUCTION_ROLES + CONVERSATION_ROLES),
            )
        content = message.get("content")
        if content is None:
            raise InvalidChatBody(
                f"`{where}.content` is required", param=f"{where}.content", problem="field required"
            )
        if isinstance(content, list):
            for part_index, part in enumerate(content):
                if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                    raise _invalid(f"{where}.content[{part_index}]", "a content part with a type")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise _invalid(f"{where}.content[{part_index}].text", "a string")
        elif not isinstance(content, str):
            raise _invalid(f"{where}.content", "a string or a list of content parts")
        if role in INSTRUCTION_ROLES:
            _text(content, where)  # instructions are merged into the prompt's: text only
        kept: dict[str, Any] = {"role": role, "content": content}
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise _invalid(f"{where}.name", "a string")
            kept["name"] = name
        out.append(kept)
    _last_user_index(out)
    return out


def _last_user_index(messages: Sequence[Mapping[str, Any]]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "user":
            return index
    raise ChatRequestError(
        "the conversation has no user message",
        param="messages",
        hint="the last user message is the question contextkit retrieves context for",
    )


def _text(content: Any, where: str) -> str:
    """The text of a message's content: a string, or its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        if part.get("type") != "text":
            raise ChatRequestError(
                f"{where}.content[{index}]: only text content is supported here, "
                f"got {part.get('type')!r}",
                param=f"{where}.content",
                hint="send the user's question (and system instructions) as text",
                code="unsupported_parameter",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _typed(data: Mapping[str, Any], name: str, kind: type, expected: str, prefix: str = "") -> Any:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _invalid(prefix + name, expected)
    return value


def _sampling_params(body: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return check_generation_params({k: body[k] for k in SAMPLING_PARAMS if k in body}, where="")
    except LLMParamError as exc:
        raise _invalid(exc.param, SAMPLING_PARAMS[exc.param]) from None


_EXTENSION_TYPES: dict[str, tuple[type, str]] = {
    "service": (str, "a string"),
    "prompt": (str, "a string"),
    "workspace": (str, "a string"),
    "entities": (dict, "an object"),
    "request_context": (dict, "an object"),
    "top_k": (int, "an integer"),
    "filter": (dict, "an object"),
    "searches": (dict, "an object"),
    "llm_model": (str, "a string"),
}


def _extension_value(extension: Mapping[str, Any], headers: Mapping[str, str], name: str) -> Any:
    kind, expected = _EXTENSION_TYPES[name]
    if extension.get(name) is not None:
        return _typed(extension, name, kind, expected, f"{OWNER}.")
    header = HEADERS.get(name)
    raw = headers.get(header.lower()) if header else None
    if raw is None or not raw.strip():
        return None
    if name not in _JSON_HEADERS:
        return raw.strip()
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ChatRequestError(
            f"header {header} must be a JSON object",
            param=header,
            hint=f'e.g. {header}: {{"user_id": 7}}' if name == "entities" else None,
        )
    return value


def _service_and_prompt(
    model: str, service: str | None, prompt: str | None
) -> tuple[str | None, str | None]:
    """The service and prompt named by ``contextkit/<service>[/<prompt>]`` and/or explicitly."""
    if not model.startswith(MODEL_PREFIX):
        return service, prompt
    parts = model[len(MODEL_PREFIX) :].split("/")
    if not parts[0] or len(parts) > 2 or (len(parts) == 2 and not parts[1]):
        raise ChatRequestError(
            f"model {model!r} is not contextkit/<service> or contextkit/<service>/<prompt>",
            param="model",
            hint="GET /v1/models lists the services",
        )
    named_prompt = parts[1] if len(parts) == 2 else None
    for what, named, given in (("service", parts[0], service), ("prompt", named_prompt, prompt)):
        if given is not None and named is not None and given != named:
            raise ChatRequestError(
                f"model {model!r} names {what} {named!r} but the request also names {given!r}",
                param="model",
                hint=f"name the {what} once",
            )
    return parts[0], named_prompt if named_prompt is not None else prompt


# -- merging the prompt and the conversation ------------------------------------------------------


def merge_conversation(
    prompt: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The messages sent to the LLM: the rendered prompt around the client's conversation.

    ``prompt`` is a rendered prompt (``ContextResult.prompt``: ``format``, ``messages`` or
    ``text``), rendered with the last user message as its ``query``; ``messages`` is the
    conversation as the client sent it.

    - ``format="messages"``: the prompt's turns, with the earlier conversation (every turn before
      the last user message) inserted before the prompt's final user turn, which stands for the
      last user message (write it with ``{{ query }}``). A prompt without a user turn is followed
      by the conversation, the last user message included.
    - ``format="text"``: the rendered text as a system message, then the conversation.
    - The client's ``system``/``developer`` messages are appended, each after a blank line, to the
      prompt's first system (or developer) turn, so the provider sees one set of instructions,
      the prompt's first; without such a turn they become the first message.
    - Turns after the last user message (an assistant prefill) stay last.

    >>> prompt = {"format": "messages", "messages": [
    ...     {"role": "system", "content": "Facts: tier=pro."},
    ...     {"role": "user", "content": "Is it waterproof?"}]}
    >>> merge_conversation(prompt, [
    ...     {"role": "system", "content": "Answer in French."},
    ...     {"role": "user", "content": "I bought boots."},
    ...     {"role": "assistant", "content": "Which ones?"},
    ...     {"role": "user", "content": "Is it waterproof?"}])  # doctest: +NORMALIZE_WHITESPACE
    [{'role': 'system', 'content': 'Facts: tier=pro.\\n\\nAnswer in French.'},
     {'role': 'user', 'content': 'I bought boots.'},
     {'role': 'assistant', 'content': 'Which ones?'},
     {'role': 'user', 'content': 'Is it waterproof?'}]
    """
    last = _last_user_index(messages)
    instructions = [
        _text(m["content"], "messages") for m in messages if m["role"] in INSTRUCTION_ROLES
    ]
    instruction_role = next((m["role"] for m in messages if m["role"] in INSTRUCTION_ROLES), None)
    before = [dict(m) for m in messages[:last] if m["role"] not in INSTRUCTION_ROLES]
    after = [dict(m) for m in messages[last + 1 :] if m["role"] not in INSTRUCTION_ROLES]

    if prompt.get("format") == "messages":
        rendered = [dict(m) for m in prompt.get("messages") or []]
        final = next(
            (i for i in range(len(rendered) - 1, -1, -1) if rendered[i]["role"] == "user"), None
        )
        if final is None:
            merged = rendered + before + [dict(messages[last])]
        else:
            merged = rendered[:final] + before + rendered[final:]
    else:
        text = prompt.get("text") or ""
        merged = [{"role": "system", "content": text}] if text.strip() else []
        merged += before + [dict(messages[last])]
    merged += after

    if instructions:
        joined = "\n\n".join(instructions)
        # Every system/developer turn left in `merged` is the prompt's own.
        home = next((i for i, m in enumerate(merged) if m["role"] in INSTRUCTION_ROLES), None)
        if home is None:
            merged.insert(0, {"role": instruction_role, "content": joined})
        else:
            existing = merged[home]["content"]
            merged[home]["content"] = f"{existing}\n\n{joined}" if existing else joined
    return merged


# -- running a chat -------------------------------------------------------------------------------


@dataclass
class PreparedChat:
    """A chat whose context is retrieved and whose messages are merged, ready for the LLM."""

    request: ChatRequest
    plan: ContextPlan
    context_request: ContextRequest
    context: ContextResult
    messages: list[dict[str, Any]]
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def llm_model(self) -> str | None:
        prompt = self.plan.prompt
        return self.context_request.model or (prompt.model if prompt else None)

    def extension(self) -> dict[str, Any]:
        """The response's ``contextkit`` object: what was retrieved and rendered for this chat."""
        prompt = self.context.prompt or {}
        return {
            "workspace": self.context.workspace,
            "service": self.context.service,
            "prompt": prompt.get("name"),
            "llm_model": self.llm_model,
            "entities": self.context.entities,
            "documents": {
                name: [hit["id"] for hit in hits] for name, hits in self.context.documents.items()
            },
            "dropped": prompt.get("dropped", []),
            "truncated": prompt.get("truncated", False),
            "prompt_tokens": prompt.get("tokens"),
            "timings_ms": self.context.metadata.get("timings_ms", {}),
        }


async def prepare_chat(runtime: Runtime, request: ChatRequest) -> PreparedChat:
    """Retrieve the context for the last user message, render the prompt view and merge it with
    the conversation. Raises NotFoundError (unknown service or prompt) and BadRequestError."""
    from contextkit.retrieval.assemble import assemble_async, context_plan, parse_request

    if request.service is None:
        raise NotFoundError(
            f"model {request.model!r} is not a contextkit service",
            hint="use model 'contextkit/<service>', or name the service in "
            f'"contextkit": {{"service": ...}} or the {HEADERS["service"]} header; '
            + _models_hint(runtime),
            details={"field": "model"},
        )
    plan = context_plan(runtime, request.service, request.prompt)
    if plan.prompt is None:
        raise ChatRequestError(
            f"service {plan.service!r} has no prompt view, so it cannot chat",
            param="model",
            hint="add prompts=[...] to the ContextService; " + _models_hint(runtime),
        )
    parsed = parse_request(plan, **request.context_options())
    result = await assemble_async(runtime, plan, parsed)
    messages = merge_conversation(result.prompt or {}, request.messages)
    return PreparedChat(request, plan, parsed, result, messages)


def _models_hint(runtime: Runtime) -> str:
    names = [entry["id"] for entry in chat_models(runtime)["data"]]
    return "chat models: " + (", ".join(names) or "none (no service has a prompt view)")


async def complete_chat(runtime: Runtime, request: ChatRequest) -> PreparedChat:
    """One chat completion: the answer is in ``.context.completion``, and
    :func:`completion_object` makes OpenAI's ``chat.completion`` object of it."""
    from contextkit.retrieval.assemble import complete_async

    began = time.perf_counter()
    chat = await prepare_chat(runtime, request)
    await complete_async(
        runtime, chat.plan, chat.context_request, chat.context, messages=chat.messages
    )
    chat.context.metadata["timings_ms"]["total"] = round((time.perf_counter() - began) * 1000, 3)
    return chat


def completion_object(chat: PreparedChat) -> dict[str, Any]:
    answer = chat.context.completion or {}
    usage = answer.get("usage") or {}
    return {
        "id": chat.id,
        "object": "chat.completion",
        "created": chat.created,
        "model": chat.request.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": answer.get("text", ""),
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": answer.get("finish_reason") or "stop",
            }
        ],
        "usage": {
            key: int(usage.get(key, 0))
            for key in ("prompt_tokens", "completion_tokens", "total_tokens")
        },
        "system_fingerprint": None,
        OWNER: chat.extension(),
    }


class ChatStream:
    """A streamed chat answer, started: the context is retrieved and the LLM's first delta has
    arrived (so a provider failure is raised by :func:`start_chat_stream`, before any byte is
    sent). :meth:`chunks` yields OpenAI's ``chat.completion.chunk`` objects; a failure later on
    raises a ContextKitError from it."""

    def __init__(self, chat: PreparedChat, first: str | None, rest: AsyncIterator[str]) -> None:
        self.chat = chat
        self._first = first
        self._rest = rest

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk = {
            "id": self.chat.id,
            "object": "chat.completion.chunk",
            "created": self.chat.created,
            "model": self.chat.request.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.chat.request.include_usage:
            chunk["usage"] = None
        return chunk

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        first = self._chunk({"role": "assistant", "content": ""})
        first[OWNER] = self.chat.extension()
        yield first
        parts: list[str] = []
        delta = self._first
        while delta is not None:
            parts.append(delta)
            yield self._chunk({"content": delta})
            delta = await anext(self._rest, None)
        # stream_complete yields text only: the provider's finish reason is not known here.
        yield self._chunk({}, "stop")
        if self.chat.request.include_usage:
            yield {**self._chunk({}), "choices": [], "usage": self._usage("".join(parts))}

    def _usage(self, answer: str) -> dict[str, int]:
        """Counted by contextkit with the model's tokenizer (the stream carries no usage)."""
        from contextkit.prompts import get_token_counter

        counter = get_token_counter(self.chat.llm_model)
        texts = [
            {**m, "content": _text(m["content"], "messages")}
            if isinstance(m["content"], list) and all(p.get("type") == "text" for p in m["content"])
            else m
            for m in self.chat.messages
        ]
        prompt_tokens, completion_tokens = counter.count(texts), counter.count(answer)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }


async def start_chat_stream(runtime: Runtime, request: ChatRequest) -> ChatStream:
    """Retrieve, render, merge, and start streaming the answer (awaiting its first delta)."""
    from contextkit.retrieval.assemble import stream_async

    chat = await prepare_chat(runtime, request)
    deltas = aiter(
        stream_async(runtime, chat.plan, chat.context_request, chat.context, messages=chat.messages)
    )
    first = await anext(deltas, None)
    return ChatStream(chat, first, deltas)


# -- models ---------------------------------------------------------------------------------------


def chat_models(runtime: Runtime) -> dict[str, Any]:
    """OpenAI's model list for a workspace: ``contextkit/<service>`` for every service with a
    prompt view (its first prompt), and ``contextkit/<service>/<prompt>`` for its other prompts.
    ``created`` is when the workspace was created."""
    specs = runtime.specs()
    created = int(specs.workspace.created_at)
    data = []
    for service in specs.services.values():
        if not service.prompts:
            continue
        ids = [f"{MODEL_PREFIX}{service.name}"]
        ids += [f"{MODEL_PREFIX}{service.name}/{name}" for name in service.prompts[1:]]
        for model_id in ids:
            data.append({"id": model_id, "object": "model", "created": created, "owned_by": OWNER})
    return {"object": "list", "data": data}


# -- the SDK --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatReply:
    """What :func:`chat` returns: the answer, the messages the LLM got and the context used."""

    text: str
    finish_reason: str | None
    usage: dict[str, int]
    messages: list[dict[str, Any]]
    context: ContextResult
    response: dict[str, Any]  # the OpenAI chat.completion object the HTTP endpoint returns


def chat(
    runtime: Runtime,
    messages: Sequence[Mapping[str, Any]],
    *,
    service: str,
    entities: Mapping[str, Any] | None = None,
    prompt: str | None = None,
    request_context: Mapping[str, Any] | None = None,
    llm_model: str | None = None,
    top_k: int | None = None,
    filter: Mapping[str, Any] | None = None,
    searches: Mapping[str, Mapping[str, Any]] | None = None,
    **params: Any,
) -> ChatReply:
    """What ``POST /v1/chat/completions`` does, from Python: answer the conversation with the
    service's context. ``params`` are OpenAI sampling parameters (``temperature=0``,
    ``max_tokens=200``); they override the prompt view's::

        reply = chat(ctx, [{"role": "user", "content": "Where is my parcel?"}],
                     service="support_assistant", entities={"user_id": 7}, temperature=0)
        reply.text, reply.context.documents["products"]
    """
    from contextkit.retrieval.assemble import run_coroutine

    extension = {  # the service and prompt are in the model name
        "entities": dict(entities) if entities is not None else None,
        "request_context": dict(request_context) if request_context is not None else None,
        "llm_model": llm_model,
        "top_k": top_k,
        "filter": dict(filter) if filter is not None else None,
        "searches": dict(searches) if searches is not None else None,
    }
    body = {
        **params,
        "model": MODEL_PREFIX + service + (f"/{prompt}" if prompt else ""),
        "messages": [dict(m) for m in messages],
        OWNER: {k: v for k, v in extension.items() if v is not None},
    }
    request = parse_chat_request(body)
    prepared = run_coroutine(complete_chat(runtime, request))
    response = completion_object(prepared)
    answer = prepared.context.completion or {}
    return ChatReply(
        text=answer.get("text", ""),
        finish_reason=answer.get("finish_reason"),
        usage=response["usage"],
        messages=prepared.messages,
        context=prepared.context,
        response=response,
    )
