"""v2 inputs and their bad paths: updateChatroom and deleteChatroom, the cached room list
around them, who may regenerate, edit, select or stop which message, and the daily quota
for regenerations and edits (also in parallel)."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from gemini_graphql.testing.fakes.gemini import Script
from tests.auth_flows import LoggedIn, error_codes, login
from tests.chat_harness import (
    Live,
    WsClient,
    create_room,
    running_worker,
    send,
    user_with_room,
)
from tests.conftest import GraphQLClient, RecordingSms

ROOM_FIELDS = "id title description systemInstruction createdAt updatedAt"
CREATE_ROOM = f"""
mutation($input: CreateChatroomInput!) {{
  createChatroom(input: $input) {{ chatroom {{ {ROOM_FIELDS} }} errors {{ code field message }} }}
}}"""
UPDATE_ROOM = f"""
mutation($input: UpdateChatroomInput!) {{
  updateChatroom(input: $input) {{ chatroom {{ {ROOM_FIELDS} }} errors {{ code field message }} }}
}}"""
DELETE_ROOM = """
mutation($input: DeleteChatroomInput!) {
  deleteChatroom(input: $input) { deletedId errors { code field message } }
}"""
ROOM = f"query($id: ID!) {{ chatroom(id: $id) {{ {ROOM_FIELDS} }} }}"
# Only fields the whole-response cache takes: this list is served from the caches.
ROOMS = "query($first: Int) { chatrooms(first: $first) { edges { node { id title } } } }"
USAGE = "{ me { usage { used limit remaining } } }"

MESSAGE_FIELDS = "id chatroomId role content status parentId version versionCount"
TURN_PAYLOAD = f"""{{
    message {{ {MESSAGE_FIELDS} }}
    reply {{ {MESSAGE_FIELDS} }}
    usage {{ used limit remaining }}
    errors {{ code field message }}
  }}"""
REGENERATE = f"""
mutation($input: RegenerateReplyInput!) {{ regenerateReply(input: $input) {TURN_PAYLOAD} }}"""
EDIT = f"""
mutation($input: EditMessageInput!) {{ editMessage(input: $input) {TURN_PAYLOAD} }}"""
SELECT_VERSION = """
mutation($input: SelectVersionInput!) {
  selectVersion(input: $input) { chatroom { id } errors { code field message } }
}"""
STOP = f"""
mutation($input: StopReplyInput!) {{
  stopReply(input: $input) {{ message {{ {MESSAGE_FIELDS} }} errors {{ code field message }} }}
}}"""

FINISHED = ("complete", "failed", "stopped")
MALFORMED_IDS = ["not-an-id", "", "12345", str(uuid.uuid4())]  # the last: nobody's


# --- helpers ---------------------------------------------------------------------------


async def mutate(
    gql: GraphQLClient, document: str, name: str, token: str | None, **input_: Any
) -> dict[str, Any]:
    """The mutation's payload; a top-level error fails the test."""
    body = await gql(document, {"input": input_}, token=token)
    assert not body.get("errors"), body
    return body["data"][name]


async def new_room(gql: GraphQLClient, token: str, **fields: Any) -> dict:
    """createChatroom with these fields; the created room."""
    payload = await mutate(gql, CREATE_ROOM, "createChatroom", token, **fields)
    assert payload["errors"] == [], payload
    return payload["chatroom"]


async def update_room(gql: GraphQLClient, token: str, room_id: str, **fields: Any) -> dict:
    return await mutate(gql, UPDATE_ROOM, "updateChatroom", token, id=room_id, **fields)


async def delete_room(gql: GraphQLClient, token: str, room_id: str) -> dict:
    return await mutate(gql, DELETE_ROOM, "deleteChatroom", token, id=room_id)


async def regenerate(gql: GraphQLClient, token: str, message_id: str) -> dict:
    return await mutate(gql, REGENERATE, "regenerateReply", token, messageId=message_id)


async def edit(gql: GraphQLClient, token: str, message_id: str, content: str) -> dict:
    return await mutate(gql, EDIT, "editMessage", token, messageId=message_id, content=content)


async def select_version(gql: GraphQLClient, token: str, message_id: str) -> dict:
    return await mutate(gql, SELECT_VERSION, "selectVersion", token, messageId=message_id)


async def stop(gql: GraphQLClient, token: str, message_id: str) -> dict:
    return await mutate(gql, STOP, "stopReply", token, messageId=message_id)


async def room_row(pg: asyncpg.Pool, room_id: str) -> dict[str, Any] | None:
    row = await pg.fetchrow("SELECT * FROM chatrooms WHERE id = $1", uuid.UUID(room_id))
    return dict(row) if row is not None else None


async def snapshot(pg: asyncpg.Pool) -> tuple[list[dict], list[dict], list[dict]]:
    """Every room, message and quota counter: for "nothing changed"."""
    rooms = await pg.fetch("SELECT * FROM chatrooms ORDER BY id")
    messages = await pg.fetch("SELECT * FROM messages ORDER BY id")
    quota = await pg.fetch(
        "SELECT id, daily_message_count, last_message_date FROM users ORDER BY id"
    )
    return [dict(r) for r in rooms], [dict(r) for r in messages], [dict(r) for r in quota]


async def used_today(gql: GraphQLClient, pg: asyncpg.Pool, user: LoggedIn) -> int:
    """The user's used quota, as the API shows it; the row must agree."""
    body = await gql(USAGE, token=user.token)
    used = body["data"]["me"]["usage"]["used"]
    stored = await pg.fetchval(
        "SELECT daily_message_count FROM users WHERE id = $1", uuid.UUID(user.user_id)
    )
    assert used == stored, (used, stored)
    return used


async def wait_finished(pg: asyncpg.Pool, *reply_ids: str, seconds: float = 15.0) -> None:
    ids = [uuid.UUID(reply_id) for reply_id in reply_ids]
    async with asyncio.timeout(seconds):
        while True:
            done = await pg.fetchval(
                "SELECT count(*) FROM messages WHERE id = ANY($1::uuid[]) AND status = ANY($2)",
                ids,
                list(FINISHED),
            )
            if done == len(ids):
                return
            await asyncio.sleep(0.02)


async def eventually(check: Callable[[], Awaitable[bool] | bool], seconds: float = 3.0) -> None:
    async with asyncio.timeout(seconds):
        while True:
            outcome = check()
            if await outcome if inspect.isawaitable(outcome) else outcome:
                return
            await asyncio.sleep(0.01)


def listed(body: dict) -> dict[str, str]:
    """Room id -> title, in the order the list gives."""
    return {
        edge["node"]["id"]: edge["node"]["title"] for edge in body["data"]["chatrooms"]["edges"]
    }


async def room_with_turn(gql: GraphQLClient, sms: RecordingSms) -> tuple[LoggedIn, str, dict]:
    """A user, their room and one sendMessage payload (its reply PENDING without a worker)."""
    user, room_id = await user_with_room(gql, sms)
    sent = await send(gql, user.token, room_id, "First question")
    assert sent["errors"] == [], sent
    return user, room_id, sent


def split(results: list[dict]) -> tuple[list[dict], list[dict]]:
    """Accepted payloads, refused payloads."""
    accepted = [payload for payload in results if not payload["errors"]]
    refused = [payload for payload in results if payload["errors"]]
    return accepted, refused


def refused_with(payload: dict, code: str, field: str | None) -> bool:
    return error_codes(payload) == [(code, field)]


# --- updateChatroom --------------------------------------------------------------------


async def test_rename_set_and_keep_fields(gql: GraphQLClient, sms: RecordingSms, pg) -> None:
    user, room_id = await user_with_room(gql, sms)

    renamed = await update_room(gql, user.token, room_id, title="  Trip plans  ")
    assert renamed["errors"] == []
    assert renamed["chatroom"]["title"] == "Trip plans"

    both = await update_room(
        gql, user.token, room_id, description=" Japan ", systemInstruction=" Be brief. "
    )
    assert both["errors"] == []
    room = both["chatroom"]
    assert (room["title"], room["description"], room["systemInstruction"]) == (
        "Trip plans",
        "Japan",
        "Be brief.",
    )

    # Omitted fields stay: only the title changes.
    only_title = await update_room(gql, user.token, room_id, title="Trip")
    room = only_title["chatroom"]
    assert (room["title"], room["description"], room["systemInstruction"]) == (
        "Trip",
        "Japan",
        "Be brief.",
    )
    row = await room_row(pg, room_id)
    assert row is not None
    assert (row["title"], row["description"], row["system_instruction"]) == (
        "Trip",
        "Japan",
        "Be brief.",
    )
    read = (await gql(ROOM, {"id": room_id}, token=user.token))["data"]["chatroom"]
    assert read == room


async def test_explicit_null_clears_description_and_instruction(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    user = await login(gql, sms)
    room = await new_room(
        gql, user.token, title="Room", description="about", systemInstruction="Answer in French."
    )
    room_id = room["id"]

    cleared = await update_room(gql, user.token, room_id, description=None)
    assert cleared["errors"] == []
    assert cleared["chatroom"]["description"] is None
    assert cleared["chatroom"]["systemInstruction"] == "Answer in French."  # omitted: stays

    cleared = await update_room(gql, user.token, room_id, systemInstruction=None)
    assert cleared["chatroom"]["systemInstruction"] is None
    assert cleared["chatroom"]["title"] == "Room"
    row = await room_row(pg, room_id)
    assert row is not None
    assert (row["title"], row["description"], row["system_instruction"]) == ("Room", None, None)


async def test_blank_description_and_instruction_are_stored_as_null(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    user = await login(gql, sms)
    room_id = (await new_room(gql, user.token, title="R", description="d", systemInstruction="s"))[
        "id"
    ]
    payload = await update_room(
        gql, user.token, room_id, description="  \n ", systemInstruction="\t"
    )
    assert payload["errors"] == []
    row = await room_row(pg, room_id)
    assert row is not None and row["description"] is None and row["system_instruction"] is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"title": None}, "title"),
        ({"title": ""}, "title"),
        ({"title": "   \t\n"}, "title"),
        ({"title": "t" * 256}, "title"),
        ({"title": "a\x00b"}, "title"),
        ({"description": "d" * 2001}, "description"),
        ({"description": "no\x00pe"}, "description"),
        ({"systemInstruction": "s" * 4001}, "systemInstruction"),
        ({"systemInstruction": "\x00"}, "systemInstruction"),
        # One bad field spoils the whole update: the good ones are not written either.
        ({"title": "Fine", "description": "d" * 2001}, "description"),
        ({"title": "Fine", "systemInstruction": "s" * 4001}, "systemInstruction"),
    ],
)
async def test_update_rejects_bad_input_and_changes_nothing(
    gql: GraphQLClient, sms: RecordingSms, pg, fields: dict, field: str
) -> None:
    user = await login(gql, sms)
    room = await new_room(
        gql, user.token, title="Original", description="desc", systemInstruction="instr"
    )
    room_id = room["id"]
    before = await room_row(pg, room_id)

    payload = await update_room(gql, user.token, room_id, **fields)
    assert refused_with(payload, "INVALID_INPUT", field), payload
    assert payload["chatroom"] is None
    assert await room_row(pg, room_id) == before


async def test_update_limits_are_inclusive(gql: GraphQLClient, sms: RecordingSms) -> None:
    user, room_id = await user_with_room(gql, sms)
    payload = await update_room(
        gql,
        user.token,
        room_id,
        title="t" * 255,
        description="d" * 2000,
        systemInstruction="s" * 4000,
    )
    assert payload["errors"] == []
    room = payload["chatroom"]
    assert [len(room[key]) for key in ("title", "description", "systemInstruction")] == [
        255,
        2000,
        4000,
    ]


async def test_a_successful_update_bumps_updated_at(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    user, room_id = await user_with_room(gql, sms)
    before = await room_row(pg, room_id)
    assert before is not None
    payload = await update_room(gql, user.token, room_id, systemInstruction="Be kind.")
    room = payload["chatroom"]
    assert room["updatedAt"] > room["createdAt"]
    after = await room_row(pg, room_id)
    assert after is not None
    assert after["updated_at"] > before["updated_at"]
    assert after["created_at"] == before["created_at"]


async def test_update_of_another_users_room_is_not_found(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    owner, room_id = await user_with_room(gql, sms)
    other = await login(gql, sms)
    before = await room_row(pg, room_id)
    for fields in ({"title": "Mine now"}, {"description": None}, {"systemInstruction": "x"}):
        payload = await update_room(gql, other.token, room_id, **fields)
        assert refused_with(payload, "NOT_FOUND", "id"), payload
        assert payload["chatroom"] is None
    assert await room_row(pg, room_id) == before


async def test_update_with_no_fields_changes_nothing(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    owner, room_id = await user_with_room(gql, sms)
    other = await login(gql, sms)
    before = await room_row(pg, room_id)
    payload = await update_room(gql, owner.token, room_id)
    assert payload["errors"] == [] and payload["chatroom"]["title"] == "Room"
    assert await room_row(pg, room_id) == before  # not even updatedAt
    refused = await update_room(gql, other.token, room_id)
    assert refused_with(refused, "NOT_FOUND", "id") and refused["chatroom"] is None


@pytest.mark.parametrize("room_id", MALFORMED_IDS)
async def test_update_of_a_malformed_or_unknown_id_is_not_found(
    gql: GraphQLClient, sms: RecordingSms, pg, room_id: str
) -> None:
    user, _ = await user_with_room(gql, sms)
    before = await snapshot(pg)
    payload = await update_room(gql, user.token, room_id, title="New")
    assert refused_with(payload, "NOT_FOUND", "id"), payload
    assert await snapshot(pg) == before


async def test_room_mutations_need_a_login(gql: GraphQLClient, sms: RecordingSms, pg) -> None:
    owner, room_id, sent = await room_with_turn(gql, sms)
    before = await snapshot(pg)
    for document, input_ in [
        (UPDATE_ROOM, {"id": room_id, "title": "x"}),
        (DELETE_ROOM, {"id": room_id}),
        (REGENERATE, {"messageId": sent["reply"]["id"]}),
        (EDIT, {"messageId": sent["message"]["id"], "content": "x"}),
        (SELECT_VERSION, {"messageId": sent["message"]["id"]}),
        (STOP, {"messageId": sent["reply"]["id"]}),
    ]:
        for token in (None, "not.a.jwt"):
            body = await gql(document, {"input": input_}, token=token)
            assert body["data"] is None, body
            assert [e["extensions"]["code"] for e in body["errors"]] == ["UNAUTHENTICATED"]
    assert await snapshot(pg) == before


async def test_create_with_a_system_instruction(gql: GraphQLClient, sms: RecordingSms, pg) -> None:
    user = await login(gql, sms)
    room = await new_room(
        gql, user.token, title="Tutor", systemInstruction="  You are a patient maths tutor.  "
    )
    assert room["systemInstruction"] == "You are a patient maths tutor."
    row = await room_row(pg, room["id"])
    assert row is not None and row["system_instruction"] == "You are a patient maths tutor."
    read = (await gql(ROOM, {"id": room["id"]}, token=user.token))["data"]["chatroom"]
    assert read["systemInstruction"] == "You are a patient maths tutor."

    exact = await new_room(gql, user.token, title="Max", systemInstruction=" " + "s" * 4000 + " ")
    assert exact["systemInstruction"] == "s" * 4000


@pytest.mark.parametrize("instruction", ["s" * 4001, "bad\x00instruction"])
async def test_create_refuses_a_bad_system_instruction(
    gql: GraphQLClient, sms: RecordingSms, pg, instruction: str
) -> None:
    user = await login(gql, sms)
    payload = await mutate(
        gql, CREATE_ROOM, "createChatroom", user.token, title="T", systemInstruction=instruction
    )
    assert refused_with(payload, "INVALID_INPUT", "systemInstruction"), payload
    assert payload["chatroom"] is None
    assert await pg.fetchval("SELECT count(*) FROM chatrooms") == 0


# --- deleteChatroom --------------------------------------------------------------------


async def test_delete_removes_the_room_and_its_messages_only(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    user, room_id, _ = await room_with_turn(gql, sms)
    assert (await send(gql, user.token, room_id, "Second"))["errors"] == []
    kept_room = await create_room(gql, user.token, "Kept")
    assert (await send(gql, user.token, kept_room, "Stay"))["errors"] == []
    assert list(listed(await gql(ROOMS, {}, token=user.token))) == [kept_room, room_id]

    payload = await delete_room(gql, user.token, room_id)
    assert payload == {"deletedId": room_id, "errors": []}

    assert await room_row(pg, room_id) is None
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM messages WHERE chatroom_id = $1", uuid.UUID(room_id)
        )
        == 0
    )
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM messages WHERE chatroom_id = $1", uuid.UUID(kept_room)
        )
        == 2
    )
    assert (await gql(ROOM, {"id": room_id}, token=user.token))["data"]["chatroom"] is None
    assert list(listed(await gql(ROOMS, {}, token=user.token))) == [kept_room]
    assert list(listed(await gql(ROOMS, {"first": 1}, token=user.token))) == [kept_room]

    again = await delete_room(gql, user.token, room_id)
    assert refused_with(again, "NOT_FOUND", "id") and again["deletedId"] is None


async def test_messages_of_a_deleted_room_are_not_found(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    user, room_id, sent = await room_with_turn(gql, sms)
    assert (await delete_room(gql, user.token, room_id))["errors"] == []
    question, reply = sent["message"]["id"], sent["reply"]["id"]
    before = await snapshot(pg)
    for payload in [
        await edit(gql, user.token, question, "Changed my mind"),
        await regenerate(gql, user.token, reply),
        await select_version(gql, user.token, question),
        await select_version(gql, user.token, reply),
        await stop(gql, user.token, reply),
    ]:
        assert refused_with(payload, "NOT_FOUND", "messageId"), payload
    assert await snapshot(pg) == before


async def test_delete_of_another_users_room_is_not_found(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    owner, room_id, _ = await room_with_turn(gql, sms)
    other = await login(gql, sms)
    before = await snapshot(pg)
    payload = await delete_room(gql, other.token, room_id)
    assert refused_with(payload, "NOT_FOUND", "id") and payload["deletedId"] is None
    assert await snapshot(pg) == before
    assert (await gql(ROOM, {"id": room_id}, token=owner.token))["data"]["chatroom"][
        "id"
    ] == room_id


@pytest.mark.parametrize("room_id", MALFORMED_IDS)
async def test_delete_of_a_malformed_or_unknown_id_is_not_found(
    gql: GraphQLClient, sms: RecordingSms, pg, room_id: str
) -> None:
    user, _, _ = await room_with_turn(gql, sms)
    before = await snapshot(pg)
    payload = await delete_room(gql, user.token, room_id)
    assert refused_with(payload, "NOT_FOUND", "id") and payload["deletedId"] is None
    assert await snapshot(pg) == before


async def test_deleting_a_room_gives_no_quota_back(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    user, room_id, _ = await room_with_turn(gql, sms)
    assert (await send(gql, user.token, room_id, "again"))["errors"] == []
    assert await used_today(gql, pg, user) == 2
    assert (await delete_room(gql, user.token, room_id))["errors"] == []
    assert await used_today(gql, pg, user) == 2
    # Three more fit (5 a day), then the limit holds as if the room still existed.
    new_room = await create_room(gql, user.token)
    for _ in range(3):
        assert (await send(gql, user.token, new_room))["errors"] == []
    assert refused_with(await send(gql, user.token, new_room), "DAILY_LIMIT_REACHED", None)


async def test_a_queued_reply_of_a_deleted_room_never_reaches_gemini(
    gql: GraphQLClient, sms: RecordingSms, pg, redis_client, chat_settings, clock, fake_gemini
) -> None:
    fake, _ = fake_gemini
    user, room_id, sent = await room_with_turn(gql, sms)  # no worker yet: the job waits
    assert (await delete_room(gql, user.token, room_id))["errors"] == []
    async with running_worker(chat_settings, clock):

        async def queue_drained() -> bool:
            return await redis_client.zcard(chat_settings.redis_names.arq_queue) == 0

        await eventually(queue_drained, seconds=10)
        await asyncio.sleep(0.2)  # a job picked up late would have called Gemini by now
    assert fake.requests == []
    assert await pg.fetchval("SELECT count(*) FROM messages") == 0
    assert await pg.fetchval("SELECT count(*) FROM chatrooms") == 0


async def test_delete_racing_regenerations_and_edits(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    """Each racing turn is either done before the room goes (and deleted with it) or refused
    NOT_FOUND; the quota counts only the ones done. (Which field the refusal names: see the
    deterministic test below.)"""
    user, room_id, sent = await room_with_turn(gql, sms)
    question, reply = sent["message"]["id"], sent["reply"]["id"]
    await pg.execute("UPDATE messages SET status = 'complete' WHERE id = $1", uuid.UUID(reply))
    turns = [
        regenerate(gql, user.token, reply) if i % 2 else edit(gql, user.token, question, f"e{i}")
        for i in range(8)
    ]
    *results, deleted = await asyncio.gather(*turns, delete_room(gql, user.token, room_id))
    assert deleted["errors"] == []
    accepted, refused = split(results)
    assert all(error_codes(p)[0][0] == "NOT_FOUND" for p in refused), refused
    assert await pg.fetchval("SELECT count(*) FROM messages") == 0
    assert await pg.fetchval("SELECT count(*) FROM chatrooms") == 0
    assert await used_today(gql, pg, user) == 1 + len(accepted)


async def waiting_on_a_lock(pg: asyncpg.Pool) -> bool:
    """Whether some other session waits for a row lock (our turn, behind our transaction)."""
    waiting = await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    return waiting > 0


@pytest.mark.parametrize("mutation", ["regenerateReply", "editMessage"])
async def test_a_turn_whose_room_is_deleted_under_it_is_not_found_on_message_id(
    gql: GraphQLClient, sms: RecordingSms, pg, mutation: str
) -> None:
    """The room goes after the turn found the message but before it is written: the turn
    is refused NOT_FOUND on its own input field, messageId (these inputs have no
    chatroomId), and uses no quota."""
    user, room_id, sent = await room_with_turn(gql, sms)
    question, reply = sent["message"]["id"], sent["reply"]["id"]
    await pg.execute("UPDATE messages SET status = 'complete' WHERE id = $1", uuid.UUID(reply))
    async with pg.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute(
            "SELECT 1 FROM chatrooms WHERE id = $1 FOR UPDATE", uuid.UUID(room_id)
        )
        turn = asyncio.create_task(
            regenerate(gql, user.token, reply)
            if mutation == "regenerateReply"
            else edit(gql, user.token, question, "Reworded")
        )
        await eventually(lambda: waiting_on_a_lock(pg), seconds=5)
        await connection.execute("DELETE FROM chatrooms WHERE id = $1", uuid.UUID(room_id))
        await transaction.commit()
    payload = await turn
    assert payload["reply"] is None and payload["usage"] is None
    assert await used_today(gql, pg, user) == 1
    assert error_codes(payload) == [("NOT_FOUND", "messageId")], payload


async def test_deleting_a_room_stops_its_streaming_reply(
    live: Live, worker, sms: RecordingSms, pg, fake_gemini
) -> None:
    fake, _ = fake_gemini
    fake.script(Script(chunks=[f"w{i} " for i in range(200)], delay=0.02))
    user, room_id, sent = await room_with_turn(live.http, sms)
    reply = sent["reply"]["id"]

    async def streaming() -> bool:
        status = await pg.fetchval("SELECT status FROM messages WHERE id = $1", uuid.UUID(reply))
        return status == "streaming" and fake.requests and fake.requests[0].chunks_sent > 2

    await eventually(streaming, seconds=10)
    async with WsClient.connect(live.ws_url, user.token) as client:
        op_id = await client.start(reply)
        await client.collect(op_id, limit=1)
        assert (await delete_room(live.http, user.token, room_id))["errors"] == []
        result = await client.collect(op_id, timeout=10)
    assert result.events and result.events[-1]["status"] == "STOPPED", result
    await eventually(lambda: fake.requests[0].hung_up, seconds=5)
    await asyncio.sleep(0.2)  # the worker's last writes, had it any, would be in by now
    assert await pg.fetchval("SELECT count(*) FROM messages") == 0
    assert await pg.fetchval("SELECT count(*) FROM chatrooms") == 0
    assert len(fake.requests) == 1  # not retried
    assert await used_today(live.http, pg, user) == 1


# --- the cached room list around renames and deletions ---------------------------------


async def test_cached_list_never_shows_an_old_title_after_a_rename(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    rooms = [await create_room(gql, user.token, f"room {i}") for i in range(4)]
    titles = {room_id: f"room {i}" for i, room_id in enumerate(rooms)}
    assert listed(await gql(ROOMS, {}, token=user.token)) == dict(reversed(titles.items()))
    for round_ in range(8):
        target = rooms[round_ % len(rooms)]
        old, new = titles[target], f"renamed {round_}"
        reads = [gql(ROOMS, {"first": 10 if i % 2 else None}, token=user.token) for i in range(6)]
        renamed, *racing = await asyncio.gather(
            update_room(gql, user.token, target, title=new), *reads
        )
        assert renamed["errors"] == [] and renamed["chatroom"]["title"] == new
        for body in racing:  # a read racing the rename sees one title or the other
            assert listed(body)[target] in (old, new)
        titles[target] = new
        for first in (None, 10, 1):
            after = listed(await gql(ROOMS, {"first": first}, token=user.token))
            assert next(iter(after)) == target  # renamed: most recently updated
            assert all(titles[room_id] == title for room_id, title in after.items()), after


async def test_cached_list_never_shows_a_deleted_room(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    rooms = [await create_room(gql, user.token, f"room {i}") for i in range(6)]
    remaining = list(reversed(rooms))
    assert list(listed(await gql(ROOMS, {}, token=user.token))) == remaining
    for target in [rooms[2], rooms[5], rooms[0], rooms[4], rooms[1]]:
        reads = [gql(ROOMS, {"first": 10 if i % 2 else None}, token=user.token) for i in range(6)]
        deleted, *racing = await asyncio.gather(delete_room(gql, user.token, target), *reads)
        assert deleted["errors"] == []
        for body in racing:  # a racing read may still list it, nothing else differs
            assert [r for r in listed(body) if r != target] == [r for r in remaining if r != target]
        remaining.remove(target)
        for first in (None, 10, 1):
            after = list(listed(await gql(ROOMS, {"first": first}, token=user.token)))
            assert after == remaining[: first or 20]


async def test_the_list_shows_new_descriptions_and_instructions(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    room = await new_room(gql, user.token, title="R", description="old", systemInstruction="old")
    document = "{ chatrooms { edges { node { id description systemInstruction } } } }"

    async def shown() -> tuple[str | None, str | None]:
        [edge] = (await gql(document, token=user.token))["data"]["chatrooms"]["edges"]
        return edge["node"]["description"], edge["node"]["systemInstruction"]

    assert await shown() == ("old", "old")  # now cached
    await update_room(gql, user.token, room["id"], description="new", systemInstruction="new")
    assert await shown() == ("new", "new")
    await update_room(gql, user.token, room["id"], description=None)
    assert await shown() == (None, "new")
    await update_room(gql, user.token, room["id"], systemInstruction=None)
    assert await shown() == (None, None)


def room_list_copy(client: httpx.AsyncClient, user: LoggedIn) -> list | None:
    """The app process's own copy of the user's room list (see infra.user_cache)."""
    users = client._transport.app.state.resources.users  # type: ignore[attr-defined]
    return users.rooms(uuid.UUID(user.user_id))


async def test_another_process_drops_its_copy_after_a_rename_or_delete(
    make_client: Callable[..., Awaitable[httpx.AsyncClient]], sms: RecordingSms
) -> None:
    a, b = GraphQLClient(await make_client()), GraphQLClient(await make_client())
    user = await login(a, sms)
    renamed_room = await create_room(a, user.token, "before")
    deleted_room = await create_room(a, user.token, "doomed")

    def b_shows(expected: dict[str, str]) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return listed(await b(ROOMS, {}, token=user.token)) == expected

        return check

    async def b_keeps_a_copy() -> bool:
        await b(ROOMS, {}, token=user.token)
        return room_list_copy(b.http, user) is not None

    await eventually(b_keeps_a_copy)  # so the change below has a copy to make stale
    assert (await update_room(a, user.token, renamed_room, title="after"))["errors"] == []
    await eventually(b_shows({renamed_room: "after", deleted_room: "doomed"}))
    await eventually(b_keeps_a_copy)
    assert (await delete_room(a, user.token, deleted_room))["errors"] == []
    await eventually(b_shows({renamed_room: "after"}))
    for _ in range(5):  # and it stays that way
        assert await b_shows({renamed_room: "after"})()


# --- regenerateReply / editMessage / selectVersion / stopReply: ownership and role -------


async def test_another_users_messages_are_not_found(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    owner, _, sent = await room_with_turn(gql, sms)
    other, other_room = await user_with_room(gql, sms)
    question, reply = sent["message"]["id"], sent["reply"]["id"]
    # The reply finished, so regenerating it would be allowed for its owner.
    await pg.execute(
        "UPDATE messages SET status = 'complete', content = 'Done' WHERE id = $1",
        uuid.UUID(reply),
    )
    before = await snapshot(pg)
    for payload in [
        await regenerate(gql, other.token, reply),
        await regenerate(gql, other.token, question),
        await edit(gql, other.token, question, "Hijacked"),
        await edit(gql, other.token, reply, "Hijacked"),
        await select_version(gql, other.token, question),
        await select_version(gql, other.token, reply),
        await stop(gql, other.token, reply),
    ]:
        assert refused_with(payload, "NOT_FOUND", "messageId"), payload
        assert payload.get("message") is None and payload.get("reply") is None
    assert await snapshot(pg) == before
    assert await used_today(gql, pg, other) == 0


async def test_another_users_pending_reply_cannot_be_stopped(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    owner, _, sent = await room_with_turn(gql, sms)
    other = await login(gql, sms)
    before = await snapshot(pg)
    payload = await stop(gql, other.token, sent["reply"]["id"])
    assert refused_with(payload, "NOT_FOUND", "messageId") and payload["message"] is None
    assert await snapshot(pg) == before
    status = await pg.fetchval(
        "SELECT status FROM messages WHERE id = $1", uuid.UUID(sent["reply"]["id"])
    )
    assert status == "pending"


@pytest.mark.parametrize("message_id", MALFORMED_IDS)
async def test_malformed_or_unknown_message_ids_are_not_found(
    gql: GraphQLClient, sms: RecordingSms, pg, message_id: str
) -> None:
    user, _, _ = await room_with_turn(gql, sms)
    before = await snapshot(pg)
    for payload in [
        await regenerate(gql, user.token, message_id),
        await edit(gql, user.token, message_id, "New content"),
        await select_version(gql, user.token, message_id),
        await stop(gql, user.token, message_id),
    ]:
        assert refused_with(payload, "NOT_FOUND", "messageId"), payload
    assert await snapshot(pg) == before


async def test_wrong_roles_are_invalid_input(gql: GraphQLClient, sms: RecordingSms, pg) -> None:
    user, _, sent = await room_with_turn(gql, sms)
    question, reply = sent["message"]["id"], sent["reply"]["id"]
    await pg.execute("UPDATE messages SET status = 'complete' WHERE id = $1", uuid.UUID(reply))
    before = await snapshot(pg)
    for payload in [
        await regenerate(gql, user.token, question),  # a USER message
        await edit(gql, user.token, reply, "Rewrite the answer"),  # an ASSISTANT message
        await stop(gql, user.token, question),  # a USER message
    ]:
        assert refused_with(payload, "INVALID_INPUT", "messageId"), payload
        assert payload.get("message") is None and payload.get("reply") is None
    assert await snapshot(pg) == before
    assert await used_today(gql, pg, user) == 1


@pytest.mark.parametrize("content", ["", "   \n\t", "x" * 10_001, "a\x00b", "\x00"])
async def test_edit_with_bad_content_writes_nothing_and_uses_no_quota(
    gql: GraphQLClient, sms: RecordingSms, pg, content: str
) -> None:
    user, _, sent = await room_with_turn(gql, sms)
    before = await snapshot(pg)
    payload = await edit(gql, user.token, sent["message"]["id"], content)
    assert refused_with(payload, "INVALID_INPUT", "content"), payload
    assert payload["message"] is payload["reply"] is payload["usage"] is None
    assert await snapshot(pg) == before
    assert await used_today(gql, pg, user) == 1


async def test_edit_content_of_exactly_the_limit_is_accepted(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    user, _, sent = await room_with_turn(gql, sms)
    payload = await edit(gql, user.token, sent["message"]["id"], "  " + "z" * 10_000 + "  ")
    assert payload["errors"] == [] and len(payload["message"]["content"]) == 10_000


async def test_editing_a_later_message_branches_from_its_parent(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    user, room_id, first = await room_with_turn(gql, sms)
    second = await send(gql, user.token, room_id, "Second question")
    edited = await edit(gql, user.token, second["message"]["id"], "Second, rephrased")
    assert edited["errors"] == []
    message = edited["message"]
    assert (message["role"], message["content"], message["parentId"]) == (
        "USER",
        "Second, rephrased",
        first["reply"]["id"],
    )
    assert (message["version"], message["versionCount"]) == (2, 2)
    leaf = await pg.fetchval(
        "SELECT current_leaf_id FROM chatrooms WHERE id = $1", uuid.UUID(room_id)
    )
    assert str(leaf) == edited["reply"]["id"]
    # The original stays, untouched.
    original = await pg.fetchrow(
        "SELECT content, parent_id FROM messages WHERE id = $1",
        uuid.UUID(second["message"]["id"]),
    )
    assert tuple(original) == ("Second question", uuid.UUID(first["reply"]["id"]))


@pytest.mark.parametrize("status", ["pending", "streaming"])
async def test_regenerating_a_reply_in_progress_is_refused(
    gql: GraphQLClient, sms: RecordingSms, pg, status: str
) -> None:
    user, _, sent = await room_with_turn(gql, sms)  # no worker: the reply stays PENDING
    reply = sent["reply"]["id"]
    if status != "pending":
        await pg.execute("UPDATE messages SET status = $1 WHERE id = $2", status, uuid.UUID(reply))
    before = await snapshot(pg)
    payload = await regenerate(gql, user.token, reply)
    assert refused_with(payload, "REPLY_IN_PROGRESS", "messageId"), payload
    assert payload["message"] is payload["reply"] is payload["usage"] is None
    assert await snapshot(pg) == before
    assert await used_today(gql, pg, user) == 1


async def test_a_stopped_reply_can_be_regenerated(
    gql: GraphQLClient, sms: RecordingSms, pg
) -> None:
    user, room_id, sent = await room_with_turn(gql, sms)
    question, reply = sent["message"]["id"], sent["reply"]["id"]
    stopped = await stop(gql, user.token, reply)
    assert stopped["errors"] == [] and stopped["message"]["status"] == "STOPPED"
    payload = await regenerate(gql, user.token, reply)
    assert payload["errors"] == []
    assert payload["message"]["id"] == question
    new = payload["reply"]
    assert (new["role"], new["status"], new["parentId"]) == ("ASSISTANT", "PENDING", question)
    assert (new["version"], new["versionCount"]) == (2, 2)
    assert payload["usage"]["used"] == 2
    leaf = await pg.fetchval(
        "SELECT current_leaf_id FROM chatrooms WHERE id = $1", uuid.UUID(room_id)
    )
    assert str(leaf) == new["id"]

    # selectVersion back to the first answer: its branch is current again.
    selected = await select_version(gql, user.token, reply)
    assert selected == {"chatroom": {"id": room_id}, "errors": []}
    leaf = await pg.fetchval(
        "SELECT current_leaf_id FROM chatrooms WHERE id = $1", uuid.UUID(room_id)
    )
    assert str(leaf) == reply


# --- the quota for regenerations and edits ---------------------------------------------


async def finished_turn(live: Live, pg, sms: RecordingSms) -> tuple[LoggedIn, str, dict]:
    """A user whose first message (1 of 5 used) has its reply COMPLETE."""
    user, room_id, sent = await room_with_turn(live.http, sms)
    await wait_finished(pg, sent["reply"]["id"])
    return user, room_id, sent


async def test_regenerate_and_edit_each_count_one_message(
    live: Live, worker, sms: RecordingSms, pg
) -> None:
    user, _, sent = await finished_turn(live, pg, sms)
    question, reply = sent["message"]["id"], sent["reply"]["id"]
    assert await used_today(live.http, pg, user) == 1

    again = await regenerate(live.http, user.token, reply)
    assert again["errors"] == [] and again["usage"]["used"] == 2
    assert await used_today(live.http, pg, user) == 2
    await wait_finished(pg, again["reply"]["id"])

    edited = await edit(live.http, user.token, question, "Second thoughts")
    assert edited["errors"] == [] and edited["usage"]["used"] == 3
    assert edited["message"]["parentId"] is None  # a version of the room's first message
    assert (edited["message"]["version"], edited["message"]["versionCount"]) == (2, 2)
    assert edited["reply"]["parentId"] == edited["message"]["id"]
    assert await used_today(live.http, pg, user) == 3
    await wait_finished(pg, edited["reply"]["id"])

    statuses = await pg.fetch("SELECT role, status FROM messages ORDER BY id")
    assert [tuple(row) for row in statuses] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "complete"),
    ]


async def assert_limit_held(
    live: Live, pg, user: LoggedIn, results: list[dict], accepted_count: int
) -> list[dict]:
    accepted, refused = split(results)
    assert len(accepted) == accepted_count, [p["errors"] for p in refused][:3]
    assert len(refused) == len(results) - accepted_count
    assert all(refused_with(p, "DAILY_LIMIT_REACHED", None) for p in refused), refused[:3]
    assert all("Pro" in p["errors"][0]["message"] for p in refused)
    assert all(p["reply"] is None and p["usage"] is None for p in refused)
    assert sorted(p["usage"]["used"] for p in accepted) == list(range(6 - accepted_count, 6))
    assert await used_today(live.http, pg, user) == 5
    await wait_finished(pg, *(p["reply"]["id"] for p in accepted))
    return accepted


async def test_twenty_parallel_regenerations_against_four_left(
    live: Live, worker, sms: RecordingSms, pg
) -> None:
    user, _, sent = await finished_turn(live, pg, sms)
    question, reply = sent["message"]["id"], sent["reply"]["id"]
    results = await asyncio.gather(*(regenerate(live.http, user.token, reply) for _ in range(20)))
    accepted = await assert_limit_held(live, pg, user, results, 4)
    assert all(p["message"]["id"] == question for p in accepted)
    answers = await pg.fetch(
        "SELECT id FROM messages WHERE role = 'assistant' AND parent_id = $1", uuid.UUID(question)
    )
    assert len(answers) == 5  # the first answer and exactly four new versions
    assert await pg.fetchval("SELECT count(*) FROM messages") == 6


async def test_twenty_parallel_edits_against_four_left(
    live: Live, worker, sms: RecordingSms, pg
) -> None:
    user, _, sent = await finished_turn(live, pg, sms)
    question = sent["message"]["id"]
    results = await asyncio.gather(
        *(edit(live.http, user.token, question, f"Version {i}") for i in range(20))
    )
    accepted = await assert_limit_held(live, pg, user, results, 4)
    users = await pg.fetch(
        "SELECT id, content, parent_id FROM messages WHERE role = 'user' ORDER BY id"
    )
    assert len(users) == 5 and all(row["parent_id"] is None for row in users)
    assert sorted(row["content"] for row in users[1:]) == sorted(
        p["message"]["content"] for p in accepted
    )
    assistants = await pg.fetchval("SELECT count(*) FROM messages WHERE role = 'assistant'")
    assert assistants == 5  # the first reply and exactly four new ones


async def test_twenty_parallel_sends_edits_and_regenerations_share_the_quota(
    live: Live, worker, sms: RecordingSms, pg
) -> None:
    user, room_id, sent = await finished_turn(live, pg, sms)
    question, reply = sent["message"]["id"], sent["reply"]["id"]

    def turn(i: int) -> Awaitable[dict]:
        """A send, an edit or a regeneration, by turns."""
        if i % 3 == 0:
            return send(live.http, user.token, room_id, f"send {i}")
        if i % 3 == 1:
            return edit(live.http, user.token, question, f"edit {i}")
        return regenerate(live.http, user.token, reply)

    actions = [turn(i) for i in range(20)]
    results = await asyncio.gather(*actions)
    accepted = await assert_limit_held(live, pg, user, results, 4)
    new_rows = sum(1 if p["message"]["id"] == question else 2 for p in accepted)
    assert await pg.fetchval("SELECT count(*) FROM messages") == 2 + new_rows
    assert await pg.fetchval("SELECT count(*) FROM messages WHERE role = 'assistant'") == 5
