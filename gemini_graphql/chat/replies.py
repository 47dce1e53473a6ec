"""Producing an assistant reply: context, streaming from the model, storing, failing well.

Runs in the worker. arq runs a job at least once, so `generate` is keyed by
the reply id and safe to repeat: a finished reply is left alone, and a reply
whose worker died half way is continued from exactly what subscribers have
already been sent (the reply's event stream), so the stored text always
equals the concatenated deltas. A stopped reply (chat.stops) ends the same way:
its read from the model cut, the text streamed so far stored, STOPPED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.engine import RowMapping

from gemini_graphql.ai.model import ChatModel, Chunk, ModelError, TokenCounts, Turn, abandon
from gemini_graphql.chat.messages import message_by_id
from gemini_graphql.chat.quota import SETTLE, settle_parameters, utc_day
from gemini_graphql.chat.reply_stream import (
    ReplyChannels,
    StreamEnded,
    StreamEvent,
    StreamWriter,
    delete_streams,
    history,
    text_of,
)
from gemini_graphql.chat.room_events import RoomEvent, RoomEventChannels, RoomEventType
from gemini_graphql.chat.stops import Stopped, StopRequests, StopSignal
from gemini_graphql.chat.tree import context_rows
from gemini_graphql.clock import Clock
from gemini_graphql.infra.db import Database
from gemini_graphql.infra.outages import Outage, is_outage
from gemini_graphql.infra.user_cache import UserCache
from gemini_graphql.metrics import FIRST_CHUNK, TOKENS
from gemini_graphql.models import (
    UNFINISHED_STATUSES,
    Chatroom,
    Message,
    MessageRole,
    MessageStatus,
    loaded,
)

_ROOMS = Chatroom.__table__  # type: ignore[attr-defined]

log = logging.getLogger(__name__)

CONTEXT_MESSAGES = 10  # earlier messages sent along with the new one
# A reply still PENDING this long after sendMessage has no job: its api process died between
# committing and queueing (or Redis lost the queue).
STRANDED_AFTER = timedelta(minutes=2)
# A STREAMING reply whose row has not moved for the job timeout plus this has no live job
# (a live one saves its text every SAVE_EVERY_SECONDS, and ends within the job timeout).
LEASE_MARGIN = timedelta(seconds=15)
# A stranded reply this old is failed (its unit given back) rather than started again.
STRANDED_GIVE_UP_AFTER = timedelta(hours=1)
_TOKENS = {kind: TOKENS.labels(kind) for kind in ("prompt", "output", "total")}
SAVE_EVERY_SECONDS = 1.0  # how often the growing text is written to the row (the heartbeat)
# The end of a reply must be written: while the database is unreachable it is tried again,
# until this long before arq's own timeout would cancel the job.
PERSIST_MARGIN_SECONDS = 2.0
T = TypeVar("T")
_IN_PROGRESS = tuple(sorted(status.value for status in UNFINISHED_STATUSES))
_MESSAGES = Message.__table__  # type: ignore[attr-defined]
# Not IN (...): SQLAlchemy expands an IN list's parameters on every execution (~17 µs).
_UNFINISHED = sa.or_(*(_MESSAGES.c.status == status for status in _IN_PROGRESS))
_TOO_SLOW = "The assistant took too long to answer. Please try again."


def _of_room(column: sa.Column[Any], label: str) -> sa.Label[Any]:
    """The reply's room's `column`, beside the reply's own (a subquery: SQLite's RETURNING
    cannot name the tables of an UPDATE's FROM). SQLite's is rendered unqualified,
    `id = chatroom_id`, which names the same columns: chatrooms has no chatroom_id."""
    return (
        sa.select(column)
        .where(_ROOMS.c.id == _MESSAGES.c.chatroom_id)
        .correlate(_MESSAGES)
        .scalar_subquery()
        .label(label)
    )


# What a reply job needs of the reply's room, read with the reply: the owner, whose day its
# tokens (and a FAILED reply's unit) count in, and the room's system instruction.
_WITH_ROOM = (
    _of_room(_ROOMS.c.user_id, "room_owner"),
    _of_room(_ROOMS.c.system_instruction, "room_instruction"),
)

# The hot statements, built once (SQLAlchemy then works out their cache keys once).
_CLAIM = (  # PENDING means new: nothing was sent yet (the first event follows this write)
    sa.update(_MESSAGES)
    .where(
        _MESSAGES.c.id == sa.bindparam("reply_id"),
        _MESSAGES.c.status == MessageStatus.PENDING.value,
    )
    .values(status=MessageStatus.STREAMING.value, updated_at=sa.bindparam("now"))
    .returning(*_MESSAGES.c, *_WITH_ROOM)
)
_REPLY = sa.select(_MESSAGES, *_WITH_ROOM).where(_MESSAGES.c.id == sa.bindparam("reply_id"))
_UPDATE_UNFINISHED = (  # SET takes the columns named in the parameters
    sa.update(_MESSAGES)
    .where(_MESSAGES.c.id == sa.bindparam("reply_id"), _UNFINISHED)
    .returning(_MESSAGES.c.id)
)
# The end of a reply, if it is still unfinished (its token columns kept when none are passed).
_FINAL = (
    sa.update(_MESSAGES)
    .where(_MESSAGES.c.id == sa.bindparam("reply_id"), _UNFINISHED)
    .values(
        status=sa.bindparam("final_status"),
        content=sa.bindparam("final_content"),
        error=sa.bindparam("final_error"),
        gemini_response_id=sa.bindparam("final_response_id"),
        updated_at=sa.bindparam("now"),
        **{
            name: sa.func.coalesce(sa.bindparam(f"final_{name}", type_=sa.Integer), column)
            for name, column in (
                ("prompt_tokens", _MESSAGES.c.prompt_tokens),
                ("output_tokens", _MESSAGES.c.output_tokens),
                ("total_tokens", _MESSAGES.c.total_tokens),
            )
        },
    )
    .returning(_MESSAGES.c.id)
)
# PostgreSQL: the end and what it does to the owner's day as one statement, so one round trip
# and no BEGIN/COMMIT (a data-modifying WITH is one atomic statement; SQLite has none, and
# runs _FINAL then SETTLE in a transaction).
_FINISHED = _FINAL.cte("finished")
_FINAL_AND_SETTLE = sa.select(_FINISHED.c.id).add_cte(
    SETTLE.where(sa.exists(sa.select(_FINISHED.c.id))).cte("settled")
)
_STRANDED = (  # the partial index of unfinished replies (ix_messages_unfinished), any age
    sa.select(_MESSAGES.c.id, _MESSAGES.c.created_at)
    .where(
        _MESSAGES.c.status.in_(_IN_PROGRESS),
        _MESSAGES.c.updated_at < sa.bindparam("oldest_cutoff"),
        _MESSAGES.c.role == MessageRole.ASSISTANT.value,
        sa.or_(
            sa.and_(
                _MESSAGES.c.status == MessageStatus.PENDING.value,
                _MESSAGES.c.updated_at < sa.bindparam("pending_cutoff"),
            ),
            sa.and_(
                _MESSAGES.c.status == MessageStatus.STREAMING.value,
                _MESSAGES.c.updated_at < sa.bindparam("streaming_cutoff"),
            ),
        ),
    )
    .order_by(_MESSAGES.c.updated_at)
    .limit(1000)
)


class RetryLater(Exception):
    """The model failed in a way worth another try; the worker defers the job."""

    def __init__(self, cause: ModelError) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    status: MessageStatus
    text: str


@dataclass(frozen=True, slots=True)
class Stranded:
    """Replies nobody is working on: to queue again, or (too old) to fail."""

    resume: list[uuid.UUID]
    give_up: list[uuid.UUID]


@dataclass(frozen=True, slots=True)
class _Reply:
    """A reply's row, and what its job needs of its room (read with it, in one statement)."""

    row: Message
    owner: uuid.UUID  # whose day its tokens, and a FAILED reply's unit, count in
    instruction: str | None  # the room's own system instruction

    @classmethod
    def of(cls, row: RowMapping) -> _Reply:
        values = dict(row)
        owner, instruction = values.pop("room_owner"), values.pop("room_instruction")
        return cls(loaded(Message, values), owner, instruction)


@dataclass(frozen=True, slots=True)
class _Started:
    """A reply ready to stream: its row, the events already sent, and the context."""

    reply: _Reply
    sent: list[StreamEvent]
    turns: list[Turn]

    @property
    def text(self) -> str:
        return text_of(self.sent)


class ReplyGenerator:
    def __init__(
        self,
        *,
        database: Database,
        redis: Redis,
        channels: ReplyChannels,
        users: UserCache,
        clock: Clock,
        model: ChatModel,
        system_instruction: str | None,
        job_timeout_seconds: float,
        stops: StopRequests,
        room_events: RoomEventChannels,
    ) -> None:
        """`system_instruction`: for rooms without one of their own. The model's part of a
        reply ends 5 s before the job's own timeout, so a reply is finished (or failed) by us,
        not cancelled by arq half written."""
        self._job_timeout = job_timeout_seconds
        self._deadline = max(1.0, job_timeout_seconds - 5.0)
        self._database = Outage(log, "PostgreSQL (replies)")
        self._streams = Outage(log, "Redis (reply streams)")
        self._job_timeout_delta = timedelta(seconds=job_timeout_seconds)
        self._engine = database.engine
        self._autocommit = database.autocommit
        self._one_statement = database.engine.dialect.name == "postgresql"  # see _FINAL_AND_SETTLE
        self._redis = redis
        self._channels = channels
        self._clock = clock
        self._users = users
        self._model = model
        self._system_instruction = system_instruction
        self._stops = stops
        self._room_events = room_events

    async def generate(self, reply_id: uuid.UUID, *, final_try: bool) -> ReplyOutcome | None:
        """Stream the reply to completion (or to its stop). Raises RetryLater unless this is
        the `final_try`.

        An unreachable Redis or PostgreSQL in the middle is waited out where that is safe
        (a write of the stream, the final row); otherwise the error goes up, the worker runs
        the job again later, and the rerun continues from what subscribers were sent.
        """
        with self._stops.watching(reply_id) as stop:  # before the claim: no stop goes unseen
            return await self._generate(reply_id, stop, final_try)

    async def _generate(
        self, reply_id: uuid.UUID, stop: StopSignal, final_try: bool
    ) -> ReplyOutcome | None:
        loop = asyncio.get_running_loop()
        persist_until = loop.time() + self._job_timeout - PERSIST_MARGIN_SECONDS
        started = await self._start(reply_id)
        if not isinstance(started, _Started):
            return started
        reply, turns = started.reply, started.turns
        text = started.text
        writer = StreamWriter(self._redis, self._channels, reply_id, started.sent, self._streams)
        if not started.sent and reply.row.content:  # Redis lost the stream: the row kept it
            text = reply.row.content
            await writer.write(StreamEvent(1, text, MessageStatus.STREAMING), until=persist_until)
        if text:
            turns.append(Turn("model", text))  # continue the reply already under way
        calls = _Tokens.of(reply.row)
        first_text = not text  # not a rerun that continues a reply under way
        response_id: str | None = None
        saved_at = -SAVE_EVERY_SECONDS  # the first chunk is saved: its call's tokens count
        stream_until = loop.time() + self._deadline
        try:
            chunks = self._model.stream(turns, reply.instruction or self._system_instruction)
            async with asyncio.timeout(self._deadline), _ended(chunks):
                while True:
                    async with stop.interruptible():  # a stop cuts the read from the model
                        chunk = await anext(chunks, None)
                    if chunk is None:
                        break
                    calls.report(chunk.usage)
                    response_id = chunk.response_id or response_id
                    if not chunk.text:
                        continue
                    if first_text:
                        first_text = False
                        waited = self._clock() - reply.row.created_at
                        FIRST_CHUNK.observe(waited.total_seconds())
                    text += chunk.text
                    event = StreamEvent(writer.last_seq + 1, chunk.text, MessageStatus.STREAMING)
                    await writer.write(event, until=stream_until)
                    if time.monotonic() - saved_at >= SAVE_EVERY_SECONDS:
                        if not await self._save_progress(reply_id, text, calls.total):
                            raise StreamEnded  # ended elsewhere (stopped, or its room deleted)
                        saved_at = time.monotonic()
        except (Stopped, StreamEnded) as exc:
            return await self._finish(
                reply,
                MessageStatus.STOPPED,
                text,
                writer,
                persist_until,
                tokens=calls.total,
                forget_if_gone=isinstance(exc, Stopped),
            )
        except (TimeoutError, ModelError) as exc:
            if stop.requested:  # failing as it was being stopped: stopped is what was asked
                return await self._finish(
                    reply, MessageStatus.STOPPED, text, writer, persist_until, calls.total
                )
            if not isinstance(exc, ModelError):
                exc = ModelError("the reply took too long", retryable=True, user_message=_TOO_SLOW)
            return await self._model_failed(
                reply, text, writer, exc, final_try, persist_until, calls.total
            )
        return await self._finish(
            reply,
            MessageStatus.COMPLETE,
            text,
            writer,
            persist_until,
            tokens=calls.total,
            response_id=response_id,
        )

    async def stranded(self) -> Stranded:
        """Replies nobody is working on, at any age: PENDING ones that never got a job, and
        STREAMING ones whose row has not moved for longer than a job can live (its worker
        died, or Redis lost its job). Oldest first."""
        now = self._clock()
        pending_cutoff = now - STRANDED_AFTER
        streaming_cutoff = now - self._job_timeout_delta - LEASE_MARGIN
        parameters = {
            "oldest_cutoff": max(pending_cutoff, streaming_cutoff),
            "pending_cutoff": pending_cutoff,
            "streaming_cutoff": streaming_cutoff,
        }
        async with self._autocommit.connect() as connection:
            rows = (await connection.execute(_STRANDED, parameters)).all()
        give_up_before = now - STRANDED_GIVE_UP_AFTER
        return Stranded(
            resume=[reply_id for reply_id, created in rows if created >= give_up_before],
            give_up=[reply_id for reply_id, created in rows if created < give_up_before],
        )

    async def _start(self, reply_id: uuid.UUID) -> _Started | ReplyOutcome | None:
        claimed = await self._claim(reply_id)
        if claimed is not None:  # the usual case: a new reply
            return _Started(claimed, [], await self._context(claimed.row))
        return await self._resume(reply_id)

    async def _resume(self, reply_id: uuid.UUID) -> _Started | ReplyOutcome | None:
        """A rerun: a finished reply is left alone, an unfinished one continues from what
        its subscribers were sent (or, when Redis lost the stream, what the row kept)."""
        found = await self._reply(reply_id)
        if found is None or found.row.role != MessageRole.ASSISTANT.value:
            log.warning("reply %s does not exist; nothing to do", reply_id)
            return None
        reply = found.row
        sent = await history(self._redis, self._channels, reply_id)
        if reply.is_finished:
            if reply.status != MessageStatus.STOPPED.value:  # a stopper writes its own end
                await self._ensure_final_event(reply, sent)
            return ReplyOutcome(MessageStatus(reply.status), reply.content)
        if sent and sent[-1].is_final:  # cannot happen: the row is written before the event
            log.error("reply %s has a final event but is %s", reply_id, reply.status)
            return None
        text = text_of(sent) if sent else reply.content
        # Independent, so together: the first word waits for neither twice. A stop asked
        # while no worker had the reply is found from its marker.
        _, turns, _ = await asyncio.gather(
            self._set_streaming(reply_id, text), self._context(reply), self._stops.check(reply_id)
        )
        return _Started(found, sent, turns)

    async def _model_failed(
        self,
        reply: _Reply,
        text: str,
        writer: StreamWriter,
        exc: ModelError,
        final_try: bool,
        persist_until: float,
        tokens: TokenCounts | None,
    ) -> ReplyOutcome | None:
        if exc.retryable and not final_try:
            # _finish below writes the text itself; the tokens of this call count either way.
            await self._update(reply.row.id, content=text, **_token_columns(tokens))
            raise RetryLater(exc) from exc
        log.warning("reply %s failed: %s", reply.row.id, exc)
        return await self._finish(
            reply, MessageStatus.FAILED, text, writer, persist_until, tokens, exc.user_message
        )

    async def fail(self, reply_id: uuid.UUID, user_message: str) -> None:
        """Give up on a reply (too many tries, or stranded too long), keeping what was sent."""
        reply = await self._reply(reply_id)
        if reply is None or reply.row.is_finished:
            return
        sent = await history(self._redis, self._channels, reply_id)
        text = text_of(sent) if sent else reply.row.content
        until = asyncio.get_running_loop().time() + self._job_timeout - PERSIST_MARGIN_SECONDS
        writer = StreamWriter(self._redis, self._channels, reply_id, sent, self._streams)
        tokens = _Tokens.of(reply.row).total
        await self._finish(reply, MessageStatus.FAILED, text, writer, until, tokens, user_message)

    async def _context(self, reply: Message) -> list[Turn]:
        """The branch ending at the USER message answered: it and the ten before it, oldest
        first, replies that are not COMPLETE left out."""
        if reply.parent_id is None:
            return []
        async with self._autocommit.connect() as connection:
            rows = await context_rows(connection, reply.parent_id, CONTEXT_MESSAGES + 1)
        return [
            Turn("user" if role == MessageRole.USER.value else "model", content)
            for role, content in reversed(rows)
        ]

    async def _claim(self, reply_id: uuid.UUID) -> _Reply | None:
        """The reply, now STREAMING, if it was PENDING; one statement."""
        async with self._autocommit.begin() as connection:
            parameters = {"reply_id": reply_id, "now": self._clock()}
            row = (await connection.execute(_CLAIM, parameters)).mappings().first()
        return _Reply.of(row) if row is not None else None

    async def _reply(self, reply_id: uuid.UUID) -> _Reply | None:
        async with self._autocommit.connect() as connection:
            row = (await connection.execute(_REPLY, {"reply_id": reply_id})).mappings().first()
        return _Reply.of(row) if row is not None else None

    async def _set_streaming(self, reply_id: uuid.UUID, text: str) -> None:
        await self._update(reply_id, status=MessageStatus.STREAMING.value, content=text)

    async def _save_progress(
        self, reply_id: uuid.UUID, text: str, tokens: TokenCounts | None
    ) -> bool:
        """The growing text, and the row's heartbeat (see LEASE_MARGIN); False when the reply
        was ended elsewhere. Best effort: a save missed while the database is away is made up
        by the next one, or by the end."""
        try:
            return await self._update(reply_id, content=text, **_token_columns(tokens))
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._database.failed(exc)
            return True

    async def _update(self, reply_id: uuid.UUID, **values: object) -> bool:
        """Change an unfinished reply; False when it was already finished."""
        parameters = {"reply_id": reply_id, "updated_at": self._clock(), **values}
        async with self._autocommit.begin() as connection:
            return (await connection.execute(_UPDATE_UNFINISHED, parameters)).first() is not None

    async def _persisted(self, write: Callable[[], Awaitable[T]], until: float) -> T:
        """A write that ends the reply: tried again while the database is unreachable."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                result = await write()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                delay = self._database.failed(exc)
                if loop.time() + delay > until:
                    raise
                await asyncio.sleep(delay)
            else:
                self._database.recovered()
                return result

    async def _finish(
        self,
        reply: _Reply,
        status: MessageStatus,
        text: str,
        writer: StreamWriter,
        until: float,
        tokens: TokenCounts | None,
        error: str | None = None,
        response_id: str | None = None,
        forget_if_gone: bool = False,
    ) -> ReplyOutcome | None:
        """The row first, then the final event: whoever sees the event finds the stored text.
        Nothing is written when the reply was ended elsewhere meanwhile (stopped by an api
        process that gave up waiting, or deleted with its room). `forget_if_gone`: a stop
        notice ended it, and the deleter had ended its stream before sending the notice, so
        a stream this worker wrote to since is deleted too."""
        finished = await self._persisted(
            lambda: self._mark_finished(reply, status, text, tokens, error, response_id), until
        )
        reply_id, owner = reply.row.id, reply.owner
        if not finished:
            if forget_if_gone and await message_by_id(self._autocommit, reply_id) is None:
                await delete_streams(self._redis, self._channels, [reply_id])  # room gone
            return None
        finished_event = RoomEvent(
            RoomEventType.REPLY_FINISHED, reply.row.chatroom_id, self._clock(), reply_id
        )
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                # Before the final event: whoever sees it and asks for `usage` finds the
                # tokens (and a FAILED reply's unit given back) counted.
                await self._users.changed(owner, pipe)
                self._room_events.publish_into(pipe, owner, [finished_event])
                await pipe.execute()
        except RedisError:
            log.warning("could not announce the end of reply %s", reply_id, exc_info=True)
        try:
            await writer.write(StreamEvent(writer.last_seq + 1, "", status), until=until)
        except StreamEnded:  # ended by someone else after all: theirs is the final event
            log.warning("reply %s was ended elsewhere as it finished", reply_id)
        return ReplyOutcome(status, text)

    async def _mark_finished(
        self,
        reply: _Reply,
        status: MessageStatus,
        text: str,
        tokens: TokenCounts | None,
        error: str | None,
        response_id: str | None,
    ) -> bool:
        """One transaction (on PostgreSQL one statement): the final row if still unfinished,
        its tokens counted in the owner's day, and a FAILED reply's unit given back; False if
        it was not unfinished."""
        now = self._clock()
        final = {
            "reply_id": reply.row.id,
            "final_status": status.value,
            "final_content": text,
            "final_error": error,
            "final_response_id": response_id,
            "now": now,
            "final_prompt_tokens": tokens.prompt if tokens is not None else None,
            "final_output_tokens": tokens.output if tokens is not None else None,
            "final_total_tokens": tokens.total if tokens is not None else None,
        }
        give_back = utc_day(reply.row.created_at) if status is MessageStatus.FAILED else None
        settle = settle_parameters(
            reply.owner,
            give_back_on=give_back,
            tokens=tokens.total if tokens is not None else 0,
            day=utc_day(now),
        )
        if self._one_statement:
            async with self._autocommit.connect() as connection:
                result = await connection.execute(_FINAL_AND_SETTLE, {**final, **settle})
                finished = result.first() is not None
        else:
            async with self._engine.begin() as connection:
                finished = (await connection.execute(_FINAL, final)).first() is not None
                if finished:
                    await connection.execute(SETTLE, settle)
        if finished and tokens is not None:  # once per reply: this run finished it
            _TOKENS["prompt"].inc(tokens.prompt)
            _TOKENS["output"].inc(tokens.output)
            _TOKENS["total"].inc(tokens.total)
        return finished

    async def _ensure_final_event(self, reply: Message, sent: list[StreamEvent]) -> None:
        """A rerun of a finished reply whose final event was not written (or was lost)."""
        if sent and sent[-1].is_final:
            return
        writer = StreamWriter(self._redis, self._channels, reply.id, sent, self._streams)
        until = asyncio.get_running_loop().time() + self._job_timeout - PERSIST_MARGIN_SECONDS
        try:
            if not sent:  # Redis lost the stream: the whole stored text, as one event
                event = StreamEvent(1, reply.content, MessageStatus.STREAMING)
                await writer.write(event, until=until)
            await writer.write(
                StreamEvent(writer.last_seq + 1, "", MessageStatus(reply.status)), until=until
            )
        except StreamEnded:  # someone else ended it meanwhile: theirs is the end
            pass


class _Tokens:
    """A reply's token usage over its calls: those of earlier runs (kept on its row), plus
    the latest report of the call under way (each report covers the call so far)."""

    __slots__ = ("_before", "_call")

    def __init__(self, before: TokenCounts | None) -> None:
        self._before = before
        self._call: TokenCounts | None = None

    @classmethod
    def of(cls, reply: Message) -> _Tokens:
        if reply.total_tokens is None:
            return cls(None)
        return cls(
            TokenCounts(reply.prompt_tokens or 0, reply.output_tokens or 0, reply.total_tokens)
        )

    def report(self, usage: TokenCounts | None) -> None:
        if usage is not None:
            self._call = usage

    @property
    def total(self) -> TokenCounts | None:
        if self._call is None:
            return self._before
        return self._call if self._before is None else self._before + self._call


def _token_columns(tokens: TokenCounts | None) -> dict[str, int]:
    if tokens is None:
        return {}
    return {
        "prompt_tokens": tokens.prompt,
        "output_tokens": tokens.output,
        "total_tokens": tokens.total,
    }


@contextlib.asynccontextmanager
async def _ended(chunks: AsyncIterator[Chunk]) -> AsyncIterator[None]:
    """The model's call is over when the block is: read to its end, or abandoned."""
    try:
        yield
    except BaseException:
        await abandon(chunks)  # type: ignore[arg-type]
        raise
    else:
        await chunks.aclose()  # type: ignore[attr-defined]
