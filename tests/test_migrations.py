"""The Alembic migrations and the SQLModel tables describe the same database."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import gemini_graphql.models  # noqa: F401
from gemini_graphql.auth.cleanup import OTP_KEEP, delete_old_otps
from gemini_graphql.auth.otp import TTL
from gemini_graphql.billing.cleanup import STRIPE_EVENT_KEEP, delete_old_stripe_events
from gemini_graphql.ids import new_id
from gemini_graphql.infra.db import Database
from gemini_graphql.infra.migrate import alembic_config, migrate
from tests.conftest import ADMIN_DSN


def _diff(sync: sa.Connection) -> list[Any]:
    return compare_metadata(
        MigrationContext.configure(
            sync, opts={"compare_type": True, "compare_server_default": True}
        ),
        SQLModel.metadata,
    )


async def _schema_diff(database_url: str) -> list[Any]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_diff)
    finally:
        await engine.dispose()


@asynccontextmanager
async def _fresh_database() -> AsyncIterator[tuple[str, str]]:
    """An empty PostgreSQL database of its own: (its SQLAlchemy URL, its asyncpg DSN)."""
    name = f"gemini_migrations_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
        yield dsn.replace("postgresql://", "postgresql+asyncpg://", 1), dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_models_match_migrations(database_url: str) -> None:
    assert await _schema_diff(database_url) == []


async def test_downgrade_removes_everything_and_upgrade_restores_it() -> None:
    async with _fresh_database() as (url, dsn):
        config = alembic_config(url)

        async def tables() -> set[str]:
            conn = await asyncpg.connect(dsn)
            try:
                rows = await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            finally:
                await conn.close()
            return {row["tablename"] for row in rows} - {"alembic_version"}

        await asyncio.to_thread(command.upgrade, config, "head")
        assert await tables() == {
            "users",
            "otps",
            "chatrooms",
            "messages",
            "subscriptions",
            "stripe_events",
        }
        await asyncio.to_thread(command.downgrade, config, "base")
        assert await tables() == set()
        await asyncio.to_thread(command.upgrade, config, "head")
        assert len(await tables()) == 6


# -- 0003: v1 rooms become one branch of the conversation tree, and back ---------------------


class V1Data:
    """A user with three rooms as revision 0002 left them: `chat` (U, A, U, A, each A replying
    to the U before it), `other` (U, A), whose ids interleave with chat's, and `empty`."""

    def __init__(self) -> None:
        self.user = new_id()
        self.chat, self.other, self.empty = new_id(), new_id(), new_id()
        order = ["c0", "o0", "c1", "o1", "c2", "c3"]  # the creation order of the messages
        ids = {key: new_id() for key in order}
        self.chat_messages = [ids["c0"], ids["c1"], ids["c2"], ids["c3"]]
        self.other_messages = [ids["o0"], ids["o1"]]
        self.roles = {}
        self.reply_to: dict[uuid.UUID, uuid.UUID | None] = {}
        for messages in (self.chat_messages, self.other_messages):
            for i, message in enumerate(messages):
                self.roles[message] = "user" if i % 2 == 0 else "assistant"
                self.reply_to[message] = messages[i - 1] if i % 2 else None
        self.messages = [ids[key] for key in order]
        self.room_of = {m: self.chat for m in self.chat_messages} | {
            m: self.other for m in self.other_messages
        }


NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


async def _insert_v1(conn: asyncpg.Connection, data: V1Data) -> None:
    await conn.execute(
        "INSERT INTO users (id, mobile_number, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        data.user,
        "+14155550100",
        NOW,
    )
    for room in (data.chat, data.other, data.empty):
        await conn.execute(
            "INSERT INTO chatrooms (id, user_id, title, created_at, updated_at)"
            " VALUES ($1, $2, 'a room', $3, $3)",
            room,
            data.user,
            NOW,
        )
    for message in data.messages:
        await conn.execute(
            "INSERT INTO messages (id, chatroom_id, role, reply_to_id, content, status,"
            " created_at, updated_at) VALUES ($1, $2, $3, $4, 'text', 'complete', $5, $5)",
            message,
            data.room_of[message],
            data.roles[message],
            data.reply_to[message],
            NOW,
        )


def _expected_parents(messages: list[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID | None]:
    return {m: (messages[i - 1] if i else None) for i, m in enumerate(messages)}


async def test_0003_makes_v1_rooms_one_branch_and_downgrades_back_on_postgresql() -> None:
    data = V1Data()
    async with _fresh_database() as (url, dsn):
        config = alembic_config(url)
        await asyncio.to_thread(command.upgrade, config, "0002")
        conn = await asyncpg.connect(dsn)
        try:
            await _insert_v1(conn, data)
            await asyncio.to_thread(command.upgrade, config, "head")

            rows = await conn.fetch(
                "SELECT id, parent_id, prompt_tokens, output_tokens, total_tokens FROM messages"
            )
            parents = {row["id"]: row["parent_id"] for row in rows}
            assert parents == _expected_parents(data.chat_messages) | _expected_parents(
                data.other_messages
            )
            assert all(
                row[column] is None
                for row in rows
                for column in ("prompt_tokens", "output_tokens", "total_tokens")
            )
            rooms = {
                row["id"]: (row["current_leaf_id"], row["system_instruction"])
                for row in await conn.fetch(
                    "SELECT id, current_leaf_id, system_instruction FROM chatrooms"
                )
            }
            assert rooms == {
                data.chat: (data.chat_messages[-1], None),
                data.other: (data.other_messages[-1], None),
                data.empty: (None, None),
            }
            user = await conn.fetchrow("SELECT daily_token_count, last_token_date FROM users")
            assert (user["daily_token_count"], user["last_token_date"]) == (0, None)

            # The tree at work: a second version of the first reply, a question after the
            # last reply, and a stopped answer to it (no error of its own).
            c0, _, _, c3 = data.chat_messages
            version, question, stopped = new_id(), new_id(), new_id()
            for message, role, parent, status in (
                (version, "assistant", c0, "complete"),
                (question, "user", c3, "complete"),
                (stopped, "assistant", question, "stopped"),
            ):
                await conn.execute(
                    "INSERT INTO messages (id, chatroom_id, role, parent_id, content, status,"
                    " created_at, updated_at) VALUES ($1, $2, $3, $4, 'x', $5, $6, $6)",
                    message,
                    data.chat,
                    role,
                    parent,
                    status,
                    NOW,
                )
            await conn.execute(
                "UPDATE messages SET error = 'boom' WHERE id = $1", data.other_messages[1]
            )

            await asyncio.to_thread(command.downgrade, config, "0002")
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0002"
            rows = await conn.fetch("SELECT id, reply_to_id, status, error FROM messages")
            reply_to = {row["id"]: row["reply_to_id"] for row in rows}
            assert reply_to == data.reply_to | {version: c0, question: None, stopped: question}
            by_id = {row["id"]: (row["status"], row["error"]) for row in rows}
            assert by_id[stopped] == ("failed", "Stopped.")
            assert by_id[data.other_messages[1]] == ("complete", "boom")
            columns = {
                (row["table_name"], row["column_name"])
                for row in await conn.fetch(
                    "SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = 'public'"
                )
            }
            assert ("messages", "reply_to_id") in columns
            for gone in (
                ("users", "daily_token_count"),
                ("users", "last_token_date"),
                ("chatrooms", "system_instruction"),
                ("chatrooms", "current_leaf_id"),
                ("messages", "parent_id"),
                ("messages", "prompt_tokens"),
                ("messages", "output_tokens"),
                ("messages", "total_tokens"),
            ):
                assert gone not in columns
            indexes = {
                row["indexname"]
                for row in await conn.fetch(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'messages'"
                )
            }
            assert indexes == {"messages_pkey", "ix_messages_chatroom_id", "ix_messages_unfinished"}
            constraints = {
                row["conname"]: row["def"]
                for row in await conn.fetch(
                    "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint"
                    " WHERE conrelid = 'messages'::regclass"
                )
            }
            assert "messages_reply_to_id_fkey" in constraints
            assert "stopped" not in constraints["ck_messages_status"]
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE messages SET status = 'stopped' WHERE id = $1", c0)

            await asyncio.to_thread(command.upgrade, config, "head")
            parents = {
                row["id"]: row["parent_id"]
                for row in await conn.fetch("SELECT id, parent_id FROM messages")
            }
            chat = sorted([*data.chat_messages, version, question, stopped])
            assert parents == _expected_parents(chat) | _expected_parents(data.other_messages)
            assert await _schema_diff(url) == []
        finally:
            await conn.close()


def test_0003_makes_v1_rooms_one_branch_and_downgrades_back_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "dev.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    data = V1Data()
    stamp = NOW.strftime("%Y-%m-%d %H:%M:%S.%f")

    def h(value: uuid.UUID | None) -> str | None:  # sa.Uuid on SQLite: 32 hex characters
        return None if value is None else value.hex

    def query(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA foreign_keys=ON")
            with conn:
                return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    migrate(url, "0002")
    query(
        "INSERT INTO users (id, mobile_number, created_at, updated_at) VALUES (?, ?, ?, ?)",
        h(data.user),
        "+14155550100",
        stamp,
        stamp,
    )
    for room in (data.chat, data.other, data.empty):
        query(
            "INSERT INTO chatrooms (id, user_id, title, created_at, updated_at)"
            " VALUES (?, ?, 'a room', ?, ?)",
            h(room),
            h(data.user),
            stamp,
            stamp,
        )
    for message in data.messages:
        query(
            "INSERT INTO messages (id, chatroom_id, role, reply_to_id, content, status,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, 'text', 'complete', ?, ?)",
            h(message),
            h(data.room_of[message]),
            data.roles[message],
            h(data.reply_to[message]),
            stamp,
            stamp,
        )

    migrate(url)
    parents = dict(query("SELECT id, parent_id FROM messages"))
    expected = _expected_parents(data.chat_messages) | _expected_parents(data.other_messages)
    assert parents == {h(m): h(p) for m, p in expected.items()}
    assert query("SELECT count(*) FROM messages WHERE total_tokens IS NOT NULL") == [(0,)]
    assert dict(query("SELECT id, current_leaf_id FROM chatrooms")) == {
        h(data.chat): h(data.chat_messages[-1]),
        h(data.other): h(data.other_messages[-1]),
        h(data.empty): None,
    }
    assert query("SELECT daily_token_count, last_token_date FROM users") == [(0, None)]
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            diff = _diff(connection)
    finally:
        engine.dispose()
    # SQLite reflects sa.true()/sa.false() server defaults as text that compares unequal
    # (0001's booleans, on every SQLite database): anything else would be a real difference.
    booleans = {("users", "is_active"), ("subscriptions", "cancel_at_period_end")}
    assert [
        change
        for change in diff
        if not (
            isinstance(change, list)
            and all(op[0] == "modify_default" and op[2:4] in booleans for op in change)
        )
    ] == []

    c0, _, _, c3 = data.chat_messages
    question, stopped = new_id(), new_id()
    for message, role, parent, status in (
        (question, "user", c3, "complete"),
        (stopped, "assistant", question, "stopped"),
    ):
        query(
            "INSERT INTO messages (id, chatroom_id, role, parent_id, content, status,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, 'x', ?, ?, ?)",
            h(message),
            h(data.chat),
            role,
            h(parent),
            status,
            stamp,
            stamp,
        )

    command.downgrade(alembic_config(url), "0002")
    assert query("SELECT version_num FROM alembic_version") == [("0002",)]
    rows = {row[0]: row[1:] for row in query("SELECT id, reply_to_id, status, error FROM messages")}
    expected_reply_to = data.reply_to | {question: None, stopped: question}
    assert {m: row[0] for m, row in rows.items()} == {
        h(m): h(r) for m, r in expected_reply_to.items()
    }
    assert rows[h(stopped)][1:] == ("failed", "Stopped.")
    assert len(query("SELECT id FROM chatrooms")) == 3
    columns = {
        table: {row[1] for row in query(f"PRAGMA table_info({table})")}
        for table in ("users", "chatrooms", "messages")
    }
    assert {"daily_token_count", "last_token_date"}.isdisjoint(columns["users"])
    assert {"system_instruction", "current_leaf_id"}.isdisjoint(columns["chatrooms"])
    assert "reply_to_id" in columns["messages"]
    assert {"parent_id", "prompt_tokens", "output_tokens", "total_tokens"}.isdisjoint(
        columns["messages"]
    )
    indexes = dict(
        query("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    )
    assert set(indexes) == {
        "ix_otps_number_created",
        "ix_otps_number_purpose_created",
        "ix_chatrooms_user_updated",
        "ix_subscriptions_user_id",
        "ix_messages_chatroom_id",
        "ix_messages_unfinished",
    }
    assert "WHERE status IN ('pending', 'streaming')" in indexes["ix_messages_unfinished"]
    assert query("PRAGMA foreign_key_check") == []
    with pytest.raises(sqlite3.IntegrityError):
        query("UPDATE messages SET status = 'stopped' WHERE id = ?", h(c0))

    migrate(url)
    parents = dict(query("SELECT id, parent_id FROM messages"))
    chat = sorted([*data.chat_messages, question, stopped])
    expected = _expected_parents(chat) | _expected_parents(data.other_messages)
    assert parents == {h(m): h(p) for m, p in expected.items()}


# -- 0004: the indexes of the scheduled clean-ups --------------------------------------------

CLEANUP_INDEXES = {
    ("otps", "ix_otps_created_at"),
    ("stripe_events", "ix_stripe_events_received_at"),
}


async def _pg_indexes(conn: asyncpg.Connection) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'"
        " AND tablename IN ('otps', 'stripe_events')"
    )
    return {(row["tablename"], row["indexname"]) for row in rows}


async def test_0004_adds_the_cleanup_indexes_and_downgrades_back_on_postgresql() -> None:
    async with _fresh_database() as (url, dsn):
        config = alembic_config(url)
        await asyncio.to_thread(command.upgrade, config, "0004")
        conn = await asyncpg.connect(dsn)
        try:
            assert await _pg_indexes(conn) >= CLEANUP_INDEXES
            await asyncio.to_thread(command.downgrade, config, "0003")
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0003"
            assert await _pg_indexes(conn) & CLEANUP_INDEXES == set()
            await asyncio.to_thread(command.upgrade, config, "head")
            assert await _pg_indexes(conn) >= CLEANUP_INDEXES
            assert await _schema_diff(url) == []
        finally:
            await conn.close()


def test_0004_adds_the_cleanup_indexes_and_downgrades_back_on_sqlite(tmp_path: Path) -> None:
    """Dev mode's SQLite file migrates the same way."""
    path = tmp_path / "dev.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"

    def indexes() -> set[tuple[str, str]]:
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(
                "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index'"
            ).fetchall()
        finally:
            conn.close()
        return set(rows)

    migrate(url, "0004")
    assert indexes() >= CLEANUP_INDEXES
    command.downgrade(alembic_config(url), "0003")
    assert indexes() & CLEANUP_INDEXES == set()
    migrate(url)
    assert indexes() >= CLEANUP_INDEXES


@asynccontextmanager
async def _statements_of(database: Database, start: str) -> AsyncIterator[list[Any]]:
    """(statement, parameters) of every statement starting with `start` that `database`
    sends while the block runs: the SQL exactly as the code under test built it."""
    seen: list[Any] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.startswith(start):
            seen.append((statement, parameters))

    sync_engine = database.engine.sync_engine
    sa.event.listen(sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sync_engine, "before_cursor_execute", record)


RECENT, OLD = 50_000, 1_000  # rows of a table the clean-up keeps, and rows it deletes


async def _explained(conn: asyncpg.Connection, captured: list[Any]) -> str:
    """PostgreSQL's plan of the first captured statement, as EXPLAIN prints it."""
    statement, parameters = captured[0]
    return "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + statement, *parameters))


def _batch_scan(plan: str) -> str:
    """How the batch's rows are found: the plan's line under its Limit (the SELECT ... LIMIT
    of the DELETE's IN), without its costs."""
    lines = plan.splitlines()
    limit = next(i for i, line in enumerate(lines) if "->  Limit" in line)
    return lines[limit + 1].split("->", 1)[1].split("  (cost=")[0].strip()


async def test_the_cleanup_deletes_find_their_rows_through_the_0004_indexes() -> None:
    """With a day of codes (and a month of event ids) in the tables and a few older rows,
    the DELETE each clean-up runs selects its batch through the 0004 index, where without it
    every batch reads the whole table. The plans are the planner's own choice (no
    enable_seqscan = off). Whether the DELETE then reaches the rows by primary key or by a
    scan it judges cheaper is the planner's choice too (at this size, a scan; at 200,000
    rows, the key)."""
    now = datetime.now(UTC)
    async with _fresh_database() as (url, dsn):
        config = alembic_config(url)
        await asyncio.to_thread(command.upgrade, config, "head")
        conn = await asyncpg.connect(dsn)
        database = Database.open(url)
        try:
            # Oldest first, as time wrote them: OLD rows past keeping, then RECENT spread
            # over the day (or the month) that is kept.
            old_codes = [now - OTP_KEEP - timedelta(hours=1, seconds=OLD - i) for i in range(OLD)]
            kept_codes = [now - OTP_KEEP + timedelta(seconds=i * 0.5) for i in range(RECENT)]
            await conn.copy_records_to_table(
                "otps",
                records=[
                    (new_id(), f"+1415555{i % 10_000:04d}", "0" * 64, "login", at + TTL, at)
                    for i, at in enumerate(old_codes + kept_codes)
                ],
                columns=["id", "mobile_number", "code_hash", "purpose", "expires_at", "created_at"],
            )
            old_events = [now - STRIPE_EVENT_KEEP - timedelta(seconds=OLD - i) for i in range(OLD)]
            kept_events = [
                now - STRIPE_EVENT_KEEP + timedelta(seconds=i * 50) for i in range(RECENT)
            ]
            await conn.copy_records_to_table(
                "stripe_events",
                records=[
                    (f"evt_{i}", "invoice.paid", at)
                    for i, at in enumerate(old_events + kept_events)
                ],
                columns=["id", "type", "received_at"],
            )
            await conn.execute("ANALYZE otps")
            await conn.execute("ANALYZE stripe_events")

            async with _statements_of(database, "DELETE FROM otps") as otp_deletes:
                assert await delete_old_otps(database, now) == OLD
            async with _statements_of(database, "DELETE FROM stripe_events") as event_deletes:
                assert await delete_old_stripe_events(database, now) == OLD
            assert await conn.fetchval("SELECT count(*) FROM otps") == RECENT
            assert await conn.fetchval("SELECT count(*) FROM stripe_events") == RECENT

            otp_plan = await _explained(conn, otp_deletes)
            event_plan = await _explained(conn, event_deletes)
            print(f"\n{otp_plan}\n\n{event_plan}")  # for the record (pytest -s)
            assert _batch_scan(otp_plan) == "Index Scan using ix_otps_created_at on otps otps_1"
            assert _batch_scan(event_plan) == (
                "Index Scan using ix_stripe_events_received_at on stripe_events stripe_events_1"
            )

            # What the indexes save: without them, each batch is a scan of the whole table.
            await asyncio.to_thread(command.downgrade, config, "0003")
            await conn.execute("ANALYZE otps")
            await conn.execute("ANALYZE stripe_events")
            assert _batch_scan(await _explained(conn, otp_deletes)) == "Seq Scan on otps otps_1"
            assert _batch_scan(await _explained(conn, event_deletes)) == (
                "Seq Scan on stripe_events stripe_events_1"
            )
        finally:
            await database.close()
            await conn.close()
