"""`plan` imports no LLM client: a prompt view whose template counts tokens (``truncate_tokens``)
for a hosted model is sample-rendered with the offline token approximation, so `plan` does not
import litellm (seconds of CPU on every plan; issue 18, "a faster first run"). A fresh
interpreter, since other tests of this process may have imported it already.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pyarrow as pa

DEFS = """\
from contextkit import ContextService, Entity, FileSource, PromptView, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
events = FileSource(name="events", path="data/events.parquet", timestamp_field="ts")

@batch_feature_view(sources=[events], entities=[user], mode="sql")
def user_x(events):
    return f"SELECT user_id, x, ts FROM {events}"

ask = PromptView(
    name="ask",
    template="x={{ features.user_x.x }} Q: {{ query | truncate_tokens(20) }}",
    features=[user_x],
    model="openai/gpt-4o-mini",
)
assistant = ContextService(name="assistant", features=[user_x], prompts=["ask"])
"""

PLAN = """\
import sys
import contextkit
ctx = contextkit.connect(sys.argv[1], "prod")
ctx.create_workspace("prod", live=True)
plan = ctx.plan(sys.argv[1])
assert not plan.is_empty
print(sorted(m for m in ("litellm", "tiktoken", "torch", "lancedb") if m in sys.modules))
"""


def test_plan_of_a_token_counting_prompt_imports_no_llm_client(make_repo) -> None:
    events = pa.table({
        "user_id": pa.array([1], pa.int64()), "x": pa.array([1.5], pa.float64()),
        "ts": pa.array([datetime(2024, 5, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    root = make_repo({"defs.py": DEFS}, data={"events.parquet": events})
    done = subprocess.run(
        [sys.executable, "-c", PLAN, str(root)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
