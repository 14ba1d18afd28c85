"""Helpers shared by the benchmark scripts: build the quickstart, summarise timings, print tables.

Not a benchmark itself; ``bench/online.py`` and ``bench/materialize.py`` import it (each script's
own folder is first on ``sys.path`` when run as ``python bench/<name>.py``).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import statistics
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = REPO_ROOT / "examples" / "quickstart"
WORKSPACE = "prod"


def floor_hour(moment: datetime | None = None) -> datetime:
    """``moment`` (default: now, UTC) floored to the hour: the data's exclusive end."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def load_generator(repo: Path = QUICKSTART) -> ModuleType:
    """The quickstart's ``generate_data`` module, imported from its file."""
    path = repo / "generate_data.py"
    spec = importlib.util.spec_from_file_location("_ck_bench_generate_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_quickstart(dest: Path) -> Path:
    """Copy the quickstart repo (definitions only: no data, no .contextkit state) to ``dest``."""
    shutil.copytree(
        QUICKSTART,
        dest,
        ignore=shutil.ignore_patterns("data", ".contextkit", "__pycache__"),
    )
    return dest


def generate_data(
    repo: Path,
    *,
    users: int = 1000,
    products: int = 2000,
    orders: int = 50_000,
    articles: int = 200,
    seed: int = 7,
    end: datetime | None = None,
) -> dict[str, Path]:
    """Write the quickstart Parquet files into ``repo/data`` with the repo's own generator."""
    generator = load_generator(repo)
    return generator.generate(
        repo / "data",
        users=users,
        products=products,
        orders=orders,
        articles=articles,
        seed=seed,
        end=end or floor_hour(),
    )


def apply_quickstart(repo: Path, workspace: str = WORKSPACE):
    """Create the live workspace and apply the repo; returns the connected ``Context``."""
    import contextkit

    ctx = contextkit.connect(repo, workspace=workspace)
    ctx.create_workspace(workspace, live=True)
    ctx.apply(ctx.plan(repo))
    return ctx


@dataclass(frozen=True)
class Summary:
    """Latency summary of one series of samples, in milliseconds."""

    count: int
    p50: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of_ns(cls, samples_ns: list[int]) -> Summary:
        ms = sorted(s / 1e6 for s in samples_ns)
        return cls(
            count=len(ms),
            p50=percentile(ms, 50),
            p99=percentile(ms, 99),
            mean=statistics.fmean(ms),
            min=ms[0],
            max=ms[-1],
        )


def percentile(sorted_values: list[float], pct: float) -> float:
    """Linear-interpolated percentile of already sorted values (numpy's default method)."""
    if not sorted_values:
        return float("nan")
    rank = (len(sorted_values) - 1) * pct / 100
    lo = int(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


def ratio(measured: float, reference: float) -> str:
    if not reference or reference != reference:
        return "-"
    return f"{measured / reference:.2f}x"


def verdict(measured: float, target: float) -> str:
    """``met`` when ``measured`` is below the target (lower is better), else ``MISSED``."""
    return "[green]met[/]" if measured < target else "[bold red]MISSED[/]"


def machine_line() -> str:
    """One line naming the machine the numbers come from."""
    import contextkit

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} | {os.cpu_count()} cores | {cpu} | "
        f"Python {platform.python_version()} | contextkit {contextkit.__version__}"
    )


def console():
    from rich.console import Console

    # A fixed width keeps the tables readable when the output is piped into a file.
    return Console(width=max(150, shutil.get_terminal_size((150, 40)).columns))


def fmt_ms(value: float) -> str:
    return f"{value:.3f}"


def fmt_mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


def die(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def load_line(
    before: tuple[float, ...], after: tuple[float, ...], what: str, own: float = 2.0
) -> str:
    """The 1-minute load average around a measurement, flagged (rich markup) when it exceeds
    ``own`` (what the benchmark itself keeps busy: 2 for two torch threads or server + client)
    by more than half a core, i.e. when other work shared the cores."""
    line = f"load average (1 min) {before[0]:.2f} before / {after[0]:.2f} after {what}"
    if max(before[0], after[0]) > own + 0.5:
        line += (
            f" [bold yellow]- other processes shared the {os.cpu_count()} cores: wall times are "
            "inflated; compare the ratios within this run[/]"
        )
    return line


def keep_bench_folder_off_path() -> None:
    """Drop this folder from ``sys.path`` once a script has imported its siblings.

    ``python bench/x.py`` puts ``bench/`` first on the path, so a script named like an installed
    package shadows it (``bench/datasets.py``, since renamed, shadowed Hugging Face's
    ``datasets``: transformers probes for it, and lancedb then failed with ``cannot import name
    'Dataset'``).
    """
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != here]


def run_child(cmd: list[str], what: str, timeout: float) -> dict:
    """Run a benchmark part as its own Python process (``cmd``) and return the JSON it printed
    on its last ``RESULT {...}`` line; its failure or timeout raises, naming ``what``."""
    import json
    import subprocess

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} ran over {timeout:.0f}s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{what} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1].removeprefix("RESULT "))


def index_documents(enc: Any, docs: list[dict], prefix: str) -> Any:
    """A vector store in a new temporary folder (its name starting with ``prefix``) holding
    eval-set ``docs`` as one chunk per document, encoded with ``enc`` (384 dimensions), indexed
    for hybrid search in table ``t``: what the fusion, rerank and trainer scripts search."""
    import hashlib
    import tempfile

    import numpy as np
    import pyarrow as pa

    from contextkit.stores.vector import LanceVectorStore

    vectors = enc.encode([d["text"] for d in docs]).astype(np.float32)
    ids = [d["id"] for d in docs]
    digest = [hashlib.sha1(i.encode()).hexdigest() for i in ids]
    batch = pa.record_batch(
        {
            "id": pa.array([f"{i}#0" for i in ids]),
            "doc": pa.array(ids),
            "chunk_index": pa.array([0] * len(ids), pa.int32()),
            "char_offset": pa.array([0] * len(ids), pa.int64()),
            "text": pa.array([d["text"] for d in docs]),
            "content_hash": pa.array(digest),
            "row_hash": pa.array(digest),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384),
        }
    )
    store = LanceVectorStore(tempfile.mkdtemp(prefix=prefix))
    store.apply_changes("t", [batch], dim=384, key_columns=["doc"])
    store.ensure_indexes("t")
    return store
