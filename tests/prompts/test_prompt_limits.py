"""Render limits: a template cannot run past its time limit or build more text than allowed.

The limits are checked by the render itself (a render thread cannot be stopped from outside):
at every loop iteration, every call and every output chunk; operations that would build a huge
string from small inputs are refused before they run.
"""

from __future__ import annotations

import pytest

from contextkit.prompts import (
    ChatTemplate,
    PromptLimitError,
    PromptTemplate,
    RenderLimits,
    render,
)

QUICK = RenderLimits(timeout_s=0.3)


def limit_error(source: str, limits: RenderLimits | None = QUICK, **context) -> PromptLimitError:
    with pytest.raises(PromptLimitError) as caught:
        PromptTemplate(source, name="hostile").render(context, limits=limits)
    error = caught.value
    assert error.code == "render_limit" and error.http_status == 422
    assert error.template == "hostile" and error.hint
    return error


def test_nested_range_loops_stop_at_the_time_limit_with_the_loop_line():
    source = (
        "Hello.\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n"
    )

    error = limit_error(source)

    assert error.limit == "timeout_s" and error.value == 0.3
    assert error.line == 2
    assert error.details["limit"] == "timeout_s" and "0.3 s" in error.message


def test_a_loop_inside_a_macro_or_over_data_is_timed_too():
    macro = (
        "{% macro spin() %}{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}"
        "{% endfor %}{% endfor %}{% endmacro %}{{ spin() }}"
    )
    assert limit_error(macro).limit == "timeout_s"

    data_loop = (
        "{% for a in rows %}{% for b in rows %}{% for c in rows %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    )
    assert limit_error(data_loop, rows=list(range(10_000))).limit == "timeout_s"


def test_output_past_the_size_limit_stops_at_the_line_that_wrote_it():
    source = "intro\n{% for i in range(100000) %}{{ 'abcdefghij' }}{% endfor %}\n"

    error = limit_error(source, RenderLimits(max_output_chars=50_000))

    assert error.limit == "max_output_chars" and error.value == 50_000
    assert error.line == 2 and "50,000" in error.message


@pytest.mark.parametrize(
    "source",
    [
        # doubling a string 40 times would need a terabyte
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s | length }}",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}{{ ns.s | length }}",
        "{{ 'x' | center(10 ** 9) }}",
        "{{ 'x'.ljust(10 ** 9) }}",
        "{{ ('x' * 100000) | replace('x', 'y' * 100) }}",
        "{{ ('x' * 100000).replace('x', 'y' * 100) }}",
        "{{ range(100000) | join('-' * 1000) }}",
        "{{ range(3) | batch(10 ** 9, 'pad') | list | length }}",
        "{% set big %}{% for i in range(100000) %}{{ 'abcdefghijklmnopqrstuvwxyz' }}"
        "{% endfor %}{% endset %}{{ big | length }}",
    ],
)
def test_a_string_growing_past_the_limit_is_refused_whatever_builds_it(source):
    error = limit_error(source, RenderLimits(max_output_chars=1_000_000))

    assert error.limit == "max_output_chars" and error.line == 1


def test_huge_constants_are_not_built_while_compiling():
    # Jinja folds constant expressions at compile time; a hostile constant must not run there.
    template = PromptTemplate("{{ 'x' | center(10 ** 12) }}", name="const")

    with pytest.raises(PromptLimitError):
        template.render()


def test_the_messages_of_a_chat_prompt_share_one_output_limit():
    chat = ChatTemplate([("system", "{{ 'a' * 600 }}"), ("user", "{{ 'b' * 600 }}")], name="chat")

    assert len(chat.render_messages(limits=RenderLimits(max_output_chars=1500))) == 2
    with pytest.raises(PromptLimitError) as caught:
        chat.render_messages(limits=RenderLimits(max_output_chars=1000))
    assert caught.value.template == "chat.messages[1]"


def test_templates_within_the_limits_render_as_before():
    source = (
        "{% for d in docs %}{{ loop.index }}/{{ loop.length }} {{ d }}"
        "{% if not loop.last %}, {% endif %}{% else %}none{% endfor %}|"
        "{{ 'a' ~ 'b' }}|{{ 3 + 4 }}|{{ '%s!' % 'hi' }}|{{ ['x', 'y'] | join(',') }}|"
        "{{ 'ab' | center(6) }}|{{ 'a-b' | replace('-', '+') }}"
    )

    assert render(source, {"docs": ["x", "y"]}) == "1/2 x, 2/2 y|ab|7|hi!|x,y|  ab  |a+b"
    assert render(source, {"docs": []}).startswith("none|")
