"""Entities: what features describe, and the join keys that identify them."""

from __future__ import annotations

from collections.abc import Sequence

from contextkit.framework.definitions._base import Definition, caller_location, checked_arguments
from contextkit.framework.specs import (
    EntitySpec,
    FieldSpec,
)
from contextkit.types import Field


class Entity(Definition):
    """What features describe: ``Entity(name="user", join_keys=["user_id"])``.

    Join keys are column names (their type comes from the views that use them) or ``Field``s.
    """

    kind = "entity"

    @checked_arguments
    def __init__(
        self,
        name: str,
        join_keys: Sequence[str | Field],
        *,
        description: str | None = None,
        owner: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, description, owner, tags, caller_location())
        if isinstance(join_keys, str | Field) or not join_keys:
            raise self._error(
                f"entity {name!r}: join_keys must be a non-empty list",
                hint='write join_keys=["user_id"]',
            )
        # (name, dtype) pairs; a plain name's dtype is taken from the views that output it.
        self.join_keys: list[tuple[str, str | None]] = [
            (k.name, k.dtype) if isinstance(k, Field) else (str(k), None) for k in join_keys
        ]

    def to_spec(self, root: str | None = None) -> EntitySpec:
        keys = [FieldSpec(name=name, dtype=dtype) for name, dtype in self.join_keys]
        return EntitySpec(join_keys=keys, **self._common(root))
