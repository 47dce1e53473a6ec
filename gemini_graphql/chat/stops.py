"""Stopping a reply that a worker, anywhere, is streaming.

The api process records the stop in Redis (a short-lived marker per reply, which a worker
checks when it starts or resumes a reply and after its pub/sub connection comes back) and
publishes the reply id on the deployment's stop channel. Every worker watches that channel
through its one pub/sub connection (`infra.relay`); the worker streaming the reply cuts
its read from Gemini at once, even mid-chunk (`StopSignal.interruptible`), stores exactly
the text it streamed, and writes the final STOPPED event.

Whoever else ends a stream (a PENDING reply stopped before any worker took it, a deleted
room, a stop no worker answered) appends the final event with `append_final`, which writes
only right after the event it expects last, so it never interleaves with a worker's.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gemini_graphql.chat.reply_stream import (
    FINISHED_TTL_SECONDS,
    ReplyChannels,
    StreamEvent,
    last_event,
)
from gemini_graphql.models import MessageStatus

log = logging.getLogger(__name__)

STOP_CHANNEL = "replies:stop"  # a name in the deployment's RedisNames.channel
MARKER_TTL_SECONDS = 300  # longer than a stop waits for its worker, and than a job's rerun gap


async def request_stop(redis: Redis, channels: ReplyChannels, reply_ids: list[uuid.UUID]) -> None:
    """Mark the replies stopped and tell the deployment's workers, in one round trip."""
    stop_channel = channels.names.channel(STOP_CHANNEL)
    async with redis.pipeline(transaction=False) as pipe:
        for reply_id in reply_ids:
            pipe.set(channels.stop_marker(reply_id), b"1", ex=MARKER_TTL_SECONDS)
            pipe.publish(stop_channel, str(reply_id).encode())
        await pipe.execute()


# Append the event only if the stream's newest entry is the one expected (or the stream is
# empty and the event is the first), then publish it: 1 if written, 0 if not.
_APPEND_AFTER = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last = 0
if newest[1] then last = tonumber(string.match(newest[1][1], '^(%d+)')) end
if last ~= tonumber(ARGV[1]) - 1 then return 0 end
redis.call('XADD', KEYS[1], ARGV[1] .. '-0', 'e', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"""


APPEND_TRIES = 5  # a worker that has not seen the stop yet may still add an event or two


class FinalEvents:
    """Ends reply streams from outside their worker."""

    def __init__(self, redis: Redis, channels: ReplyChannels) -> None:
        self._redis = redis
        self._channels = channels
        self._append = redis.register_script(_APPEND_AFTER)

    async def end_stopped(self, reply_id: uuid.UUID) -> StreamEvent | None:
        """Append a final STOPPED event after whatever the stream holds (unless it already
        ended); the stream's last event when done, None if the worker kept writing."""
        for _ in range(APPEND_TRIES):
            newest = await last_event(self._redis, self._channels, reply_id)
            if newest is not None and newest.is_final:
                return newest
            final = StreamEvent((newest.seq if newest else 0) + 1, "", MessageStatus.STOPPED)
            if await self.append(reply_id, final):
                return final
        log.warning("could not end the stream of the stopped reply %s", reply_id)
        return None

    async def append(self, reply_id: uuid.UUID, event: StreamEvent) -> bool:
        """Write `event` if the stream's last seq is event.seq - 1; False otherwise."""
        written = await self._append(
            keys=[self._channels.stream(reply_id), self._channels.of(reply_id)],
            args=[event.seq, event.encode(), FINISHED_TTL_SECONDS],
        )
        return bool(written)


class Stopped(Exception):
    """The reply was asked to stop: store what was streamed and end it STOPPED."""


class StopSignal:
    """One reply's stop, as its worker sees it."""

    __slots__ = ("requested", "_scope")

    def __init__(self) -> None:
        self.requested = False
        self._scope: asyncio.Timeout | None = None

    def request(self) -> None:
        self.requested = True
        if self._scope is not None and not self._scope.expired():
            self._scope.reschedule(asyncio.get_running_loop().time())  # interrupt the read now

    @asynccontextmanager
    async def interruptible(self) -> AsyncIterator[None]:
        """Around a read from the model: a stop interrupts it (raising Stopped)."""
        if self.requested:
            raise Stopped
        try:
            async with asyncio.timeout(None) as scope:
                self._scope = scope
                try:
                    yield
                finally:
                    self._scope = None
        except TimeoutError:
            if self.requested and scope.expired():
                raise Stopped from None
            raise


class StopRequests:
    """A worker's view of the stop channel: the signals of the replies it is working on.

    A Watcher of the stop channel (see infra.relay.Watcher). Stops published while the
    channel was not watched are found from their markers when it is watched again.
    """

    def __init__(self, redis: Redis, channels: ReplyChannels) -> None:
        """`channels`: the deployment's names, whose stop markers this looks at."""
        self._redis = redis
        self._channels = channels
        self._signals: dict[uuid.UUID, StopSignal] = {}
        self._checks: set[asyncio.Task[None]] = set()

    @contextmanager
    def watching(self, reply_id: uuid.UUID) -> Iterator[StopSignal]:
        """The reply's signal while the block runs (enter it before claiming the reply)."""
        signal = self._signals[reply_id] = StopSignal()
        try:
            yield signal
        finally:
            if self._signals.get(reply_id) is signal:
                del self._signals[reply_id]

    async def check(self, reply_id: uuid.UUID) -> None:
        """Ask Redis whether the reply was stopped (a stop that came before we listened)."""
        signal = self._signals.get(reply_id)
        if signal is not None and await self._redis.exists(self._channels.stop_marker(reply_id)):
            signal.request()

    def deliver(self, data: bytes) -> None:
        try:
            reply_id = uuid.UUID(data.decode())
        except (ValueError, UnicodeDecodeError):
            log.warning("ignored a malformed stop notice")
            return
        if (signal := self._signals.get(reply_id)) is not None:
            signal.request()

    def suspend(self) -> None:
        """Notices may be missed until `resume`, which looks at the markers."""

    def resume(self) -> None:
        if not self._signals:
            return
        task = asyncio.get_running_loop().create_task(self._check_all())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check_all(self) -> None:
        reply_ids = list(self._signals)
        try:
            markers = [self._channels.stop_marker(reply_id) for reply_id in reply_ids]
            stopped = await self._redis.mget(markers)
        except RedisError:
            log.warning("could not check for stopped replies", exc_info=True)
            return
        for reply_id, marker in zip(reply_ids, stopped, strict=True):
            if marker is not None and (signal := self._signals.get(reply_id)) is not None:
                signal.request()
