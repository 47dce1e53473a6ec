"""12. Throughput rows against `me` in the same run:
- `sendMessage` from 32 clients of 32 different users (each its own room, Pro, so no quota
  wall), one connection and one wrk thread each, against `me` sent the same way: first with
  the worker paused (SIGSTOP: the api's own path, what a client waits for; the replies
  queue up and are answered after), then with the worker answering meanwhile, where the
  machine's CPUs bound it: every message costs the whole stack's CPU per reply (row 10);
- `serve --workers 2` against one process, `me` at 32 connections, best of alternating
  rounds.
`drained` waits until the worker has caught up, so that a later row does not share the CPUs
with it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    paused: Load  # the worker stopped: the api's path alone
    answering: Load  # the worker answering meanwhile
    me: Load
    drain_seconds: float  # the worker's catching up with what `paused` queued

    @property
    def ratio(self) -> float:
        return self.paused.rps / self.me.rps


@contextmanager
def worker_paused(stack: Stack) -> Iterator[None]:
    assert stack.worker_pid is not None, "the send rows need the stack's worker"
    os.kill(stack.worker_pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(stack.worker_pid, signal.SIGCONT)


async def send_many_users(stack: Stack) -> SendVsMe:
    users = await _users(stack, USERS)
    tokens = [token for token, _ in users]
    url = stack.url + "/graphql"
    me = await run_wrk_users(url, tokens=tokens, bodies=[{"query": ME}] * USERS, seconds=SECONDS)
    bodies = [{"query": SEND, "variables": {"r": room}} for _, room in users]
    with worker_paused(stack):
        paused = await run_wrk_users(url, tokens=tokens, bodies=bodies, seconds=SECONDS)
    waited = await drained(stack)
    answering = await run_wrk_users(url, tokens=tokens, bodies=bodies, seconds=SECONDS)
    return SendVsMe(paused, answering, me, waited)


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
    paused, answering, me = send.paused, send.answering, send.me
    return [
        (
            f"12. `sendMessage`, {USERS} clients of {USERS} different users (a room each, "
            "Pro), one connection each; the worker paused (the api's own path; the "
            f"{paused.requests:,} replies queued were answered after, in {send.drain_seconds:.0f} s)",
            f"{paused.rps:,.0f} req/s, p50 {paused.p50_ms:.1f} ms, "
            f"p99 {paused.p99_ms:.1f} ms, errors {paused.errors}",
            f"`me` the same way {me.rps:,.0f} req/s (p50 {me.p50_ms:.1f} ms): "
            f"ratio **{send.ratio:.2f}**",
            f"≥ 0.20 {'✅' if send.ratio >= 0.2 else '❌'}",
        ),
        (
            "12. the same with the worker answering meanwhile (each message then costs the "
            "whole stack's CPU per reply, row 10, on the same CPUs)",
            f"{answering.rps:,.0f} req/s, p50 {answering.p50_ms:.1f} ms, "
            f"p99 {answering.p99_ms:.1f} ms, errors {answering.errors}",
            f"`me` {me.rps:,.0f} req/s: ratio **{answering.rps / me.rps:.3f}**",
            "(for information)",
        ),
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
