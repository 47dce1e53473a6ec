"""1. GraphQL overhead: `me` and the cached `chatrooms(first: 20)` page against a bare
Starlette endpoint answering the same number of bytes, all at 32 connections.
2. sendMessage: latency at 1 and 32 clients, with the worker running."""

from __future__ import annotations

import httpx

from bench.stack import Stack, uvicorn_process
from bench.wrk import Load, run_wrk

ME = "{ me { id mobileNumber tier usage { used limit } } }"
ROOMS = "{ chatrooms(first: 20) { edges { node { id title updatedAt } } } }"
SEND = 'mutation($r: ID!) { sendMessage(input: {chatroomId: $r, content: "hello"}) { reply { id } errors { code } } }'
SECONDS = 8


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
        results = {
            "me": await run_wrk(
                graphql, connections=32, seconds=SECONDS, body={"query": ME}, token=stack.token
            ),
            "chatrooms": await run_wrk(
                graphql, connections=32, seconds=SECONDS, body={"query": ROOMS}, token=stack.token
            ),
            "raw": await run_wrk(
                raw_url + "/raw", connections=32, seconds=SECONDS, body={"query": ME}
            ),
        }
    return results


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
