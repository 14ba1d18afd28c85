"""contextkit: context as code for LLM applications.

Define entities, sources, feature views and context services in Python; ``contextkit apply``
records them, ``contextkit materialize`` computes them, and ``connect(...).get_features(...)`` or
the HTTP server serves them. Everything public is importable from here::

    from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view
    import contextkit
    ctx = contextkit.connect(".", workspace="prod")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module. Imported lazily so `contextkit --help` and the server start fast.
_EXPORTS = {
    "Entity": "contextkit.framework.definitions",
    "FileSource": "contextkit.framework.definitions",
    "PostgresSource": "contextkit.framework.definitions",
    "Attribute": "contextkit.framework.definitions",
    "Aggregate": "contextkit.framework.definitions",
    "batch_feature_view": "contextkit.framework.definitions",
    "BatchFeatureView": "contextkit.framework.definitions",
    "ContextService": "contextkit.framework.definitions",
    "ServerGroup": "contextkit.framework.definitions",
    "TransformServerGroup": "contextkit.framework.definitions",
    "EmbeddingView": "contextkit.framework.definitions",
    "embedding_view": "contextkit.framework.definitions",
    "Search": "contextkit.framework.definitions",
    "PromptView": "contextkit.framework.definitions",
    "RequestField": "contextkit.framework.definitions",
    "TemplateFile": "contextkit.framework.definitions",
    "PushSource": "contextkit.framework.definitions",
    "StreamFeatureView": "contextkit.framework.definitions",
    "RequestSource": "contextkit.framework.definitions",
    "RealtimeFeatureView": "contextkit.framework.definitions",
    "realtime_feature_view": "contextkit.framework.definitions",
    "Field": "contextkit.types",
    "String": "contextkit.types",
    "Int64": "contextkit.types",
    "Float64": "contextkit.types",
    "Bool": "contextkit.types",
    "Timestamp": "contextkit.types",
    "connect": "contextkit.client",
    "Context": "contextkit.client",
    "OnlineFeatures": "contextkit.retrieval.online",
    "ContextKitError": "contextkit.errors",
}

__all__ = [
    "Entity",
    "FileSource",
    "PostgresSource",
    "Attribute",
    "Aggregate",
    "batch_feature_view",
    "BatchFeatureView",
    "ContextService",
    "ServerGroup",
    "TransformServerGroup",
    "EmbeddingView",
    "embedding_view",
    "Search",
    "PromptView",
    "RequestField",
    "TemplateFile",
    "PushSource",
    "StreamFeatureView",
    "RequestSource",
    "RealtimeFeatureView",
    "realtime_feature_view",
    "Field",
    "String",
    "Int64",
    "Float64",
    "Bool",
    "Timestamp",
    "connect",
    "Context",
    "OnlineFeatures",
    "ContextKitError",
    "__version__",
]

if TYPE_CHECKING:
    from contextkit.client import Context, connect
    from contextkit.errors import ContextKitError
    from contextkit.framework.definitions import (
        Aggregate,
        Attribute,
        BatchFeatureView,
        ContextService,
        EmbeddingView,
        Entity,
        FileSource,
        PostgresSource,
        PromptView,
        PushSource,
        RealtimeFeatureView,
        RequestField,
        RequestSource,
        Search,
        ServerGroup,
        StreamFeatureView,
        TemplateFile,
        TransformServerGroup,
        batch_feature_view,
        embedding_view,
        realtime_feature_view,
    )
    from contextkit.retrieval.online import OnlineFeatures
    from contextkit.types import Bool, Field, Float64, Int64, String, Timestamp


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'contextkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
