"""8. Redis memory per finished reply: what finished replies leave in Redis, and that it all
expires (nothing grows without bound).

On a redis-server of its own (nothing else writes there, so INFO speaks for us alone):
REPLIES finished replies, SAMPLE of them through the whole path (sendMessage over HTTP to
a real `serve` process, the arq job, a real worker streaming the fake Gemini's reply into
the reply's Redis stream, the final row and event) and the rest written the way that
worker writes a stream (`reply_stream.StreamWriter`: a delta per chunk, then the final
event) with the same chunks. Redis's memory and keys are read before, right after the last
reply finished, and once the finished streams have expired (and arq's results of the
sampled jobs, kept 60 s): the memory is `used_memory` less the clients' buffers (which
follow the number of connections, not the data).

A finished stream expires reply_stream.FINISHED_TTL_SECONDS (15 minutes) after its final
event. A bench cannot wait that long, so this process shortens it to BENCH_TTL_SECONDS,
as tests/test_cleanup.py does, and runs the worker here (in-process, so that it writes
with the shortened expiry; the api is a process of its own). What is measured is the same:
which keys there are, how big they are, and that every one of them goes.

    python -m bench.redis_memory      (about 75 s; `redis_memory_rows()` for bench.run)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import asyncpg
import httpx
import redis.asyncio as aioredis
import uvloop

from bench.stack import ADMIN_DSN, DB_NAME, fresh_database, uvicorn_process
from gemini_graphql.app.worker import build_worker
from gemini_graphql.chat import reply_stream
from gemini_graphql.chat.reply_stream import ReplyChannels, StreamEvent, StreamWriter
from gemini_graphql.config import AppEnv, Settings
from gemini_graphql.ids import new_id
from gemini_graphql.infra.outages import Outage
from gemini_graphql.models import MessageStatus
from gemini_graphql.testing.fakes.gemini import API_KEY, FakeGemini, Script
from gemini_graphql.testing.processes import start_api
from tests.servers import RedisServer

log = logging.getLogger(__name__)

REPLIES = 10_000
SAMPLE = 200  # of REPLIES, through sendMessage, the queue and a worker
SENDERS = 10  # sendMessage requests at once
WRITERS = 200  # streams written at once for the rest
# Long enough that no stream expires before the last reply is written (about 20 s), so that
# "right after" counts them all (the row says if some did not wait).
BENCH_TTL_SECONDS = 40
ARQ_RESULT_SECONDS = 60  # build_worker's keep_result: a job's result is kept this long
# A reply of about 800 characters in 16 chunks, as Gemini streams one.
CHUNKS = [f"chunk {index:02d} of a reply, about fifty characters long. " for index in range(16)]
NUMBER = "+14155550108"

# The fake Gemini for the sampled replies, for `python -m uvicorn bench.redis_memory:gemini`.
gemini = FakeGemini(default=Script(chunks=CHUNKS)).app


@dataclass
class Snapshot:
    """What INFO says of the server at one moment."""

    used_memory: int  # bytes, less the clients' buffers
    keys: int
    without_expiry: int

    @classmethod
    async def of(cls, redis: aioredis.Redis) -> Snapshot:
        memory = await redis.info("memory")
        keyspace = (await redis.info("keyspace")).get("db0", {"keys": 0, "expires": 0})
        return cls(
            used_memory=int(memory["used_memory"]) - int(memory.get("mem_clients_normal", 0)),
            keys=int(keyspace["keys"]),
            without_expiry=int(keyspace["keys"]) - int(keyspace["expires"]),
        )


@dataclass
class Kinds:
    """The keys of the server by kind (the name with ids taken out), with the longest TTL of
    each kind (-1: some have none)."""

    counts: Counter[str] = field(default_factory=Counter)
    longest_ttl: dict[str, int] = field(default_factory=dict)

    @classmethod
    async def of(cls, redis: aioredis.Redis) -> Kinds:
        kinds = cls()
        keys = [key async for key in redis.scan_iter(count=1000)]
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
            ttls = await pipe.execute() if keys else []
        for key, ttl in zip(keys, ttls, strict=True):
            if ttl == -2:
                continue  # expired between the scan and its TTL
            kind = _kind(key.decode())
            kinds.counts[kind] += 1
            before = kinds.longest_ttl.get(kind, 0)
            kinds.longest_ttl[kind] = -1 if -1 in (ttl, before) else max(ttl, before)
        return kinds

    def describe(self, most: int = 3) -> str:
        """The `most` commonest kinds, and how many keys of other kinds."""
        if not self.counts:
            return "none"
        common = self.counts.most_common()
        shown = [
            f"{count:,} `{kind}` ({_ttl_text(self.longest_ttl[kind])})"
            for kind, count in common[:most]
        ]
        if others := sum(count for _, count in common[most:]):
            shown.append(f"{others} of {len(common) - most} other kinds")
        return ", ".join(shown)


def _kind(key: str) -> str:
    """`gemini-graphql:reply:<uuid>:events` -> `gemini-graphql:reply:*:events`, and so on."""
    parts = key.split(":")
    return ":".join("*" if _is_id(part) else part for part in parts)


def _is_id(part: str) -> bool:
    with contextlib.suppress(ValueError):
        uuid.UUID(part)
        return True
    return part.isdigit() or len(part) >= 32


def _ttl_text(ttl: int) -> str:
    return "**no expiry**" if ttl == -1 else f"expire within {ttl} s"


@dataclass
class Result:
    before: Snapshot
    finished: Snapshot
    expired: Snapshot
    finished_kinds: Kinds
    streams_right_after: int  # of REPLIES: fewer if some expired before the last was written
    left: Kinds
    produce_seconds: float
    waited_seconds: float

    def per_reply(self, snapshot: Snapshot) -> float:
        return (snapshot.used_memory - self.before.used_memory) / REPLIES


async def measure() -> Result:
    ttl_before = reply_stream.FINISHED_TTL_SECONDS
    reply_stream.FINISHED_TTL_SECONDS = BENCH_TTL_SECONDS  # see the module's docstring
    try:
        async with RedisServer() as server, _stack(server.url) as (settings, http, pool):
            redis = aioredis.Redis.from_url(server.url, max_connections=WRITERS + 10)
            try:
                return await _run(settings, http, pool, redis)
            finally:
                await redis.aclose()
    finally:
        reply_stream.FINISHED_TTL_SECONDS = ttl_before


@contextlib.asynccontextmanager
async def _stack(
    redis_url: str,
) -> AsyncIterator[tuple[Settings, httpx.AsyncClient, asyncpg.Pool]]:
    """A scratch database, the fake Gemini, an api process and a logged-in user (no daily
    limit to speak of): (settings, an HTTP client sending the user's token, a PostgreSQL pool)."""
    database_url = await fresh_database()
    async with uvicorn_process("bench.redis_memory:gemini", "/") as gemini_url:
        settings = replace(
            Settings(),
            app_env=AppEnv.DEV,
            database_url=database_url,
            redis_url=redis_url,
            gemini_api_key=API_KEY,
            gemini_base_url=gemini_url,
            auth_rate_per_ip=1_000_000,
            auth_rate_per_number=1_000_000,
            basic_daily_limit=1_000_000_000,
            pro_daily_limit=1_000_000_000,
        )
        api, url = await start_api(  # settings_env leaves the limits at their defaults
            settings,
            env={
                "BASIC_DAILY_LIMIT": str(settings.basic_daily_limit),
                "PRO_DAILY_LIMIT": str(settings.pro_daily_limit),
            },
        )
        pool = await asyncpg.create_pool(
            ADMIN_DSN.rsplit("/", 1)[0] + "/" + DB_NAME, max_size=SENDERS
        )
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                token = await _log_in(http)
                http.headers["Authorization"] = f"Bearer {token}"
                yield settings, http, pool
        finally:
            await pool.close()
            await api.stop()


async def _gql(http: httpx.AsyncClient, query: str, variables: dict | None = None) -> dict:
    answer = (await http.post("/graphql", json={"query": query, "variables": variables})).json()
    if "errors" in answer:
        raise RuntimeError(answer["errors"])
    return answer["data"]


async def _log_in(http: httpx.AsyncClient) -> str:
    number = {"n": NUMBER}
    await _gql(
        http, "mutation($n: String!) { signup(input: {mobileNumber: $n}) { user { id } } }", number
    )
    sent = await _gql(
        http, "mutation($n: String!) { sendOtp(input: {mobileNumber: $n}) { devCode } }", number
    )
    verified = await _gql(
        http,
        "mutation($n: String!, $c: String!) { verifyOtp(input: {mobileNumber: $n, code: $c}) { accessToken } }",
        {**number, "c": sent["sendOtp"]["devCode"]},
    )
    return verified["verifyOtp"]["accessToken"]


ROOM = 'mutation { createChatroom(input: {title: "memory"}) { chatroom { id } errors { code } } }'
SEND = "mutation($r: ID!, $c: String!) { sendMessage(input: {chatroomId: $r, content: $c}) { reply { id } errors { code } } }"


async def _run(
    settings: Settings, http: httpx.AsyncClient, pool: asyncpg.Pool, redis: aioredis.Redis
) -> Result:
    rooms = [(await _gql(http, ROOM))["createChatroom"]["chatroom"]["id"] for _ in range(SENDERS)]
    channels = ReplyChannels(settings.redis_names)
    worker = build_worker(settings, handle_signals=False)
    running = asyncio.create_task(worker.async_run())
    try:
        await asyncio.sleep(1)  # the worker's start-up writes (health key, the first sweep)
        before = await Snapshot.of(redis)
        started = time.perf_counter()
        # Both at once: the sample waits on the worker and PostgreSQL, the rest on this CPU.
        sampled, _ = await asyncio.gather(
            _sampled_replies(http, pool, rooms),
            _written_replies(redis, channels, REPLIES - SAMPLE),
        )
        produce_seconds = time.perf_counter() - started
        finished = await Snapshot.of(redis)
        finished_kinds = await Kinds.of(redis)
        streams = finished_kinds.counts[_kind(channels.stream(new_id()))]
        # Past the expiry of every finished stream and of the sampled jobs' results; then
        # until active expiry has removed what expired (no key is read meanwhile).
        waited = time.perf_counter()
        results_expire = sampled + ARQ_RESULT_SECONDS - time.perf_counter()
        await asyncio.sleep(max(BENCH_TTL_SECONDS, results_expire) + 1)
        await _settled(redis)
        waited_seconds = time.perf_counter() - waited
        expired = await Snapshot.of(redis)
        left = await Kinds.of(redis)
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await worker.close()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    return Result(
        before, finished, expired, finished_kinds, streams, left, produce_seconds, waited_seconds
    )


async def _sampled_replies(http: httpx.AsyncClient, pool: asyncpg.Pool, rooms: list[str]) -> float:
    """SAMPLE replies through sendMessage and the worker, SENDERS rooms at a time (a room
    takes its next message once its reply finished); when all are COMPLETE, the time
    (perf_counter) they were."""

    async def converse(room: str, count: int) -> None:
        for index in range(count):
            question = {"r": room, "c": f"question {index}: tell me about Lisbon"}
            sent = (await _gql(http, SEND, question))["sendMessage"]
            if sent["errors"]:
                raise RuntimeError(sent["errors"])
            await _finished(pool, uuid.UUID(sent["reply"]["id"]))

    per_room = SAMPLE // len(rooms)
    await asyncio.gather(*(converse(room, per_room) for room in rooms))
    return time.perf_counter()


async def _finished(pool: asyncpg.Pool, reply_id: uuid.UUID) -> None:
    async with asyncio.timeout(60):
        while True:
            status = await pool.fetchval("SELECT status FROM messages WHERE id = $1", reply_id)
            if status == MessageStatus.COMPLETE.value:
                return
            if status not in (MessageStatus.PENDING.value, MessageStatus.STREAMING.value):
                raise RuntimeError(f"reply {reply_id} ended {status}")
            await asyncio.sleep(0.02)


async def _written_replies(redis: aioredis.Redis, channels: ReplyChannels, count: int) -> None:
    """`count` reply streams written as the worker writes one: a delta per chunk, then the
    final COMPLETE event, WRITERS replies at once."""
    outage = Outage(log, "Redis (bench streams)")
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(WRITERS)

    async def one() -> None:
        async with slots:
            writer = StreamWriter(redis, channels, new_id(), [], outage)
            until = loop.time() + 30
            for seq, chunk in enumerate(CHUNKS, start=1):
                await writer.write(StreamEvent(seq, chunk, MessageStatus.STREAMING), until=until)
            final = StreamEvent(len(CHUNKS) + 1, "", MessageStatus.COMPLETE)
            await writer.write(final, until=until)

    await asyncio.gather(*(one() for _ in range(count)))


async def _settled(redis: aioredis.Redis, timeout: float = 20) -> None:
    """Until the key count stops falling (Redis's active expiry works in small steps)."""
    last = -1
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while (keys := (await Snapshot.of(redis)).keys) != last:
                last = keys
                await asyncio.sleep(1)


async def redis_memory_rows() -> list[tuple[str, str, str, str]]:
    """The rows of bench.run's table: measure, value, baseline, target."""
    result = await measure()
    right_after, after = result.per_reply(result.finished), result.per_reply(result.expired)
    early = REPLIES - result.streams_right_after
    ok = (
        after <= 50 and result.expired.without_expiry <= result.before.without_expiry and early == 0
    )
    return [
        (
            f"8. Redis memory per finished reply, {REPLIES:,} replies ({SAMPLE} through "
            f"`sendMessage` and a worker, the rest as the worker writes a stream; "
            f"{len(CHUNKS)} deltas each); finished streams expire after "
            f"{BENCH_TTL_SECONDS} s here (15 min in service)",
            f"right after: **{right_after:,.0f} B** per reply "
            f"({result.finished.keys - result.before.keys:+,} keys); after expiry: "
            f"**{after:,.1f} B** per reply, {result.expired.keys - result.before.keys:+,} keys",
            (f"**{early:,} streams expired before the last was written**; " if early else "")
            + f"before: {result.before.used_memory / 1024:,.0f} KiB, {result.before.keys} keys; "
            f"after expiry: {_kib(result.expired.used_memory - result.before.used_memory)} in all; "
            f"replies made in {result.produce_seconds:.0f} s, then {result.waited_seconds:.0f} s "
            "waited; "
            f"right after: {result.finished_kinds.describe()}; left: {result.left.describe()}",
            f"after expiry ≈ 0 B, no key without expiry {'✅' if ok else '❌'}",
        )
    ]


def _kib(size: int) -> str:
    return f"{size / 1024:+,.0f} KiB"


def main() -> None:
    started = time.perf_counter()
    rows = uvloop.run(redis_memory_rows())
    print("| measure | value | baseline in the same run | target |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {' | '.join(row)} |")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
