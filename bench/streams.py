"""4. Live streams held by one api process: RSS per idle subscription at N = 1,000, 5,000
and 10,000 (when the open-file limit allows), then 10 deltas to each of 1,000 active streams,
timed from publish (this process) to arrival (a separate websocket client process).

The deltas come as models send them: every stream gets one every ROUND_SECONDS (10,000
deltas a second in all), the streams' deltas spread over the round (SLOTS batches, each
published in one Redis round trip and stamped just before it is sent), as independent
replies are not in step. The worst case, all 1,000 streams' deltas at the same instant,
is measured too ("in step"); there the figure is mostly how long one process (and the one
Python client) takes to work through 1,000 events.

The publisher stands in for many workers on other machines: it writes what
streaming.publish writes, as raw RESP on one connection (redis-py's pipeline cost this
process more CPU per event than the api's fan-out, on the same two CPUs).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import uuid
from datetime import UTC, datetime
from urllib.parse import urlparse

import asyncpg

from bench.stack import Stack, percentile, rss_kb
from gemini_graphql.chat.reply_stream import (
    FINISHED_TTL_SECONDS,
    ReplyChannels,
    StreamEvent,
)
from gemini_graphql.config import RedisNames
from gemini_graphql.ids import new_id
from gemini_graphql.models import MessageStatus

DELTAS = 10
ACTIVE = 1000
ROUND_SECONDS = 0.1
SLOTS = 10  # batches per round when the streams are not in step
LARGEST = 10_000  # idle subscriptions held at most


async def make_pending_replies(stack: Stack, count: int) -> list[str]:
    """PENDING replies written straight to the database (sendMessage would take minutes)."""
    now = datetime.now(UTC)
    room = uuid.UUID(stack.room_id)
    rows = []
    for _ in range(count):
        user_message, reply = new_id(), new_id()
        rows.append((user_message, room, "user", None, "hi", "complete", now, now))
        rows.append((reply, room, "assistant", user_message, "", "pending", now, now))
    conn = await asyncpg.connect(stack.dsn)
    try:
        await conn.copy_records_to_table(
            "messages",
            records=rows,
            columns=[
                "id",
                "chatroom_id",
                "role",
                "parent_id",
                "content",
                "status",
                "created_at",
                "updated_at",
            ],
        )
    finally:
        await conn.close()
    return [str(row[0]) for row in rows if row[2] == "assistant"]


class Client:
    """bench/stream_client.py in its own process, driven over stdin/stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, stack: Stack) -> Client:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.stream_client",
            stack.ws_url,
            stack.token,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**24,
        )
        return cls(process)

    async def ask(self, command: dict) -> dict:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        return json.loads(await self.process.stdout.readline())

    async def close(self) -> None:
        await self.ask({"op": "quit"})
        await self.process.wait()


async def live_streams(stack: Stack) -> dict[str, object]:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # 10,000 when the open-file limit allows (each side holds a socket per subscription;
    # bench.machine.raise_open_files lifts the soft limit to the hard one at start).
    sizes = [1000, 5000] + ([LARGEST] if soft >= LARGEST + 500 else [])
    replies = await make_pending_replies(stack, max(sizes))
    pid = stack.api.pid
    client = await Client.start(stack)
    publisher = await Publisher.open(stack.settings.redis_url, stack.settings.redis_names)
    try:
        await client.ask({"op": "subscribe", "ids": replies[:5]})  # warm the process up
        await client.ask({"op": "close_all"})
        await asyncio.sleep(1)
        baseline = rss_kb(pid)
        held: dict[int, float] = {}
        opened = 0
        for size in sizes:
            await client.ask({"op": "subscribe", "ids": replies[opened:size]})
            opened = size
            await asyncio.sleep(2)
            held[size] = (rss_kb(pid) - baseline) / size
            if size == ACTIVE:
                latencies = await deliver(publisher, client, replies[:ACTIVE], in_step=False)
                # The same streams again, their seqs continuing.
                in_step = await deliver(
                    publisher, client, replies[:ACTIVE], in_step=True, first_seq=DELTAS + 1
                )
        return {
            "baseline_kb": baseline,
            "kb_per_subscription": held,
            "sizes": sizes,
            "delta_latency_ms": latencies,
            "in_step_latency_ms": in_step,
        }
    finally:
        await client.close()
        await publisher.close()


async def deliver(
    publisher: Publisher, client: Client, replies: list[str], *, in_step: bool, first_seq: int = 1
) -> list[float]:
    await client.ask({"op": "record"})
    loop = asyncio.get_running_loop()
    ids = [uuid.UUID(reply) for reply in replies]
    slots = 1 if in_step else SLOTS
    batches = [ids[slot::slots] for slot in range(slots)]
    for seq in range(first_seq, first_seq + DELTAS):
        for batch in batches:
            started = loop.time()
            await publisher.publish(
                batch, StreamEvent(seq, f"{started:.6f}", MessageStatus.STREAMING)
            )
            await asyncio.sleep(max(0.0, ROUND_SECONDS / slots - (loop.time() - started)))
    report = await client.ask({"op": "collect", "expect": len(replies) * DELTAS})
    return report["latencies_ms"]


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args)


class Publisher:
    """streaming.publish's commands for a batch of streams, in one write and one read."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, channels: ReplyChannels
    ) -> None:
        self._reader, self._writer = reader, writer
        self._channels = channels

    @classmethod
    async def open(cls, redis_url: str, names: RedisNames) -> Publisher:
        url = urlparse(redis_url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port or 6379)
        publisher = cls(reader, writer, ReplyChannels(names))
        await publisher._send([_command(b"SELECT", (url.path.strip("/") or "0").encode())])
        return publisher

    async def publish(self, ids: list[uuid.UUID], event: StreamEvent) -> None:
        payload, entry = event.encode().encode(), f"{event.seq}-0".encode()
        ttl = str(FINISHED_TTL_SECONDS).encode()
        commands = []
        for message_id in ids:
            key = self._channels.stream(message_id).encode()
            commands.append(_command(b"XADD", key, entry, b"e", payload))
            commands.append(_command(b"EXPIRE", key, ttl))
            commands.append(_command(b"PUBLISH", self._channels.of(message_id).encode(), payload))
        await self._send(commands)

    async def _send(self, commands: list[bytes]) -> None:
        self._writer.write(b"".join(commands))
        for _ in commands:  # every reply here is one line, or a bulk string of one line
            line = await self._reader.readline()
            if line.startswith(b"-"):
                raise RuntimeError(f"Redis refused a command: {line.decode().strip()}")
            if line.startswith(b"$") and line != b"$-1\r\n":
                await self._reader.readline()

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


def summary(latencies: list[float]) -> tuple[float, float]:
    return percentile(latencies, 0.5), percentile(latencies, 0.99)
