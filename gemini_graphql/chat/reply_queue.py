"""The queue of reply jobs: arq, plus a wake-up notice so workers need not poll fast.

arq finds work by polling its queue. Polled every few milliseconds, an idle worker spent
about a tenth of a CPU doing it, and a reply still waited half a poll on average before it
started. Instead each job is queued with a notice (in the same command), and workers poll
when woken (or every IDLE_POLL_SECONDS, which also finds retries and jobs of dead workers,
and covers a lost notice).

Everything is the deployment's (RedisNames): its arq queue, its job ids (so arq's own
`arq:job:<id>`, `arq:result:<id>`, ... keys, whose `arq:` arq hard-codes, differ too) and
its wake channel, since another deployment's notices must not wake these workers.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from gemini_graphql.config import RedisNames

GENERATE_REPLY = "generate_reply"
WAKE_CHANNEL = "replies:queued"  # a name in the deployment's RedisNames.channel
IDLE_POLL_SECONDS = 0.5  # arq's own default poll interval

# arq's ArqRedis.enqueue_job, and the wake-up notice, in one command. enqueue_job WATCHes the
# job's key, asks whether it or the job's result exists, then MULTI/PSETEX/ZADD/EXEC: three
# round trips, and the notice a fourth. This script makes the same check and the same writes
# (the job arq's own serialize_job made, under arq's keys, with enqueue_job's score and
# expiry), atomically: so arq's job-id dedup holds as it does in enqueue_job (a job id is
# refused while its job or its result is kept), which the stranded-reply sweep relies on.
# tests/test_send_turn.py holds it to enqueue_job's behaviour.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
redis.call('PUBLISH', ARGV[5], '')
return 1
"""
_ENQUEUE_SHA = hashlib.sha1(_ENQUEUE.encode()).hexdigest()


def reply_job_id(names: RedisNames, reply_id: uuid.UUID) -> str:
    """One job per reply: arq refuses a second job with the same id. The job's argument
    carries the reply id; nothing parses it back out of this."""
    return names.key(f"reply:{reply_id}")


@dataclass(frozen=True, slots=True)
class ReplyJob:
    """A reply's job, serialised and ready to queue: alone (`enqueue`), or with other
    commands in the caller's round trip (`queue_on`, then `queued` on its result)."""

    redis: ArqRedis
    arguments: tuple[Any, ...]  # EVALSHA's, after the sha

    async def enqueue(self) -> bool:
        """Queue it; False when a job for this reply already exists. Raises when it could not
        be queued."""
        try:
            return bool(await self.redis.evalsha(_ENQUEUE_SHA, *self.arguments))
        except NoScriptError:
            return await self._with_text()

    def queue_on(self, pipe: Pipeline) -> None:
        """Add it to `pipe`, which must execute with raise_on_error=False; then `queued`."""
        pipe.evalsha(_ENQUEUE_SHA, *self.arguments)

    async def queued(self, result: object) -> bool:
        """What `enqueue` returns, from `pipe`'s result for the job; raises its error."""
        if isinstance(result, NoScriptError):
            return await self._with_text()
        if isinstance(result, BaseException):
            raise result
        return bool(result)

    async def _with_text(self) -> bool:
        """On a Redis that does not have the script (restarted, or its scripts flushed): sent
        with its text, which Redis then keeps for the EVALSHAs after."""
        return bool(await self.redis.eval(_ENQUEUE, *self.arguments))


def reply_job(
    redis: ArqRedis,
    names: RedisNames,
    reply_id: uuid.UUID,
    *,
    trace: dict[str, str] | None = None,
) -> ReplyJob:
    """The reply's job on the deployment's queue, waking its workers once queued. `trace`:
    the sender's trace context (infra.otel), when tracing is on; the job then carries it as
    its `trace` kwarg, and has no such kwarg otherwise."""
    job_id = reply_job_id(names, reply_id)
    now_ms = timestamp_ms()
    job = serialize_job(
        GENERATE_REPLY,
        (str(reply_id),),
        {} if trace is None else {"trace": trace},
        None,
        now_ms,
        serializer=redis.job_serializer,
    )
    keys = (job_key_prefix + job_id, result_key_prefix + job_id, names.arq_queue)
    # As enqueue_job: run at once (score: now), kept until picked up for expires_extra_ms.
    values = (redis.expires_extra_ms, job, now_ms, job_id, names.channel(WAKE_CHANNEL))
    return ReplyJob(redis, (len(keys), *keys, *values))


async def enqueue_reply(
    redis: ArqRedis,
    names: RedisNames,
    reply_id: uuid.UUID,
    *,
    trace: dict[str, str] | None = None,
) -> bool:
    """Queue the reply's job on the deployment's queue and wake its workers (one round trip,
    see reply_job); False when a job for it already exists. Raises when it could not be
    queued."""
    return await reply_job(redis, names, reply_id, trace=trace).enqueue()


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
