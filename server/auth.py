"""API-key access control for the HTTP server, behind ``ServerState.context``'s ``authorize`` hook.

Two steps. *Authentication* runs in the ops middleware for every path except the open ones
(``/health``, ``/docs``, ``/openapi.json``), before routing: it reads the key from
``Authorization: Bearer <key>`` (or Tecton's ``Authorization: Tecton-key <key>``) and verifies it
against the registry (cached, see :meth:`contextkit.governance.access.Access.authenticate`).
Missing, invalid, revoked or expired keys get 401, whatever the path, so an anonymous client learns
nothing about routes or bodies. *Authorization* runs when a route asks
``state.context(request, workspace, role)`` for its context: a key used on another workspace, or
for a role it lacks, gets 403. A route author writes no auth code. Each refusal is logged as one
JSON line with the reason, the key's public id when known, the client and the request id, never
the key.
"""

from __future__ import annotations

import logging

from fastapi import Request

from contextkit.errors import AuthenticationError, KeyRejected
from contextkit.governance.access import Access, ApiKey
from contextkit.server.metrics import Metrics

log = logging.getLogger("contextkit.auth")

# Schemes accepted in the Authorization header, lower-cased (schemes are case-insensitive).
SCHEMES = (b"bearer", b"tecton-key")
PRINCIPAL = "contextkit.principal"  # where the verified key is kept in the request scope


def bearer_key(scope) -> str | None:
    """The key of ``Authorization: Bearer <key>`` / ``Tecton-key <key>``; None when absent.

    Raises ``AuthenticationError`` for an Authorization header of another shape.
    """
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.strip().partition(b" ")
            key = key.strip()
            if scheme.lower() not in SCHEMES or not key:
                raise AuthenticationError(
                    "the Authorization header must be `Bearer <key>` or `Tecton-key <key>`",
                    hint="send the key as `Authorization: Bearer <key>`",
                )
            return key.decode("latin-1")
    return None


class KeyAuthorizer:
    """``authorize(request, workspace, role)``: raise 401/403 unless the key allows it."""

    def __init__(self, access: Access, metrics: Metrics | None = None) -> None:
        self.access = access
        self.metrics = metrics

    def __call__(self, request: Request, workspace: str, role: str) -> None:
        key = self.authenticate(request.scope)
        if not key.allows(workspace, role):
            self._refused(request.scope, "forbidden", key.id)
            raise key.refusal(
                workspace,
                role,
                default_workspace=bool(request.scope.get("contextkit.default_workspace")),
            )

    def authenticate(self, scope) -> ApiKey:
        """The request's verified key (once per request, kept in the scope), or 401."""
        found = scope.get(PRINCIPAL)
        if found is not None:
            return found
        try:
            key = bearer_key(scope)
            if key is None:
                raise AuthenticationError(
                    "this endpoint needs an API key",
                    hint="send `Authorization: Bearer <key>`; an admin creates keys with "
                    "`contextkit access create-key`",
                )
            found = self.access.authenticate(key)
        except KeyRejected as exc:
            self._refused(scope, exc.reason, exc.key_id)
            raise
        except AuthenticationError:
            self._refused(scope, "missing" if bearer_key_absent(scope) else "malformed", None)
            raise
        scope[PRINCIPAL] = found
        return found

    def _refused(self, scope, reason: str, key_id: str | None) -> None:
        if self.metrics is not None:
            self.metrics.auth_failures.inc(reason)
        client = scope.get("client")
        log.warning(
            "refused request: %s",
            reason,
            extra={
                "fields": {
                    "event": "auth_refused",
                    "reason": reason,
                    "key_id": key_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "client": client[0] if client else None,
                    "request_id": scope.get("contextkit.request_id"),
                }
            },
        )


def bearer_key_absent(scope) -> bool:
    return all(name != b"authorization" for name, _ in scope["headers"])
