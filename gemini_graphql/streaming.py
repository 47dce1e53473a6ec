"""Reply streaming through Redis: the worker publishes, every api process fans out.

Each reply has a Redis Stream of its events (entry id `<seq>-0`, so a seq can
be written once only) for catching up, and a pub/sub channel for live
delivery. A subscriber registers on the channel first, then reads the
stream, then forwards live events, dropping seqs it already sent: joining
late or re-joining with `after` loses nothing and repeats nothing.

Each api process holds ONE pub/sub connection (`Relay`) and hands events to
per-subscriber mailboxes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from gemini_graphql.errors import DomainError, ErrorCode
from gemini_graphql.models import MessageStatus
from gemini_graphql.outages import Outage, is_outage

log = logging.getLogger(__name__)

LIVE_TTL_SECONDS = 3600  # while a reply streams, refreshed by every event
FINISHED_TTL_SECONDS = 900  # after the final event; then the database answers
SUBSCRIBER_QUEUE_SIZE = 1024
RESYNC_AFTER_SECONDS = 30.0  # with no live event for this long, re-read the stream anyway
CONFIRM_TIMEOUT_SECONDS = 10.0
WATCH_RETRY_SECONDS = 1.0
# A subscriber to a reply with no event for this long is told so (with the reply's status)
# instead of waiting forever: a rerun after a dead worker or the sweep comes well before.
IDLE_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class ReplyEvent:
    seq: int
    delta: str
    status: MessageStatus

    @property
    def is_final(self) -> bool:
        return self.status in (MessageStatus.COMPLETE, MessageStatus.FAILED)

    def encode(self) -> str:
        return json.dumps({"seq": self.seq, "delta": self.delta, "status": self.status.value})

    @classmethod
    def decode(cls, raw: bytes | str) -> ReplyEvent:
        data = json.loads(raw)
        return cls(seq=int(data["seq"]), delta=data["delta"], status=MessageStatus(data["status"]))


_MESSAGE = (b"message", "message")  # a pub/sub message's kind, as bytes or decoded


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Handed to every subscriber when the relay had to reconnect: events may have been missed.
RESYNC = ReplyEvent(seq=-1, delta="", status=MessageStatus.STREAMING)


def stream_key(message_id: uuid.UUID) -> str:
    return f"reply:{message_id}:events"


def channel_name(message_id: uuid.UUID) -> str:
    return f"reply:{message_id}"


async def publish(redis: Redis, message_id: uuid.UUID, event: ReplyEvent) -> None:
    """Append the event to the reply's stream and publish it, atomically (MULTI/EXEC)."""
    payload = event.encode()
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(stream_key(message_id), {"e": payload}, id=f"{event.seq}-0")
        pipe.expire(
            stream_key(message_id), FINISHED_TTL_SECONDS if event.is_final else LIVE_TTL_SECONDS
        )
        pipe.publish(channel_name(message_id), payload)
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
        self, redis: Redis, message_id: uuid.UUID, sent: list[ReplyEvent], outage: Outage
    ) -> None:
        """`sent`: the events already in the stream; `outage`: the process's record of
        Redis being away (shared by its writers, so an outage is logged once)."""
        self._redis = redis
        self._message_id = message_id
        self._events = list(sent)
        self._written = len(self._events)
        self._repair = False
        self._outage = outage

    @property
    def last_seq(self) -> int:
        return self._events[-1].seq if self._events else 0

    async def write(self, event: ReplyEvent, *, until: float) -> None:
        self._events.append(event)
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._repair:
                    newest = await last_event(self._redis, self._message_id)
                    have = newest.seq if newest is not None else 0
                    self._written = sum(1 for sent in self._events if sent.seq <= have)
                    self._repair = False
                await self._write_missing()
                self._outage.recovered()
                return
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
            key = stream_key(self._message_id)
            for event in missing:
                payload = event.encode()
                pipe.xadd(key, {"e": payload}, id=f"{event.seq}-0")
                pipe.publish(channel_name(self._message_id), payload)
            final = missing[-1].is_final
            pipe.expire(key, FINISHED_TTL_SECONDS if final else LIVE_TTL_SECONDS)
            await pipe.execute()
        self._written = len(self._events)


async def history(redis: Redis, message_id: uuid.UUID, after: int = 0) -> list[ReplyEvent]:
    """Events with seq > after, in order. Empty when the stream does not exist (any more)."""
    entries = await redis.xrange(stream_key(message_id), min=f"{after + 1}-0", max="+")
    return [ReplyEvent.decode(fields[b"e"]) for _, fields in entries]


async def last_event(redis: Redis, message_id: uuid.UUID) -> ReplyEvent | None:
    entries = await redis.xrevrange(stream_key(message_id), count=1)
    return ReplyEvent.decode(entries[0][1][b"e"]) if entries else None


class Watcher(Protocol):
    """A process-wide listener to one channel for as long as the process runs."""

    def deliver(self, data: bytes) -> None: ...

    def suspend(self) -> None:
        """The connection dropped: messages may be missed until `resume`."""

    def resume(self) -> None:
        """Redis confirmed the subscription: from now on nothing is missed."""


class Mailbox:
    """One subscriber's events, bounded, with at most one waiting reader.

    Lighter than asyncio.Queue (which holds four deques, about 3 KB, per subscriber) and
    with no timer per event: a process holds thousands of these, and fans out thousands of
    events a second through them.
    """

    __slots__ = ("_events", "_waiter", "last_put")

    def __init__(self, now: float) -> None:
        self._events: deque[ReplyEvent] | None = None  # made at the first event
        self._waiter: asyncio.Future[None] | None = None
        self.last_put = now

    def put(self, event: ReplyEvent, now: float) -> bool:
        """False when full: the subscriber is slow, and fills the gap from the stream."""
        if self._events is None:
            self._events = deque()
        elif len(self._events) >= SUBSCRIBER_QUEUE_SIZE:
            return False
        self._events.append(event)
        self.last_put = now
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return True

    async def get(self) -> ReplyEvent:
        while not self._events:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.popleft()


class Relay:
    """One Redis pub/sub connection per process, fanned out to subscriber mailboxes and watchers.

    A janitor hands RESYNC to mailboxes that stayed quiet for RESYNC_AFTER_SECONDS, so a
    subscriber re-reads its stream now and then without a timer of its own.
    """

    def __init__(self, redis: Redis, *, resync_after: float = RESYNC_AFTER_SECONDS) -> None:
        self._redis = redis
        self._resync_after = resync_after
        self._outage = Outage(log, "Redis (pub/sub)")
        self._pubsub: PubSub | None = None
        self._mailboxes: dict[str, set[Mailbox]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._janitor: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()  # unsubscribes under way
        self._watchers: dict[str, Watcher] = {}
        self._watching: set[asyncio.Task[None]] = set()

    @property
    def channel_count(self) -> int:
        return len(self._mailboxes)

    @asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[Mailbox]:
        """A mailbox of the channel's events, live from the moment this is entered."""
        loop = asyncio.get_running_loop()
        mailbox = Mailbox(loop.time())
        listeners = self._mailboxes.setdefault(channel, set())
        listeners.add(mailbox)
        try:
            async with self._lock:
                if channel not in self._confirmed:  # the first listener subscribes
                    self._confirmed[channel] = loop.create_future()
                    await self._subscribe(channel)
                confirmed = self._confirmed[channel]
            # Only after Redis confirmed the subscription is nothing published missed.
            # (asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation;
            # shield: the future is shared by every listener of the channel.)
            async with asyncio.timeout(CONFIRM_TIMEOUT_SECONDS):
                await asyncio.shield(confirmed)
            yield mailbox
        finally:
            # No await before the bookkeeping: a twice-cancelled task still lets go.
            listeners.discard(mailbox)
            if not listeners and self._mailboxes.get(channel) is listeners:
                del self._mailboxes[channel]
                self._confirmed.pop(channel, None)
                task = asyncio.create_task(self._unsubscribe(channel))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    def watch(self, channel: str, watcher: Watcher) -> None:
        """Deliver the channel's messages to `watcher`; subscribes in the background.

        Retries until Redis answers, so a process can start while Redis is down.
        """
        self._watchers[channel] = watcher
        task = asyncio.create_task(self._keep_subscribing(channel), name=f"watch {channel}")
        self._watching.add(task)
        task.add_done_callback(self._watching.discard)

    async def _keep_subscribing(self, channel: str) -> None:
        while True:
            try:
                async with self._lock:
                    await self._subscribe(channel)
                return
            except (RedisError, OSError) as exc:
                log.warning("could not subscribe to %s yet: %s", channel, exc)
                await asyncio.sleep(WATCH_RETRY_SECONDS)

    async def _unsubscribe(self, channel: str) -> None:
        async with self._lock:
            if channel in self._mailboxes or self._pubsub is None:
                return  # someone listens again
            try:
                await self._pubsub.unsubscribe(channel)
            except RedisError:  # the connection is gone; so is the subscription
                log.warning("could not unsubscribe from %s", channel)

    async def _subscribe(self, channel: str) -> None:
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(channel)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="reply-relay")
        if self._janitor is None or self._janitor.done():
            self._janitor = asyncio.create_task(self._resync_quiet(), name="reply-relay-janitor")

    async def _read(self) -> None:
        assert self._pubsub is not None
        while True:
            try:
                # No timeout: blocking reads cost no timer per message (a dropped connection
                # still raises at once).
                response = await self._pubsub.parse_response(block=True)
            except (RedisError, OSError) as exc:  # reconnects (and resubscribes) on the next read
                if not self._outage.down:
                    for watcher in self._watchers.values():
                        watcher.suspend()
                await asyncio.sleep(self._outage.failed(exc))
                continue
            if self._outage.down:  # reconnected: whatever was published meanwhile is missed
                self._outage.recovered()
                for channel in list(self._mailboxes):
                    self._dispatch_event(channel, RESYNC)
            if isinstance(response, list) and response[0] in _MESSAGE:
                # The hot path (thousands a second) skips redis-py's message dict.
                self._deliver(_text(response[1]), response[2])
                continue
            # (Un)subscribe confirmations through redis-py, which keeps its books on them.
            message = await self._pubsub.handle_message(response)
            if message is not None and message["type"] == "subscribe":
                channel = _text(message["channel"])
                if (confirmed := self._confirmed.get(channel)) and not confirmed.done():
                    confirmed.set_result(None)
                if (watcher := self._watchers.get(channel)) is not None:
                    watcher.resume()

    def _deliver(self, channel: str, data: bytes) -> None:
        if (watcher := self._watchers.get(channel)) is not None:
            watcher.deliver(data)
        else:
            self._dispatch(channel, data)

    def _dispatch(self, channel: str, data: bytes) -> None:
        try:
            event = ReplyEvent.decode(data)
        except (ValueError, KeyError):
            log.warning("ignored a malformed event on %s", channel)
            return
        self._dispatch_event(channel, event)

    def _dispatch_event(self, channel: str, event: ReplyEvent) -> None:
        now = asyncio.get_running_loop().time()
        for mailbox in self._mailboxes.get(channel, ()):
            mailbox.put(event, now)  # when full, the slow subscriber fills the gap from the stream

    async def _resync_quiet(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._resync_after / 3)
            quiet_since = loop.time() - self._resync_after
            for mailboxes in list(self._mailboxes.values()):
                for mailbox in mailboxes:
                    if mailbox.last_put <= quiet_since:
                        mailbox.put(RESYNC, loop.time())

    async def close(self) -> None:
        for task in [*self._watching, *([self._janitor] if self._janitor else [])]:
            task.cancel()
        for watcher in self._watchers.values():
            watcher.suspend()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        if self._pubsub is not None:
            await self._pubsub.aclose()


Stored = ReplyEvent | MessageStatus | None
"""What the database says of a reply: its final event when finished, its status while not,
None when it does not exist (any more)."""


async def follow(
    redis: Redis,
    relay: Relay,
    message_id: uuid.UUID,
    after: int,
    stored: Callable[[int], Awaitable[Stored]],
    *,
    idle_timeout: float = IDLE_TIMEOUT_SECONDS,
) -> AsyncIterator[ReplyEvent]:
    """Every event of a reply with seq > after, in order, each once, ending with the final one.

    `stored(last_seq)` answers from the database when the stream cannot: the final event
    of a finished reply (its stream expired or was lost), or the status of one still being
    made. A reply with no event for `idle_timeout` ends with an error naming its status;
    losing Redis ends with an error saying where to resume. Neither waits forever.
    """
    last = after
    loop = asyncio.get_running_loop()
    progressed = loop.time()
    try:
        async with relay.listen(channel_name(message_id)) as mailbox:
            must_read_stream = True
            while True:
                if must_read_stream:
                    must_read_stream = False
                    caught_up = await history(redis, message_id, last)
                    for event in caught_up:
                        if event.seq == last + 1:
                            last = event.seq
                            progressed = loop.time()
                            yield event
                            if event.is_final:
                                return
                    if not caught_up:
                        newest = await last_event(redis, message_id)
                        if newest is not None and newest.seq > last:
                            must_read_stream = True  # written since the read above: read again
                            continue
                        if newest is not None and newest.is_final:
                            return  # `after` is already at (or past) the end
                        if newest is not None and newest.seq < last:
                            raise _restarted()
                        state = await stored(last)
                        if isinstance(state, ReplyEvent):
                            yield state  # the stream expired or was lost: the database has it
                            return
                        if loop.time() - progressed > idle_timeout:
                            raise _stalled(state, idle_timeout, last)
                event = await mailbox.get()
                if event is RESYNC:  # a reconnect, or quiet for a while: was anything missed?
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
