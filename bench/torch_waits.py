"""Torch's OpenMP threads as torch leaves them (idle threads spin ~3 ms before they sleep) vs
as contextkit loads torch (``GOMP_SPINCOUNT=10000``, ``embeddings.encoders.import_torch``), with
the machine as it is and with busy processes beside it.

Each measurement is a fresh process (OpenMP reads its settings once, when torch loads):
``default`` imports torch before contextkit loads the model, so torch keeps its settings;
``contextkit`` lets contextkit load it; ``--also`` adds processes with other settings in the
environment (``passive``: ``OMP_WAIT_POLICY=PASSIVE``; ``spin N``: ``GOMP_SPINCOUNT=N``). Per
process: ``--queries`` single-query encodes of the packaged all-MiniLM-L6-v2 on torch
(``encode_query``, query cache off, a 2 ms pause before each, as requests arrive in a server) and
one batch encode of ``--docs`` eval-set documents (batches of 32). The processes take turns,
``--rounds`` times, first with the machine as it is, then with ``--busy`` processes spinning on
the CPU (a loaded serving node). Reported: p50 of the single queries and documents per second,
median over rounds, and the ratio to the default.

    python bench/torch_waits.py --also passive       # ~8 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import console, keep_bench_folder_off_path, load_line, machine_line
from evalsets.build import load_set

keep_bench_folder_off_path()

EVALSETS = Path(__file__).resolve().parent / "evalsets"
ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
texts = json.loads(sys.stdin.read())
if sys.argv[1] == "default":
    import torch  # loaded before contextkit: OpenMP keeps torch's defaults
import numpy as np
from contextkit.embeddings import SentenceTransformerEncoder
enc = SentenceTransformerEncoder(query_cache_size=0)
enc.encode(texts["queries"][:8])
for q in texts["queries"][:5]:
    enc.encode_query(q)
times = []
for q in texts["queries"][5:]:
    time.sleep(0.002)
    started = time.perf_counter()
    enc.encode_query(q)
    times.append(time.perf_counter() - started)
started = time.perf_counter()
enc.encode(texts["docs"])
print(json.dumps({"query_ms": float(np.median(times)) * 1e3,
                  "docs_per_s": len(texts["docs"]) / (time.perf_counter() - started)}))
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--queries", type=int, default=40, help="single-query encodes per process")
    p.add_argument("--docs", type=int, default=256, help="documents in the batch encode")
    p.add_argument("--busy", type=int, default=2, help="spinning processes for the loaded runs")
    p.add_argument(
        "--also",
        default="",
        help="more settings, comma-separated: passive, 'spin N' (GOMP_SPINCOUNT)",
    )
    return p.parse_args()


def child(mode: str, texts: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(ROOT)
    if mode == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif mode.startswith("spin "):
        env["GOMP_SPINCOUNT"] = mode.split()[1]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def spin() -> None:
    while True:
        pass


def measure(texts: dict, rounds: int, modes: list[str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {mode: [] for mode in modes}
    for r in range(rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            out[mode].append(child(mode, texts))
    return out


def main() -> None:
    args = parse_args()
    docs, queries = load_set(EVALSETS / "stdlib-docstrings")
    texts = {
        "queries": [q["query"] for q in queries[: args.queries + 5]],
        "docs": [d["text"] for d in docs[: args.docs]],
    }
    out = console()
    out.print(machine_line())
    modes = ["default", "contextkit", *filter(None, args.also.split(","))]
    results = {}
    before = os.getloadavg()
    results["as it is"] = measure(texts, args.rounds, modes)
    out.print(load_line(before, os.getloadavg(), "the rounds on the machine as it is", 1.0))
    busy = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    try:
        before = os.getloadavg()
        results[f"+{args.busy} busy"] = measure(texts, args.rounds, modes)
        after = os.getloadavg()
    finally:
        for p in busy:
            p.terminate()
    own = 1.0 + args.busy
    out.print(load_line(before, after, f"the rounds with {args.busy} busy processes", own))
    out.print(
        "| machine | OpenMP setting | one query p50 ms | vs default | batch docs/s | vs default |"
    )
    out.print("|---|---|---:|---:|---:|---:|")
    for machine, by_mode in results.items():
        base_q = statistics.median(m["query_ms"] for m in by_mode["default"])
        base_d = statistics.median(m["docs_per_s"] for m in by_mode["default"])
        for mode in modes:
            label = {"default": "torch's default", "contextkit": "as contextkit loads it"}.get(
                mode, mode
            )
            q = statistics.median(m["query_ms"] for m in by_mode[mode])
            d = statistics.median(m["docs_per_s"] for m in by_mode[mode])
            out.print(
                f"| {machine} | {label} | {q:.2f} | {q / base_q:.2f}x | {d:.1f} "
                f"| {d / base_d:.2f}x |"
            )


if __name__ == "__main__":
    main()
