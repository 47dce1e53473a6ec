"""Startup checks (issue 15): `serve`, `worker`, `migrate` and `dev` say in ONE line why the
database or Redis cannot be used, and stop (exit 1) instead of running broken; /health says
"migrations pending" when the schema falls behind; the dev banner comes once the port answers.

Real processes (`python -m gemini_graphql ...`), each asserting the whole of what it printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from gemini_graphql.config import Settings
from gemini_graphql.infra.db import create_engine
from gemini_graphql.infra.migrate import Revisions, SchemaWatch, alembic_config, migrate
from gemini_graphql.testing.processes import free_port, start_api
from tests.conftest import ADMIN_DSN
from tests.servers import PostgresCluster, ServerUnavailable

_ADMIN = make_url(ADMIN_DSN)
PG_HOST, PG_PORT = _ADMIN.host or "localhost", _ADMIN.port or 5432
HEAD = ", ".join(sorted(Revisions.of_scripts().heads))
# The revision before the head: a database "one migration behind".
BEHIND = ScriptDirectory.from_config(alembic_config("")).get_revision(HEAD).down_revision
PASSWORD = "pw-" + secrets.token_hex(8)  # in URLs; must never be printed
COMMANDS = ("migrate", "serve", "worker", "dev")


def pg_url(database: str, *, password: str | None = None) -> str:
    user = f"{_ADMIN.username or 'postgres'}:{password}" if password else _ADMIN.username
    return f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{database}"


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


@contextlib.asynccontextmanager
async def scratch_database(migrated_to: str | None = None) -> AsyncIterator[tuple[str, str]]:
    """(name, url) of a database of its own: empty, or migrated to `migrated_to`."""
    name = f"startup_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = pg_url(name)
    try:
        if migrated_to:
            await asyncio.to_thread(migrate, sqlalchemy_url(url), migrated_to)
        yield name, url
    finally:
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def cli_env(**variables: str) -> dict[str, str]:
    # A Redis nobody listens on unless a test says otherwise: none of these may touch Redis.
    return {
        "PATH": os.environ.get("PATH", ""),
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        **variables,
    }


async def run_cli(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 30
) -> tuple[int, str]:
    """Run the command to its end: (exit status, stdout and stderr together)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gemini_graphql",
        *args,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        pytest.fail(f"`{' '.join(args)}` still running after {timeout} s:\n{output.decode()}")
    return process.returncode or 0, output.decode()


def command_args(command: str) -> tuple[str, ...]:
    return (command, "--port", str(free_port())) if command in ("serve", "dev") else (command,)


async def run_all(
    commands: tuple[str, ...], env: dict[str, str], tmp_path: Path
) -> dict[str, tuple[int, str]]:
    results = await asyncio.gather(
        *(run_cli(*command_args(command), env=env, cwd=tmp_path) for command in commands)
    )
    return dict(zip(commands, results, strict=True))


def assert_one_line(results: dict[str, tuple[int, str]], expected: str) -> None:
    """Each command exited 1 having printed exactly `expected` (with its name), nothing else."""
    for command, (status, output) in results.items():
        assert output == f"gemini-graphql {command}: {expected}\n", (command, output)
        assert status == 1, (command, status)
        assert "Traceback" not in output and PASSWORD not in output


# --- the schema ----------------------------------------------------------------------------


async def test_serve_and_worker_refuse_a_database_never_migrated(tmp_path: Path) -> None:
    """A worker before `migrate` logged a long traceback every minute; `serve` said healthy."""
    async with scratch_database() as (name, url):
        results = await run_all(("serve", "worker"), cli_env(DATABASE_URL=url), tmp_path)
    assert_one_line(
        results,
        f'the database "{name}" on {PG_HOST}:{PG_PORT} has no migrations applied (this code '
        f"needs revision {HEAD}): run `gemini-graphql migrate` first.",
    )


async def test_serve_and_worker_refuse_a_database_one_migration_behind(tmp_path: Path) -> None:
    assert BEHIND
    async with scratch_database(migrated_to=BEHIND) as (name, url):
        results = await run_all(("serve", "worker"), cli_env(DATABASE_URL=url), tmp_path)
    assert_one_line(
        results,
        f'the database "{name}" on {PG_HOST}:{PG_PORT} is at revision {BEHIND}, this code '
        f"needs {HEAD}: run `gemini-graphql migrate` first.",
    )


async def test_health_says_migrations_pending_when_the_schema_falls_behind(
    base_settings: Settings,
) -> None:
    """A revision added (here: the database stamped one back) while the api runs: /health turns
    503 within the interval it caches the revision for."""
    async with scratch_database(migrated_to="head") as (_, url):
        api, base = await start_api(replace(base_settings, database_url=sqlalchemy_url(url)))
        try:
            connection = await asyncpg.connect(url)
            try:
                await connection.execute("UPDATE alembic_version SET version_num = $1", BEHIND)
            finally:
                await connection.close()
            async with httpx.AsyncClient(base_url=base) as http, asyncio.timeout(15):
                while (response := await http.get("/health")).status_code == 200:
                    await asyncio.sleep(0.2)
            assert response.status_code == 503
            assert response.json() == {
                "status": "unavailable",
                "checks": {"postgres": "migrations pending", "redis": "ok"},
            }
        finally:
            await api.stop()


async def test_the_schema_watch_reads_the_revision_at_most_once_per_interval() -> None:
    async with scratch_database(migrated_to="head") as (_, url):
        engine = create_engine(sqlalchemy_url(url))
        try:
            watch = SchemaWatch(Revisions.of_scripts(), interval=3600)
            async with engine.connect() as connection:
                await watch.refresh(connection)
                assert watch.state is not None and watch.state.up_to_date and not watch.pending
                await connection.execute(
                    sa.text(f"UPDATE alembic_version SET version_num = '{BEHIND}'")
                )
                await connection.commit()
                await watch.refresh(connection)  # within the interval: the cached reading
                assert not watch.pending
                watch.interval = 0
                await watch.refresh(connection)
                assert watch.pending and watch.state.current == {BEHIND}
                await connection.execute(
                    sa.text(f"UPDATE alembic_version SET version_num = '{HEAD}'")
                )
                await connection.commit()
                await watch.refresh(connection)
                assert not watch.pending
                await connection.execute(sa.text("UPDATE alembic_version SET version_num = 'zz99'"))
                await connection.commit()
                await watch.refresh(connection)  # migrated by a newer release: not pending
                assert watch.state.newer and not watch.pending
        finally:
            await engine.dispose()


# --- a database that cannot be used ----------------------------------------------------------


async def test_a_missing_database(tmp_path: Path) -> None:
    name = f"missing_{secrets.token_hex(4)}"
    env = cli_env(DATABASE_URL=pg_url(name, password=PASSWORD))
    del env["REDIS_URL"]  # dev: the embedded Redis, so that only the database is wrong
    results = await run_all(COMMANDS, env, tmp_path)
    assert_one_line(
        results,
        f'database "{name}" does not exist on {PG_HOST}:{PG_PORT}: create it (createdb -h '
        f"{PG_HOST} -p {PG_PORT} -U {_ADMIN.username} {name}) or fix DATABASE_URL.",
    )


async def test_a_refused_connection(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(DATABASE_URL=f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/gemini")
    del env["REDIS_URL"]
    results = await run_all(COMMANDS, env, tmp_path)
    assert_one_line(
        results,
        f"cannot reach PostgreSQL at 127.0.0.1:{port} (database gemini): connection refused. "
        "Is it running? Check DATABASE_URL.",
    )


async def test_a_wrong_password(tmp_path: Path) -> None:
    """The shared server trusts every local connection (any password works), so a cluster of
    this test's own asks user "app" for its password."""
    try:
        cluster = PostgresCluster()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        await cluster.init()
        hba = cluster.data / "pg_hba.conf"
        hba.write_text("host all app 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        await cluster.start()
        admin = await asyncpg.connect(cluster.dsn)
        try:
            await admin.execute("CREATE ROLE app LOGIN PASSWORD 'the-right-one'")
        finally:
            await admin.close()
        right = await asyncpg.connect(
            f"postgresql://app:the-right-one@127.0.0.1:{cluster.port}/postgres"
        )
        await right.close()  # the set-up asks for the password, and takes the right one
        env = cli_env(DATABASE_URL=f"postgresql://app:{PASSWORD}@127.0.0.1:{cluster.port}/postgres")
        del env["REDIS_URL"]
        results = await run_all(COMMANDS, env, tmp_path)
    finally:
        await cluster.close()
    assert_one_line(
        results,
        f'PostgreSQL at 127.0.0.1:{cluster.port} refused the credentials for user "app" '
        "(database postgres): password authentication failed. Check the user and password in "
        "DATABASE_URL.",
    )


async def test_the_traceback_is_there_at_debug_level(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/gemini", DEBUG="true")
    status, output = await run_cli("migrate", env=env, cwd=tmp_path)
    assert status == 1
    assert output.endswith(
        f"gemini-graphql migrate: cannot reach PostgreSQL at 127.0.0.1:{port} (database gemini): "
        "connection refused. Is it running? Check DATABASE_URL.\n"
    )
    assert "Traceback" in output and "ConnectionRefusedError" in output


# --- the dev mode ----------------------------------------------------------------------------


async def test_dev_stops_when_its_redis_cannot_be_reached(tmp_path: Path) -> None:
    """It said "running" and warned every second, forever."""
    port = free_port()
    env = cli_env(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    results = await run_all(("dev",), env, tmp_path)
    assert_one_line(
        results,
        f"cannot reach Redis at 127.0.0.1:{port}: connection refused. Is it running? "
        "Check REDIS_URL.",
    )


async def test_dev_stops_when_its_port_is_taken(tmp_path: Path) -> None:
    with contextlib.closing(__import__("socket").socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, output = await run_cli("dev", "--port", str(port), env=cli_env(), cwd=tmp_path)
    assert (status, output) == (
        1,
        f"gemini-graphql dev: cannot listen on 127.0.0.1:{port}: address already in use. "
        "Stop what uses it, or pass --port (or set PORT).\n",
    )


async def test_the_dev_banner_comes_once_the_port_answers_and_names_what_is_used(
    base_settings: Settings, tmp_path: Path
) -> None:
    """The banner printed "redis: REDIS_URL" and "running" before the port was bound. Here
    PostgreSQL (an empty database, which dev migrates itself) and Redis are configured."""
    async with scratch_database() as (name, _):
        database_url = pg_url(name, password=PASSWORD)
        env = cli_env(DATABASE_URL=database_url, REDIS_URL=base_settings.redis_url)
        env["REDIS_PREFIX"] = base_settings.redis_prefix
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "gemini_graphql", "dev", "--port", str(port)),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert process.stdout is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(30), httpx.AsyncClient() as http:
                while "dev is running" not in (line := (await process.stdout.readline()).decode()):
                    assert line, "".join(lines)  # it exited
                    lines.append(line)
                # The moment the line is read, its URL answers (and the schema is at the head).
                url = line.split("GraphiQL at ")[1].strip()
                assert url == f"http://127.0.0.1:{port}/graphql"
                assert (await http.get(url.replace("/graphql", "/health"))).status_code == 200
                banner = [line]
                while (line := (await process.stdout.readline()).decode()) != "\n":
                    banner.append(line)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            rest = (await asyncio.wait_for(process.communicate(), 30))[0].decode()
        text = "".join(banner)
        assert f"  websocket: ws://127.0.0.1:{port}/graphql" in text
        assert f"  database: postgresql+asyncpg://postgres:***@{PG_HOST}:{PG_PORT}/{name}\n" in text
        assert f"  redis: {base_settings.redis_url}\n" in text
        assert "REDIS_URL" not in text and "DATABASE_URL" not in text
        everything = "".join(lines) + text + rest
        assert PASSWORD not in everything and "Traceback" not in everything
        assert process.returncode in (0, -signal.SIGTERM), everything
