"""Render limits end to end: `plan` refuses a template whose sample render runs past them, a
request whose data makes the template slow gets a clear 422, and a real server keeps answering
its other requests meanwhile (the render runs in a worker thread, bounded by its own clock)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from serverproc import running_server

import contextkit
from contextkit.errors import ContextKitError, ValidationErrors
from tests.conftest import DATA_END

DEFS = '''\
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
    template="""
Hello {{ request.name }}, you spent {{ features.spend.amount_sum_7d }} this week.
{% for i in range(request.n) %}{% for j in range(request.n) %}{% endfor %}{% endfor %}
""",
    features=[spend],
    request_context=[RequestField("name"), RequestField("n", Int64, default=1)],
)

svc = ContextService(name="svc", features=[spend], prompts=[note])
'''

# Slow only when the request says so: the sample render (n = 1) is quick, so plan accepts it.
LOOP = "{% for i in range(request.n) %}{% for j in range(request.n) %}{% endfor %}{% endfor %}"
SPIN = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture
def repo(make_repo):
    import pyarrow as pa

    orders = pa.table(
        {
            "user_id": pa.array([1, 1, 2], pa.int64()),
            "amount": pa.array([5.0, 7.0, 11.0]),
            "ts": pa.array(
                [DATA_END.replace(hour=h) for h in (1, 2, 3)], pa.timestamp("us", tz="UTC")
            ),
        }
    )

    def make(defs: str = DEFS, limits: str = "render_timeout_s: 0.5") -> tuple[Path, object]:
        root = make_repo({"defs.py": defs}, data={"orders.parquet": orders})
        with (root / "contextkit.yaml").open("a") as config:
            config.write(f"prompts: {{{limits}}}\n")
        ctx = contextkit.connect(root, workspace="prod")
        ctx.create_workspace("prod", live=True)
        return root, ctx

    return make


def line_of(root: Path, text: str) -> int:
    lines = (root / "defs.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if text in line)


def test_plan_refuses_a_template_whose_sample_render_runs_too_long_at_its_line(repo):
    root, ctx = repo(DEFS.replace(LOOP, SPIN))

    with pytest.raises(ValidationErrors) as info:
        ctx.plan(root)

    [error] = info.value.errors
    assert "prompt 'note'" in error.message and "0.5 s" in error.message
    assert error.location == f"defs.py:{line_of(root, SPIN)}"
    assert "prompts.render_timeout_s" in error.hint


def test_plan_refuses_a_template_file_that_builds_too_much_text(repo):
    inline = DEFS[DEFS.index('template="""') : DEFS.index('""",') + 4]
    root, ctx = repo(
        DEFS.replace(inline, 'template_file="prompts/note.jinja",'), "max_output_chars: 1000"
    )
    (root / "prompts").mkdir()
    (root / "prompts" / "note.jinja").write_text(
        "Hi {{ request.name }}.\n{% for i in range(500) %}{{ 'ten chars.' }}{% endfor %}\n"
    )

    with pytest.raises(ValidationErrors) as info:
        ctx.plan(root)

    [error] = info.value.errors
    assert error.location == "prompts/note.jinja:2"
    assert "max_output_chars" in error.message and "prompts.max_output_chars" in error.hint


def test_a_request_that_makes_the_template_too_slow_gets_render_limit_naming_the_view(repo):
    root, ctx = repo()
    ctx.apply(ctx.plan(root))  # the sample render (n = 1) is quick
    ctx.materialize(end=DATA_END.replace(hour=12))
    fine = ctx.get_context("svc", {"user_id": 1}, request_context={"name": "Ann", "n": 3})
    assert "you spent 12.0 this week" in fine.prompt["text"]

    with pytest.raises(ContextKitError) as info:
        ctx.get_context("svc", {"user_id": 1}, request_context={"name": "Ann", "n": 100000})

    error = info.value
    assert error.code == "render_limit" and error.http_status == 422
    assert "prompt view 'note'" in error.message
    assert error.details["prompt"] == "note" and error.details["limit"] == "timeout_s"
    assert error.details["setting"] == "prompts.render_timeout_s"
    assert error.details["line"] == 3 and "prompts.render_timeout_s" in error.hint


def call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_server_keeps_answering_while_a_hostile_render_runs(repo, tmp_path):
    root, ctx = repo(limits="render_timeout_s: 3")
    ctx.apply(ctx.plan(root))
    ctx.materialize(end=DATA_END.replace(hour=12))
    ctx.close()
    hostile_body = {
        "service": "svc",
        "entities": {"user_id": 1},
        "request_context": {"name": "Eve", "n": 100000},
    }
    benign_body = {**hostile_body, "request_context": {"name": "Ann"}}

    with running_server(
        "--no-auth", "--workspace", "prod", cwd=root, log_path=tmp_path / "serve.log"
    ) as server:
        hostile: dict = {}
        thread = threading.Thread(
            target=lambda: hostile.update(answer=call(server.base + "/v1/context", hostile_body))
        )
        thread.start()
        health, benign = [], []
        while thread.is_alive():  # the hostile render runs for its 3 s limit
            health.append(call(server.base + "/health"))
            if not benign:
                benign.append(call(server.base + "/v1/context", benign_body))
            time.sleep(0.05)
        thread.join()

    assert health and all(answer == (200, {"status": "ok"}) for answer in health)
    [(status, body)] = benign
    assert status == 200 and "Hello Ann" in body["prompt"]["text"]
    status, body = hostile["answer"]
    assert status == 422
    assert body["error"]["code"] == "render_limit"
    assert "prompt view 'note'" in body["error"]["message"]
    assert body["error"]["details"]["limit"] == "timeout_s"
    assert body["error"]["details"]["setting"] == "prompts.render_timeout_s"
