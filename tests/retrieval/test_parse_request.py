"""``assemble.parse_request``'s optional keywords: a caller passes only what it has (MCP's tools
and prompts pass entities, query and request_context), and what it leaves out means what leaving
a field out of ``POST /v1/context``'s body means, and what ``Context.get_context``'s defaults
mean: one set of defaults, not a copy per caller."""

from __future__ import annotations

import inspect

import pyarrow as pa
import pytest

import contextkit
from contextkit.client import Context
from contextkit.retrieval.assemble import parse_request
from contextkit.server.context import ContextRequestBody
from tests.conftest import DATA_END

DEFS = """\
from contextkit import (
    Aggregate, ContextService, Entity, FileSource, Int64, PromptView, RequestField,
    batch_feature_view,
)

user = Entity(name="user", join_keys=["user_id"])
orders = FileSource(name="orders", path="data/orders.parquet", timestamp_field="ts")

@batch_feature_view(sources=[orders], entities=[user], mode="sql",
                    features=[Aggregate(column="amount", function="sum", time_window="7d")])
def spend(orders):
    return f"SELECT user_id, amount, ts FROM {orders}"

note = PromptView(
    name="note",
    template="Hello {{ request.name }}: {{ features.spend.amount_sum_7d }} (x{{ request.n }})",
    features=[spend],
    request_context=[RequestField("name", default="you"), RequestField("n", Int64, default=2)],
)

svc = ContextService(name="svc", features=[spend], prompts=[note])
"""


@pytest.fixture
def plan(make_repo, fresh_repo_modules):
    orders = pa.table({
        "user_id": pa.array([1], pa.int64()),
        "amount": pa.array([5.0]),
        "ts": pa.array([DATA_END.replace(hour=1)], pa.timestamp("us", tz="UTC")),
    })  # fmt: skip
    root = make_repo({"defs.py": DEFS}, data={"orders.parquet": orders})
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    yield ctx.context_plan("svc")
    ctx.close()


def test_a_caller_passes_only_what_it_has_and_gets_the_http_bodys_request(plan):
    given = parse_request(plan, entities={"user_id": 1})
    body = ContextRequestBody(service="svc", entities={"user_id": 1})
    from_http = parse_request(
        plan, **body.model_dump(exclude={"workspace", "service", "prompt", "stream"})
    )
    assert given == from_http
    assert (given.render, given.complete, given.cache) == (True, False, True)
    assert given.entities == {"user_id": [1]} and given.request == {"name": "you", "n": 2}
    assert given.query is None and given.model is None and given.params == {}


def test_parse_request_get_context_and_the_http_body_share_their_defaults():
    keywords = {
        name: p.default
        for name, p in inspect.signature(parse_request).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }
    assert all(default is not inspect.Parameter.empty for default in keywords.values())
    sdk = inspect.signature(Context.get_context).parameters
    for name, default in keywords.items():
        assert sdk[name].default == default, name
        assert ContextRequestBody.model_fields[name].default == default, name
