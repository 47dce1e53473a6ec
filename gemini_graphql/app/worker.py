"""The arq worker: runs `generate_reply` jobs queued by sendMessage."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC
from typing import TYPE_CHECKING, Any

from arq import Retry
from arq.constants import health_check_key_suffix, in_progress_key_prefix
from arq.cron import CronJob, cron
from arq.worker import Worker, func
from redis.exceptions import RedisError

from gemini_graphql.ai.gemini import GeminiModel
from gemini_graphql.ai.model import ChatModel
from gemini_graphql.ai.offline import OfflineModel
from gemini_graphql.auth.cleanup import delete_old_otps
from gemini_graphql.billing.cleanup import delete_old_stripe_events
from gemini_graphql.chat.replies import ReplyGenerator, RetryLater
from gemini_graphql.chat.reply_queue import (
    GENERATE_REPLY,
    IDLE_POLL_SECONDS,
    WAKE_CHANNEL,
    Wakeups,
    enqueue_reply,
)
from gemini_graphql.chat.reply_stream import ReplyChannels
from gemini_graphql.chat.room_events import RoomEventChannels
from gemini_graphql.chat.stops import STOP_CHANNEL, StopRequests
from gemini_graphql.clock import Clock, utc_now
from gemini_graphql.config import RedisNames, Settings
from gemini_graphql.infra.outages import Outage, is_outage
from gemini_graphql.infra.relay import LagProbe, Relay
from gemini_graphql.infra.resources import Resources
from gemini_graphql.metrics import (
    CLEANED,
    JOBS_FINISHED,
    JOBS_STARTED,
    QUEUE_DEPTH,
    QUEUE_OLDEST_AGE,
)
from gemini_graphql.models import UNFINISHED_STATUSES, MessageStatus

if TYPE_CHECKING:
    from gemini_graphql.infra.otel import Tracing

log = logging.getLogger(__name__)

# A killed worker's job becomes runnable again after the job timeout + 10 s (arq's in-progress
# key): with the default WORKER_JOB_TIMEOUT_SECONDS of 45, within a minute.
MAX_TRIES = 4  # model failures worth retrying
# Every run of a job counts: model retries, waits for PostgreSQL or Redis to return, and
# reruns after a killed worker. Past this the reply fails; a job lost even so (arq gave up
# while the database was away) is found by the stranded-reply sweep.
MAX_JOB_TRIES = 25
OUTAGE_RETRY_MAX_SECONDS = 30.0
CONCURRENT_JOBS = 50
# How often a worker writes its arq health-check key (arq's default is hourly); the key lives
# a second longer. Its poll loop writes it, which waits while all its job slots are busy.
WORKER_HEALTH_SECONDS = 15  # replies mostly wait on the network
# arq gives each tick of a cron job one job id, and refuses to queue an id it holds (queued,
# or its result kept), so one worker runs each tick. A worker reaching the tick after the run
# has finished would queue it again (arq keeps no result of a cron job by default), and it
# would run once arq's in-progress mark of the first run expires (60 s): the result, kept
# this long, turns that worker away.
CRON_RESULT_KEEP_SECONDS = 600
QUEUE_METRICS_SECONDS = 5.0  # how often a worker reads the queue's depth and oldest job
# Jobs looked at for the oldest waiting one, a page at a time (running ones are skipped).
QUEUE_AGE_PAGE = 200
QUEUE_AGE_SCAN_MAX = 5000
_JOB_OUTCOMES = {
    outcome: JOBS_FINISHED.labels(outcome)
    for outcome in ("completed", "failed", "stopped", "retried", "skipped", "error", "cancelled")
}
_OUTCOME_OF = {
    MessageStatus.COMPLETE: "completed",
    MessageStatus.FAILED: "failed",
    MessageStatus.STOPPED: "stopped",
}


async def generate_reply(
    ctx: dict[str, Any], reply_id: str, trace: dict[str, str] | None = None
) -> str | None:
    """`trace`: the sender's trace context, in jobs queued while the api traces; a worker
    that traces takes it in its job wrapper (infra.otel), one that does not ignores it."""
    generator: ReplyGenerator = ctx["generator"]
    settings: Settings = ctx["settings"]
    job_try: int = ctx["job_try"]
    started = time.perf_counter()
    context = {"job_id": ctx.get("job_id")}
    JOBS_STARTED.inc()
    try:
        if job_try > MAX_JOB_TRIES:  # it kept failing: stop, keeping what was sent
            await generator.fail(uuid.UUID(reply_id), "The assistant could not finish this reply.")
            log.warning(
                "reply gave up after %d tries",
                job_try - 1,
                extra={**context, "outcome": "failed"},
            )
            _JOB_OUTCOMES["failed"].inc()
            return "failed"
        outcome = await generator.generate(uuid.UUID(reply_id), final_try=job_try >= MAX_TRIES)
    except RetryLater as exc:
        delay = settings.gemini_retry_base_seconds * 2 ** (job_try - 1)
        log.info(
            "reply retried in %.2fs (try %d): %s",
            delay,
            job_try,
            exc,
            extra={**context, "outcome": "retry"},
        )
        ctx["wakeups"].wake_in(delay)
        _JOB_OUTCOMES["retried"].inc()
        raise Retry(defer=delay) from exc
    except asyncio.CancelledError:  # arq's job timeout, or the worker shutting down
        _JOB_OUTCOMES["cancelled"].inc()
        raise
    except Exception as exc:
        if not is_outage(exc):
            _JOB_OUTCOMES["error"].inc()
            raise
        # PostgreSQL or Redis went away mid-reply: run it again once they are back (the
        # rerun continues from what subscribers were sent).
        delay = min(OUTAGE_RETRY_MAX_SECONDS, 0.5 * 2 ** (job_try - 1))
        log.info(
            "reply waits %.1fs for %s (try %d)",
            delay,
            type(exc).__name__,
            job_try,
            extra={**context, "outcome": "retry"},
        )
        ctx["wakeups"].wake_in(delay)
        _JOB_OUTCOMES["retried"].inc()
        raise Retry(defer=delay) from exc
    _JOB_OUTCOMES[_OUTCOME_OF.get(outcome.status, "error") if outcome else "skipped"].inc()
    result = outcome.status.value if outcome else "nothing to do"
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    log.info(
        "reply %s in %.1fms",
        result,
        duration_ms,
        extra={**context, "outcome": result, "duration_ms": duration_ms},
    )
    return result


class ReplyWorker(Worker):
    """arq's Worker, polling its queue when woken (see reply_queue) instead of on a timer,
    and outliving Redis: arq's own loop ends (and the process exits) at the first failed
    poll; this one logs the outage once, waits with a capped backoff, and carries on."""

    def __init__(self, *args: Any, wakeups: Wakeups, **kwargs: Any) -> None:
        super().__init__(*args, poll_delay=0, **kwargs)
        self.wakeups = wakeups
        self.redis_outage = Outage(log, "Redis (job queue)")

    async def main(self) -> None:
        while True:  # arq's start talks to Redis first: wait until it answers
            try:
                await self.pool.ping()
            except (RedisError, OSError) as exc:
                await asyncio.sleep(self.redis_outage.failed(exc))
            else:
                self.redis_outage.recovered()
                break
        queue_metrics = asyncio.create_task(self._measure_queue(), name="queue-metrics")
        try:
            await super().main()
        finally:
            queue_metrics.cancel()

    async def _measure_queue(self) -> None:
        """QUEUE_DEPTH and QUEUE_OLDEST_AGE every few seconds. A job's score in arq's queue
        is when it is due, in ms; running jobs stay in the queue until they end, so the
        oldest waiting one is the first due among the first few that are not running."""
        while True:
            with suppress(RedisError, OSError):  # the poll loop reports an outage
                await self._read_queue()
            await asyncio.sleep(QUEUE_METRICS_SECONDS)

    async def _read_queue(self) -> None:
        QUEUE_DEPTH.set(await self.pool.zcard(self.queue_name))
        due = await self._first_due()
        QUEUE_OLDEST_AGE.set(0.0 if due is None else max(0.0, time.time() - due / 1000))

    async def _first_due(self) -> float | None:
        """When the first job that is not running was due (ms); None when none waits. Pages
        past the running ones, which every busy worker holds CONCURRENT_JOBS of."""
        for start in range(0, QUEUE_AGE_SCAN_MAX, QUEUE_AGE_PAGE):
            page = await self.pool.zrange(
                self.queue_name, start, start + QUEUE_AGE_PAGE - 1, withscores=True
            )
            if not page:
                return None
            async with self.pool.pipeline(transaction=False) as pipe:
                for job_id, _ in page:
                    pipe.exists(in_progress_key_prefix + job_id.decode())
                running = await pipe.execute()
            for (_, due), busy in zip(page, running, strict=True):
                if not busy:
                    return float(due)
        return None

    async def _poll_iteration(self) -> None:
        self.wakeups.clear()
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            await asyncio.sleep(self.redis_outage.failed(exc))
            return
        self.redis_outage.recovered()
        await self.wakeups.wait()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # A job stays in arq's queue while it runs, and arq checks each one it reads at every
        # poll (WATCH, EXISTS, ZSCORE: a round trip each) only to find it running: with 50
        # replies under way, a quarter of the worker's CPU. Those running here are skipped.
        running = self.tasks
        job_ids = [
            job_id
            for job_id in job_ids
            if (task := running.get(job_id.decode())) is None or task.done()
        ]
        try:
            await super().start_jobs(job_ids)
        except (RedisError, OSError):
            # arq took a slot (its semaphore and job counter) for the job it was starting
            # and gives it back only from the job's task, which never began: give it back,
            # or each outage would leave the worker one job short for good.
            self.job_counter -= 1
            self.sem.release()
            raise


async def requeue_stranded_replies(ctx: dict[str, Any]) -> int:
    """Every minute (and at start): queue again the replies nobody is working on (see
    ReplyGenerator.stranded), and fail those stranded too long to be worth finishing.

    arq refuses a job id it already holds, so a reply whose job merely waits is left alone.
    """
    generator: ReplyGenerator = ctx["generator"]
    stranded = await generator.stranded()
    for reply_id in stranded.give_up:
        await generator.fail(reply_id, "The assistant could not finish this reply.")
    CLEANED.labels("stranded_replies_failed").inc(len(stranded.give_up))
    requeued = 0
    for reply_id in stranded.resume:
        requeued += await enqueue_reply(
            ctx["resources"].redis, ctx["settings"].redis_names, reply_id
        )
    if requeued or stranded.give_up:
        log.warning(
            "queued %d stranded replies again, failed %d older ones",
            requeued,
            len(stranded.give_up),
            extra={"outcome": "requeued"},
        )
    CLEANED.labels("stranded_replies_requeued").inc(requeued)
    return requeued


async def delete_expired_otps(ctx: dict[str, Any]) -> int:
    """Hourly: the one-time codes older than a day, used or expired (auth.cleanup)."""
    resources: Resources = ctx["resources"]
    deleted = await delete_old_otps(resources.database, resources.clock())
    log.info("deleted %d old one-time codes", deleted, extra={"outcome": "cleaned"})
    CLEANED.labels("otps_deleted").inc(deleted)
    return deleted


async def delete_old_stripe_event_ids(ctx: dict[str, Any]) -> int:
    """Daily: the processed Stripe event ids older than 30 days (billing.cleanup)."""
    resources: Resources = ctx["resources"]
    deleted = await delete_old_stripe_events(resources.database, resources.clock())
    log.info("deleted %d old Stripe event ids", deleted, extra={"outcome": "cleaned"})
    CLEANED.labels("stripe_event_ids_deleted").inc(deleted)
    return deleted


def cron_jobs(names: RedisNames) -> list[CronJob]:
    """The scheduled jobs, times in UTC; each tick runs once across all workers of the
    deployment. A tick's job id is `<name>:<time>`: the names carry the deployment's prefix,
    or deployments sharing a Redis database would run each other's ticks."""
    keep = CRON_RESULT_KEEP_SECONDS

    def named(job: Callable[..., Any]) -> str:
        return names.key(f"cron:{job.__name__}")

    return [
        # Every minute, and at each start.
        cron(
            requeue_stranded_replies,
            name=named(requeue_stranded_replies),
            run_at_startup=True,
            keep_result=keep,
        ),
        cron(  # hourly, at :05
            delete_expired_otps, name=named(delete_expired_otps), minute=5, keep_result=keep
        ),
        cron(  # daily
            delete_old_stripe_event_ids,
            name=named(delete_old_stripe_event_ids),
            hour=3,
            minute=35,
            keep_result=keep,
        ),
    ]


def default_model(settings: Settings) -> ChatModel:
    """Gemini with a key; otherwise the offline model (production refuses to start without one)."""
    return GeminiModel(settings) if settings.gemini_api_key else OfflineModel()


# What generate_reply returns once the reply's final event is out (for its span).
_FINISHED = frozenset(status.value for status in MessageStatus if status not in UNFINISHED_STATUSES)


def traced_model(model: ChatModel, tracing: Tracing, settings: Settings) -> ChatModel:
    from gemini_graphql.ai.traced import TracedModel  # imports the OpenTelemetry SDK

    if isinstance(model, GeminiModel):
        return TracedModel(model, tracing, provider="gcp.gemini", name=settings.gemini_model)
    return TracedModel(model, tracing, provider="gemini_graphql", name=type(model).__name__)


def build_worker(
    settings: Settings,
    *,
    model: ChatModel | None = None,
    clock: Clock = utc_now,
    handle_signals: bool = True,
    idle_poll_seconds: float = IDLE_POLL_SECONDS,
    tracing: Tracing | None = None,
) -> Worker:
    """An arq Worker whose connections open in its own startup, on its own event loop.
    `tracing` (infra.tracing.from_env, None when off): a span per job, continuing the
    sender's trace, and one per model call; None wraps nothing."""
    resources_holder: dict[str, Resources] = {}
    wakeups = Wakeups(idle_poll_seconds)
    names = settings.redis_names  # the deployment's queue, cron ticks and channels
    channels = ReplyChannels(names)

    async def startup(ctx: dict[str, Any]) -> None:
        resources = resources_holder["resources"]
        chat_model = model if model is not None else default_model(settings)
        if tracing is not None:
            chat_model = traced_model(chat_model, tracing, settings)
        relay = ctx["relay"] = Relay(resources.redis)
        ctx["lag_probe"] = LagProbe.of_process(resources.redis, names)
        ctx["lag_probe"].start(relay)
        # This deployment's notices only: channels are shared by every database of the server.
        relay.watch(names.channel(WAKE_CHANNEL), wakeups)
        stops = StopRequests(resources.redis, channels)
        relay.watch(names.channel(STOP_CHANNEL), stops)
        ctx["settings"] = settings
        ctx["resources"] = resources
        ctx["model"] = chat_model
        ctx["wakeups"] = wakeups
        ctx["generator"] = ReplyGenerator(
            database=resources.database,
            redis=resources.redis,
            channels=channels,
            users=resources.users,
            clock=resources.clock,
            model=chat_model,
            system_instruction=settings.gemini_system_instruction,
            job_timeout_seconds=settings.worker_job_timeout_seconds,
            stops=stops,
            room_events=RoomEventChannels(names),
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "relay" in ctx:
            await ctx.pop("lag_probe").close()
            await ctx.pop("relay").close()
        chat_model = ctx.get("model")
        if chat_model is not None and hasattr(chat_model, "aclose"):
            await chat_model.aclose()
        await resources_holder["resources"].close()

    resources = Resources.open(settings, role="worker", clock=clock)
    resources_holder["resources"] = resources
    reply_job = generate_reply
    if tracing is not None:
        reply_job = tracing.job(generate_reply, name=GENERATE_REPLY, finished=_FINISHED)
    return ReplyWorker(
        wakeups=wakeups,
        functions=[func(reply_job, name=GENERATE_REPLY, max_tries=MAX_JOB_TRIES + 1)],
        cron_jobs=cron_jobs(names),
        timezone=UTC,  # for the cron schedules
        redis_pool=resources.redis,
        queue_name=names.arq_queue,
        on_startup=startup,
        on_shutdown=shutdown,
        job_timeout=settings.worker_job_timeout_seconds,
        max_jobs=CONCURRENT_JOBS,
        keep_result=60,
        handle_signals=handle_signals,
        # On SIGTERM the reply in flight may finish; past this, arq cancels and requeues it
        # (and the rerun continues it from what was already streamed).
        job_completion_wait=settings.worker_job_timeout_seconds,
        # One key per host (a pod, a container): `worker --check` there speaks for that
        # host's worker, not for any worker of the queue.
        health_check_key=worker_health_key(names.arq_queue),
        health_check_interval=WORKER_HEALTH_SECONDS,
    )


def worker_health_key(queue_name: str) -> str:
    """arq's `<queue_name>:health-check`, with this host's name after it."""
    return f"{queue_name}{health_check_key_suffix}:{socket.gethostname()}"
