"""The context-as-code objects users write in a repo, one module per kind.

Each is a thin, typed Python object that remembers where it was defined and produces a pydantic
spec (``to_spec()``). Names and keyword arguments follow Tecton's SDK where they fit::

    from datetime import timedelta
    from contextkit import Aggregate, ContextService, Entity, FileSource, batch_feature_view

    user = Entity(name="user", join_keys=["user_id"])
    orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")

    @batch_feature_view(sources=[orders], entities=[user], mode="sql", features=[
        Aggregate(column="amount", function="sum", time_window=timedelta(days=7)),
    ])
    def user_spend(orders):
        return f"SELECT user_id, amount, ts FROM {orders}"

    support = ContextService(name="support", features=[user_spend])
"""

from __future__ import annotations

from contextkit.framework.definitions._base import Definition
from contextkit.framework.definitions.embedding_views import EmbeddingView, embedding_view
from contextkit.framework.definitions.entities import Entity
from contextkit.framework.definitions.feature_views import (
    FEATURE_VIEW_TYPES,
    BatchFeatureView,
    FeatureSelection,
    RealtimeFeatureView,
    StreamFeatureView,
    batch_feature_view,
    realtime_feature_view,
)
from contextkit.framework.definitions.features import Aggregate, Attribute
from contextkit.framework.definitions.prompt_views import (
    PromptView,
    RequestField,
    Search,
    TemplateFile,
)
from contextkit.framework.definitions.server_groups import ServerGroup, TransformServerGroup
from contextkit.framework.definitions.services import ContextService
from contextkit.framework.definitions.sources import (
    DatabaseSource,
    FileSource,
    PostgresSource,
    PushSource,
    RequestSource,
)

__all__ = [
    "Aggregate",
    "Attribute",
    "BatchFeatureView",
    "ContextService",
    "DatabaseSource",
    "Definition",
    "EmbeddingView",
    "Entity",
    "FEATURE_VIEW_TYPES",
    "FeatureSelection",
    "FileSource",
    "PostgresSource",
    "PromptView",
    "PushSource",
    "RealtimeFeatureView",
    "RequestField",
    "RequestSource",
    "Search",
    "ServerGroup",
    "TransformServerGroup",
    "StreamFeatureView",
    "TemplateFile",
    "batch_feature_view",
    "embedding_view",
    "realtime_feature_view",
]
