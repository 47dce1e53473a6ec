"""The test harness: a fresh PostgreSQL database per run, a Redis database index of its own
(claimed, see tests/redis_claim.py), and the app driven through its real ASGI interface (and a
real uvicorn server where needed). Tests that use neither service run without them."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from gemini_graphql.app.embedded_redis import EmbeddedRedis
from gemini_graphql.app.http_app import create_app
from gemini_graphql.chat.reply_stream import ReplyChannels
from gemini_graphql.config import AppEnv, Settings
from gemini_graphql.infra.migrate import migrate
from tests.redis_claim import RedisClaim

# The chat fixtures (fake Gemini, worker, live server) for every test module.
pytest_plugins = ["tests.chat_harness", "tests.node_tools"]

ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Set: that Redis database, used unclaimed. Unset: a free one, claimed for the run.
REDIS_DB = os.environ.get("TEST_REDIS_DB")
TABLES = ("messages", "chatrooms", "subscriptions", "otps", "stripe_events", "users")
# Whatever a response says, it must never show one of these.
LEAK_PATTERNS = re.compile(
    r"Traceback|File \"|asyncpg|sqlalchemy|psycopg|\bSELECT\b|\bINSERT\b|\bUPDATE\b|argon2\$",
)


@dataclass
class RecordingSms:
    """An SmsSender that keeps what it was asked to send."""

    sent: list[tuple[str, str]] = field(default_factory=list)

    async def send(self, mobile_number: str, text: str) -> None:
        self.sent.append((mobile_number, text))

    def last_code(self, mobile_number: str) -> str:
        for number, text in reversed(self.sent):
            if number == mobile_number:
                match = re.search(r"\b(\d{6})\b", text)
                assert match, text
                return match.group(1)
        raise AssertionError(f"no SMS to {mobile_number}")


class FakeClock:
    """A clock that tests move by hand; starts at the real now and ticks 1 µs per reading,
    so events keep their order as they would in real time."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    name = f"gemini_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    url = f"{base}/{name}"
    try:
        await asyncio.to_thread(migrate, url)
        yield url
    finally:
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
def redis_claim() -> Iterator[RedisClaim | None]:
    """The run's Redis database: claimed from the free ones, or None with TEST_REDIS_DB set."""
    if REDIS_DB is not None:
        yield None
        return
    claim = RedisClaim.take(REDIS_BASE)
    try:
        yield claim
    finally:
        claim.release()


@pytest.fixture(scope="session")
def base_settings(database_url: str, redis_claim: RedisClaim | None) -> Settings:
    # Pub/sub channels are per server, not per database: a prefix of the run's own keeps
    # other runs' (and other deployments') notices away even on a shared database.
    return Settings(
        app_env=AppEnv.TEST,
        database_url=database_url,
        redis_url=redis_claim.url if redis_claim else f"{REDIS_BASE}/{REDIS_DB}",
        redis_prefix=f"test:{os.getpid()}:{secrets.token_hex(4)}",
        secret_key=secrets.token_urlsafe(48),
        auth_rate_per_ip=1000,
        auth_rate_per_number=1000,
    )


@pytest.fixture(scope="session")
def reply_channels(base_settings: Settings) -> ReplyChannels:
    """The run's reply channels, for tests that publish or follow replies directly."""
    return ReplyChannels(base_settings.redis_names)


@pytest.fixture(scope="session")
async def pg(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Direct SQL for assertions on what was (or was not) written."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def redis_client(base_settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(base_settings.redis_url)
    yield client
    await client.aclose()


# The fixtures that stand for the shared PostgreSQL database and Redis: every other fixture
# that uses them (make_client, client, gql, live, worker, ...) stands on one of these.
SERVICE_FIXTURES = frozenset({"database_url", "redis_claim", "base_settings", "pg", "redis_client"})


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest) -> None:
    """Every test that uses the shared services starts with empty tables and an empty Redis
    database. A test that uses neither runs without them: PostgreSQL and Redis may be down."""
    if not SERVICE_FIXTURES.isdisjoint(request.fixturenames):
        request.getfixturevalue("emptied_services")


@pytest.fixture
async def emptied_services(
    pg: asyncpg.Pool, redis_client: aioredis.Redis, redis_claim: RedisClaim | None
) -> None:
    """The shared database's tables and the run's Redis database, emptied (see clean_state)."""
    await pg.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    if redis_claim is None:
        await redis_client.flushdb()
    elif redis_claim.lost or not await redis_client.eval(*redis_claim.empty_args):
        pytest.fail(f"lost the claim on Redis database {redis_claim.index} (stopped too long?)")


@pytest.fixture
def sms() -> RecordingSms:
    return RecordingSms()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _no_leaks(settings: Settings) -> Callable[[httpx.Response], Awaitable[None]]:
    async def check(response: httpx.Response) -> None:
        body = (await response.aread()).decode(errors="replace")
        assert not LEAK_PATTERNS.search(body), f"response leaks internals: {body[:500]}"
        assert settings.secret_key not in body, "response leaks SECRET_KEY"

    return check


@asynccontextmanager
async def running_app(app: Starlette, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            event_hooks={"response": [_no_leaks(settings)]},
        ) as client:
            yield client


AppFactory = Callable[..., Any]


@pytest.fixture
async def make_client(
    base_settings: Settings, sms: RecordingSms, clock: FakeClock
) -> AsyncIterator[Callable[..., Awaitable[httpx.AsyncClient]]]:
    """Start an app with some settings changed; every one started is stopped after the test."""
    stack: list[Any] = []

    async def start(**overrides: Any) -> httpx.AsyncClient:
        settings = replace(base_settings, **overrides)
        context = running_app(create_app(settings, clock=clock, sms=sms), settings)
        stack.append(context)
        return await context.__aenter__()

    yield start
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[httpx.AsyncClient]]) -> httpx.AsyncClient:
    return await make_client()


class GraphQLClient:
    """Posts GraphQL the way a client library would, and returns the decoded body."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def __call__(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        token: str | None = None,
        expect_status: int = 200,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        assert response.status_code == expect_status, response.text
        return response.json()


@pytest.fixture
def gql(client: httpx.AsyncClient) -> GraphQLClient:
    return GraphQLClient(client)


def new_number() -> str:
    """A fresh number that libphonenumber takes as valid: +1 201, an exchange 200-999, any line
    (the 555-01xx range reserved for fiction is too small for many tests; the fixed numbers the
    tests spell out are in +1 415, so a generated one never collides with them)."""
    n = uuid.uuid4().int % (800 * 10**4)
    return f"+1201{200 + n // 10**4}{n % 10**4:04d}"


@pytest.fixture(scope="module")
def dev_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The dev mode's stores, once for the module: a migrated SQLite file, embedded Redis."""
    database = tmp_path_factory.mktemp("dev") / "dev.sqlite3"
    url = f"sqlite+aiosqlite:///{database}"
    migrate(url)
    embedded = EmbeddedRedis().start()
    try:
        yield url, embedded.url
    finally:
        embedded.stop()
