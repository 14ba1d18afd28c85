"""``/mcp`` on the app ``contextkit serve`` runs: the SDK's Streamable HTTP app, stateless.

Stateless: a 2026-07-28 client sends self-contained requests, and an older client gets a fresh
transport per request, so any serving node answers any request (no sticky sessions). JSON
responses, except the SSE stream of ``subscriptions/listen``. The host app's lifespan must run
:meth:`McpEndpoint.running` (the SDK's session manager and the list-changed watcher), or
requests would hang; :func:`mount` adds the route, the caller enters ``running()``.

Requests pass the host app's ops middleware first, as every route does: the request id, the body
limit (413), the API key (401 in contextkit's error shape), the rate limit (429) and the access
log. The SDK's token-verification hook then verifies the key again (:class:`ApiKeyVerifier`:
cached, microseconds) and hands it to the handlers, which show each caller what its key may use
(:class:`HttpGate`). DNS-rebinding protection: see :mod:`contextkit.server.mcp.settings`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from pydantic import ConfigDict

from contextkit.client import Context
from contextkit.errors import AuthenticationError, ContextKitError
from contextkit.server.common import ServerState, error_response
from contextkit.server.mcp.server import ContextkitMcp, Gate
from contextkit.server.mcp.settings import MCP_PATH, McpSettings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request

    from contextkit.governance.access import Access, ApiKey


class ApiKeyToken(AccessToken):
    """The SDK's access token for a verified contextkit API key (kept in ``api_key``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    api_key: Any = None


class ApiKeyVerifier:
    """The SDK's ``TokenVerifier`` hook: a bearer token is a contextkit API key, verified
    against the registry (cached: a SHA-256 and a ``PRAGMA data_version`` per request)."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self._tokens: dict[ApiKey, ApiKeyToken] = {}  # by verified key: built once

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            key = self.access.authenticate(token)  # revocation and expiry: checked each time
        except AuthenticationError:
            return None
        found = self._tokens.get(key)
        if found is None:
            if len(self._tokens) > 10_000:  # bounded: one entry per distinct valid key
                self._tokens.clear()
            found = self._tokens[key] = ApiKeyToken(
                token=key.id,  # the key's public id: the secret is not kept past verification
                client_id=key.id,
                scopes=[key.role],
                expires_at=int(key.expires_at) if key.expires_at else None,
                subject=key.principal,
                claims={"workspace": key.workspace, "role": key.role},
                api_key=key,
            )
        return found


class HttpGate(Gate):
    """A caller of ``/mcp``: the key the SDK verified, checked as the HTTP API checks it."""

    def __init__(self, state: ServerState, request: Request) -> None:
        self.state = state
        self.request = request
        user = request.scope.get("user")
        self.key: ApiKey | None = (
            getattr(user.access_token, "api_key", None)
            if isinstance(user, AuthenticatedUser)
            else None
        )

    def may(self, workspace: str, role: str) -> bool:
        if self.state.authorize is None:
            return True
        if self.key is not None:
            return self.key.allows(workspace, role)
        try:  # an app-supplied authorizer: ask it
            self.state.check_access(self.request, workspace, role)
        except ContextKitError:
            return False
        return True

    def context(self, workspace: str, role: str, service: str | None = None) -> Context:
        return self.state.context(self.request, workspace, role, service=service)


class McpEndpoint:
    """The ASGI endpoint of ``/mcp``: the SDK's Streamable HTTP app, rebuilt (with a new session
    manager, which runs once) each time the host app's lifespan starts :meth:`running`."""

    def __init__(self, mcp: ContextkitMcp, settings: McpSettings, verifier: ApiKeyVerifier | None):
        self.mcp = mcp
        self.settings = settings
        self.verifier = verifier
        self._app: Any = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the SDK's session manager (and the list-changed watcher) for the app's lifetime."""
        server = self.mcp.server
        auth = None
        if self.verifier is not None:
            # Resource-server mode only: the verifier checks contextkit keys; no OAuth
            # authorization server is run or advertised (issuer_url is required, not used).
            auth = AuthSettings(issuer_url="http://localhost", resource_server_url=None)
        self._app = server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            json_response=True,
            stateless_http=True,
            transport_security=self.settings.transport_security(),
            auth=auth,
            token_verifier=self.verifier,
        )
        try:
            async with server.session_manager.run():
                yield
        finally:
            self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            response = error_response(
                503, "not_ready", "the MCP endpoint is not running (the app's lifespan is not)"
            )
            await response(scope, receive, send)
            return
        # The SDK's Starlette app stamps itself as scope["app"]; the host app's handlers that
        # run after it (the access log, error handlers) must still see the host app.
        host_app = scope.get("app")
        try:
            await self._app(scope, receive, send)
        finally:
            if host_app is not None:
                scope["app"] = host_app


def mount(app: FastAPI, state: ServerState, settings: McpSettings) -> McpEndpoint:
    """Serve MCP at ``/mcp`` on ``app`` (POST only: a stateless server opens no GET stream).
    The caller's lifespan must enter the returned endpoint's :meth:`~McpEndpoint.running`."""
    from starlette.routing import Route

    from contextkit.server.auth import KeyAuthorizer

    mcp = ContextkitMcp(state.ctx, settings, lambda request: HttpGate(state, request))
    verifier = (
        ApiKeyVerifier(state.authorize.access)
        if isinstance(state.authorize, KeyAuthorizer)
        else None
    )
    endpoint = McpEndpoint(mcp, settings, verifier)
    # First in the routing table: every MCP request would otherwise be matched against each
    # route of the API before this one (its path is exact, so the order changes nothing else).
    app.router.routes.insert(0, Route(MCP_PATH, endpoint=endpoint, methods=["POST"]))
    return endpoint
