"""Connecting to Ray, and the small helpers every Ray job shares.

:func:`connect` imports ``ray`` lazily and joins the configured cluster (or starts a local
runtime), failing within ``connect_timeout_s`` with a :class:`ComputeError` when the address does
not answer. :func:`run_tasks` waits on a job's tasks while honouring cancellation, so no job
blocks past a cancel and none leaves tasks running behind it.

:func:`worker_env` is the one way the driver's settings reach the cluster's processes: the
standard ``AWS_*`` variables (endpoint, keys, region, as
:meth:`~contextkit.stores.objectstore.S3Settings.from_env` reads them) are passed in the
``runtime_env`` of every task (:func:`task_options`) and every Ray Data actor pool
(:func:`runtime_env_options`), so a node reads ``s3://`` sources and stores as the driver does
without variables of its own. Values are never logged; messages name the variables only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from contextkit.config import ComputeConfig
from contextkit.errors import ComputeError, JobCancelledError

INSTALL_HINT = "pip install 'contextkit[ray]'"
# A SIGKILLed worker's task is run again this many times before the job fails.
TASK_MAX_RETRIES = 3
# How often run_tasks looks at the cancel flag while tasks run.
POLL_S = 0.5

# Variables of the driver passed to the cluster's processes (S3 endpoint, keys, region, profile).
ENV_PREFIXES = ("AWS_",)

_lock = threading.Lock()
_connected: str | None = None  # the address this process joined, None before connect()


def import_ray() -> ModuleType:
    """The ``ray`` module, or a ComputeError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ComputeError(
            f"compute engine ray needs the ray package, which is not installed ({exc})",
            hint=f"{INSTALL_HINT}, or set compute: local in contextkit.yaml",
        ) from None
    return ray


def _probe(config: ComputeConfig) -> None:
    """Fail fast when the cluster's port does not accept a connection."""
    target = config.host_port()
    if target is None:
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=config.connect_timeout_s):
            pass
    except OSError as exc:
        raise ComputeError(
            f"the Ray cluster at {config.address} does not answer ({exc})",
            hint="check that the head node runs (`ray status --address HOST:PORT`) and that "
            "compute.address (or CONTEXTKIT_COMPUTE) names its GCS port (host:6379) or its "
            "Ray Client port (ray://host:10001)",
        ) from None


def connect(config: ComputeConfig) -> ModuleType:
    """Join the configured Ray cluster (once per process) and return the ``ray`` module.

    ``compute: ray`` without an address starts a local runtime in this process (never a
    cluster that someone else started on this machine); an address joins that cluster. A
    process already connected elsewhere is disconnected first. Raises :class:`ComputeError`
    when ray is missing or the cluster does not answer within ``connect_timeout_s``."""
    global _connected
    ray = import_ray()
    address = config.ray_address
    with _lock:
        if ray.is_initialized() and (
            _connected == address or (_connected is None and address == "local")
        ):
            return ray  # this address, or a runtime the caller started themselves
        _probe(config)  # before leaving a working connection for an address that is down
        if ray.is_initialized():
            ray.shutdown()
            _connected = None
        _init(ray, config, address)
        _connected = address
    return ray


def _init(ray: ModuleType, config: ComputeConfig, address: str) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {
        "address": address,
        "ignore_reinit_error": True,
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if address.startswith("ray://"):  # Ray Client does not take the local-runtime options
        kwargs = {"address": address, "ignore_reinit_error": True, "log_to_driver": False}
    if address == "local":  # starts processes here: no remote end to hang on
        try:
            ray.init(**kwargs)
        except Exception as exc:
            raise ComputeError(
                f"could not start a local Ray runtime: {exc}",
                hint="check the machine's free memory and /tmp space, or join a cluster with "
                "compute.address",
            ) from exc
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            ray.init(**kwargs)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    # A port that accepts connections but is no Ray head (or a head that hangs) must not hang
    # the job: init runs in a thread the caller stops waiting for.
    timeout = config.connect_timeout_s
    thread = threading.Thread(target=run, name="contextkit-ray-init", daemon=True)
    thread.start()
    thread.join(timeout)
    where = f"the Ray cluster at {address}"
    if thread.is_alive():
        raise ComputeError(
            f"could not connect to {where} within {timeout:g} s",
            hint="check the address names a Ray head (GCS port, or ray:// for Ray Client) and "
            "that the cluster runs the same Ray version; raise compute.connect_timeout_s "
            "for a slow cluster",
        )
    if failure:
        raise ComputeError(
            f"could not connect to {where}: {failure[0]}",
            hint="check the address and that the cluster runs the same Ray and Python versions",
        ) from failure[0]


def disconnect() -> None:
    """Leave the cluster this process joined (tests; a long-lived process changing clusters)."""
    global _connected
    ray = import_ray()
    with _lock:
        if ray.is_initialized():
            ray.shutdown()
        _connected = None


def cluster_cpus(ray: ModuleType) -> int:
    """The CPUs the cluster has now (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def partition_count(config: ComputeConfig, ray: ModuleType, rows: int | None = None) -> int:
    """How many tasks a job is split into: ``compute.partitions``, else twice the cluster's
    CPUs (so a slow or retried task does not hold the whole job), never more than ``rows``."""
    count = config.partitions or 2 * cluster_cpus(ray)
    if rows is not None:
        count = min(count, max(1, rows))
    return max(1, count)


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a task or actor needs beyond its node's own: this process's ``AWS_*``
    variables (how :class:`~contextkit.stores.objectstore.S3Settings` and the AWS SDKs reach the
    object store), plus ``extra`` (a hosted model's key variable, say). Empty when none is set,
    so a job that needs nothing starts no separate workers."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) and v}
    env.update(extra or {})
    return env


def model_env(models: Mapping[str, Any] | None, names: Sequence[str]) -> dict[str, str]:
    """The key variables (``api_key_env``) of the hosted models ``names`` of the ``models``
    config, with this process's values, for the actors that call them (those set here)."""
    from contextkit.embeddings import model_configs

    configs = model_configs(models)
    env = {}
    for name in names:
        var = configs.get(name, {}).get("api_key_env")
        if var and os.environ.get(var) is not None:
            env[var] = os.environ[var]
    return env


_SECRET_NAMES = ("SECRET", "TOKEN", "PASSWORD", "_KEY")


def scrub(text: str, extra: Mapping[str, str] | None = None) -> str:
    """``text`` with the values of the secret variables :func:`worker_env` passes (secret
    keys, session tokens, API keys) replaced by ``***``: Ray's errors may echo a task's
    runtime environment, and contextkit's messages and logs never show a secret."""
    for name, value in worker_env(extra).items():
        if any(part in name.upper() for part in _SECRET_NAMES) and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def failure_reason(exc: BaseException, extra: Mapping[str, str] | None = None) -> str:
    """``"Type: last line"`` of what a Ray pipeline raised, taken out of Ray's wrappers (a
    ``RayTaskError``'s ``cause``, then the ``__cause__``), with :func:`scrub` applied: for the
    message of the ``ComputeError`` that reports it."""
    cause: BaseException = exc
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:  # RayTaskError
        cause = cause.cause
    if cause.__cause__ is not None:
        cause = cause.__cause__
    lines = scrub(str(cause), extra).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


def runtime_env_options(extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{"runtime_env": {"env_vars": ...}}`` with :func:`worker_env`, or nothing when it is
    empty: for ``.options()`` of a task or ``map_batches`` of an actor pool."""
    env = worker_env(extra)
    return {"runtime_env": {"env_vars": env}} if env else {}


def task_options(env: Mapping[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """``.options()`` of a stateless contextkit task: retried when its worker dies (a SIGKILL,
    a lost node), never when it raised (a data error fails the job at once); spread over the
    cluster's nodes rather than packed onto the first; the driver's :func:`worker_env` (and
    ``env``) in its runtime environment."""
    return {
        "max_retries": TASK_MAX_RETRIES,
        "retry_exceptions": False,
        "scheduling_strategy": "SPREAD",
        **runtime_env_options(env),
        **extra,
    }


def run_tasks(
    ray: ModuleType,
    refs: Sequence[Any],
    *,
    should_stop: Callable[[], bool] | None = None,
    on_done: Callable[[int, Any], None] | None = None,
    what: str = "job",
) -> list[Any]:
    """Wait for ``refs`` and return their results in order. ``on_done(index, result)`` runs as
    each finishes (progress, streaming a result away). ``should_stop()`` is polled: when it says
    stop, every outstanding task is cancelled (force: its worker is killed) and
    :class:`JobCancelledError` raised. A task that raised cancels the others and re-raises its
    error (a ContextKitError as it was raised in the task)."""
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            if should_stop is not None and should_stop():
                raise JobCancelledError(f"the {what} was cancelled")
            done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
            for ref in done:
                value = ray.get(ref)
                results[index[ref]] = value
                if on_done is not None:
                    on_done(index[ref], value)
    except BaseException as exc:
        cancel(ray, pending)
        cause = _task_cause(ray, exc)
        if cause is not None:
            raise cause from None
        if isinstance(exc, ray.exceptions.RayError) and not isinstance(
            exc, ray.exceptions.RayTaskError
        ):
            raise ComputeError(
                f"the Ray cluster lost the {what}: {scrub(str(exc))}",
                hint="nothing was published; check the cluster (`ray status`) and run it again",
            ) from exc
        raise
    return results


def _task_cause(ray: ModuleType, exc: BaseException) -> BaseException | None:
    """The error a task raised, as raised (Ray wraps it in a RayTaskError)."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else None
        if cause is not None and not isinstance(cause, ray.exceptions.RayError):
            return cause
    return None


def cancel(ray: ModuleType, refs: Sequence[Any]) -> None:
    """Cancel tasks that have not finished (their workers are killed); errors are ignored:
    a task that finished meanwhile needs nothing."""
    for ref in refs:
        with contextlib.suppress(Exception):  # already finished or gone: nothing to cancel
            ray.cancel(ref, force=True)
