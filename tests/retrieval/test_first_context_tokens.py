"""The first `get_context` of a process, for a prompt with an OpenAI model and a token budget,
counts its tokens with tiktoken alone: importing litellm (seconds) is left to the calls that
need it (completions, other models' tokenizers)."""

from __future__ import annotations

import json
import subprocess
import sys

import contextkit
from tests.conftest import DATA_END

DEFS = """\
from contextkit import (
    Aggregate, ContextService, Entity, FileSource, PromptView, batch_feature_view,
)

user = Entity(name="user", join_keys=["user_id"])
orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")

@batch_feature_view(sources=[orders], entities=[user], mode="sql",
                    features=[Aggregate(column="amount", function="sum", time_window="7d")])
def spend(orders):
    return f"SELECT user_id, amount, ts FROM {orders}"

note = PromptView(
    name="note",
    template="You spent {{ features.spend.amount_sum_7d }} this week. " * 20,
    features=[spend],
    max_tokens=60,
    model="openai/gpt-4o-mini",
)

svc = ContextService(name="svc", features=[spend], prompts=[note])
"""

FIRST_CONTEXT = """
import json, sys
import contextkit
ctx = contextkit.connect(sys.argv[1], workspace="prod")
result = ctx.get_context("svc", {"user_id": 1})
print(json.dumps({"litellm": "litellm" in sys.modules, "prompt": result.prompt}, default=str))
"""


def test_first_get_context_with_an_openai_model_does_not_import_litellm(make_repo):
    import pyarrow as pa

    orders = pa.table(
        {
            "user_id": pa.array([1, 1], pa.int64()),
            "amount": pa.array([5.0, 7.0]),
            "ts": pa.array(
                [DATA_END.replace(hour=h) for h in (1, 2)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    root = make_repo({"defs.py": DEFS}, data={"orders.parquet": orders})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=DATA_END.replace(hour=12))

    run = subprocess.run(
        [sys.executable, "-c", FIRST_CONTEXT, str(root)], capture_output=True, text=True
    )

    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["litellm"] is False
    prompt = out["prompt"]
    assert prompt["tokenizer"] == "tiktoken:o200k_base"
    assert prompt["truncated"] and prompt["tokens"] == 60  # budget counted and enforced
    assert prompt["text"].startswith("You spent 12.0 this week.")
