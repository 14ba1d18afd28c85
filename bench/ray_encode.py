"""Embedding-view encoding on Ray Data (2 CPU actors) vs the local engine, in one run.

Generates ``--docs`` short product descriptions (one or two sentences, ~25-40 model tokens;
seeded), writes two identical repos in a temp dir (one embedding view, ``model`` = the packaged
all-MiniLM-L6-v2 by default, or ``--model hash`` to time the engines without a model), one with
``compute: local`` and one with ``compute: {engine: ray, address: <head>, embedding:
{batch_size: B, concurrency: 2}}``, and starts a Ray head node of its own (``ray start --head
--num-cpus 2`` on a free port, in the temp dir; stopped at the end by killing its processes by
pid, never ``ray stop``). Then it materializes the view in each repo into an empty vector table
(``full``), the local engine first, and prints per engine:

* job wall time and docs/s (the whole job: read, plan, encode, LanceDB commit, indexes);
* time to the first encoded batch (Ray: connecting, shipping the texts, starting two actors,
  each loading the model) and the steady rate after it (docs between the first and the last
  progress report over the time between them);
* the ratio Ray / local for both, and the largest difference between the two tables' vectors.

On a 2-core machine two CPU actors use the same two cores as the local engine's two torch
threads, so this measures Ray's overhead, not a speed-up: see bench/README.md.

    python bench/ray_encode.py                     # 20,000 docs: ~5-10 min on 2 idle cores
    python bench/ray_encode.py --docs 2000         # ~1-2 min
    python bench/ray_encode.py --model hash        # the engines' own cost, no model
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import console, keep_bench_folder_off_path, load_line, machine_line, ratio

keep_bench_folder_off_path()

VIEW = "doc_text"
DEFS = """\
from contextkit import EmbeddingView, Entity, FileSource

doc = Entity(name="doc", join_keys=["doc_id"])
docs = FileSource(name="docs", path="data/docs.parquet", timestamp_field="updated_at")

doc_text = EmbeddingView(
    name="doc_text", source=docs, entities=[doc], text="body", model="{model}",
    metadata=["category"],
)
"""
ADJECTIVES = ["light", "sturdy", "compact", "quiet", "warm", "waterproof", "foldable", "classic"]
THINGS = ["running shoe", "winter jacket", "coffee grinder", "garden hose", "desk lamp", "backpack"]
USES = ["daily commutes", "long trails", "small kitchens", "rainy weekends", "home offices"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=20_000, help="documents to encode")
    p.add_argument("--model", choices=["minilm", "hash"], default="minilm")
    p.add_argument("--batch-size", type=int, default=256, help="rows per Ray Data batch")
    p.add_argument("--actors", type=int, default=2, help="encoder actors (= CPUs of the head)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (path is printed)")
    args = p.parse_args(argv)
    if args.docs < 10 or args.batch_size < 1 or args.actors < 1:
        p.error("--docs >= 10, --batch-size >= 1 and --actors >= 1 are required")
    return args


def documents(n: int, seed: int):
    import pyarrow as pa

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        thing = rng.choice(THINGS)
        body = f"A {rng.choice(ADJECTIVES)} {thing} for {rng.choice(USES)}, model {i}."
        if rng.random() < 0.5:
            body += f" It is {rng.choice(ADJECTIVES)} and weighs {rng.randint(1, 900)} grams."
        rows.append({"doc_id": f"d{i:06d}", "body": body, "category": thing, "updated_at": 0})
    schema = pa.schema(
        [
            ("doc_id", pa.string()),
            ("body", pa.string()),
            ("category", pa.string()),
            ("updated_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    return pa.Table.from_pylist(rows, schema)


def write_repo(root: Path, table, model: str, compute: str):
    import pyarrow.parquet as pq

    import contextkit

    (root / "data").mkdir(parents=True)
    (root / "contextkit.yaml").write_text(
        f"project: rayencode\nmodels:\n  hash: {{type: hash, dimension: 384}}\ncompute: {compute}\n"
    )
    (root / "defs.py").write_text(textwrap.dedent(DEFS.format(model=model)))
    pq.write_table(table, root / "data" / "docs.parquet")
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    return ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head:
    """A Ray head node of this run (``ray start --head --block``), stopped by pid."""

    def __init__(self, base: Path, cpus: int) -> None:
        self.port = free_port()
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        ray = Path(sys.executable).parent / "ray"
        self.log = (base / "head.log").open("w")
        self.proc = subprocess.Popen(
            [str(ray), "start", "--head", "--block", "--num-cpus", str(cpus), "--port",
             str(self.port), "--node-ip-address", "127.0.0.1", "--include-dashboard=false",
             "--disable-usage-stats", "--temp-dir", str(base / "ray")],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )  # fmt: skip

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"ray start exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"the Ray head did not listen on {self.port} within {timeout_s:.0f} s")

    def stop(self) -> None:
        import psutil

        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()


def run(ctx, n: int) -> dict:
    reports: list[tuple[float, int]] = []
    began = time.perf_counter()

    def on_progress(_view, p) -> None:
        reports.append((time.perf_counter() - began, p.documents_done))

    [job] = ctx.materialize([VIEW], full=True, on_progress=on_progress)
    wall = time.perf_counter() - began
    assert job.status == "succeeded", job
    assert job.details["texts_encoded"] == n, job.details
    first_t, first_docs = reports[0]
    last_t, last_docs = reports[-1]
    steady = (last_docs - first_docs) / (last_t - first_t) if last_t > first_t else float("nan")
    return {
        "wall_s": wall,
        "docs_per_s": n / wall,
        "first_batch_s": first_t,
        "steady_docs_per_s": steady,
        "encode_s": job.details["encode_seconds"],
        "engine": job.details.get("engine"),
        "ray": job.details.get("ray"),
    }


def vectors(ctx):
    import lancedb
    import numpy as np

    from contextkit.compute.layout import vector_table

    table = lancedb.connect(str(ctx.vectors.uri)).open_table(vector_table("prod", VIEW))
    data = table.to_arrow().select(["id", "vector"]).sort_by("id")
    return data.column("id").to_pylist(), np.asarray(data.column("vector").to_pylist(), np.float32)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = console()
    base = Path(tempfile.mkdtemp(prefix="ck-rayenc-", dir="/tmp"))
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the driver of this run's own head node
    head = Head(base, args.actors)
    try:
        table = documents(args.docs, args.seed)
        ray_compute = (
            f"{{engine: ray, address: '{head.address}', embedding: "
            f"{{batch_size: {args.batch_size}, concurrency: {args.actors}}}}}"
        )
        local = write_repo(base / "local", table, args.model, "local")
        remote = write_repo(base / "ray", table, args.model, ray_compute)
        head.wait()
        if args.model == "minilm":  # the local model loaded before anything is timed
            from contextkit.embeddings import get_encoder

            get_encoder("minilm").encode(["warm up"])
        load_before = os.getloadavg()
        results = {"local": run(local, args.docs), "ray": run(remote, args.docs)}
        load_after = os.getloadavg()
        ids_l, vec_l = vectors(local)
        ids_r, vec_r = vectors(remote)
        assert ids_l == ids_r, "the engines wrote different ids"
        max_diff = float(abs(vec_l - vec_r).max())
    finally:
        head.stop()
        if args.keep:
            out.print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    from rich.table import Table

    out.print(machine_line())
    grid = Table(
        title=f"{args.docs:,} docs, model {args.model}, Ray: {args.actors} CPU actors, "
        f"batches of {args.batch_size}"
    )
    for col in ("engine", "job wall s", "docs/s", "first batch s", "steady docs/s", "vs local"):
        grid.add_column(col, justify="right")
    local_r, ray_r = results["local"], results["ray"]
    for name, r in results.items():
        grid.add_row(
            name,
            f"{r['wall_s']:.1f}",
            f"{r['docs_per_s']:.0f}",
            f"{r['first_batch_s']:.1f}",
            f"{r['steady_docs_per_s']:.0f}",
            ""
            if name == "local"
            else f"{ratio(r['docs_per_s'], local_r['docs_per_s'])} "
            f"(steady {ratio(r['steady_docs_per_s'], local_r['steady_docs_per_s'])})",
        )
    out.print(grid)
    out.print(f"same ids; largest |vector difference| Ray vs local: {max_diff:.2e}")
    out.print(load_line(load_before, load_after, "the two runs"))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "docs": args.docs,
                    "model": args.model,
                    "results": results,
                    "max_vector_diff": max_diff,
                    "load": [load_before, load_after],
                    "ray_over_local": ray_r["docs_per_s"] / local_r["docs_per_s"],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
