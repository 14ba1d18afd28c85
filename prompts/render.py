"""Sandboxed Jinja rendering for prompt templates: text prompts and chat messages.

>>> from contextkit.prompts.render import ChatTemplate, PromptTemplate
>>> tpl = PromptTemplate(
...     "Customer {{ user.name }} spent {{ features.orders.amount_7d }} this week.\\n"
...     "{{ documents | map(attribute='text') | bullet }}",
...     name="support",
... )
>>> docs = [{"text": "Refunds take 5 days."}, {"text": "Ask for the id."}]
>>> print(tpl.render({"user": {"name": "Ada"}, "features": {"orders": {"amount_7d": 42}},
...                   "documents": docs}))
Customer Ada spent 42 this week.
- Refunds take 5 days.
- Ask for the id.
>>> [(v.dotted, v.line) for v in tpl.variables()]
[('features.orders.amount_7d', 1), ('user.name', 1), ('documents', 2)]
>>> chat = ChatTemplate([("system", "You help {{ user.name }}."), ("user", "{{ query }}")])
>>> chat.render_messages({"user": {"name": "Ada"}, "query": "Where is my order?"})
[{'role': 'system', 'content': 'You help Ada.'}, {'role': 'user', 'content': 'Where is my order?'}]

The environment
    Jinja2's ``ImmutableSandboxedEnvironment``: templates can read the values they are given but
    cannot reach private attributes (``_x``, ``__class__``, ``__globals__``...), call mutating
    methods (``list.append``), build ranges over 100,000 items or multiply strings/lists past
    1,000,000 items; any attempt raises :class:`PromptSecurityError`. ``{% include %}``,
    ``{% extends %}`` and ``{% import %}`` are rejected when the template is compiled (a prompt is
    one self-contained template). Autoescape is off (prompts are not HTML); ``trim_blocks`` and
    ``lstrip_blocks`` are on, so ``{% for %}``/``{% if %}`` lines leave no blank lines behind.
    The sandbox stops escapes; :class:`RenderLimits` bound the time and the text (below).

Limits
    Every render runs within a :class:`RenderLimits`: ``timeout_s`` (2 s) of wall-clock time and
    ``max_output_chars`` (1,000,000) characters of rendered text, which also bounds every string
    the template builds on the way (``~``, ``+``, ``*``, ``%``, filters, method calls). Past
    either, the render stops with :class:`PromptLimitError` (code ``render_limit``) naming the
    limit and the template line. A thread cannot be stopped from outside, so the render checks
    its own clock: at every loop iteration, every call (macros included) and every output chunk.
    A width or count larger than ``max_output_chars`` (``center(10**9)``, ``"%*s"``) is refused
    before the string is built.

Missing values
    Undefined values are strict: printing, iterating or testing a value the context does not have
    raises :class:`MissingValueError` naming the dotted path (``features.orders.amount_7d``) and
    the line. Lookups chain, so a fallback works at any depth:
    ``{{ features.orders.amount_7d | default("n/a") }}``, ``{% if user.vip is defined %}``.
    ``None`` is a value, printed as ``None``; ``default("n/a", true)`` also replaces it.

Filters (in addition to Jinja's built-ins)
    - ``json``: compact JSON, non-ASCII kept; datetimes as ISO 8601. ``json(indent=2)`` indents.
    - ``truncate_tokens(n, end="…")``: at most ``n`` tokens, counted for the model passed to
      ``render(..., model=...)`` (the offline approximation when none; see ``tokens``).
    - ``bullet``: a list as ``- item`` lines (a dict as ``- key: value``, a string as one item;
      ``bullet("*")`` picks the marker). Multi-line items are indented under their marker.
    - ``datetime(fmt="%Y-%m-%d %H:%M:%S")`` / ``date(fmt="%Y-%m-%d")``: format a datetime, a
      date, an ISO 8601 string or epoch seconds (UTC). ``None`` formats as ``""``.

Chat messages
    A chat prompt is a list of ``(role, template)`` pairs (or ``{"role", "content"}`` dicts); each
    content is its own template rendered with the same context. Roles: system, developer, user,
    assistant. Rendered contents are stripped of surrounding whitespace, and a message that
    renders empty is left out, so ``{% if history %}...{% endif %}`` makes a message optional.

Templates are compiled once per ``(source, name)`` and cached (256 entries, LRU).
"""

from __future__ import annotations

import contextvars
import functools
import json as _json
import time
import types
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from datetime import UTC
from datetime import date as _date
from datetime import datetime as _datetime
from datetime import time as _time
from decimal import Decimal
from functools import lru_cache
from itertools import islice
from typing import Any

from jinja2 import nodes, pass_context
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.meta import find_undeclared_variables
from jinja2.runtime import ChainableUndefined, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from .errors import (
    MissingValueError,
    PromptError,
    PromptLimitError,
    PromptRenderError,
    PromptSecurityError,
    PromptSyntaxError,
)
from .tokens import get_token_counter

__all__ = [
    "CHAT_ROLES",
    "ChatTemplate",
    "PromptTemplate",
    "RenderLimits",
    "TemplateVariable",
    "render",
    "render_messages",
]

CHAT_ROLES = ("system", "developer", "user", "assistant")
MAX_SEQUENCE_PRODUCT = 1_000_000  # longest str/list a template may build with `*`
MAX_POWER_BITS = 4096  # largest integer a template may build with `**`

# The model whose tokenizer `truncate_tokens` uses during the current render.
_render_model: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "contextkit_prompt_model", default=None
)


@dataclass(frozen=True)
class RenderLimits:
    """How long a render may run and how much text it may build.

    ``timeout_s``: wall-clock seconds of one render (for a chat prompt, of all its messages
    together); ``max_output_chars``: characters of rendered text (likewise), and of any one
    string built on the way.

    >>> small = RenderLimits(max_output_chars=5)
    >>> try:
    ...     PromptTemplate("{{ 'ab' * 3 }}", name="x").render(limits=small)
    ... except PromptError as err:
    ...     print(err.code, err.details["limit"], "-", err.reason)
    render_limit max_output_chars - '*' would build 6 characters or items, over the limit of 5 \
(max_output_chars)
    """

    timeout_s: float = 2.0
    max_output_chars: int = 1_000_000


@dataclass(frozen=True)
class TemplateVariable:
    """A value a template reads from its context: ``path`` is the attribute chain from the
    top-level name (``("features", "orders", "amount_7d")``), ``line`` is 1-based."""

    name: str
    path: tuple[str, ...]
    line: int
    template: str

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


class PromptTemplate:
    """One Jinja template, compiled once (at construction, so syntax errors surface early).

    ``PromptTemplate(source, name="support").render({"user": {...}, "documents": [...]})``

    Raises :class:`PromptSyntaxError` (with ``line``) when the source does not compile.
    """

    def __init__(self, source: str, name: str = "<inline>") -> None:
        self.source = source
        self.name = name
        self._compiled = _compile(source, name)

    def variables(self) -> list[TemplateVariable]:
        """The context values the template reads, one entry per distinct path and line, in
        line order. Loop variables, ``{% set %}`` names and macro arguments are not included.

        A method call's name is not part of the path (``features.get("x")`` reads
        ``features``); a subscript with a constant string is (``features["orders"]``).
        """
        return list(self._compiled.variables)

    def names(self) -> frozenset[str]:
        """The top-level names the template reads (``jinja2.meta.find_undeclared_variables``)."""
        return self._compiled.names

    def render(
        self,
        context: Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        limits: RenderLimits | None = None,
    ) -> str:
        """Render with ``context``. ``model`` picks the tokenizer of ``truncate_tokens``;
        ``limits`` bound the time and the text (default: ``RenderLimits()``, 2 s and 1,000,000
        characters).

        Raises :class:`MissingValueError`, :class:`PromptSecurityError`,
        :class:`PromptLimitError` or :class:`PromptRenderError`, each with the template line
        where it happened.
        """
        _load_tokenizer([self._compiled], model)
        return _render(self._compiled, context, model, _Budget(limits))

    def __repr__(self) -> str:
        return f"PromptTemplate(name={self.name!r})"


class ChatTemplate:
    """A chat prompt: ``(role, template)`` pairs rendered to ``[{"role", "content"}]``.

    >>> chat = ChatTemplate([{"role": "user", "content": "{{ q }}"}], name="qa")
    >>> chat.render_messages({"q": "hi"})
    [{'role': 'user', 'content': 'hi'}]

    Each message's template is named ``"<name>.messages[<i>]"`` in errors and variables.
    """

    def __init__(
        self,
        messages: Sequence[tuple[str, str] | Mapping[str, str]],
        name: str = "<inline>",
    ) -> None:
        self.name = name
        self.messages: list[tuple[str, PromptTemplate]] = []
        if not messages:
            raise PromptSyntaxError("a chat prompt needs at least one message", template=name)
        for i, message in enumerate(messages):
            role, source = _role_and_source(message, name, i)
            self.messages.append((role, PromptTemplate(source, f"{name}.messages[{i}]")))

    def variables(self) -> list[TemplateVariable]:
        """The context values all messages read (see :meth:`PromptTemplate.variables`)."""
        return [var for _, template in self.messages for var in template.variables()]

    def names(self) -> frozenset[str]:
        """The top-level names any message reads."""
        return frozenset().union(*(template.names() for _, template in self.messages))

    def render_messages(
        self,
        context: Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        limits: RenderLimits | None = None,
    ) -> list[dict[str, str]]:
        """Render every message; contents are stripped, empty messages left out. ``limits``
        bound all messages together (see :meth:`PromptTemplate.render`)."""
        _load_tokenizer([template._compiled for _, template in self.messages], model)
        budget = _Budget(limits)
        out = []
        for role, template in self.messages:
            content = _render(template._compiled, context, model, budget).strip()
            if content:
                out.append({"role": role, "content": content})
        return out

    def __repr__(self) -> str:
        roles = [role for role, _ in self.messages]
        return f"ChatTemplate(name={self.name!r}, roles={roles})"


def render(
    source: str,
    context: Mapping[str, Any] | None = None,
    *,
    name: str = "<inline>",
    model: str | None = None,
    limits: RenderLimits | None = None,
) -> str:
    """Render a template source in one call (compiled once and cached, like PromptTemplate)."""
    return PromptTemplate(source, name).render(context, model=model, limits=limits)


def render_messages(
    messages: Sequence[tuple[str, str] | Mapping[str, str]],
    context: Mapping[str, Any] | None = None,
    *,
    name: str = "<inline>",
    model: str | None = None,
    limits: RenderLimits | None = None,
) -> list[dict[str, str]]:
    """Render ``(role, template)`` pairs to chat messages in one call (see ChatTemplate)."""
    return ChatTemplate(messages, name).render_messages(context, model=model, limits=limits)


# -- environment ----------------------------------------------------------------------------------


class _MissingValue(UndefinedError):
    """Raised by strict undefined values; remembers which name was missing and whether it was a
    top-level name (``top_level``) or an attribute/key of a value that exists."""

    def __init__(self, message: str, name: Any, top_level: bool) -> None:
        super().__init__(message)
        self.name = name
        self.top_level = top_level


class _StrictChainableUndefined(ChainableUndefined):
    """Strict like ``StrictUndefined`` (printing, iterating, comparing, testing truth fail),
    chainable like ``ChainableUndefined`` (``a.b.c`` of a missing ``a`` stays undefined, so
    ``default`` works at any depth)."""

    __slots__ = ()

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> Any:
        if self._undefined_exception is not UndefinedError:
            raise self._undefined_exception(self._undefined_message)
        from jinja2.utils import missing

        raise _MissingValue(
            self._undefined_message, self._undefined_name, self._undefined_obj is missing
        )

    def __getitem__(self, key: Any) -> _StrictChainableUndefined:
        return self


# Every operation Undefined or StrictUndefined make fail must go through our override.
_FAIL = _StrictChainableUndefined._fail_with_undefined_error
for _op, _value in {**vars(Undefined), **vars(StrictUndefined)}.items():
    if _value is Undefined._fail_with_undefined_error and _op not in ("__getitem__", "__getattr__"):
        setattr(_StrictChainableUndefined, _op, _FAIL)
del _FAIL, _op, _value


# -- limits -------------------------------------------------------------------------------------


class _LimitExceeded(Exception):
    """Raised inside a render past one of its limits; ``_translate`` adds the template line."""

    def __init__(self, limit: str, value: float, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.message = message


class _Budget:
    """What one render may still spend: its deadline and the characters it has produced (for a
    chat prompt, shared by all its messages)."""

    __slots__ = ("deadline", "limits", "output_chars")

    def __init__(self, limits: RenderLimits | None, *, clock: bool = True) -> None:
        self.limits = limits or RenderLimits()
        self.deadline = time.monotonic() + self.limits.timeout_s if clock else float("inf")
        self.output_chars = 0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _LimitExceeded(
                "timeout_s",
                self.limits.timeout_s,
                f"rendering took longer than the limit of {self.limits.timeout_s:g} s (timeout_s)",
            )

    def check_size(self, value: Any) -> None:
        if isinstance(value, str) and len(value) > self.limits.max_output_chars:
            raise self._too_long(f"the template built a string of {len(value):,} characters")

    def check_output(self) -> None:
        if self.output_chars > self.limits.max_output_chars:
            raise self._too_long(f"the output reached {self.output_chars:,} characters")

    def check_growth(self, name: str, value: Any, args: Sequence[Any], kwargs: Mapping) -> None:
        """Refuse, before it runs, a filter or str method that would build more than the limit
        from small inputs (``center(10**9)``, ``replace`` of a long text, ``batch(10**9, x)``)."""
        size = _grown_size(name, value, args, kwargs)
        if size > self.limits.max_output_chars:
            label = f"{name}()" if name.isidentifier() else name
            raise self._too_long(f"{label} would build {size:,} characters or items")

    def iterate(self, iterable: Any) -> Any:
        for item in iterable:
            self.check_time()
            yield item

    def _too_long(self, what: str) -> _LimitExceeded:
        limit = self.limits.max_output_chars
        return _LimitExceeded(
            "max_output_chars", limit, f"{what}, over the limit of {limit:,} (max_output_chars)"
        )


# The budget of the render running in this thread; outside a render (Jinja folds constant
# expressions while compiling) sizes are still checked, against the default limits.
_render_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "contextkit_prompt_budget", default=None
)
_UNTIMED = _Budget(None, clock=False)

# Filters and str methods whose result can be far larger than their inputs: the argument (index
# after the value, name) that sets the result's width or item count.
_WIDTH_ARGUMENTS = {
    "'*'": (0, "times"),
    "center": (0, "width"),
    "ljust": (0, "width"),
    "rjust": (0, "width"),
    "zfill": (0, "width"),
    "batch": (0, "linecount"),
    "slice": (0, "slices"),
}


_GROWING_FILTERS = frozenset({*_WIDTH_ARGUMENTS, "indent", "replace", "join"})


def _budget() -> _Budget:
    return _render_budget.get() or _UNTIMED


def _grown_size(name: str, value: Any, args: Sequence[Any], kwargs: Mapping) -> int:
    def arg(index: int, key: str, default: Any) -> Any:
        return args[index] if len(args) > index else kwargs.get(key, default)

    if name in _WIDTH_ARGUMENTS:
        width = arg(*_WIDTH_ARGUMENTS[name], 0)
        return width if isinstance(width, int) else 0
    if not isinstance(value, str):
        return 0
    if name == "indent":
        width = arg(0, "width", 4)
        width = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        return len(value) + (value.count("\n") + 1) * width
    if name == "expandtabs":
        size = arg(0, "tabsize", 8)
        return len(value) + value.count("\t") * size if isinstance(size, int) else 0
    if name == "replace":
        old, new, count = arg(0, "old", None), arg(1, "new", None), arg(2, "count", None)
        if not isinstance(old, str) or not isinstance(new, str):
            return 0
        hits = value.count(old) if old else len(value) + 1
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        return len(value) + hits * (len(new) - len(old))
    if name == "join" and isinstance(arg(0, "iterable", None), Sized):  # sep.join(items)
        items = arg(0, "iterable", None)
        strings = items if isinstance(items, list | tuple) else ()
        return len(value) * len(items) + sum(len(i) for i in strings if isinstance(i, str))
    return 0


def _bounded_filter(name: str, filter_: Any) -> Any:
    """``filter_`` with its result's size checked (and, for the growing ones, its arguments)."""
    first = 1 if getattr(filter_, "jinja_pass_arg", None) is not None else 0
    grows = name in _GROWING_FILTERS

    @functools.wraps(filter_)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if not grows or len(args) <= first:
            pass
        elif name == "join" and isinstance(args[first], Sized):
            separator = args[first + 1] if len(args) > first + 1 else kwargs.get("d", "")
            budget.check_growth("join", separator, (args[first],), {})
        else:
            budget.check_growth(name, args[first], args[first + 1 :], kwargs)
        result = filter_(*args, **kwargs)
        budget.check_size(result)
        return result

    return bounded


@pass_context
def _render_loop(_context: Any, iterable: Any) -> Any:
    """Wraps every ``{% for %}``'s iterable: the clock is checked at each iteration."""
    budget = _render_budget.get()
    return iterable if budget is None else budget.iterate(iterable)


@pass_context
def _render_concat(_context: Any, value: Any) -> Any:
    """Wraps every ``~`` concatenation and block set: the text is held to the size limit."""
    _budget().check_size(value)
    return value


class _RouteThroughBudget(NodeTransformer):
    """Rewrites a parsed template so loops, ``~`` and block sets go through the filters above."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_render_loop", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(node, "_render_concat", [], [], None, None, lineno=node.lineno)

    def visit_AssignBlock(self, node: nodes.AssignBlock) -> nodes.Node:
        # {% set x %}...{% endset %}: the block's text (after the user's filter, if any)
        self.generic_visit(node)
        node.filter = nodes.Filter(
            node.filter, "_render_concat", [], [], None, None, lineno=node.lineno
        )
        return node


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        # Every call (macros, methods, globals) checks the clock; str methods that can grow a
        # string far past their inputs are checked before they run, every result after.
        budget = _budget()
        budget.check_time()
        target = getattr(__obj, "__self__", None)
        if isinstance(target, str):
            budget.check_growth(getattr(__obj, "__name__", ""), target, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        budget.check_size(result)
        return result

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # Fail at once rather than return an undefined that `default` would quietly swallow.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > MAX_SEQUENCE_PRODUCT:
                    raise SecurityError(
                        f"the result of '*' would have {len(seq) * times:,} items "
                        f"(limit {MAX_SEQUENCE_PRODUCT:,})"
                    )
                if sized and isinstance(seq, str):
                    _budget().check_growth("'*'", seq, (len(seq) * times,), {})
            return left * right
        if operator in ("+", "%"):
            result = super().call_binop(context, operator, left, right)
            _budget().check_size(result)
            return result
        if operator == "**":
            ints = isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0
            if ints and abs(left).bit_length() * right > MAX_POWER_BITS:
                raise SecurityError(f"{left} ** {right} is too large for a template")
            return left**right
        return super().call_binop(context, operator, left, right)


class _FilterError(ValueError):
    pass


def _json_default(value: Any) -> Any:
    if isinstance(value, _datetime | _date | _time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    raise _FilterError(f"json: cannot serialise a {type(value).__name__} value")


def _filter_json(value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    separators = (",", ":") if indent is None else (",", ": ")
    try:
        return _json.dumps(
            value,
            ensure_ascii=False,
            separators=separators,
            indent=indent,
            sort_keys=sort_keys,
            default=_json_default,
        )
    except ValueError as error:  # circular references; _FilterError is a ValueError too
        if isinstance(error, _FilterError):
            raise
        raise _FilterError(f"json: {error}") from None


def _filter_truncate_tokens(value: Any, n: int, end: str = "…") -> str:
    if value is None:
        return ""
    if not isinstance(n, int) or n < 0:
        raise _FilterError(f"truncate_tokens: n must be a non-negative integer, got {n!r}")
    return get_token_counter(_render_model.get()).truncate(str(value), n, end)


def _plain(item: Any) -> str:
    if isinstance(item, Mapping | list | tuple):
        return _filter_json(item)
    return str(item)


def _filter_bullet(value: Any, marker: str = "-") -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        items: list[str] = [value]
    elif isinstance(value, Mapping):
        items = [f"{key}: {_plain(val)}" for key, val in value.items()]
    else:
        items = [_plain(item) for item in value]
    indent = " " * (len(marker) + 1)
    return "\n".join(f"{marker} " + item.replace("\n", "\n" + indent) for item in items)


def _to_datetime(value: Any, filter_name: str) -> _datetime | _date | None:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if value is None or isinstance(value, _datetime | _date):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        try:
            return _datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _FilterError(
        f"{filter_name}: cannot read {value!r} as a date/time "
        "(expected a datetime, a date, an ISO 8601 string or epoch seconds)"
    )


def _filter_datetime(value: Any, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    moment = _to_datetime(value, "datetime")
    return "" if moment is None else moment.strftime(fmt)


def _filter_date(value: Any, fmt: str = "%Y-%m-%d") -> str:
    moment = _to_datetime(value, "date")
    return "" if moment is None else moment.strftime(fmt)


def _make_environment() -> _PromptEnvironment:
    env = _PromptEnvironment(
        undefined=_StrictChainableUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.pop("lipsum", None)  # generates unbounded text and is no use in a prompt
    env.filters.update(
        json=_filter_json,
        truncate_tokens=_filter_truncate_tokens,
        bullet=_filter_bullet,
        datetime=_filter_datetime,
        date=_filter_date,
    )
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.filters.update(_render_loop=_render_loop, _render_concat=_render_concat)
    return env


_ENV = _make_environment()


# -- compile ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Compiled:
    name: str
    filename: str
    template: Any  # jinja2.Template
    variables: tuple[TemplateVariable, ...]
    names: frozenset[str]
    chains: tuple[tuple[str, int], ...]  # every lookup chain as (display path, line), for errors
    counts_tokens: bool  # uses truncate_tokens


@lru_cache(maxsize=256)
def _compile(source: str, name: str) -> _Compiled:
    filename = f"<prompt {name}>"
    try:
        ast = _ENV.parse(source, name=name, filename=filename)
        _reject_loading(ast, name)
        names = frozenset(find_undeclared_variables(ast))
        variables = _find_variables(ast, names, name)
        chains = _lookup_chains(ast)
        counts_tokens = any(f.name == "truncate_tokens" for f in ast.find_all(nodes.Filter))
        bounded = _RouteThroughBudget().visit(ast)
        bounded.set_environment(_ENV)
        code = _ENV.compile(bounded, name=name, filename=filename)
    except TemplateSyntaxError as error:
        raise _syntax_error(error, name) from None
    template = _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None))
    return _Compiled(name, filename, template, variables, names, chains, counts_tokens)


def _syntax_error(error: TemplateSyntaxError, name: str) -> PromptSyntaxError:
    message = error.message or "invalid template syntax"
    hint = None
    if message.startswith("No filter named"):
        hint = "available filters: " + ", ".join(sorted(f for f in _ENV.filters if f[0] != "_"))
    elif message.startswith("No test named"):
        hint = "available tests: " + ", ".join(sorted(_ENV.tests))
    return PromptSyntaxError(message, hint=hint, line=error.lineno, template=name)


def _reject_loading(ast: nodes.Template, name: str) -> None:
    for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        tag = {
            nodes.Extends: "extends",
            nodes.Include: "include",
            nodes.Import: "import",
            nodes.FromImport: "from ... import",
        }[type(node)]
        raise PromptSyntaxError(
            f"{{% {tag} %}} is not supported in prompt templates",
            hint="a prompt is one self-contained template; use a macro defined in it instead",
            line=node.lineno,
            template=name,
        )


def _find_variables(
    ast: nodes.Template, names: frozenset[str], template: str
) -> tuple[TemplateVariable, ...]:
    found: dict[tuple[tuple[str, ...], int], None] = {}

    def record(path: list[str], line: int) -> None:
        found.setdefault((tuple(path), line), None)

    def chain(node: nodes.Node) -> tuple[nodes.Name | None, list[str], list[nodes.Node]]:
        """Walk an attribute chain down to its root: (root name, path, other expressions)."""
        path: list[str] = []
        others: list[nodes.Node] = []
        while True:
            if isinstance(node, nodes.Getattr):
                path.append(node.attr)
                node = node.node
            elif isinstance(node, nodes.Getitem):
                if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                    path.append(node.arg.value)
                else:  # a computed key ends the static path
                    path.clear()
                    others.append(node.arg)
                node = node.node
            elif isinstance(node, nodes.Name):
                return node, path[::-1], others
            else:
                others.append(node)
                return None, [], others

    def visit(node: nodes.Node, bound: frozenset[str]) -> None:
        if isinstance(node, nodes.Name):
            if node.ctx == "load" and node.name in names and node.name not in bound:
                record([node.name], node.lineno)
            return
        if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            visit(node.node.node, bound)  # the method's name is not part of the data path
            for child in (*node.args, *node.kwargs, node.dyn_args, node.dyn_kwargs):
                if child is not None:
                    visit(child, bound)
            return
        if isinstance(node, nodes.Getattr | nodes.Getitem):
            root, path, others = chain(node)
            if root is not None and root.ctx == "load" and root.name in names - bound:
                record([root.name, *path], node.lineno)
            for other in others:
                visit(other, bound)
            return
        if isinstance(node, nodes.For):
            visit(node.iter, bound)
            inner = bound | _target_names(node.target) | {"loop"}
            for child in (*node.body, *([node.test] if node.test else [])):
                visit(child, inner)
            for child in node.else_:
                visit(child, bound)
            return
        if isinstance(node, nodes.Macro | nodes.CallBlock):
            args = {arg.name for arg in node.args} | {"varargs", "kwargs", "caller"}
            for default in node.defaults:
                visit(default, bound)
            if isinstance(node, nodes.CallBlock):
                visit(node.call, bound)
            for child in node.body:
                visit(child, bound | args)
            return
        if isinstance(node, nodes.With):
            for value in node.values:
                visit(value, bound)
            inner = bound | {name for target in node.targets for name in _target_names(target)}
            for child in node.body:
                visit(child, inner)
            return
        for child in node.iter_child_nodes():
            visit(child, bound)

    visit(ast, frozenset())
    ordered = sorted(found, key=lambda key: (key[1], key[0]))
    return tuple(TemplateVariable(path[0], path, line, template) for path, line in ordered)


def _lookup_chains(ast: nodes.Template) -> tuple[tuple[str, int], ...]:
    """Every attribute/constant-subscript chain rooted at a name, loop variables included, as
    the display path of each prefix (``docs[0].text``): used to name a missing value."""
    out = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        parts: list[str] = []
        current: nodes.Node = node
        while True:
            if isinstance(current, nodes.Getattr):
                parts.append(f".{current.attr}")
            elif isinstance(current, nodes.Getitem) and isinstance(current.arg, nodes.Const):
                key = current.arg.value
                ident = isinstance(key, str) and key.isidentifier()
                parts.append(f".{key}" if ident else f"[{key!r}]")
            else:
                break
            current = current.node
        if isinstance(current, nodes.Name) and parts:
            out.append((current.name + "".join(reversed(parts)), node.lineno))
    return tuple(out)


def _target_names(target: nodes.Node) -> set[str]:
    return {node.name for node in target.find_all(nodes.Name)} | (
        {target.name} if isinstance(target, nodes.Name) else set()
    )


# -- render -------------------------------------------------------------------------------------


def _load_tokenizer(templates: Sequence[_Compiled], model: str | None) -> None:
    """Load the tokenizer ``truncate_tokens`` will use before the clock starts: the first load
    (litellm's import, the encoding's file) takes seconds that are no fault of the template."""
    if any(t.counts_tokens for t in templates):
        _loaded_tokenizer(model)


@lru_cache(maxsize=64)
def _loaded_tokenizer(model: str | None) -> None:
    get_token_counter(model).count("load the encoding")


def _render(
    compiled: _Compiled, context: Mapping[str, Any] | None, model: str | None, budget: _Budget
) -> str:
    model_token = _render_model.set(model)
    budget_token = _render_budget.set(budget)
    try:
        template = compiled.template
        try:
            chunks = template.root_render_func(template.new_context(dict(context or {})))
            return _collect(chunks, budget)
        except Exception:
            _ENV.handle_exception()  # re-raises it with the template's lines in the traceback
    except PromptError:
        raise
    except Exception as error:
        raise _translate(error, compiled) from None
    finally:
        _render_budget.reset(budget_token)
        _render_model.reset(model_token)


def _collect(chunks: Any, budget: _Budget) -> str:
    """Join the output chunks, counting them against the budget in batches (a Python step per
    chunk would cost more than the render); past a limit, the error is thrown into the template
    where the batch ended, so it carries that line."""
    parts: list[str] = []
    limit = budget.limits.max_output_chars
    while batch := list(islice(chunks, 64)):
        parts += batch
        budget.output_chars += sum(map(len, batch))
        if budget.output_chars > limit or time.monotonic() > budget.deadline:
            try:
                budget.check_output()
                budget.check_time()
            except _LimitExceeded as exceeded:
                chunks.throw(exceeded)
    return "".join(parts)


def _error_line(error: BaseException, filename: str) -> int | None:
    line = None
    tb: types.TracebackType | None = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _translate(error: Exception, compiled: _Compiled) -> PromptError:
    line = _error_line(error, compiled.filename)
    name = compiled.name
    if isinstance(error, UndefinedError):  # ours (_MissingValue) or Jinja's own
        variable = _missing_path(error, compiled, line)
        return MissingValueError(
            f"missing value {variable!r} ({error.message})",
            variable=variable,
            hint=(
                f"pass it in the render context, or give the template a fallback: "
                f"{{{{ {variable} | default('') }}}} or {{% if {variable} is defined %}}"
            ),
            line=line,
            template=name,
        )
    if isinstance(error, _LimitExceeded):
        return PromptLimitError(
            error.message,
            limit=error.limit,
            value=error.value,
            hint="loop over fewer items and build less text, or raise the render limits",
            line=line,
            template=name,
        )
    if isinstance(error, SecurityError | OverflowError):
        return PromptSecurityError(
            str(error),
            hint=(
                "prompt templates run in a sandbox: private attributes (_x, __class__), "
                "mutating methods and huge ranges or repetitions are not allowed"
            ),
            line=line,
            template=name,
        )
    if isinstance(error, TemplateSyntaxError):
        return _syntax_error(error, name)
    if isinstance(error, _FilterError):
        return PromptRenderError(str(error), line=line, template=name)
    return PromptRenderError(f"{type(error).__name__}: {error}", line=line, template=name)


def _missing_path(error: UndefinedError, compiled: _Compiled, line: int | None) -> str:
    if not isinstance(error, _MissingValue) or error.name is None:
        return error.message or "?"
    if error.top_level:
        return error.name
    # An attribute or item of an existing value: find the lookup chain on this line that ends
    # with it (chains include every prefix, so the one that ends there is the missing path).
    name = error.name
    endings = (f".{name}", f"[{name!r}]", f"[{name}]")
    for path, chain_line in compiled.chains:
        if (line is None or chain_line == line) and path.endswith(endings):
            return path
    return name


def _role_and_source(
    message: tuple[str, str] | Mapping[str, str], name: str, index: int
) -> tuple[str, str]:
    if isinstance(message, Mapping):
        role, source = message.get("role"), message.get("content")
    elif isinstance(message, Sequence) and not isinstance(message, str) and len(message) == 2:
        role, source = message
    else:
        role, source = None, None
    if not isinstance(role, str) or not isinstance(source, str):
        raise PromptSyntaxError(
            f"message {index} must be a (role, template) pair or a {{'role', 'content'}} dict, "
            f"got {message!r}",
            template=name,
        )
    if role not in CHAT_ROLES:
        raise PromptSyntaxError(
            f"message {index} has role {role!r}",
            hint="roles are " + ", ".join(CHAT_ROLES),
            template=name,
        )
    return role, source
