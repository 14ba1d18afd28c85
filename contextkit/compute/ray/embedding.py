"""Embedding views on Ray Data: the encoding of an embedding view's job runs in an actor pool.

The job stays what :func:`contextkit.compute.embedding.materialize_embedding_view` makes it: the
driver reads the documents, chunks and hashes them and plans what changed (exactly as the local
engine), and commits the vectors to LanceDB as one new table version. Only the texts to encode
travel: the plan's pending chunks are put into Ray's object store in blocks of
``compute.embedding.batch_size`` rows, and ``map_batches`` runs them through a pool of
:class:`EncoderActor` (``concurrency`` actors, each loading the view's model once from its spec,
with ``num_gpus`` GPUs each where the cluster has GPUs). The driver iterates the results as they
finish, checks every batch as the local engine does, reports progress per batch, and hands the
batches to the store's all-or-nothing write.

Failures: a worker killed mid-batch is restarted by Ray and its batch run again (the result is
exact); an encoder that raises fails the job with the view and the first chunk that fails named;
a cancelled job closes the dataset (its actors are killed) and publishes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from contextkit.compute.ray.runtime import failure_reason, model_env, runtime_env_options
from contextkit.embeddings.errors import EncoderFailure
from contextkit.errors import ComputeError

if TYPE_CHECKING:
    from contextkit.config import ComputeConfig
    from contextkit.embeddings import EncodePlan, Encoder
    from contextkit.framework.specs import EmbeddingViewSpec

# Columns an actor adds to the rows it encoded (dropped again on the driver).
_VECTOR = "__ck_vector"
_ERROR = "__ck_error"
_TEXT_SHOWN = 60  # characters of a failing chunk's text in the error


@dataclass(frozen=True)
class RayEncoding:
    """How one job encodes on Ray: rows per batch, actors, GPUs and CPUs per actor."""

    batch_size: int
    concurrency: int
    num_gpus: float
    num_cpus: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_resources(compute: ComputeConfig, ray: ModuleType, rows: int) -> RayEncoding:
    """The pool for ``rows`` chunks on the connected cluster: ``compute.embedding``'s settings,
    never more actors than batches nor than the cluster can place; GPUs per actor as configured,
    else one per actor when the cluster has GPUs (CPU actors otherwise)."""
    settings = compute.embedding
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0) or 0)
    cpus = float(resources.get("CPU", 0) or 0)
    num_gpus = settings.num_gpus if settings.num_gpus is not None else (1.0 if gpus else 0.0)
    if num_gpus and gpus < num_gpus:
        raise ComputeError(
            f"compute.embedding.num_gpus is {num_gpus:g} per actor, but the Ray cluster has "
            f"{gpus:g} GPU(s)",
            hint="leave num_gpus out (GPU actors when the cluster has GPUs, CPU actors "
            "otherwise) or add GPU nodes",
        )
    if not num_gpus and cpus < 1:
        raise ComputeError(
            "the Ray cluster has no CPU to run an encoder actor on",
            hint="add a worker node (`ray start --address HEAD:PORT --num-cpus N`)",
        )
    fits = int(gpus // num_gpus) if num_gpus else int(cpus)
    batches = max(1, math.ceil(rows / settings.batch_size))
    size = max(1, min(settings.concurrency, batches, fits))
    return RayEncoding(settings.batch_size, size, num_gpus)


class EncoderActor:
    """One actor of the pool: builds the view's encoder once from its model spec (the same
    factory the local engine uses: a packaged or configured model, never a download) and
    encodes the rows of each batch that need the model."""

    def __init__(
        self,
        view: str,
        model: str,
        models: Mapping[str, Any] | None,
        base_dir: str,
        gpu: bool = False,
    ) -> None:
        from contextkit.embeddings import get_encoder

        self.view = view
        if gpu:
            models = on_gpu(model, models)
        self.encoder = get_encoder(model, models, base_dir=base_dir)

    def __call__(self, rows: pa.Table) -> pa.Table:
        from contextkit.embeddings import encode_pending

        error = None
        try:
            vectors = encode_pending(self.encoder, rows)
        except Exception as exc:  # noqa: BLE001 - reported as data: the driver names the view
            vectors = np.zeros((rows.num_rows, self.encoder.dimension), dtype=np.float32)
            error = self._first_failure(rows, exc)
        dim = vectors.shape[1]
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
        errors = pa.array([error] + [None] * (rows.num_rows - 1), pa.string())
        return rows.append_column(_VECTOR, column).append_column(_ERROR, errors)

    def _first_failure(self, rows: pa.Table, exc: Exception) -> str:
        """The first chunk of the batch the encoder fails on alone (each tried by itself),
        else the batch's first chunk, with the error."""
        from contextkit.embeddings import encode_pending

        for i in range(rows.num_rows):
            try:
                encode_pending(self.encoder, rows.slice(i, 1))
            except Exception as one:  # noqa: BLE001
                return _describe(rows, i, one)
        return _describe(rows, 0, exc)


def _describe(rows: pa.Table, i: int, exc: BaseException) -> str:
    text = rows.column("text")[i].as_py() or ""
    shown = text if len(text) <= _TEXT_SHOWN else text[:_TEXT_SHOWN] + "..."
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"chunk {rows.column('id')[i].as_py()!r} (text {shown!r}): {type(exc).__name__}: {reason}"
    )


def on_gpu(model: str, models: Mapping[str, Any] | None) -> dict[str, Any]:
    """The models config with ``model`` on the actor's GPU: a sentence-transformers model on
    torch whose entry names no device runs on ``cuda`` (ONNX and hosted models are left as
    they are). The model's name, hence the chunks' content hashes, does not change."""
    from contextkit.embeddings import model_configs

    configs = model_configs(models)
    entry = dict(configs.get(model, {}))
    kind = str(entry.get("type", "sentence-transformers")).replace("_", "-")
    if kind in ("sentence-transformers", "local") and entry.get("backend", "torch") == "torch":
        entry.setdefault("device", "cuda")
    return {**configs, model: entry}


def encode_on_ray(
    plan: EncodePlan,
    *,
    ray: ModuleType,
    compute: ComputeConfig,
    view: EmbeddingViewSpec,
    models: Mapping[str, Any] | None,
    root: Path,
    on_start: Any = None,
) -> Iterator[pa.RecordBatch]:
    """The plan's batches, encoded by an actor pool on the connected cluster (see the module
    doc). ``on_start(RayEncoding)`` is called once the pool is sized (nothing to encode: never).
    Iterating is what runs the dataset; closing the iterator early stops it."""

    def encoded_by(windows: Iterator[pa.Table]) -> Iterator[tuple[pa.Table, np.ndarray]]:
        refs, rows = _put_blocks(ray, windows, compute.embedding.batch_size)
        if not refs:
            return
        pool = plan_resources(compute, ray, rows)
        if on_start is not None:
            on_start(pool)
        yield from _run_pool(ray, refs, pool, view, models, root, plan.encoder)

    return plan.batches(encoded_by=encoded_by)


def _put_blocks(ray: ModuleType, windows: Iterator[pa.Table], rows_per_block: int):
    """The pending windows into the object store in blocks of ``rows_per_block`` rows: one
    ``map_batches`` batch each, so the pool shares the work (and progress comes per batch)."""
    refs = []
    rows = 0
    for window in windows:
        for start in range(0, window.num_rows, rows_per_block):
            block = window.slice(start, rows_per_block).combine_chunks()
            refs.append(ray.put(block))
            rows += block.num_rows
    return refs, rows


def _run_pool(
    ray: ModuleType,
    refs: list[Any],
    pool: RayEncoding,
    view: EmbeddingViewSpec,
    models: Mapping[str, Any] | None,
    root: Path,
    encoder: Encoder,
) -> Iterator[tuple[pa.Table, np.ndarray]]:
    import ray.data as ray_data

    secrets = model_env(models, [view.model])  # the model's key: scrubbed from failures too
    context = ray_data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI draws its own, from the driver's progress
    dataset = ray_data.from_arrow_refs(refs).map_batches(
        EncoderActor,
        fn_constructor_kwargs={
            "view": view.name,
            "model": view.model,
            "models": {k: dict(v) for k, v in (models or {}).items()},
            "base_dir": str(root),
            "gpu": pool.num_gpus > 0,
        },
        compute=ray_data.ActorPoolStrategy(size=pool.concurrency),
        batch_size=pool.batch_size,
        batch_format="pyarrow",
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus or None,
        **runtime_env_options(secrets),  # AWS_*, the model's key
    )
    batches = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    dim = encoder.dimension
    try:
        while True:
            try:
                out = next(batches)
            except StopIteration:
                return
            except Exception as exc:
                raise _pool_failure(view, exc, secrets) from None  # the cause may echo secrets
            failed = out.column(_ERROR).drop_null()
            if len(failed):
                raise EncoderFailure(
                    f"embedding view {view.name!r}: encoding failed on Ray at {failed[0].as_py()}",
                    model=encoder.name,
                    hint="nothing was published; fix the document or the model config and "
                    "run `contextkit materialize` again",
                )
            vectors = out.column(_VECTOR).combine_chunks().flatten().to_numpy()
            yield out.drop_columns([_VECTOR, _ERROR]), vectors.reshape(-1, dim)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the dataset: its actors are killed, nothing more is encoded
        del refs[:]


def _pool_failure(
    view: EmbeddingViewSpec, exc: BaseException, secrets: Mapping[str, str]
) -> Exception:
    """A ContextKit error for what the dataset raised (the pool could not start, the cluster
    was lost): the view named, the cause's last line kept, with the AWS_* values and the
    model's key the actors were given (``secrets``) scrubbed: Ray's errors may echo the
    actors' runtime environment."""
    reason = failure_reason(exc, secrets)
    return ComputeError(
        f"embedding view {view.name!r}: encoding on Ray failed: {reason}"[:600],
        hint="nothing was published; check the cluster (`ray status`) and the model config, "
        "then run `contextkit materialize` again",
    )
