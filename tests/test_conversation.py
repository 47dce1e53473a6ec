"""Version 2 end to end: versions and branches, what Gemini is sent on each branch, token
usage, room management, and the room events every device sees.

Every test runs twice: on PostgreSQL and Redis, and on the dev mode's stores (SQLite and the
embedded Redis), so the tree's SQL and the stop's Lua hold on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from gemini_graphql.chat.reply_stream import ReplyChannels
from gemini_graphql.config import Settings
from gemini_graphql.ids import new_id
from gemini_graphql.models import Message
from gemini_graphql.testing.fakes.gemini import FakeGemini, Script, prompt_tokens
from tests.chat_harness import (
    Live,
    Subscription,
    create_room,
    send,
    stream,
    subscribe,
    user_with_room,
)
from tests.conftest import GraphQLClient, RecordingSms

MESSAGE_FIELDS = """
  id role content status parentId version versionCount versions { id }
  tokenUsage { promptTokens outputTokens totalTokens }
"""
BRANCH = f"""
query($id: ID!, $last: Int, $before: String, $first: Int, $after: String) {{
  chatroom(id: $id) {{
    id title systemInstruction
    messages(last: $last, before: $before, first: $first, after: $after) {{
      edges {{ cursor node {{ {MESSAGE_FIELDS} }} }}
      pageInfo {{ hasNextPage hasPreviousPage }}
    }}
  }}
}}"""
TURN_FIELDS = """
  message { id content parentId version versionCount }
  reply { id status parentId version versionCount }
  usage { used remaining }
  errors { code field message }
"""
REGENERATE = (
    f"mutation($id: ID!) {{ regenerateReply(input: {{messageId: $id}}) {{ {TURN_FIELDS} }} }}"
)
EDIT = f"""mutation($id: ID!, $content: String!) {{
  editMessage(input: {{messageId: $id, content: $content}}) {{ {TURN_FIELDS} }} }}"""
SELECT = """mutation($id: ID!) { selectVersion(input: {messageId: $id}) {
  chatroom { id messages(last: 20) { edges { node { id } } } } errors { code field message } } }"""
UPDATE = """mutation($input: UpdateChatroomInput!) { updateChatroom(input: $input) {
  chatroom { id title description systemInstruction updatedAt } errors { code field message } } }"""
DELETE = """mutation($id: ID!) { deleteChatroom(input: {id: $id}) {
  deletedId errors { code field message } } }"""
CREATE_WITH_INSTRUCTION = """mutation($title: String!, $instruction: String) {
  createChatroom(input: {title: $title, systemInstruction: $instruction}) {
    chatroom { id systemInstruction } errors { code field message } } }"""
EVENTS = """subscription($room: ID) { chatroomEvents(chatroomId: $room) {
  type chatroomId at chatroom { id title } message { id role status content } } }"""
EVENT_TYPES = """subscription { chatroomEvents { type chatroomId at } }"""
USAGE = "query { me { usage { used tokensToday } } }"


@pytest.fixture(params=["postgresql", "sqlite"])
def chat_settings(
    request: pytest.FixtureRequest, chat_settings: Settings, dev_stores: tuple[str, str]
) -> Settings:
    if request.param == "postgresql":
        return chat_settings
    database_url, redis_url = dev_stores
    return replace(chat_settings, database_url=database_url, redis_url=redis_url)


@pytest.fixture
async def store_redis(chat_settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(chat_settings.redis_url)
    yield client
    await client.aclose()


async def execute(live: Live, statement: str | sa.Executable, *rows: dict) -> list:
    """Direct SQL on the app's own database (whichever it is)."""
    engine = live.app.state.services.resources.database.engine
    if isinstance(statement, str):
        statement = sa.text(statement)
    async with engine.begin() as connection:
        result = await connection.execute(statement, list(rows) if len(rows) > 1 else rows[0])
        return list(result) if result.returns_rows else []


async def make_pro(live: Live, user_id: str) -> None:
    users = sa.table("users", sa.column("id", sa.Uuid), sa.column("subscription_tier"))
    statement = users.update().where(users.c.id == uuid.UUID(user_id))
    await execute(live, statement.values(subscription_tier="pro"), {})


async def branch(gql: GraphQLClient, token: str, room_id: str, **page: Any) -> list[dict]:
    body = await gql(BRANCH, {"id": room_id, **page}, token=token)
    assert "errors" not in body, body
    return [edge["node"] for edge in body["data"]["chatroom"]["messages"]["edges"]]


async def finished(live: Live, token: str, reply_id: str) -> str:
    """The reply's whole text, once it has ended (COMPLETE)."""
    result = await stream(live.ws_url, token, reply_id)
    assert result.completed and result.events[-1]["status"] == "COMPLETE", result
    return result.text


async def mutate(gql: GraphQLClient, token: str, query: str, **variables: Any) -> dict:
    body = await gql(query, variables, token=token)
    assert "errors" not in body, body
    [payload] = body["data"].values()
    return payload


def texts(request) -> list[tuple[str, str]]:
    return [
        (content["role"], "".join(part["text"] for part in content["parts"]))
        for content in request.body["contents"]
    ]


async def test_versions_branches_and_what_gemini_is_sent_on_each(
    live: Live, worker, sms: RecordingSms, fake_gemini: tuple[FakeGemini, str], pg
) -> None:
    fake, _ = fake_gemini
    user, room_id = await user_with_room(live.http, sms)
    await make_pro(live, user.user_id)
    gql, token = live.http, user.token
    first = await send(gql, token, room_id, "first")
    a1 = await finished(live, token, first["reply"]["id"])
    second = await send(gql, token, room_id, "second")
    a2 = await finished(live, token, second["reply"]["id"])
    u2, r2 = second["message"]["id"], second["reply"]["id"]

    regenerated = await mutate(gql, token, REGENERATE, id=r2)
    assert regenerated["errors"] == []
    assert regenerated["message"]["id"] == u2  # the question answered again
    r2b = regenerated["reply"]["id"]
    assert regenerated["reply"]["parentId"] == u2 and regenerated["reply"]["status"] == "PENDING"
    assert (regenerated["reply"]["version"], regenerated["reply"]["versionCount"]) == (2, 2)
    a2b = await finished(live, token, r2b)
    # Asked again with exactly the same context as the first answer.
    assert texts(fake.requests[-1]) == texts(fake.requests[-2])

    edited = await mutate(gql, token, EDIT, id=u2, content="second, edited")
    assert edited["errors"] == []
    u2b, r2c = edited["message"]["id"], edited["reply"]["id"]
    assert edited["message"]["parentId"] == first["reply"]["id"]  # a sibling of u2
    assert (edited["message"]["version"], edited["message"]["versionCount"]) == (2, 2)
    a2c = await finished(live, token, r2c)
    assert texts(fake.requests[-1]) == [
        ("user", "first"),
        ("model", a1),
        ("user", "second, edited"),
    ]
    nodes = await branch(gql, token, room_id)
    assert [n["id"] for n in nodes] == [first["message"]["id"], first["reply"]["id"], u2b, r2c]
    assert [n["content"] for n in nodes][2:] == ["second, edited", a2c]
    assert nodes[2]["versions"] == [{"id": u2}, {"id": u2b}]

    # Back to the first question's branch: down to its newest leaf, the regenerated reply.
    selected = await mutate(gql, token, SELECT, id=u2)
    assert selected["errors"] == []
    assert [e["node"]["id"] for e in selected["chatroom"]["messages"]["edges"]][2:] == [u2, r2b]
    nodes = await branch(gql, token, room_id)
    assert [(n["content"], n["version"], n["versionCount"]) for n in nodes[2:]] == [
        ("second", 1, 2),
        (a2b, 2, 2),
    ]
    # ... and to the first answer of it; a message sent now follows that one.
    await mutate(gql, token, SELECT, id=r2)
    third = await send(gql, token, room_id, "third")
    assert third["errors"] == []
    await finished(live, token, third["reply"]["id"])
    assert texts(fake.requests[-1]) == [
        ("user", "first"),
        ("model", a1),
        ("user", "second"),
        ("model", a2),
        ("user", "third"),
    ]
    nodes = await branch(gql, token, room_id)
    assert [n["id"] for n in nodes] == [
        first["message"]["id"],
        first["reply"]["id"],
        u2,
        r2,
        third["message"]["id"],
        third["reply"]["id"],
    ]
    # Paging along the branch with the same cursors as v1.
    body = await gql(BRANCH, {"id": room_id, "last": 2}, token=token)
    page = body["data"]["chatroom"]["messages"]
    assert [e["node"]["id"] for e in page["edges"]] == [n["id"] for n in nodes[4:]]
    assert page["pageInfo"]["hasPreviousPage"] is True
    earlier = await branch(gql, token, room_id, last=3, before=page["edges"][0]["cursor"])
    assert [n["id"] for n in earlier] == [n["id"] for n in nodes[1:4]]
    forward = await branch(gql, token, room_id, first=2, after=page["edges"][0]["cursor"])
    assert [n["id"] for n in forward] == [n["id"] for n in nodes[5:]]
    oldest = await branch(gql, token, room_id, first=2)
    assert [n["id"] for n in oldest] == [n["id"] for n in nodes[:2]]


async def test_context_leaves_out_other_branches_and_unfinished_replies(
    live: Live, worker, sms: RecordingSms, fake_gemini: tuple[FakeGemini, str], pg
) -> None:
    """Eight turns, a failed reply in the middle and an abandoned branch: the context is the
    ten newest COMPLETE messages of the branch, and the new question."""
    fake, _ = fake_gemini
    user, room_id = await user_with_room(live.http, sms)
    await make_pro(live, user.user_id)
    gql, token = live.http, user.token
    expected: list[tuple[str, str]] = []
    for index in range(8):
        if index == 3:
            fake.script(Script(status=400))  # refused: FAILED, left out of the context
        sent = await send(gql, token, room_id, f"turn {index}")
        result = await stream(live.ws_url, token, sent["reply"]["id"])
        expected.append(("user", f"turn {index}"))
        if result.events[-1]["status"] == "COMPLETE":
            expected.append(("model", result.text))
        if index == 5:  # a branch edited away: never sent again
            edited = await mutate(gql, token, EDIT, id=sent["message"]["id"], content="gone")
            await finished(live, token, edited["reply"]["id"])
            await mutate(gql, token, SELECT, id=sent["message"]["id"])
    last = await send(gql, token, room_id, "the new one")
    await finished(live, token, last["reply"]["id"])
    assert texts(fake.requests[-1]) == [*expected[-10:], ("user", "the new one")]
    assert all("gone" not in text for _, text in texts(fake.requests[-1]))


async def test_room_instruction_is_the_system_instruction(
    live: Live, worker, sms: RecordingSms, fake_gemini: tuple[FakeGemini, str], chat_settings
) -> None:
    fake, _ = fake_gemini
    user, plain_room = await user_with_room(live.http, sms)
    gql, token = live.http, user.token
    created = await mutate(
        gql, token, CREATE_WITH_INSTRUCTION, title="Pirate", instruction="  Talk like a pirate. "
    )
    assert created["chatroom"]["systemInstruction"] == "Talk like a pirate."
    room_id = created["chatroom"]["id"]

    def instruction() -> str:
        parts = fake.requests[-1].body["systemInstruction"]["parts"]
        return "".join(part["text"] for part in parts)

    await finished(live, token, (await send(gql, token, room_id, "hi"))["reply"]["id"])
    assert instruction() == "Talk like a pirate."
    await finished(live, token, (await send(gql, token, plain_room, "hi"))["reply"]["id"])
    assert instruction() == chat_settings.gemini_system_instruction
    await mutate(gql, token, UPDATE, input={"id": room_id, "systemInstruction": "Be terse."})
    await finished(live, token, (await send(gql, token, room_id, "again"))["reply"]["id"])
    assert instruction() == "Be terse."
    await mutate(gql, token, UPDATE, input={"id": room_id, "systemInstruction": None})
    await finished(live, token, (await send(gql, token, room_id, "default"))["reply"]["id"])
    assert instruction() == chat_settings.gemini_system_instruction


async def test_token_usage_of_each_reply_and_of_the_day(
    live: Live, worker, sms: RecordingSms, fake_gemini: tuple[FakeGemini, str]
) -> None:
    fake, _ = fake_gemini
    user, room_id = await user_with_room(live.http, sms)
    gql, token = live.http, user.token
    totals = 0
    for content, chunks in (("one two three", ["a ", "b ", "c"]), ("four", ["d ", "e"])):
        fake.script(Script(chunks=chunks))
        sent = await send(gql, token, room_id, content)
        await finished(live, token, sent["reply"]["id"])
        prompt = prompt_tokens(fake.requests[-1].body)
        [node] = [n for n in await branch(gql, token, room_id) if n["id"] == sent["reply"]["id"]]
        assert node["tokenUsage"] == {
            "promptTokens": prompt,
            "outputTokens": len(chunks),
            "totalTokens": prompt + len(chunks),
        }
        totals += prompt + len(chunks)
    users = [n for n in await branch(gql, token, room_id) if n["role"] == "USER"]
    assert all(n["tokenUsage"] is None for n in users)
    body = await gql(USAGE, token=token)
    assert body["data"]["me"]["usage"] == {"used": 2, "tokensToday": totals}


async def test_versions_of_a_page_cost_a_bounded_number_of_statements(
    live: Live, sms: RecordingSms, pg
) -> None:
    """100 messages asking for their versions: the page, then one statement for them all."""
    user, room_id = await user_with_room(live.http, sms)
    await seed_linear_room(live, room_id, 120, versions_every=10)
    engine = live.app.state.services.resources.database.engine
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        nodes = await branch(live.http, user.token, room_id, last=100)
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert len(nodes) == 100
    assert {n["versionCount"] for n in nodes} == {1, 2}
    reads = [s for s in statements if "messages" in s]
    assert len(reads) == 2, reads  # the branch page, and every version of every message


async def seed_linear_room(
    live: Live, room_id: str, count: int, *, versions_every: int = 0
) -> None:
    """`count` messages in one branch (USER, ASSISTANT, ...), written directly; every
    `versions_every`-th message also gets an older sibling off the branch."""
    room = uuid.UUID(room_id)
    parent = None
    rows = []
    now = datetime.now(UTC)
    for index in range(count):
        role = "user" if index % 2 == 0 else "assistant"
        if versions_every and index % versions_every == 0:
            rows.append(dict(id=new_id(), parent_id=parent, role=role, content="an older version"))
        rows.append(dict(id=new_id(), parent_id=parent, role=role, content=f"message {index}"))
        parent = rows[-1]["id"]
    table = Message.__table__  # type: ignore[attr-defined]
    await execute(
        live,
        table.insert(),
        *(
            {**row, "chatroom_id": room, "status": "complete", "created_at": now, "updated_at": now}
            for row in rows
        ),
    )
    rooms = sa.table("chatrooms", sa.column("id", sa.Uuid), sa.column("current_leaf_id", sa.Uuid))
    await execute(
        live,
        rooms.update().where(rooms.c.id == room).values(current_leaf_id=parent),
        {},
    )


async def events_live(events: Subscription, gql: GraphQLClient, token: str, room_id: str) -> None:
    """Until the subscription is live: a no-op rename, until its event arrives."""
    async with asyncio.timeout(10):
        while True:
            await mutate(gql, token, UPDATE, input={"id": room_id, "description": "probe"})
            try:
                event = await events.next(timeout=0.3)
            except TimeoutError:
                continue
            assert event["chatroomEvents"]["type"] == "CHATROOM_UPDATED"
            return


async def test_every_change_reaches_every_device_and_no_one_else(
    live: Live, worker, sms: RecordingSms, fake_gemini: tuple[FakeGemini, str], pg, store_redis
) -> None:
    fake, _ = fake_gemini
    user, room_id = await user_with_room(live.http, sms)
    other, other_room = await user_with_room(live.http, sms)
    gql, token = live.http, user.token
    async with (
        subscribe(live.ws_url, token, EVENTS) as laptop,
        subscribe(live.ws_url, token, EVENTS, {"room": room_id}) as one_room,
        subscribe(live.ws_url, other.token, EVENT_TYPES) as stranger,
    ):
        await events_live(laptop, gql, token, room_id)
        await one_room.next()  # the probe
        await events_live(stranger, gql, other.token, other_room)

        renamed = await mutate(gql, token, UPDATE, input={"id": room_id, "title": "Renamed"})
        event = (await laptop.next())["chatroomEvents"]
        assert event["type"] == "CHATROOM_UPDATED" and event["chatroom"]["title"] == "Renamed"
        assert renamed["chatroom"]["title"] == "Renamed"
        assert (await one_room.next())["chatroomEvents"]["type"] == "CHATROOM_UPDATED"

        sent = await send(gql, token, room_id, "from the laptop")
        added = [(await laptop.next())["chatroomEvents"] for _ in range(2)]
        assert [(e["type"], e["message"]["id"]) for e in added] == [
            ("MESSAGE_ADDED", sent["message"]["id"]),
            ("MESSAGE_ADDED", sent["reply"]["id"]),
        ]
        text = await finished(live, token, sent["reply"]["id"])
        done = (await laptop.next())["chatroomEvents"]
        assert done["type"] == "REPLY_FINISHED"
        assert done["message"] == {
            "id": sent["reply"]["id"],
            "role": "ASSISTANT",
            "status": "COMPLETE",
            "content": text,
        }
        await mutate(gql, token, SELECT, id=sent["message"]["id"])
        assert (await laptop.next())["chatroomEvents"]["type"] == "BRANCH_CHANGED"

        other_room_id = await create_room(gql, token, "Second")
        created = (await laptop.next())["chatroomEvents"]
        assert (created["type"], created["chatroomId"]) == ("CHATROOM_CREATED", other_room_id)

        deleted = await mutate(gql, token, DELETE, id=other_room_id)
        assert deleted == {"deletedId": other_room_id, "errors": []}
        gone = (await laptop.next())["chatroomEvents"]
        assert (gone["type"], gone["chatroom"]) == ("CHATROOM_DELETED", None)

        # The room subscription saw only its room's events (4 after the rename), in order.
        seen = [(await one_room.next())["chatroomEvents"]["type"] for _ in range(4)]
        assert seen == ["MESSAGE_ADDED", "MESSAGE_ADDED", "REPLY_FINISHED", "BRANCH_CHANGED"]
        # The other user saw nothing of it.
        try:
            leaked = await stranger.next(timeout=0.5)
        except TimeoutError:
            leaked = None
        assert leaked is None


async def test_a_foreign_room_cannot_be_watched(live: Live, sms: RecordingSms) -> None:
    user, _ = await user_with_room(live.http, sms)
    other, other_room = await user_with_room(live.http, sms)
    for room in (other_room, "nope", str(uuid.uuid4())):
        async with subscribe(live.ws_url, user.token, EVENTS, {"room": room}) as sub:
            message = await sub.first_message()
        assert message["type"] in ("next", "error"), message
        errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
        assert errors[0]["extensions"]["code"] == "NOT_FOUND", errors


async def test_deleting_a_room_stops_its_replies_and_leaves_nothing_behind(
    live: Live,
    worker,
    sms: RecordingSms,
    fake_gemini: tuple[FakeGemini, str],
    pg,
    store_redis,
    reply_channels: ReplyChannels,
) -> None:
    fake, _ = fake_gemini
    user, room_id = await user_with_room(live.http, sms)
    gql, token = live.http, user.token
    done = await send(gql, token, room_id, "finished one")
    await finished(live, token, done["reply"]["id"])
    fake.script(Script(chunks=[f"w{i} " for i in range(400)], delay=0.02))
    sent = await send(gql, token, room_id, "a long one")
    reply_id = sent["reply"]["id"]
    list_before = await gql("query { chatrooms { edges { node { id } } } }", token=token)
    assert room_id in str(list_before)

    async with subscribe(
        live.ws_url,
        token,
        "subscription($id: ID!) { messageStream(messageId: $id) { seq delta status } }",
        {"id": reply_id},
    ) as follower:
        received = [(await follower.next())["messageStream"] for _ in range(3)]
        assert await mutate(gql, token, DELETE, id=room_id) == {
            "deletedId": room_id,
            "errors": [],
        }
        while received[-1]["status"] == "STREAMING":
            received.append((await follower.next())["messageStream"])
        final = await follower.first_message()
    assert received[-1]["status"] == "STOPPED" and final["type"] == "complete"

    assert (
        await pg.fetchval(
            "SELECT count(*) FROM messages WHERE chatroom_id = $1", uuid.UUID(room_id)
        )
        == 0
    )
    assert (
        await pg.fetchval("SELECT count(*) FROM chatrooms WHERE id = $1", uuid.UUID(room_id)) == 0
    )
    body = await gql(BRANCH, {"id": room_id}, token=token)
    assert body["data"]["chatroom"] is None
    listed = await gql("query { chatrooms { edges { node { id } } } }", token=token)
    assert room_id not in str(listed)
    await asyncio.sleep(0.5)  # the worker has seen the stop by now
    for message_id in (done["reply"]["id"], reply_id):
        assert not await store_redis.exists(reply_channels.stream(uuid.UUID(message_id)))
    assert fake.requests[-1].hung_up  # Gemini is no longer read for it
    after = await stream(live.ws_url, token, reply_id)
    assert after.errors and after.errors[0]["extensions"]["code"] == "NOT_FOUND"


async def test_room_events_cost_no_database_read_unless_their_fields_are_asked_for(
    live: Live, sms: RecordingSms
) -> None:
    """Five devices watching: a rename costs the same statements as with nobody watching."""
    user, room_id = await user_with_room(live.http, sms)
    gql, token = live.http, user.token
    engine = live.app.state.services.resources.database.engine
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    async def rename(title: str) -> int:
        statements.clear()
        sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
        try:
            await mutate(gql, token, UPDATE, input={"id": room_id, "title": title})
            for device in devices:
                assert (await device.next())["chatroomEvents"]["type"] == "CHATROOM_UPDATED"
        finally:
            sa.event.remove(engine.sync_engine, "before_cursor_execute", count)
        return len(statements)

    devices: list[Subscription] = []
    alone = await rename("Nobody watching")
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(5):
            device = await stack.enter_async_context(subscribe(live.ws_url, token, EVENT_TYPES))
            await events_live(device, gql, token, room_id)
            devices.append(device)
        for device in devices:  # the other devices' probes
            with contextlib.suppress(TimeoutError):
                while True:
                    await device.next(timeout=0.3)
        watched = await rename("Five devices watching")
    assert watched == alone, statements
