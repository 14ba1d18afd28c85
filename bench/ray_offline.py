"""Point-in-time joins on Ray vs the local engine: time and the driver's peak memory.

Builds a repo in a temp dir: one source of ``--rows`` activity rows over ``--users`` users (180
days), an attribute view with a ttl and an aggregate view (sums and counts over 1, 7 and 30 days),
materialized once. Events (random users, 1% unknown, random times in the last 90 days, in random
order) are written to Parquet files and given to ``get_features_for_events`` as a path, so the
driver never holds them as a DataFrame; the result is written with ``to_parquet`` (streamed).

Each measured run is its own Python subprocess, so its peak RSS (``ru_maxrss`` and a 5 ms psutil
sampler) is the driver's alone; Ray's workers are other processes. Also reported: the peak of RSS
less shared pages ("private"): pages of Ray's object store (shared memory) that the driver maps
count in its RSS but are the node's. Since 2026-12-07 the driver only plans: the tasks read the
events' files themselves and write their results to Parquet in the offline store's scratch
folder; the driver reads those back one range of rows at a time while writing the output:

* ``local``: the local engine (DuckDB in the process), ``--events`` events;
* ``ray``: ``compute: {engine: ray, address: <this bench's cluster>}``, the same events; the
  cluster (``ray start --head --block --num-cpus N``, started by this script on free ports and
  killed by pid at the end) is up before the run, and the time to join it is reported apart;
* ``ray`` at ``--scale-events`` (default 4x) events: the driver's memory must stay flat.

Both 1x outputs are compared (every column; sums of doubles within 1e-9 relative: see
docs/compute.md) before any number is reported.

    python bench/ray_offline.py                         # 1,000,000 and 4,000,000 events
    python bench/ray_offline.py --events 50000 --rows 100000 --users 10000   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import console, fmt_mib, load_line, machine_line, ratio

END = datetime(2024, 6, 1, tzinfo=UTC)
WORKSPACE = "prod"
VIEWS = ("user_score", "user_spend")

DEFS = """\
from datetime import timedelta
from contextkit import Aggregate, Attribute, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"])
activity = FileSource(name="activity", path="data/activity.parquet", timestamp_field="ts")


@batch_feature_view(sources=[activity], entities=[user], mode="sql",
                    features=[Attribute("score"), Attribute("category")], ttl=timedelta(days=7))
def user_score(activity):
    return f"SELECT user_id, score, category, ts FROM {activity}"


@batch_feature_view(sources=[activity], entities=[user], mode="sql", features=[
    Aggregate(column="amount", function="sum", time_window=timedelta(days=1)),
    Aggregate(column="amount", function="sum", time_window=timedelta(days=7)),
    Aggregate(column="amount", function="sum", time_window=timedelta(days=30)),
    Aggregate(column="amount", function="count", time_window=timedelta(days=30)),
])
def user_spend(activity):
    return f"SELECT user_id, amount, ts FROM {activity}"
"""
CONFIG = """\
project: bench_ray_offline
registry: .contextkit/registry.db
online_store: {type: sqlite, path: .contextkit/online.db}
offline_store: {type: parquet, path: .contextkit/offline}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000, help="events of the 1x runs")
    p.add_argument("--scale-events", type=int, default=4, help="the last Ray run has N x events")
    p.add_argument("--rows", type=int, default=1_000_000, help="activity rows")
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the bench's Ray head node")
    p.add_argument("--partitions", type=int, default=None, help="default: 2 x the cluster's")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sink", choices=("parquet", "batches"), default="parquet",
                   help="write to_parquet, or read to_batches() and drop them")  # fmt: skip
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (path is printed)")
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: one run in this child process
    p.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--events-path", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- the data -------------------------------------------------------------------------------------
def generate(repo: Path, args: argparse.Namespace) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(args.seed)
    end_us = int(END.timestamp()) * 1_000_000
    day_us = 86_400 * 1_000_000
    (repo / "data").mkdir(parents=True, exist_ok=True)
    (repo / "contextkit.yaml").write_text(CONFIG)
    (repo / "features.py").write_text(DEFS)
    n = args.rows
    categories = pa.array(["books", "games", "garden", "music", "toys"])
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(rng.integers(1, args.users + 1, size=n)),
                "amount": pa.array(np.round(rng.lognormal(3.0, 1.0, size=n), 2)),
                "category": pc.take(categories, pa.array(rng.integers(5, size=n))),
                "score": pa.array(rng.random(n)),
                "ts": pa.array(
                    np.sort(end_us - 1 - rng.integers(0, 180 * day_us, size=n)),
                    pa.timestamp("us", tz="UTC"),
                ),
            }
        ),
        repo / "data" / "activity.parquet",
    )


def write_events(folder: Path, count: int, args: argparse.Namespace) -> str:
    """``count`` events as Parquet files of 1M rows at most; returns their glob."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(args.seed + count)
    end_us = int(END.timestamp()) * 1_000_000
    day_us = 86_400 * 1_000_000
    folder.mkdir(parents=True, exist_ok=True)
    step = 1_000_000
    for i, start in enumerate(range(0, count, step)):
        n = min(step, count - start)
        users = rng.integers(1, int(args.users * 1.01) + 1, size=n)  # ~1% unknown users
        pq.write_table(
            pa.table(
                {
                    "user_id": pa.array(users),
                    "ts": pa.array(
                        end_us - 1 - rng.integers(0, 90 * day_us, size=n),
                        pa.timestamp("us", tz="UTC"),
                    ),
                    "label": pa.array(rng.integers(0, 2, size=n)),
                }
            ),
            folder / f"events-{i:04d}.parquet",
        )
    return str(folder / "events-*.parquet")


# -- the Ray cluster of this bench ----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def start_cluster(folder: Path, cpus: int) -> tuple[subprocess.Popen, str]:
    """``ray start --head --block`` on free ports in its own process group; waits until a
    driver can join it (readiness, not a sleep)."""
    binary = str(Path(sys.executable).parent / "ray")
    port = free_port()
    args = [binary, "start", "--head", "--block", "--port", str(port), "--num-cpus", str(cpus)]
    args += ["--include-dashboard=false", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    args += ["--temp-dir", str(folder / "ray")]
    for flag in ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                 "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--runtime-env-agent-port"):  # fmt: skip
        args += [flag, str(free_port())]
    head = subprocess.Popen(
        args,
        stdout=(folder / "head.log").open("w"),
        stderr=subprocess.STDOUT,
        env=ray_env(),
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    probe = f"import ray; ray.init(address={address!r}, log_to_driver=False); print(ray.nodes())"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited: {(folder / 'head.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.2)
            continue
        done = subprocess.run(
            [sys.executable, "-c", probe], env=ray_env(), capture_output=True, timeout=300
        )
        if done.returncode == 0:
            return head, address
        time.sleep(1)
    raise RuntimeError("the bench's Ray head did not come up within 300 s")


def stop_cluster(head: subprocess.Popen) -> None:
    """SIGKILL the head's process group (its raylet, GCS and workers): never `ray stop`, which
    would stop the other clusters on this machine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=30)


# -- one measured run (child process) -------------------------------------------------------------
class PeakRSS:
    """This process's memory sampled every 5 ms in a thread, in bytes: ``peak`` RSS, and
    ``peak_private``, RSS less its shared pages (on Ray, the pages of the node's object store
    that the driver has mapped and touched count in RSS, though they are not its own memory)."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.peak = self.peak_private = 0
        self._sample()
        self.start_private = self.peak_private  # before the run: imports, a joined cluster
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        info = self._proc.memory_info()
        self.peak = max(self.peak, info.rss)
        self.peak_private = max(self.peak_private, info.rss - info.shared)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.005)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_part(args: argparse.Namespace) -> None:
    import resource

    import contextkit
    from contextkit.config import ComputeConfig

    ctx = contextkit.connect(args.repo, workspace=WORKSPACE)
    connect_s = 0.0
    if args.part == "ray":
        from contextkit.compute.ray.runtime import connect

        ctx.runtime.config.compute = ComputeConfig(
            engine="ray", address=args.address, partitions=args.partitions
        )
        began = time.perf_counter()
        connect(ctx.runtime.config.compute)
        connect_s = time.perf_counter() - began
    result = ctx.get_features_for_events(args.events_path, list(VIEWS), from_source=False)
    with PeakRSS() as rss:
        began = time.perf_counter()
        if args.sink == "parquet":
            result.to_parquet(args.out)
        else:
            for _batch in result.to_batches():
                pass
        seconds = time.perf_counter() - began
    peak = max(rss.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "peak_private": rss.peak_private,
                      "start_private": rss.start_private, "connect_s": connect_s}))  # fmt: skip


def child(args: argparse.Namespace, part: str, events: str, out: Path, address: str | None):
    cmd = [sys.executable, __file__, "--part", part, "--repo", str(args.repo)]
    cmd += ["--events-path", events, "--out", str(out)]
    if address:
        cmd += ["--address", address]
    if args.partitions:
        cmd += ["--partitions", str(args.partitions)]
    cmd += ["--sink", args.sink]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ray_env(), timeout=3600)
    if done.returncode:
        raise RuntimeError(f"{part} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_output(local: Path, on_ray: Path) -> None:
    import pandas as pd
    import pyarrow.parquet as pq

    a, b = pq.read_table(local).to_pandas(), pq.read_table(on_ray).to_pandas()
    assert list(a.columns) == list(b.columns) and a.dtypes.equals(b.dtypes), "columns differ"
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.part:
        run_part(args)
        return
    out = console()
    work = Path(tempfile.mkdtemp(prefix="ckrayoff-", dir="/tmp"))  # short: Ray's sockets
    args.repo = work / "repo"
    head = None
    try:
        import contextkit

        began = time.perf_counter()
        generate(args.repo, args)
        ctx = contextkit.connect(args.repo, workspace=WORKSPACE)
        ctx.create_workspace(WORKSPACE, live=True)
        ctx.apply(ctx.plan(args.repo))
        ctx.materialize(end=END)
        ctx.close()
        small = write_events(work / "events-1x", args.events, args)
        big_n = args.events * args.scale_events
        big = write_events(work / "events-nx", big_n, args)
        out.print(f"setup {time.perf_counter() - began:.0f} s ({args.rows:,} rows, {args.users:,} "
                  f"users, events {args.events:,} and {big_n:,})")  # fmt: skip
        head, address = start_cluster(work, args.cpus)
        load_before = os.getloadavg()
        runs = {
            "local": child(args, "local", small, work / "local.parquet", None),
            "ray": child(args, "ray", small, work / "ray.parquet", address),
            "ray_nx": child(args, "ray", big, work / "ray-nx.parquet", address),
        }
        load_after = os.getloadavg()
        if args.sink == "parquet":
            same_output(work / "local.parquet", work / "ray.parquet")
        report(out, args, runs, big_n, load_before, load_after)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine_line(), "runs": runs}, indent=2))
    finally:
        if head is not None:
            stop_cluster(head)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(out, args, runs, big_n, load_before, load_after) -> None:
    from rich.table import Table

    local, on_ray, big = runs["local"], runs["ray"], runs["ray_nx"]
    out.print(machine_line())
    table = Table(title=f"point-in-time join of {args.events:,} events, to_{args.sink}()")
    for name in ("engine", "events", "wall s", "vs local", "driver peak RSS", "vs local",
                 "peak private", "vs local"):  # fmt: skip
        table.add_column(name, justify="right")
    rows = [("local", args.events, local), (f"ray ({args.cpus} CPUs)", args.events, on_ray),
            (f"ray ({args.cpus} CPUs)", big_n, big)]  # fmt: skip
    for name, events, run in rows:
        table.add_row(
            name, f"{events:,}", f"{run['seconds']:.1f}", ratio(run["seconds"], local["seconds"]),
            fmt_mib(run["peak_rss"]), ratio(run["peak_rss"], local["peak_rss"]),
            fmt_mib(run["peak_private"]), ratio(run["peak_private"], local["peak_private"]),
        )  # fmt: skip
    out.print(table)
    out.print(
        f"driver on Ray, {big_n:,} vs {args.events:,} events: peak RSS "
        f"{ratio(big['peak_rss'], on_ray['peak_rss'])}, peak private memory (RSS less shared "
        f"pages: the object store's) {ratio(big['peak_private'], on_ray['peak_private'])}, "
        f"private memory added during the run "
        f"{fmt_mib(on_ray['peak_private'] - on_ray['start_private'])} -> "
        f"{fmt_mib(big['peak_private'] - big['start_private'])}; "
        f"joining the cluster took {on_ray['connect_s']:.1f} s (not in the wall times); "
        + ("outputs equal" if args.sink == "parquet" else "results read with to_batches()")
    )
    out.print(load_line(load_before, load_after, "the runs", own=float(args.cpus)))


if __name__ == "__main__":
    main()
