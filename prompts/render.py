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

    >>> small = RenderLimits(max_output_chars=5)
    >>> try:
    ...     PromptTemplate("{{ 'ab' * 3 }}", name="x").render(limits=small)
    ... except PromptError as err:
    ...     print(err.code, err.details["limit"], "-", err.reason)
    render_limit max_output_chars - '*' would build 6 characters or items, over the limit of 5 \
    (max_output_chars)

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

import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.meta import find_undeclared_variables

from ._sandbox import (
    ENV,
    Budget,
    FilterError,
    LimitExceeded,
    MissingValue,
    RenderLimits,
    RouteThroughBudget,
    render_budget,
    render_model,
)
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
        return _render(self._compiled, context, model, Budget(limits))

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
        budget = Budget(limits)
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
        ast = ENV.parse(source, name=name, filename=filename)
        _reject_loading(ast, name)
        names = frozenset(find_undeclared_variables(ast))
        variables = _find_variables(ast, names, name)
        chains = _lookup_chains(ast)
        counts_tokens = any(f.name == "truncate_tokens" for f in ast.find_all(nodes.Filter))
        bounded = RouteThroughBudget().visit(ast)
        bounded.set_environment(ENV)
        code = ENV.compile(bounded, name=name, filename=filename)
    except TemplateSyntaxError as error:
        raise _syntax_error(error, name) from None
    template = ENV.template_class.from_code(ENV, code, ENV.make_globals(None))
    return _Compiled(name, filename, template, variables, names, chains, counts_tokens)


def _syntax_error(error: TemplateSyntaxError, name: str) -> PromptSyntaxError:
    message = error.message or "invalid template syntax"
    hint = None
    if message.startswith("No filter named"):
        hint = "available filters: " + ", ".join(sorted(f for f in ENV.filters if f[0] != "_"))
    elif message.startswith("No test named"):
        hint = "available tests: " + ", ".join(sorted(ENV.tests))
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
    compiled: _Compiled, context: Mapping[str, Any] | None, model: str | None, budget: Budget
) -> str:
    model_token = render_model.set(model)
    budget_token = render_budget.set(budget)
    try:
        template = compiled.template
        try:
            chunks = template.root_render_func(template.new_context(dict(context or {})))
            return _collect(chunks, budget)
        except Exception:
            ENV.handle_exception()  # re-raises it with the template's lines in the traceback
    except PromptError:
        raise
    except Exception as error:
        raise _translate(error, compiled) from None
    finally:
        render_budget.reset(budget_token)
        render_model.reset(model_token)


def _collect(chunks: Any, budget: Budget) -> str:
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
            except LimitExceeded as exceeded:
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
    if isinstance(error, UndefinedError):  # ours (MissingValue) or Jinja's own
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
    if isinstance(error, LimitExceeded):
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
    if isinstance(error, FilterError):
        return PromptRenderError(str(error), line=line, template=name)
    return PromptRenderError(f"{type(error).__name__}: {error}", line=line, template=name)


def _missing_path(error: UndefinedError, compiled: _Compiled, line: int | None) -> str:
    if not isinstance(error, MissingValue) or error.name is None:
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
