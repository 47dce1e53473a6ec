"""3. Time to first word: from sendMessage returning to the first delta (and to the final
event) at a subscribed websocket client, with 1 and with 50 conversations at once.
Baseline in the same run: google-genai's own time to the first chunk from the fake Gemini.

A conversation sends its next message after the reply to the previous one ended, then a
pause: none (back to back, which measures how queues grow when the machine is saturated)
or PAUSE_SECONDS (still far quicker than a person types; 50 such conversations send about
45 messages a second).
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import websockets
from google import genai
from google.genai import types

from bench.stack import Stack
from tests.fakes.gemini import API_KEY

SEND = 'mutation($r: ID!) { sendMessage(input: {chatroomId: $r, content: "hello"}) { reply { id } errors { code } } }'
STREAM = "subscription($id: ID!) { messageStream(messageId: $id) { seq status } }"
ROOM = 'mutation($t: String!) { createChatroom(input: {title: $t}) { chatroom { id } } }'
PAUSE_SECONDS = (0.5, 1.5)  # uniform, so conversations do not fall in step


async def sdk_first_chunk(stack: Stack, rounds: int) -> list[float]:
    client = genai.Client(
        api_key=API_KEY, http_options=types.HttpOptions(base_url=stack.gemini_url, api_version="v1beta")
    )
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        stream = await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
        first = True
        async for _chunk in stream:
            if first:
                timings.append(time.perf_counter() - started)
                first = False
    await client.aio.aclose()
    return timings


async def conversation(
    stack: Stack, http: httpx.AsyncClient, messages: int, *, pause: bool = False
) -> tuple[list[float], list[float]]:
    room = (await stack.gql(http, ROOM, {"t": "conversation"}))["createChatroom"]["chatroom"]["id"]
    first_delta, final_event = [], []
    async with websockets.connect(stack.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {stack.token}"}}))
        await ws.recv()
        for index in range(messages):
            if pause:  # before the first message too, so conversations start at different times
                await asyncio.sleep(random.uniform(*PAUSE_SECONDS))
            sent = await stack.gql(http, SEND, {"r": room})
            returned = time.perf_counter()
            if sent["sendMessage"]["reply"] is None:
                raise RuntimeError(f"sendMessage refused: {sent['sendMessage']['errors']}")
            op = str(index)
            await ws.send(json.dumps({"id": op, "type": "subscribe", "payload": {
                "query": STREAM, "variables": {"id": sent["sendMessage"]["reply"]["id"]}}}))
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


async def time_to_first_word(stack: Stack, total: int = 200) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    async with httpx.AsyncClient(base_url=stack.url, timeout=60, limits=httpx.Limits(max_connections=100)) as http:
        await conversation(stack, http, 5)  # warm up
        for conversations, pause in ((1, False), (50, True), (50, False)):
            runs = await asyncio.gather(*(
                conversation(stack, http, total // conversations, pause=pause) for _ in range(conversations)
            ))
            results[f"{conversations}{' paused' if pause else ''}"] = {
                "first": [t for first, _ in runs for t in first],
                "final": [t for _, final in runs for t in final],
            }
    results["sdk"] = {"first": await sdk_first_chunk(stack, total)}
    return results
