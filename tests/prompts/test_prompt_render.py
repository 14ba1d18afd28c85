"""Rendering prompt templates: filters, strict missing values, variable discovery, chat messages."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from contextkit.prompts import (
    ChatTemplate,
    MissingValueError,
    PromptRenderError,
    PromptSyntaxError,
    PromptTemplate,
    render,
    render_messages,
)

SUPPORT = """\
You are a support agent for {{ user.name }}.
Spend in the last 7 days: {{ features.user_order_stats.amount_sum_7d }}
{% for doc in documents %}
[{{ doc.id }}] {{ doc.text }}
{% endfor %}
Question: {{ query }}
"""


def support_context(**overrides):
    context = {
        "user": {"name": "Ada"},
        "features": {"user_order_stats": {"amount_sum_7d": 125.5}},
        "documents": [{"id": "kb-1", "text": "Refunds take 5 days."}],
        "query": "Where is my refund?",
    }
    return {**context, **overrides}


def test_a_support_prompt_renders_without_stray_blank_lines():
    text = PromptTemplate(SUPPORT, name="support").render(support_context())

    assert text == (
        "You are a support agent for Ada.\n"
        "Spend in the last 7 days: 125.5\n"
        "[kb-1] Refunds take 5 days.\n"
        "Question: Where is my refund?"
    )


def test_json_filter_is_compact_and_keeps_non_ascii():
    value = {"name": "Zoë", "tags": ["vip", "eu"], "at": datetime(2024, 6, 1, 12, 0, tzinfo=UTC)}

    assert render("{{ v | json }}", {"v": value}) == (
        '{"name":"Zoë","tags":["vip","eu"],"at":"2024-06-01T12:00:00+00:00"}'
    )
    assert render("{{ v | json(indent=2) }}", {"v": [1]}) == "[\n  1\n]"


def test_json_filter_refuses_values_it_cannot_serialise():
    with pytest.raises(PromptRenderError, match="json: cannot serialise a object value"):
        render("{{ v | json }}", {"v": object()})


def test_bullet_filter_turns_lists_and_dicts_into_lines():
    assert render("{{ items | bullet }}", {"items": ["first", "second\nline", {"k": 1}]}) == (
        '- first\n- second\n  line\n- {"k":1}'
    )
    assert render("{{ stats | bullet('*') }}", {"stats": {"orders": 3, "spend": 9.5}}) == (
        "* orders: 3\n* spend: 9.5"
    )
    assert render("{{ one | bullet }}", {"one": "just this"}) == "- just this"
    assert render("[{{ none | bullet }}]", {"none": []}) == "[]"


def test_datetime_and_date_filters_read_datetimes_iso_strings_and_epochs():
    context = {
        "ts": datetime(2024, 6, 1, 12, 30, 5),
        "iso": "2024-06-01T12:30:05Z",
        "day": date(2024, 6, 1),
        "epoch": 0,
        "missing_ts": None,
    }
    template = (
        "{{ ts | datetime('%Y-%m-%d') }}|{{ iso | datetime }}|{{ day | date('%d %b %Y') }}|"
        "{{ epoch | datetime('%Y-%m-%dT%H:%M%z') }}|{{ missing_ts | date }}"
    )

    assert render(template, context) == (
        "2024-06-01|2024-06-01 12:30:05|01 Jun 2024|1970-01-01T00:00+0000|"
    )


def test_datetime_filter_names_the_bad_value_and_the_line():
    with pytest.raises(PromptRenderError) as caught:
        render("ok\n{{ when | datetime }}", {"when": "next tuesday"}, name="reminder")

    assert caught.value.line == 2
    assert caught.value.template == "reminder"
    assert "'next tuesday'" in caught.value.message


def test_truncate_tokens_shortens_long_values_only():
    words = " ".join(f"word{i}" for i in range(100))

    short = render("{{ text | truncate_tokens(10) }}", {"text": words})
    assert short.endswith("…") and len(short) < len(words)
    assert render("{{ text | truncate_tokens(10) }}", {"text": "tiny"}) == "tiny"
    assert render("{{ text | truncate_tokens(10, end='') }}", {"text": words}).startswith("word0")


def test_truncate_tokens_counts_with_the_render_model():
    from contextkit.prompts import count_tokens

    words = " ".join(f"token{i}" for i in range(200))

    short = render("{{ t | truncate_tokens(20, end='') }}", {"t": words}, model="gpt-4o")

    assert count_tokens(short, "gpt-4o") <= 20 < count_tokens(short + " token", "gpt-4o") + 5


def test_missing_value_error_names_the_variable_and_line():
    context = support_context()
    del context["query"]

    with pytest.raises(MissingValueError) as caught:
        PromptTemplate(SUPPORT, name="support").render(context)

    error = caught.value
    assert error.variable == "query"
    assert error.line == 6
    assert "'query'" in str(error) and "support" in str(error)
    assert "default" in error.hint


def test_missing_nested_feature_is_named_by_its_full_path():
    context = support_context(features={"user_order_stats": {}})

    with pytest.raises(MissingValueError) as caught:
        PromptTemplate(SUPPORT, name="support").render(context)

    assert caught.value.variable == "features.user_order_stats.amount_sum_7d"
    assert caught.value.line == 2
    assert caught.value.details["variable"] == "features.user_order_stats.amount_sum_7d"


def test_missing_attribute_of_a_loop_item_is_named_through_the_loop_variable():
    with pytest.raises(MissingValueError) as caught:
        render("{% for doc in docs %}\n{{ doc.title }}\n{% endfor %}", {"docs": [{"text": "x"}]})

    assert caught.value.variable == "doc.title"
    assert caught.value.line == 2


@pytest.mark.parametrize(
    "template",
    [
        "{{ query | default('no question') }}",
        "{{ features.user_order_stats.amount_sum_7d | default('no question') }}",
        "{% if query is defined %}{{ query }}{% else %}no question{% endif %}",
        "{{ features.user_order_stats.amount_sum_7d | default('unused', true) and 'no question' }}",
    ],
)
def test_default_and_defined_give_fallbacks_at_any_depth(template):
    assert render(template, {"features": {}}) == "no question"


def test_printing_none_is_allowed_and_default_true_replaces_it():
    assert render("{{ v }}|{{ v | default('n/a', true) }}", {"v": None}) == "None|n/a"


def test_strict_values_fail_when_iterated_or_tested():
    with pytest.raises(MissingValueError, match="documents"):
        render("{% for d in documents %}{{ d }}{% endfor %}", {})
    with pytest.raises(MissingValueError, match="vip"):
        render("{% if vip %}yes{% endif %}", {})


def test_variables_lists_feature_paths_with_lines():
    template = PromptTemplate(SUPPORT, name="support")

    found = [(var.dotted, var.line) for var in template.variables()]

    assert found == [
        ("user.name", 1),
        ("features.user_order_stats.amount_sum_7d", 2),
        ("documents", 3),
        ("query", 6),
    ]
    assert template.names() == {"user", "features", "documents", "query"}
    assert {var.template for var in template.variables()} == {"support"}


def test_variables_skip_loop_set_and_macro_names_and_method_names():
    template = PromptTemplate(
        "{% set spend = features['orders'].sum_7d %}{{ spend }}\n"
        "{% for row in rows %}{{ row.value }}{{ loop.index }}{% endfor %}\n"
        "{% macro show(item) %}{{ item.name }}{{ request.locale }}{% endmacro %}{{ show(x) }}\n"
        "{{ features.get('fallback') }} {{ tags | join(', ') }}"
    )

    found = [(var.dotted, var.line) for var in template.variables()]

    assert found == [
        ("features.orders.sum_7d", 1),
        ("rows", 2),
        ("request.locale", 3),
        ("x", 3),
        ("features", 4),
        ("tags", 4),
    ]


def test_syntax_error_has_the_line():
    with pytest.raises(PromptSyntaxError) as caught:
        PromptTemplate("Hello\n{{ user.name }\nbye", name="greeting")

    assert caught.value.line == 2
    assert caught.value.template == "greeting"
    assert "line 2" in str(caught.value)


def test_unknown_filter_is_a_syntax_error_listing_the_filters():
    with pytest.raises(PromptSyntaxError) as caught:
        PromptTemplate("{{ x }}\n{{ x | bulet }}")

    assert caught.value.line == 2
    assert "bullet" in caught.value.hint


@pytest.mark.parametrize(
    "source",
    ["{% include 'other.j2' %}", "{% extends 'base.j2' %}", "{% import 'm.j2' as m %}"],
)
def test_loading_other_templates_is_rejected_at_compile_time(source):
    with pytest.raises(PromptSyntaxError, match="not supported"):
        PromptTemplate(source)


def test_templates_are_compiled_once_per_source():
    first = PromptTemplate("cached {{ x }}", name="c")
    second = PromptTemplate("cached {{ x }}", name="c")

    assert first._compiled is second._compiled


def test_chat_template_renders_messages_and_drops_empty_ones():
    chat = ChatTemplate(
        [
            ("system", "You help {{ user.name }}.\n"),
            ("assistant", "{% if history %}{{ history | bullet }}{% endif %}"),
            {"role": "user", "content": "  {{ query }}  "},
        ],
        name="support",
    )

    messages = chat.render_messages(support_context(history=[]))

    assert messages == [
        {"role": "system", "content": "You help Ada."},
        {"role": "user", "content": "Where is my refund?"},
    ]
    assert [(v.dotted, v.template) for v in chat.variables()] == [
        ("user.name", "support.messages[0]"),
        ("history", "support.messages[1]"),
        ("query", "support.messages[2]"),
    ]


def test_chat_errors_name_the_message_template():
    with pytest.raises(MissingValueError) as caught:
        render_messages([("system", "hi"), ("user", "{{ query }}")], {}, name="qa")

    assert caught.value.template == "qa.messages[1]"


@pytest.mark.parametrize(
    "messages",
    [[("robot", "hi")], [("user",)], ["user: hi"], []],
)
def test_chat_template_rejects_bad_messages(messages):
    with pytest.raises(PromptSyntaxError):
        ChatTemplate(messages)
