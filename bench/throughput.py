"""12. Throughput rows against `me` in the same run:
- `sendMessage` from 32 clients of 32 different users (each its own room, Pro, so no quota
  wall), one connection and one wrk thread each, against `me` sent the same way;
- `serve --workers 2` against one process, `me` at 32 connections, best of alternating
  rounds.
The worker answers the queued replies meanwhile (that is sendMessage's cost too); `drained`
waits until it has caught up, so that a later row does not share the CPUs with it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg
import httpx

from bench.http_overhead import ME, SEND
from bench.stack import Stack
from bench.wrk import Load, alternating, best, run_wrk_users
from gemini_graphql.testing.processes import start_api

USERS = 32
SECONDS = 5
ROUNDS = 3  # of each, for `serve --workers 2`
SIGNUP = "mutation($n: String!) { signup(input: {mobileNumber: $n}) { errors { code } } }"
SEND_OTP = "mutation($n: String!) { sendOtp(input: {mobileNumber: $n}) { devCode } }"
VERIFY = (
    "mutation($n: String!, $c: String!) { verifyOtp(input: {mobileNumber: $n, code: $c}) "
    "{ accessToken } }"
)
ROOM = 'mutation { createChatroom(input: {title: "bench"}) { chatroom { id } } }'


async def _users(stack: Stack, count: int) -> list[tuple[str, str]]:
    """`count` Pro users, each with a room: (token, room id)."""
    found = []
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:

        async def call(query: str, variables: dict, token: str | None = None) -> dict:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            answer = await http.post(
                "/graphql", json={"query": query, "variables": variables}, headers=headers
            )
            return answer.json()["data"]

        for index in range(count):
            number = f"+1415555{200 + index:04d}"
            await call(SIGNUP, {"n": number})
            code = (await call(SEND_OTP, {"n": number}))["sendOtp"]["devCode"]
            token = (await call(VERIFY, {"n": number, "c": code}))["verifyOtp"]["accessToken"]
            room = (await call(ROOM, {}, token))["createChatroom"]["chatroom"]["id"]
            found.append((token, room))
    conn = await asyncpg.connect(stack.dsn)
    try:
        await conn.execute("UPDATE users SET subscription_tier = 'pro'")
    finally:
        await conn.close()
    return found


async def drained(stack: Stack, timeout: float = 240) -> float:
    """Waits until no reply is pending or streaming; returns how long that took."""
    started = time.perf_counter()
    conn = await asyncpg.connect(stack.dsn)
    try:
        async with asyncio.timeout(timeout):
            while await conn.fetchval(
                "SELECT count(*) FROM messages WHERE status IN ('pending', 'streaming')"
            ):
                await asyncio.sleep(0.5)
    finally:
        await conn.close()
    return time.perf_counter() - started


@dataclass(frozen=True)
class SendVsMe:
    send: Load
    me: Load

    @property
    def ratio(self) -> float:
        return self.send.rps / self.me.rps


async def send_many_users(stack: Stack) -> SendVsMe:
    users = await _users(stack, USERS)
    tokens = [token for token, _ in users]
    url = stack.url + "/graphql"
    me = await run_wrk_users(url, tokens=tokens, bodies=[{"query": ME}] * USERS, seconds=SECONDS)
    send = await run_wrk_users(
        url,
        tokens=tokens,
        bodies=[{"query": SEND, "variables": {"r": room}} for _, room in users],
        seconds=SECONDS,
    )
    return SendVsMe(send, me)


@dataclass(frozen=True)
class Workers:
    one: Load  # best round
    two: Load
    rounds: list[tuple[float, float]]

    @property
    def ratio(self) -> float:
        return self.two.rps / self.one.rps


async def two_workers(stack: Stack) -> Workers:
    limit = {"PRO_DAILY_LIMIT": str(stack.settings.pro_daily_limit)}
    process, two_url = await start_api(
        stack.settings, args=("serve", "--workers", "2", "--port"), env=limit
    )
    body = {"query": ME}
    try:
        loads = await alternating(
            {
                "one": (stack.url + "/graphql", body, stack.token),
                "two": (two_url + "/graphql", body, stack.token),
            },
            rounds=ROUNDS,
            seconds=SECONDS,
        )
    finally:
        await process.stop()
    one, two = loads["one"], loads["two"]
    rounds = [(a.rps, b.rps) for a, b in zip(one, two, strict=True)]
    return Workers(best(one), best(two), rounds)


def send_rows(send: SendVsMe) -> list[tuple[str, str, str, str]]:
    return [
        (
            f"12. `sendMessage`, {USERS} clients of {USERS} different users (a room each, "
            "Pro), one connection each; the worker answering meanwhile",
            f"{send.send.rps:,.0f} req/s, p50 {send.send.p50_ms:.1f} ms, "
            f"p99 {send.send.p99_ms:.1f} ms, errors {send.send.errors}",
            f"`me` the same way {send.me.rps:,.0f} req/s (p50 {send.me.p50_ms:.1f} ms): "
            f"ratio **{send.ratio:.2f}**",
            f"≥ 0.20 {'✅' if send.ratio >= 0.2 else '❌'}",
        )
    ]


def workers_rows(workers: Workers) -> list[tuple[str, str, str, str]]:
    rounds = ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in workers.rounds)
    return [
        (
            f"12. `serve --workers 2`: `me`, 32 connections, best of {ROUNDS} alternating rounds",
            f"{workers.two.rps:,.0f} req/s, p50 {workers.two.p50_ms:.1f} ms",
            f"one process {workers.one.rps:,.0f} req/s (p50 {workers.one.p50_ms:.1f} ms): "
            f"ratio **{workers.ratio:.2f}×** (rounds one/two: {rounds})",
            f"≥ 1.5× {'✅' if workers.ratio >= 1.5 else '❌'}",
        )
    ]
