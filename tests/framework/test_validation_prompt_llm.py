"""`plan` checks a prompt view's LLM settings (issue 12, items 1 and 15).

A data engineer writes a prompt view with a misspelt model, or with ``params`` that pick the
endpoint; `plan` must say so with the file and line of the ``PromptView`` and a hint, as it does
for embedding models, instead of the first ``complete: true`` failing in production. The check is
offline (litellm's bundled model list).
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

import pyarrow as pa
import pytest

import contextkit
from contextkit.errors import ValidationErrors

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def defs(model: str, params: str = '{"temperature": 0.2}') -> str:
    return textwrap.dedent(
        f"""\
        from contextkit import ContextService, Entity, FileSource, PromptView, batch_feature_view

        user = Entity(name="user", join_keys=["user_id"])
        events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

        @batch_feature_view(sources=[events], entities=[user], mode="sql")
        def user_x(events):
            return f"SELECT user_id, x, ts FROM {{events}}"

        ask = PromptView(
            name="ask",
            template="x={{{{ features.user_x.x }}}} Q: {{{{ query }}}}",
            features=[user_x],
            model={model!r},
            params={params},
        )
        assistant = ContextService(name="assistant", features=[user_x], prompts=["ask"])
        """
    )


PROMPT_LINE = 10  # the line of `ask = PromptView(` in defs()


def events() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1], pa.int64()),
            "x": pa.array([1.5], pa.float64()),
            "ts": pa.array([T0], pa.timestamp("us", tz="UTC")),
        }
    )


def plan(make_repo, source: str, llm: str = "", name: str = "repo"):
    root = make_repo({f"llm_check_{name}.py": source}, data={"events.parquet": events()}, name=name)
    if llm:
        with (root / "contextkit.yaml").open("a") as config:
            config.write(textwrap.dedent(llm))
    ctx = contextkit.connect(root, "prod")
    try:
        ctx.create_workspace("prod", live=True)
        return ctx.plan(root)
    finally:
        ctx.close()


def only_error(make_repo, source: str, llm: str = "", name: str = "repo"):
    with pytest.raises(ValidationErrors) as info:
        plan(make_repo, source, llm, name)
    [error] = info.value.errors
    assert error.location == f"llm_check_{name}.py:{PROMPT_LINE}", error.message
    assert error.hint, error.message
    return error


def test_the_line_constant_points_at_the_prompt_view():
    assert defs("m").splitlines()[PROMPT_LINE - 1].startswith("ask = PromptView(")


def test_a_misspelt_model_is_reported_at_the_prompt_view(make_repo):
    error = only_error(make_repo, defs("openai/gpt-4o-minii"))
    assert "prompt_view 'ask'" in error.message and "gpt-4o-minii" in error.message
    assert "did you mean 'openai/gpt-4o-mini'" in error.hint and "llm.models" in error.hint


def test_a_model_without_a_provider_is_reported(make_repo):
    error = only_error(make_repo, defs("gpt4o-mini"))
    assert "no provider" in error.message and "openai/" in error.hint


def test_params_that_pick_the_endpoint_are_reported(make_repo):
    source = defs("openai/gpt-4o-mini", '{"temperature": 0.2, "api_base": "http://x/v1"}')
    error = only_error(make_repo, source)
    assert "params.api_base is not an allowed generation parameter" in error.message
    assert "temperature" in error.hint and "llm.api_base" in error.hint


def test_the_quickstart_model_plans(make_repo):
    assert plan(make_repo, defs("openai/gpt-4o-mini")) is not None


def test_declared_models_and_an_api_base_plan(make_repo):
    finetune = "openai/ft:gpt-4o-mini:acme::x1"
    declared = f"llm:\n  models: ['{finetune}']\n"
    assert plan(make_repo, defs(finetune), declared, name="declared") is not None
    # With llm.api_base the OpenAI-compatible server decides which names exist.
    served = "llm:\n  api_base: http://127.0.0.1:9/v1\n"
    assert plan(make_repo, defs("openai/stub-model"), served, name="served") is not None
