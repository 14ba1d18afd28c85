"""Opening a PostgreSQL registry: check its schema version, create or migrate it when needed.

An up-to-date registry is only read (a read-only role can open it). A new database gets the
base schema and every migration, an older registry the migrations it lacks, in one transaction
(PostgreSQL's DDL is transactional: a failure leaves the database as it was) under an advisory
lock, so nodes starting together create or migrate it once. The statements are the SQLite
registry's, translated (:mod:`contextkit.stores._registry_schema`). A registry written by a
newer contextkit is refused with :class:`RegistryVersionError`, and so are tables that are not
a registry's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from contextkit.stores._postgres_connection import ADVISORY_LOCK_CLASS, PostgresConnector
from contextkit.stores._registry_schema import (
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    postgres_statements,
)
from contextkit.stores.errors import (
    MissingError,
    RegistryVersionError,
    StoreFailure,
    StoreServerUnavailable,
)

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("contextkit.registry")

_SCHEMA_LOCK = 1  # the advisory lock (ADVISORY_LOCK_CLASS, this) held while changing the schema


def open_schema(db: PostgresConnector, *, create: bool) -> None:
    """Make sure ``db`` holds a registry of this contextkit's schema (see the module's
    docstring); ``create=False`` refuses a database without one (``MissingError``)."""
    with db.connection("opening") as con:
        found = _schema_version(db, con)
        if found == SCHEMA_VERSION:
            return
        if found is None and not create:
            raise MissingError(
                f"no registry in {db.masked_url}",
                hint="run `contextkit apply` against it first, or check the registry URL",
            )
        try:
            with con.transaction():
                con.execute(
                    "SELECT pg_advisory_xact_lock(%s, %s)", (ADVISORY_LOCK_CLASS, _SCHEMA_LOCK)
                )
                # Again, under the lock: another node may have done it meanwhile.
                _upgrade(db, con, _schema_version(db, con))
        except StoreFailure:
            raise
        except Exception as exc:
            raise _schema_failure(db, exc, "create or migrate") from None


def _schema_version(db: PostgresConnector, con: psycopg.Connection) -> int | None:
    """The registry's schema version; None for a database without one."""
    if con.execute("SELECT to_regclass('meta')").fetchone()[0] is None:
        return None
    try:
        with con.transaction():
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except Exception as exc:
        raise _schema_failure(db, exc, "read") from None
    if row is None:
        return 1  # tables and no version: the base schema, as SQLite takes a new file
    if not str(row[0]).isdigit() or int(row[0]) > SCHEMA_VERSION:
        raise RegistryVersionError(
            f"the registry {db.masked_url} was written by a newer contextkit "
            f"(registry schema {row[0]}, this contextkit reads up to {SCHEMA_VERSION})",
            hint="upgrade contextkit (pip install -U contextkit) to use this registry",
        )
    return int(row[0])


def _upgrade(db: PostgresConnector, con: psycopg.Connection, found: int | None) -> None:
    if found is None:
        for statement in postgres_statements(SCHEMA):
            con.execute(statement)
        con.execute("INSERT INTO meta VALUES ('schema_version', '1') ON CONFLICT (key) DO NOTHING")
        found = 1
    for version in range(found + 1, SCHEMA_VERSION + 1):
        for statement in postgres_statements(MIGRATIONS[version]):
            con.execute(statement)
    if found < SCHEMA_VERSION:
        con.execute(
            "UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
        )
        log.info("registry %s: schema %s -> %s", db.masked_url, found, SCHEMA_VERSION)


def _schema_failure(db: PostgresConnector, exc: Exception, doing: str) -> StoreFailure:
    from psycopg import errors

    failure = db.failure("opening", exc)
    if isinstance(exc, errors.InsufficientPrivilege):
        return StoreServerUnavailable(
            f"the role {db.user!r} may not {doing} the registry's tables in {db.masked_url} "
            f"({failure.message})",
            hint="open it once with a role that may create tables in the database (its owner), "
            "or grant CREATE on its schema; after that a role that may only read can serve",
        )
    if isinstance(exc, errors.ProgrammingError | errors.DataError):
        return RegistryVersionError(
            f"{db.masked_url} is not a contextkit registry ({failure.message})",
            hint="point the registry URL at a database of its own (an empty one becomes a "
            "registry), or move these tables away",
        )
    return failure
