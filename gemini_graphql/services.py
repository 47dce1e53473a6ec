"""The domain services of one process, built once from its Resources: the one place that
knows which service uses which connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gemini_graphql.auth.service import AuthService
from gemini_graphql.auth.sms import SmsSender, build_sms_sender
from gemini_graphql.billing.checkout import Billing
from gemini_graphql.billing.gateway import StripeGateway
from gemini_graphql.billing.webhooks import StripeWebhooks
from gemini_graphql.chat.conversation import Conversation
from gemini_graphql.chat.messages import Messages
from gemini_graphql.chat.reply_stream import ReplyChannels
from gemini_graphql.chat.room_cache import RoomListCache
from gemini_graphql.chat.room_events import RoomEventChannels
from gemini_graphql.chat.rooms import Rooms
from gemini_graphql.chat.stops import FinalEvents
from gemini_graphql.infra.relay import RESYNC_AFTER_SECONDS, Relay
from gemini_graphql.infra.resources import Resources

if TYPE_CHECKING:
    from gemini_graphql.infra.otel import Tracing


@dataclass(frozen=True, slots=True)
class Services:
    resources: Resources
    auth: AuthService
    rooms: Rooms
    messages: Messages
    conversation: Conversation
    billing: Billing
    webhooks: StripeWebhooks
    relay: Relay  # this process's one pub/sub connection for live replies and room events
    room_events: RoomEventChannels

    @classmethod
    def build(
        cls,
        resources: Resources,
        *,
        sms: SmsSender | None = None,
        tracing: Tracing | None = None,
    ) -> Services:
        """Each service gets the collaborators it uses, and nothing else. `tracing`: when on,
        reply jobs carry the trace context of the request that queued them."""
        settings, database, redis, users, clock = (
            resources.settings,
            resources.database,
            resources.redis,
            resources.users,
            resources.clock,
        )
        room_events = RoomEventChannels(settings.redis_names)
        rooms_cache = RoomListCache(redis, users, room_events, settings.redis_names)
        reply_channels = ReplyChannels(settings.redis_names)
        final_events = FinalEvents(redis, reply_channels)
        idle_timeout = settings.stream_idle_timeout_seconds
        # Quiet subscribers re-check often enough to notice a stalled reply in time.
        relay = Relay(redis, resync_after=min(RESYNC_AFTER_SECONDS, idle_timeout / 3))
        messages = Messages(
            settings=settings,
            database=database,
            redis=redis,
            rooms_cache=rooms_cache,
            clock=clock,
            tracing=tracing,
        )
        return cls(
            resources=resources,
            auth=AuthService(
                settings=settings,
                database=database,
                redis=redis,
                users=users,
                sms=sms or build_sms_sender(settings),
                clock=clock,
            ),
            rooms=Rooms(
                database=database,
                cache=rooms_cache,
                redis=redis,
                final_events=final_events,
                channels=reply_channels,
                clock=clock,
            ),
            messages=messages,
            conversation=Conversation(
                database=database,
                messages=messages,
                redis=redis,
                final_events=final_events,
                users=users,
                room_events=room_events,
                relay=relay,
                channels=reply_channels,
                clock=clock,
            ),
            billing=Billing(
                database=database, users=users, gateway=StripeGateway(settings), clock=clock
            ),
            webhooks=StripeWebhooks(
                signing_secret=settings.stripe_webhook_secret,
                database=database,
                users=users,
                clock=clock,
            ),
            relay=relay,
            room_events=room_events,
        )

    async def close(self) -> None:
        await self.relay.close()
        await self.resources.close()
