"""The arq worker: runs `generate_reply` jobs queued by sendMessage."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from arq import Retry
from arq.worker import Worker, func

from gemini_graphql.ai.gemini import GeminiModel
from gemini_graphql.ai.model import ChatModel
from gemini_graphql.ai.offline import OfflineModel
from gemini_graphql.chat.messages import GENERATE_REPLY
from gemini_graphql.chat.replies import ReplyGenerator, RetryLater
from gemini_graphql.clock import Clock, utc_now
from gemini_graphql.config import Settings
from gemini_graphql.resources import Resources

log = logging.getLogger(__name__)

# A killed worker's job becomes runnable again after the job timeout + 10 s (arq's in-progress
# key): with the default WORKER_JOB_TIMEOUT_SECONDS of 45, within a minute.
POLL_DELAY_SECONDS = 0.01  # a queued reply starts within ~10 ms (arq's default is 0.5 s)
MAX_TRIES = 4  # model failures worth retrying, and reruns after a killed worker
CONCURRENT_JOBS = 50  # replies mostly wait on the network


async def generate_reply(ctx: dict[str, Any], reply_id: str) -> str | None:
    generator: ReplyGenerator = ctx["generator"]
    settings: Settings = ctx["settings"]
    job_try: int = ctx["job_try"]
    started = time.perf_counter()
    context = {"job_id": ctx.get("job_id")}
    if job_try > MAX_TRIES:  # its workers kept dying: stop, keeping what was sent
        await generator.fail(uuid.UUID(reply_id), "The assistant could not finish this reply.")
        log.warning("reply gave up after %d tries", job_try - 1, extra={**context, "outcome": "failed"})
        return "failed"
    try:
        outcome = await generator.generate(uuid.UUID(reply_id), final_try=job_try >= MAX_TRIES)
    except RetryLater as exc:
        delay = settings.gemini_retry_base_seconds * 2 ** (job_try - 1)
        log.info(
            "reply retried in %.2fs (try %d): %s", delay, job_try, exc,
            extra={**context, "outcome": "retry"},
        )
        raise Retry(defer=delay) from exc
    result = outcome.status.value if outcome else "nothing to do"
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    log.info(
        "reply %s in %.1fms", result, duration_ms,
        extra={**context, "outcome": result, "duration_ms": duration_ms},
    )
    return result


def default_model(settings: Settings) -> ChatModel:
    """Gemini with a key; otherwise the offline model (production refuses to start without one)."""
    return GeminiModel(settings) if settings.gemini_api_key else OfflineModel()


def build_worker(
    settings: Settings,
    *,
    model: ChatModel | None = None,
    clock: Clock = utc_now,
    handle_signals: bool = True,
) -> Worker:
    """An arq Worker whose connections open in its own startup, on its own event loop."""
    resources_holder: dict[str, Resources] = {}

    async def startup(ctx: dict[str, Any]) -> None:
        resources = resources_holder["resources"]
        chat_model = model if model is not None else default_model(settings)
        ctx["settings"] = settings
        ctx["resources"] = resources
        ctx["model"] = chat_model
        # Finish (or fail) well before arq cancels the job, which would leave it STREAMING.
        deadline = max(1.0, settings.worker_job_timeout_seconds - 5.0)
        ctx["generator"] = ReplyGenerator(resources, chat_model, deadline_seconds=deadline)

    async def shutdown(ctx: dict[str, Any]) -> None:
        chat_model = ctx.get("model")
        if chat_model is not None and hasattr(chat_model, "aclose"):
            await chat_model.aclose()
        await resources_holder["resources"].close()

    resources = Resources.open(settings, role="worker", clock=clock)
    resources_holder["resources"] = resources
    return Worker(
        functions=[func(generate_reply, name=GENERATE_REPLY, max_tries=MAX_TRIES + 1)],
        redis_pool=resources.redis,
        on_startup=startup,
        on_shutdown=shutdown,
        poll_delay=POLL_DELAY_SECONDS,
        job_timeout=settings.worker_job_timeout_seconds,
        max_jobs=CONCURRENT_JOBS,
        keep_result=60,
        handle_signals=handle_signals,
        # On SIGTERM the reply in flight may finish; past this, arq cancels and requeues it
        # (and the rerun continues it from what was already streamed).
        job_completion_wait=settings.worker_job_timeout_seconds,
    )
