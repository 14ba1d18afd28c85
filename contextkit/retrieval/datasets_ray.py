"""Rendered datasets on Ray Data: the searches and the prompt rendering of every row run in
``map_batches`` on the cluster, over the rows the point-in-time join left in storage.

With ``compute: ray`` a :class:`~contextkit.retrieval.datasets.RenderedDataset` runs like this:

1. The features are joined on Ray (:class:`~contextkit.compute.ray.offline.RayJoin`): the rows
   end up as Parquet files per range of row ids in the offline store's scratch folder, and the
   driver has only their paths. The events' columns are checked on the driver (label, request
   fields, query) before anything is rendered.
2. A Ray Data pipeline, in event order (``preserve_order``): one stateless step reads each
   range's files and sorts them by row id; then ``map_batches`` over an actor pool
   (``compute.embedding.concurrency`` actors, one CPU each) renders batches of the dataset's
   ``batch_size`` rows. Each actor opens the repo's stores once from the driver's config
   (registry, vector store: one LanceDB connection) and rebuilds the same dataset from its
   arguments, so its encoder is built once and its rows are rendered by the local engine's own
   code (``RenderedDataset._render``): the same searches (each row in the vector table's version
   of its time, queries encoded in one batch per search group), templates and token budget.
3. The driver iterates the rendered batches in order and writes them (JSONL lines or the table
   format), adding up the report from per-row columns the actors add (truncated, dropped
   documents, missing labels, searches served from the oldest version kept).

The actors need what the driver reads: the repo's folder (templates, sources, a model's
folder), the registry and the vector store, at the same paths on every node (PostgreSQL and
``s3://`` for a cluster of several machines); the driver's ``AWS_*`` variables and hosted
models' key variables reach them in their ``runtime_env``. An error in a row fails the run
with that row named, as locally.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from contextkit.errors import ComputeError, ContextKitError

if TYPE_CHECKING:
    import pyarrow as pa


def render_on_ray(dataset: Any, kind: str, report: Any, build: Callable[..., Any]) -> Iterator[Any]:
    """The output of ``dataset`` (a ``RenderedDataset``) per batch, in event order (see the
    module docstring): table-format record batches or lists of JSONL lines, as
    ``RenderedDataset._outputs`` yields them, counted into ``report``. ``build``
    (``generate_dataset``) rebuilds the dataset in each actor from ``dataset.arguments``."""
    from contextkit.compute.ray.offline import RayJoin
    from contextkit.compute.ray.runtime import connect

    compute = dataset._compute
    assert compute is not None
    features = dataset.features
    with RayJoin(features, compute) as run:
        if run.local is not None:  # no events: nothing to spread
            for batch in run.local.to_batches(max_chunksize=dataset._batch_size):
                yield dataset._render_output(batch, report.rows, kind, report)
            return
        dataset._check_columns([*run.columns, *features.feature_columns])
        connect(compute)
        import ray.data

        context = ray.data.DataContext.get_current()
        settings = {  # this pipeline's, taken when it is created
            "preserve_order": True,  # the events' order
            "raise_original_map_exception": True,  # a row's error as the actor raised it
            "enable_progress_bars": False,
        }
        saved = {k: _setting(context, k) for k in settings}
        for name, value in settings.items():
            _setting(context, name, value)
        try:
            pipeline = _pipeline(ray.data, dataset, run, kind, build)
        finally:
            for name, value in saved.items():
                _setting(context, name, value)
        try:
            for block in pipeline.iter_batches(batch_size=None, batch_format="pyarrow"):
                run._check()  # features.cancel(): stop between blocks (the pipeline is closed)
                yield dataset.count_block(block, kind, report)
        except Exception as exc:
            cause = _contextkit_cause(exc)
            if cause is None:
                raise _ray_failure(exc, _secret_env(dataset)) from None
            raise cause from None


def _pipeline(ray_data: Any, dataset: Any, run: Any, kind: str, build: Callable[..., Any]) -> Any:
    """Read each range in order, then render it in an actor pool (module docstring)."""
    from contextkit.compute.ray.runtime import runtime_env_options

    compute = dataset._compute
    assert compute is not None
    items = [{"range": i} for i in range(len(run.ranges))]
    pipeline = ray_data.from_items(items, override_num_blocks=len(items))
    pipeline = pipeline.map_batches(
        _read_ranges,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"filesystem": run.filesystem, "ranges": run.ranges},
        **runtime_env_options(),
    )
    return pipeline.map_batches(
        _Renderer,
        fn_constructor_kwargs={
            "config": dataset._ctx.config,
            "workspace": dataset._ctx.workspace,
            "arguments": dataset.arguments,
            "kind": kind,
            "build": build,
        },
        compute=ray_data.ActorPoolStrategy(size=max(1, compute.embedding.concurrency)),
        batch_size=dataset._batch_size,
        batch_format="pyarrow",
        num_cpus=1,
        **runtime_env_options(_secret_env(dataset)),  # AWS_*, the models' keys
    )


def _read_ranges(batch: pa.Table, filesystem: Any, ranges: list[list[str]]) -> pa.Table:
    """The joined rows of the batch's ranges of row ids, sorted by row id (kept)."""
    import pyarrow as pa

    from contextkit.compute.ray.offline import read_range

    return pa.concat_tables([read_range(filesystem, ranges[i]) for i in batch["range"].to_pylist()])


class _Renderer:
    """A Ray Data actor: the dataset rebuilt over this process's own stores, rendering
    batches of joined rows (``ROW`` in order) to the output format with per-row counts."""

    def __init__(
        self,
        config: Any,
        workspace: str,
        arguments: dict[str, Any],
        kind: str,
        build: Callable[..., Any],
    ) -> None:
        from contextkit.framework.workspace import Runtime

        self.runtime = Runtime.open(config, workspace)
        self.dataset = build(self.runtime, None, **arguments)
        self.kind = kind

    def __call__(self, table: pa.Table) -> pa.Table:
        return self.dataset.render_block(table, self.kind)


def _setting(context: Any, name: str, *value: Any) -> Any:
    """Read (or, given a value, set) a DataContext setting (``preserve_order`` is one of its
    execution options)."""
    holder = context.execution_options if name == "preserve_order" else context
    if value:
        setattr(holder, name, value[0])
    return getattr(holder, name)


def _secret_env(dataset: Any) -> dict[str, str]:
    """The hosted models' key variables the actors get besides the AWS_* ones."""
    from contextkit.compute.ray.runtime import model_env

    models = [view.model for view in dataset.plan.embedding_views.values()]
    return model_env(dataset._ctx.config.models, models)


def _ray_failure(exc: BaseException, extra: dict[str, str]) -> ComputeError:
    """A failure of the Ray pipeline that is not contextkit's own error: a ``ComputeError`` with
    the cause's last line, secrets the actors were given replaced (Ray's errors may echo the
    runtime environment)."""
    from contextkit.compute.ray.runtime import failure_reason

    return ComputeError(
        f"rendered dataset on Ray failed: {failure_reason(exc, extra)}"[:600],
        hint="check the cluster (`ray status`) and the models' config, then run it again",
    )


def _contextkit_cause(exc: BaseException) -> ContextKitError | None:
    """The contextkit error an actor raised, out of Ray's wrappers (``cause``, ``__cause__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "cause", None)  # a RayTaskError: the task's own error
        if isinstance(inner, BaseException):
            current = inner
            continue
        if isinstance(current, ContextKitError):
            return current
        current = current.__cause__
    return None
