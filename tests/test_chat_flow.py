"""The whole flow through real processes' parts: GraphQL over HTTP, the arq worker,
the fake Gemini through google-genai, Redis streams and pub/sub, and a websocket."""

from __future__ import annotations

from gemini_graphql.testing.fakes.gemini import Script
from tests.chat_harness import ROOM_MESSAGES, Live, send, stream, user_with_room
from tests.conftest import RecordingSms


async def test_send_subscribe_and_read_back(
    live: Live, worker, sms: RecordingSms, fake_gemini
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(chunks=["Hel", "lo, ", "Ada", "!"], delay=0.01))
    user, room_id = await user_with_room(live.http, sms)

    sent = await send(live.http, user.token, room_id, "  Hi Gemini  ")
    assert sent["errors"] == []
    assert sent["message"]["content"] == "Hi Gemini" and sent["message"]["role"] == "USER"
    assert sent["message"]["status"] == "COMPLETE"
    assert sent["reply"]["status"] == "PENDING" and sent["reply"]["role"] == "ASSISTANT"
    assert sent["usage"]["used"] == 1 and sent["usage"]["remaining"] == 4

    result = await stream(live.ws_url, user.token, sent["reply"]["id"])
    assert result.completed and result.errors is None
    assert [event["seq"] for event in result.events] == list(range(1, 6))
    assert result.text == "Hello, Ada!"
    assert [event["status"] for event in result.events] == ["STREAMING"] * 4 + ["COMPLETE"]
    final = result.events[-1]
    assert final["delta"] == "" and final["message"]["content"] == "Hello, Ada!"
    assert all(event["message"] is None for event in result.events[:-1])

    body = await live.http(ROOM_MESSAGES, {"id": room_id}, token=user.token)
    nodes = [edge["node"] for edge in body["data"]["chatroom"]["messages"]["edges"]]
    assert [(n["role"], n["content"], n["status"]) for n in nodes] == [
        ("USER", "Hi Gemini", "COMPLETE"),
        ("ASSISTANT", "Hello, Ada!", "COMPLETE"),
    ]
    [request] = fake.requests
    assert request.method == "streamGenerateContent" and request.path.startswith("/v1beta/models/")
