"""Where the server's time goes: ``POST /v1/features`` under cProfile, inside the server process.

Builds the quickstart like ``bench/online.py``, starts the same app (``create_app(ctx)`` under
uvicorn, one worker, 127.0.0.1) in a child process with cProfile enabled, sends ``--requests``
sequential requests of ``--entities`` user ids, stops the server and prints the functions with
the most time per request. The profiler's clock is the process CPU time by default, so time the
server spends descheduled on a busy machine is not counted (``--clock wall`` to count it).
cProfile adds overhead per Python call: read the shares, not the absolute numbers.

    python bench/profile_server.py --entities 100 --requests 2000
    python bench/profile_server.py --entities 1 --top 40 --save server.prof
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import WORKSPACE, apply_quickstart, console, copy_quickstart, generate_data
from online import Server, free_port, key_batches, time_http


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entities", type=int, default=100, help="user ids per request")
    p.add_argument("--requests", type=int, default=2000, help="profiled requests")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--orders", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--top", type=int, default=25, help="rows per table")
    p.add_argument("--save", type=Path, help="also keep the pstats file here")
    # Internal: be the profiled server.
    p.add_argument("--serve", nargs=3, metavar=("REPO", "PORT", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


ENDPOINT = "/v1/features"


def route_endpoint(app: Any, method: str, path: str) -> Any:
    """The function that answers ``method path`` in a FastAPI app."""
    try:  # FastAPI >= 0.16x keeps included routers nested; this walks them
        from fastapi.routing import iter_route_contexts

        routes = list(iter_route_contexts(app.routes))
    except ImportError:  # older FastAPI: included routers' routes are copied into app.routes
        routes = list(app.routes)
    for route in routes:
        if getattr(route, "path", None) == path and method in getattr(route, "methods", ()):
            return route.endpoint
    raise RuntimeError(f"the app has no {method} {path} route")


def serve_profiled(repo: str, port: int, out: str, clock: str) -> None:
    import uvicorn

    import contextkit
    from contextkit.server.app import create_app

    app = create_app(contextkit.connect(repo, workspace=WORKSPACE), auth=False)
    # The endpoint function is found by its route, so the split below follows it when it moves
    # to another module: its code's (file, line, name) is its key in the profile.
    code = route_endpoint(app, "POST", ENDPOINT).__code__
    Path(out + ".endpoint.json").write_text(
        json.dumps([code.co_filename, code.co_firstlineno, code.co_name])
    )
    profiler = cProfile.Profile(time.process_time if clock == "cpu" else time.perf_counter)
    profiler.enable()
    try:
        uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")
    finally:
        profiler.disable()
        profiler.dump_stats(out)


class ProfiledServer(Server):
    def __init__(self, repo: Path, port: int, log_path: Path, out: Path, clock: str) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--clock", clock,
               "--serve", str(repo), str(port), str(out)]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )


def short(func: tuple[str, int, str]) -> str:
    path, line, name = func
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path}:{line})" if line else name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        repo, port, out = args.serve
        serve_profiled(repo, int(port), out, args.clock)
        return 0
    from rich.table import Table

    out = console()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="ck-bench-profile-"))
    repo = tmp / "quickstart"
    server = None
    try:
        copy_quickstart(repo)
        generate_data(repo, users=args.users, orders=args.orders, seed=args.seed)
        apply_quickstart(repo).materialize()
        prof_path = tmp / "server.prof"
        server = ProfiledServer(repo, free_port(), tmp / "server.log", prof_path, args.clock)
        server.wait_healthy(300)
        batches = key_batches(list(range(1, args.users + 1)), args.entities, 64, args.seed)
        began = time.perf_counter()
        samples, errors = time_http(server.port, batches, args.requests, 0)
        elapsed = time.perf_counter() - began
        if errors:
            raise RuntimeError(f"{errors} requests failed")
        server.stop()
        if not prof_path.exists():
            raise RuntimeError(f"the server wrote no profile; log:\n{server.log_tail()}")
        if args.save:
            shutil.copy(prof_path, args.save)
        stats = pstats.Stats(str(prof_path))
        n = len(samples) + 1  # + the checked request time_http sends first
        out.print(
            f"{n:,} requests of {args.entities} entities in {elapsed:.1f}s (profiled, so slower "
            f"than bench/online.py); profile clock: {args.clock}; total profiled "
            f"{stats.total_tt * 1e3 / n:.3f} ms per request"
        )
        entries = stats.stats  # type: ignore[attr-defined]
        total = stats.total_tt

        def cumulative(key: tuple[str, int, str], what: str) -> float:
            if key not in entries:  # a renamed function would print a silent 0 ms
                raise RuntimeError(f"{what} {short(key)} is not in the profile")
            return entries[key][3]

        from contextkit.retrieval.cache import read_features

        lookup_code = read_features.__code__
        endpoint_key = tuple(json.loads(Path(f"{prof_path}.endpoint.json").read_text()))
        endpoint = cumulative(endpoint_key, f"the {ENDPOINT} endpoint")
        lookup = cumulative(
            (lookup_code.co_filename, lookup_code.co_firstlineno, lookup_code.co_name),
            "the feature lookup",
        )
        out.print(
            f"per request: endpoint function {short(endpoint_key)} {endpoint * 1e3 / n:.3f} ms "
            f"({endpoint / total:.0%}; of which the lookup read_features, what ctx.get_features "
            f"runs, {lookup * 1e3 / n:.3f} ms, "
            f"{lookup / total:.0%}); HTTP stack (uvicorn, Starlette/FastAPI middleware, "
            f"socket writes) {(total - endpoint) * 1e3 / n:.3f} ms ({1 - endpoint / total:.0%})"
        )
        own = ("contextkit/", "stores/", "server/")
        for key, title, only_own in ((3, "cumulative", True), (2, "self (tottime)", False)):
            scope = "contextkit's own functions" if only_own else "all functions"
            table = Table(
                title=f"Top {args.top} {scope} by {title} time, per request", title_justify="left"
            )
            for col in ("function", "calls/request", "self ms", "cumulative ms", "cum. share"):
                table.add_column(col, justify="left" if col == "function" else "right")
            candidates = [
                kv
                for kv in entries.items()
                if not only_own or (any(o in kv[0][0] for o in own) and ".venv" not in kv[0][0])
            ]
            ranked = sorted(candidates, key=lambda kv: -kv[1][key])[: args.top]
            for func, (_cc, nc, tt, ct, _callers) in ranked:
                table.add_row(
                    short(func), f"{nc / n:.1f}", f"{tt * 1e3 / n:.3f}", f"{ct * 1e3 / n:.3f}",
                    f"{ct / total:.0%}",
                )  # fmt: skip
            out.print(table)
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
