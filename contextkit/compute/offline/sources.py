"""Which views a request reads and where from: the offline store when it covers the events,
else the sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from contextkit.compute.offline.reserved import (
    INGEST_LOG,
    OFFLINE_STORE,
    REALTIME,
    SOURCE,
    AnyView,
    ViewRequest,
)
from contextkit.errors import NotFoundError, StoreUnavailableError, translate_store_errors
from contextkit.framework.specs import (
    FeatureViewSpec,
    RealtimeFeatureViewSpec,
    StreamFeatureViewSpec,
)

if TYPE_CHECKING:
    from contextkit.framework.workspace import Runtime


def resolve_refs(
    runtime: Runtime, service_or_views: str | Sequence[str]
) -> list[tuple[AnyView, list[str]]]:
    """The views and features of a service, or of the named views (all their features)."""
    specs = runtime.specs()
    if isinstance(service_or_views, str) and service_or_views in specs.services:
        refs = [(r.view, r.features) for r in specs.services[service_or_views].features]
    else:
        names = [service_or_views] if isinstance(service_or_views, str) else service_or_views
        refs = [(n, None) for n in names]
    return select_features(runtime, refs)


def select_features(
    runtime: Runtime, refs: Sequence[tuple[str, Sequence[str] | None]]
) -> list[tuple[AnyView, list[str]]]:
    """``(view name, features or None for all)`` pairs as specs and feature lists, each view once
    (the first time it is named, with the union of the features asked for)."""
    views = runtime.specs().feature_views
    out: dict[str, tuple[AnyView, list[str]]] = {}
    for name, selected in refs:
        view = views.get(name)
        if view is None:
            specs = runtime.specs()
            raise NotFoundError(
                f"no service or feature view named {name!r} in workspace {runtime.workspace!r}",
                hint="services: "
                + (", ".join(sorted(specs.services)) or "none")
                + "; views: "
                + (", ".join(sorted(views)) or "none"),
            )
        _view, features = out.setdefault(name, (view, []))
        for feature in selected or [f.name for f in view.features]:
            if feature not in features:
                features.append(feature)
    return list(out.values())


def resolve(
    runtime: Runtime,
    view: AnyView,
    features: list[str],
    from_source: bool | None,
    earliest: datetime | None,
    latest: datetime | None,
) -> ViewRequest:
    from contextkit.compute.layout import inputs_table, offline_table

    if isinstance(view, StreamFeatureViewSpec):
        return ViewRequest(view, features, INGEST_LOG, [])
    if isinstance(view, RealtimeFeatureViewSpec):
        return ViewRequest(view, features, REALTIME, [])
    table = inputs_table if view.is_aggregate else offline_table
    name = table(runtime.workspace, view.name)
    files = runtime.offline.files(name)
    if from_source:
        return ViewRequest(view, features, SOURCE, files)
    if from_source is False:
        if not files:
            raise NotFoundError(
                f"view {view.name!r} has no offline data",
                hint="materialize it first, or pass from_source=True",
            )
        return ViewRequest(view, features, OFFLINE_STORE, files, _dataset(runtime, view, name))
    covered = bool(files) and earliest is not None and _covered(runtime, view, earliest, latest)
    if not covered:
        return ViewRequest(view, features, SOURCE, files)
    return ViewRequest(view, features, OFFLINE_STORE, files, _dataset(runtime, view, name))


def _dataset(runtime: Runtime, view: AnyView, name: str) -> Any:
    """The view's offline table as a dataset (local or S3), once each listed file is known to
    exist: one deleted by hand must be an error that says so, not DuckDB's, and never a silent
    gap."""
    from contextkit.stores.errors import StoreFailure, StoreUnavailable

    try:
        found = runtime.offline.dataset(name)
    except StoreUnavailable as exc:
        gone = exc.message.split(" file(s) of offline table", 1)[0]
        raise StoreUnavailableError(
            f"{gone} offline file(s) of view {view.name!r} are gone ({exc.message})",
            hint=f"rebuild them with `contextkit materialize {view.name} --full`, or pass "
            "from_source=True to compute the features from the sources",
        ) from None
    except StoreFailure as exc:  # the object store down, or refusing the credentials
        raise translate_store_errors(exc) from exc
    if found is None:
        raise NotFoundError(
            f"view {view.name!r} has no offline data",
            hint="materialize it first, or pass from_source=True",
        )
    return found


def _covered(runtime: Runtime, view: FeatureViewSpec, earliest: datetime, latest: datetime) -> bool:
    """Whether the offline store holds every row the events need for this view.

    Needed: the view's rows from ``earliest`` less its lookback (the largest window or ttl; for
    an attribute view without ttl its whole history, as the latest row may be of any age) up to
    ``latest``. Held: the ranges of the successful jobs since the last full one, provided no job
    of another definition ran since (it wrote its own rows).
    """
    from contextkit.compute.materialize import spec_hash
    from contextkit.stores.registry import COMPLETED_STATUSES

    current = spec_hash(view)
    ranges: list[tuple[datetime | None, datetime]] = []
    for job in runtime.registry.list_jobs(runtime.workspace, view.name, limit=500):
        if job.status == "failed":  # it published nothing that is read here
            continue
        if job.spec_hash != current:  # also one still running (or that crashed while writing)
            return False
        if job.status not in COMPLETED_STATUSES or not job.range_end:
            continue  # "warning" jobs (an expectation failed, data written) count as completed
        start = datetime.fromisoformat(job.range_start) if job.range_start else None
        ranges.append((start, datetime.fromisoformat(job.range_end)))
        if job.details.get("full"):
            break
    else:
        return False  # no full job (among the last 500): what came before is unknown
    needed = None
    if view.is_aggregate or view.ttl_seconds:
        lookback = max(view.max_window_seconds, view.ttl_seconds or 0)
        try:
            needed = earliest - timedelta(seconds=lookback)
        except OverflowError:  # before datetime.min: the whole history is needed
            needed = None
    return _holds(ranges, needed, latest)


def _holds(ranges: list[tuple[datetime | None, datetime]], start: datetime | None, last) -> bool:
    """Whether the ranges ``[s, e)`` (``s`` None: from the beginning) hold all of ``[start, last]``
    (``start`` None: from the beginning) without a gap."""
    spans: list[list] = []
    for s, e in sorted(ranges, key=lambda r: (r[0] is not None, r[0])):
        if spans and (s is None or s <= spans[-1][1]):
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    return any((s is None or (start is not None and s <= start)) and last < e for s, e in spans)
