"""10. CPU per message, this tree against an older checkout run by this bench in the same
session (`python -m bench.run --baseline REV`, `make bench BASELINE=REV`): "half the CPU of
before" as a measurement, not a memory.

REV is checked out with `git worktree add` into a temporary directory (removed after). Each
tree gets its own PostgreSQL database, migrated by its own migrations, its own private
redis-server (so Redis's CPU is that stack's alone), and `serve` and `worker` processes run
from that tree (cwd and PYTHONPATH, the same venv), with an environment both trees'
config.py understand. One fake Gemini (this tree's) answers both; the load client is this
bench's (bench/first_word.conversation) for both.

Each stack first gives 50 rooms HISTORY answered messages, so that every measured message
has a full context (the last 10 messages and itself: 11 turns). Then ROUNDS rounds per tree,
alternating which goes first: 50 conversations at once, back to back, MESSAGES messages
each, every message followed to its final event over a websocket. CPU is read from /proc
for the stack's own processes only (the api and its children, the worker, the PostgreSQL
backends of its database, its redis-server): on a shared machine a match by name would
count other runs' processes too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis

from bench.cpu import PidMeter, process_tree
from bench.first_word import ROOM, conversation
from bench.stack import ADMIN_DSN, Stack, _log_in, uvicorn_process
from gemini_graphql.config import Settings
from gemini_graphql.testing.fakes.gemini import API_KEY
from gemini_graphql.testing.processes import Process, free_port
from tests.servers import RedisServer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REV = "8ff84f6"  # the code as it was when issue 17 was filed
CONVERSATIONS = 50
HISTORY = 5  # answered messages per room before the rounds: 10 rows of context
MESSAGES = 3  # per conversation per round
ROUNDS = 3  # per tree
SERVICE_ROLES = ("api", "worker", "PostgreSQL", "Redis")


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """`rev` checked out (detached) in a temporary directory, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    tree = directory / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev],
        check=True,
        capture_output=True,
    )
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=False)


def short_rev(rev: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def tree_env(tree: Path, database_url: str, redis_url: str, gemini_url: str) -> dict[str, str]:
    """Variables every revision's config.py reads the same way (an older one ignores newer
    names such as REDIS_PREFIX; each stack has a redis-server of its own, so no prefix is
    needed to keep them apart)."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(tree),
        "APP_ENV": "dev",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "GEMINI_API_KEY": API_KEY,
        "GEMINI_BASE_URL": gemini_url,
        "AUTH_RATE_PER_IP": "1000000",
        "AUTH_RATE_PER_NUMBER": "1000000",
        "PRO_DAILY_LIMIT": "1000000000",
        "MAX_WEBSOCKETS_PER_USER": "100000",
        "DRAIN_GRACE_SECONDS": "0",
    }


@dataclass
class TreeStack:
    label: str
    stack: Stack
    api: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    redis_pid: int
    database: str
    rooms: list[str] = field(default_factory=list)

    async def roles(self, admin: asyncpg.Connection) -> dict[str, list[int]]:
        backends = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.database
        )
        return {
            "api": process_tree(self.api.pid),
            "worker": process_tree(self.worker.pid),
            "PostgreSQL": [row["pid"] for row in backends],
            "Redis": [self.redis_pid],
        }


async def _database(name: str) -> tuple[str, str]:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    return dsn, dsn.replace("postgresql://", "postgresql+asyncpg://")


async def _drop(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _stop(popen: subprocess.Popen[bytes]) -> None:
    await Process(popen).stop()


@asynccontextmanager
async def tree_stack(
    label: str, tree: Path, gemini_url: str, logs: Path
) -> AsyncIterator[TreeStack]:
    """`serve` and `worker` from `tree` on a database and redis-server of their own."""
    database = f"gemini_bench_{label}"
    dsn, database_url = await _database(database)
    redis_server = RedisServer()
    await redis_server.start()
    env = tree_env(tree, database_url, redis_server.url, gemini_url)
    log = open(logs / f"{label}.log", "ab")  # noqa: SIM115
    processes: list[subprocess.Popen[bytes]] = []
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gemini_graphql", "migrate"],
            cwd=tree,
            env=env,
            stdout=log,
            stderr=log,
            check=True,
        )
        port = free_port()

        def spawn(*args: str) -> subprocess.Popen[bytes]:
            popen = subprocess.Popen(
                [sys.executable, "-m", "gemini_graphql", *args],
                cwd=tree,
                env=env,
                stdout=log,
                stderr=log,
            )
            processes.append(popen)
            return popen

        api = spawn("serve", "--port", str(port))
        worker = spawn("worker")
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            async with asyncio.timeout(60):
                while True:
                    assert api.poll() is None, f"the {label} api exited; see {log.name}"
                    try:
                        if (await http.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
            token, user_id = await _log_in(http)
        conn = await asyncpg.connect(dsn)
        await conn.execute("UPDATE users SET subscription_tier = 'pro'")
        await conn.close()
        stack = Stack(
            url,
            url.replace("http://", "ws://") + "/graphql",
            Process(api),
            token,
            user_id,
            "",
            Settings(),  # (this tree's; the processes run on `env`)
            gemini_url,
            redis,
            dsn,
        )
        assert redis_server.pid is not None
        yield TreeStack(label, stack, api, worker, redis_server.pid, database)
    finally:
        for popen in processes:
            await _stop(popen)
        log.close()
        await redis.aclose()
        await redis_server.stop(keep_data=False)
        await _drop(database)


@dataclass
class PerMessage:
    """CPU seconds by role over every round of one tree, and the messages they served."""

    label: str
    seconds: dict[str, float] = field(default_factory=dict)
    messages: int = 0
    rounds: list[float] = field(default_factory=list)  # all services' ms per message, by round

    def ms(self, role: str) -> float:
        return self.seconds.get(role, 0.0) / self.messages * 1000

    def services_ms(self) -> float:
        return sum(self.ms(role) for role in SERVICE_ROLES)

    def breakdown(self) -> str:
        return ", ".join(f"{role} {self.ms(role):.1f}" for role in SERVICE_ROLES) + " ms"


async def _prepare(ts: TreeStack, http: httpx.AsyncClient) -> None:
    for _ in range(CONVERSATIONS):
        room = await ts.stack.gql(http, ROOM, {"t": "conversation"})
        ts.rooms.append(room["createChatroom"]["chatroom"]["id"])
    await asyncio.gather(*(conversation(ts.stack, http, HISTORY, room=r) for r in ts.rooms))


async def _round(ts: TreeStack, http: httpx.AsyncClient, admin: asyncpg.Connection) -> PerMessage:
    meter = PidMeter(await ts.roles(admin))
    await asyncio.gather(*(conversation(ts.stack, http, MESSAGES, room=r) for r in ts.rooms))
    use = meter.stop(await ts.roles(admin))
    return PerMessage(ts.label, dict(use.per_role_seconds), CONVERSATIONS * MESSAGES)


@dataclass
class Comparison:
    current: PerMessage
    baseline: PerMessage
    rev: str
    head: str

    def ratio(self, role: str | None) -> float:
        if role is None:
            return self.current.services_ms() / self.baseline.services_ms()
        return self.current.ms(role) / self.baseline.ms(role)


async def compare(rev: str) -> Comparison:
    """This working tree against `rev`, ROUNDS alternating rounds each."""
    rev_label, head = short_rev(rev), short_rev("HEAD")
    logs = Path(tempfile.mkdtemp(prefix="bench-baseline-logs-"))
    totals = {"current": PerMessage("current"), "baseline": PerMessage(rev_label)}
    with worktree(rev) as old_tree:
        async with (
            uvicorn_process("bench.fake_gemini:app", "/") as gemini_url,
            tree_stack("current", REPO, gemini_url, logs) as current,
            tree_stack("baseline", old_tree, gemini_url, logs) as baseline,
            httpx.AsyncClient(
                base_url=current.stack.url,
                timeout=60,
                limits=httpx.Limits(max_connections=100, keepalive_expiry=2),
            ) as current_http,
            httpx.AsyncClient(
                base_url=baseline.stack.url,
                timeout=60,
                limits=httpx.Limits(max_connections=100, keepalive_expiry=2),
            ) as baseline_http,
        ):
            pairs = {"current": (current, current_http), "baseline": (baseline, baseline_http)}
            for ts, http in pairs.values():
                await _prepare(ts, http)
            admin = await asyncpg.connect(ADMIN_DSN)
            try:
                for index in range(ROUNDS):
                    order = ("current", "baseline") if index % 2 == 0 else ("baseline", "current")
                    for name in order:
                        ts, http = pairs[name]
                        measured = await _round(ts, http, admin)
                        total = totals[name]
                        for role, seconds in measured.seconds.items():
                            total.seconds[role] = total.seconds.get(role, 0.0) + seconds
                        total.messages += measured.messages
                        total.rounds.append(measured.services_ms())
            finally:
                await admin.close()
    shutil.rmtree(logs, ignore_errors=True)
    return Comparison(totals["current"], totals["baseline"], rev_label, head)


def baseline_rows(result: Comparison) -> list[tuple[str, str, str, str]]:
    current, base = result.current, result.baseline
    what = (
        f"{CONVERSATIONS} conversations back to back, 11-turn context, fake Gemini, "
        f"{current.messages} messages per tree in {ROUNDS} alternating rounds"
    )
    rows = []
    for role, label, target in (
        ("worker", "worker CPU per message", True),
        (None, "all processes' CPU per message (api + worker + PostgreSQL + Redis)", True),
        ("api", "api CPU per message", False),
    ):
        ratio = result.ratio(role)
        now = current.services_ms() if role is None else current.ms(role)
        before = base.services_ms() if role is None else base.ms(role)
        rounds = ""
        if role is None:
            rounds = (
                f" (rounds: now {', '.join(f'{ms:.1f}' for ms in current.rounds)}; "
                f"before {', '.join(f'{ms:.1f}' for ms in base.rounds)})"
            )
        rows.append(
            (
                f"10. {label}, {what}",
                f"working tree at {result.head}: {now:.2f} ms"
                + (f" ({current.breakdown()})" if role is None else ""),
                f"{result.rev}: {before:.2f} ms"
                + (f" ({base.breakdown()})" if role is None else "")
                + f": ratio **{ratio:.2f}×**{rounds}",
                f"≤ 0.5× {'✅' if ratio <= 0.5 else '❌'}" if target else "(for information)",
            )
        )
    return rows


async def main(rev: str) -> None:
    for row in baseline_rows(await compare(rev)):
        print(" | ".join(row))


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_REV))
