"""The sandbox prompt templates render in: Jinja2's ``ImmutableSandboxedEnvironment`` with
strict, chainable undefined values, contextkit's filters (``json``, ``truncate_tokens``,
``bullet``, ``datetime``, ``date``) and the per-render limits (:class:`Budget`: a deadline and the
size of the text, checked inside the sandbox as the template runs). Used by
:mod:`contextkit.prompts.render`, which compiles and renders with :data:`ENV`.
"""

from __future__ import annotations

import contextvars
import functools
import json as _json
import time
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from datetime import UTC
from datetime import date as _date
from datetime import datetime as _datetime
from datetime import time as _time
from decimal import Decimal
from typing import Any

from jinja2 import nodes, pass_context
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.runtime import ChainableUndefined, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from .tokens import get_token_counter

MAX_SEQUENCE_PRODUCT = 1_000_000  # longest str/list a template may build with `*`
MAX_POWER_BITS = 4096  # largest integer a template may build with `**`

# The model whose tokenizer `truncate_tokens` uses during the current render.
render_model: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "contextkit_prompt_model", default=None
)


@dataclass(frozen=True)
class RenderLimits:
    """How long a render may run and how much text it may build.

    ``timeout_s``: wall-clock seconds of one render (for a chat prompt, of all its messages
    together); ``max_output_chars``: characters of rendered text (likewise), and of any one
    string built on the way.
    """

    timeout_s: float = 2.0
    max_output_chars: int = 1_000_000


# -- environment ----------------------------------------------------------------------------------


class MissingValue(UndefinedError):
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

        raise MissingValue(
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


class LimitExceeded(Exception):
    """Raised inside a render past one of its limits; ``_translate`` adds the template line."""

    def __init__(self, limit: str, value: float, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.message = message


class Budget:
    """What one render may still spend: its deadline and the characters it has produced (for a
    chat prompt, shared by all its messages)."""

    __slots__ = ("deadline", "limits", "output_chars")

    def __init__(self, limits: RenderLimits | None, *, clock: bool = True) -> None:
        self.limits = limits or RenderLimits()
        self.deadline = time.monotonic() + self.limits.timeout_s if clock else float("inf")
        self.output_chars = 0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded(
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

    def _too_long(self, what: str) -> LimitExceeded:
        limit = self.limits.max_output_chars
        return LimitExceeded(
            "max_output_chars", limit, f"{what}, over the limit of {limit:,} (max_output_chars)"
        )


# The budget of the render running in this thread; outside a render (Jinja folds constant
# expressions while compiling) sizes are still checked, against the default limits.
render_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "contextkit_prompt_budget", default=None
)
_UNTIMED = Budget(None, clock=False)

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


def _budget() -> Budget:
    return render_budget.get() or _UNTIMED


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
    budget = render_budget.get()
    return iterable if budget is None else budget.iterate(iterable)


@pass_context
def _render_concat(_context: Any, value: Any) -> Any:
    """Wraps every ``~`` concatenation and block set: the text is held to the size limit."""
    _budget().check_size(value)
    return value


class RouteThroughBudget(NodeTransformer):
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


class FilterError(ValueError):
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
    raise FilterError(f"json: cannot serialise a {type(value).__name__} value")


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
    except ValueError as error:  # circular references; FilterError is a ValueError too
        if isinstance(error, FilterError):
            raise
        raise FilterError(f"json: {error}") from None


def _filter_truncate_tokens(value: Any, n: int, end: str = "…") -> str:
    if value is None:
        return ""
    if not isinstance(n, int) or n < 0:
        raise FilterError(f"truncate_tokens: n must be a non-negative integer, got {n!r}")
    return get_token_counter(render_model.get()).truncate(str(value), n, end)


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
    raise FilterError(
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


ENV = _make_environment()
