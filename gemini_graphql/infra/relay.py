"""One Redis pub/sub connection per process, fanned out to many local listeners.

Opening a pub/sub connection per subscriber does not scale (a websocket process holds
thousands), so each process holds ONE and hands each message, as the bytes published, to
the mailboxes of that channel's listeners (subscribing on a channel's first listener,
unsubscribing after its last) and to process-wide watchers. It knows nothing of what the
bytes mean: `chat.reply_stream` decodes reply events, `infra.user_cache` change notices.

A listener may miss messages (its mailbox was full, or the connection dropped); it is told
so by RESYNC in its mailbox and must catch up from a durable source of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, Final, Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

try:  # redis-py's hiredis parser (redis[hiredis]): see Relay._buffered
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
    from redis._parsers.hiredis import _AsyncHiredisParser as _HiredisParser
except ImportError:  # pragma: no cover - depends on the installed redis-py
    _HiredisParser = None  # type: ignore[assignment,misc]
    _NOT_ENOUGH_DATA = None

from gemini_graphql.config import RedisNames
from gemini_graphql.infra.outages import Outage
from gemini_graphql.metrics import RELAY_LAG

log = logging.getLogger(__name__)

MAILBOX_SIZE = 1024
RESYNC_AFTER_SECONDS = 30.0  # a mailbox quiet for this long gets RESYNC: check the source
CONFIRM_TIMEOUT_SECONDS = 10.0
WATCH_RETRY_SECONDS = 1.0
LAG_PROBE_SECONDS = 5.0
_MESSAGE = (b"message", "message")  # a pub/sub message's kind, as bytes or decoded

RESYNC: Final = None
"""Put in every mailbox when messages may have been missed (a reconnect, a quiet spell)."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Watcher(Protocol):
    """A process-wide listener to one channel for as long as the process runs."""

    def deliver(self, data: bytes) -> None: ...

    def suspend(self) -> None:
        """The connection dropped: messages may be missed until `resume`."""

    def resume(self) -> None:
        """Redis confirmed the subscription: from now on nothing is missed."""


Direct = Callable[[bytes], bool]
"""Takes a message at once, without waking the reader; False leaves it to the reader."""


class Mailbox:
    """One listener's messages, bounded, with at most one waiting reader.

    Lighter than asyncio.Queue (which holds four deques, about 3 KB, per subscriber) and
    with no timer per event: a process holds thousands of these, and fans out thousands of
    events a second through them.

    `direct`, when the listener sets it, is offered each message while the reader waits
    with nothing queued before it: handled there, the message costs no wake-up of the
    reader's task (and its chain of generators), which is most of a subscriber's share of
    an event. Anything it declines, or arrives while the reader is busy, is queued as usual,
    so the reader and `direct` never see messages out of order.
    """

    __slots__ = ("_events", "_waiter", "direct", "last_put")

    def __init__(self, now: float) -> None:
        self._events: deque[bytes | None] | None = None  # while anything waits in it
        self._waiter: asyncio.Future[None] | None = None
        self.direct: Direct | None = None
        self.last_put = now

    def put(self, data: bytes | None, now: float) -> bool:
        """False when full: the listener is slow, and fills the gap from its source."""
        self.last_put = now
        if (
            data is not None
            and self.direct is not None
            and self._waiter is not None
            and not self._waiter.done()  # (done: woken, or being cancelled)
            and not self._events
            and self._offer(data)
        ):
            return True
        if self._events is None:
            self._events = deque()
        elif len(self._events) >= MAILBOX_SIZE:
            return False
        self._events.append(data)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return True

    def _offer(self, data: bytes) -> bool:
        assert self.direct is not None
        try:
            return self.direct(data)
        except Exception:  # a bug there must not stop the relay: the reader takes over
            log.exception("a listener's direct delivery failed; its messages are queued")
            self.direct = None
            return False

    async def get(self) -> bytes | None:
        """The next message; None (RESYNC) when messages may have been missed."""
        while not self._events:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._events.popleft()
        if not self._events:  # an empty deque keeps a 600-byte block: idle, hold none
            self._events = None
        return data


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
        self._now: Callable[[], float] = time.monotonic  # the loop's clock, once reading

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
            self._reader = asyncio.create_task(self._read(), name="relay")
        if self._janitor is None or self._janitor.done():
            self._janitor = asyncio.create_task(self._resync_quiet(), name="relay-janitor")

    async def _read(self) -> None:
        self._now = asyncio.get_running_loop().time  # (3.11's get_running_loop calls getpid)
        assert self._pubsub is not None
        while True:
            try:
                # No timeout: blocking reads cost no timer per message (a dropped connection
                # still raises at once).
                response = await self._pubsub.parse_response(block=True)
                if self._outage.down:  # reconnected: whatever was published meanwhile is missed
                    self._outage.recovered()
                    for channel in list(self._mailboxes):
                        self._dispatch(channel, RESYNC)
                while response is not None:
                    if isinstance(response, list) and response[0] in _MESSAGE:
                        # The hot path (thousands a second) skips redis-py's message dict.
                        self._deliver(_text(response[1]), response[2])
                    elif isinstance(response, Exception):
                        raise response  # as redis-py's read would
                    else:
                        await self._handle(response)
                    response = self._buffered()
            except (RedisError, OSError) as exc:  # reconnects (and resubscribes) on the next read
                if not self._outage.down:
                    for watcher in self._watchers.values():
                        watcher.suspend()
                await asyncio.sleep(self._outage.failed(exc))

    def _buffered(self) -> Any:
        """The next reply already read from the socket and parsed, or None.

        One socket read brings many messages at a high rate; redis-py hands them out one
        per `parse_response`, each through its retry wrapper and four coroutines (about 5 µs
        a message here). hiredis' reader holds the rest parsed: they are taken from it
        directly (a private part of redis-py 5: its parser's `_reader`; without hiredis,
        every message goes through `parse_response`).
        """
        connection = self._pubsub.connection if self._pubsub is not None else None
        parser = getattr(connection, "_parser", None)
        if _HiredisParser is None or not isinstance(parser, _HiredisParser):
            return None
        reader = parser._reader
        if reader is None:
            return None
        try:
            reply = reader.gets()
        except Exception:  # noqa: BLE001 - a broken stream: the next parse_response raises
            return None
        return None if reply is _NOT_ENOUGH_DATA else reply

    async def _handle(self, response: Any) -> None:
        """(Un)subscribe confirmations, through redis-py, which keeps its books on them."""
        assert self._pubsub is not None
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

    def _dispatch(self, channel: str, data: bytes | None) -> None:
        now = self._now()
        for mailbox in self._mailboxes.get(channel, ()):
            mailbox.put(data, now)  # when full, the slow subscriber fills the gap itself

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
            with suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()


class LagProbe:
    """Publishes the time on a channel of this process's own every few seconds and watches
    it come back through the relay: RELAY_LAG is how late the last one arrived, or how long
    the one in flight has waited (a relay stuck behind a backlog shows, not a stale value)."""

    def __init__(self, redis: Redis, channel: str, *, every: float = LAG_PROBE_SECONDS) -> None:
        self._redis = redis
        self._channel = channel  # one per process: nobody else's probes arrive here
        self._every = every
        self._sent: float | None = None  # the probe in flight, if any
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of_process(cls, redis: Redis, names: RedisNames) -> LagProbe:
        return cls(redis, names.channel(f"relay:lag-probe:{uuid.uuid4().hex}"))

    def start(self, relay: Relay) -> None:
        relay.watch(self._channel, self)
        self._task = asyncio.create_task(self._probe(), name="relay-lag-probe")

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            now = time.monotonic()
            if self._sent is not None:
                RELAY_LAG.set(now - self._sent)  # still waiting for the last one
                continue
            self._sent = now
            # In an outage the wait grows in the gauge until Redis is back.
            with suppress(RedisError, OSError):
                await self._redis.publish(self._channel, repr(now))

    def deliver(self, data: bytes) -> None:
        try:
            sent = float(data)
        except ValueError:
            return
        RELAY_LAG.set(time.monotonic() - sent)
        if sent == self._sent:
            self._sent = None

    def suspend(self) -> None:
        pass

    def resume(self) -> None:
        self._sent = None  # a probe published while the connection was down is lost

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
