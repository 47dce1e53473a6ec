"""Scheduled clean-up: old one-time codes, old Stripe event ids and stranded replies, each
on its arq cron schedule and run once per tick however many workers there are; and the Redis
keys of finished replies all expire."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq.constants import result_key_prefix

from gemini_graphql.app import worker as worker_module
from gemini_graphql.app.worker import (
    build_worker,
    delete_expired_otps,
    delete_old_stripe_event_ids,
    requeue_stranded_replies,
)
from gemini_graphql.auth.cleanup import OTP_KEEP
from gemini_graphql.auth.otp import SEND_WINDOW, TTL
from gemini_graphql.billing.cleanup import STRIPE_EVENT_KEEP
from gemini_graphql.chat import reply_stream
from gemini_graphql.chat.reply_queue import reply_job_id
from gemini_graphql.chat.reply_stream import ReplyChannels, history
from gemini_graphql.config import RedisNames, Settings
from gemini_graphql.infra import db
from gemini_graphql.testing.fakes.gemini import Script
from tests.chat_harness import Live, running_worker, send, stream, user_with_room
from tests.conftest import FakeClock, RecordingSms
from tests.redis_claim import CLAIM_KEY, MARK_KEY
from tests.test_replies import wait_finished

WORKER_LOG = "gemini_graphql.app.worker"


@contextlib.asynccontextmanager
async def worker_ctx(settings: Settings, clock: FakeClock) -> AsyncIterator[dict[str, Any]]:
    """The ctx a running worker hands its jobs (its own startup fills it), without running
    the worker: no cron tick of its own interferes."""
    worker = build_worker(settings, clock=clock, handle_signals=False)
    ctx: dict[str, Any] = {**worker.ctx, "redis": worker.pool}
    await worker.on_startup(ctx)
    try:
        yield ctx
    finally:
        await worker.on_shutdown(ctx)


async def add_otp(pg, now: datetime, *, age: timedelta, used: bool = False, ttl=TTL) -> uuid.UUID:
    otp_id = uuid.uuid4()
    created = now - age
    await pg.execute(
        "INSERT INTO otps (id, mobile_number, code_hash, purpose, expires_at, attempts,"
        " used_at, created_at) VALUES ($1, '+14155550100', $2, 'login', $3, 0, $4, $5)",
        otp_id,
        "0" * 64,
        created + ttl,
        created + timedelta(seconds=30) if used else None,
        created,
    )
    return otp_id


async def remaining(pg, table: str) -> set[Any]:
    return {row["id"] for row in await pg.fetch(f"SELECT id FROM {table}")}


def cleanup_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == WORKER_LOG and text in r.message]


def test_the_schedules() -> None:
    """OTPs hourly, Stripe event ids daily, stranded replies every minute (and at start); in
    UTC; each keeping its result, so a worker late to a tick finds it taken."""
    assert max(TTL, SEND_WINDOW) < OTP_KEEP  # never a code the throttle still counts
    assert timedelta(days=3) < STRIPE_EVENT_KEEP  # Stripe's retries are over
    names = RedisNames("a-deployment")
    jobs = {job.name.removeprefix("a-deployment:"): job for job in worker_module.cron_jobs(names)}
    start = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)

    def runs(name: str, count: int) -> list[datetime]:
        job = jobs[name]
        job.next_run = None
        at, found = start, []
        for _ in range(count):
            job.calculate_next(at)
            assert job.next_run is not None
            at = job.next_run
            found.append(at.replace(microsecond=0))
        return found

    assert runs("cron:requeue_stranded_replies", 2) == [
        datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 2, tzinfo=UTC),
    ]
    assert runs("cron:delete_expired_otps", 2) == [
        datetime(2026, 1, 1, 0, 5, tzinfo=UTC),
        datetime(2026, 1, 1, 1, 5, tzinfo=UTC),
    ]
    assert runs("cron:delete_old_stripe_event_ids", 2) == [
        datetime(2026, 1, 1, 3, 35, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 35, tzinfo=UTC),
    ]
    assert jobs["cron:requeue_stranded_replies"].run_at_startup
    assert not jobs["cron:delete_expired_otps"].run_at_startup
    assert not jobs["cron:delete_old_stripe_event_ids"].run_at_startup
    for job in jobs.values():
        assert job.unique and job.job_id is None  # one job id per tick
        assert job.keep_result_s == worker_module.CRON_RESULT_KEEP_SECONDS


async def test_build_worker_registers_the_cron_jobs(
    chat_settings: Settings, clock: FakeClock
) -> None:
    worker = build_worker(chat_settings, clock=clock, handle_signals=False)
    names = chat_settings.redis_names
    try:
        assert {job.name for job in worker.cron_jobs} == {
            names.key("cron:requeue_stranded_replies"),
            names.key("cron:delete_expired_otps"),
            names.key("cron:delete_old_stripe_event_ids"),
        }
        assert {job.coroutine for job in worker.cron_jobs} == {
            requeue_stranded_replies,
            delete_expired_otps,
            delete_old_stripe_event_ids,
        }
        assert worker.timezone == UTC
    finally:
        await worker.on_shutdown({})  # closes its connections


async def test_old_used_or_expired_otps_are_deleted(
    chat_settings: Settings, clock: FakeClock, pg, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    now = clock.now
    gone = {
        await add_otp(pg, now, age=timedelta(days=2)),  # expired long ago
        await add_otp(pg, now, age=timedelta(days=1, minutes=1), used=True),
    }
    kept = {
        await add_otp(pg, now, age=timedelta(hours=23)),  # expired, but younger than a day
        await add_otp(pg, now, age=timedelta(minutes=30), used=True),  # the throttle counts it
        await add_otp(pg, now, age=timedelta(minutes=2)),  # still usable
        # Older than a day yet neither used nor expired (a TTL longer than a day): kept.
        await add_otp(pg, now, age=timedelta(days=2), ttl=timedelta(days=3)),
    }
    async with worker_ctx(chat_settings, clock) as ctx:
        assert await delete_expired_otps(ctx) == 2
        assert await remaining(pg, "otps") == kept
        assert await delete_expired_otps(ctx) == 0
    assert cleanup_lines(caplog, "one-time codes") == [
        "deleted 2 old one-time codes",
        "deleted 0 old one-time codes",
    ]
    assert not gone & await remaining(pg, "otps")


async def test_many_old_otps_are_deleted_in_batches(
    chat_settings: Settings, clock: FakeClock, pg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "DELETE_BATCH", 7)
    old = clock.now - timedelta(days=2)
    await pg.executemany(
        "INSERT INTO otps (id, mobile_number, code_hash, purpose, expires_at, attempts,"
        " created_at) VALUES ($1, '+14155550101', $2, 'login', $3, 0, $4)",
        [(uuid.uuid4(), "1" * 64, old + TTL, old) for _ in range(30)],
    )
    async with worker_ctx(chat_settings, clock) as ctx:
        assert await delete_expired_otps(ctx) == 30
    assert await remaining(pg, "otps") == set()


async def test_stripe_event_ids_are_deleted_after_30_days(
    chat_settings: Settings, clock: FakeClock, pg, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    ages = {
        "evt_old": timedelta(days=30, minutes=1),
        "evt_older": timedelta(days=90),
        "evt_29_days": timedelta(days=29, hours=23),
        "evt_retried": timedelta(days=3),
        "evt_new": timedelta(seconds=5),
    }
    for event_id, age in ages.items():
        await pg.execute(
            "INSERT INTO stripe_events (id, type, received_at) VALUES ($1, $2, $3)",
            event_id,
            "invoice.paid",
            clock.now - age,
        )
    async with worker_ctx(chat_settings, clock) as ctx:
        assert await delete_old_stripe_event_ids(ctx) == 2
    assert await remaining(pg, "stripe_events") == {"evt_29_days", "evt_retried", "evt_new"}
    assert cleanup_lines(caplog, "Stripe") == ["deleted 2 old Stripe event ids"]


async def test_a_pending_reply_stranded_for_days_is_failed_readably(
    live: Live,
    chat_settings: Settings,
    clock: FakeClock,
    sms: RecordingSms,
    redis_client,
    pg,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sweep finds unfinished replies at any age: one PENDING for three days (its job
    lost) is failed with a readable error, its unit given back to the day it was spent on."""
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    user, room_id = await user_with_room(live.http, sms)
    reply_id = (await send(live.http, user.token, room_id, "anyone there?"))["reply"]["id"]
    names = chat_settings.redis_names
    job_id = reply_job_id(names, uuid.UUID(reply_id))
    await redis_client.delete(f"arq:job:{job_id}")  # Redis lost its job
    await redis_client.zrem(names.arq_queue, job_id)
    user_id = uuid.UUID(user.user_id)
    spent = await pg.fetchrow(
        "SELECT daily_message_count, last_message_date FROM users WHERE id = $1", user_id
    )
    assert spent["daily_message_count"] == 1
    clock.advance(days=3)

    async with worker_ctx(chat_settings, clock) as ctx:
        assert await requeue_stranded_replies(ctx) == 0  # nothing queued again: failed
    row = await pg.fetchrow("SELECT * FROM messages WHERE id = $1", uuid.UUID(reply_id))
    assert row["status"] == "failed"
    assert row["error"] == "The assistant could not finish this reply."
    assert row["content"] == ""
    after = await pg.fetchrow(
        "SELECT daily_message_count, last_message_date FROM users WHERE id = $1", user_id
    )
    # give_back_one returns the unit to the day it was counted on (three days ago); today's
    # count starts from zero anyway.
    assert after["last_message_date"] == spent["last_message_date"]
    assert after["daily_message_count"] == 0
    # Its subscribers get the end, and the stream then expires.
    channels = ReplyChannels(names)
    events = await history(redis_client, channels, uuid.UUID(reply_id))
    assert [event.status.value for event in events] == ["failed"]
    assert (
        0
        < await redis_client.ttl(channels.stream(uuid.UUID(reply_id)))
        <= (reply_stream.FINISHED_TTL_SECONDS)
    )
    assert cleanup_lines(caplog, "stranded") == [
        "queued 0 stranded replies again, failed 1 older ones"
    ]
    assert await redis_client.zcard(names.arq_queue) == 0


async def test_each_tick_runs_once_across_workers(
    chat_settings: Settings, clock: FakeClock, pg, redis_client, caplog: pytest.LogCaptureFixture
) -> None:
    """Two workers at the same tick, and a third reaching it after the run finished: the
    tick's job id is taken (queued, then its result kept), so the job runs once."""
    caplog.set_level(logging.INFO, logger=WORKER_LOG)
    for _ in range(3):
        await add_otp(pg, clock.now, age=timedelta(days=2))
    tick = datetime.now(UTC) + timedelta(seconds=1.5)

    names = chat_settings.redis_names
    name = names.key("cron:delete_expired_otps")

    def at_tick(worker) -> None:
        (job,) = (job for job in worker.cron_jobs if job.name == name)
        job.next_run = tick

    async with (
        running_worker(chat_settings, clock, idle_poll_seconds=0.1) as first,
        running_worker(chat_settings, clock, idle_poll_seconds=0.1) as second,
    ):
        at_tick(first)
        at_tick(second)
        async with asyncio.timeout(10):
            while not cleanup_lines(caplog, "one-time codes"):
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # time for a second run, were there one
        async with running_worker(chat_settings, clock, idle_poll_seconds=0.1) as late:
            at_tick(late)  # a tick now past: enqueued at once, if its id were free
            await asyncio.sleep(1.5)
    assert cleanup_lines(caplog, "one-time codes") == ["deleted 3 old one-time codes"]
    assert await remaining(pg, "otps") == set()
    job_id = f"{name}:{round(tick.timestamp() * 1000)}"
    assert await redis_client.exists(result_key_prefix + job_id)
    # Not queued again by the late worker either (to run once arq's in-progress mark of the
    # finished run expires, 60 s on).
    assert await redis_client.zscore(names.arq_queue, job_id) is None


async def test_finished_replies_leave_no_redis_key_without_expiry(
    live: Live,
    chat_settings: Settings,
    clock: FakeClock,
    sms: RecordingSms,
    redis_client,
    pg,
    fake_gemini,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a journey of 200 finished replies, every key in the run's Redis database has an
    expiry (a stream's at most FINISHED_TTL_SECONDS), and once that passes no stream is left:
    nothing grows without bound."""
    finished_ttl = 2
    monkeypatch.setattr(reply_stream, "FINISHED_TTL_SECONDS", finished_ttl)
    fake, _ = fake_gemini
    fake.default = Script(chunks=["fine, ", "thanks."])
    user, room_id = await user_with_room(live.http, sms)
    await pg.execute(
        "UPDATE users SET subscription_tier = 'pro' WHERE id = $1", uuid.UUID(user.user_id)
    )
    replies: list[str] = []
    async with running_worker(chat_settings, clock, idle_poll_seconds=0.1):
        for _ in range(20):
            sent = await asyncio.gather(
                *(send(live.http, user.token, room_id, "how are you?") for _ in range(10))
            )
            assert all(payload["errors"] == [] for payload in sent), sent
            replies += [payload["reply"]["id"] for payload in sent]
        for reply_id in replies:
            assert (await wait_finished(pg, reply_id, timeout=60))["status"] == "complete"
        seen = await stream(live.ws_url, user.token, replies[-1])
        assert seen.completed and seen.text == "fine, thanks."
        # arq takes a job out of its queue just after the job returns (after the final row
        # and event): wait for the last ones. The queue then holds cron ticks at most; it is
        # the work to do, bounded by it, and has no expiry of its own.
        queue = chat_settings.redis_names.arq_queue
        async with asyncio.timeout(15):
            while any(b":reply:" in job for job in await redis_client.zrange(queue, 0, -1)):
                await asyncio.sleep(0.05)

        keys = [key async for key in redis_client.scan_iter(count=1000) if key != queue.encode()]
        ttls = dict(
            zip(keys, await asyncio.gather(*(redis_client.ttl(k) for k in keys)), strict=True)
        )
        forever = {
            key.decode()
            for key, ttl in ttls.items()
            if ttl == -1 and key.decode() not in (CLAIM_KEY, MARK_KEY)
        }
        assert forever == set()
        channels = ReplyChannels(chat_settings.redis_names)
        streams = {channels.stream(uuid.UUID(reply_id)).encode() for reply_id in replies}
        # The earliest may have expired already; those left expire within the finished TTL.
        present = {key for key in streams if ttls.get(key, -2) != -2}
        assert {key: ttls[key] for key in present if not 0 <= ttls[key] <= finished_ttl} == {}
        reply_keys = chat_settings.redis_names.key("reply:")
        assert not {key for key in ttls if key.startswith(reply_keys.encode())} - streams

        await asyncio.sleep(finished_ttl + 1)
    left = [key async for key in redis_client.scan_iter(match=f"{reply_keys}*", count=1000)]
    assert left == []
