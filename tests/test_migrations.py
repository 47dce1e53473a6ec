"""The Alembic migrations and the SQLModel tables describe the same database."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import gemini_graphql.models  # noqa: F401
from gemini_graphql.infra.migrate import alembic_config
from tests.conftest import ADMIN_DSN


async def test_models_match_migrations(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(
                        sync, opts={"compare_type": True, "compare_server_default": True}
                    ),
                    SQLModel.metadata,
                )
            )
    finally:
        await engine.dispose()
    assert diff == []


async def test_downgrade_removes_everything_and_upgrade_restores_it() -> None:
    name = f"gemini_migrations_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = (
            ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            + "/"
            + name
        )
        config = alembic_config(url)
        conn_dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name

        async def tables() -> set[str]:
            conn = await asyncpg.connect(conn_dsn)
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
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
