"""The Pro plan: subscribePro through the real stripe SDK against a fake Stripe, and signed,
idempotent, order-independent webhooks."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest

from gemini_graphql.config import Settings
from gemini_graphql.testing.fakes.stripe import (
    PRICE_ID,
    SECRET_KEY,
    WEBHOOK_SECRET,
    FakeStripe,
    sign,
)
from tests.auth_flows import ME, LoggedIn, login
from tests.chat_harness import create_room, send
from tests.conftest import GraphQLClient, RecordingSms
from tests.live import serve

SUBSCRIBE = "mutation { subscribePro { checkoutUrl sessionId errors { code field message } } }"
STATUS = "{ subscriptionStatus { tier status currentPeriodEnd cancelAtPeriodEnd } }"


@pytest.fixture
async def fake_stripe() -> AsyncIterator[tuple[FakeStripe, str]]:
    fake = FakeStripe()
    async with serve(fake.app) as url:
        yield fake, url


@pytest.fixture
def billing_settings(base_settings: Settings, fake_stripe) -> Settings:
    return replace(
        base_settings,
        stripe_secret_key=SECRET_KEY,
        stripe_publishable_key="pk_test_fake",
        stripe_webhook_secret=WEBHOOK_SECRET,
        stripe_price_id=PRICE_ID,
        stripe_api_base=fake_stripe[1],
        stripe_timeout_seconds=1.0,
    )


@pytest.fixture
async def http(make_client, billing_settings: Settings) -> httpx.AsyncClient:
    overrides = {
        k: getattr(billing_settings, k)
        for k in (
            "stripe_secret_key",
            "stripe_publishable_key",
            "stripe_webhook_secret",
            "stripe_price_id",
            "stripe_api_base",
            "stripe_timeout_seconds",
        )
    }
    return await make_client(**overrides)


@pytest.fixture
def gql(http: httpx.AsyncClient) -> GraphQLClient:
    return GraphQLClient(http)


async def deliver(http: httpx.AsyncClient, event: dict, **signing) -> httpx.Response:
    body, header = sign(event, **signing)
    return await http.post("/webhook/stripe", content=body, headers={"Stripe-Signature": header})


async def checkout(gql: GraphQLClient, user: LoggedIn) -> str:
    payload = (await gql(SUBSCRIBE, token=user.token))["data"]["subscribePro"]
    assert payload["errors"] == [], payload
    return payload["sessionId"]


async def tier(gql: GraphQLClient, user: LoggedIn) -> tuple[str, int]:
    me = (await gql(ME, token=user.token))["data"]["me"]
    return me["tier"], me["usage"]["limit"]


async def test_the_upgrade_story(gql: GraphQLClient, http, sms: RecordingSms, fake_stripe) -> None:
    fake, _ = fake_stripe
    user = await login(gql, sms)
    room_id = await create_room(gql, user.token)
    for _ in range(5):
        assert (await send(gql, user.token, room_id))["errors"] == []
    refused = await send(gql, user.token, room_id)
    assert refused["errors"][0]["code"] == "DAILY_LIMIT_REACHED"
    assert "subscribePro" in refused["errors"][0]["message"]

    payload = (await gql(SUBSCRIBE, token=user.token))["data"]["subscribePro"]
    assert (
        payload["checkoutUrl"].startswith("https://checkout.stripe.com/") and payload["sessionId"]
    )
    for event in fake.complete_checkout(payload["sessionId"]):
        assert (await deliver(http, event)).status_code == 200
    assert await tier(gql, user) == ("PRO", 1000)
    status = (await gql(STATUS, token=user.token))["data"]["subscriptionStatus"]
    assert status["tier"] == "PRO" and status["status"] == "active"
    assert status["currentPeriodEnd"] and status["cancelAtPeriodEnd"] is False
    accepted = await send(gql, user.token, room_id)
    assert accepted["errors"] == [] and accepted["usage"]["limit"] == 1000

    [subscription_id] = fake.subscriptions
    deleted = fake.change_subscription(
        subscription_id, "customer.subscription.deleted", int(time.time()) + 5, status="canceled"
    )
    assert (await deliver(http, deleted)).status_code == 200
    assert await tier(gql, user) == ("BASIC", 5)
    assert (await gql(STATUS, token=user.token))["data"]["subscriptionStatus"][
        "status"
    ] == "canceled"
    assert (await send(gql, user.token, room_id))["errors"][0]["code"] == "DAILY_LIMIT_REACHED"


async def test_checkout_session_parameters(
    gql: GraphQLClient, sms: RecordingSms, fake_stripe, billing_settings
) -> None:
    fake, _ = fake_stripe
    user = await login(gql, sms, email="ada@example.com")
    await checkout(gql, user)
    customer_call, session_call = fake.requests
    assert customer_call.path == "/v1/customers"
    assert customer_call.params["metadata"] == {"user_id": user.user_id}
    assert customer_call.params["email"] == "ada@example.com"
    params = session_call.params
    assert params["mode"] == "subscription"
    assert params["line_items"] == {"0": {"price": PRICE_ID, "quantity": "1"}}
    assert params["client_reference_id"] == user.user_id
    assert params["metadata"] == {"user_id": user.user_id}
    assert params["subscription_data"] == {"metadata": {"user_id": user.user_id}}
    assert params["customer"] in fake.customers
    assert params["success_url"] == billing_settings.stripe_success_url
    assert params["cancel_url"] == billing_settings.stripe_cancel_url
    assert session_call.idempotency_key


async def test_double_click_gives_one_session_and_one_customer(
    gql: GraphQLClient, sms: RecordingSms, fake_stripe, clock
) -> None:
    fake, _ = fake_stripe
    user = await login(gql, sms)
    first, second = await asyncio.gather(checkout(gql, user), checkout(gql, user))
    assert first == second
    assert len(fake.sessions) == 1 and len(fake.customers) == 1
    clock.advance(minutes=11)  # later, a new session for the same customer
    third = await checkout(gql, user)
    assert third != first and len(fake.customers) == 1
    assert fake.requests[-1].params["customer"] == next(iter(fake.customers))


async def test_pro_user_is_already_subscribed(
    gql: GraphQLClient, http, sms: RecordingSms, fake_stripe
) -> None:
    fake, _ = fake_stripe
    user = await login(gql, sms)
    for event in fake.complete_checkout(await checkout(gql, user)):
        await deliver(http, event)
    payload = (await gql(SUBSCRIBE, token=user.token))["data"]["subscribePro"]
    assert [e["code"] for e in payload["errors"]] == ["ALREADY_SUBSCRIBED"]
    assert payload["checkoutUrl"] is None


@pytest.mark.parametrize("failure", ["500", "hang"])
async def test_stripe_failing_or_hanging_is_payments_unavailable(
    gql: GraphQLClient, sms: RecordingSms, fake_stripe, failure: str
) -> None:
    fake, _ = fake_stripe
    user = await login(gql, sms)
    fake.failures.append(failure)
    started = time.monotonic()
    payload = (await gql(SUBSCRIBE, token=user.token))["data"]["subscribePro"]
    assert [e["code"] for e in payload["errors"]] == ["PAYMENTS_UNAVAILABLE"]
    assert payload["checkoutUrl"] is None
    assert time.monotonic() - started < 10  # bounded by STRIPE_TIMEOUT_SECONDS, not a hang
    assert SECRET_KEY not in json.dumps(payload)
    # And it works on the next click.
    assert (await gql(SUBSCRIBE, token=user.token))["data"]["subscribePro"]["errors"] == []


async def test_stripe_not_configured(make_client, sms: RecordingSms) -> None:
    gql = GraphQLClient(await make_client())
    user = await login(gql, sms)
    payload = (await gql(SUBSCRIBE, token=user.token))["data"]["subscribePro"]
    assert [e["code"] for e in payload["errors"]] == ["PAYMENTS_UNAVAILABLE"]
    body, header = sign({"id": "evt_1", "type": "x", "created": 1, "data": {"object": {}}})
    response = await gql.http.post(
        "/webhook/stripe", content=body, headers={"Stripe-Signature": header}
    )
    assert response.status_code == 503


async def test_subscription_status_before_any_subscription(
    gql: GraphQLClient, sms: RecordingSms
) -> None:
    user = await login(gql, sms)
    status = (await gql(STATUS, token=user.token))["data"]["subscriptionStatus"]
    assert status == {
        "tier": "BASIC",
        "status": "none",
        "currentPeriodEnd": None,
        "cancelAtPeriodEnd": False,
    }


async def test_billing_needs_a_login(gql: GraphQLClient) -> None:
    for document in (SUBSCRIBE, STATUS):
        assert (await gql(document))["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def a_valid_event(fake: FakeStripe) -> dict:
    return fake.event("customer.created", {"id": "cus_x", "object": "customer"}, int(time.time()))


@pytest.mark.parametrize(
    "headers_of",
    [
        lambda body, header: {},
        lambda body, header: {"Stripe-Signature": ""},
        lambda body, header: {"Stripe-Signature": "garbage"},
        lambda body, header: {"Stripe-Signature": "t=abc,v1=def"},
        lambda body, header: {"Stripe-Signature": header.split(",")[0]},  # no v1
        lambda body, header: {"Stripe-Signature": header[:-4] + "0000"},  # wrong signature
        lambda body, header: {"Stripe-Signature": sign(json.loads(body), secret="whsec_other")[1]},
    ],
    ids=[
        "missing",
        "empty",
        "garbage",
        "bad-timestamp",
        "no-v1",
        "wrong-signature",
        "wrong-secret",
    ],
)
async def test_bad_signatures_are_400_and_change_nothing(http, fake_stripe, pg, headers_of) -> None:
    body, header = sign(a_valid_event(fake_stripe[0]))
    response = await http.post("/webhook/stripe", content=body, headers=headers_of(body, header))
    assert response.status_code == 400
    assert await pg.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_tampered_body_is_400(http, fake_stripe, pg) -> None:
    event = a_valid_event(fake_stripe[0])
    body, header = sign(event)
    tampered = body.replace(b'"customer.created"', b'"customer.deleted"')
    response = await http.post(
        "/webhook/stripe", content=tampered, headers={"Stripe-Signature": header}
    )
    assert response.status_code == 400
    assert await pg.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_stale_signature_is_400(http, fake_stripe, pg) -> None:
    event = a_valid_event(fake_stripe[0])
    stale = await deliver(http, event, timestamp=int(time.time()) - 301)
    assert stale.status_code == 400
    assert (await deliver(http, event, timestamp=int(time.time()) - 250)).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"id": "evt_1"}',
        b'{"id": 5, "type": "x", "created": 1, "data": {"object": {}}}',
    ],
)
async def test_signed_but_malformed_events_are_400(http, pg, body: bytes) -> None:
    import stripe

    header = stripe.WebhookSignature.generate_signature_header(body.decode(), WEBHOOK_SECRET)
    response = await http.post(
        "/webhook/stripe", content=body, headers={"Stripe-Signature": header}
    )
    assert response.status_code == 400
    assert await pg.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_oversized_webhook_is_413(http) -> None:
    response = await http.post(
        "/webhook/stripe",
        content=b"x" * (1024 * 1024 + 1),
        headers={"Stripe-Signature": "t=1,v1=x"},
    )
    assert response.status_code == 413


async def test_unknown_event_types_are_ignored(http, fake_stripe, pg) -> None:
    response = await deliver(http, a_valid_event(fake_stripe[0]))
    assert response.status_code == 200 and response.json()["outcome"] == "ignored"


async def test_duplicates_change_nothing_sequentially_and_in_parallel(
    gql: GraphQLClient, http, sms: RecordingSms, fake_stripe, pg
) -> None:
    fake, _ = fake_stripe
    user = await login(gql, sms)
    completed, created, paid = fake.complete_checkout(await checkout(gql, user))
    outcomes = [(await deliver(http, created)).json()["outcome"] for _ in range(3)]
    assert outcomes == ["applied", "duplicate", "duplicate"]
    responses = await asyncio.gather(*(deliver(http, completed) for _ in range(10)))
    assert all(response.status_code == 200 for response in responses)
    assert sorted(r.json()["outcome"] for r in responses) == ["applied"] + ["duplicate"] * 9
    assert await pg.fetchval("SELECT count(*) FROM stripe_events") == 2
    assert await pg.fetchval("SELECT count(*) FROM subscriptions") == 1
    assert await tier(gql, user) == ("PRO", 1000)


async def test_parallel_different_events_of_one_subscription(
    gql: GraphQLClient, http, sms: RecordingSms, fake_stripe, pg
) -> None:
    fake, _ = fake_stripe
    user = await login(gql, sms)
    events = fake.complete_checkout(await checkout(gql, user))
    responses = await asyncio.gather(*(deliver(http, event) for event in events))
    assert all(response.status_code == 200 for response in responses)
    assert await pg.fetchval("SELECT count(*) FROM subscriptions") == 1
    assert await tier(gql, user) == ("PRO", 1000)


async def lifecycle(
    gql: GraphQLClient, sms: RecordingSms, fake: FakeStripe, ending: str
) -> tuple[LoggedIn, list[dict]]:
    user = await login(gql, sms)
    t = int(time.time())
    events = fake.complete_checkout(await checkout(gql, user), at=t)
    [subscription_id] = [
        e["data"]["object"]["id"] for e in events if e["type"] == "customer.subscription.created"
    ]
    change = fake.change_subscription
    if ending == "canceled":
        events += [
            change(
                subscription_id, "customer.subscription.updated", t + 10, cancel_at_period_end=True
            ),
            change(subscription_id, "customer.subscription.deleted", t + 20, status="canceled"),
        ]
    else:
        events += [
            fake.event(
                "invoice.payment_failed",
                {
                    "id": "in_f",
                    "object": "invoice",
                    "customer": events[1]["data"]["object"]["customer"],
                },
                t + 9,
            ),
            change(subscription_id, "customer.subscription.updated", t + 10, status="past_due"),
            change(
                subscription_id,
                "customer.subscription.updated",
                t + 20,
                status="active",
                cancel_at_period_end=True,
            ),
        ]
    return user, events


@pytest.mark.parametrize("ending", ["canceled", "active"])
async def test_any_delivery_order_ends_in_the_same_state(
    gql: GraphQLClient, http, sms: RecordingSms, fake_stripe, ending: str
) -> None:
    fake, _ = fake_stripe
    shuffler = random.Random(42)
    finals = set()
    for round_ in range(6):
        user, events = await lifecycle(gql, sms, fake, ending)
        order = list(reversed(events)) if round_ == 0 else shuffler.sample(events, len(events))
        for event in order:
            assert (await deliver(http, event)).status_code == 200
        status = (await gql(STATUS, token=user.token))["data"]["subscriptionStatus"]
        finals.add(
            (
                status["tier"],
                status["status"],
                status["cancelAtPeriodEnd"],
                status["currentPeriodEnd"] is not None,
            )
        )
    expected = (
        ("BASIC", "canceled", True, True) if ending == "canceled" else ("PRO", "active", True, True)
    )
    assert finals == {expected}


async def test_deleted_before_created_never_leaves_the_user_pro(
    gql: GraphQLClient, http, sms: RecordingSms, fake_stripe
) -> None:
    fake, _ = fake_stripe
    user = await login(gql, sms)
    t = int(time.time())
    completed, created, paid = fake.complete_checkout(await checkout(gql, user), at=t)
    subscription_id = created["data"]["object"]["id"]
    deleted = fake.change_subscription(
        subscription_id, "customer.subscription.deleted", t, status="canceled"
    )
    for event in (deleted, created, completed, paid):
        await deliver(http, event)
    assert await tier(gql, user) == ("BASIC", 5)


async def test_past_due_is_basic_and_says_why(
    gql: GraphQLClient, http, sms: RecordingSms, fake_stripe, pg
) -> None:
    fake, _ = fake_stripe
    user = await login(gql, sms)
    t = int(time.time())
    events = fake.complete_checkout(await checkout(gql, user), at=t)
    for event in events:
        await deliver(http, event)
    subscription_id = events[1]["data"]["object"]["id"]
    await deliver(
        http,
        fake.change_subscription(
            subscription_id, "customer.subscription.updated", t + 5, status="past_due"
        ),
    )
    assert await tier(gql, user) == ("BASIC", 5)
    assert (await gql(STATUS, token=user.token))["data"]["subscriptionStatus"][
        "status"
    ] == "past_due"
    room_id = await create_room(gql, user.token)
    for _ in range(5):
        await send(gql, user.token, room_id)
    refused = await send(gql, user.token, room_id)
    assert refused["errors"][0]["code"] == "DAILY_LIMIT_REACHED"
    assert "payment" in refused["errors"][0]["message"]
    await deliver(
        http,
        fake.change_subscription(
            subscription_id, "customer.subscription.updated", t + 9, status="active"
        ),
    )
    assert await tier(gql, user) == ("PRO", 1000)


async def test_an_old_update_does_not_overwrite_a_newer_state(
    gql: GraphQLClient, http, sms: RecordingSms, fake_stripe
) -> None:
    fake, _ = fake_stripe
    user = await login(gql, sms)
    t = int(time.time())
    events = fake.complete_checkout(await checkout(gql, user), at=t)
    subscription_id = events[1]["data"]["object"]["id"]
    old = fake.change_subscription(
        subscription_id, "customer.subscription.updated", t + 1, status="past_due"
    )
    new = fake.change_subscription(
        subscription_id, "customer.subscription.updated", t + 2, status="active"
    )
    for event in [*events, new, old]:
        await deliver(http, event)
    assert await tier(gql, user) == ("PRO", 1000)


async def test_events_for_unknown_users_are_accepted_and_ignored(http, fake_stripe, pg) -> None:
    fake, _ = fake_stripe
    orphan = fake.event(
        "customer.subscription.created",
        {
            "id": "sub_orphan",
            "object": "subscription",
            "customer": "cus_nobody",
            "status": "active",
            "metadata": {},
        },
        int(time.time()),
    )
    assert (await deliver(http, orphan)).status_code == 200
    assert await pg.fetchval("SELECT count(*) FROM subscriptions") == 0
