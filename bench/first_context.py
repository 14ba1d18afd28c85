"""The first `get_context` of a fresh process on the quickstart: wall and CPU time (issue 18).

Each run is a new Python process that connects to the quickstart repo and times its first
`get_context` (and the whole process: imports + connect + that call). `--via-litellm` counts
tokens the way the previous version did, through litellm (it sets litellm's own chunk-size knob to
its default, 1,024, which makes contextkit.prompts.tokens hand counting to litellm); without it,
OpenAI models are counted with tiktoken directly. Runs alternate between the two.

    python examples/quickstart/generate_data.py --out <copy>/data   # on a copy of the quickstart
    python <copy>/setup.py --features-only
    python bench/first_context.py <copy> --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, sys, time
started = time.perf_counter()
import contextkit
ctx = contextkit.connect(sys.argv[1], workspace="prod")
wall0, cpu0 = time.perf_counter(), time.process_time()
query = "My hiking boots leak after a week. Can I return them?"
result = ctx.get_context("support_assistant", {"user_id": 7}, query=query)
wall1, cpu1 = time.perf_counter(), time.process_time()
print(json.dumps({
    "first_wall_s": wall1 - wall0, "first_cpu_s": cpu1 - cpu0,
    "process_wall_s": wall1 - started, "process_cpu_s": cpu1,
    "tokenizer": result.prompt["tokenizer"], "litellm": "litellm" in sys.modules,
}))
"""


def run_once(repo: str, via_litellm: bool) -> dict:
    env = dict(os.environ)
    env.pop("TIKTOKEN_ENCODE_CHUNK_SIZE_CHARS", None)
    if via_litellm:
        env["TIKTOKEN_ENCODE_CHUNK_SIZE_CHARS"] = "1024"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, repo], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    for i in range(args.runs):
        for via_litellm in (True, False):
            r = run_once(args.repo, via_litellm)
            label = "via litellm" if via_litellm else "tiktoken   "
            print(
                f"run {i + 1} {label}: first get_context {r['first_wall_s']:.2f} s wall, "
                f"{r['first_cpu_s']:.2f} s CPU; process {r['process_wall_s']:.2f} s wall, "
                f"{r['process_cpu_s']:.2f} s CPU; {r['tokenizer']}, litellm: {r['litellm']}"
            )
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
