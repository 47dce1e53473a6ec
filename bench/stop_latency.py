"""7. Stop latency: from stopReply returning to the final STOPPED event at a subscriber.

The stack runs without its own worker: this starts one whose Gemini is a second fake
(served here, in its own process) streaming a long reply slowly, a chunk every
CHUNK_SECONDS, so every reply is still streaming when it is stopped. For each of REPLIES
replies, one after the other: sendMessage; subscribe to messageStream(reply.id) over
graphql-transport-ws; after 2 to 5 deltas and a random part of a chunk interval (so the stop
lands anywhere between two chunks), stopReply over HTTP. A reader task stamps every
websocket message as it arrives, so a final event that comes in while stopReply is still
in flight is stamped then.

Measured per reply: stopReply sent -> its response (the mutation's own duration), and its
response -> the final event at the subscriber. The mutation waits for the final event
itself, so the event usually reaches the subscriber first: that latency is negative and is
recorded as 0 (max(0, ...)); how many were is reported. For scale, a `me` request is timed
right after each stop on the same HTTP connection.

Checked on every reply (counted as mismatches, not raised): the final event's status is
STOPPED and the subscription completes after it; seqs run 1..n with no gap; stopReply's
message, the final event's message and the row in PostgreSQL are STOPPED with content
equal to the concatenated deltas the subscriber got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from dataclasses import dataclass, field, replace

import asyncpg
import httpx
import uvloop
import websockets

from bench.stack import Stack, percentile, running_stack, uvicorn_process
from gemini_graphql.testing.fakes.gemini import FakeGemini, Script
from gemini_graphql.testing.processes import start_worker

REPLIES = 60
CHUNK_SECONDS = 0.02
CHUNKS = 1_000  # 20 s a reply: never over before its stop
DELTAS_BEFORE_STOP = (2, 5)

# The slow fake Gemini, for `python -m uvicorn bench.stop_latency:slow_gemini`.
slow_gemini = FakeGemini(
    default=Script(chunks=[f"word{index} " for index in range(CHUNKS)], delay=CHUNK_SECONDS)
).app

ROOM = 'mutation { createChatroom(input: {title: "stops"}) { chatroom { id } } }'
SEND = 'mutation($r: ID!) { sendMessage(input: {chatroomId: $r, content: "tell me a long story"}) { reply { id } errors { code } } }'
STOP = "mutation($id: ID!) { stopReply(input: {messageId: $id}) { message { id status content } errors { code message } } }"
STREAM = "subscription($id: ID!) { messageStream(messageId: $id) { seq delta status message { status content } } }"
ME = "{ me { id } }"


@dataclass
class Stops:
    after_response_ms: list[float] = field(default_factory=list)  # max(0, final - response)
    signed_ms: list[float] = field(default_factory=list)  # final - response, may be < 0
    after_request_ms: list[float] = field(default_factory=list)  # final - stopReply sent
    stop_ms: list[float] = field(default_factory=list)  # stopReply sent -> response
    me_ms: list[float] = field(default_factory=list)
    deltas: list[int] = field(default_factory=list)  # deltas each subscriber got
    mismatches: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def early(self) -> int:
        """Finals that reached the subscriber before stopReply's response."""
        return sum(1 for value in self.signed_ms if value <= 0)


class Subscriber:
    """One graphql-transport-ws connection; every message stamped on arrival, by op id."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self._ws = ws
        self._queues: dict[str, asyncio.Queue[tuple[float, dict]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self._ws:
            at = time.perf_counter()
            message = json.loads(raw)
            if "id" in message:
                self._queues.setdefault(message["id"], asyncio.Queue()).put_nowait((at, message))

    async def subscribe(self, op: str, reply_id: str) -> asyncio.Queue[tuple[float, dict]]:
        queue = self._queues.setdefault(op, asyncio.Queue())
        payload = {"query": STREAM, "variables": {"id": reply_id}}
        await self._ws.send(json.dumps({"id": op, "type": "subscribe", "payload": payload}))
        return queue

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def _next(queue: asyncio.Queue[tuple[float, dict]]) -> tuple[float, dict]:
    async with asyncio.timeout(10):
        return await queue.get()


async def one_stop(
    stack: Stack,
    http: httpx.AsyncClient,
    subscriber: Subscriber,
    conn: asyncpg.Connection,
    room: str,
    op: str,
    stops: Stops,
) -> None:
    problems: list[str] = []
    sent = (await stack.gql(http, SEND, {"r": room}))["sendMessage"]
    if sent["reply"] is None:
        raise RuntimeError(f"sendMessage refused: {sent['errors']}")
    reply_id = sent["reply"]["id"]
    queue = await subscriber.subscribe(op, reply_id)
    events: list[dict] = []
    wanted = random.randint(*DELTAS_BEFORE_STOP)
    while len(events) < wanted:
        _, message = await _next(queue)
        if message["type"] != "next":
            raise RuntimeError(f"the stream ended before its stop: {message}")
        events.append(message["payload"]["data"]["messageStream"])
    await asyncio.sleep(random.uniform(0, CHUNK_SECONDS))
    requested = time.perf_counter()
    response = await http.post(
        "/graphql",
        json={"query": STOP, "variables": {"id": reply_id}},
        headers={"Authorization": f"Bearer {stack.token}"},
    )
    answered = time.perf_counter()
    stopped = response.json()["data"]["stopReply"]
    before_me = time.perf_counter()
    await stack.gql(http, ME)
    stops.me_ms.append((time.perf_counter() - before_me) * 1000)
    final_at, final = None, None
    while True:
        at, message = await _next(queue)
        if message["type"] == "next":
            event = message["payload"]["data"]["messageStream"]
            events.append(event)
            if event["status"] != "STREAMING" and final is None:
                final_at, final = at, event
        else:
            if message["type"] != "complete":
                problems.append(f"the stream ended with {message}")
            break
    text = "".join(event["delta"] for event in events)
    row = await conn.fetchrow(
        "SELECT status, content FROM messages WHERE id = $1", uuid.UUID(reply_id)
    )
    if final is None or final_at is None:
        problems.append("no final event")
    else:
        stops.signed_ms.append((final_at - answered) * 1000)
        stops.after_response_ms.append(max(0.0, final_at - answered) * 1000)
        stops.after_request_ms.append((final_at - requested) * 1000)
        if final["status"] != "STOPPED":
            problems.append(f"final status {final['status']}")
        if events[-1] is not final:
            problems.append("events after the final one")
        stored = final["message"] or {}
        if stored.get("status") != "STOPPED" or stored.get("content") != text:
            problems.append(f"final event's message {stored!r} vs deltas {text!r}")
    stops.stop_ms.append((answered - requested) * 1000)
    if [event["seq"] for event in events] != list(range(1, len(events) + 1)):
        problems.append(f"seqs {[event['seq'] for event in events]}")
    message = stopped["message"] or {}
    if stopped["errors"] or message.get("status") != "STOPPED" or message.get("content") != text:
        problems.append(f"stopReply answered {stopped!r} vs deltas {text!r}")
    if row is None or row["status"] != "stopped" or row["content"] != text:
        problems.append(f"stored {dict(row) if row else None} vs deltas {text!r}")
    stops.deltas.append(sum(1 for event in events if event["delta"]))
    if problems:
        stops.mismatches += 1
        stops.problems.append(f"{reply_id}: {'; '.join(problems)}")


async def stop_latency(stack: Stack, replies: int = REPLIES) -> Stops:
    """`stack` must run no worker of its own (`running_stack(worker=False)`)."""
    stops = Stops()
    async with uvicorn_process("bench.stop_latency:slow_gemini", "/") as slow_url:
        worker = await start_worker(replace(stack.settings, gemini_base_url=slow_url), stack.redis)
        conn = await asyncpg.connect(stack.dsn)
        try:
            async with (
                httpx.AsyncClient(base_url=stack.url, timeout=60) as http,
                websockets.connect(stack.ws_url, subprotocols=["graphql-transport-ws"]) as ws,
            ):
                init = {"authorization": f"Bearer {stack.token}"}
                await ws.send(json.dumps({"type": "connection_init", "payload": init}))
                await ws.recv()  # connection_ack
                subscriber = Subscriber(ws)
                room = (await stack.gql(http, ROOM))["createChatroom"]["chatroom"]["id"]
                warm_up = Stops()
                for index in range(3):
                    await one_stop(stack, http, subscriber, conn, room, f"w{index}", warm_up)
                for index in range(replies):
                    await one_stop(stack, http, subscriber, conn, room, str(index), stops)
                stops.mismatches += warm_up.mismatches
                stops.problems += warm_up.problems
                await subscriber.close()
        finally:
            await conn.close()
            await worker.stop()
    return stops


async def _main() -> None:
    started = time.perf_counter()
    async with running_stack(worker=False) as stack:
        ready = time.perf_counter()
        stops = await stop_latency(stack)
        done = time.perf_counter()
    for name in ("after_response_ms", "signed_ms", "after_request_ms", "stop_ms", "me_ms"):
        values = getattr(stops, name)
        print(
            f"{name}: p50 {percentile(values, 0.5):.1f} p99 {percentile(values, 0.99):.1f} "
            f"min {min(values):.1f} max {max(values):.1f}"
        )
    print(f"early {stops.early}/{len(stops.signed_ms)}, deltas {stops.deltas}")
    print(f"mismatches {stops.mismatches}", *stops.problems, sep="\n")
    print(f"stack {ready - started:.1f} s, row {done - ready:.1f} s")


if __name__ == "__main__":
    uvloop.run(_main())
