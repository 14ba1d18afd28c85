"""Dataset generation: rendered rows/s of ``ctx.generate_dataset(...)`` for 100,000 events.

Builds the repo of ``bench/offline.py`` in a temp dir (1,000,000 activity rows over 100,000 users,
three feature views, materialized) and adds a prompt view: a chat prompt whose system message is a
1 KB template reading ten features of the three views and a request field, then the event's
question, with a 1,200-token budget counted by ``openai/gpt-4o-mini``'s tokenizer (tiktoken), as
the quickstart's support prompt. The events (100,000, random users and times, in random order)
get a question and an answer column.

Measured, each in its own subprocess (``--rounds`` times, interleaved), wall time and peak RSS:

* ``jsonl``: ``ctx.generate_dataset(events, "assistant", label_column="answer").to_jsonl(path)``,
  the chat fine-tuning format: point-in-time features, one render per event, JSON lines;
* ``table``: the same to Parquet (``to_parquet``: prompt, features, label, tokens, truncated);
* ``features``: ``ctx.get_features_for_events(events, "assistant").to_arrow()`` alone, the
  point-in-time part both of the above include;
* ``plain jinja2`` (baseline): the features from that same call, then the same template
  rendered per row with a plain ``jinja2.Environment`` (no sandbox, no strict undefined values, no
  token budget, no request checks) and written as the same JSON lines: a lower bound for
  "render this template for every row" in Python.

Every output is checked: the JSONL files of contextkit and of the baseline hold the same number of
lines, and contextkit's system messages equal the baseline's (the template's output does not
depend on the sandbox for these values).

    python bench/dataset_render.py                    # 100,000 events (about 3 minutes on 2 cores)
    python bench/dataset_render.py --scale 0.1 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import console, fmt_mib, machine_line, ratio
from offline import PeakRSS, cpu_seconds, part_generate, part_materialize, ru_maxrss_bytes

PARTS = ("jsonl", "table", "features", "baseline")
QUESTIONS = (
    "Where is my order?",
    "Can I still return the running shoes I bought last month?",
    "My parcel arrived damaged, what can I do?",
    "How do I change the payment method on my account?",
    "Why was I charged twice?",
)

# About 1 KB rendered (the static text is ~900 characters, the values ~100).
SYSTEM = """\
{% set spend = features.user_spend %}
You are the support assistant of an online shop. Answer the customer's question using only the
facts below. If they are not enough, say so and offer to hand over to a human agent. Never promise
refunds, replacements or delivery dates that the facts do not support, and never ask for card
numbers or passwords. The customer writes over {{ request.channel }}: keep the answer short,
friendly and in plain language, without internal jargon or feature names.

What we know about the customer, as of the moment they wrote:
- last purchase: {{ features.last_purchase.category | default("none", true) }} for \
{{ features.last_purchase.amount | default(0, true) | round(2) }}
- engagement score (last 7 days): {{ features.user_score.score | default(0, true) | round(3) }}
- spent in the last day: {{ spend.amount_sum_1d | default(0, true) | round(2) }}
- spent in the last 7 days: {{ spend.amount_sum_7d | default(0, true) | round(2) }} over \
{{ spend.amount_count_7d | default(0, true) }} purchases
- spent in the last 30 days: {{ spend.amount_sum_30d | default(0, true) | round(2) }} over \
{{ spend.amount_count_30d | default(0, true) }} purchases
{% if spend.amount_count_30d %}
The customer bought recently: check whether the question is about one of those purchases before
answering, and mention the order only if the customer brings it up.
{% else %}
The customer has not bought anything in the last 30 days: do not assume an open order.
{% endif %}
If the question is about something else entirely (a job, a partnership, the press), thank them and
point them to the contact page. Reply in the customer's language.
"""

PROMPTS = f'''\
from features import last_purchase, user_score, user_spend

from contextkit import ContextService, PromptView, RequestField

assistant_prompt = PromptView(
    name="assistant_prompt",
    format="messages",
    messages=[("system", """{SYSTEM}"""), ("user", "{{{{ query }}}}")],
    features=[last_purchase, user_score, user_spend],
    request_context=[RequestField("channel", "string", default="chat")],
    max_tokens=1200,
    model="openai/gpt-4o-mini",
)

assistant = ContextService(
    name="assistant", features=[last_purchase, user_score, user_spend], prompts=[assistant_prompt]
)
'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1, help="x 1M rows, x 100k users and events")
    p.add_argument("--rounds", type=int, default=2, help="subprocesses per part, interleaved")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--part-timeout", type=float, default=1800, help="seconds per part, at most")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp repo (path is printed)")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.scale <= 0 or args.rounds < 1:
        p.error("--scale > 0 and --rounds >= 1")
    args.rows = round(1_000_000 * args.scale)
    args.users = max(round(100_000 * args.scale), 1)
    args.events = max(round(100_000 * args.scale), 1)
    return args


def part_setup(repo: Path, args: argparse.Namespace) -> dict:
    """offline.py's repo and data, the prompt view, and events with a question and an answer."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    gen = part_generate(repo, args)
    (repo / "prompts.py").write_text(PROMPTS)
    mat = part_materialize(repo)
    events = pq.read_table(repo / "events.parquet")
    rng = np.random.default_rng(args.seed)
    picks = rng.integers(len(QUESTIONS), size=events.num_rows)
    questions = pa.array([QUESTIONS[i] for i in picks])
    answers = pa.array([f"Thanks for asking; here is what I found ({i})." for i in picks])
    events = events.append_column("query", questions).append_column("answer", answers)
    pq.write_table(events, repo / "events.parquet")
    return {"generate_s": gen["wall_s"], "materialize_s": mat["wall_s"]}


def part_measure(repo: Path, part: str) -> dict:
    import pandas as pd

    import contextkit

    events = pd.read_parquet(repo / "events.parquet")  # a notebook holds its events in memory
    ctx = contextkit.connect(repo, workspace="prod")
    out = repo / f"out-{part}.{'parquet' if part == 'table' else 'jsonl'}"
    # Warm what every first call pays once per process (litellm's import and the tokenizer).
    ctx.generate_dataset(events.head(2), "assistant").to_arrow()
    began, cpu_began = time.perf_counter(), cpu_seconds()
    with PeakRSS() as mem:
        if part == "jsonl":
            dataset = ctx.generate_dataset(events, "assistant", label_column="answer")
            rows = dataset.to_jsonl(out).rows
        elif part == "table":
            dataset = ctx.generate_dataset(events, "assistant", label_column="answer")
            rows = dataset.to_parquet(out).rows
        elif part == "features":
            rows = ctx.get_features_for_events(events, "assistant").to_arrow().num_rows
        else:
            rows = baseline(ctx, events, out)
    wall = time.perf_counter() - began
    chars = None
    if part in ("jsonl", "baseline"):
        with out.open() as f:
            lengths = [len(json.loads(line)["messages"][0]["content"]) for line in f]
        chars = statistics.mean(lengths)
    return {
        "wall_s": wall,
        "cpu_s": cpu_seconds() - cpu_began,
        "rows": rows,
        "system_chars": chars,
        "rss_before": mem.before,
        "rss_peak": mem.peak,
        "ru_maxrss": ru_maxrss_bytes(),
    }


def baseline(ctx, events, out: Path) -> int:
    """Plain jinja2 over the point-in-time features, the same JSON lines."""
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    system = env.from_string(SYSTEM)
    names = {
        "last_purchase": ["amount", "category"],
        "user_score": ["score"],
        "user_spend": [
            "amount_sum_1d",
            "amount_sum_7d",
            "amount_sum_30d",
            "amount_count_7d",
            "amount_count_30d",
        ],
    }
    rows = 0
    with out.open("w") as f:
        for batch in ctx.get_features_for_events(events, "assistant").to_batches():
            columns = batch.to_pydict()
            lines = []
            for i in range(batch.num_rows):
                features = {v: {n: columns[f"{v}__{n}"][i] for n in ns} for v, ns in names.items()}
                content = system.render(features=features, request={"channel": "chat"}).strip()
                messages = [
                    {"role": "system", "content": content},
                    {"role": "user", "content": columns["query"][i]},
                    {"role": "assistant", "content": columns["answer"][i]},
                ]
                lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
            f.write("\n".join(lines) + "\n")
            rows += batch.num_rows
    return rows


def part_verify(repo: Path) -> dict:
    problems = []
    with (repo / "out-jsonl.jsonl").open() as a, (repo / "out-baseline.jsonl").open() as b:
        ours, theirs = a.read().splitlines(), b.read().splitlines()
    if len(ours) != len(theirs):
        problems.append(f"{len(ours)} lines vs {len(theirs)} in the baseline")
    for i, (x, y) in enumerate(zip(ours, theirs, strict=False)):
        if json.loads(x)["messages"][0] != json.loads(y)["messages"][0]:
            problems.append(f"line {i}: the system messages differ")
            break
    return {"problems": problems}


def run_part(part: str, repo: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--part", part, "--repo", str(repo),
        "--scale", str(args.scale), "--seed", str(args.seed),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.part_timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"part {part!r} ran over {args.part_timeout:.0f}s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"part {part!r} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1].removeprefix("RESULT "))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.part:
        if args.part == "setup":
            result = part_setup(args.repo, args)
        elif args.part == "verify":
            result = part_verify(args.repo)
        else:
            result = part_measure(args.repo, args.part)
        print("RESULT " + json.dumps(result))
        return 0
    out = console()
    out.print(f"[bold]contextkit dataset generation benchmark[/]  {machine_line()}")
    tmp = Path(tempfile.mkdtemp(prefix="ck-bench-datasets-"))
    repo = tmp / "repo"
    try:
        setup = run_part("setup", repo, args)
        out.print(
            f"data: {args.rows:,} rows over {args.users:,} users, {args.events:,} events; "
            f"generated in {setup['generate_s']:.1f}s, materialized in "
            f"{setup['materialize_s']:.1f}s"
        )
        load_before = os.getloadavg()
        runs: dict[str, list[dict]] = {p: [] for p in PARTS}
        for round_ in range(args.rounds):
            for part in PARTS:
                r = run_part(part, repo, args)
                runs[part].append(r)
                out.print(
                    f"  round {round_ + 1}  {part:<9} {r['wall_s']:.2f}s  "
                    f"{r['rows'] / r['wall_s']:,.0f} rows/s  CPU {r['cpu_s']:.2f}s  "
                    f"peak RSS {fmt_mib(r['rss_peak'])}  load {os.getloadavg()[0]:.1f}"
                )
        load_after = os.getloadavg()
        problems = run_part("verify", repo, args)["problems"]
        report(out, runs, problems)
        out.print(f"load average (1 min) {load_before[0]:.2f} before / {load_after[0]:.2f} after")
        if args.json:
            dump = {"machine": machine_line(), "scale": args.scale, "setup": setup, "runs": runs}
            args.json.write_text(json.dumps({**dump, "problems": problems}, indent=2))
        return 1 if problems else 0
    finally:
        if args.keep:
            out.print(f"kept: {repo}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(out, runs: dict[str, list[dict]], problems: list[str]) -> None:
    from rich.table import Table

    med = {p: statistics.median(r["wall_s"] for r in rs) for p, rs in runs.items()}
    table = Table(title="generate_dataset: 1 KB chat template, 1,200-token budget (medians)")
    for column in ("part", "rows", "wall s", "rows/s", "vs plain jinja2", "CPU s", "peak RSS"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part, rs in runs.items():
        rows = rs[0]["rows"]
        table.add_row(
            part,
            f"{rows:,}",
            f"{med[part]:.2f}",
            f"{rows / med[part]:,.0f}",
            ratio(med[part], med["baseline"]) if part != "features" else "-",
            f"{statistics.median(r['cpu_s'] for r in rs):.2f}",
            fmt_mib(max(r["rss_peak"] for r in rs)),
        )
    out.print(table)
    chars = runs["jsonl"][0]["system_chars"]
    out.print(f"rendered system message: {chars:,.0f} characters on average")
    out.print(
        "outputs: "
        + ("[green]the system messages equal the baseline's[/]" if not problems else "")
        + "; ".join(problems)
    )


if __name__ == "__main__":
    sys.exit(main())
