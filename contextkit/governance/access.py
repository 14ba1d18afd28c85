"""Principals, API keys and workspace roles: who may do what, where.

A *principal* is a service account (an app, a pipeline) or a user. Each API key belongs to one
principal and grants one role in one workspace (or in every workspace, ``"*"``). Keys live in the
registry, hashed; the plain key is returned once, when it is created::

    ctx = contextkit.connect("examples/quickstart")
    new = ctx.access.create_key("app", workspace="prod", role="reader")
    print(new.key)                   # ck_3f9a1c2e7b4d_...: give it to the app, it is not stored
    ctx.access.authenticate(new.key).allows("prod", "reader")   # True
    ctx.access.revoke(new.record.id)

Roles, and what each allows (``admin`` includes the other two; ``ingester`` does *not* include
``reader``: a pipeline that pushes records has no business reading features back):

========== ============================================================================
reader     retrieve: features, services, search, context, chat, metrics (on ``"*"``)
ingester   push records (ingest)
admin      everything, including apply, materialize and key management
========== ============================================================================
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

from contextkit.errors import (
    BadRequestError,
    KeyRejected,
    NotFoundError,
    PermissionDeniedError,
)
from contextkit.stores.errors import MissingError
from contextkit.stores.registry import ApiKeyRecord, RegistryStore

READER, INGESTER, ADMIN = "reader", "ingester", "admin"
ROLES = (READER, INGESTER, ADMIN)
# What holding a role lets a key do (the roles a route may require).
GRANTS: dict[str, frozenset[str]] = {
    READER: frozenset({READER}),
    INGESTER: frozenset({INGESTER}),
    ADMIN: frozenset({READER, INGESTER, ADMIN}),
}
# What a route that requires a role does, as refusals word it.
ACTIONS = {READER: "read", INGESTER: "ingest into", ADMIN: "administer"}
KINDS = ("service", "user")
ALL_WORKSPACES = "*"
KEY_PREFIX = "ck"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.@-]{0,127}")


def hash_key(key: str) -> str:
    """The stored form of a key.

    A plain SHA-256, not a slow password hash (bcrypt, scrypt, argon2): those exist because
    passwords are short and guessable, so each guess must be made expensive. Our keys carry 256
    bits from ``secrets``; no number of SHA-256 guesses finds one, so a slow hash would add
    milliseconds to every uncached request and no safety. A leaked registry still gives no key.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The public id inside a key (``ck_<id>_<secret>``), or None when it is not shaped so."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 12 or not parts[2]:
        return None
    return parts[1]


@dataclass(frozen=True)
class ApiKey:
    """A key as contextkit shows it: everything but the secret and its hash."""

    id: str
    principal: str
    kind: str
    workspace: str
    role: str
    description: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    @classmethod
    def of(cls, record: ApiKeyRecord) -> ApiKey:
        return cls(
            record.id,
            record.principal,
            record.kind,
            record.workspace,
            record.role,
            record.description,
            record.created_at,
            record.expires_at,
            record.revoked_at,
        )

    @property
    def label(self) -> str:
        """How logs and messages name the key: its id and principal, never the secret."""
        return f"{self.id} ({self.principal})"

    def status(self, now: float | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or time.time()):
            return "expired"
        return "active"

    def allows(self, workspace: str, role: str) -> bool:
        """Whether this key may act in ``workspace`` with ``role`` (ignores revocation)."""
        in_scope = self.workspace == ALL_WORKSPACES or self.workspace == workspace
        return in_scope and role in GRANTS[self.role]

    def refusal(
        self, workspace: str, role: str, *, default_workspace: bool = False
    ) -> PermissionDeniedError:
        """The 403 for a request this key may not make (``allows`` is False): what is missing
        and how to get it. A missing role comes first, since no workspace would help then. Never
        names the key's own workspace, nor (``default_workspace``) the server's default one."""
        action = ACTIONS.get(role, role)
        if workspace == ALL_WORKSPACES:
            return PermissionDeniedError(
                "this endpoint needs a key for all workspaces ('*')",
                hint="create one with `contextkit access create-key --name NAME "
                f"--workspace '*' --role {role}`",
            )
        where = (
            "the server's default workspace" if default_workspace else f"workspace {workspace!r}"
        )
        if role not in GRANTS[self.role]:
            target = "WORKSPACE" if default_workspace else workspace
            return PermissionDeniedError(
                f"this API key has the role {self.role}, which may not {action} {where}",
                hint=f"this needs the role {role} (or admin): use a key with it, or have an admin "
                f"create one with `contextkit access create-key --name NAME --workspace {target} "
                f"--role {role}`",
            )
        if default_workspace:
            return PermissionDeniedError(
                f"this API key may not {action} {where}",
                hint="name the workspace your key is for in the request",
            )
        return PermissionDeniedError(
            f"this API key may not {action} {where}",
            hint=f"use a key with the role {role} (or admin) in workspace {workspace!r}",
        )


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: ``key`` is the only copy of the secret there will ever be."""

    key: str
    record: ApiKey


class Access:
    """Create, list, revoke and check API keys in a registry (``ctx.access``)."""

    def __init__(self, registry: RegistryStore) -> None:
        self.registry = registry
        # sha256(key) -> (registry change token when verified, key). The cache holds digests, not
        # keys, and is dropped whenever the registry changes, so a revoke applies on the next
        # request. The lock keeps the dict consistent when routes run in a thread pool.
        self._verified: dict[str, tuple[tuple[int, int], ApiKey]] = {}
        self._lock = threading.Lock()

    # -- management ---------------------------------------------------------------------------
    def create_key(
        self,
        name: str,
        *,
        workspace: str,
        role: str,
        kind: str = "service",
        description: str = "",
        expires_in_s: int | None = None,
    ) -> NewKey:
        """A new key for principal ``name`` with ``role`` in ``workspace`` (``"*"``: all)."""
        if not _NAME.fullmatch(name):
            raise BadRequestError(
                f"principal name {name!r} is not valid",
                hint="use letters, digits, '_', '-', '.' and '@', starting with a letter",
            )
        if role not in ROLES:
            raise BadRequestError(f"unknown role {role!r}", hint="roles: " + ", ".join(ROLES))
        if kind not in KINDS:
            raise BadRequestError(f"unknown principal kind {kind!r}", hint="kinds: service, user")
        if workspace != ALL_WORKSPACES:
            try:
                self.registry.get_workspace(workspace)
            except MissingError as exc:
                raise NotFoundError(exc.message, hint=exc.hint) from None
        if expires_in_s is not None and expires_in_s <= 0:
            raise BadRequestError("a key's lifetime must be positive", hint="e.g. --expires-in 90d")
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        record = ApiKeyRecord(
            id=key_id,
            key_hash=hash_key(key),
            principal=name,
            kind=kind,
            workspace=workspace,
            role=role,
            description=description,
            created_at=now,
            expires_at=now + expires_in_s if expires_in_s else None,
            revoked_at=None,
        )
        self.registry.insert_api_key(record)
        return NewKey(key, ApiKey.of(record))

    def list_keys(
        self,
        workspace: str | None = None,
        *,
        principal: str | None = None,
        include_inactive: bool = False,
    ) -> list[ApiKey]:
        """Keys (active ones unless ``include_inactive``), by principal then age."""
        keys = [ApiKey.of(r) for r in self.registry.list_api_keys(workspace, principal)]
        if include_inactive:
            return keys
        now = time.time()
        return [k for k in keys if k.status(now) == "active"]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke one key by its id; it stops working on the server's next request."""
        if not self.registry.revoke_api_key(key_id, time.time()):
            found = self.registry.find_api_key(key_id)
            if found is None:
                raise NotFoundError(
                    f"no API key with id {key_id!r}", hint="list them with `contextkit access list`"
                )
            return ApiKey.of(found)  # already revoked: revoking again is not an error
        record = self.registry.find_api_key(key_id)
        assert record is not None
        return ApiKey.of(record)

    def revoke_principal(self, name: str, workspace: str | None = None) -> list[ApiKey]:
        """Revoke every active key of principal ``name`` (in ``workspace``, if given)."""
        active = self.list_keys(workspace, principal=name)
        if not active:
            raise NotFoundError(
                f"no active API key for {name!r}"
                + (f" in workspace {workspace!r}" if workspace else ""),
                hint="list them with `contextkit access list --all`",
            )
        return [self.revoke(k.id) for k in active]

    # -- checking -----------------------------------------------------------------------------
    def authenticate(self, key: str) -> ApiKey:
        """The active key ``key`` is, or :class:`KeyRejected` (an ``AuthenticationError``).

        Verified keys are cached by digest until the registry changes, so the hot path costs a
        SHA-256 and a ``PRAGMA data_version``; a revoke or expiry is seen on the next request.
        """
        digest = hash_key(key)
        token = self.registry.change_token()
        cached = self._verified.get(digest)
        if cached is not None and cached[0] == token:
            found = cached[1]
            if found.expires_at is None or found.expires_at > time.time():
                return found
        found = self._verify(key, digest)
        with self._lock:
            if len(self._verified) > 10_000:  # bounded: one entry per distinct valid key
                self._verified.clear()
            self._verified[digest] = (token, found)
        return found

    def _verify(self, key: str, digest: str) -> ApiKey:
        key_id = key_id_of(key)
        record = self.registry.find_api_key(key_id) if key_id else None
        # compare_digest: the time taken must not tell how much of a guessed hash was right.
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            raise KeyRejected("invalid", key_id if record is not None else None)
        found = ApiKey.of(record)
        status = found.status()
        if status != "active":
            raise KeyRejected(status, found.id)
        return found
