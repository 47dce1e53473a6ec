"""What a reply job writes, on every database the worker runs on (PostgreSQL, and the dev
mode's SQLite): the claim reads the room's owner and instruction with the reply, the end
counts its tokens in the owner's day and gives a FAILED reply's unit back, once, and a
reply ended elsewhere is left as it is. PostgreSQL ends a reply in one statement, SQLite
in a transaction of two; both are held to the same outcomes here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from gemini_graphql.ai.model import Chunk, ModelError, TokenCounts, Turn
from gemini_graphql.chat.quota import add_tokens, give_back_one, utc_day
from gemini_graphql.chat.replies import ReplyGenerator
from gemini_graphql.chat.reply_stream import ReplyChannels
from gemini_graphql.chat.room_events import RoomEventChannels
from gemini_graphql.chat.stops import StopRequests
from gemini_graphql.config import Settings
from gemini_graphql.ids import new_id
from gemini_graphql.infra.resources import Resources
from gemini_graphql.models import Chatroom, Message, User

USERS, ROOMS, MESSAGES = (model.__table__ for model in (User, Chatroom, Message))  # type: ignore[attr-defined]
DEFAULT_INSTRUCTION = "the default instruction"


@pytest.fixture(params=["postgresql", "sqlite"])
def store(
    request: pytest.FixtureRequest, base_settings: Settings, dev_stores: tuple[str, str]
) -> Settings:
    if request.param == "postgresql":
        return base_settings
    database_url, redis_url = dev_stores
    return replace(base_settings, database_url=database_url, redis_url=redis_url)


@dataclass
class ScriptedModel:
    """Answers with `script(turns)`'s chunks; an exception in them is raised at that point."""

    script: Callable[[list[Turn]], list[Chunk | Exception]]
    calls: list[tuple[list[Turn], str | None]] = field(default_factory=list)

    def stream(self, turns: list[Turn], system_instruction: str | None) -> AsyncIterator[Chunk]:
        self.calls.append((list(turns), system_instruction))
        pieces = self.script(turns)

        async def chunks() -> AsyncIterator[Chunk]:
            for piece in pieces:
                if isinstance(piece, Exception):
                    raise piece
                yield piece

        return chunks()


@dataclass
class Setup:
    resources: Resources
    model: ScriptedModel
    generator: ReplyGenerator

    async def execute(self, statement: sa.Executable, parameters: Any = None) -> list[Any]:
        async with self.resources.database.engine.begin() as connection:
            result = await connection.execute(statement, parameters)
            return list(result) if result.returns_rows else []

    async def user(self, **columns: Any) -> uuid.UUID:
        now = datetime.now(UTC)
        user_id = new_id()
        values = {"mobile_number": f"+1415{str(user_id.int)[-7:]}", **columns}
        await self.execute(
            sa.insert(USERS).values(id=user_id, created_at=now, updated_at=now, **values)
        )
        return user_id

    async def turn(
        self,
        user_id: uuid.UUID,
        *,
        instruction: str | None = None,
        history: Sequence[tuple[str, str, str]] = (),
        created_at: datetime | None = None,
    ) -> uuid.UUID:
        """A room with `history` (role, content, status), then a question and its PENDING
        reply; the reply's id."""
        now = datetime.now(UTC)
        room_id = new_id()
        await self.execute(
            sa.insert(ROOMS).values(
                id=room_id,
                user_id=user_id,
                title="t",
                system_instruction=instruction,
                created_at=now,
                updated_at=now,
            )
        )
        parent = None
        rows = []
        for role, content, status in [*history, ("user", "the question", "complete")]:
            rows.append(_message(room_id, parent, role, content, status, now))
            parent = rows[-1]["id"]
        reply = _message(room_id, parent, "assistant", "", "pending", created_at or now)
        await self.execute(sa.insert(MESSAGES), [*rows, reply])
        return reply["id"]

    async def row(self, table: sa.Table, row_id: uuid.UUID) -> Any:
        [found] = await self.execute(sa.select(table).where(table.c.id == row_id))
        return found

    async def reply(self, reply_id: uuid.UUID) -> Any:
        return await self.row(MESSAGES, reply_id)


def _message(
    room_id: uuid.UUID,
    parent: uuid.UUID | None,
    role: str,
    content: str,
    status: str,
    at: datetime,
) -> dict[str, Any]:
    return {
        "id": new_id(),
        "chatroom_id": room_id,
        "parent_id": parent,
        "role": role,
        "content": content,
        "status": status,
        "created_at": at,
        "updated_at": at,
    }


@pytest.fixture
async def setup(store: Settings) -> AsyncIterator[Setup]:
    resources = Resources.open(store, role="test")
    channels = ReplyChannels(store.redis_names)
    model = ScriptedModel(lambda turns: [])
    generator = ReplyGenerator(
        database=resources.database,
        redis=resources.redis,
        channels=channels,
        users=resources.users,
        clock=resources.clock,
        model=model,
        system_instruction=DEFAULT_INSTRUCTION,
        job_timeout_seconds=15,
        stops=StopRequests(resources.redis, channels),
        room_events=RoomEventChannels(store.redis_names),
    )
    try:
        yield Setup(resources, model, generator)
    finally:
        await resources.close()


def usage(prompt: int, output: int) -> TokenCounts:
    return TokenCounts(prompt, output, prompt + output)


async def test_the_claim_brings_the_room_instruction_and_the_context(setup: Setup) -> None:
    owner = await setup.user()
    history = [
        ("user", "first", "complete"),
        ("assistant", "an answer", "complete"),
        ("user", "second", "complete"),
        ("assistant", "half an answ", "stopped"),  # not COMPLETE: left out
    ]
    reply_id = await setup.turn(owner, instruction="Talk like a pirate.", history=history)
    plain_id = await setup.turn(owner)
    setup.model.script = lambda turns: [Chunk("Arr", "r1", usage(5, 1))]

    outcome = await setup.generator.generate(reply_id, final_try=True)
    plain = await setup.generator.generate(plain_id, final_try=True)

    assert outcome is not None and (outcome.status, outcome.text) == ("complete", "Arr")
    assert plain is not None and plain.status == "complete"
    (turns, instruction), (plain_turns, plain_instruction) = setup.model.calls
    assert [(turn.role, turn.text) for turn in turns] == [
        ("user", "first"),
        ("model", "an answer"),
        ("user", "second"),
        ("user", "the question"),
    ]
    assert instruction == "Talk like a pirate."
    assert [turn.text for turn in plain_turns] == ["the question"]
    assert plain_instruction == DEFAULT_INSTRUCTION


async def test_a_finished_reply_counts_its_tokens_in_todays_day_once(setup: Setup) -> None:
    yesterday = utc_day(datetime.now(UTC)) - timedelta(days=1)
    owner = await setup.user(daily_token_count=500, last_token_date=yesterday)
    reply_id = await setup.turn(owner)
    setup.model.script = lambda turns: [
        Chunk("a ", "r1", usage(7, 1)),
        Chunk("b", "r1", usage(7, 2)),
    ]

    first = await setup.generator.generate(reply_id, final_try=True)
    again = await setup.generator.generate(reply_id, final_try=True)  # arq ran it twice

    assert first == again and first is not None and first.text == "a b"
    row = await setup.reply(reply_id)
    assert (row.status, row.content, row.gemini_response_id) == ("complete", "a b", "r1")
    assert (row.prompt_tokens, row.output_tokens, row.total_tokens) == (7, 2, 9)
    user = await setup.row(USERS, owner)
    assert (user.daily_token_count, user.last_token_date) == (9, utc_day(datetime.now(UTC)))
    assert len(setup.model.calls) == 1


async def test_a_failed_reply_gives_its_unit_back_once_and_counts_its_tokens(
    setup: Setup,
) -> None:
    today = utc_day(datetime.now(UTC))
    owner = await setup.user(daily_message_count=3, last_message_date=today)
    reply_id = await setup.turn(owner)
    broken = ModelError("blocked", retryable=False, user_message="No answer to that.")
    setup.model.script = lambda turns: [Chunk("par", "r1", usage(4, 1)), broken]

    outcome = await setup.generator.generate(reply_id, final_try=True)
    await setup.generator.generate(reply_id, final_try=True)  # a rerun
    await setup.generator.fail(reply_id, "gave up")  # and the worker giving up on it

    assert outcome is not None and (outcome.status, outcome.text) == ("failed", "par")
    row = await setup.reply(reply_id)
    assert (row.status, row.content, row.error) == ("failed", "par", "No answer to that.")
    assert row.total_tokens == 5
    user = await setup.row(USERS, owner)
    assert (user.daily_message_count, user.last_message_date) == (2, today)
    assert (user.daily_token_count, user.last_token_date) == (5, today)


async def test_a_unit_from_an_earlier_day_is_not_given_back(setup: Setup) -> None:
    """Yesterday's unit expired with yesterday: today's count is not lowered for it."""
    now = datetime.now(UTC)
    owner = await setup.user(daily_message_count=2, last_message_date=utc_day(now))
    reply_id = await setup.turn(owner, created_at=now - timedelta(days=1))

    await setup.generator.fail(reply_id, "gave up")

    assert (await setup.reply(reply_id)).status == "failed"
    user = await setup.row(USERS, owner)
    assert (user.daily_message_count, user.daily_token_count) == (2, 0)


async def test_a_reply_ended_elsewhere_is_left_as_it_is(setup: Setup) -> None:
    """Stopped by an api process while its worker streamed it: the worker's end writes
    nothing, counts nothing."""
    today = utc_day(datetime.now(UTC))
    owner = await setup.user(daily_message_count=1, last_message_date=today)
    reply_id = await setup.turn(owner)
    ended = {"status": "stopped", "content": "kept", "total_tokens": 3}

    def script(turns: list[Turn]) -> list[Chunk | Exception]:
        return [Chunk("lost", "r1", usage(10, 1))]

    async def stop_it_elsewhere() -> None:
        await setup.execute(sa.update(MESSAGES).where(MESSAGES.c.id == reply_id).values(ended))

    setup.model.script = script
    original = setup.model.stream

    def stream(turns: list[Turn], instruction: str | None) -> AsyncIterator[Chunk]:
        chunks = original(turns, instruction)

        async def after_the_stop() -> AsyncIterator[Chunk]:
            await stop_it_elsewhere()
            async for chunk in chunks:
                yield chunk

        return after_the_stop()

    setup.model.stream = stream  # type: ignore[method-assign]

    assert await setup.generator.generate(reply_id, final_try=True) is None

    row = await setup.reply(reply_id)
    assert (row.status, row.content, row.total_tokens) == ("stopped", "kept", 3)
    user = await setup.row(USERS, owner)
    assert (user.daily_message_count, user.daily_token_count) == (1, 0)


async def test_quota_settling_on_its_own(setup: Setup) -> None:
    """give_back_one and add_tokens, as other callers use them."""
    today = utc_day(datetime.now(UTC))
    yesterday = today - timedelta(days=1)
    owner = await setup.user(
        daily_message_count=1,
        last_message_date=today,
        daily_token_count=40,
        last_token_date=yesterday,
    )

    async def settle(step: Callable[[Any], Any]) -> tuple[int, date | None, int, date | None]:
        async with setup.resources.database.engine.begin() as connection:
            await step(connection)
        user = await setup.row(USERS, owner)
        return (
            user.daily_message_count,
            user.last_message_date,
            user.daily_token_count,
            user.last_token_date,
        )

    assert await settle(lambda c: give_back_one(c, owner, yesterday)) == (1, today, 40, yesterday)
    assert await settle(lambda c: give_back_one(c, owner, today)) == (0, today, 40, yesterday)
    assert await settle(lambda c: give_back_one(c, owner, today)) == (0, today, 40, yesterday)
    assert await settle(lambda c: add_tokens(c, owner, 6, today)) == (0, today, 6, today)
    assert await settle(lambda c: add_tokens(c, owner, 4, today)) == (0, today, 10, today)
