"""3. Time to first word: from sendMessage returning to the first delta (and to the final
event) at a subscribed websocket client, with 1 and with 50 conversations at once.
Baseline in the same run: google-genai's own time to the first chunk from the fake Gemini.

A conversation sends its next message after the reply to the previous one ended and a
pause (uniform in a range, so conversations do not fall in step, and before the first
message too, so they start at different times). 50 conversations run at three paces:
- PEOPLE: 3-9 s, a person reading the reply and typing the next message quickly (about
  6 messages a second in all): the target's case;
- HURRIED: 0.5-1.5 s, far quicker than anyone types (about 30 a second on 2 CPUs);
- back to back, no pause: the machine saturates and this measures queues.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

import httpx
import websockets
from google import genai
from google.genai import types

from bench.cpu import CpuMeter, CpuUse
from bench.stack import Stack
from gemini_graphql.testing.fakes.gemini import API_KEY

SEND = 'mutation($r: ID!) { sendMessage(input: {chatroomId: $r, content: "hello"}) { reply { id } errors { code } } }'
STREAM = "subscription($id: ID!) { messageStream(messageId: $id) { seq status } }"
ROOM = "mutation($t: String!) { createChatroom(input: {title: $t}) { chatroom { id } } }"
PEOPLE = (3.0, 9.0)  # seconds between a reply and the next message
HURRIED = (0.5, 1.5)


async def sdk_first_chunk(stack: Stack, rounds: int) -> list[float]:
    client = genai.Client(
        api_key=API_KEY,
        http_options=types.HttpOptions(base_url=stack.gemini_url, api_version="v1beta"),
    )
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        stream = await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash", contents="hi"
        )
        first = True
        async for _chunk in stream:
            if first:
                timings.append(time.perf_counter() - started)
                first = False
    await client.aio.aclose()
    return timings


async def conversation(
    stack: Stack,
    http: httpx.AsyncClient,
    messages: int,
    pause: tuple[float, float] | None = None,
    *,
    room: str | None = None,
) -> tuple[list[float], list[float]]:
    """`messages` messages, each followed to its final event; in a new room unless `room`."""
    if room is None:
        created = await stack.gql(http, ROOM, {"t": "conversation"})
        room = created["createChatroom"]["chatroom"]["id"]
    first_delta, final_event = [], []
    async with websockets.connect(stack.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(
            json.dumps(
                {"type": "connection_init", "payload": {"authorization": f"Bearer {stack.token}"}}
            )
        )
        await ws.recv()
        for index in range(messages):
            if pause:
                await asyncio.sleep(random.uniform(*pause))
            sent = await stack.gql(http, SEND, {"r": room})
            returned = time.perf_counter()
            if sent["sendMessage"]["reply"] is None:
                raise RuntimeError(f"sendMessage refused: {sent['sendMessage']['errors']}")
            op = str(index)
            await ws.send(
                json.dumps(
                    {
                        "id": op,
                        "type": "subscribe",
                        "payload": {
                            "query": STREAM,
                            "variables": {"id": sent["sendMessage"]["reply"]["id"]},
                        },
                    }
                )
            )
            got_first = False
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") != op:
                    continue
                if message["type"] == "next" and not got_first:
                    first_delta.append(time.perf_counter() - returned)
                    got_first = True
                elif message["type"] in ("complete", "error"):
                    final_event.append(time.perf_counter() - returned)
                    break
    return first_delta, final_event


@dataclass
class Run:
    first: list[float]  # sendMessage returned -> first delta, seconds
    final: list[float]  # sendMessage returned -> final event
    seconds: float  # the whole run
    cpu: CpuUse


RUNS = {  # name: (conversations, pause)
    "1": (1, None),
    "50 people": (50, PEOPLE),
    "50 hurried": (50, HURRIED),
    "50 back to back": (50, None),
}


async def time_to_first_word(stack: Stack, total: int = 200) -> tuple[dict[str, Run], list[float]]:
    """The RUNS by name, and google-genai's own time to the first chunk."""
    runs: dict[str, Run] = {}
    # keepalive_expiry under the api's 5 s keep-alive: a pause of 3-9 s between messages
    # would otherwise reuse a connection the server is closing (httpx.ReadError).
    async with httpx.AsyncClient(
        base_url=stack.url, timeout=60, limits=httpx.Limits(max_connections=100, keepalive_expiry=2)
    ) as http:
        await conversation(stack, http, 5)  # warm up
        for name, (conversations, pause) in RUNS.items():
            meter, started = CpuMeter(), time.perf_counter()
            results = await asyncio.gather(
                *(
                    conversation(stack, http, total // conversations, pause)
                    for _ in range(conversations)
                )
            )
            runs[name] = Run(
                first=[t for first, _ in results for t in first],
                final=[t for _, final in results for t in final],
                seconds=time.perf_counter() - started,
                cpu=meter.stop(),
            )
    return runs, await sdk_first_chunk(stack, total)
