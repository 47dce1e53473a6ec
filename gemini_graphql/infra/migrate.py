"""Alembic, driven from code: `gemini-graphql migrate`, the dev mode and the tests; and the
checks that the database is there and at the head revision before `serve` or `worker` start
(and, cached, on /health).

A store that cannot be used is reported as NotReady: one line naming the host, port and
database and what to do, never the password; the exception it came from is its __cause__, for
the debug log.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import shlex
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import sqlalchemy as sa
import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from gemini_graphql.infra.db import create_engine

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # gemini_graphql/
CONNECT_TIMEOUT_SECONDS = 10.0
MIGRATE_HINT = "run `gemini-graphql migrate` first"
VERSION_TABLE = "alembic_version"  # alembic's default, which migrations/env.py keeps


class NotReady(Exception):
    """A store this process needs is missing, unreachable, refuses us or is behind: str() is
    one line saying which and what to do."""


def migrations_dir() -> Path:
    """`migrations/` beside the package (a checkout) or in the working directory (the image)."""
    for candidate in (PACKAGE_DIR.parent / "migrations", Path.cwd() / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("migrations/ not found beside the package or in the working directory")


def migrate(database_url: str, revision: str = "head") -> None:
    """`alembic upgrade`; NotReady when the database cannot be reached (or is one this code
    cannot upgrade); any other failure (a migration's own) as it was raised."""
    try:
        command.upgrade(alembic_config(database_url), revision)
    except CommandError as exc:  # e.g. the database is at a revision this code does not know
        raise NotReady(f"cannot migrate {describe_database(database_url)}: {exc}") from exc
    except Exception as exc:
        message = why_database_unusable(exc, database_url)
        if message is None:
            raise
        raise NotReady(message) from exc


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


# --- the schema's revision -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Revisions:
    """What the migration scripts of this code know: their head(s) and every revision."""

    heads: frozenset[str]
    known: frozenset[str]

    @classmethod
    @functools.cache
    def of_scripts(cls) -> Revisions:
        scripts = ScriptDirectory.from_config(alembic_config(""))
        return cls(
            heads=frozenset(scripts.get_heads()),
            known=frozenset(script.revision for script in scripts.walk_revisions()),
        )

    def state(self, current: frozenset[str]) -> SchemaState:
        return SchemaState(current=current, heads=self.heads, known=self.known)


@dataclass(frozen=True, slots=True)
class SchemaState:
    current: frozenset[str]  # the database's alembic_version (empty: never migrated)
    heads: frozenset[str]
    known: frozenset[str]

    @property
    def up_to_date(self) -> bool:
        return self.current == self.heads

    @property
    def newer(self) -> bool:
        """Migrated by a newer release (a revision this code does not know): not behind, so a
        rolling deploy's older processes keep running."""
        return not self.current <= self.known

    @property
    def behind(self) -> bool:
        return not self.up_to_date and not self.newer

    def describe(self) -> str:
        head = _names(self.heads)
        if not self.current:
            return f"has no migrations applied (this code needs revision {head})"
        return f"is at revision {_names(self.current)}, this code needs {head}"


def _names(revisions: frozenset[str]) -> str:
    return ", ".join(sorted(revisions)) or "none"


async def current_revisions(connection: AsyncConnection) -> frozenset[str]:
    """The database's alembic_version (empty when the table is not there). Queried directly:
    alembic's MigrationContext logs two INFO lines each time it is made."""
    if not await connection.run_sync(lambda sync: sa.inspect(sync).has_table(VERSION_TABLE)):
        return frozenset()
    rows = await connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))
    return frozenset(rows.scalars())


async def read_schema_state(database_url: str) -> SchemaState:
    """Connect once and compare the database's revision with the scripts' head; NotReady when
    the database cannot be reached."""
    revisions = Revisions.of_scripts()
    engine = create_engine(database_url, pool_size=1)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS), engine.connect() as connection:
            current = await current_revisions(connection)
    except Exception as exc:
        message = why_database_unusable(exc, database_url)
        if message is None:
            raise
        raise NotReady(message) from exc
    finally:
        await engine.dispose()
    return revisions.state(current)


def require_schema(database_url: str) -> None:
    """What `serve` and `worker` check before they start: the database answers and is at the
    head revision. NotReady, naming both revisions, when it is behind."""
    state = asyncio.run(read_schema_state(database_url))
    if state.behind:
        raise NotReady(f"{describe_database(database_url)} {state.describe()}: {MIGRATE_HINT}.")
    if state.newer:
        log.warning(
            "%s %s: migrated by a newer release; starting anyway",
            describe_database(database_url),
            state.describe(),
        )


class SchemaWatch:
    """The schema's state as /health reports it: read again at most every `interval` seconds
    (on a connection the health check already holds), so that a database that falls behind
    (a revision added while the api runs) turns it to "migrations pending"."""

    def __init__(self, revisions: Revisions, *, interval: float = 5.0) -> None:
        self.revisions = revisions
        self.interval = interval
        self.state: SchemaState | None = None
        self._checked_at = -float("inf")

    @classmethod
    def of_scripts(cls, *, interval: float = 5.0) -> SchemaWatch | None:
        """None when this installation has no migration scripts to compare with."""
        try:
            return cls(Revisions.of_scripts(), interval=interval)
        except FileNotFoundError:
            log.warning("migrations/ not found: /health does not check the schema's revision")
            return None

    @property
    def pending(self) -> bool:
        return self.state is not None and self.state.behind

    async def refresh(self, connection: AsyncConnection) -> None:
        """Read the revision again if the last reading is older than the interval."""
        now = time.monotonic()
        if now - self._checked_at < self.interval:
            return
        self._checked_at = now  # also when the reading fails: one try per interval
        was_pending = self.pending
        self.state = self.revisions.state(await current_revisions(connection))
        if self.pending and not was_pending:
            log.warning("the database %s: %s", self.state.describe(), MIGRATE_HINT)


# --- why the database cannot be used, in one line ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    database: str
    user: str

    @classmethod
    def of(cls, database_url: str) -> _Target:
        url = make_url(database_url)
        host = url.host or url.query.get("host") or "localhost"
        return cls(
            host=host if isinstance(host, str) else host[0],
            port=url.port or 5432,
            database=url.database or "",
            user=url.username or "",
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def describe_database(database_url: str) -> str:
    """'the database "x" on 127.0.0.1:5432' (or the SQLite file), never the password."""
    if database_url.startswith("sqlite"):
        return f"the SQLite database {make_url(database_url).database}"
    target = _Target.of(database_url)
    return f'the database "{target.database}" on {target.where}'


def redacted_url(url: str) -> str:
    """A store's URL (PostgreSQL, SQLite, Redis) with its password, if any, as ***."""
    return make_url(url).render_as_string(hide_password=True)


def why_database_unusable(exc: BaseException, database_url: str) -> str | None:
    """One line saying why `exc` means the database cannot be used (unreachable, missing,
    refusing the credentials), or None for any other failure."""
    if database_url.startswith("sqlite"):
        for cause in _causes(exc):
            if isinstance(cause, sqlite3.OperationalError) and "unable to open" in str(cause):
                return (
                    f"cannot open {describe_database(database_url)}: {cause}. Check DATABASE_URL."
                )
        return None
    target = _Target.of(database_url)
    unreachable = (
        f"cannot reach PostgreSQL at {target.where} (database {target.database}): "
        "{reason}. Is it running? Check DATABASE_URL."
    )
    unknown_host = (
        f"cannot reach PostgreSQL at {target.where} (database {target.database}): unknown "
        f"host {target.host}. Check DATABASE_URL."
    )
    for cause in _causes(exc):
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            createdb = shlex.join(
                ["createdb", "-h", target.host, "-p", str(target.port), "-U", target.user]
                if target.user
                else ["createdb", "-h", target.host, "-p", str(target.port)]
            )
            return (
                f'database "{target.database}" does not exist on {target.where}: create it '
                f"({createdb} {shlex.quote(target.database)}) or fix DATABASE_URL."
            )
        if isinstance(cause, asyncpg.InvalidPasswordError):
            return (
                f'PostgreSQL at {target.where} refused the credentials for user "{target.user}" '
                f"(database {target.database}): password authentication failed. Check the user "
                "and password in DATABASE_URL."
            )
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
            return (
                f'PostgreSQL at {target.where} refused user "{target.user}" (database '
                f"{target.database}): {_first_line(cause)}. Check DATABASE_URL."
            )
        if isinstance(cause, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
            return (
                f"PostgreSQL at {target.where} (database {target.database}) does not take "
                f"connections now: {_first_line(cause)}. Try again in a moment."
            )
        if isinstance(cause, socket.gaierror):
            return unknown_host
        if isinstance(cause, TimeoutError):
            return unreachable.format(reason=f"no answer within {CONNECT_TIMEOUT_SECONDS:g} s")
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and "Connect call failed" in str(cause)
        ):
            return unreachable.format(reason="connection refused")
        if isinstance(cause, OSError) and cause.errno in _NETWORK_ERRNOS:
            return unreachable.format(reason=(cause.strerror or str(cause)).lower())
    return None


_NETWORK_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET, errno.ETIMEDOUT, errno.ENOENT}
)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what caused it: __cause__/__context__, and SQLAlchemy's wrapped `.orig`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 10:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        if isinstance(current, sqlalchemy.exc.DBAPIError) and isinstance(orig, BaseException):
            current = orig
        else:
            current = current.__cause__ or current.__context__
