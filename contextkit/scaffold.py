"""``contextkit init``: a small, working context-as-code repo with sample data."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contextkit.errors import ConfigError

CONFIG = """\
# contextkit repo config. Paths are relative to this file.
project: {name}
registry: .contextkit/registry.db
online_store:
  type: sqlite
  path: .contextkit/online.db
offline_store:
  type: parquet
  path: .contextkit/offline
"""

FEATURES = '''\
"""Feature definitions: entities, sources, feature views and services.

Every .py file in this folder is imported by `contextkit plan/apply`; objects bound to module-level
names are registered.
"""

from datetime import timedelta

from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view

user = Entity(name="user", join_keys=["user_id"], description="A shopper.")

orders = FileSource(
    name="orders",
    path="data/orders.csv",
    timestamp_field="ts",
    description="One row per order.",
)


@batch_feature_view(
    sources=[orders],
    entities=[user],
    mode="sql",
    features=[
        Aggregate(column="amount", function="sum", time_window=timedelta(days=7)),
        Aggregate(column="amount", function="count", time_window=timedelta(days=7)),
        Aggregate(column="amount", function="mean", time_window=timedelta(days=30)),
    ],
    description="How much each user spends.",
)
def user_spend(orders):
    return f"SELECT user_id, amount, ts FROM {orders} WHERE status = 'completed'"


shop_assistant = ContextService(name="shop_assistant", features=[user_spend])
'''

GITIGNORE = """\
# contextkit's local state: the registry (workspaces, applied versions, API keys) and the
# materialized data (online and offline stores, vectors). The repo's files are the source.
.contextkit/
# Secrets (provider keys) kept in a local env file.
.env
__pycache__/
"""


def _sample_orders(now: datetime, rows: int = 200, users: int = 20) -> str:
    rng = random.Random(42)
    lines = ["order_id,user_id,amount,status,ts"]
    stamps = sorted(now - timedelta(seconds=rng.randrange(1, 30 * 86400)) for _ in range(rows))
    for i, ts in enumerate(stamps, start=1):
        status = "completed" if rng.random() > 0.1 else "refunded"
        amount = round(rng.uniform(5, 200), 2)
        lines.append(f"{i},{rng.randint(1, users)},{amount},{status},{ts:%Y-%m-%d %H:%M:%S}")
    return "\n".join(lines) + "\n"


def scaffold(path: str | Path, name: str | None = None) -> list[str]:
    """Create a repo in ``path`` and a registry with a live, selected ``prod`` workspace."""
    root = Path(path)
    if (root / "contextkit.yaml").exists():
        raise ConfigError(
            f"{root / 'contextkit.yaml'} already exists", hint="init a new, empty folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    project = name or root.resolve().name.replace("-", "_") or "contextkit_repo"
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    files = {
        "contextkit.yaml": CONFIG.format(name=project),
        "features.py": FEATURES,
        ".gitignore": GITIGNORE,
        "data/orders.csv": _sample_orders(now),
    }
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    from contextkit.client import connect

    ctx = connect(root)
    if "prod" not in {w.name for w in ctx.list_workspaces()}:
        ctx.create_workspace("prod", live=True)
    ctx.select_workspace("prod")
    ctx.close()
    return list(files)
