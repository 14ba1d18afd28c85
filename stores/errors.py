"""Errors raised by the stores; the core turns them into user-facing errors."""

from __future__ import annotations


class StoreFailure(Exception):
    """A store cannot do what was asked; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class RegistryVersionError(StoreFailure):
    """The registry file was written by a newer contextkit, or is not a registry at all."""


class ApplyConflictError(StoreFailure):
    """The workspace changed between plan and apply."""


class MissingError(StoreFailure):
    """A workspace or record does not exist."""


class StoreUnavailable(StoreFailure):
    """A store's data is missing, unreadable or damaged: files deleted or corrupted under a
    running process, a file that is not a database. Rebuilding it (re-materializing) fixes it."""


class StoreServerUnavailable(StoreFailure):
    """A store server cannot serve now: unreachable, wrong credentials, read-only or full, a
    missing bucket. The same request may succeed once the server is back or the configuration
    is fixed (clients reconnect by themselves)."""


class ObjectStoreUnavailable(StoreServerUnavailable):
    """An object store (S3, MinIO, R2) cannot serve a store's location: one of the three below,
    or an error it answered. HTTP 503 ``store_error``; the message names the location and the
    endpoint (password masked), never a secret key."""

    code = "store_error"
    http_status = 503


class BucketMissing(ObjectStoreUnavailable):
    """The location's bucket does not exist at the endpoint."""


class CredentialsRefused(ObjectStoreUnavailable):
    """The endpoint refused the credentials (unknown key, wrong secret, expired token, denied)."""


class EndpointUnreachable(ObjectStoreUnavailable):
    """No answer from the endpoint within the connect and request timeouts and retries."""


class WriteConflict(StoreFailure):
    """A concurrent writer changed what a transaction read; nothing was written. Run it again."""


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, safe for errors, logs and reprs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if "," in parts.netloc:  # several hosts (a Redis Cluster's seed nodes): keep them as given
        if not password:
            return url
        auth, _, hosts = parts.netloc.rpartition("@")
        user = auth.partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))
    try:
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{f':{port}' if port else ''}"))
