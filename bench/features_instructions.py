"""Instructions per ``POST /v1/features`` on Redis, piece by piece (valgrind callgrind).

Wall-clock timings on this 2-core machine move with the other sessions' load; instruction
counts do not. This builds the quickstart (``--users`` users) into its own ``redis-server``,
then runs a child under ``valgrind --tool=callgrind --instr-atstart=no``. The child builds the
contextkit app (``create_app``, no auth) and the HTTP floor of ``online_redis_http.py`` in one
process and, for each piece, warms it up, switches instrumentation on with ``callgrind_control``,
calls it ``--calls`` times, switches it off and dumps: instructions per call = the dump's total
/ calls. The ASGI apps are called directly (no uvicorn, no client socket: those cost the same
for both); the Redis round trips are real (the kernel's share is not counted).

    python bench/features_instructions.py                     # ~3-5 min
    python bench/features_instructions.py --tree /tmp/base    # the same pieces, another checkout

``--tree DIR`` runs the child against the contextkit of another checkout of this repo (a git
worktree of an older commit): its editable install is pointed there for that process only.
Needs ``valgrind`` (Debian package ``valgrind``) and ``redis-server``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import (
    WORKSPACE,
    apply_quickstart,
    console,
    copy_quickstart,
    floor_hour,
    generate_data,
    machine_line,
)

BENCH = Path(__file__).resolve().parent
SERVICE = "support_assistant"
# A sitecustomize for --tree: the editable install's finder maps contextkit to this checkout;
# point it at the other one (runs after the .pth files that install the finder).
SHIM = """
import glob, os, sys
for path in glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages",
                                   "__editable___contextkit_*_finder.py")):
    name = os.path.basename(path)[:-3]
    finder = __import__(name)
    for table in (finder.MAPPING, finder.NAMESPACES):
        for key, value in list(table.items()):
            swap = lambda p: p.replace({here!r}, {tree!r})  # noqa: E731
            table[key] = swap(value) if isinstance(value, str) else [swap(p) for p in value]
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--orders", type=int, default=20_000)
    p.add_argument("--calls", type=int, default=200, help="instrumented calls per piece")
    p.add_argument("--tree", type=Path, help="another checkout whose contextkit to count")
    p.add_argument("--child", nargs=2, metavar=("REPO", "URL"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def scope_for(body: bytes) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/v1/features", "raw_path": b"/v1/features",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 80), "state": {},
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip


async def call_app(app, body: bytes, answers: list) -> None:
    """One request through an ASGI app; its body appended to ``answers``."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        return {}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"/v1/features answered {message['status']}")
        if message["type"] == "http.response.body":
            answers.append(message["body"])

    await app(scope_for(body), receive, send)


def child(repo: Path, url: str, calls: int) -> None:
    import online_redis_http as http_bench
    from starlette.requests import Request

    from contextkit.server.app import create_app
    from contextkit.server.common import READER, json_response
    from contextkit.server.features import FeaturesRequest
    from contextkit.stores.online import TableRead

    ctx = http_bench.open_context(repo, url)
    app = create_app(ctx, auth=False)
    floor = http_bench.floor_app(repo, url)
    raw = http_bench.raw_reader(url, repo)
    state = app.state.contextkit
    rng = random.Random(7)
    users = [rng.randrange(1, 1000) for _ in range(64)]
    bodies = [
        json.dumps({"workspace": WORKSPACE, "service": SERVICE, "entities": {"user_id": [u]}})
        .encode()
        for u in users
    ]  # fmt: skip
    answers: list[bytes] = []
    for asgi_app in (app, floor):
        asyncio.run(call_app(asgi_app, bodies[0], answers))
    if json.loads(answers[0]) != json.loads(answers[1]):
        raise RuntimeError("the floor does not answer what contextkit answers")
    scope = {"type": "http", "method": "POST", "path": "/v1/features", "headers": []}
    c = state.context(Request(dict(scope)), WORKSPACE, READER, service=SERVICE)
    reader = c.service_reader(SERVICE)
    store = c.runtime.online
    result = c.get_features(SERVICE, {"user_id": [users[0]]})

    def asgi(target):
        async def many(n: int) -> None:
            for i in range(n):
                await call_app(target, bodies[i % 64], [])

        return lambda n: asyncio.run(many(n))

    def each(fn):
        def run(n: int) -> None:
            for i in range(n):
                fn(i)

        return run

    pieces = {
        "contextkit app (ASGI, whole request)": asgi(app),
        "HTTP floor app (ASGI, whole request)": asgi(floor),
        "body model (parse_body's validate_json)": each(
            lambda i: FeaturesRequest.model_validate_json(bodies[i % 64], strict=True)
        ),
        "state.context (registry version check)": each(
            lambda i: state.context(Request(dict(scope)), WORKSPACE, READER, service=SERVICE)
        ),
        "ctx.service_reader (registry version check)": each(lambda i: c.service_reader(SERVICE)),
        "ctx.get_features": each(lambda i: c.get_features(SERVICE, {"user_id": [users[i % 64]]})),
        "ServiceReader.read": each(lambda i: reader.read(store, {"user_id": [users[i % 64]]})),
        "RedisOnlineStore.read_many": each(
            lambda i: store.read_many(
                [TableRead(r.table, r.keys, r.columns, [(users[i % 64],)]) for r in reader.reads]
            )
        ),
        "raw redis-py pipeline": each(lambda i: raw([users[i % 64]])),
        "to_response + json_response": each(lambda i: json_response(result.to_response())),
    }
    pid = str(os.getpid())
    for n, run in enumerate(pieces.values()):
        run(50)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        run(calls)
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        subprocess.run(
            ["callgrind_control", "-d", f"piece{n}", pid], check=True, capture_output=True
        )
    print("PIECES " + json.dumps(list(pieces)))


def totals(folder: Path) -> dict[int, int]:
    """Instructions of each dump, by piece number."""
    out = {}
    for path in folder.glob("callgrind.out.*"):
        desc = total = None
        for line in path.read_text().splitlines():
            if line.startswith("desc: Trigger: dump piece"):
                desc = int(line.rsplit("piece", 1)[1])
            elif line.startswith("totals:"):
                total = int(line.split()[1])
        if desc is not None and total is not None:
            out[desc] = total
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(Path(args.child[0]), args.child[1], args.calls)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} is not installed (Debian package valgrind)")
    sys.path.insert(0, str(BENCH))  # each of the two takes bench/ off the path again
    import online_redis

    sys.path.insert(0, str(BENCH))
    import online_redis_http as http_bench

    out = console()
    out.print(machine_line())
    workdir = Path(tempfile.mkdtemp(prefix="ck-bench-instr-"))
    redis_proc, url = online_redis.start_redis(workdir)
    try:
        repo = copy_quickstart(workdir / "quickstart")
        end = floor_hour()
        generate_data(repo, users=args.users, orders=args.orders, end=end)
        apply_quickstart(repo).runtime.close()
        http_bench.open_context(repo, url).materialize(end=end)
        env = dict(os.environ)
        if args.tree is not None:
            shim = workdir / "shim"
            shim.mkdir()
            here = str(BENCH.parent)
            (shim / "sitecustomize.py").write_text(
                SHIM.format(here=here, tree=str(args.tree.resolve()))
            )
            env["PYTHONPATH"] = str(shim)
        dumps = workdir / "dumps"
        dumps.mkdir()
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={dumps}/callgrind.out.%p",
             sys.executable, __file__, "--calls", str(args.calls), "--child", str(repo), url],
            capture_output=True, text=True, env=env, cwd=workdir, check=False,
        )  # fmt: skip
        lines = [line for line in done.stdout.splitlines() if line.startswith("PIECES ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"the counted child failed:\n{done.stderr[-3000:]}")
        names = json.loads(lines[-1].split(" ", 1)[1])
        counts = totals(dumps)
        from rich.table import Table

        tree = args.tree or BENCH.parent
        table = Table("piece (1 entity, Redis)", "instructions per call",
                      title=f"contextkit of {tree}")  # fmt: skip
        for n, name in enumerate(names):
            table.add_row(name, f"{counts[n] // args.calls:,}")
        out.print(table)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
