"""Flat subscription selections, rendered without graphql-core, and their live events written
at once: the same answers as through graphql-core."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from graphql import parse
from graphql.utilities import get_operation_ast

from gemini_graphql.api.schema import build_schema
from gemini_graphql.api.transport.events import FlatEvents
from gemini_graphql.api.transport.strawberry_seams import graphql_schema
from gemini_graphql.infra.relay import Mailbox
from gemini_graphql.testing.fakes.gemini import Script
from tests.chat_harness import Live, WsClient, send, user_with_room
from tests.conftest import RecordingSms
from tests.test_metrics import moved, scrape
from tests.test_streaming import finished_reply

SCHEMA = graphql_schema(build_schema())


def plan(document: str) -> FlatEvents | None:
    operation = get_operation_ast(parse(document))
    assert operation is not None
    return FlatEvents.of(SCHEMA, operation)


@pytest.mark.parametrize(
    ("document", "flat"),
    [
        ('subscription { messageStream(messageId: "x") { seq delta } }', True),
        (
            'subscription { s: messageStream(messageId: "x", after: 2) { n: seq delta status messageId __typename } }',
            True,
        ),
        ('subscription { messageStream(messageId: "x") { seq message { id } } }', False),
        (
            'subscription { messageStream(messageId: "x") { ...E } } fragment E on ReplyEvent { seq }',
            False,
        ),
        ('subscription { messageStream(messageId: "x") { ... on ReplyEvent { seq } } }', False),
        (
            'subscription($s: Boolean!) { messageStream(messageId: "x") { seq @include(if: $s) } }',
            False,
        ),
        ('subscription { messageStream(messageId: "x") @skip(if: false) { seq } }', False),
        ("{ me { id } }", False),
    ],
)
def test_which_selections_are_flat(document: str, flat: bool) -> None:
    assert (plan(document) is not None) is flat


FLAT = """subscription($id: ID!) {
  stream: messageStream(messageId: $id) { n: seq delta status messageId kind: __typename }
}"""
GENERAL = """subscription($id: ID!) {
  stream: messageStream(messageId: $id) { n: seq delta status messageId kind: __typename message { id } }
}"""


async def frames(client: WsClient, document: str, reply_id: str, op_id: str) -> list[str]:
    """The raw text of every message of one subscription, up to its `complete`."""
    await client.socket.send(
        json.dumps(
            {
                "id": op_id,
                "type": "subscribe",
                "payload": {"query": document, "variables": {"id": reply_id}},
            }
        )
    )
    texts = []
    while True:
        text = await asyncio.wait_for(client.socket.recv(), 10)
        assert isinstance(text, str)
        if json.loads(text)["type"] == "complete":
            return texts
        texts.append(text)


async def collect(
    client: WsClient, document: str, reply_id: str, op_id: str
) -> list[dict[str, Any]]:
    events = []
    for text in await frames(client, document, reply_id, op_id):
        message = json.loads(text)
        assert message["type"] == "next" and "errors" not in message["payload"], message
        events.append(message["payload"]["data"]["stream"])
    return events


async def test_flat_and_general_paths_answer_alike(
    live: Live, worker, sms: RecordingSms, fake_gemini, pg
) -> None:
    token, reply_id = await finished_reply(live, sms, fake_gemini[0], pg)
    async with WsClient.connect(live.ws_url, token) as client:
        flat = await collect(client, FLAT, reply_id, "flat")
        general = await collect(client, GENERAL, reply_id, "general")
    assert [event["n"] for event in flat] == [1, 2, 3, 4, 5, 6]
    assert flat == [
        {key: value for key, value in event.items() if key != "message"} for event in general
    ]
    assert {event["kind"] for event in flat} == {"ReplyEvent"}
    assert flat[-1]["status"] == "COMPLETE" and flat[0]["status"] == "STREAMING"
    assert general[-1]["message"]["id"] == reply_id


async def test_live_events_written_at_once_match_the_general_path(
    live: Live, worker, sms: RecordingSms, fake_gemini
) -> None:
    """Two devices follow a reply with a flat selection while it streams: its live events
    are written as they arrive by the relay's delivery, without waking the subscriptions'
    tasks (the direct counter moves), every one once and in order, the same bytes on both
    sockets, and the same events a third device gets through graphql-core."""
    fake, _ = fake_gemini
    chunks = [f"w{i} " for i in range(12)]
    fake.script(Script(chunks=chunks, delay=0.05))
    user, room_id = await user_with_room(live.http, sms)
    before = await scrape(live.http.http)
    reply_id = (await send(live.http, user.token, room_id))["reply"]["id"]
    async with (
        WsClient.connect(live.ws_url, user.token) as one,
        WsClient.connect(live.ws_url, user.token) as two,
        WsClient.connect(live.ws_url, user.token) as three,
    ):
        first, second, general = await asyncio.gather(
            frames(one, FLAT, reply_id, "1"),
            frames(two, FLAT, reply_id, "1"),
            frames(three, GENERAL, reply_id, "1"),
        )
    after = await scrape(live.http.http)
    assert first == second  # byte for byte
    events = [json.loads(text)["payload"]["data"]["stream"] for text in first]
    assert [event["n"] for event in events] == list(range(1, len(chunks) + 2))
    assert "".join(event["delta"] for event in events) == "".join(chunks)
    assert events == [
        {key: value for key, value in json.loads(text)["payload"]["data"]["stream"].items()
         if key != "message"}
        for text in general
    ]  # fmt: skip
    direct = moved(before, after, "gemini_graphql_subscription_events_direct_total")
    # Both flat subscriptions were live for most of the reply; never the final event, and
    # never the general path's.
    assert 2 * (len(chunks) // 2) <= direct <= 2 * len(chunks)
    written = moved(
        before, after, "gemini_graphql_subscription_events_total", field="messageStream"
    )
    assert written == 3 * len(events)


async def test_a_declined_or_broken_direct_delivery_leaves_messages_to_the_reader() -> None:
    """Mailbox.direct takes a message only while the reader waits with nothing queued; what
    it declines, what arrives while the reader is busy, and everything after it raised, goes
    to the reader, in order."""
    mailbox = Mailbox(0.0)
    taken: list[bytes] = []

    def direct(data: bytes) -> bool:
        if data == b"boom":
            raise RuntimeError("a bug")
        if data.startswith(b"no"):
            return False
        taken.append(data)
        return True

    mailbox.direct = direct
    mailbox.put(b"queued", 0.0)  # nobody waits yet: queued
    assert await mailbox.get() == b"queued"
    reader = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)  # the reader waits
    mailbox.put(b"a", 0.0)
    mailbox.put(b"b", 0.0)
    assert taken == [b"a", b"b"] and not reader.done()
    mailbox.put(b"no thanks", 0.0)  # declined: the reader gets it
    mailbox.put(b"c", 0.0)  # the reader is woken but has not run: queued behind it
    assert await reader == b"no thanks"
    assert await mailbox.get() == b"c" and taken == [b"a", b"b"]
    reader = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    mailbox.put(b"boom", 0.0)
    assert await reader == b"boom" and mailbox.direct is None
    reader = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    mailbox.put(b"d", 0.0)  # direct delivery is off for good
    assert await reader == b"d" and taken == [b"a", b"b"]
