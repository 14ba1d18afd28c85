"""CLI startup: wall time of ``contextkit --help`` (the console script) against the 0.5 s target.

Runs the script ``--runs`` times in fresh subprocesses (after one untimed warm-up run that fills
the page cache) and reports min / median / max next to two baselines from the same run: the bare
interpreter (``python -c pass``) and ``python -c "import typer"`` (the CLI framework alone). When
the median misses the target (or with ``--importtime``), ``python -X importtime`` shows the
modules that cost the most.

    python bench/cli_startup.py
    python bench/cli_startup.py --runs 20 --importtime
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import console, machine_line, ratio, verdict

TARGET_S = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="timed runs per command")
    p.add_argument("--target", type=float, default=TARGET_S, help="seconds")
    p.add_argument("--importtime", action="store_true", help="always show the import profile")
    p.add_argument("--top", type=int, default=15, help="rows of the import profile")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")
    return args


def script_path() -> Path:
    script = Path(sys.executable).with_name("contextkit")
    if not script.exists():
        raise SystemExit(f"error: console script not found next to the interpreter: {script}")
    return script


def cached_env(cache_dir: str) -> dict[str, str]:
    """This environment with .pyc caching on, in a private folder (nothing written to the repo)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache_dir
    return env


def time_runs(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    # One untimed run first: fills the page cache and (where enabled) the bytecode cache.
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, timeout=60)
    out = []
    for _ in range(runs):
        began = time.perf_counter()
        proc = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=60
        )
        out.append(time.perf_counter() - began)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {proc.stderr!r}")
    return out


def import_profile(script: Path, env: dict[str, str]) -> list[tuple[int, int, int, str]]:
    """``(self_us, cumulative_us, depth, module)`` per import of ``contextkit --help``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "--help"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60, env=env,
    )  # fmt: skip
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cum_us, name = line.removeprefix("import time:").split("|", 2)
        depth = (len(name) - len(name.lstrip(" "))) // 2
        rows.append((int(self_us), int(cum_us), depth, name.strip()))
    return rows


def main(argv: list[str] | None = None) -> int:
    from rich.table import Table

    args = parse_args(argv)
    out = console()
    out.print(f"[bold]contextkit CLI startup benchmark[/]  {machine_line()}")
    script = script_path()
    load_before = os.getloadavg()
    commands = {
        "contextkit --help": [str(script), "--help"],
        'baseline: python -c "import typer"': [sys.executable, "-c", "import typer"],
        "baseline: python -c pass": [sys.executable, "-c", "pass"],
    }
    with tempfile.TemporaryDirectory(prefix="ck-bench-pycache-") as cache_dir:
        env = cached_env(cache_dir)
        times = {label: time_runs(cmd, args.runs, env) for label, cmd in commands.items()}
        # What-if: typer's plain (click) help instead of its rich-rendered help.
        label = "what-if: contextkit --help, TYPER_USE_RICH=0"
        times[label] = time_runs(commands["contextkit --help"], args.runs,
                                 {**env, "TYPER_USE_RICH": "0"})  # fmt: skip
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            # This shell disables .pyc writes: show what that costs, too.
            label = "contextkit --help, PYTHONDONTWRITEBYTECODE=1 as set here"
            times[label] = time_runs(commands["contextkit --help"], args.runs, dict(os.environ))
        load_after = os.getloadavg()
        median = statistics.median(times["contextkit --help"])
        rows = import_profile(script, env) if args.importtime or median >= args.target else None

    table = Table(
        title=f"Startup wall time in seconds, {args.runs} runs each after 1 warm-up run "
        "(bytecode cache on, in a temp PYTHONPYCACHEPREFIX)",
        title_justify="left",
    )
    for col in ("command", "min", "median", "max", "target", "median / target",
                "median / python", "result"):  # fmt: skip
        table.add_column(col, justify="left" if col == "command" else "right")
    floor = statistics.median(times["baseline: python -c pass"])
    for label, samples in times.items():
        med = statistics.median(samples)
        is_target = "contextkit --help" in label
        table.add_row(
            label, f"{min(samples):.3f}", f"{med:.3f}", f"{max(samples):.3f}",
            f"< {args.target}" if is_target else "", ratio(med, args.target) if is_target else "",
            ratio(med, floor), verdict(med, args.target) if is_target else "",
        )  # fmt: skip
    out.print(table)
    load = f"load average (1 min) {load_before[0]:.2f} before / {load_after[0]:.2f} after"
    if max(load_before[0], load_after[0]) > 1.5:
        load += f" [bold yellow]- other processes shared the {os.cpu_count()} cores[/]"
    out.print(load)

    if rows is not None:
        total = sum(r[0] for r in rows)
        top_level = sorted((r for r in rows if r[2] == 0), key=lambda r: -r[1])[: args.top]
        by_self = sorted(rows, key=lambda r: -r[0])[: args.top]
        prof = Table(
            title=f"python -X importtime contextkit --help: {total / 1e6:.3f} s in imports "
            "(one run; cumulative = with everything it imports)",
            title_justify="left",
        )
        for col in ("top-level import", "cumulative ms", "share", "|", "module (by self time)",
                    "self ms"):  # fmt: skip
            prof.add_column(col, justify="left" if "module" in col or "import" in col else "right")
        for i in range(max(len(top_level), len(by_self))):
            a = top_level[i] if i < len(top_level) else None
            b = by_self[i] if i < len(by_self) else None
            prof.add_row(
                a[3] if a else "", f"{a[1] / 1e3:.1f}" if a else "",
                f"{a[1] / total:.0%}" if a else "", "|",
                b[3] if b else "", f"{b[0] / 1e3:.1f}" if b else "",
            )  # fmt: skip
        out.print(prof)
    return 0


if __name__ == "__main__":
    sys.exit(main())
