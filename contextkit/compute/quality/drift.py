"""Drift: how far a job's statistics moved from its *reference* job's.

The reference is by default the view's previous job that wrote its stores (succeeded or warning)
with the same scope; a pinned job (``Monitoring.set_reference``) replaces it. Numbers and
categories: the population stability index ``PSI = sum((p_i - q_i) * ln(p_i / q_i))`` over
buckets: the reference's decile bins (numbers) or its top values plus "other" (strings,
booleans), and one bucket for nulls; ``q`` are the reference's shares, ``p`` the job's, both
smoothed with half a row per bucket so that an empty bucket stays finite. Rule of thumb: < 0.1
stable, 0.1 to 0.25 a moderate shift, > 0.25 a significant one. Embedding views: the centroid
shift, ``1 - cos(c, c_ref)`` of the mean unit vectors (0: same direction; 1: orthogonal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from contextkit.stores.registry import (
    RegistryStore,
)

if TYPE_CHECKING:
    pass


PSI_MODERATE, PSI_SIGNIFICANT = 0.1, 0.25
# The registry setting that pins a view's reference job (Monitoring.set_reference).
REFERENCE_SETTING = "monitoring.reference:{workspace}:{view}"


def psi(reference: Sequence[float], current: Sequence[float]) -> float | None:
    """Population stability index between two histograms over the same buckets (counts).

    Each bucket is smoothed with half a row, so an empty bucket costs a finite amount. None when
    either side is empty.
    """
    ref_total, cur_total = float(sum(reference)), float(sum(current))
    if ref_total <= 0 or cur_total <= 0 or len(reference) != len(current):
        return None
    k = len(reference)
    out = 0.0
    for r, c in zip(reference, current, strict=True):
        q = (r + 0.5) / (ref_total + 0.5 * k)
        p = (c + 0.5) / (cur_total + 0.5 * k)
        out += (p - q) * math.log(p / q)
    return max(0.0, out)


def centroid_shift(current: Sequence[float], reference: Sequence[float]) -> float | None:
    """``1 - cos`` of the angle between two centroids (0: same direction, 1: orthogonal)."""
    if len(current) != len(reference) or len(current) == 0:
        return None
    dot = sum(a * b for a, b in zip(current, reference, strict=True))
    na = math.sqrt(sum(a * a for a in current))
    nb = math.sqrt(sum(b * b for b in reference))
    if na == 0 or nb == 0:
        return None
    return max(0.0, 1.0 - dot / (na * nb))


def drift(stats: dict[str, Any], reference: dict[str, Any]) -> None:
    """Fill each column's PSI against ``reference`` and the summary ``stats["drift"]``."""
    worst: tuple[float, str] | None = None
    ref_job = reference.get("job_id")
    for name, entry in stats["columns"].items():
        current = entry.pop("_reference_counts", None)
        ref = reference.get("columns", {}).get(name)
        if current is None or ref is None:
            continue
        if entry["kind"] in ("numeric", "text"):
            ref_counts = list(ref["bins"]["counts"])
        else:
            ref_counts = [n for _v, n in ref["top"]] + [ref.get("other", 0)]
            current = current + [entry["count"] - sum(current)]
        value = psi([*ref_counts, ref["nulls"]], [*current, entry["nulls"]])
        if value is None:
            continue
        entry["drift"] = {"psi": value, "reference_job": ref_job}
        if worst is None or value > worst[0]:
            worst = (value, name)
    stats["drift"] = {
        "reference_job": ref_job,
        "max_psi": worst[0] if worst else None,
        "column": worst[1] if worst else None,
    }


def same_as(previous: dict[str, Any]) -> dict[str, Any]:
    """The previous job's statistics for rows known to be the same: no drift against it."""
    import copy

    stats = copy.deepcopy(
        {
            k: v
            for k, v in previous.items()
            if k not in ("job_id", "pinned", "expectations", "vectors")
        }
    )
    for entry in stats.get("columns", {}).values():
        if entry.get("kind") in ("numeric", "text", "categorical", "boolean"):
            entry["drift"] = {"psi": 0.0, "reference_job": previous["job_id"]}
    stats["drift"] = {"reference_job": previous["job_id"], "max_psi": 0.0, "column": None}
    stats["reused_from"] = previous["job_id"]
    return stats


def reference_stats(
    registry: RegistryStore, workspace: str, view: str, scope: str, *, exclude: str | None = None
) -> dict[str, Any] | None:
    """The statistics a new job of ``view`` is compared with: the pinned reference job when one
    is set (and has the scope), else the newest job that wrote the stores with that scope."""
    pinned = registry.get_setting(REFERENCE_SETTING.format(workspace=workspace, view=view))
    if pinned:
        record = registry.get_job_stats(pinned)
        if record is not None and record.scope == scope and record.stats.get("complete"):
            return {**record.stats, "job_id": record.job_id, "pinned": True}
    for record in registry.list_job_stats(workspace, view, limit=20, completed_only=True):
        if record.job_id != exclude and record.scope == scope and record.stats.get("complete"):
            return {**record.stats, "job_id": record.job_id}
    return None
