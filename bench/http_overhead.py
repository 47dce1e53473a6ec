"""1. GraphQL overhead: `me` and the cached `chatrooms(first: 20)` page against a bare
Starlette endpoint answering the same number of bytes, all at 32 connections, best of
ROUNDS alternating rounds.
2. sendMessage: latency at 1 and 32 clients, with the worker running."""

from __future__ import annotations

import httpx

from bench.stack import Stack, uvicorn_process
from bench.wrk import Load, Target, alternating, best, run_wrk

ME = "{ me { id mobileNumber tier usage { used limit } } }"
ROOMS = "{ chatrooms(first: 20) { edges { node { id title updatedAt } } } }"
SEND = 'mutation($r: ID!) { sendMessage(input: {chatroomId: $r, content: "hello"}) { reply { id } errors { code } } }'
SECONDS = 4
ROUNDS = 3  # of each load in graphql_overhead; the best round of each is compared


async def graphql_overhead(stack: Stack) -> dict[str, Load]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        for index in range(19):  # 20 rooms in all
            await stack.gql(
                http,
                "mutation($t: String!) { createChatroom(input: {title: $t}) { chatroom { id } } }",
                {"t": f"room {index}"},
            )
        me_bytes = len(
            (
                await http.post(
                    "/graphql",
                    json={"query": ME},
                    headers={"Authorization": f"Bearer {stack.token}"},
                )
            ).content
        )
    # The baseline under the same uvicorn flags as `serve`, answering as many bytes as `me`.
    async with uvicorn_process(
        "bench.raw_app:app", "/raw", {"RAW_BODY_BYTES": str(me_bytes)}
    ) as raw_url:
        graphql = stack.url + "/graphql"
        targets: dict[str, Target] = {
            "raw": (raw_url + "/raw", {"query": ME}, None),
            "me": (graphql, {"query": ME}, stack.token),
            "chatrooms": (graphql, {"query": ROOMS}, stack.token),
        }
        rounds = await alternating(targets, rounds=ROUNDS, seconds=SECONDS)
    return {name: best(results) for name, results in rounds.items()}


async def send_message(stack: Stack) -> dict[str, Load]:
    body = {"query": SEND, "variables": {"r": stack.room_id}}
    url = stack.url + "/graphql"
    return {
        "send_1": await run_wrk(url, connections=1, seconds=SECONDS, body=body, token=stack.token),
        "send_32": await run_wrk(
            url, connections=32, seconds=SECONDS, body=body, token=stack.token
        ),
        "me_1": await run_wrk(
            url, connections=1, seconds=SECONDS, body={"query": ME}, token=stack.token
        ),
    }
