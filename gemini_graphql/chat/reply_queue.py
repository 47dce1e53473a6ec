"""The queue of reply jobs: arq, plus a wake-up notice so workers need not poll fast.

arq finds work by polling its queue. Polled every few milliseconds, an idle worker spent
about a tenth of a CPU doing it, and a reply still waited half a poll on average before it
started. Instead sendMessage publishes a notice after queueing a job, and workers poll when
woken (or every IDLE_POLL_SECONDS, which also finds retries and jobs of dead workers, and
covers a lost notice).

Everything is the deployment's (RedisNames): its arq queue, its job ids (so arq's own
`arq:job:<id>`, `arq:result:<id>`, ... keys, whose `arq:` arq hard-codes, differ too) and
its wake channel, since another deployment's notices must not wake these workers.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from gemini_graphql.config import RedisNames

log = logging.getLogger(__name__)

GENERATE_REPLY = "generate_reply"
WAKE_CHANNEL = "replies:queued"  # a name in the deployment's RedisNames.channel
IDLE_POLL_SECONDS = 0.5  # arq's own default poll interval


def reply_job_id(names: RedisNames, reply_id: uuid.UUID) -> str:
    """One job per reply: arq refuses a second job with the same id. The job's argument
    carries the reply id; nothing parses it back out of this."""
    return names.key(f"reply:{reply_id}")


async def enqueue_reply(
    redis: ArqRedis,
    names: RedisNames,
    reply_id: uuid.UUID,
    *,
    trace: dict[str, str] | None = None,
) -> bool:
    """Queue the reply's job on the deployment's queue and wake its workers; False when a
    job for it already exists. `trace`: the sender's trace context (infra.otel), when
    tracing is on; the job then carries it as its `trace` kwarg, and has no such kwarg
    otherwise.

    Raises when the job could not be queued. A lost wake-up only delays the reply until
    the next idle poll, so it is logged, not raised.
    """
    job = await redis.enqueue_job(
        GENERATE_REPLY,
        str(reply_id),
        _job_id=reply_job_id(names, reply_id),
        _queue_name=names.arq_queue,
        **({} if trace is None else {"trace": trace}),
    )
    if job is None:
        return False
    try:
        await redis.publish(names.channel(WAKE_CHANNEL), b"")
    except RedisError:
        log.warning("queued the reply %s but could not wake the workers", reply_id, exc_info=True)
    return True


class Wakeups:
    """A worker's reasons to poll now: a notice on its wake channel, or a retry coming due.

    Watches the channel through a Relay (see infra.relay.Watcher).
    """

    def __init__(self, idle_seconds: float = IDLE_POLL_SECONDS) -> None:
        self._due = asyncio.Event()
        self._idle_seconds = idle_seconds

    def deliver(self, data: bytes) -> None:
        self._due.set()

    def suspend(self) -> None:
        """Notices may be missed until `resume`; the idle poll still finds every job."""

    def resume(self) -> None:
        self._due.set()  # something may have been queued while we were not listening

    def wake_in(self, seconds: float) -> None:
        """Poll again after `seconds`: when a job deferred by that much becomes runnable."""
        asyncio.get_running_loop().call_later(seconds, self._due.set)

    def clear(self) -> None:
        """Called just before polling: a notice arriving during the poll wakes the next wait."""
        self._due.clear()

    async def wait(self) -> None:
        """Until a reason to poll, or the idle interval at most."""
        try:
            async with asyncio.timeout(self._idle_seconds):
                await self._due.wait()
        except TimeoutError:
            pass
