"""The public surface: every name the docs import from ``contextkit`` still imports from there, and
``contextkit.__all__`` is exactly the pinned list (a change to it is a deliberate API change)."""

from __future__ import annotations

import re
from pathlib import Path

import contextkit

ROOT = Path(__file__).resolve().parents[1]

PUBLIC = {
    "Aggregate",
    "Attribute",
    "BatchFeatureView",
    "Bool",
    "Context",
    "ContextKitError",
    "ContextService",
    "EmbeddingView",
    "Entity",
    "Field",
    "FileSource",
    "Float64",
    "Int64",
    "OnlineFeatures",
    "PostgresSource",
    "PromptView",
    "PushSource",
    "RealtimeFeatureView",
    "RequestField",
    "RequestSource",
    "Search",
    "ServerGroup",
    "StreamFeatureView",
    "String",
    "TemplateFile",
    "Timestamp",
    "TransformServerGroup",
    "__version__",
    "batch_feature_view",
    "connect",
    "embedding_view",
    "realtime_feature_view",
}


def test_all_is_the_pinned_public_surface():
    assert set(contextkit.__all__) == PUBLIC


def test_every_public_name_imports():
    for name in contextkit.__all__:
        assert getattr(contextkit, name) is not None, name


def _documented_names() -> set[str]:
    names: set[str] = set()
    pattern = re.compile(r"from contextkit import (?:\(([^)]*)\)|([^\n(]+))")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in pattern.finditer(path.read_text()):
            listed = match.group(1) or match.group(2)
            names.update(n.strip() for n in listed.split(",") if n.strip())
    return names


def test_every_name_the_docs_import_from_contextkit_exists():
    documented = _documented_names()
    assert {"Entity", "batch_feature_view", "PromptView"} <= documented  # the scan found them
    missing = sorted(n for n in documented if not hasattr(contextkit, n))
    assert not missing, f"the docs import names contextkit does not export: {missing}"
