"""Shared fixtures: small real repos with real data files in temp dirs."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

# Real redis-server, PostgreSQL and S3 (moto) fixtures; a real two-node Ray cluster.
pytest_plugins = ["tests.backends", "tests.ray_backend"]

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"

CONFIG = """\
project: test
registry: .contextkit/registry.db
online_store: {type: sqlite, path: .contextkit/online.db}
offline_store: {type: parquet, path: .contextkit/offline}
"""

# A fixed "now" for generated data, so tests are reproducible.
DATA_END = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def fresh_repo_modules(tmp_path_factory: pytest.TempPathFactory):
    """Forget the repo modules earlier tests imported from temp dirs, before and after the test.

    For test files whose repos all have a file of the same name (``defs.py``): the loader keeps a
    module by its name, so a second repo's ``defs.py`` would get the first one's (the known loader
    bug test_aggregates_oracle.py documents). Use it from an autouse fixture of the file.
    """

    base = tmp_path_factory.getbasetemp()
    forget_modules_under(base)
    yield
    forget_modules_under(base)


@functools.cache
def _real_path(file: str) -> str:
    return os.path.realpath(file)


def forget_modules_under(base: Path) -> None:
    """Drop from ``sys.modules`` every module whose file (symlinks resolved) is under ``base``.

    A module's resolved path is remembered per absolute path: resolving the ~4,000 files of
    torch, pandas, ... again before and after every test cost 0.2 s on a quiet machine and 1-2 s
    under load, per test.
    """
    prefix = os.path.join(os.path.realpath(base), "")
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file:
            continue
        real = _real_path(file) if os.path.isabs(file) else os.path.realpath(file)
        if real.startswith(prefix):
            del sys.modules[name]


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """Write a repo: ``make_repo({"defs.py": "...python..."}, data={"orders.parquet": table})``.

    Python sources are dedented. ``data`` values are pyarrow Tables (written as Parquet/CSV by
    suffix) or raw text. Returns the repo root.
    """

    def make(files: dict[str, str], data: dict | None = None, name: str = "repo") -> Path:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        (root / "contextkit.yaml").write_text(CONFIG)
        for rel, text in files.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(textwrap.dedent(text))
        for rel, table in (data or {}).items():
            target = root / "data" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(table, str | bytes):
                target.write_bytes(table if isinstance(table, bytes) else table.encode())
            elif rel.endswith(".csv"):
                pacsv.write_csv(table, target)
            else:
                assert isinstance(table, pa.Table)
                pq.write_table(table, target)
        return root

    return make


@pytest.fixture(scope="session")
def quickstart_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart repo copied to a temp dir, with small generated data (fixed end time)."""
    root = tmp_path_factory.mktemp("quickstart")
    for path in QUICKSTART.iterdir():
        if path.name in ("data", ".contextkit", "__pycache__"):
            continue
        if path.is_file():
            shutil.copy(path, root / path.name)
        elif path.is_dir():  # templates/
            shutil.copytree(path, root / path.name, ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(QUICKSTART))
    try:
        from generate_data import generate
    finally:
        sys.path.remove(str(QUICKSTART))
    generate(root / "data", users=200, products=100, orders=5000, articles=20, seed=3, end=DATA_END)
    return root
