"""Errors raised by ``contextkit.prompts``: template errors and LLM-call errors.

Both families carry the same fields as the core's ``ContextKitError`` (``code``, ``http_status``,
``message``, ``hint``, ``details``), so the core can turn them into its HTTP error body without
knowing each class::

    try:
        text = PromptTemplate(source, name="support").render(context)
    except PromptError as err:
        body = {"error": {"code": err.code, "message": err.message, "details": err.details}}
        status = err.http_status

This module imports nothing outside the standard library (``prompts`` is a leaf layer).
"""

from __future__ import annotations

from typing import Any


class _LeafError(Exception):
    """Shared shape of every error this package raises on purpose."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    @property
    def details(self) -> dict[str, Any]:
        """Machine-readable context for the error body (always JSON-serialisable)."""
        return {"hint": self.hint} if self.hint else {}

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


# -- templates ---------------------------------------------------------------------------------


class PromptError(_LeafError):
    """A prompt template could not be compiled or rendered.

    ``template`` is the template's name, ``line`` the 1-based template line (None when unknown).
    """

    code = "prompt_error"
    http_status = 400

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        line: int | None = None,
        template: str | None = None,
    ) -> None:
        self.line = line
        self.template = template
        where = _where(template, line)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.reason = message  # the message without the "template 'x', line n" prefix

    @property
    def details(self) -> dict[str, Any]:
        return {**super().details, "template": self.template, "line": self.line}


class PromptSyntaxError(PromptError):
    """The template source is not valid Jinja (or uses an unknown filter/test)."""

    code = "prompt_syntax_error"


class MissingValueError(PromptError):
    """The template reads a value the render context does not have.

    ``variable`` is the dotted path that is missing, e.g. ``features.user_stats.amount_7d``.
    """

    code = "prompt_missing_value"

    def __init__(
        self,
        message: str,
        *,
        variable: str,
        hint: str | None = None,
        line: int | None = None,
        template: str | None = None,
    ) -> None:
        self.variable = variable
        super().__init__(message, hint=hint, line=line, template=template)

    @property
    def details(self) -> dict[str, Any]:
        return {**super().details, "variable": self.variable}


class PromptSecurityError(PromptError):
    """The template tried something the sandbox forbids (private attributes, huge ranges, ...)."""

    code = "prompt_security_error"


class PromptRenderError(PromptError):
    """Any other failure while rendering: a filter given a bad value, a type error, ..."""

    code = "prompt_render_error"


class PromptLimitError(PromptError):
    """A render went past one of its :class:`~contextkit.prompts.render.RenderLimits`: it ran
    longer than ``timeout_s`` or built more than ``max_output_chars`` characters of text.

    ``limit`` names the limit (``"timeout_s"`` or ``"max_output_chars"``), ``value`` its value.
    422: the request is well-formed, the template cannot serve it within the server's limits.
    """

    code = "render_limit"
    http_status = 422

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        value: float,
        hint: str | None = None,
        line: int | None = None,
        template: str | None = None,
    ) -> None:
        self.limit = limit
        self.value = value
        super().__init__(message, hint=hint, line=line, template=template)

    @property
    def details(self) -> dict[str, Any]:
        return {**super().details, "limit": self.limit, "value": self.value}


def _where(template: str | None, line: int | None) -> str:
    parts = []
    if template:
        parts.append(f"template {template!r}")
    if line:
        parts.append(f"line {line}")
    return ", ".join(parts)


# -- LLM calls ---------------------------------------------------------------------------------


class LLMError(_LeafError):
    """An LLM completion failed. ``http_status`` is what the server should answer with.

    ``provider_status`` is the upstream HTTP status when there was one; ``attempts`` counts the
    calls made (retries included).
    """

    code = "llm_error"
    http_status = 502

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        hint: str | None = None,
        provider_status: int | None = None,
        attempts: int = 1,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.model = model
        self.provider_status = provider_status
        self.attempts = attempts
        if http_status is not None:
            self.http_status = http_status

    @property
    def details(self) -> dict[str, Any]:
        return {
            **super().details,
            "model": self.model,
            "provider_status": self.provider_status,
            "attempts": self.attempts,
        }


class LLMTimeoutError(LLMError):
    """The provider did not answer within the timeout (after the bounded retries)."""

    code = "llm_timeout"
    http_status = 504


class LLMProviderError(LLMError):
    """The provider failed: a 5xx answer, a dropped connection, an unparseable response."""

    code = "llm_provider_error"
    http_status = 502


class LLMNotConfiguredError(LLMError):
    """The server's LLM setup cannot work: no API key, a key the provider rejects, a model or
    provider litellm does not know. A configuration error, never retried (503: the server is not
    ready to complete; a request cannot fix it). ``setting`` names what to set or fix: an
    environment variable (``OPENAI_API_KEY``), ``model`` or ``llm.api_base``."""

    code = "llm_not_configured"
    http_status = 503

    def __init__(self, message: str, *, setting: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.setting = setting

    @property
    def details(self) -> dict[str, Any]:
        return {**super().details, "setting": self.setting}


class LLMAuthError(LLMNotConfiguredError):
    """The API key is missing, or the provider rejected it (401/403); ``setting`` and the hint
    name the API key variable."""


class LLMParamError(_LeafError):
    """A completion parameter that is not on the allow list, or has the wrong type (400).
    ``param`` is its name, ``allowed`` the parameters that may be set."""

    code = "invalid_request"
    http_status = 400

    def __init__(
        self, message: str, *, param: str, field: str, allowed: list[str], hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.param = param
        self.field = field
        self.allowed = allowed

    @property
    def details(self) -> dict[str, Any]:
        return {**super().details, "field": self.field, "allowed": self.allowed}


class LLMRateLimitError(LLMError):
    """The provider kept answering 429 after the bounded retries."""

    code = "llm_rate_limited"
    http_status = 503


class LLMBadRequestError(LLMError):
    """The provider refused the request itself (unknown model, context window exceeded, bad
    parameter); retrying would not help."""

    code = "llm_bad_request"
    http_status = 502
