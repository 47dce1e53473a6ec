"""Chatrooms: creation rules, the cached room list, ownership, message pages."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import event

from gemini_graphql.config import Settings
from tests.auth_flows import login
from tests.chat_harness import CREATE_ROOM, ROOM_MESSAGES, create_room, send
from tests.conftest import GraphQLClient, RecordingSms

ROOMS = """
query($first: Int, $after: String) {
  chatrooms(first: $first, after: $after) {
    edges { cursor node { id title updatedAt } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}"""
ROOM = "query($id: ID!) { chatroom(id: $id) { id title description } }"


def titles(body: dict) -> list[str]:
    return [edge["node"]["title"] for edge in body["data"]["chatrooms"]["edges"]]


async def test_create_trims_the_title(gql: GraphQLClient, sms: RecordingSms) -> None:
    user = await login(gql, sms)
    body = await gql(
        CREATE_ROOM,
        {"input": {"title": "  Trip plans  ", "description": "  Japan  "}},
        token=user.token,
    )
    room = body["data"]["createChatroom"]["chatroom"]
    assert (room["title"], room["description"]) == ("Trip plans", "Japan")
    assert room["createdAt"] == room["updatedAt"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"title": ""}, "title"),
        ({"title": "   \n\t "}, "title"),
        ({"title": "x" * 256}, "title"),
        ({"title": "x" * 10_000}, "title"),
        ({"title": "ok", "description": "d" * 2001}, "description"),
    ],
)
async def test_create_rejects_bad_input_and_writes_nothing(
    gql: GraphQLClient, sms: RecordingSms, pg, fields: dict, field: str
) -> None:
    user = await login(gql, sms)
    body = await gql(CREATE_ROOM, {"input": fields}, token=user.token)
    payload = body["data"]["createChatroom"]
    assert payload["chatroom"] is None
    assert [(e["code"], e["field"]) for e in payload["errors"]] == [("INVALID_INPUT", field)]
    assert await pg.fetchval("SELECT count(*) FROM chatrooms") == 0


async def test_limits_are_inclusive(gql: GraphQLClient, sms: RecordingSms) -> None:
    user = await login(gql, sms)
    body = await gql(
        CREATE_ROOM, {"input": {"title": "t" * 255, "description": "d" * 2000}}, token=user.token
    )
    assert body["data"]["createChatroom"]["errors"] == []


async def test_chat_needs_a_login(gql: GraphQLClient) -> None:
    for document, variables in [
        (ROOMS, {}),
        (CREATE_ROOM, {"input": {"title": "x"}}),
        (ROOM, {"id": str(uuid.uuid4())}),
    ]:
        body = await gql(document, variables)
        assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_rooms_most_recently_updated_first_with_pages(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    for index in range(5):
        await create_room(gql, user.token, f"room {index}")
    first = await gql(ROOMS, {"first": 2}, token=user.token)
    assert titles(first) == ["room 4", "room 3"]
    info = first["data"]["chatrooms"]["pageInfo"]
    assert info["hasNextPage"] is True and info["hasPreviousPage"] is False
    second = await gql(ROOMS, {"first": 2, "after": info["endCursor"]}, token=user.token)
    assert titles(second) == ["room 2", "room 1"]
    third = await gql(
        ROOMS,
        {"first": 2, "after": second["data"]["chatrooms"]["pageInfo"]["endCursor"]},
        token=user.token,
    )
    assert titles(third) == ["room 0"]
    assert third["data"]["chatrooms"]["pageInfo"]["hasNextPage"] is False
    assert titles(await gql(ROOMS, {}, token=user.token)) == [f"room {i}" for i in range(4, -1, -1)]


async def test_a_new_message_moves_its_room_to_the_top(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    oldest = await create_room(gql, user.token, "oldest")
    await create_room(gql, user.token, "newest")
    assert titles(await gql(ROOMS, {}, token=user.token)) == ["newest", "oldest"]  # now cached
    assert (await send(gql, user.token, oldest))["errors"] == []
    assert titles(await gql(ROOMS, {}, token=user.token)) == ["oldest", "newest"]


async def test_first_page_is_served_from_the_cache(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token, "original")
    assert titles(await gql(ROOMS, {}, token=user.token)) == ["original"]
    # Behind the app's back: the cached page still answers...
    await pg.execute(
        "UPDATE chatrooms SET title = 'changed in SQL' WHERE id = $1", uuid.UUID(room_id)
    )
    assert titles(await gql(ROOMS, {}, token=user.token)) == ["original"]
    assert titles(await gql(ROOMS, {"first": 1}, token=user.token)) == ["original"]
    # ...until a change through the app invalidates it.
    await create_room(gql, user.token, "second")
    assert titles(await gql(ROOMS, {}, token=user.token)) == ["second", "changed in SQL"]


async def test_cache_is_per_user_and_expires(
    gql: GraphQLClient, sms: RecordingSms, redis_client, base_settings: Settings
) -> None:
    ada, bob = await login(gql, sms), await login(gql, sms)
    await create_room(gql, ada.token, "ada's")
    await create_room(gql, bob.token, "bob's")
    assert titles(await gql(ROOMS, {}, token=ada.token)) == ["ada's"]
    assert titles(await gql(ROOMS, {}, token=bob.token)) == ["bob's"]
    pages = base_settings.redis_names.key("rooms:first:*")
    keys = [key async for key in redis_client.scan_iter(match=pages)]
    assert len(keys) == 2
    ttls = [await redis_client.ttl(key) for key in keys]
    assert all(0 < ttl <= 600 for ttl in ttls), ttls


async def test_cache_never_serves_a_stale_order_under_concurrency(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    rooms = [await create_room(gql, user.token, f"room {i}") for i in range(4)]
    for round_ in range(5):
        target = rooms[round_ % len(rooms)]
        reads = [gql(ROOMS, {}, token=user.token) for _ in range(5)]
        results = await asyncio.gather(send(gql, user.token, target, f"msg {round_}"), *reads)
        assert (
            results[0]["errors"] == [] or results[0]["errors"][0]["code"] == "DAILY_LIMIT_REACHED"
        )
        after = await gql(ROOMS, {}, token=user.token)
        if not results[0]["errors"]:
            assert after["data"]["chatrooms"]["edges"][0]["node"]["id"] == target


@pytest.mark.parametrize(
    "variables", [{"first": 101}, {"first": -1}, {"after": "not-a-cursor!"}, {"after": "Zm9v"}]
)
async def test_bad_page_arguments_are_bad_requests(
    gql: GraphQLClient, sms: RecordingSms, variables: dict
) -> None:
    user = await login(gql, sms)
    body = await gql(ROOMS, variables, token=user.token)
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_page_of_zero_and_of_a_hundred(gql: GraphQLClient, sms: RecordingSms) -> None:
    user = await login(gql, sms)
    await create_room(gql, user.token)
    empty = await gql(ROOMS, {"first": 0}, token=user.token)
    assert titles(empty) == [] and empty["data"]["chatrooms"]["pageInfo"]["hasNextPage"] is True
    assert len(titles(await gql(ROOMS, {"first": 100}, token=user.token))) == 1


async def test_another_users_room_does_not_exist(gql: GraphQLClient, sms: RecordingSms) -> None:
    owner, other = await login(gql, sms), await login(gql, sms)
    room_id = await create_room(gql, owner.token, "private")
    assert (await gql(ROOM, {"id": room_id}, token=owner.token))["data"]["chatroom"][
        "title"
    ] == "private"
    assert (await gql(ROOM, {"id": room_id}, token=other.token))["data"] == {"chatroom": None}
    assert titles(await gql(ROOMS, {}, token=other.token)) == []
    for bad in [str(uuid.uuid4()), "not-a-uuid", "", "1 OR 1=1", "x" * 1000]:
        assert (await gql(ROOM, {"id": bad}, token=owner.token))["data"] == {"chatroom": None}


async def test_message_pages(gql: GraphQLClient, sms: RecordingSms, pg) -> None:
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    await pg.execute(
        "UPDATE users SET subscription_tier = 'pro' WHERE id = $1", uuid.UUID(user.user_id)
    )
    for index in range(4):  # 8 messages: 4 sent, 4 pending replies
        assert (await send(gql, user.token, room_id, f"m{index}"))["errors"] == []

    async def page(**arguments) -> tuple[list[str], dict]:
        body = await gql(ROOM_MESSAGES, {"id": room_id, **arguments}, token=user.token)
        connection = body["data"]["chatroom"]["messages"]
        return [e["node"]["content"] or e["node"]["role"] for e in connection["edges"]], connection[
            "pageInfo"
        ]

    everything, _ = await page()
    assert everything == [
        "m0",
        "ASSISTANT",
        "m1",
        "ASSISTANT",
        "m2",
        "ASSISTANT",
        "m3",
        "ASSISTANT",
    ]
    newest, info = await page(last=3)
    assert newest == ["ASSISTANT", "m3", "ASSISTANT"]
    assert info["hasPreviousPage"] is True and info["hasNextPage"] is False
    older, info = await page(last=3, before=info["startCursor"])
    assert older == ["m1", "ASSISTANT", "m2"]
    oldest, info = await page(last=3, before=info["startCursor"])
    assert oldest == ["m0", "ASSISTANT"] and info["hasPreviousPage"] is False
    forward, info = await page(first=3)
    assert forward == ["m0", "ASSISTANT", "m1"] and info["hasNextPage"] is True
    rest, info = await page(first=10, after=info["endCursor"])
    assert (
        rest == ["ASSISTANT", "m2", "ASSISTANT", "m3", "ASSISTANT"] and info["hasNextPage"] is False
    )


@pytest.mark.parametrize(
    "arguments",
    [{"first": 101}, {"last": 101}, {"first": 1, "last": 1}, {"after": "bad"}, {"before": "%%%"}],
)
async def test_bad_message_page_arguments(
    gql: GraphQLClient, sms: RecordingSms, arguments: dict
) -> None:
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    body = await gql(ROOM_MESSAGES, {"id": room_id, **arguments}, token=user.token)
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_no_n_plus_one_for_messages_of_many_rooms(
    client, gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    user = await login(gql, sms)
    await pg.execute(
        "UPDATE users SET subscription_tier = 'pro' WHERE id = $1", uuid.UUID(user.user_id)
    )
    engine = client._transport.app.state.resources.database.engine
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    query = """{ chatrooms(first: 50) { edges { node { title
        messages(last: 2) { edges { node { content } } } } } } }"""

    async def statements_for_rooms(room_count: int) -> int:
        while (
            len(
                titles(
                    await gql(
                        "{ chatrooms(first: 100) { edges { node { title } } } }", token=user.token
                    )
                )
            )
            < room_count
        ):
            room_id = await create_room(gql, user.token)
            await send(gql, user.token, room_id, "hello")
        await gql(query, token=user.token)  # warm the room cache
        statements.clear()
        event.listen(engine.sync_engine, "before_cursor_execute", count)
        try:
            body = await gql(query, token=user.token)
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", count)
        edges = body["data"]["chatrooms"]["edges"]
        assert len(edges) == room_count
        assert all(len(edge["node"]["messages"]["edges"]) == 2 for edge in edges)
        return len(statements)

    few = await statements_for_rooms(2)
    many = await statements_for_rooms(12)
    assert few == many <= 2  # the user, then one query for all rooms' messages
