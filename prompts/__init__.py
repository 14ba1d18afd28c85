"""Sandboxed prompt rendering, token budgets and LLM calls (prompt views; see their issue).

A leaf layer: it imports only the standard library, Jinja2 and (lazily, optionally) litellm;
the core composes it into ``PromptView`` and the ``/v1/context`` endpoint.

>>> from contextkit.prompts import ChatTemplate, PromptTemplate, fit_to_budget
>>> tpl = PromptTemplate("{% for d in documents %}[{{ d.id }}] {{ d.text }}\\n{% endfor %}"
...                      "Q: {{ query }}", name="qa")
>>> docs = [{"id": "a", "text": "Refunds take 5 days.", "score": 0.9},
...         {"id": "b", "text": "Shipping is free over 50 EUR.", "score": 0.2}]
>>> fit = fit_to_budget(lambda kept: tpl.render({"documents": kept, "query": "Refund?"}),
...                     docs, max_tokens=20)
>>> print(fit.rendered)
[a] Refunds take 5 days.
Q: Refund?
>>> fit.dropped
['b']

Modules: ``render`` (templates, filters, chat messages), ``tokens`` (counting, budgets),
``llm`` (``complete``/``stream_complete`` via litellm), ``errors`` (every error raised here).

For the core (``PromptView``, ``POST /v1/context``):

- Plan/apply: build ``PromptTemplate(source, name=view_name)`` or ``ChatTemplate(pairs, name=...)``;
  construction compiles and raises :class:`PromptSyntaxError` with ``line``. ``variables()``
  lists ``TemplateVariable(name, path, line, template)``, e.g. ``path=("features",
  "user_order_stats", "amount_sum_7d")``, to report "unknown feature X at line N" before apply.
- Limits: every render is bounded by ``RenderLimits(timeout_s=2, max_output_chars=1_000_000)``
  (pass ``limits=``); past one it raises :class:`PromptLimitError` (``render_limit``, 422). The
  render checks its own clock, so it may run in a worker thread: nothing has to kill it.
- Request: render with one context dict. The names are the core's choice; ``variables()``
  validates whatever it picks. Suggested: ``features`` ({view: {feature: value}}),
  ``documents`` ([{"id", "text", "score", "metadata"}], best first), ``query``, ``request``
  (request context), ``entities`` (join keys). Pass ``model=`` so ``truncate_tokens`` and the
  budget count with the model's tokenizer, and fit the documents with
  ``fit_to_budget(lambda docs: tpl.render({**ctx, "documents": docs}, model=m), docs, n, m)``;
  ``BudgetFit.dropped`` / ``.truncated`` / ``.tokens`` belong in the response's metadata.
- Completion: ``await complete(messages, model, params=..., timeout=..., retries=...)``;
  ``params`` must pass ``check_generation_params`` (the allow list ``GENERATION_PARAMS``), and
  ``check_model`` says at plan time whether litellm knows a model name.
- Errors: every error here has ``code``, ``http_status``, ``message``, ``hint`` and a
  JSON-safe ``details`` dict, the fields of the core's ``ContextKitError``, so the server can
  answer ``{"error": {"code", "message", "details"}}`` with ``http_status`` without knowing
  each class. Prompt errors are 400; LLM errors 502/503/504.
- Start-up: litellm takes 5-20 s to import. ``get_token_counter(model)`` at server start pays
  that once. Set ``LITELLM_LOCAL_MODEL_COST_MAP=True`` before anything imports litellm (see
  ``_litellm``); a litellm import elsewhere without it fetches the cost map from GitHub.
"""

from .errors import (
    LLMAuthError,
    LLMBadRequestError,
    LLMError,
    LLMNotConfiguredError,
    LLMParamError,
    LLMProviderError,
    LLMRateLimitError,
    LLMTimeoutError,
    MissingValueError,
    PromptError,
    PromptLimitError,
    PromptRenderError,
    PromptSecurityError,
    PromptSyntaxError,
)
from .llm import (
    GENERATION_PARAMS,
    CompletionResult,
    check_generation_params,
    check_model,
    complete,
    stream_complete,
)
from .render import (
    CHAT_ROLES,
    ChatTemplate,
    PromptTemplate,
    RenderLimits,
    TemplateVariable,
    render,
    render_messages,
)
from .tokens import BudgetFit, TokenCounter, count_tokens, fit_to_budget, get_token_counter

__all__ = [
    "CHAT_ROLES",
    "GENERATION_PARAMS",
    "BudgetFit",
    "ChatTemplate",
    "CompletionResult",
    "LLMAuthError",
    "LLMBadRequestError",
    "LLMError",
    "LLMNotConfiguredError",
    "LLMParamError",
    "LLMProviderError",
    "LLMRateLimitError",
    "LLMTimeoutError",
    "MissingValueError",
    "PromptError",
    "PromptLimitError",
    "PromptRenderError",
    "PromptSecurityError",
    "PromptSyntaxError",
    "PromptTemplate",
    "RenderLimits",
    "TemplateVariable",
    "TokenCounter",
    "check_generation_params",
    "check_model",
    "complete",
    "count_tokens",
    "fit_to_budget",
    "get_token_counter",
    "render",
    "render_messages",
    "stream_complete",
]
