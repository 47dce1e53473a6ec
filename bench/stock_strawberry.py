"""5. The choice of our own transports, re-checked on every run: the same app with /graphql
served by Strawberry's stock `GraphQL` view (bench/strawberry_app.py), measured next to
ours in the same run: `me` and `{ __typename }` at 32 connections, and RSS per idle
`messageStream` subscription at 1,000."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from bench.http_overhead import ME
from bench.stack import Stack, rss_kb
from bench.streams import Client, make_pending_replies
from bench.wrk import Load, run_wrk
from gemini_graphql.testing.processes import start_api

TYPENAME = "{ __typename }"
SECONDS = 6
IDLE = 1000


@asynccontextmanager
async def stock_api(stack: Stack) -> AsyncIterator[Stack]:
    """The stock view on its own process, as `stack` (same database, Redis, user)."""
    process, url = await start_api(stack.settings, module="bench.strawberry_app", args=())
    try:
        yield replace(
            stack, url=url, ws_url=url.replace("http://", "ws://") + "/graphql", api=process
        )
    finally:
        await process.stop()


async def http_rows(stack: Stack) -> dict[str, tuple[Load, Load]]:
    """(ours, stock) for each document, measured one after the other."""
    results: dict[str, tuple[Load, Load]] = {}
    async with stock_api(stack) as stock:
        for name, query in (("me", ME), ("__typename", TYPENAME)):
            body = {"query": query}
            ours = await run_wrk(
                stack.url + "/graphql",
                connections=32,
                seconds=SECONDS,
                body=body,
                token=stack.token,
            )
            theirs = await run_wrk(
                stock.url + "/graphql",
                connections=32,
                seconds=SECONDS,
                body=body,
                token=stack.token,
            )
            results[name] = (ours, theirs)
    return results


async def idle_kb(stack: Stack, replies: list[str]) -> float:
    """RSS per idle subscription the api process of `stack` holds for `replies`."""
    client = await Client.start(stack)
    try:
        await client.ask({"op": "subscribe", "ids": replies[:5]})  # warm the process up
        await client.ask({"op": "close_all"})
        await asyncio.sleep(1)
        baseline = rss_kb(stack.api.pid)
        await client.ask({"op": "subscribe", "ids": replies})
        await asyncio.sleep(2)
        return (rss_kb(stack.api.pid) - baseline) / len(replies)
    finally:
        await client.close()


async def idle_rows(stack: Stack) -> tuple[float, float]:
    """(ours, stock) RSS per idle subscription at IDLE subscriptions."""
    replies = await make_pending_replies(stack, IDLE)
    ours = await idle_kb(stack, replies)
    async with stock_api(stack) as stock:
        theirs = await idle_kb(stock, replies)
    return ours, theirs
