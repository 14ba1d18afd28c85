"""The repo config file, ``contextkit.yaml``: the project's name and where its stores live.

Example::

    project: quickstart
    registry: .contextkit/registry.db
    online_store: {type: sqlite, path: .contextkit/online.db}
    offline_store: {type: parquet, path: .contextkit/offline}
    vector_store: {type: lancedb, path: .contextkit/vectors}
    # or, for several serving nodes on shared engines (docs/deployment.md):
    # registry: postgresql://contextkit:${PASSWORD}@db:5432/contextkit
    # online_store: redis://:password@cache:6379/0      (or {url: ..., prefix: ck:shop})
    #               redis+cluster://:password@node1:6379/0  (a Redis Cluster: any one master)
    # offline_store: s3://bucket/contextkit/offline
    # vector_store: s3://bucket/contextkit/vectors
    models:                      # embedding models, by the name views use (minilm is built in)
      openai_small: {type: litellm, model: text-embedding-3-small, dimension: 1536}
    llm: {timeout_s: 60, retries: 2}   # completions: api_base, api_key_env, models, timeout_s...
    monitoring: {enabled: true}        # data-quality statistics in every materialization job
    prompts: {render_timeout_s: 2, max_output_chars: 1000000}   # limits of every prompt render
    compute: local               # or ray (a local Ray runtime), ray://head:10001, head:6379, or
                                 # {engine: ray, address: ..., views: {docs: ray}} (docs/compute.md)

Relative paths are relative to the folder holding the config file. Each store may also be given
as a string: a path, or a URL (``postgresql://`` registry, ``redis://``/``rediss://`` online
store, ``redis+cluster://``/``rediss+cluster://`` for a Redis Cluster, ``s3://bucket/prefix``
offline and vector stores). The environment overrides the file, so one image serves every
environment: ``CONTEXTKIT_REGISTRY``, ``CONTEXTKIT_ONLINE_STORE``,
``CONTEXTKIT_OFFLINE_STORE``, ``CONTEXTKIT_VECTOR_STORE`` (S3 endpoint, region and keys come from
the standard AWS variables), and ``CONTEXTKIT_COMPUTE`` (the engine: ``local``, ``ray`` or a Ray
address; the file's other compute settings are kept, except that ``local`` drops the per-view
engines). This module is the one place that parses the selection; ``Runtime.open`` builds the
stores from it. Passwords in URLs are never shown: use :meth:`RepoConfig.describe_stores`
(masked) to display them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contextkit.errors import ConfigError

CONFIG_NAMES = ("contextkit.yaml", "contextkit.yml")


ENV_OVERRIDES = {
    "registry": "CONTEXTKIT_REGISTRY",
    "online_store": "CONTEXTKIT_ONLINE_STORE",
    "offline_store": "CONTEXTKIT_OFFLINE_STORE",
    "vector_store": "CONTEXTKIT_VECTOR_STORE",
    "compute": "CONTEXTKIT_COMPUTE",
}
_POSTGRES = ("postgresql://", "postgres://")
_REDIS = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


def is_url(value: str) -> bool:
    return "://" in value


def _masked(value: str) -> str:
    from contextkit.stores.errors import mask_url

    return mask_url(value) if is_url(value) else value


class OnlineStoreConfig(BaseModel):
    """``{type: sqlite, path}`` (default) or ``{type: redis, url, prefix}``; a string is a path
    or a ``redis://``/``rediss://`` URL (``redis+cluster://``/``rediss+cluster://``: a Redis
    Cluster, named by any one master). ``prefix`` starts every Redis key (default
    ``contextkit:<project>``; table names already hold the workspace)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["sqlite", "redis"] = "sqlite"
    path: str = ".contextkit/online.db"
    url: str | None = None
    prefix: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"type": "redis", "url": value} if value.startswith(_REDIS) else {"path": value}
        if isinstance(value, Mapping) and "url" in value and "type" not in value:
            return {**value, "type": "redis"}
        return value

    @model_validator(mode="after")
    def _check(self) -> OnlineStoreConfig:
        if self.type == "redis":
            if not self.url or not self.url.startswith(_REDIS):
                raise ValueError(
                    "a redis online store needs url: redis://host:port/db "
                    "(redis+cluster://host:port/0 for a Redis Cluster)"
                )
        elif self.url is not None or self.prefix is not None:
            raise ValueError("url and prefix are settings of a redis online store")
        elif is_url(self.path):
            raise ValueError(f"{_masked(self.path)} is not a path nor a redis:// or rediss:// URL")
        return self


class _FolderStoreConfig(BaseModel):
    """A local folder or ``s3://bucket/prefix``; a string is the path."""

    model_config = ConfigDict(extra="forbid")
    path: str

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> _FolderStoreConfig:
        if is_url(self.path) and not self.path.startswith("s3://"):
            raise ValueError(
                f"{_masked(self.path)} is not a folder nor an s3://bucket/prefix location"
            )
        return self


class OfflineStoreConfig(_FolderStoreConfig):
    type: Literal["parquet"] = "parquet"
    path: str = ".contextkit/offline"


class VectorStoreConfig(_FolderStoreConfig):
    type: Literal["lancedb"] = "lancedb"
    path: str = ".contextkit/vectors"
    # The in-memory copies searched in numpy (docs/embeddings.md, Latency): the vectors kept for
    # one table, and for all tables of the process together (least recently used out first).
    exact_cache_max_bytes: int = Field(512 * 2**20, ge=0)
    exact_cache_total_bytes: int = Field(2 * 2**30, ge=0)


class LLMConfig(BaseModel):
    """How completions are called (through litellm): the model comes from the prompt view."""

    model_config = ConfigDict(extra="forbid")
    # An OpenAI-compatible server to send every completion to (a local vLLM, a proxy); None: the
    # provider named by the model (openai/..., anthropic/...).
    api_base: str | None = None
    # The environment variable holding the key; None: the provider's usual one (OPENAI_API_KEY).
    api_key_env: str | None = None
    # Model names `plan` accepts beyond those litellm knows (a fine-tuned or brand-new model).
    models: list[str] = []
    timeout_s: float = 60.0
    retries: int = 2


class IngestConfig(BaseModel):
    """Limits of the ingest API (push sources)."""

    model_config = ConfigDict(extra="forbid")
    max_records: int = 10_000  # per request
    max_future_s: float = 300.0  # how far ahead of the server's clock an event time may be


class MonitoringConfig(BaseModel):
    """Data-quality statistics computed by every materialization job (docs/monitoring.md)."""

    model_config = ConfigDict(extra="forbid")
    # False: jobs compute no statistics and no drift; declared expectations are still checked.
    enabled: bool = True
    # A job that leaves a view's online table with fewer entities than this share below the
    # previous job's warns (status "warning", an alert); one that empties it always warns.
    max_online_shrink: float = Field(0.5, ge=0.0, le=1.0)


class PromptsConfig(BaseModel):
    """Limits of every prompt render: requests, datasets and `plan`'s sample render
    (docs/prompts.md#limits). Past one, the render stops with a ``render_limit`` error."""

    model_config = ConfigDict(extra="forbid")
    render_timeout_s: float = Field(2.0, gt=0)
    max_output_chars: int = Field(1_000_000, gt=0)

    def render_limits(self) -> Any:
        """These limits as ``contextkit.prompts.RenderLimits``."""
        from contextkit.prompts import RenderLimits

        return RenderLimits(timeout_s=self.render_timeout_s, max_output_chars=self.max_output_chars)


Engine = Literal["local", "ray"]


class EmbeddingComputeConfig(BaseModel):
    """How embedding views encode on Ray Data: rows per ``map_batches`` batch, encoder actors,
    and GPUs per actor (None: one per actor when the cluster has GPUs, else CPU actors)."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(256, gt=0)
    concurrency: int = Field(1, gt=0)
    num_gpus: float | None = Field(None, gt=0)


class ComputeConfig(BaseModel):
    """Which engine runs batch compute (docs/compute.md): ``local`` (DuckDB and the encoder in
    this process, the default) or ``ray``. A string is a shorthand: ``local``, ``ray`` (start a
    local Ray runtime on demand), or a Ray address, ``ray://host:port`` (Ray Client) or
    ``host:port`` (the head's GCS port), which joins that cluster. ``views`` picks the engine per
    view; ``partitions`` is how many entity-hash buckets a job is split into (None: twice the
    cluster's CPUs); ``time_chunk`` cuts a materialization's range into chunks of that much event
    time (``7d``, ``12h``, ``90m``, seconds; None: one chunk), each chunk x bucket one Ray task;
    an address that does not answer within ``connect_timeout_s`` fails the job."""

    model_config = ConfigDict(extra="forbid")
    engine: Engine = "local"
    address: str | None = None
    views: dict[str, Engine] = {}
    embedding: EmbeddingComputeConfig = EmbeddingComputeConfig()
    partitions: int | None = Field(None, gt=0)
    time_chunk: timedelta | None = None
    connect_timeout_s: float = Field(15.0, gt=0)

    @field_validator("time_chunk", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _duration(value, "compute.time_chunk")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _compute_shorthand(value)
        if isinstance(value, Mapping) and value.get("address") and "engine" not in value:
            return {**value, "engine": "ray"}
        return value

    @model_validator(mode="after")
    def _check(self) -> ComputeConfig:
        if self.address is not None:
            address = self.address.strip()
            if not address or address in ("local", "auto"):
                raise ValueError(
                    "compute.address is a Ray cluster address: ray://host:port or host:port "
                    "(leave it out to start a local Ray runtime)"
                )
            if is_url(address) and not address.startswith("ray://"):
                raise ValueError(f"{address} is not a Ray address (ray://host:port or host:port)")
            _host_port(address)
            self.address = address
        return self

    def engine_for(self, view_name: str) -> Engine:
        """The engine that computes ``view_name``: its entry in ``views``, else ``engine``."""
        return self.views.get(view_name, self.engine)

    @property
    def uses_ray(self) -> bool:
        return self.engine == "ray" or "ray" in self.views.values()

    @property
    def ray_address(self) -> str:
        """What ``ray.init(address=...)`` gets: the configured address, or ``local`` (a new
        runtime in this process, never a cluster someone else started on this machine)."""
        return self.address or "local"

    def host_port(self) -> tuple[str, int] | None:
        """The cluster's host and port, to probe before connecting (None: a local runtime)."""
        return _host_port(self.address) if self.address else None


def _host_port(address: str) -> tuple[str, int]:
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address} is not a Ray address: expected ray://host:port or host:port")
    return host.strip("[]"), int(port)


_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def _duration(value: Any, what: str) -> Any:
    """``7d``, ``12h``, ``30m``, ``90s``, ``2w`` or a number of seconds, as a positive timedelta
    (None stays None; anything else is left to pydantic's own timedelta parsing)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([wdhms])\s*", value)
        if match:
            value = timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    elif isinstance(value, int | float) and not isinstance(value, bool):
        value = timedelta(seconds=value)
    if isinstance(value, timedelta) and value <= timedelta(0):
        raise ValueError(f"{what} must be a positive duration (7d, 12h, 30m or seconds)")
    return value


def _compute_shorthand(value: str) -> dict[str, Any]:
    value = value.strip()
    if value in ("local", "ray"):
        return {"engine": value}
    return {"engine": "ray", "address": value}


class RepoConfig(BaseModel):
    """Parsed ``contextkit.yaml``; ``root`` is the folder that holds it."""

    model_config = ConfigDict(extra="forbid")
    project: str
    registry: str = ".contextkit/registry.db"
    online_store: OnlineStoreConfig = OnlineStoreConfig()
    offline_store: OfflineStoreConfig = OfflineStoreConfig()
    vector_store: VectorStoreConfig = VectorStoreConfig()
    # Embedding models by config key: {type: sentence-transformers | litellm | hash, ...}.
    models: dict[str, dict[str, Any]] = {}
    llm: LLMConfig = LLMConfig()
    ingest: IngestConfig = IngestConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    prompts: PromptsConfig = PromptsConfig()
    compute: ComputeConfig = ComputeConfig()
    # Python files (globs relative to the repo root) that are not definitions, e.g. scripts.
    exclude: list[str] = []
    root: Path = Path(".")

    @model_validator(mode="after")
    def _check_registry(self) -> RepoConfig:
        if is_url(self.registry) and not self.registry.startswith(_POSTGRES):
            raise ValueError(
                f"registry {_masked(self.registry)} is not a path nor a postgresql:// URL"
            )
        return self

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self.root / p)

    def _location(self, path: str) -> str:
        return path if is_url(path) else str(self.resolve(path))

    @property
    def registry_is_postgres(self) -> bool:
        return self.registry.startswith(_POSTGRES)

    @property
    def registry_path(self) -> Path:
        """The SQLite registry file (a ConfigError for a Postgres registry)."""
        if self.registry_is_postgres:
            raise ConfigError(
                f"the registry is a PostgreSQL database ({_masked(self.registry)}), not a file",
                hint="use config.registry_key to name the registry",
            )
        return self.resolve(self.registry)

    @property
    def registry_key(self) -> str:
        """Names the registry, safe to show and to key caches by: the resolved SQLite path, or
        the Postgres URL with its password masked."""
        if self.registry_is_postgres:
            return _masked(self.registry)
        return str(self.resolve(self.registry).resolve())

    @property
    def online_path(self) -> Path:
        return self.resolve(self.online_store.path)

    @property
    def redis_prefix(self) -> str:
        return self.online_store.prefix or f"contextkit:{self.project}"

    @property
    def offline_location(self) -> str:
        """The offline store's root: a resolved local folder or ``s3://bucket/prefix``."""
        return self._location(self.offline_store.path)

    @property
    def vector_location(self) -> str:
        """The vector store's root: a resolved local folder or ``s3://bucket/prefix``."""
        return self._location(self.vector_store.path)

    @property
    def offline_path(self) -> Path:
        return self.resolve(self.offline_store.path)

    @property
    def vector_path(self) -> Path:
        return self.resolve(self.vector_store.path)

    def describe_stores(self) -> dict[str, str]:
        """Where each store lives, passwords masked: what logs, status and errors may show."""
        online = self.online_store
        return {
            "registry": self.registry_key,
            "online_store": _masked(online.url)
            if online.type == "redis" and online.url
            else str(self.online_path),
            "offline_store": self.offline_location,
            "vector_store": self.vector_location,
        }


def apply_env_overrides(
    raw: dict[str, Any], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``raw`` (the parsed file) with the ``CONTEXTKIT_*`` store variables applied: a variable
    replaces the store's path or URL; the file's other settings of a store of the same type
    (a Redis prefix) are kept."""
    env = os.environ if env is None else env
    out = dict(raw)
    for key, name in ENV_OVERRIDES.items():
        value = (env.get(name) or "").strip()
        if not value:
            continue
        if key == "registry":
            out[key] = value
            continue
        current = out.get(key)
        if key == "compute":
            # The engine and address come from the variable; views, embedding... from the file
            # (`local` means everything local: the per-view engines go too).
            dropped = ("engine", "address", "views") if value == "local" else ("engine", "address")
            keep = (
                {k: v for k, v in current.items() if k not in dropped}
                if isinstance(current, Mapping)
                else {}
            )
            out[key] = {**keep, **_compute_shorthand(value)}
            continue
        if key == "online_store":
            override = (
                {"type": "redis", "url": value}
                if value.startswith(_REDIS)
                else {
                    "type": "sqlite",
                    "path": value,
                }
            )
            if (
                isinstance(current, Mapping)
                and current.get("type", "redis" if "url" in current else "sqlite")
                == override["type"]
            ):
                override = {
                    **{k: v for k, v in current.items() if k not in ("url", "path")},
                    **override,
                }
            out[key] = override
        else:
            out[key] = {**current, "path": value} if isinstance(current, Mapping) else value
    return out


def find_config(path: str | Path = ".") -> Path:
    """The config file for ``path``: the file itself, or ``contextkit.yaml`` in the folder."""
    p = Path(path).resolve()
    if p.is_file():
        return p
    for name in CONFIG_NAMES:
        if (p / name).is_file():
            return p / name
    raise ConfigError(
        f"no contextkit.yaml in {p}",
        hint="run the command inside a contextkit repo, pass --repo PATH, or create one with "
        "`contextkit init`",
    )


def load_config(path: str | Path = ".") -> RepoConfig:
    """Read and validate the repo config found at ``path`` (a folder or the file itself)."""
    import yaml

    file = find_config(path)
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}", hint="fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping of settings", hint="see docs/concepts.md")
    raw = apply_env_overrides(raw)
    try:
        config = RepoConfig(**raw, root=file.parent)
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(str(p) for p in e["loc"]) + ": " + e["msg"] if e["loc"] else e["msg"]
            for e in exc.errors()
        )
        raise ConfigError(f"{file}: {problems}", hint="see docs/concepts.md#config") from None
    return config
