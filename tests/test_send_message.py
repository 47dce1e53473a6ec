"""sendMessage: ownership, input rules, the atomic daily quota, and no half-done sends."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gemini_graphql.chat.reply_queue import reply_job_id
from gemini_graphql.config import Settings
from tests.auth_flows import ME, login
from tests.chat_harness import create_room, send
from tests.conftest import FakeClock, GraphQLClient, RecordingSms


def codes(payload: dict) -> list[tuple[str, str | None]]:
    return [(error["code"], error["field"]) for error in payload["errors"]]


async def counts(pg) -> tuple[int, int]:
    return await pg.fetchval("SELECT count(*) FROM messages"), await pg.fetchval(
        "SELECT coalesce(sum(daily_message_count), 0) FROM users"
    )


async def test_foreign_unknown_and_malformed_rooms_are_not_found(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    owner, other = await login(gql, sms), await login(gql, sms)
    room_id = await create_room(gql, owner.token)
    for token, target in [
        (other.token, room_id),
        (owner.token, str(uuid.uuid4())),
        (owner.token, "not-an-id"),
        (owner.token, ""),
    ]:
        payload = await send(gql, token, target)
        assert codes(payload) == [("NOT_FOUND", "chatroomId")]
        assert payload["message"] is payload["reply"] is payload["usage"] is None
    assert await counts(pg) == (0, 0)


@pytest.mark.parametrize("content", ["", "   ", "\n\t", "x" * 10_001, " " + "y" * 10_001 + " "])
async def test_bad_content_is_invalid_input(
    gql: GraphQLClient, sms: RecordingSms, pg, content: str
) -> None:
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    assert codes(await send(gql, user.token, room_id, content)) == [("INVALID_INPUT", "content")]
    assert await counts(pg) == (0, 0)


async def test_content_of_exactly_the_limit_is_accepted(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    payload = await send(gql, user.token, room_id, "  " + "z" * 10_000 + "  ")
    assert payload["errors"] == [] and len(payload["message"]["content"]) == 10_000


async def test_send_needs_a_login(gql: GraphQLClient) -> None:
    body = await gql(
        'mutation { sendMessage(input: {chatroomId: "x", content: "hi"}) { errors { code } } }'
    )
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_send_writes_both_messages_bumps_the_room_and_queues_one_job(
    gql: GraphQLClient, sms: RecordingSms, pg, redis_client, base_settings: Settings
) -> None:
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    before = await pg.fetchval("SELECT updated_at FROM chatrooms WHERE id = $1", uuid.UUID(room_id))
    payload = await send(gql, user.token, room_id, "Hello")
    rows = await pg.fetch("SELECT id, role, status, parent_id FROM messages ORDER BY id")
    assert [(row["role"], row["status"]) for row in rows] == [
        ("user", "complete"),
        ("assistant", "pending"),
    ]
    assert rows[1]["parent_id"] == rows[0]["id"]
    assert str(rows[1]["id"]) == payload["reply"]["id"]
    after = await pg.fetchval("SELECT updated_at FROM chatrooms WHERE id = $1", uuid.UUID(room_id))
    assert after > before
    names = base_settings.redis_names
    assert await redis_client.zcard(names.arq_queue) == 1
    job_id = reply_job_id(names, uuid.UUID(payload["reply"]["id"]))
    assert await redis_client.exists(f"arq:job:{job_id}")


async def test_twenty_parallel_sends_against_a_limit_of_five(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    results = await asyncio.gather(*(send(gql, user.token, room_id, f"m{i}") for i in range(20)))
    accepted = [payload for payload in results if not payload["errors"]]
    refused = [payload for payload in results if payload["errors"]]
    assert len(accepted) == 5 and len(refused) == 15
    assert sorted(payload["usage"]["used"] for payload in accepted) == [1, 2, 3, 4, 5]
    assert all(codes(payload) == [("DAILY_LIMIT_REACHED", None)] for payload in refused)
    assert "Pro" in refused[0]["errors"][0]["message"]
    assert await counts(pg) == (10, 5)
    me = (await gql(ME, token=user.token))["data"]["me"]["usage"]
    assert (me["used"], me["remaining"]) == (5, 0)


async def test_quota_resets_at_the_utc_day_boundary(
    gql: GraphQLClient, sms: RecordingSms, clock: FakeClock
) -> None:
    clock.now = datetime(2026, 3, 1, 23, 59, 0, tzinfo=UTC)
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    for _ in range(5):
        assert (await send(gql, user.token, room_id))["errors"] == []
    refused = await send(gql, user.token, room_id)
    assert codes(refused) == [("DAILY_LIMIT_REACHED", None)]
    me = (await gql(ME, token=user.token))["data"]["me"]["usage"]
    assert me["resetsAt"] == "2026-03-02T00:00:00+00:00"

    clock.now = datetime(2026, 3, 2, 0, 0, 1, tzinfo=UTC)
    me = (await gql(ME, token=user.token))["data"]["me"]["usage"]
    assert (me["used"], me["remaining"], me["resetsAt"]) == (0, 5, "2026-03-03T00:00:00+00:00")
    accepted = await send(gql, user.token, room_id)
    assert accepted["errors"] == [] and accepted["usage"]["used"] == 1


async def test_pro_limit_applies_to_pro_users(make_client, sms: RecordingSms, pg) -> None:
    gql = GraphQLClient(await make_client(basic_daily_limit=1, pro_daily_limit=3))
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    assert (await send(gql, user.token, room_id))["errors"] == []
    assert codes(await send(gql, user.token, room_id)) == [("DAILY_LIMIT_REACHED", None)]
    await pg.execute(
        "UPDATE users SET subscription_tier = 'pro' WHERE id = $1", uuid.UUID(user.user_id)
    )
    payload = await send(gql, user.token, room_id)
    assert payload["errors"] == [] and (payload["usage"]["used"], payload["usage"]["limit"]) == (
        2,
        3,
    )


async def test_queue_failure_undoes_the_send(
    make_client, sms: RecordingSms, pg, clock: FakeClock
) -> None:
    gql = GraphQLClient(await make_client())
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    room_before = await pg.fetchval(
        "SELECT updated_at FROM chatrooms WHERE id = $1", uuid.UUID(room_id)
    )
    # The same database, but Redis (and so the queue) unreachable.
    broken = GraphQLClient(await make_client(redis_url="redis://127.0.0.1:1/0"))
    payload = await send(broken, user.token, room_id)
    assert codes(payload) == [("SERVICE_UNAVAILABLE", None)]
    assert "not sent" in payload["errors"][0]["message"]
    assert await counts(pg) == (0, 0)
    room_after = await pg.fetchval(
        "SELECT updated_at FROM chatrooms WHERE id = $1", uuid.UUID(room_id)
    )
    assert room_after == room_before
    assert (await send(gql, user.token, room_id))["usage"]["used"] == 1


async def test_resets_at_is_next_utc_midnight(
    gql: GraphQLClient, sms: RecordingSms, clock: FakeClock
) -> None:
    clock.now = datetime(2026, 7, 4, 12, 30, tzinfo=UTC)
    user = await login(gql, sms)
    usage = (await gql(ME, token=user.token))["data"]["me"]["usage"]
    assert datetime.fromisoformat(usage["resetsAt"]) == datetime(2026, 7, 5, tzinfo=UTC)
    assert datetime.fromisoformat(usage["resetsAt"]) - clock.now < timedelta(hours=12)
