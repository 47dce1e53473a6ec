"""Producing an assistant reply: context, streaming from the model, storing, failing well.

Runs in the worker. arq runs a job at least once, so `generate` is keyed by
the reply id and safe to repeat: a finished reply is left alone, and a reply
whose worker died half way is continued from exactly what subscribers have
already been sent (the reply's event stream), so the stored text always
equals the concatenated deltas.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import col, select

from gemini_graphql.ai.model import ChatModel, ModelError, Turn
from gemini_graphql.chat.messages import message_by_id
from gemini_graphql.chat.quota import give_back_one, utc_day
from gemini_graphql.ids import id_floor
from gemini_graphql.models import Chatroom, Message, MessageRole, MessageStatus
from gemini_graphql.resources import Resources
from gemini_graphql.streaming import ReplyEvent, history, publish

log = logging.getLogger(__name__)

CONTEXT_MESSAGES = 10  # earlier messages sent along with the new one
# A reply still PENDING this long after sendMessage has no job: its api process died between
# committing and queueing (or Redis lost the queue). Looked for within STRANDED_WITHIN.
STRANDED_AFTER = timedelta(minutes=2)
STRANDED_WITHIN = timedelta(hours=1)
SAVE_EVERY_SECONDS = 1.0  # how often the growing text is written to the row
_IN_PROGRESS = (MessageStatus.PENDING.value, MessageStatus.STREAMING.value)
_MESSAGES = Message.__table__  # type: ignore[attr-defined]
_TOO_SLOW = "The assistant took too long to answer. Please try again."

# The hot statements, built once (SQLAlchemy then works out their cache keys once).
_CLAIM = (  # PENDING means new: nothing was sent yet (the first event follows this write)
    sa.update(_MESSAGES)
    .where(
        _MESSAGES.c.id == sa.bindparam("reply_id"),
        _MESSAGES.c.status == MessageStatus.PENDING.value,
    )
    .values(status=MessageStatus.STREAMING.value, updated_at=sa.bindparam("now"))
    .returning(*_MESSAGES.c)
)
_UPDATE_UNFINISHED = (  # SET takes the columns named in the parameters
    sa.update(_MESSAGES)
    .where(_MESSAGES.c.id == sa.bindparam("reply_id"), _MESSAGES.c.status.in_(_IN_PROGRESS))
    .returning(_MESSAGES.c.id)
)
_STRANDED = (  # a range of the primary key (ids are time-ordered), not a scan of the table
    sa.select(_MESSAGES.c.id)
    .where(
        _MESSAGES.c.id >= sa.bindparam("since_id"),
        _MESSAGES.c.status == MessageStatus.PENDING.value,
        _MESSAGES.c.role == MessageRole.ASSISTANT.value,
        _MESSAGES.c.created_at < sa.bindparam("before"),
    )
    .order_by(_MESSAGES.c.id)
    .limit(1000)
)
_CONTEXT = (
    sa.select(_MESSAGES.c.role, _MESSAGES.c.content)
    .where(
        _MESSAGES.c.chatroom_id == sa.bindparam("room_id"),
        _MESSAGES.c.id <= sa.bindparam("last_id"),
        _MESSAGES.c.status == MessageStatus.COMPLETE.value,
        _MESSAGES.c.content != "",
    )
    .order_by(_MESSAGES.c.id.desc())
    .limit(CONTEXT_MESSAGES + 1)
)


class RetryLater(Exception):
    """The model failed in a way worth another try; the worker defers the job."""

    def __init__(self, cause: ModelError) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Outcome:
    status: MessageStatus
    text: str


@dataclass(frozen=True, slots=True)
class _Started:
    """A reply ready to stream: its row, the text already sent, the last seq, the context."""

    reply: Message
    text: str
    seq: int
    turns: list[Turn]


class ReplyGenerator:
    def __init__(self, resources: Resources, model: ChatModel, *, deadline_seconds: float) -> None:
        """`deadline_seconds` bounds a whole reply; keep it under the job's own timeout."""
        self._deadline = deadline_seconds
        self._sessions = resources.sessions
        self._autocommit = resources.autocommit
        self._redis = resources.redis
        self._clock = resources.clock
        self._users = resources.users
        self._model = model
        self._system_instruction = resources.settings.gemini_system_instruction

    async def generate(self, reply_id: uuid.UUID, *, final_try: bool) -> Outcome | None:
        """Stream the reply to completion. Raises RetryLater unless this is the `final_try`."""
        started = await self._start(reply_id)
        if not isinstance(started, _Started):
            return started
        reply, text, seq, turns = started.reply, started.text, started.seq, started.turns
        response_id: str | None = None
        saved_at = time.monotonic()
        try:
            async with asyncio.timeout(self._deadline):
                async for chunk in self._model.stream(turns, self._system_instruction):
                    seq += 1
                    text += chunk.text
                    response_id = chunk.response_id or response_id
                    await publish(
                        self._redis, reply_id, ReplyEvent(seq, chunk.text, MessageStatus.STREAMING)
                    )
                    if time.monotonic() - saved_at >= SAVE_EVERY_SECONDS:
                        await self._save_progress(reply_id, text)
                        saved_at = time.monotonic()
        except TimeoutError:
            exc = ModelError("the reply took too long", retryable=True, user_message=_TOO_SLOW)
            return await self._model_failed(reply, text, seq, exc, final_try)
        except ModelError as exc:
            return await self._model_failed(reply, text, seq, exc, final_try)
        await self._complete(reply_id, text, seq, response_id)
        return Outcome(MessageStatus.COMPLETE, text)

    async def stranded(self) -> list[uuid.UUID]:
        """Replies left PENDING without a job (see STRANDED_AFTER), oldest first."""
        now = self._clock()
        parameters = {"since_id": id_floor(now - STRANDED_WITHIN), "before": now - STRANDED_AFTER}
        async with self._autocommit.connect() as connection:
            return list((await connection.execute(_STRANDED, parameters)).scalars())

    async def _start(self, reply_id: uuid.UUID) -> _Started | Outcome | None:
        claimed = await self._claim(reply_id)
        if claimed is not None:  # the usual case: a new reply
            return _Started(claimed, "", 0, await self._context(claimed))
        return await self._resume(reply_id)

    async def _resume(self, reply_id: uuid.UUID) -> _Started | Outcome | None:
        """A rerun: a finished reply is left alone, an unfinished one continues from what
        its subscribers were sent."""
        reply = await message_by_id(self._autocommit, reply_id)
        if reply is None or reply.role != MessageRole.ASSISTANT.value:
            log.warning("reply %s does not exist; nothing to do", reply_id)
            return None
        sent = await history(self._redis, reply_id)
        if reply.is_finished:
            await self._ensure_final_event(reply, sent)
            return Outcome(MessageStatus(reply.status), reply.content)
        if sent and sent[-1].is_final:  # cannot happen: the row is written before the event
            log.error("reply %s has a final event but is %s", reply_id, reply.status)
            return None

        text = "".join(event.delta for event in sent)
        seq = sent[-1].seq if sent else 0
        if not sent and reply.content:  # Redis lost the stream: what the row kept is the start
            seq += 1
            text = reply.content
            await publish(self._redis, reply_id, ReplyEvent(seq, text, MessageStatus.STREAMING))
        # Independent, so together: the first word waits for neither twice.
        _, turns = await asyncio.gather(self._set_streaming(reply_id, text), self._context(reply))
        if text:
            turns.append(Turn("model", text))  # continue the reply already under way
        return _Started(reply, text, seq, turns)

    async def _model_failed(
        self, reply: Message, text: str, seq: int, exc: ModelError, final_try: bool
    ) -> Outcome:
        if exc.retryable and not final_try:
            await self._save_progress(reply.id, text)  # _fail below writes the text itself
            raise RetryLater(exc) from exc
        log.warning("reply %s failed: %s", reply.id, exc)
        await self._fail(reply, text, seq, exc.user_message)
        return Outcome(MessageStatus.FAILED, text)

    async def fail(self, reply_id: uuid.UUID, user_message: str) -> None:
        """Give up on a reply (e.g. after too many tries), keeping what was sent."""
        reply = await message_by_id(self._autocommit, reply_id)
        if reply is None or reply.is_finished:
            return
        sent = await history(self._redis, reply_id)
        text = "".join(event.delta for event in sent) if sent else reply.content
        await self._fail(reply, text, sent[-1].seq if sent else 0, user_message)

    async def _context(self, reply: Message) -> list[Turn]:
        """The new message and the ten before it, oldest first; failed and unfinished replies left out."""
        if reply.reply_to_id is None:
            return []
        parameters = {"room_id": reply.chatroom_id, "last_id": reply.reply_to_id}
        async with self._autocommit.connect() as connection:
            rows = (await connection.execute(_CONTEXT, parameters)).all()
        return [
            Turn("user" if role == MessageRole.USER.value else "model", content)
            for role, content in reversed(rows)
        ]

    async def _claim(self, reply_id: uuid.UUID) -> Message | None:
        """The reply, now STREAMING, if it was PENDING; one statement."""
        async with self._autocommit.begin() as connection:
            parameters = {"reply_id": reply_id, "now": self._clock()}
            row = (await connection.execute(_CLAIM, parameters)).mappings().first()
        return Message(**row) if row is not None else None

    async def _set_streaming(self, reply_id: uuid.UUID, text: str) -> None:
        await self._update(reply_id, status=MessageStatus.STREAMING.value, content=text)

    async def _save_progress(self, reply_id: uuid.UUID, text: str) -> None:
        await self._update(reply_id, content=text)

    async def _update(self, reply_id: uuid.UUID, **values: object) -> bool:
        """Change an unfinished reply; False when it was already finished."""
        parameters = {"reply_id": reply_id, "updated_at": self._clock(), **values}
        async with self._autocommit.begin() as connection:
            return (await connection.execute(_UPDATE_UNFINISHED, parameters)).first() is not None

    async def _complete(
        self, reply_id: uuid.UUID, text: str, seq: int, response_id: str | None
    ) -> None:
        # The row first, then the final event: whoever sees the event finds the stored text.
        await self._update(
            reply_id,
            status=MessageStatus.COMPLETE.value,
            content=text,
            gemini_response_id=response_id,
            error=None,
        )
        await publish(self._redis, reply_id, ReplyEvent(seq + 1, "", MessageStatus.COMPLETE))

    async def _fail(self, reply: Message, text: str, seq: int, error: str) -> None:
        """FAILED with a readable error, and the quota unit given back (once)."""
        now = self._clock()
        async with self._sessions() as session:
            result = await session.execute(
                sa.update(Message)
                .where(col(Message.id) == reply.id, col(Message.status).in_(_IN_PROGRESS))
                .values(status=MessageStatus.FAILED.value, content=text, error=error, updated_at=now)
                .returning(Message.id)
            )
            owner = None
            if result.first() is not None:
                owner = await session.scalar(
                    select(Chatroom.user_id).where(col(Chatroom.id) == reply.chatroom_id)
                )
                if owner is not None:
                    await give_back_one(session, owner, utc_day(reply.created_at))
            await session.commit()
        if owner is not None:
            await self._users.changed(owner)  # the unit given back shows in `usage` at once
        await publish(self._redis, reply.id, ReplyEvent(seq + 1, "", MessageStatus.FAILED))

    async def _ensure_final_event(self, reply: Message, sent: list[ReplyEvent]) -> None:
        if sent and not sent[-1].is_final:
            await publish(
                self._redis, reply.id, ReplyEvent(sent[-1].seq + 1, "", MessageStatus(reply.status))
            )
