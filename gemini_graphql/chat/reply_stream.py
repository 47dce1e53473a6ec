"""A reply's events through Redis: the worker publishes, every api process follows.

Each reply has a Redis Stream of its events (entry id `<seq>-0`, so a seq can be written
once only) for catching up, and a pub/sub channel for live delivery through the process's
`Relay`. A follower listens on the channel first, then reads the stream, then forwards
live events, dropping seqs it already sent: joining late or re-joining with `after` loses
nothing and repeats nothing.

Every name (stream key, channel, stop marker) is the deployment's (ReplyChannels, built
on RedisNames), so deployments sharing a Redis server never see each other's replies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from gemini_graphql.config import RedisNames
from gemini_graphql.errors import DomainError, ErrorCode
from gemini_graphql.infra.outages import Outage, is_outage
from gemini_graphql.infra.relay import RESYNC, Relay
from gemini_graphql.models import FINISHED_STATUSES, MessageStatus

log = logging.getLogger(__name__)

LIVE_TTL_SECONDS = 3600  # while a reply streams, refreshed by every event
FINISHED_TTL_SECONDS = 900  # after the final event; then the database answers
# A subscriber to a reply with no event for this long is told so (with the reply's status)
# instead of waiting forever: a rerun after a dead worker or the sweep comes well before.
IDLE_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class StreamEvent:
    seq: int
    delta: str
    status: MessageStatus

    @property
    def is_final(self) -> bool:
        return self.status in FINISHED_STATUSES

    def encode(self) -> str:
        return json.dumps({"seq": self.seq, "delta": self.delta, "status": self.status.value})

    @classmethod
    def decode(cls, raw: bytes | str) -> StreamEvent:
        data = json.loads(raw)
        return cls(seq=int(data["seq"]), delta=data["delta"], status=MessageStatus(data["status"]))


_DECODED: dict[bytes, StreamEvent] = {}
_DECODED_MAX = 512


def decoded(data: bytes) -> StreamEvent | None:
    """The event in `data`, None if malformed; decoded once for all of a process's followers
    of the reply (the relay hands each of them the same bytes)."""
    event = _DECODED.get(data)
    if event is None:
        try:
            event = StreamEvent.decode(data)
        except (ValueError, KeyError, TypeError):
            return None
        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()
        _DECODED[data] = event
    return event


class StreamEnded(Exception):
    """The stream already ended: someone else wrote its final event (see chat.stops)."""


@dataclass(frozen=True, slots=True)
class ReplyChannels:
    """The Redis names of one deployment's replies: each reply's live channel, its event
    stream and its stop marker (see chat.stops), all within `names`."""

    names: RedisNames

    def of(self, message_id: uuid.UUID) -> str:
        """The reply's live channel."""
        return self.names.channel(f"reply:{message_id}")

    def stream(self, message_id: uuid.UUID) -> str:
        """The key of the reply's event stream."""
        return self.names.key(f"reply:{message_id}:events")

    def stop_marker(self, message_id: uuid.UUID) -> str:
        """The key saying the reply was asked to stop."""
        return self.names.key(f"reply:{message_id}:stop")


async def publish(
    redis: Redis, channels: ReplyChannels, message_id: uuid.UUID, event: StreamEvent
) -> None:
    """Append the event to the reply's stream and publish it, atomically (MULTI/EXEC)."""
    payload = event.encode()
    key = channels.stream(message_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(key, {"e": payload}, id=f"{event.seq}-0")
        pipe.expire(key, FINISHED_TTL_SECONDS if event.is_final else LIVE_TTL_SECONDS)
        pipe.publish(channels.of(message_id), payload)
        await pipe.execute()


class StreamWriter:
    """One reply's events as its worker writes them, kept until the reply ends.

    A write that fails because Redis is unreachable is tried again (with a capped backoff,
    until `until` on the loop's clock) and the stream repaired: whatever the stream lacks,
    even all of it after a restart that lost the data, is written again with the same seqs.
    So subscribers, who catch up from the stream after the relay reconnects, see the
    same events in the same order whatever Redis did meanwhile.
    """

    def __init__(
        self,
        redis: Redis,
        channels: ReplyChannels,
        message_id: uuid.UUID,
        sent: list[StreamEvent],
        outage: Outage,
    ) -> None:
        """`sent`: the events already in the stream; `outage`: the process's record of
        Redis being away (shared by its writers, so an outage is logged once)."""
        self._redis = redis
        self._message_id = message_id
        self._channels = channels
        self._channel = channels.of(message_id)
        self._key = channels.stream(message_id)
        self._events = list(sent)
        self._written = len(self._events)
        self._repair = False
        self._outage = outage

    @property
    def last_seq(self) -> int:
        return self._events[-1].seq if self._events else 0

    async def write(self, event: StreamEvent, *, until: float) -> None:
        self._events.append(event)
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._repair:
                    newest = await last_event(self._redis, self._channels, self._message_id)
                    have = newest.seq if newest is not None else 0
                    self._written = sum(1 for sent in self._events if sent.seq <= have)
                    self._repair = False
                await self._write_missing()
                self._outage.recovered()
                return
            except ResponseError as exc:
                if "equal or smaller" in str(exc):  # a seq already taken by a final event
                    raise StreamEnded from exc
                raise
            except (RedisError, OSError) as exc:
                if not is_outage(exc):
                    raise
                self._repair = True  # the write may or may not have happened: ask the stream
                delay = self._outage.failed(exc)
                if loop.time() + delay > until:
                    raise
                await asyncio.sleep(delay)

    async def _write_missing(self) -> None:
        missing = self._events[self._written :]
        if not missing:  # the failed write had gone through before the connection dropped
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            key = self._key
            for event in missing:
                payload = event.encode()
                pipe.xadd(key, {"e": payload}, id=f"{event.seq}-0")
                pipe.publish(self._channel, payload)
            final = missing[-1].is_final
            pipe.expire(key, FINISHED_TTL_SECONDS if final else LIVE_TTL_SECONDS)
            await pipe.execute()
        self._written = len(self._events)


def text_of(events: Iterable[StreamEvent]) -> str:
    """The reply's text as these events carried it."""
    return "".join(event.delta for event in events)


async def history(
    redis: Redis, channels: ReplyChannels, message_id: uuid.UUID, after: int = 0
) -> list[StreamEvent]:
    """Events with seq > after, in order. Empty when the stream does not exist (any more)."""
    entries = await redis.xrange(channels.stream(message_id), min=f"{after + 1}-0", max="+")
    return [StreamEvent.decode(fields[b"e"]) for _, fields in entries]


async def last_event(
    redis: Redis, channels: ReplyChannels, message_id: uuid.UUID
) -> StreamEvent | None:
    entries = await redis.xrevrange(channels.stream(message_id), count=1)
    return StreamEvent.decode(entries[0][1][b"e"]) if entries else None


async def delete_streams(
    redis: Redis, channels: ReplyChannels, message_ids: list[uuid.UUID]
) -> None:
    """Forget the streams of these replies (their room was deleted)."""
    for start in range(0, len(message_ids), 500):
        await redis.unlink(
            *(channels.stream(message_id) for message_id in message_ids[start : start + 500])
        )


Stored = StreamEvent | MessageStatus | None
"""What the database says of a reply: its final event when finished, its status while not,
None when it does not exist (any more: its room was deleted)."""


async def follow(
    redis: Redis,
    relay: Relay,
    channels: ReplyChannels,
    message_id: uuid.UUID,
    after: int,
    stored: Callable[[int], Awaitable[Stored]],
    *,
    idle_timeout: float = IDLE_TIMEOUT_SECONDS,
    push: Callable[[StreamEvent], bool] | None = None,
) -> AsyncIterator[StreamEvent]:
    """Every event of a reply with seq > after, in order, each once, ending with the final one.

    `stored(last_seq)` answers from the database when the stream cannot: the final event
    of a finished reply (its stream expired or was lost), or the status of one still being
    made. A reply with no event for `idle_timeout` ends with an error naming its status;
    losing Redis ends with an error saying where to resume. Neither waits forever.

    `push(event)`, if given, may deliver a live event itself, at once, instead of it being
    yielded (see Mailbox.direct): only the next seq and never the final event, so which
    events are delivered, and in what order, is the same either way; False (it could not)
    leaves the event to be yielded.
    """
    last = after
    loop = asyncio.get_running_loop()
    progressed = loop.time()
    try:
        async with relay.listen(channels.of(message_id)) as mailbox:
            if push is not None:

                def direct(data: bytes) -> bool:
                    nonlocal last, progressed
                    event = decoded(data)
                    if event is None or event.seq != last + 1 or event.is_final:
                        return False
                    if not push(event):
                        return False
                    last = event.seq
                    progressed = loop.time()
                    return True

                mailbox.direct = direct
            must_read_stream = True
            while True:
                if must_read_stream:
                    must_read_stream = False
                    caught_up = await history(redis, channels, message_id, last)
                    for event in caught_up:
                        if event.seq == last + 1:
                            last = event.seq
                            progressed = loop.time()
                            yield event
                            if event.is_final:
                                return
                    if not caught_up:
                        newest = await last_event(redis, channels, message_id)
                        if newest is not None and newest.seq > last:
                            must_read_stream = True  # written since the read above: read again
                            continue
                        if newest is not None and newest.is_final:
                            return  # `after` is already at (or past) the end
                        if newest is not None and newest.seq < last:
                            raise _restarted()
                        state = await stored(last)
                        if state is None:  # deleted with its room
                            raise DomainError(ErrorCode.NOT_FOUND, "No such reply.", "messageId")
                        if isinstance(state, StreamEvent):
                            yield state  # the stream expired or was lost: the database has it
                            return
                        if loop.time() - progressed > idle_timeout:
                            raise _stalled(state, idle_timeout, last)
                data = await mailbox.get()
                if data is RESYNC:  # a reconnect, or quiet for a while: was anything missed?
                    must_read_stream = True
                    continue
                event = decoded(data)
                if event is None:
                    log.warning("ignored a malformed event for reply %s", message_id)
                    must_read_stream = True
                    continue
                if event.seq <= last:
                    continue  # already sent from the stream
                if event.seq > last + 1:
                    must_read_stream = True  # a gap (a full queue, a reconnect): the stream has it
                    continue
                last = event.seq
                progressed = loop.time()
                yield event
                if event.is_final:
                    return
    except (RedisError, OSError) as exc:
        if not is_outage(exc):
            raise
        raise DomainError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "The reply's live stream was interrupted. Subscribe again with "
            f"`after: {last}` to continue where you left off.",
        ) from exc


def _restarted() -> DomainError:
    """The stream holds fewer events than were sent: Redis lost it and a rerun of the reply
    began a new one from the text the database kept."""
    return DomainError(
        ErrorCode.SERVICE_UNAVAILABLE,
        "The reply's stream was restarted. Subscribe again without `after` to receive the "
        "reply from its start.",
    )


def _stalled(state: Stored, idle_timeout: float, last: int) -> DomainError:
    status = state.value.upper() if isinstance(state, MessageStatus) else "unknown"
    return DomainError(
        ErrorCode.SERVICE_UNAVAILABLE,
        f"The reply has made no progress for {idle_timeout:.0f} seconds (status {status}). "
        f"Subscribe again with `after: {last}` to keep waiting.",
    )
