"""Flat subscription selections, rendered without graphql-core: the same answers as with it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from graphql import parse
from graphql.utilities import get_operation_ast

from gemini_graphql.api.schema import build_schema
from gemini_graphql.api.transport.events import FlatEvents
from gemini_graphql.api.transport.strawberry_seams import graphql_schema
from tests.chat_harness import Live, WsClient
from tests.conftest import RecordingSms
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


async def collect(
    client: WsClient, document: str, reply_id: str, op_id: str
) -> list[dict[str, Any]]:
    await client.socket.send(
        json.dumps(
            {
                "id": op_id,
                "type": "subscribe",
                "payload": {"query": document, "variables": {"id": reply_id}},
            }
        )
    )
    events = []
    while True:
        message = json.loads(await client.socket.recv())
        if message["type"] == "complete":
            return events
        assert message["type"] == "next" and "errors" not in message["payload"], message
        events.append(message["payload"]["data"]["stream"])


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
