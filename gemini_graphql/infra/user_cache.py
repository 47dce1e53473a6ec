"""What every request of a user reads, kept in the process: the user row and the room list.

Nearly every request authenticates (the user row: tier, quota, token version) and a
chat client lists rooms often; both change seldom compared with how often they are
read. Each process keeps a copy per user, and is told of changes over Redis pub/sub:
every writer, after its commit, calls `changed(user_id)`, which drops the local copy
and publishes the user id, and every api process drops its copy when the notice
arrives (`Relay.watch`).

Correctness rests on three rules:
- A copy is stored only if no notice for that user arrived while it was being read
  (`ticket`), and only if the read was quick: a reader that raced a writer cannot store
  what the writer just replaced, and other users' notices do not stop it.
- Copies are used only while the notice subscription is confirmed; when the
  connection drops, everything is forgotten until Redis confirms it again.
- Copies expire after `ttl_seconds`, which bounds changes made behind the service's back
  (by hand in SQL).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from gemini_graphql.models import Chatroom, User

log = logging.getLogger(__name__)

CHANNEL = "users:changed"  # a name in the deployment's RedisNames.channel
RESPONSES_PER_USER = 16
# A read slower than this is not kept; notices are remembered this long to check reads.
MAX_READ_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Ticket:
    generation: int
    taken_at: float


@dataclass(slots=True)
class _Entry:
    expires_at: float
    user: User | None = None
    rooms: list[Chatroom] | None = None
    # Encoded responses computed from the above alone, by a key the caller defines.
    responses: dict[str, bytes] = field(default_factory=dict)


class UserCache:
    def __init__(
        self, redis: Redis, *, ttl_seconds: float, channel: str, max_users: int = 10_000
    ) -> None:
        """`channel`: where this deployment's change notices go (RedisNames.channel(CHANNEL))."""
        self._redis = redis
        self._channel = channel
        self._ttl = ttl_seconds
        self._max_users = max_users
        self._entries: OrderedDict[uuid.UUID, _Entry] = OrderedDict()
        self._generation = 0  # bumped by every drop
        self._dropped: OrderedDict[uuid.UUID, tuple[int, float]] = OrderedDict()  # last drops
        self._forgot_all = 0  # the generation of the last suspension
        self._live = False  # the notice subscription is confirmed

    @property
    def channel(self) -> str:
        """The channel to watch for other processes' notices (Relay.watch)."""
        return self._channel

    @property
    def live(self) -> bool:
        return self._live

    def __len__(self) -> int:
        return len(self._entries)

    def ticket(self) -> Ticket:
        """Take before reading what will be stored; pass to `keep_*`."""
        return Ticket(self._generation, time.monotonic())

    def user(self, user_id: uuid.UUID) -> User | None:
        entry = self._entry(user_id)
        return entry.user if entry is not None else None

    def rooms(self, user_id: uuid.UUID) -> list[Chatroom] | None:
        entry = self._entry(user_id)
        return entry.rooms if entry is not None else None

    def response(self, user_id: uuid.UUID, key: str) -> bytes | None:
        entry = self._entry(user_id)
        return entry.responses.get(key) if entry is not None else None

    def keep_response(self, user_id: uuid.UUID, key: str, body: bytes, ticket: Ticket) -> None:
        """`body` must depend only on what this cache drops on a notice, and `ticket` must
        have been taken before any of that was read (the user row included)."""
        if entry := self._writable(user_id, ticket):
            entry.responses[key] = body
            if len(entry.responses) > RESPONSES_PER_USER:
                del entry.responses[next(iter(entry.responses))]

    def keep_user(self, user: User, ticket: Ticket) -> None:
        if entry := self._writable(user.id, ticket):
            entry.user = user

    def keep_rooms(self, user_id: uuid.UUID, rooms: list[Chatroom], ticket: Ticket) -> None:
        if entry := self._writable(user_id, ticket):
            entry.rooms = rooms

    async def changed(self, user_id: uuid.UUID, pipe: Pipeline | None = None) -> None:
        """After a commit that changed the user's row or rooms: every process forgets them.

        With `pipe`, the notice joins the caller's pipeline (which the caller executes);
        without, it is sent at once, and a Redis outage is logged, not raised: the change is
        done, and other processes stop using copies when their subscription drops anyway.
        """
        self.drop(user_id)
        if pipe is not None:
            pipe.publish(self._channel, user_id.hex)
            return
        try:
            await self._redis.publish(self._channel, user_id.hex)
        except RedisError:
            log.warning("could not announce a change of user %s", user_id, exc_info=True)

    def drop(self, user_id: uuid.UUID) -> None:
        self._generation += 1
        self._entries.pop(user_id, None)
        now = time.monotonic()
        self._dropped[user_id] = (self._generation, now)
        self._dropped.move_to_end(user_id)
        while self._dropped:  # older drops cannot matter: older tickets are refused anyway
            _, (_, dropped_at) = next(iter(self._dropped.items()))
            if now - dropped_at <= MAX_READ_SECONDS:
                break
            self._dropped.popitem(last=False)

    # The Relay's watcher interface.

    def deliver(self, data: bytes | str) -> None:
        try:
            user_id = uuid.UUID(data.decode() if isinstance(data, bytes) else data)
        except ValueError:
            log.warning("ignored a malformed change notice")
            return
        self.drop(user_id)

    def suspend(self) -> None:
        """Notices may be missed from now on: forget everything and stop keeping copies."""
        self._live = False
        self._generation += 1
        self._forgot_all = self._generation
        self._entries.clear()

    def resume(self) -> None:
        self._live = True

    def _entry(self, user_id: uuid.UUID) -> _Entry | None:
        if not self._live:
            return None
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        if entry.expires_at <= time.monotonic():
            del self._entries[user_id]
            return None
        self._entries.move_to_end(user_id)
        return entry

    def _writable(self, user_id: uuid.UUID, ticket: Ticket) -> _Entry | None:
        if not self._live or self._ttl <= 0 or ticket.generation < self._forgot_all:
            return None
        if time.monotonic() - ticket.taken_at > MAX_READ_SECONDS:
            return None
        dropped = self._dropped.get(user_id)
        if dropped is not None and dropped[0] > ticket.generation:
            return None  # a notice for this user arrived during the read
        entry = self._entry(user_id)
        if entry is None:
            entry = self._entries[user_id] = _Entry(expires_at=time.monotonic() + self._ttl)
            if len(self._entries) > self._max_users:
                self._entries.popitem(last=False)
        return entry
