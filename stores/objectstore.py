"""Where a store keeps its files: a local folder or ``s3://bucket/prefix``, and how to reach it.

:func:`open_location` turns a store's location into a :class:`Location`: a pyarrow filesystem
(``LocalFileSystem`` or ``S3FileSystem``), the root path inside it, and the translation of the
object store's failures. The offline store, the vector store and source files all go through it,
so every S3 client of contextkit is configured, bounded and worded the same way.

S3 settings (:class:`S3Settings`) come from the standard AWS variables, so MinIO, R2, Ceph or moto
work like AWS: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (``http://`` allowed),
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` or
``AWS_DEFAULT_REGION`` (default ``us-east-1``) and ``AWS_MAX_ATTEMPTS``. Without keys in the
environment the SDKs' own chain applies (config files, instance roles).

Failures are bounded: connections time out after ``connect_timeout_s``, a request that stalls
after ``request_timeout_s``, and each request is tried at most ``max_attempts`` times, so an
unreachable endpoint is an error within seconds, never a hang. A missing bucket, refused
credentials and an unreachable endpoint each become one error (:class:`BucketMissing`,
:class:`CredentialsRefused`, :class:`EndpointUnreachable`, all :class:`ObjectStoreUnavailable`)
that names the store, the location and the endpoint (its password masked, never a secret key)
with a hint.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from contextkit.stores.errors import (
    BucketMissing,
    CredentialsRefused,
    EndpointUnreachable,
    ObjectStoreUnavailable,
    StoreFailure,
    mask_url,
)

DEFAULT_REGION = "us-east-1"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# What the object store's clients (pyarrow's AWS SDK, LanceDB's object_store) say: first that
# the error is theirs (so an encoder's "timed out" is never taken for S3's), then the cause.
_OBJECT_STORE = ("AWS Error", 'store: "S3"', "RetryError", "object_store", "curlCode")
_NO_BUCKET = ("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist")
_REFUSED = (
    "ACCESS_DENIED",
    "AccessDenied",
    "INVALID_ACCESS_KEY_ID",
    "InvalidAccessKeyId",
    "SIGNATURE_DOES_NOT_MATCH",
    "SignatureDoesNotMatch",
    "EXPIRED_TOKEN",
    "ExpiredToken",
    "InvalidToken",
    "UNRECOGNIZED_CLIENT",
    "status: 403",
    "Forbidden",
)
# Errors of the server itself (a retry later may succeed): the rest (a 404 on a data file)
# is left to the caller, which knows whether that means a damaged table.
_SERVER_ERROR = (
    "INTERNAL_FAILURE",
    "SERVICE_UNAVAILABLE",
    "SLOW_DOWN",
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "Server error",
    "status: 5",
)
_UNREACHABLE = (
    "NETWORK_CONNECTION",
    "curlCode",
    "HttpError",
    "error sending request",
    "Could not connect",
    "Connection refused",
    "TimedOut",
    "Timeout was reached",
    "dns error",
    "Could not resolve host",
)


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible store; see :meth:`from_env`. Secrets stay out of reprs."""

    endpoint: str | None = None
    region: str = DEFAULT_REGION
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 2.0
    request_timeout_s: float = 10.0
    max_attempts: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> S3Settings:
        """Settings from the standard AWS variables (``os.environ`` by default); ``overrides``
        (timeouts, attempts, any field) win."""
        env = os.environ if env is None else env

        def get(*names: str) -> str | None:
            return next((env[n].strip() for n in names if env.get(n, "").strip()), None)

        attempts = get("AWS_MAX_ATTEMPTS")
        values: dict[str, Any] = {
            "endpoint": get("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            "region": get("AWS_REGION", "AWS_DEFAULT_REGION") or DEFAULT_REGION,
            "access_key": get("AWS_ACCESS_KEY_ID"),
            "secret_key": get("AWS_SECRET_ACCESS_KEY"),
            "session_token": get("AWS_SESSION_TOKEN"),
        }
        if attempts is not None:
            if not attempts.isdigit() or int(attempts) < 1:
                raise StoreFailure(
                    f"AWS_MAX_ATTEMPTS must be a positive integer, got {attempts!r}",
                    hint="unset it (default 3) or set e.g. AWS_MAX_ATTEMPTS=3",
                )
            values["max_attempts"] = int(attempts)
        values.update(overrides)
        settings = cls(**values)
        settings._check_endpoint()
        return settings

    def _check_endpoint(self) -> None:
        if self.endpoint is None:
            return
        parts = urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StoreFailure(
                f"S3 endpoint {mask_url(self.endpoint)!r} is not an http:// or https:// URL",
                hint="set AWS_ENDPOINT_URL to e.g. http://127.0.0.1:9000 (MinIO) or "
                "https://<account>.r2.cloudflarestorage.com",
            )

    @property
    def endpoint_label(self) -> str:
        """The endpoint for messages: masked URL, or AWS S3 and the region."""
        return mask_url(self.endpoint) if self.endpoint else f"AWS S3 ({self.region})"

    def filesystem(self) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` with bounded timeouts and retries."""
        from pyarrow import fs

        kwargs: dict[str, Any] = {
            "region": self.region,
            "connect_timeout": self.connect_timeout_s,
            "request_timeout": self.request_timeout_s,
            "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=self.max_attempts),
        }
        if self.access_key and self.secret_key:
            kwargs.update(
                access_key=self.access_key,
                secret_key=self.secret_key,
                session_token=self.session_token,
            )
        if self.endpoint:
            parts = urlsplit(self.endpoint)
            kwargs.update(endpoint_override=parts.netloc + parts.path.rstrip("/"))
            kwargs.update(scheme=parts.scheme)
        return fs.S3FileSystem(**kwargs)

    def lance_storage_options(self) -> dict[str, str]:
        """``storage_options`` for LanceDB's object store: the same endpoint, credentials,
        timeouts and retry limit as :meth:`filesystem`."""
        options = {
            "region": self.region,
            "connect_timeout": f"{self.connect_timeout_s:g}s",
            "timeout": f"{self.request_timeout_s:g}s",
            "client_max_retries": str(max(0, self.max_attempts - 1)),
            "client_retry_timeout": f"{max(1, round(self.request_timeout_s)):d}",
        }
        if self.access_key and self.secret_key:
            options["aws_access_key_id"] = self.access_key
            options["aws_secret_access_key"] = self.secret_key
            if self.session_token:
                options["aws_session_token"] = self.session_token
        if self.endpoint:
            options["endpoint"] = self.endpoint.rstrip("/")
            if urlsplit(self.endpoint).scheme == "http":
                options["allow_http"] = "true"
        return options

    def scrub(self, text: str) -> str:
        """``text`` without the secrets (an SDK message might echo one)."""
        if self.endpoint:
            text = text.replace(self.endpoint, self.endpoint_label)
        password = None
        with contextlib.suppress(ValueError):
            password = urlsplit(self.endpoint or "").password
        for secret in (self.secret_key, self.session_token, password):
            if secret and len(secret) >= 4:  # shorter ones would garble the message
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class S3Url:
    """``s3://bucket/prefix``, checked: a valid bucket name, no ``..`` in the prefix."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        if not url.startswith("s3://"):
            raise StoreFailure(f"{url!r} is not an s3:// URL", hint="write s3://bucket/prefix")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        prefix = prefix.strip("/")
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise StoreFailure(
                f"{url!r}: {bucket!r} is not a valid bucket name",
                hint="bucket names have 3-63 lowercase letters, digits, dots and hyphens",
            )
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise StoreFailure(
                f"{url!r}: the prefix may not contain empty, '.' or '..' parts",
                hint="write s3://bucket/some/prefix",
            )
        return cls(bucket, prefix)

    @property
    def path(self) -> str:
        """The path inside a pyarrow S3 filesystem: ``bucket/prefix``."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    @property
    def url(self) -> str:
        return f"s3://{self.path}"


def is_s3(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.startswith("s3://")


@dataclass
class Location:
    """A store's root in a pyarrow filesystem. ``root`` is the path inside ``filesystem``
    (absolute for a local folder, ``bucket/prefix`` on S3); ``url`` is for people and logs."""

    filesystem: Any
    root: str
    url: str
    s3: S3Url | None = None
    settings: S3Settings | None = None
    _checked: bool = field(default=False, repr=False)

    @property
    def is_local(self) -> bool:
        return self.s3 is None

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def check(self, store: str) -> None:
        """Make sure the location can be used, once: for S3, that the bucket exists and the
        credentials are accepted (one HEAD request, bounded by the timeouts). Raises the
        :class:`ObjectStoreUnavailable` that says which of the three went wrong."""
        if self._checked or self.s3 is None:
            return
        from pyarrow import fs

        with self.translating(store, "checking the bucket"):
            info = self.filesystem.get_file_info(self.s3.bucket)
        if info.type == fs.FileType.NotFound:
            raise missing_bucket(store, self.s3, self.settings)
        self._checked = True

    @contextlib.contextmanager
    def translating(self, store: str, doing: str) -> Iterator[None]:
        """Turn the object store's failures raised in the block into one clear error; anything
        else (and every error of a local folder) passes through unchanged."""
        if self.s3 is None:
            yield
            return
        try:
            yield
        except StoreFailure:
            raise
        except Exception as exc:
            translated = translate(exc, store, self.s3, self.settings, doing)
            if translated is None:
                raise
            raise translated from None


def open_location(
    location: str | os.PathLike[str], *, settings: S3Settings | None = None
) -> Location:
    """A local folder (created on first write, not here) or ``s3://bucket/prefix``. No request
    is made here: :meth:`Location.check` does the first one."""
    from pyarrow import fs

    if is_s3(location):
        s3 = S3Url.parse(str(location))
        settings = settings or S3Settings.from_env()
        return Location(settings.filesystem(), s3.path, s3.url, s3, settings)
    if isinstance(location, str) and "://" in location:
        raise StoreFailure(
            f"store location {mask_url(location)!r} is neither a local folder nor s3://",
            hint="use a folder path or s3://bucket/prefix",
        )
    path = Path(location).absolute()
    return Location(fs.LocalFileSystem(), path.as_posix(), str(path))


def classify(text: str) -> str | None:
    """``"bucket"`` (missing), ``"credentials"`` (refused), ``"unreachable"``, ``"server"`` (the
    server failed) or None (another error, or not an object store's), from an object-store
    client's error message."""
    if not any(s in text for s in _OBJECT_STORE):
        return None
    if any(s in text for s in _NO_BUCKET):
        return "bucket"
    if any(s in text for s in _REFUSED):
        return "credentials"
    if any(s in text for s in _UNREACHABLE):
        return "unreachable"
    if any(s in text for s in _SERVER_ERROR):
        return "server"
    return None


def translate(
    exc: BaseException, store: str, s3: S3Url, settings: S3Settings | None, doing: str
) -> ObjectStoreUnavailable | None:
    """The store error for an object-store failure, or None when ``exc`` is not one."""
    settings = settings or S3Settings()
    text = str(exc)
    kind = classify(text)
    if kind == "bucket":
        return missing_bucket(store, s3, settings)
    reason = settings.scrub(_reason(text))
    where = f"{store} {s3.url} at {settings.endpoint_label}"
    if kind is None:
        return None
    if kind == "credentials":
        return CredentialsRefused(
            f"{where} refused the credentials while {doing}: {reason}",
            hint="check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for "
            f"temporary keys), and that they may read and write bucket {s3.bucket!r}",
        )
    if kind == "unreachable":
        return EndpointUnreachable(
            f"{where} cannot be reached while {doing}: {reason}",
            hint="check AWS_ENDPOINT_URL (scheme, host and port) and that the server runs; "
            f"contextkit gives up after {settings.max_attempts} attempt(s) with a "
            f"{settings.connect_timeout_s:g} s connect and {settings.request_timeout_s:g} s "
            "request timeout",
        )
    return ObjectStoreUnavailable(
        f"{where} failed while {doing}: {reason}",
        hint="the object store answered with an error; retry, or check its logs",
    )


def missing_bucket(store: str, s3: S3Url, settings: S3Settings | None) -> BucketMissing:
    label = (settings or S3Settings()).endpoint_label
    return BucketMissing(
        f"{store} {s3.url}: bucket {s3.bucket!r} does not exist at {label}",
        hint=f"create it (e.g. `aws s3 mb s3://{s3.bucket}`) or point the store at an existing "
        "bucket; the endpoint comes from AWS_ENDPOINT_URL",
    )


def _reason(text: str) -> str:
    """The useful part of an SDK message: one line, no request ids, no Rust locations."""
    line = " ".join(text.split())
    line = re.sub(r"\s*\(Request ID: [^)]*\)", "", line)
    line = re.sub(r"<RequestId>.*?</HostId>", "", line)
    line = re.sub(r",?\s*location: Location \{.*", "", line)
    return line[:300]
