"""The domain services of one process, built once from its Resources."""

from __future__ import annotations

from dataclasses import dataclass

from gemini_graphql.auth.service import AuthService
from gemini_graphql.billing.checkout import Billing
from gemini_graphql.billing.webhooks import StripeWebhooks
from gemini_graphql.chat.messages import Messages
from gemini_graphql.chat.rooms import Rooms
from gemini_graphql.resources import Resources
from gemini_graphql.streaming import RESYNC_AFTER_SECONDS, Relay


@dataclass(frozen=True, slots=True)
class Services:
    resources: Resources
    auth: AuthService
    rooms: Rooms
    messages: Messages
    billing: Billing
    webhooks: StripeWebhooks
    relay: Relay  # this process's one pub/sub connection for live replies

    @classmethod
    def build(cls, resources: Resources) -> Services:
        rooms = Rooms(resources)
        idle_timeout = resources.settings.stream_idle_timeout_seconds
        return cls(
            resources=resources,
            auth=AuthService(resources),
            rooms=rooms,
            messages=Messages(resources, rooms.cache),
            billing=Billing(resources),
            webhooks=StripeWebhooks(resources),
            # Quiet subscribers re-check often enough to notice a stalled reply in time.
            relay=Relay(
                resources.redis,
                resync_after=min(RESYNC_AFTER_SECONDS, idle_timeout / 3),
            ),
        )

    async def close(self) -> None:
        await self.relay.close()
        await self.resources.close()
