"""The database: the async engine, its sessions, and the autocommit paths beside them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from gemini_graphql.metrics import DB_POOL_IN_USE

SessionFactory = async_sessionmaker[AsyncSession]


@dataclass(frozen=True, slots=True)
class Database:
    """One process's way into the database, handed to every service that uses it."""

    engine: AsyncEngine
    autocommit: AsyncEngine  # for single statements: no BEGIN/COMMIT round trips
    sessions: SessionFactory
    reads: SessionFactory  # autocommit sessions for one-statement reads

    @classmethod
    def open(cls, database_url: str) -> Database:
        engine = create_engine(database_url)
        _count_checkouts(engine)
        return cls(
            engine=engine,
            autocommit=autocommit_engine(engine),
            sessions=create_session_factory(engine),
            reads=create_read_session_factory(engine),
        )

    async def close(self) -> None:
        await self.engine.dispose()


def _count_checkouts(engine: AsyncEngine) -> None:
    """Keep DB_POOL_IN_USE current from the pool's own events (a callback's cost, no polling:
    in multiprocess mode a gauge cannot be read at scrape time). Counted per connection
    record: the pool also checks in records it never handed out (after an invalidation, or
    a pool recreated by dispose), which must not count down."""
    out: set[int] = set()

    def checked_out(_dbapi: Any, record: Any, _proxy: Any) -> None:
        if id(record) not in out:
            out.add(id(record))
            DB_POOL_IN_USE.inc()

    def checked_in(_dbapi: Any, record: Any) -> None:
        if id(record) in out:
            out.discard(id(record))
            DB_POOL_IN_USE.dec()

    event.listen(engine.sync_engine.pool, "checkout", checked_out)
    event.listen(engine.sync_engine.pool, "checkin", checked_in)


def create_engine(database_url: str, *, pool_size: int = 30) -> AsyncEngine:
    if database_url.startswith("sqlite"):
        return _sqlite_engine(database_url)
    return create_async_engine(
        database_url,
        # No overflow: connections beyond pool_size are opened and closed per use (a new
        # backend each, with cold caches), and 32 clients sending messages churned 100-200
        # of them every 5 s through a pool of 20 + 10. A request past the 30 (opened as
        # needed, then kept) waits a moment for one instead.
        pool_size=pool_size,
        max_overflow=0,
        # No pre-ping: it costs a round trip per checkout on every request. A connection
        # that died is dropped on its first error; recycling bounds how old one can get.
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": "gemini-graphql"}},
    )


def _sqlite_engine(database_url: str) -> AsyncEngine:
    """The embedded dev store, made to keep the same guarantees as PostgreSQL.

    Every transaction starts with BEGIN IMMEDIATE, taking SQLite's write lock at once:
    transactions run one after another, so the quota's conditional UPDATE and the other
    read-then-write steps hold under concurrency exactly as they do on PostgreSQL.
    """
    engine = create_async_engine(database_url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    # expire_on_commit=False: objects stay readable after commit, which resolvers rely on.
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def autocommit_engine(engine: AsyncEngine) -> AsyncEngine:
    """For single statements on the hot path (a read, or one UPDATE): autocommit, so no
    BEGIN/COMMIT round trips. Write with `begin()`, which commits on SQLite.

    SQLite keeps its BEGIN IMMEDIATE transactions (its locking is what makes reads consistent there).
    """
    if engine.dialect.name == "sqlite":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def create_read_session_factory(engine: AsyncEngine) -> SessionFactory:
    """Sessions for single reads on the hot path (see autocommit_engine)."""
    return create_session_factory(autocommit_engine(engine))


DELETE_BATCH = 5000  # rows per DELETE: short transactions, however much piled up


async def delete_in_batches(database: Database, table: sa.Table, doomed: sa.Select[Any]) -> int:
    """Delete the rows of `table` whose id `doomed` selects, DELETE_BATCH at a time; how many."""
    batch = DELETE_BATCH
    statement = sa.delete(table).where(table.c.id.in_(doomed.limit(batch).scalar_subquery()))
    deleted = 0
    while True:
        async with database.autocommit.begin() as connection:
            count = (await connection.execute(statement)).rowcount
        deleted += count
        if count < batch:
            return deleted


def insert_for(session: AsyncSession) -> Callable[..., Any]:
    """The dialect's INSERT, which knows ON CONFLICT DO NOTHING (PostgreSQL and SQLite)."""
    return postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
