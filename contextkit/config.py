"""The repo config file, ``contextkit.yaml``: the project's name and where its stores live.

Example::

    project: quickstart
    registry: .contextkit/registry.db
    online_store: {type: sqlite, path: .contextkit/online.db}
    offline_store: {type: parquet, path: .contextkit/offline}
    vector_store: {type: lancedb, path: .contextkit/vectors}
    models:                      # embedding models, by the name views use (minilm is built in)
      openai_small: {type: litellm, model: text-embedding-3-small, dimension: 1536}
    llm: {timeout_s: 60, retries: 2}   # completions: api_base, api_key_env, models, timeout_s...
    monitoring: {enabled: true}        # data-quality statistics in every materialization job
    prompts: {render_timeout_s: 2, max_output_chars: 1000000}   # limits of every prompt render

Relative paths are relative to the folder holding the config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contextkit.errors import ConfigError

CONFIG_NAMES = ("contextkit.yaml", "contextkit.yml")


class OnlineStoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["sqlite"] = "sqlite"
    path: str = ".contextkit/online.db"


class OfflineStoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["parquet"] = "parquet"
    path: str = ".contextkit/offline"


class VectorStoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["lancedb"] = "lancedb"
    path: str = ".contextkit/vectors"


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
    # Python files (globs relative to the repo root) that are not definitions, e.g. scripts.
    exclude: list[str] = []
    root: Path = Path(".")

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self.root / p)

    @property
    def registry_path(self) -> Path:
        return self.resolve(self.registry)

    @property
    def online_path(self) -> Path:
        return self.resolve(self.online_store.path)

    @property
    def offline_path(self) -> Path:
        return self.resolve(self.offline_store.path)

    @property
    def vector_path(self) -> Path:
        return self.resolve(self.vector_store.path)


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
    try:
        config = RepoConfig(**raw, root=file.parent)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{file}: {problems}", hint="see docs/concepts.md#config") from None
    return config
