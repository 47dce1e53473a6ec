"""POST /webhook/stripe: verify, record, apply. Fast: a few database writes."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from gemini_graphql.billing.webhooks import BadWebhook, StripeWebhooks
from gemini_graphql.infra.outages import RETRY_AFTER_SECONDS, is_outage

log = logging.getLogger(__name__)


async def stripe_webhook(request: Request) -> JSONResponse:
    webhooks: StripeWebhooks = request.app.state.services.webhooks
    if not webhooks.configured:
        return JSONResponse({"error": "Stripe webhooks are not configured."}, status_code=503)
    payload = await request.body()  # the raw bytes: the signature covers exactly these
    try:
        event = webhooks.verify(payload, request.headers.get("stripe-signature"))
        outcome = await webhooks.handle(event)
    except BadWebhook as exc:
        log.warning("refused a Stripe webhook: %s", exc)
        return JSONResponse({"error": "Invalid webhook."}, status_code=400)
    except Exception as exc:
        if not is_outage(exc):
            raise
        # Nothing was recorded (one transaction): Stripe delivers the event again later.
        log.warning("Stripe webhook deferred: the database is unavailable (%s)", type(exc).__name__)
        return JSONResponse(
            {"error": "Temporarily unavailable; retry later."},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return JSONResponse({"received": True, "outcome": outcome.value})
