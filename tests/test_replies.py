"""The worker: context sent to Gemini, retries, failures, idempotency."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

from gemini_graphql.ai.gemini import GeminiModel
from gemini_graphql.chat.replies import ReplyGenerator
from gemini_graphql.chat.reply_stream import ReplyChannels
from gemini_graphql.chat.room_events import RoomEventChannels
from gemini_graphql.chat.stops import StopRequests
from gemini_graphql.infra.resources import Resources
from gemini_graphql.testing.fakes.gemini import Script
from tests.auth_flows import ME
from tests.chat_harness import Live, send, stream, user_with_room
from tests.conftest import RecordingSms


async def wait_finished(pg, reply_id: str, timeout: float = 15) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            row = await pg.fetchrow("SELECT * FROM messages WHERE id = $1", uuid.UUID(reply_id))
            if row["status"] in ("complete", "failed"):
                return dict(row)
            await asyncio.sleep(0.02)


async def test_context_is_the_last_ten_messages_and_the_new_one(
    live: Live, worker, sms: RecordingSms, fake_gemini, pg
) -> None:
    fake, _ = fake_gemini
    user, room_id = await user_with_room(live.http, sms)
    await pg.execute(
        "UPDATE users SET subscription_tier = 'pro' WHERE id = $1", uuid.UUID(user.user_id)
    )
    replies = []
    for index in range(7):
        if index == 3:
            fake.script(Script(status=400))  # this reply fails: it must not be in later contexts
        sent = await send(live.http, user.token, room_id, f"question {index}")
        replies.append((await wait_finished(pg, sent["reply"]["id"]))["status"])
    assert replies == ["complete"] * 3 + ["failed"] + ["complete"] * 3

    last = fake.requests[-1].body
    turns = [(c["role"], c["parts"][0]["text"]) for c in last["contents"]]
    assert len(turns) == 11
    assert turns[-1] == ("user", "question 6")
    expected = []
    for index in range(7):
        expected.append(("user", f"question {index}"))
        if index not in (3, 6):
            expected.append(("model", f"Echo: question {index}"))
    assert turns == expected[-11:]
    assert "systemInstruction" in last and last["systemInstruction"]["parts"][0]["text"]
    assert all(request.api_key == "fake-gemini-key-for-tests" for request in fake.requests)


async def test_429_then_success_completes(
    live: Live, worker, sms: RecordingSms, fake_gemini, pg
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(status=429), Script(chunks=["after ", "a wait"]))
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id)
    result = await stream(live.ws_url, user.token, sent["reply"]["id"])
    assert result.text == "after a wait" and result.events[-1]["status"] == "COMPLETE"
    row = await wait_finished(pg, sent["reply"]["id"])
    assert row["content"] == "after a wait" and row["gemini_response_id"].startswith(
        "fake-response-"
    )
    assert len(fake.requests) == 2


async def test_persistent_503_fails_readably_and_gives_the_quota_back(
    live: Live, worker, sms: RecordingSms, fake_gemini, pg
) -> None:
    fake, _ = fake_gemini
    fake.default = Script(status=503)
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id)
    assert sent["usage"]["used"] == 1
    result = await stream(live.ws_url, user.token, sent["reply"]["id"])
    final = result.events[-1]
    assert final["status"] == "FAILED" and final["message"]["status"] == "FAILED"
    assert "unavailable" in final["message"]["error"].lower()
    assert "503" not in final["message"]["error"]  # readable, not a status code dump
    assert len(fake.requests) == 4  # bounded tries
    usage = (await live.http(ME, token=user.token))["data"]["me"]["usage"]
    assert usage["used"] == 0 and usage["remaining"] == 5


async def test_client_errors_fail_at_once(
    live: Live, worker, sms: RecordingSms, fake_gemini, pg
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(status=400))
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id)
    row = await wait_finished(pg, sent["reply"]["id"])
    assert row["status"] == "failed" and row["error"]
    assert len(fake.requests) == 1


async def test_a_stream_failing_half_way_is_continued(
    live: Live, worker, sms: RecordingSms, fake_gemini, pg
) -> None:
    fake, _ = fake_gemini
    fake.script(
        Script(chunks=["one ", "two ", "three"], error_after=2), Script(chunks=["three", "!"])
    )
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id)
    result = await stream(live.ws_url, user.token, sent["reply"]["id"])
    assert result.text == "one two three!"
    assert [event["seq"] for event in result.events] == [1, 2, 3, 4, 5]
    row = await wait_finished(pg, sent["reply"]["id"])
    assert row["content"] == result.text and row["status"] == "complete"
    retry_turns = fake.requests[1].body["contents"]
    assert retry_turns[-1] == {"role": "model", "parts": [{"text": "one two "}]}


async def test_a_dropped_connection_is_retried(
    live: Live, worker, sms: RecordingSms, fake_gemini, pg
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(chunks=["a", "b", "c"], drop_after=1), Script(chunks=["b", "c"]))
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id)
    row = await wait_finished(pg, sent["reply"]["id"])
    assert (row["status"], row["content"]) == ("complete", "abc")


async def test_a_hanging_gemini_times_out_and_is_retried(
    live: Live, worker, sms: RecordingSms, fake_gemini, pg
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(hang=True), Script(chunks=["awake"]))
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id)
    row = await wait_finished(pg, sent["reply"]["id"])
    assert (row["status"], row["content"]) == ("complete", "awake")


async def test_a_finished_reply_is_never_generated_twice(
    live: Live, worker, sms: RecordingSms, fake_gemini, pg, chat_settings
) -> None:
    fake, _ = fake_gemini
    user, room_id = await user_with_room(live.http, sms)
    sent = await send(live.http, user.token, room_id, "once")
    row = await wait_finished(pg, sent["reply"]["id"])
    requests_before = len(fake.requests)
    resources = Resources.open(chat_settings, role="test")
    model = GeminiModel(chat_settings)
    try:
        generator = ReplyGenerator(
            database=resources.database,
            redis=resources.redis,
            channels=ReplyChannels(chat_settings.redis_names),
            users=resources.users,
            clock=resources.clock,
            model=model,
            system_instruction=None,
            job_timeout_seconds=15,
            stops=StopRequests(resources.redis, ReplyChannels(chat_settings.redis_names)),
            room_events=RoomEventChannels(chat_settings.redis_names),
        )
        outcome = await generator.generate(uuid.UUID(sent["reply"]["id"]), final_try=False)
    finally:
        await model.aclose()
        await resources.close()
    assert outcome is not None and outcome.text == row["content"]
    assert len(fake.requests) == requests_before
    assert await pg.fetchval("SELECT count(*) FROM messages WHERE role = 'assistant'") == 1


async def test_wrong_api_key_fails_the_reply(
    live: Live, sms: RecordingSms, fake_gemini, pg, chat_settings, clock
) -> None:
    from tests.chat_harness import running_worker

    user, room_id = await user_with_room(live.http, sms)
    async with running_worker(replace(chat_settings, gemini_api_key="wrong-key"), clock):
        sent = await send(live.http, user.token, room_id)
        row = await wait_finished(pg, sent["reply"]["id"])
    assert row["status"] == "failed"
