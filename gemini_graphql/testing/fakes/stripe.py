"""A fake Stripe API for the real `stripe` SDK: form-encoded requests, Stripe-shaped objects.

It checks the secret key, honours Idempotency-Key like Stripe (same key, same
answer), records every request, can be told to fail or hang, and can complete
a checkout the way Stripe would: by producing the events Stripe sends, which
tests sign with the SDK's own signing helper and post to the app.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import stripe
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SECRET_KEY = "sk_test_fake_secret_key_for_tests"
WEBHOOK_SECRET = "whsec_fake_webhook_secret_for_tests"
PRICE_ID = "price_pro_monthly"
MONTH = 30 * 24 * 3600


@dataclass
class StripeRequest:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str | None


@dataclass
class FakeStripe:
    requests: list[StripeRequest] = field(default_factory=list)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # "500" or "hang", for the next requests
    _idempotent: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/customers", self._create_customer, methods=["POST"]),
                Route("/v1/checkout/sessions", self._create_session, methods=["POST"]),
                Route("/v1/subscriptions/{id}", self._get_subscription, methods=["GET"]),
            ]
        )

    def _id(self, prefix: str) -> str:
        return f"{prefix}_test_{next(self._ids):08d}"

    async def _guard(self, request: Request) -> tuple[dict[str, Any], Response | None]:
        body = (await request.body()).decode()
        params = _nest(parse_qsl(body, keep_blank_values=True))
        key = request.headers.get("idempotency-key")
        self.requests.append(StripeRequest(request.method, request.url.path, params, key))
        if request.headers.get("authorization") != f"Bearer {SECRET_KEY}":
            return params, _error(401, "invalid_request_error", "Invalid API Key provided.")
        if self.failures:
            failure = self.failures.pop(0)
            if failure == "hang":
                await asyncio.sleep(3600)
            return params, _error(int(failure), "api_error", "Scripted failure.")
        if key and (request.url.path, key) in self._idempotent:
            return params, JSONResponse(self._idempotent[(request.url.path, key)])
        return params, None

    def _remember(self, request: Request, obj: dict[str, Any]) -> JSONResponse:
        key = request.headers.get("idempotency-key")
        if key:
            self._idempotent[(request.url.path, key)] = obj
        return JSONResponse(obj)

    async def _create_customer(self, request: Request) -> Response:
        params, refusal = await self._guard(request)
        if refusal:
            return refusal
        customer = {
            "id": self._id("cus"),
            "object": "customer",
            "email": params.get("email"),
            "phone": params.get("phone"),
            "metadata": params.get("metadata", {}),
            "created": int(time.time()),
            "livemode": False,
        }
        self.customers[customer["id"]] = customer
        return self._remember(request, customer)

    async def _create_session(self, request: Request) -> Response:
        params, refusal = await self._guard(request)
        if refusal:
            return refusal
        line_items = params.get("line_items", {})
        if params.get("mode") != "subscription" or not line_items:
            return _error(400, "invalid_request_error", "Missing mode or line_items.")
        if params.get("customer") not in self.customers:
            return _error(400, "invalid_request_error", "No such customer.")
        session_id = self._id("cs")
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "subscription",
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            "customer": params["customer"],
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "status": "open",
            "payment_status": "unpaid",
            "subscription": None,
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "created": int(time.time()),
            "expires_at": int(time.time()) + 24 * 3600,
            "livemode": False,
            # Kept for completing the checkout later (Stripe keeps them too).
            "_line_items": line_items,
            "_subscription_data": params.get("subscription_data", {}),
        }
        self.sessions[session_id] = session
        return self._remember(request, _public(session))

    async def _get_subscription(self, request: Request) -> Response:
        _, refusal = await self._guard(request)
        if refusal:
            return refusal
        subscription = self.subscriptions.get(request.path_params["id"])
        if subscription is None:
            return _error(404, "invalid_request_error", "No such subscription.")
        return JSONResponse(subscription)

    # What Stripe does when the user pays, and later.

    def complete_checkout(self, session_id: str, at: int | None = None) -> list[dict[str, Any]]:
        """Pay the session: a subscription is created; returns the events Stripe would send."""
        at = at or int(time.time())
        session = self.sessions[session_id]
        price = session["_line_items"]["0"]["price"]
        subscription = {
            "id": self._id("sub"),
            "object": "subscription",
            "customer": session["customer"],
            "status": "active",
            "cancel_at_period_end": False,
            "created": at,
            "start_date": at,
            "metadata": session["_subscription_data"].get("metadata", {}),
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": self._id("si"),
                        "object": "subscription_item",
                        "price": {"id": price, "object": "price"},
                        "quantity": 1,
                        "current_period_start": at,
                        "current_period_end": at + MONTH,
                    }
                ],
            },
            "livemode": False,
        }
        self.subscriptions[subscription["id"]] = subscription
        session.update(status="complete", payment_status="paid", subscription=subscription["id"])
        invoice = {
            "id": self._id("in"),
            "object": "invoice",
            "customer": session["customer"],
            "status": "paid",
            "parent": {"subscription_details": {"subscription": subscription["id"]}},
            "lines": {"data": [{"period": {"start": at, "end": at + MONTH}}]},
        }
        return [
            self.event("checkout.session.completed", _public(session), at),
            self.event("customer.subscription.created", subscription, at),
            self.event("invoice.paid", invoice, at),
        ]

    def change_subscription(
        self, subscription_id: str, event_type: str, at: int, **changes: Any
    ) -> dict[str, Any]:
        subscription = self.subscriptions[subscription_id]
        subscription.update(changes)
        return self.event(event_type, json.loads(json.dumps(subscription)), at)

    def event(self, event_type: str, obj: dict[str, Any], at: int) -> dict[str, Any]:
        return {
            "id": self._id("evt"),
            "object": "event",
            "api_version": stripe.api_version,
            "created": at,
            "type": event_type,
            "data": {"object": json.loads(json.dumps(obj))},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
        }


def sign(
    event: dict[str, Any], secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[bytes, str]:
    """The body and Stripe-Signature header Stripe would send, made by the SDK's own helper."""
    body = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=timestamp)
    return body.encode(), header


def _public(session: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in session.items() if not key.startswith("_")}


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (`a[b][0][c]=v`) back into nested dicts (list indexes as keys)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return root


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)
