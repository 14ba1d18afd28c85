"""Plan and apply: a plan is a value (a list of typed changes), printed, then applied atomically.

``compute_plan`` diffs the repo's validated specs against a workspace in the registry;
``apply_plan`` writes exactly that plan as the workspace's next version in one registry
transaction (and refuses if the workspace changed in between). Applying an empty plan is a no-op.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from contextkit.framework.specs import METADATA_FIELDS, AnySpec
from contextkit.stores.registry import RegistryStore

Action = Literal["create", "update", "delete"]
_ORDER = {
    "entity": 0,
    "file_source": 1,
    "batch_feature_view": 2,
    "embedding_view": 3,
    "prompt_view": 4,
    "context_service": 5,
}
# Kinds whose data is computed by `materialize`.
MATERIALIZED_KINDS = ("batch_feature_view", "embedding_view")
_IGNORED = {"location"}


@dataclass(frozen=True)
class FieldChange:
    """One changed field of an object: ``path`` like ``features[0].window_seconds``."""

    path: str
    old: Any
    new: Any


@dataclass(frozen=True)
class Change:
    """Create, update or delete one object; ``rematerialize`` when its data must be recomputed."""

    action: Action
    kind: str
    name: str
    fields: tuple[FieldChange, ...] = ()
    rematerialize: bool = False
    spec_json: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": self.kind,
            "name": self.name,
            "fields": [{"path": f.path, "old": f.old, "new": f.new} for f in self.fields],
            "rematerialize": self.rematerialize,
        }


@dataclass
class Plan:
    """The changes that would bring ``workspace`` (at ``base_version``) to the repo's state."""

    workspace: str
    base_version: int
    live: bool
    changes: list[Change] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.changes

    def summary(self) -> dict[str, Any]:
        counts = {
            a: sum(1 for c in self.changes if c.action == a) for a in ("create", "update", "delete")
        }
        return {
            **counts,
            "rematerialize": [c.name for c in self.changes if c.rematerialize],
            "changes": [c.to_dict() for c in self.changes],
        }


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


def _needs_rematerialize(kind: str, fields: list[FieldChange]) -> bool:
    if kind not in MATERIALIZED_KINDS:
        return False
    return any(f.path.split(".")[0].split("[")[0] not in METADATA_FIELDS for f in fields)


def compute_plan(registry: RegistryStore, workspace: str, specs: list[AnySpec]) -> Plan:
    """Diff the repo's specs against what ``workspace`` holds."""
    ws = registry.get_workspace(workspace)
    current = {(o.kind, o.name): o.spec for o in registry.list_objects(workspace)}
    plan = Plan(workspace=workspace, base_version=ws.version, live=ws.live)
    desired = {}
    for spec in specs:
        desired[(spec.kind, spec.name)] = spec.model_dump_json()
    for key, spec_json in desired.items():
        kind, name = key
        if key not in current:
            plan.changes.append(
                Change(
                    "create",
                    kind,
                    name,
                    rematerialize=kind in MATERIALIZED_KINDS,
                    spec_json=spec_json,
                )
            )
            continue
        fields = _diff(_comparable(current[key]), _comparable(spec_json))
        if fields:
            plan.changes.append(
                Change(
                    "update",
                    kind,
                    name,
                    tuple(fields),
                    _needs_rematerialize(kind, fields),
                    spec_json=spec_json,
                )
            )
    for key in current:
        if key not in desired:
            plan.changes.append(Change("delete", key[0], key[1]))
    plan.changes.sort(key=lambda c: (c.action == "delete", _ORDER.get(c.kind, 9), c.name))
    return plan


def apply_plan(registry: RegistryStore, plan: Plan, applied_by: str | None = None) -> int:
    """Apply ``plan`` atomically; returns the workspace's new version (unchanged when empty)."""
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


def render_plan(plan: Plan):
    """A rich renderable of the plan (used by ``contextkit plan`` and ``apply``)."""
    from rich.console import Group
    from rich.text import Text

    lines = []
    ws_kind = "live" if plan.live else "dev"
    if plan.is_empty:
        return Text(f"No changes: workspace {plan.workspace!r} ({ws_kind}) is up to date.")
    style = {"create": ("+", "green"), "update": ("~", "yellow"), "delete": ("-", "red")}
    lines.append(Text(f"Plan for workspace {plan.workspace!r} ({ws_kind}):", style="bold"))
    for change in plan.changes:
        sign, color = style[change.action]
        line = Text(f"  {sign} {change.action} {change.kind} ", style=color)
        line.append(change.name, style=f"bold {color}")
        if change.rematerialize and plan.live:
            line.append("  (needs materialization)", style="cyan")
        lines.append(line)
        for f in change.fields:
            lines.append(Text(f"      {f.path}: {_short(f.old)} -> {_short(f.new)}", style="dim"))
    s = plan.summary()
    lines.append(
        Text(f"{s['create']} to create, {s['update']} to update, {s['delete']} to delete.")
    )
    return Group(*lines)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
