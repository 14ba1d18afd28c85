"""Realtime feature views: a Python function over request-context values and other views'
features, run at request time (online) and per event (offline), the same way.

The function is re-created from its stored source (like pandas-mode views), called with one dict
per source (the request-context values, then ``{feature: value}`` of each input view), and must
return ``{feature: value}`` for every declared feature, each of its declared type or None.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

from contextkit.errors import DefinitionError, RealtimeFeatureError
from contextkit.framework.specs import RealtimeFeatureViewSpec
from contextkit.types import Bool, Float64, Int64, String, Timestamp


@lru_cache(maxsize=256)
def _compile(name: str, source: str, function_name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {
        "datetime": datetime,
        "timedelta": timedelta,
        "date": date,
        "UTC": UTC,
        "math": math,
        "re": re,
    }
    exec(compile(source, f"<realtime view {name}>", "exec"), namespace)  # noqa: S102
    return namespace[function_name]


def compile_realtime(view: RealtimeFeatureViewSpec) -> Callable[..., Any]:
    """The view's function, compiled once per source text."""
    try:
        return _compile(view.name, view.python_source, view.function_name)
    except Exception as exc:
        raise DefinitionError(
            f"realtime view {view.name!r}: its function does not compile: "
            f"{type(exc).__name__}: {exc}",
            location=str(view.location) if view.location else None,
        ) from None


def run_realtime(
    view: RealtimeFeatureViewSpec,
    request: Mapping[str, Any],
    inputs: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Call the view's function and check what it returns: ``{feature: value}``."""
    function = compile_realtime(view)
    args: list[Any] = [dict(inputs[i]) for i in range(len(view.inputs))]
    if view.request_schema:
        args.insert(0, dict(request))
    where = str(view.location) if view.location else None
    try:
        out = function(*args)
    except Exception as exc:
        raise RealtimeFeatureError(
            f"realtime view {view.name!r} raised {type(exc).__name__}: {exc}",
            hint=f"fix the function (defined at {where}); input values may be None when an "
            "entity has no features",
            details={"view": view.name},
        ) from None
    if not isinstance(out, Mapping):
        raise RealtimeFeatureError(
            f"realtime view {view.name!r} returned {type(out).__name__}, not a dict",
            hint="return {feature_name: value} for every declared feature",
            details={"view": view.name},
        )
    declared = [f.name for f in view.features]
    missing = [n for n in declared if n not in out]
    extra = [n for n in out if n not in declared]
    if missing or extra:
        raise RealtimeFeatureError(
            f"realtime view {view.name!r} returned "
            + (f"no {', '.join(map(repr, missing))}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"undeclared {', '.join(map(repr, extra))}" if extra else ""),
            hint=f"return exactly its features: {', '.join(declared)}",
            details={"view": view.name},
        )
    return {f.name: _check(view, f.name, f.dtype or String, out[f.name]) for f in view.features}


def _check(view: RealtimeFeatureViewSpec, name: str, dtype: str, value: Any) -> Any:
    if value is None:
        return None
    ok = False
    if dtype == String:
        ok = isinstance(value, str)
    elif dtype == Int64:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        value = int(value) if ok else value
    elif dtype == Float64:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif dtype == Bool:
        ok = isinstance(value, bool) or type(value).__name__ == "bool_"
        value = bool(value) if ok else value
    elif dtype == Timestamp:
        ok = isinstance(value, datetime)
        if ok:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if not ok:
        raise RealtimeFeatureError(
            f"realtime view {view.name!r}: feature {name!r} is declared {dtype} but the function "
            f"returned {type(value).__name__} {value!r}",
            hint="return a value of the declared type, or None",
            details={"view": view.name, "feature": name},
        )
    return value


_SAMPLES = {
    String: "a",
    Int64: 1,
    Float64: 1.5,
    Bool: True,
    Timestamp: datetime(2024, 1, 1, tzinfo=UTC),
}


def sample_inputs(
    view: RealtimeFeatureViewSpec, inputs: Sequence[Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Typed sample arguments, to check at plan time that the function runs and returns its
    declared features."""
    request = {f.name: _SAMPLES.get(f.dtype or String, "a") for f in view.request_schema}
    views = []
    for upstream in inputs:
        values = {}
        for feature in upstream.features:
            dtype = feature.dtype or String
            values[feature.name] = [] if dtype.startswith("array<") else _SAMPLES.get(dtype, "a")
        views.append(values)
    return request, views
