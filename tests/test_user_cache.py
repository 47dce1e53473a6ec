"""Each process's copies of users' rows and room lists: used, and never trusted past a change.

Two apps started in one test are two api processes: separate Resources, caches and
Redis pub/sub connections, one database and one Redis.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from gemini_graphql.config import Settings
from gemini_graphql.infra import user_cache
from gemini_graphql.infra.relay import Relay
from gemini_graphql.infra.resources import Resources
from gemini_graphql.infra.user_cache import CHANNEL, UserCache
from gemini_graphql.models import User
from tests.auth_flows import CHANGE_PASSWORD, ME, LoggedIn, login
from tests.chat_harness import create_room, send
from tests.conftest import GraphQLClient, RecordingSms

ROOMS = "{ chatrooms(first: 5) { edges { node { id title } } } }"

MakeClient = Callable[..., Awaitable[httpx.AsyncClient]]


def resources_of(client: httpx.AsyncClient) -> Resources:
    return client._transport.app.state.resources  # type: ignore[attr-defined]


async def live_cache(client: httpx.AsyncClient) -> UserCache:
    """The app's cache once its change-notice subscription is confirmed."""
    cache = resources_of(client).users
    async with asyncio.timeout(5):
        while not cache.live:
            await asyncio.sleep(0.01)
    return cache


async def eventually(check: Callable[[], Awaitable[bool] | bool], seconds: float = 3.0) -> None:
    async with asyncio.timeout(seconds):
        while True:
            outcome = check()
            if await outcome if inspect.isawaitable(outcome) else outcome:
                return
            await asyncio.sleep(0.01)


async def two_processes(make_client: MakeClient) -> tuple[GraphQLClient, GraphQLClient]:
    """Two apps (each its own caches and pub/sub connection), both hearing notices."""
    a, b = GraphQLClient(await make_client()), GraphQLClient(await make_client())
    await live_cache(a.http)
    await live_cache(b.http)
    return a, b


async def me(gql: GraphQLClient, token: str) -> dict[str, Any]:
    return await gql(ME, token=token)


async def kept_by(gql: GraphQLClient, cache: UserCache, user: LoggedIn) -> None:
    """Read `me` until the process keeps a copy (a read that overlapped a notice, such as
    the echo of the login's own, is rightly not kept)."""

    async def kept() -> bool:
        await me(gql, user.token)
        return cache.user(uuid.UUID(user.user_id)) is not None

    await eventually(kept)


async def test_requests_are_served_from_the_copy(
    make_client: MakeClient, sms: RecordingSms
) -> None:
    client = await make_client()
    gql = GraphQLClient(client)
    cache = await live_cache(client)
    user = await login(gql, sms)
    await kept_by(gql, cache, user)
    user_id = uuid.UUID(user.user_id)
    cached = cache.user(user_id)
    await me(gql, user.token)
    assert cache.user(user_id) is cached  # the second read came from the copy


async def test_a_password_change_in_one_process_locks_the_old_token_out_of_the_others(
    make_client: MakeClient, sms: RecordingSms
) -> None:
    a, b = await two_processes(make_client)
    cache_b = resources_of(b.http).users
    user = await login(a, sms)
    await kept_by(b, cache_b, user)

    changed = await a(
        CHANGE_PASSWORD, {"input": {"newPassword": "a-new-pass-123"}}, token=user.token
    )
    new_token = changed["data"]["changePassword"]["accessToken"]

    async def old_token_refused() -> bool:
        body = await me(b, user.token)
        return (
            bool(body.get("errors"))
            and body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        )

    await eventually(old_token_refused)
    assert (await me(b, new_token))["data"]["me"]["hasPassword"] is True


async def test_usage_and_room_order_from_one_process_show_in_the_others(
    make_client: MakeClient, sms: RecordingSms
) -> None:
    a, b = await two_processes(make_client)
    user = await login(a, sms)
    older = await create_room(a, user.token, "older")
    await create_room(a, user.token, "newer")
    rooms = await b(ROOMS, token=user.token)
    assert [edge["node"]["title"] for edge in rooms["data"]["chatrooms"]["edges"]] == [
        "newer",
        "older",
    ]
    assert (await me(b, user.token))["data"]["me"]["usage"]["used"] == 0

    await send(a, user.token, older)

    async def b_sees_it() -> bool:
        usage = (await me(b, user.token))["data"]["me"]["usage"]["used"]
        titles = [
            e["node"]["title"]
            for e in (await b(ROOMS, token=user.token))["data"]["chatrooms"]["edges"]
        ]
        return usage == 1 and titles == ["older", "newer"]

    await eventually(b_sees_it)


async def test_the_writing_process_reads_its_own_write_at_once(
    make_client: MakeClient, sms: RecordingSms
) -> None:
    gql = GraphQLClient(await make_client())
    await live_cache(gql.http)
    user = await login(gql, sms)
    room = await create_room(gql, user.token)
    for expected in (1, 2, 3):
        await send(gql, user.token, room)
        assert (await me(gql, user.token))["data"]["me"]["usage"]["used"] == expected


async def test_parallel_sends_and_reads_end_with_the_true_count(
    make_client: MakeClient, sms: RecordingSms
) -> None:
    """Reads racing writes may not leave an old copy behind (a read spanning a notice is not kept)."""
    a, b = await two_processes(make_client)
    user = await login(a, sms)
    room = await create_room(a, user.token)
    await asyncio.gather(
        *(send(a, user.token, room) for _ in range(5)),
        *(me(client, user.token) for _ in range(10) for client in (a, b)),
    )

    async def both_say_five() -> bool:
        counts = [(await me(c, user.token))["data"]["me"]["usage"]["used"] for c in (a, b)]
        return counts == [5, 5]

    await eventually(both_say_five)


async def test_changes_made_by_hand_show_after_the_cache_lifetime(
    make_client: MakeClient, sms: RecordingSms, pg: asyncpg.Pool
) -> None:
    gql = GraphQLClient(await make_client(user_cache_seconds=0.3))
    cache = await live_cache(gql.http)
    user = await login(gql, sms)
    await kept_by(gql, cache, user)
    assert (await me(gql, user.token))["data"]["me"]["tier"] == "BASIC"
    await pg.execute(
        "UPDATE users SET subscription_tier = 'pro' WHERE id = $1", uuid.UUID(user.user_id)
    )
    await asyncio.sleep(0.35)
    assert (await me(gql, user.token))["data"]["me"]["tier"] == "PRO"


async def test_no_copies_are_used_while_notices_may_be_missed(
    make_client: MakeClient, sms: RecordingSms, pg: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    gql = GraphQLClient(await make_client())
    cache = await live_cache(gql.http)
    user = await login(gql, sms)
    await kept_by(gql, cache, user)

    # The pub/sub connection drops (Redis restarts, a network blip): notices are lost.
    await kill_pubsub_connections(redis_client, f"gemini-graphql:api:{os.getpid()}")
    await eventually(lambda: not cache.live)
    assert len(cache) == 0
    await pg.execute(
        "UPDATE users SET subscription_tier = 'pro' WHERE id = $1", uuid.UUID(user.user_id)
    )
    assert (await me(gql, user.token))["data"]["me"]["tier"] == "PRO"
    assert len(cache) == 0  # nothing kept while suspended

    # Reconnected and confirmed: copies again.
    await eventually(lambda: cache.live, seconds=10)
    await kept_by(gql, cache, user)


async def kill_pubsub_connections(redis_client: aioredis.Redis, name: str) -> None:
    """Drop the pub/sub connections of the clients called `name` (this process's apps),
    and only those: the server's other ones may be another test run's or deployment's."""
    killed = 0
    for client in await redis_client.client_list():
        subscribed = int(client.get("sub", 0)) + int(client.get("psub", 0)) > 0
        if client.get("name") == name and subscribed:
            await redis_client.execute_command("CLIENT", "KILL", "ID", client["id"])
            killed += 1
    assert killed, f"no pub/sub connection named {name}"


@pytest.fixture
def cache(redis_client: aioredis.Redis, base_settings: Settings) -> UserCache:
    cache = UserCache(
        redis_client, ttl_seconds=30, channel=base_settings.channel_prefix + CHANNEL, max_users=3
    )
    cache.resume()
    return cache


def _user(user_id: uuid.UUID) -> User:
    now = datetime.now(UTC)
    return User(id=user_id, mobile_number="+15550000000", created_at=now, updated_at=now)


def test_a_read_that_spans_a_notice_for_its_user_is_not_kept(cache: UserCache) -> None:
    user_id, other = uuid.uuid4(), uuid.uuid4()
    ticket = cache.ticket()
    cache.deliver(other.hex.encode())  # another user's notice does not matter
    cache.keep_user(_user(user_id), ticket)
    assert cache.user(user_id) is not None
    ticket = cache.ticket()
    cache.deliver(user_id.hex.encode())
    cache.keep_user(_user(user_id), ticket)
    assert cache.user(user_id) is None
    cache.keep_user(_user(user_id), cache.ticket())
    assert cache.user(user_id) is not None


def test_nothing_read_before_a_suspension_or_slowly_is_kept(
    cache: UserCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id = uuid.uuid4()
    ticket = cache.ticket()
    cache.suspend()
    cache.resume()
    cache.keep_user(_user(user_id), ticket)
    assert cache.user(user_id) is None
    monkeypatch.setattr(user_cache, "MAX_READ_SECONDS", 0.0)
    cache.keep_user(_user(user_id), cache.ticket())
    assert cache.user(user_id) is None


def test_notices_drop_the_user_and_bad_notices_are_ignored(cache: UserCache) -> None:
    user_id = uuid.uuid4()
    cache.keep_user(_user(user_id), cache.ticket())
    cache.keep_rooms(user_id, [], cache.ticket())
    cache.deliver(b"not a uuid")
    assert cache.user(user_id) is not None
    cache.deliver(user_id.hex.encode())
    assert cache.user(user_id) is None and cache.rooms(user_id) is None


def test_the_copies_are_bounded(cache: UserCache) -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    for user_id in ids:
        cache.keep_user(_user(user_id), cache.ticket())
    assert len(cache) == 3
    assert [cache.user(user_id) is not None for user_id in ids] == [False, False, True, True, True]


def test_nothing_is_kept_before_the_subscription_is_confirmed(redis_client: aioredis.Redis) -> None:
    cache = UserCache(redis_client, ttl_seconds=30, channel="unused:" + CHANNEL)
    user_id = uuid.uuid4()
    cache.keep_user(_user(user_id), cache.ticket())
    assert cache.user(user_id) is None and len(cache) == 0


async def test_a_notice_reaches_redis_subscribers(
    cache: UserCache, redis_client: aioredis.Redis, base_settings: Settings
) -> None:
    assert cache.channel == base_settings.redis_names.channel(CHANNEL)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(cache.channel)
    await pubsub.get_message(timeout=1)  # the confirmation
    user_id = uuid.uuid4()
    await cache.changed(user_id)
    message = await pubsub.get_message(timeout=2)
    while message is not None and message["type"] != "message":
        message = await pubsub.get_message(timeout=2)
    assert message is not None and message["data"] == user_id.hex.encode()
    await pubsub.aclose()


async def test_deployments_on_one_redis_server_do_not_hear_each_other(
    redis_client: aioredis.Redis, base_settings: Settings
) -> None:
    """Two processes of deployment A and one of B, on one Redis database even: a change in A
    reaches A's other process, never B (whose channels differ by their prefix alone)."""
    names_a, names_b = (
        replace(base_settings, redis_prefix=f"{base_settings.redis_prefix}-{name}").redis_names
        for name in ("a", "b")
    )
    a1, a2, b = (
        UserCache(redis_client, ttl_seconds=30, channel=names.channel(CHANNEL))
        for names in (names_a, names_a, names_b)
    )
    relays = [Relay(redis_client) for _ in range(3)]
    try:
        for relay, cache in zip(relays, (a1, a2, b), strict=True):
            relay.watch(cache.channel, cache)
        await eventually(lambda: a1.live and a2.live and b.live)
        user_id, marker = uuid.uuid4(), uuid.uuid4()
        for cache in (a2, b):
            cache.keep_user(_user(user_id), cache.ticket())
            cache.keep_user(_user(marker), cache.ticket())

        await a1.changed(user_id)
        await eventually(lambda: a2.user(user_id) is None)
        # B's own notice, published after A's: once it has arrived, so would A's have.
        await redis_client.publish(b.channel, marker.hex)
        await eventually(lambda: b.user(marker) is None)
        assert b.user(user_id) is not None
        assert a2.user(marker) is not None
    finally:
        for relay in relays:
            await relay.close()


# Whole responses of queries that read only the user's own row and rooms.


@pytest.mark.parametrize(
    ("document", "cacheable"),
    [
        ("{ me { id tier usage { used limit remaining resetsAt } } }", True),
        (
            "{ chatrooms(first: 3) { edges { cursor node { id title updatedAt __typename } } pageInfo { hasNextPage endCursor } } }",
            True,
        ),
        ("query Both { me { id } chatrooms { edges { node { id } } } }", True),
        ("{ chatrooms { edges { node { id messages { edges { node { content } } } } } } }", False),
        (
            "{ chatrooms { edges { node { ...Room } } } } fragment Room on Chatroom { id messages { edges { node { id } } } }",
            False,
        ),
        ('{ chatroom(id: "x") { id title } }', False),
        ("{ subscriptionStatus { tier status } }", False),
        ("{ me { id } __schema { queryType { name } } }", False),
        ('mutation { createChatroom(input: {title: "t"}) { chatroom { id } } }', False),
    ],
)
def test_which_documents_are_answered_from_kept_responses(document: str, cacheable: bool) -> None:
    from graphql import parse

    from gemini_graphql.api.schema import build_schema
    from gemini_graphql.api.transport.response_cache import reads_only_user_state
    from gemini_graphql.api.transport.strawberry_seams import graphql_schema

    schema = graphql_schema(build_schema())
    assert reads_only_user_state(schema, parse(document)) is cacheable


async def test_kept_responses_follow_variables_and_changes(
    make_client: MakeClient, sms: RecordingSms
) -> None:
    gql = GraphQLClient(await make_client())
    cache = await live_cache(gql.http)
    user = await login(gql, sms)
    await kept_by(gql, cache, user)
    rooms = [await create_room(gql, user.token, f"room {index}") for index in range(3)]
    page = "query($n: Int) { chatrooms(first: $n) { edges { node { title } } } }"

    async def titles(n: int) -> list[str]:
        body = await gql(page, {"n": n}, token=user.token)
        return [edge["node"]["title"] for edge in body["data"]["chatrooms"]["edges"]]

    for _ in range(2):  # the second round is answered from kept responses
        assert await titles(1) == ["room 2"]
        assert await titles(2) == ["room 2", "room 1"]
    await send(gql, user.token, rooms[0])
    assert await titles(2) == ["room 0", "room 2"]


async def test_usage_resets_at_utc_midnight_in_kept_responses(
    make_client: MakeClient, sms: RecordingSms, clock: Any
) -> None:
    clock.now = clock.now.replace(hour=23, minute=58)
    gql = GraphQLClient(await make_client())
    cache = await live_cache(gql.http)
    user = await login(gql, sms)
    room = await create_room(gql, user.token)
    await send(gql, user.token, room)
    await kept_by(gql, cache, user)
    first = (await me(gql, user.token))["data"]["me"]["usage"]
    assert first["used"] == 1
    clock.advance(minutes=3)
    after = (await me(gql, user.token))["data"]["me"]["usage"]
    assert after["used"] == 0 and after["resetsAt"] > first["resetsAt"]


async def test_kept_responses_are_the_users_own(make_client: MakeClient, sms: RecordingSms) -> None:
    gql = GraphQLClient(await make_client())
    await live_cache(gql.http)
    alice, bob = await login(gql, sms), await login(gql, sms)
    await create_room(gql, alice.token, "alice's")
    for _ in range(2):
        assert (await me(gql, alice.token))["data"]["me"]["id"] == alice.user_id
        assert (await me(gql, bob.token))["data"]["me"]["id"] == bob.user_id
        assert (await gql(ROOMS, token=bob.token))["data"]["chatrooms"]["edges"] == []
    refused = await me(gql, "not-a-token")
    assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
