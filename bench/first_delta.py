"""Time to first word: from sendMessage returning to the first delta at a websocket subscriber.

Runs one api process and one worker process (real `gemini-graphql serve` and `worker`)
against a scratch PostgreSQL database and Redis database, with the fake Gemini answering
at once. Baseline in the same run: google-genai's time to its first chunk from the fake.

    .venv/bin/python -m bench.first_delta [--messages 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from dataclasses import replace

import asyncpg
import httpx
import redis.asyncio as aioredis
import websockets
from google import genai
from google.genai import types

from gemini_graphql.migrate import migrate
from gemini_graphql.config import AppEnv, Settings
from tests.fakes.gemini import API_KEY, FakeGemini, Script
from tests.live import serve
from tests.processes import start_api, start_worker

ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
DB_NAME = "gemini_bench"


async def fresh_database() -> str:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await admin.close()
    url = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + "/" + DB_NAME
    await asyncio.to_thread(migrate, url)
    return url


async def gql(http: httpx.AsyncClient, query: str, variables: dict, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await http.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    return response.json()["data"]


async def log_in(http: httpx.AsyncClient) -> str:
    number = "+15550009999"
    await gql(http, "mutation($n: String!) { signup(input: {mobileNumber: $n}) { errors { code } } }", {"n": number})
    sent = await gql(http, "mutation($n: String!) { sendOtp(input: {mobileNumber: $n}) { devCode } }", {"n": number})
    code = sent["sendOtp"]["devCode"]
    verified = await gql(
        http,
        "mutation($n: String!, $c: String!) { verifyOtp(input: {mobileNumber: $n, code: $c}) { accessToken } }",
        {"n": number, "c": code},
    )
    return verified["verifyOtp"]["accessToken"]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


async def sdk_first_chunk(base_url: str, rounds: int) -> list[float]:
    client = genai.Client(
        api_key=API_KEY, http_options=types.HttpOptions(base_url=base_url, api_version="v1beta")
    )
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        stream = await client.aio.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
        async for _chunk in stream:
            timings.append(time.perf_counter() - started)
            break
        async for _chunk in stream:
            pass
    await client.aio.aclose()
    return timings


async def main(messages: int) -> None:
    fake = FakeGemini(default=Script(chunks=["Hello ", "there ", "friend."]))
    database_url = await fresh_database()
    redis = aioredis.Redis.from_url(REDIS_URL)
    await redis.flushdb()
    async with serve(fake.app) as gemini_url:
        settings = replace(
            Settings(),
            app_env=AppEnv.DEV,
            database_url=database_url,
            redis_url=REDIS_URL,
            gemini_api_key=API_KEY,
            gemini_base_url=gemini_url,
            auth_rate_per_ip=10_000,
            pro_daily_limit=100_000,
        )
        (api, url), worker = await asyncio.gather(start_api(settings), start_worker(settings, redis))
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                token = await log_in(http)
                admin = await asyncpg.connect(ADMIN_DSN.rsplit("/", 1)[0] + "/" + DB_NAME)
                await admin.execute("UPDATE users SET subscription_tier = 'pro'")
                await admin.close()
                room = await gql(
                    http, 'mutation { createChatroom(input: {title: "bench"}) { chatroom { id } } }', {}, token
                )
                room_id = room["createChatroom"]["chatroom"]["id"]
                first, final = await measure(http, url, token, room_id, messages)
            baseline = await sdk_first_chunk(gemini_url, messages)
        finally:
            await api.stop()
            await worker.stop()
            await redis.aclose()
    ms = 1000
    print(f"messages: {messages}")
    print(f"google-genai first chunk from the fake: p50 {statistics.median(baseline) * ms:.1f} ms")
    print(f"sendMessage returned -> first delta:    p50 {statistics.median(first) * ms:.1f} ms, "
          f"p99 {percentile(first, 0.99) * ms:.1f} ms")
    print(f"sendMessage returned -> final event:    p50 {statistics.median(final) * ms:.1f} ms, "
          f"p99 {percentile(final, 0.99) * ms:.1f} ms")


SEND = """mutation($r: ID!) { sendMessage(input: {chatroomId: $r, content: "hello"}) {
  reply { id } errors { code } } }"""
STREAM = "subscription($id: ID!) { messageStream(messageId: $id) { seq status } }"


async def measure(
    http: httpx.AsyncClient, url: str, token: str, room_id: str, messages: int
) -> tuple[list[float], list[float]]:
    first_delta, final_event = [], []
    ws_url = url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        await ws.recv()
        for index in range(messages):
            sent = await gql(http, SEND, {"r": room_id}, token)
            returned = time.perf_counter()
            reply_id = sent["sendMessage"]["reply"]["id"]
            op = str(index)
            await ws.send(json.dumps({"id": op, "type": "subscribe",
                                      "payload": {"query": STREAM, "variables": {"id": reply_id}}}))
            got_first = False
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") != op:
                    continue
                if message["type"] == "next" and not got_first:
                    first_delta.append(time.perf_counter() - returned)
                    got_first = True
                if message["type"] == "complete":
                    final_event.append(time.perf_counter() - returned)
                    break
    return first_delta, final_event


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50)
    asyncio.run(main(parser.parse_args().messages))
