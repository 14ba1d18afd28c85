"""``assemble.parse_request``'s optional keywords: a caller passes only what it has (MCP's tools
and prompts pass entities, query and request_context), and what it leaves out means what leaving
a field out of ``POST /v1/context``'s body means, and what ``Context.get_context``'s defaults
mean: one set of defaults, not a copy per caller."""

from __future__ import annotations

import inspect
import shutil

import pytest

import contextkit
from contextkit.client import Context
from contextkit.retrieval.assemble import parse_request
from contextkit.server.context import ContextRequestBody


@pytest.fixture
def plan(quickstart_data, tmp_path):
    """The plan of the quickstart's ``support_assistant`` (applied; nothing is read)."""
    root = tmp_path / "shop"
    shutil.copytree(quickstart_data, root, ignore=shutil.ignore_patterns(".contextkit"))
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    yield ctx.context_plan("support_assistant")
    ctx.close()


def test_a_caller_passes_only_what_it_has_and_gets_the_http_bodys_request(plan):
    question = "Where is my parcel?"
    given = parse_request(plan, entities={"user_id": 7}, query=question)
    body = ContextRequestBody(service="support_assistant", entities={"user_id": 7}, query=question)
    from_http = parse_request(
        plan, **body.model_dump(exclude={"workspace", "service", "prompt", "stream"})
    )
    assert given == from_http
    assert (given.render, given.complete, given.cache) == (True, False, True)
    assert given.entities == {"user_id": [7]} and given.query == question
    assert given.model is None and given.params == {}
    assert {name: k for name, (k, _) in given.search_options.items()} == {
        search.name: search.top_k for search in plan.searches
    }  # each search's own top_k: no override


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
