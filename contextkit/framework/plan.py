"""Plan and apply: a plan is a frozen value, printed, then applied step by step.

``compute_plan`` diffs the repo's validated specs against a workspace in the registry. The plan
holds the object changes (each with named details and its consequences) and the ordered
``steps`` that carry them out: the registry write, the data drops of deleted views, and the
(re-)materializations that ``contextkit materialize`` runs next. ``contextkit plan`` prints the
steps and ``apply`` runs the ones marked ``run_by="apply"`` from the same value, so nothing apply
does is missing from the plan. ``apply_plan`` writes the plan as the workspace's next version in
one registry transaction (and refuses if the workspace changed in between).

The JSON form (``Plan.to_json()``, ``contextkit plan --json``) is documented in docs/cli.md; its
``schema`` number changes only when a field is removed or changes meaning.
"""

from __future__ import annotations

import difflib
import getpass
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from contextkit.framework.durations import format_seconds
from contextkit.framework.expectations import format_age
from contextkit.framework.specs import METADATA_FIELDS, AnySpec
from contextkit.stores.registry import RegistryStore

PLAN_SCHEMA = 1

Action = Literal["create", "update", "delete"]
# Every kind of object, in dependency order (creates run in this order, deletes in reverse).
KIND_ORDER = (
    "entity",
    "file_source",
    "database_source",
    "push_source",
    "batch_feature_view",
    "stream_feature_view",
    "realtime_feature_view",
    "embedding_view",
    "prompt_view",
    "context_service",
    "server_group",
    "transform_server_group",
)
_ORDER = {kind: i for i, kind in enumerate(KIND_ORDER)}
# Kinds whose data is computed by `materialize`.
MATERIALIZED_KINDS = ("batch_feature_view", "embedding_view")
_IGNORED = {"location"}
# Text fields shown as a unified diff with line numbers.
_TEXT_FIELDS = ("template", "sql", "python_source")
# Lists of named items, diffed by name: field -> what one item is called.
_NAMED_LISTS = {
    "features": "feature",
    "searches": "search",
    "request_context": "request field",
    "join_keys": "join key",
    "columns": "column",
    "output_schema": "output column",
    "metadata_schema": "metadata column",
    "request_schema": "request field",
}
# Fields of an aggregate that define what the feature means.
_MEANING = ("column", "function", "window_seconds", "n", "kind")
_KIND_LABEL = {
    "entity": "entity",
    "file_source": "file source",
    "database_source": "database source",
    "push_source": "push source",
    "batch_feature_view": "feature view",
    "stream_feature_view": "stream feature view",
    "realtime_feature_view": "realtime feature view",
    "embedding_view": "embedding view",
    "prompt_view": "prompt view",
    "context_service": "service",
    "server_group": "server group",
    "transform_server_group": "transform server group",
}


@dataclass(frozen=True)
class FieldChange:
    """One changed field of an object, as stored: ``path`` like ``features[0].window_seconds``
    (kept for the registry's history; people read :class:`Detail`)."""

    path: str
    old: Any
    new: Any


@dataclass(frozen=True)
class Detail:
    """One readable line of an update: ``+``/``-``/``~`` a named part (``feature tickets_7d``,
    ``template``, ``entities``), a short text, and for text fields a unified diff whose lines carry
    their line numbers."""

    op: Literal["+", "-", "~"]
    subject: str
    text: str = ""
    diff: tuple[str, ...] = ()

    def line(self) -> str:
        return f"{self.op} {self.subject}" + (f": {self.text}" if self.text else "")

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "subject": self.subject, "text": self.text, "diff": list(self.diff)}


ConsequenceCode = Literal[
    "needs_materialization",
    "invalidates_online",
    "meaning_changed",
    "breaks_consumers",
    "drops_data",
    "long_texts",
    "schedule_too_short",
]


@dataclass(frozen=True)
class Consequence:
    """What a change does beyond the registry: ``level`` ``info`` or ``warning``."""

    code: ConsequenceCode
    level: Literal["info", "warning"]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "level": self.level, "message": self.message}


@dataclass(frozen=True)
class Change:
    """Create, update or delete one object; ``rematerialize`` when its data must be recomputed."""

    action: Action
    kind: str
    name: str
    fields: tuple[FieldChange, ...] = ()
    rematerialize: bool = False
    spec_json: str | None = None
    details: tuple[Detail, ...] = ()
    consequences: tuple[Consequence, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The registry's record of the change (its apply history)."""
        return {
            "action": self.action,
            "kind": self.kind,
            "name": self.name,
            "fields": [{"path": f.path, "old": f.old, "new": f.new} for f in self.fields],
            "rematerialize": self.rematerialize,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": self.kind,
            "name": self.name,
            "rematerialize": self.rematerialize,
            "details": [d.to_dict() for d in self.details],
            "consequences": [c.to_dict() for c in self.consequences],
        }


StepAction = Literal["write_registry", "drop_data", "materialize"]


@dataclass(frozen=True)
class Step:
    """One effect of the plan, in order. ``run_by`` says who carries it out: ``apply`` (the
    registry write and data drops) or ``materialize`` (the jobs `contextkit materialize` runs
    next). ``data`` names what a drop removes (``online``, ``offline``, ``vectors``); a
    materialization carries its ``range`` and ``estimated_rows`` (source rows it reads, when
    known)."""

    action: StepAction
    kind: str
    name: str
    run_by: Literal["apply", "materialize"]
    description: str
    data: tuple[str, ...] = ()
    range: str | None = None
    estimated_rows: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": self.kind,
            "name": self.name,
            "run_by": self.run_by,
            "description": self.description,
            "data": list(self.data),
            "range": self.range,
            "estimated_rows": self.estimated_rows,
        }


@dataclass(frozen=True)
class Plan:
    """The changes that would bring ``workspace`` (at ``base_version``) to the repo's state, and
    the steps that carry them out."""

    workspace: str
    base_version: int
    live: bool
    changes: tuple[Change, ...] = ()
    steps: tuple[Step, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.changes

    @property
    def warnings(self) -> list[str]:
        return [q.message for c in self.changes for q in c.consequences if q.level == "warning"]

    def summary(self) -> dict[str, Any]:
        """What the registry records with the version (``contextkit versions``)."""
        counts = {
            a: sum(1 for c in self.changes if c.action == a) for a in ("create", "update", "delete")
        }
        return {
            **counts,
            "rematerialize": [c.name for c in self.changes if c.rematerialize],
            "changes": [c.to_dict() for c in self.changes],
        }

    def to_json(self) -> dict[str, Any]:
        """The documented machine-readable plan (``contextkit plan --json``, docs/cli.md)."""
        counts = {
            a: sum(1 for c in self.changes if c.action == a) for a in ("create", "update", "delete")
        }
        return {
            "schema": PLAN_SCHEMA,
            "workspace": self.workspace,
            "live": self.live,
            "base_version": self.base_version,
            "changes_pending": not self.is_empty,
            "summary": counts,
            "changes": [c.to_json() for c in self.changes],
            "steps": [s.to_json() for s in self.steps],
            "warnings": self.warnings,
        }


# -- diffing --------------------------------------------------------------------------------------
def _comparable(spec_json: str | dict[str, Any]) -> dict[str, Any]:
    data = json.loads(spec_json) if isinstance(spec_json, str) else dict(spec_json)
    return {k: v for k, v in data.items() if k not in _IGNORED}


def _diff(old: Any, new: Any, path: str = "") -> list[FieldChange]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else key
            out.extend(_diff(old.get(key), new.get(key), sub))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out.extend(_diff(a, b, f"{path}[{i}]"))
        return out
    return [] if old == new else [FieldChange(path, old, new)]


def _needs_rematerialize(kind: str, fields: Iterable[FieldChange]) -> bool:
    if kind not in MATERIALIZED_KINDS:
        return False
    return any(f.path.split(".")[0].split("[")[0] not in METADATA_FIELDS for f in fields)


def text_diff(old: str, new: str, context: int = 2) -> tuple[str, ...]:
    """A unified diff of two texts; each line is ``<sign><old no> <new no> | text``."""
    a, b = old.splitlines(), new.splitlines()
    out: list[str] = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for group in matcher.get_grouped_opcodes(context):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{i1 + 1},{i2 - i1} +{j1 + 1},{j2 - j1} @@")
        for tag, a1, a2, b1, b2 in group:
            if tag == "equal":
                for k in range(a2 - a1):
                    out.append(f" {a1 + k + 1:>4} {b1 + k + 1:>4} | {a[a1 + k]}")
                continue
            for k in range(a1, a2):
                out.append(f"-{k + 1:>4} {'':>4} | {a[k]}")
            for k in range(b1, b2):
                out.append(f"+{'':>4} {k + 1:>4} | {b[k]}")
    return tuple(line.rstrip() for line in out)


def _value(field: str, value: Any) -> str:
    if value is None:
        return "none"
    if field.endswith("_seconds") and isinstance(value, int):
        return format_seconds(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value) if value else "(none)"
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        return ", ".join(v["name"] for v in value) if value else "(none)"
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _label(field: str) -> str:
    return field[: -len("_seconds")] if field.endswith("_seconds") else field


def _describe_feature(feature: dict[str, Any]) -> str:
    if feature.get("kind") == "aggregate":
        what = feature["function"] + (f" of {feature['column']}" if feature.get("column") else "")
        if feature.get("n"):
            what += f" (n={feature['n']})"
        return f"{what} over {format_seconds(feature['window_seconds'])}"
    return f"attribute ({feature['dtype']})" if feature.get("dtype") else "attribute"


def _by_name(items: list[Any]) -> dict[str, dict[str, Any]] | None:
    if not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        return None
    named = {i["name"]: i for i in items}
    return named if len(named) == len(items) else None


def _details(old: dict[str, Any], new: dict[str, Any]) -> list[Detail]:
    out: list[Detail] = []
    for key in list(old) + [k for k in new if k not in old]:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key in _TEXT_FIELDS and isinstance(a, str) and isinstance(b, str):
            where = new.get("template_file") if key == "template" else None
            out.append(Detail("~", key, where or "", text_diff(a, b)))
        elif key == "messages" and isinstance(a, list) and isinstance(b, list):
            out.extend(_message_details(a, b))
        elif key in _NAMED_LISTS and isinstance(a, list) and isinstance(b, list):
            out.extend(_named_list_details(_NAMED_LISTS[key], a, b, key))
        elif isinstance(a, dict) and isinstance(b, dict):
            changed = [
                f"{k} {_value(k, a.get(k))} -> {_value(k, b.get(k))}"
                for k in list(a) + [k for k in b if k not in a]
                if a.get(k) != b.get(k)
            ]
            out.append(Detail("~", key, "; ".join(changed)))
        else:
            out.append(Detail("~", key, f"{_value(key, a)} -> {_value(key, b)}"))
    return out


def _message_details(old: list[Any], new: list[Any]) -> list[Detail]:
    out = []
    for i in range(max(len(old), len(new))):
        a = old[i] if i < len(old) else None
        b = new[i] if i < len(new) else None
        if a == b:
            continue
        role = (b or a)[0]
        subject = f"message {i + 1} ({role})"
        if a is None:
            out.append(Detail("+", subject, "", text_diff("", b[1])))
        elif b is None:
            out.append(Detail("-", subject, "", text_diff(a[1], "")))
        else:
            text = f"role {a[0]} -> {b[0]}" if a[0] != b[0] else ""
            out.append(Detail("~", subject, text, text_diff(a[1], b[1])))
    return out


def _named_list_details(item: str, old: list[Any], new: list[Any], field: str) -> list[Detail]:
    a, b = _by_name(old), _by_name(new)
    if a is None or b is None:
        return [Detail("~", field, f"{_value(field, old)} -> {_value(field, new)}")]
    out = []
    for name in a:
        if name not in b:
            out.append(Detail("-", f"{item} {name}"))
    for name, spec in b.items():
        if name not in a:
            text = _describe_feature(spec) if item == "feature" else ""
            out.append(Detail("+", f"{item} {name}", text))
        elif a[name] != spec:
            before = a[name]
            parts = [
                f"{_label(k)} {_value(k, before.get(k))} -> {_value(k, spec.get(k))}"
                for k in list(before) + [k for k in spec if k not in before]
                if before.get(k) != spec.get(k)
            ]
            out.append(Detail("~", f"{item} {name}", ", ".join(parts)))
    if list(a) != list(b) and set(a) == set(b) and not out:
        out.append(Detail("~", f"{field} order", f"{', '.join(a)} -> {', '.join(b)}"))
    return out


# -- consequences ---------------------------------------------------------------------------------
RowEstimator = Callable[[AnySpec], int | None]


def _range(spec: AnySpec) -> str:
    if spec.kind == "embedding_view":
        return "every current document of its sources"
    start: datetime | None = getattr(spec, "feature_start_time", None)
    since = f"since {start.date().isoformat()}" if start else "of its sources"
    return f"full history {since} up to now"


def _consumers(specs: Iterable[AnySpec], view: str) -> list[tuple[str, str, list[str] | None]]:
    """``(kind label, name, features or None for all)`` of every object serving ``view``."""
    out = []
    for spec in specs:
        if spec.kind in ("context_service", "prompt_view"):
            for ref in spec.features:
                if ref.view == view:
                    out.append((_KIND_LABEL[spec.kind], spec.name, ref.features))
    return out


def _consequences(
    change: Change,
    old: dict[str, Any] | None,
    new_spec: AnySpec | None,
    specs: list[AnySpec],
    live: bool,
    rows: int | None,
) -> list[Consequence]:
    out: list[Consequence] = []
    kind, name = change.kind, change.name
    label = _KIND_LABEL.get(kind, kind)
    if live and change.rematerialize and new_spec is not None:
        verb = "needs materialization" if change.action == "create" else "needs re-materialization"
        estimate = f", ~{rows:,} source rows" if rows is not None else ""
        out.append(
            Consequence("needs_materialization", "info", f"{verb}: {_range(new_spec)}{estimate}")
        )
        if change.action == "update" and getattr(new_spec, "online", False):
            out.append(
                Consequence(
                    "invalidates_online",
                    "info",
                    "invalidates online values: they were computed by the previous definition "
                    "and are served as they are until `contextkit materialize` runs",
                )
            )
    long_texts = getattr(new_spec, "long_texts", None)  # embedding views without chunking
    if long_texts:
        where = f" ({new_spec.location})" if getattr(new_spec, "location", None) else ""
        out.append(
            Consequence(
                "long_texts",
                "warning",
                f"{long_texts['share']:.1%} of {long_texts['sampled']:,} sampled texts of "
                f"{label} {name}{where} are longer than its model's window of "
                f"{long_texts['window']} tokens (longest {long_texts['longest']:,}) and would be "
                'truncated: set chunking="auto" to split them to the window',
            )
        )
    if live and change.action == "delete" and kind in MATERIALIZED_KINDS:
        what = "vectors" if kind == "embedding_view" else "online values and offline rows"
        out.append(Consequence("drops_data", "warning", f"drops the {what} of {label} {name}"))
    if change.action != "update" or old is None or new_spec is None:
        return out
    before = _by_name(old.get("features") or [])
    after = _by_name(json.loads(new_spec.model_dump_json()).get("features") or [])
    if before is None or after is None:
        return out
    consumers = _consumers(specs, name)
    for feature, spec in after.items():
        was = before.get(feature)
        if was is None or all(was.get(k) == spec.get(k) for k in _MEANING):
            continue
        users = [f"{k} {n}" for k, n, feats in consumers if feats is None or feature in feats]
        if users:
            out.append(
                Consequence(
                    "meaning_changed",
                    "warning",
                    f"{name}.{feature} now computes {_describe_feature(spec)} (was "
                    f"{_describe_feature(was)}) and keeps its name while served by "
                    f"{', '.join(users)}: rename it, or confirm consumers expect the new meaning",
                )
            )
    for feature in before:
        if feature in after:
            continue
        users = [f"{k} {n}" for k, n, feats in consumers if feats is None]
        if users:
            out.append(
                Consequence(
                    "breaks_consumers",
                    "warning",
                    f"removed feature {name}.{feature} is served by {', '.join(users)} (all of "
                    f"{name}'s features): its consumers stop receiving it",
                )
            )
    return out


# How many of a view's newest completed jobs say how long its jobs typically take.
TYPICAL_JOBS = 5


def _schedule_consequences(
    registry: RegistryStore, workspace: str, spec: AnySpec
) -> list[Consequence]:
    """A warning when a batch view's ``batch_schedule`` is shorter than its jobs typically take
    (the median of its newest completed jobs): the scheduler would start each run before the
    previous one ended, and the view would fall further behind every period."""
    if spec.kind != "batch_feature_view" or not (
        getattr(spec, "online", False) or getattr(spec, "offline", False)
    ):
        return []
    period = int(spec.batch_schedule_seconds)
    took = [
        j.duration_s
        for j in registry.list_jobs(workspace, spec.name, 4 * TYPICAL_JOBS)
        if j.status in ("succeeded", "warning") and j.duration_s is not None
    ][:TYPICAL_JOBS]
    if not took:
        return []
    typical = sorted(took)[len(took) // 2]
    if typical <= period:
        return []
    longest = max(took)
    unit = 3600 if longest >= 3600 else 60
    enough = int(-(-longest // unit) * unit)  # the longest run, rounded up to an hour or minute
    measured = (
        f"its last job took {format_age(took[0])}"
        if len(took) == 1
        else f"its last {len(took)} completed jobs took {format_age(typical)} (median; longest "
        f"{format_age(longest)})"
    )
    return [
        Consequence(
            "schedule_too_short",
            "warning",
            f"batch_schedule of {spec.name} is {format_seconds(period)}, but {measured}: each "
            "scheduled run would start before the previous one ends, and the view would fall "
            f"further behind every period; set batch_schedule=timedelta(seconds={enough}) "
            f"({format_seconds(enough)}) or longer, or make its transformation faster",
        )
    ]


# -- the plan -------------------------------------------------------------------------------------
def compute_plan(
    registry: RegistryStore,
    workspace: str,
    specs: list[AnySpec],
    *,
    estimate_rows: RowEstimator | None = None,
) -> Plan:
    """Diff the repo's specs against what ``workspace`` holds; ``estimate_rows(spec)`` (optional)
    says how many source rows a view's materialization reads."""
    ws = registry.get_workspace(workspace)
    current = {(o.kind, o.name): o.spec for o in registry.list_objects(workspace)}
    desired = {(spec.kind, spec.name): spec for spec in specs}
    changes: list[Change] = []
    ranges: dict[tuple[str, str], tuple[str, int | None]] = {}

    def rows_of(spec: AnySpec) -> int | None:
        rows = None
        if estimate_rows is not None and ws.live:
            try:
                rows = estimate_rows(spec)
            except Exception:  # an estimate never fails a plan
                rows = None
        ranges[(spec.kind, spec.name)] = (_range(spec), rows)
        return rows

    for key, spec in desired.items():
        kind, name = key
        spec_json = spec.model_dump_json()
        if key not in current:
            change = Change(
                "create", kind, name, rematerialize=kind in MATERIALIZED_KINDS, spec_json=spec_json
            )
            rows = rows_of(spec) if change.rematerialize else None
            consequences = _consequences(change, None, spec, specs, ws.live, rows)
            if ws.live:
                consequences += _schedule_consequences(registry, workspace, spec)
            changes.append(_with(change, consequences=tuple(consequences)))
            continue
        old, new = _comparable(current[key]), _comparable(spec_json)
        fields = _diff(old, new)
        if not fields:
            continue
        change = Change(
            "update",
            kind,
            name,
            tuple(fields),
            _needs_rematerialize(kind, fields),
            spec_json=spec_json,
            details=tuple(_details(old, new)),
        )
        rows = rows_of(spec) if change.rematerialize else None
        consequences = _consequences(change, old, spec, specs, ws.live, rows)
        if ws.live:
            consequences += _schedule_consequences(registry, workspace, spec)
        changes.append(_with(change, consequences=tuple(consequences)))
    for key in current:
        if key not in desired:
            change = Change("delete", key[0], key[1])
            changes.append(
                _with(change, consequences=tuple(_consequences(change, None, None, [], ws.live, 0)))
            )
    # Creates and updates upstream first; deletes after them, downstream first.
    changes.sort(
        key=lambda c: (
            c.action == "delete",
            -_ORDER.get(c.kind, 99) if c.action == "delete" else _ORDER.get(c.kind, 99),
            c.name,
        )
    )
    return Plan(
        workspace=workspace,
        base_version=ws.version,
        live=ws.live,
        changes=tuple(changes),
        steps=tuple(_steps(ws.version, ws.live, workspace, changes, ranges)),
    )


def _with(change: Change, **values: Any) -> Change:
    from dataclasses import replace

    return replace(change, **values)


def _steps(
    version: int,
    live: bool,
    workspace: str,
    changes: list[Change],
    ranges: dict[tuple[str, str], tuple[str, int | None]],
) -> list[Step]:
    if not changes:
        return []
    counts = {a: sum(1 for c in changes if c.action == a) for a in ("create", "update", "delete")}
    steps = [
        Step(
            "write_registry",
            "workspace",
            workspace,
            "apply",
            f"write version {version + 1} of workspace {workspace!r} ({counts['create']} "
            f"create, {counts['update']} update, {counts['delete']} delete) in one transaction",
        )
    ]
    if not live:
        return steps
    for change in changes:
        if change.action == "delete" and change.kind in MATERIALIZED_KINDS:
            data = ("vectors",) if change.kind == "embedding_view" else ("online", "offline")
            steps.append(
                Step(
                    "drop_data",
                    change.kind,
                    change.name,
                    "apply",
                    f"drop the {' and '.join(data)} data of {_KIND_LABEL[change.kind]} "
                    f"{change.name}",
                    data=data,
                )
            )
    for change in changes:
        if change.rematerialize and change.action != "delete":
            range_text, rows = ranges.get((change.kind, change.name), (None, None))
            steps.append(
                Step(
                    "materialize",
                    change.kind,
                    change.name,
                    "materialize",
                    f"materialize {_KIND_LABEL[change.kind]} {change.name}",
                    range=range_text,
                    estimated_rows=rows,
                )
            )
    return steps


def apply_plan(registry: RegistryStore, plan: Plan, applied_by: str | None = None) -> int:
    """Write ``plan`` to the registry atomically (its ``write_registry`` step); returns the
    workspace's new version (unchanged when empty). The other ``apply`` steps (data drops) are
    run by the caller, which owns the stores."""
    if plan.is_empty:
        return plan.base_version
    upserts = [(c.kind, c.name, c.spec_json) for c in plan.changes if c.action != "delete"]
    deletes = [(c.kind, c.name) for c in plan.changes if c.action == "delete"]
    return registry.apply(
        plan.workspace,
        plan.base_version,
        upserts,  # type: ignore[arg-type]
        deletes,
        applied_by or _whoami(),
        plan.summary(),
    )


def _whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


# -- printing -------------------------------------------------------------------------------------
_SIGN = {"create": ("+", "green"), "update": ("~", "yellow"), "delete": ("-", "red")}
_DETAIL_STYLE = {"+": "green", "-": "red", "~": "yellow"}


def plan_lines(plan: Plan) -> list[tuple[str, str]]:
    """The plan as ``(text, style)`` lines: what ``contextkit plan`` prints."""
    ws_kind = "live" if plan.live else "dev"
    if plan.is_empty:
        return [(f"No changes: workspace {plan.workspace!r} ({ws_kind}) is up to date.", "")]
    lines = [(f"Plan for workspace {plan.workspace!r} ({ws_kind}):", "bold")]
    for change in plan.changes:
        sign, color = _SIGN[change.action]
        lines.append(
            (
                f"  {sign} {change.action} {change.kind} {change.name}",
                color,
            )
        )
        for detail in change.details:
            lines.append((f"      {detail.line()}", _DETAIL_STYLE[detail.op]))
            for d in detail.diff:
                style = {"+": "green", "-": "red", "@": "cyan"}.get(d[:1], "dim")
                lines.append((f"        {d}", style))
        for q in change.consequences:
            mark = "!" if q.level == "warning" else "=>"
            lines.append(
                (f"      {mark} {q.message}", "bold red" if q.level == "warning" else "cyan")
            )
    c = {a: sum(1 for x in plan.changes if x.action == a) for a in ("create", "update", "delete")}
    lines.append(
        (f"{c['create']} to create, {c['update']} to update, {c['delete']} to delete.", "")
    )
    lines.append(("Steps:", "bold"))
    for i, step in enumerate(plan.steps, 1):
        by = "apply" if step.run_by == "apply" else "then `contextkit materialize`"
        extra = ""
        if step.range:
            extra = f": {step.range}" + (
                f", ~{step.estimated_rows:,} source rows" if step.estimated_rows is not None else ""
            )
        lines.append((f"  {i}. [{by}] {step.description}{extra}", ""))
    if plan.warnings:
        lines.append(
            (f"{len(plan.warnings)} warning(s): read the lines marked '!' above.", "bold red")
        )
    return lines


def format_plan(plan: Plan) -> str:
    """The plan as plain text (no colors), one line each."""
    return "\n".join(text for text, _ in plan_lines(plan))


def render_plan(plan: Plan):
    """A rich renderable of the plan (used by ``contextkit plan`` and ``apply``)."""
    from rich.console import Group
    from rich.text import Text

    return Group(
        *(
            Text(text, style=style, no_wrap=True, overflow="ignore")
            for text, style in plan_lines(plan)
        )
    )
