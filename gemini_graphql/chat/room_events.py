"""What happens in a user's rooms, live on every device: one pub/sub channel per user.

Whoever changes a user's rooms (an api process, a worker finishing a reply) publishes a
small event on the user's channel; each api process relays it through its one pub/sub
connection (`infra.relay`) to that user's `chatroomEvents` subscribers. Events carry ids
only: a subscriber reads a room or a message only when it asks for one.

Events are live only: one missed (a reconnect, a slow subscriber) is not replayed; clients
refetch when they resubscribe, as the contract says.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from gemini_graphql.config import RedisNames
from gemini_graphql.infra.relay import RESYNC, Relay

log = logging.getLogger(__name__)


class RoomEventType(StrEnum):
    CHATROOM_CREATED = "CHATROOM_CREATED"
    CHATROOM_UPDATED = "CHATROOM_UPDATED"
    CHATROOM_DELETED = "CHATROOM_DELETED"
    MESSAGE_ADDED = "MESSAGE_ADDED"
    REPLY_FINISHED = "REPLY_FINISHED"
    BRANCH_CHANGED = "BRANCH_CHANGED"


@dataclass(frozen=True, slots=True)
class RoomEvent:
    type: RoomEventType
    chatroom_id: uuid.UUID
    at: datetime
    message_id: uuid.UUID | None = None

    def encode(self) -> bytes:
        data = {"t": self.type.value, "r": str(self.chatroom_id), "at": self.at.isoformat()}
        if self.message_id is not None:
            data["m"] = str(self.message_id)
        return json.dumps(data).encode()

    @classmethod
    def decode(cls, raw: bytes) -> RoomEvent:
        data = json.loads(raw)
        message = data.get("m")
        return cls(
            type=RoomEventType(data["t"]),
            chatroom_id=uuid.UUID(data["r"]),
            at=datetime.fromisoformat(data["at"]),
            message_id=uuid.UUID(message) if message else None,
        )


@dataclass(frozen=True, slots=True)
class RoomEventChannels:
    """The user channels of one deployment, within its RedisNames."""

    names: RedisNames

    def of(self, user_id: uuid.UUID) -> str:
        return self.names.channel(f"rooms:{user_id}")

    def publish_into(self, pipe: Pipeline, user_id: uuid.UUID, events: Sequence[RoomEvent]) -> None:
        """Queue the events on `pipe`: they go out with the caller's other writes."""
        for event in events:
            pipe.publish(self.of(user_id), event.encode())

    async def publish(self, redis: Redis, user_id: uuid.UUID, events: Sequence[RoomEvent]) -> None:
        """Best effort: the change is done whether or not its announcement goes out."""
        if not events:
            return
        try:
            async with redis.pipeline(transaction=False) as pipe:
                self.publish_into(pipe, user_id, events)
                await pipe.execute()
        except RedisError:
            log.warning("could not announce a change of the rooms of %s", user_id, exc_info=True)


async def follow_room_events(
    relay: Relay,
    channels: RoomEventChannels,
    user_id: uuid.UUID,
    room_id: uuid.UUID | None = None,
) -> AsyncIterator[RoomEvent]:
    """The user's room events from now on (one room's, with `room_id`), until closed."""
    async with relay.listen(channels.of(user_id)) as mailbox:
        while True:
            data = await mailbox.get()
            if data is RESYNC:  # nothing to catch up from: events are live only
                continue
            try:
                event = RoomEvent.decode(data)
            except (ValueError, KeyError, TypeError):
                log.warning("ignored a malformed room event for %s", user_id)
                continue
            if room_id is None or event.chatroom_id == room_id:
                yield event
