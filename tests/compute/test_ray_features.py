"""Batch feature views on the Ray engine (contextkit.compute.ray): the config that picks the
engine, connecting to a cluster, and materialization equal to the local engine's.

The config tests are fast; every test that runs Ray uses the session's real two-node cluster
(``ray_cluster``, tests/ray_backend.py) and is marked slow (still run in CI)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from contextkit.config import ComputeConfig, RepoConfig, apply_env_overrides
from contextkit.errors import ComputeError

ROOT = Path(__file__).resolve().parents[2]

# -- config (fast) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "engine", "address"),
    [
        ("local", "local", None),
        ("ray", "ray", None),
        ("ray://head:10001", "ray", "ray://head:10001"),
        ("10.0.0.5:6379", "ray", "10.0.0.5:6379"),
        ({"address": "head:6379"}, "ray", "head:6379"),
        ({"engine": "local", "views": {"docs": "ray"}}, "local", None),
    ],
)
def test_compute_shorthands(value, engine, address):
    config = RepoConfig(project="p", compute=value).compute
    assert (config.engine, config.address) == (engine, address)
    assert config.ray_address == (address or "local")


def test_default_is_local_and_views_override():
    assert RepoConfig(project="p").compute.engine_for("any") == "local"
    config = ComputeConfig(engine="local", views={"docs": "ray"})
    assert (config.engine_for("docs"), config.engine_for("stats")) == ("ray", "local")
    assert config.uses_ray
    config = ComputeConfig.model_validate(
        {"engine": "ray", "views": {"small": "local"}, "embedding": {"num_gpus": 0.5}}
    )
    assert (config.engine_for("small"), config.engine_for("big")) == ("local", "ray")
    assert config.embedding.num_gpus == 0.5 and config.embedding.batch_size > 0


@pytest.mark.parametrize(
    "value",
    [
        "spark",
        "http://head:6379",
        "head",
        "head:notaport",
        {"engine": "dask"},
        {"engine": "ray", "adress": "h:1"},
        {"engine": "ray", "partitions": 0},
        {"engine": "ray", "views": {"v": "spark"}},
        {"engine": "ray", "connect_timeout_s": 0},
    ],
)
def test_bad_compute_config_is_rejected(value):
    with pytest.raises(ValueError):
        RepoConfig(project="p", compute=value)


def test_env_overrides_engine_and_keeps_the_files_other_settings():
    raw = {"compute": {"engine": "local", "partitions": 3, "views": {"docs": "ray"}}}
    out = apply_env_overrides(raw, {"CONTEXTKIT_COMPUTE": "ray://head:10001"})
    config = RepoConfig(project="p", **out).compute
    assert (config.engine, config.address, config.partitions) == ("ray", "ray://head:10001", 3)
    assert config.views == {"docs": "ray"}
    # `local` in the environment means everything local, per-view engines included.
    config = RepoConfig(project="p", **apply_env_overrides(raw, {"CONTEXTKIT_COMPUTE": "local"}))
    assert config.compute.engine_for("docs") == "local" and config.compute.partitions == 3
    # No variable: the file as written.
    assert apply_env_overrides(raw, {}) == raw


def test_config_file_and_env(tmp_path, monkeypatch):
    from contextkit.config import load_config

    (tmp_path / "contextkit.yaml").write_text("project: p\ncompute: {engine: ray, partitions: 4}\n")
    monkeypatch.delenv("CONTEXTKIT_COMPUTE", raising=False)
    assert load_config(tmp_path).compute.partitions == 4
    monkeypatch.setenv("CONTEXTKIT_COMPUTE", "127.0.0.1:6379")
    assert load_config(tmp_path).compute.address == "127.0.0.1:6379"
    (tmp_path / "contextkit.yaml").write_text("project: p\ncompute: {engine: flink}\n")
    monkeypatch.delenv("CONTEXTKIT_COMPUTE")
    from contextkit.errors import ConfigError

    with pytest.raises(ConfigError, match="compute"):
        load_config(tmp_path)


def test_unreachable_address_fails_within_seconds():
    from contextkit.compute.ray.runtime import connect

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ComputeConfig(address=f"127.0.0.1:{port}", connect_timeout_s=2)
    with pytest.raises(ComputeError, match=f"127.0.0.1:{port}") as info:
        connect(config)
    assert info.value.http_status == 503 and "ray status" in (info.value.hint or "")


def _driver(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python (a connect() that gives up leaves its init thread behind,
    which must not share this test process with the cluster tests)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_a_port_that_is_no_ray_head_fails_within_the_timeout():
    with socket.socket() as server:  # accepts connections, never speaks Ray's protocol
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        out = _driver(
            f"""
            from contextkit.config import ComputeConfig
            from contextkit.compute.ray.runtime import connect
            from contextkit.errors import ComputeError
            try:
                connect(ComputeConfig(address="127.0.0.1:{port}", connect_timeout_s=3))
            except ComputeError as exc:
                print("ERROR", exc)
            """
        )
    assert "ERROR could not connect to the Ray cluster at 127.0.0.1" in out.stdout, out.stderr


def test_missing_ray_says_how_to_install_it(tmp_path):
    # The driver cannot import ray (as if the extra were not installed); the core still loads.
    out = _driver(
        """
        import sys
        sys.modules["ray"] = None
        import contextkit
        from contextkit.config import ComputeConfig
        from contextkit.compute.ray.runtime import connect
        from contextkit.errors import ComputeError
        try:
            connect(ComputeConfig(engine="ray"))
        except ComputeError as exc:
            print("ERROR", exc.code, exc.hint)
        """
    )
    assert "ERROR compute_error pip install 'contextkit[ray]'" in out.stdout, out.stderr


# -- the cluster (slow) ----------------------------------------------------------------------


@pytest.mark.slow
def test_connect_joins_the_cluster_and_tasks_run_on_both_nodes(ray_cluster):
    from contextkit.compute.ray.runtime import connect, partition_count, run_tasks, task_options

    config = ComputeConfig(address=ray_cluster.address, connect_timeout_s=60)
    ray = connect(config)
    assert connect(config) is ray  # joined once per process
    assert partition_count(config, ray) == 4  # two nodes of one CPU each

    def node_of_task(x: int) -> tuple[str, int]:  # defined here: pickled by value
        return ray.get_runtime_context().get_node_id(), x * 2

    task = ray.remote(node_of_task)
    results = run_tasks(ray, [task.options(**task_options()).remote(i) for i in range(8)])
    assert [value for _, value in results] == [i * 2 for i in range(8)]
    # Both nodes run contextkit's tasks (pinned to each node: SPREAD is only a preference).
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    pinned = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(1)
        for node in nodes
    ]
    assert sorted(node for node, _ in run_tasks(ray, pinned)) == sorted(nodes) and len(nodes) == 2
