"""A failure of the encoder pool on Ray (contextkit.compute.ray.embedding) as the user sees it: a
ComputeError naming the view, with every secret the actors were given (the AWS_* values and the
hosted model's key) replaced by ``***``. Fast: ``ray.data`` is a stand-in that records what the
pool was started with and fails as Ray does when an actor cannot start (Ray's error echoes the
actors' runtime environment); the cluster tests are in test_ray_embedding.py."""

from __future__ import annotations

import sys
import traceback
from types import SimpleNamespace

import pytest

from contextkit.compute.ray.embedding import RayEncoding, _run_pool
from contextkit.errors import ComputeError

KEY_ENV = "CK_TEST_HOSTED_MODEL_KEY"


class _FailingDataset:
    """What ``from_arrow_refs(...).map_batches(...)`` returns: it keeps the pool's options and
    fails on the first batch with an error that quotes the actors' runtime environment."""

    def __init__(self) -> None:
        self.options: dict = {}

    def map_batches(self, fn, **options):
        self.options = options
        return self

    def iter_batches(self, **_):  # lazy, as Ray's: the pool starts at the first batch
        env = self.options.get("runtime_env", {}).get("env_vars", {})
        raise RuntimeError(f"ActorDiedError: the actor died\nruntime_env: {env}")
        yield


def test_a_pool_failure_names_the_view_and_shows_no_secret_the_actors_got(monkeypatch):
    dataset = _FailingDataset()
    context = SimpleNamespace(enable_progress_bars=True)
    ray_data = SimpleNamespace(
        DataContext=SimpleNamespace(get_current=lambda: context),
        from_arrow_refs=lambda refs: dataset,
        ActorPoolStrategy=lambda size: ("actors", size),
    )
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(data=ray_data))
    monkeypatch.setitem(sys.modules, "ray.data", ray_data)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret-value")
    monkeypatch.setenv(KEY_ENV, "sk-hosted-123")
    models = {"hosted": {"type": "litellm", "model": "openai/x", "api_key_env": KEY_ENV}}
    view = SimpleNamespace(name="doc_text", model="hosted")
    pool = RayEncoding(batch_size=4, concurrency=1, num_gpus=0)

    with pytest.raises(ComputeError) as raised:
        list(_run_pool(None, [], pool, view, models, "/repo", SimpleNamespace(dimension=8)))

    env = dataset.options["runtime_env"]["env_vars"]
    assert env[KEY_ENV] == "sk-hosted-123"  # the actors got the key ...
    message = raised.value.message
    assert message.startswith("embedding view 'doc_text': encoding on Ray failed: RuntimeError")
    assert "runtime_env" in message and "***" in message
    assert "sk-hosted-123" not in message  # ... and the error does not show it
    assert "s3cret-value" not in message
    assert raised.value.http_status == 503
    # nor does a traceback of it: Ray's own error, which echoes the env, is not its cause
    shown = "".join(traceback.format_exception(raised.value))
    assert "sk-hosted-123" not in shown and "s3cret-value" not in shown
