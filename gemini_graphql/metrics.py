"""Every Prometheus metric the service exports: this module is their list (README's
"Metrics" table says what each means).

Names follow Prometheus's conventions (`gemini_graphql_` first, `_total` on counters, base
units: seconds). No label ever holds a user id, a phone number or a message's text: label
values come from small fixed sets (operation types, error codes, schema field names, job
outcomes), and GraphQL operation names, which clients choose, are capped
(`api.transport.operation_metrics`).

With PROMETHEUS_MULTIPROC_DIR set (`serve --workers N` sets it), prometheus-client keeps
each process's values in files there and `registry()` sums them for a scrape.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable

# Fast in-memory answers to slow model calls: milliseconds to a minute.
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_MODEL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)

# --- the api process --------------------------------------------------------------------

OPERATIONS = Counter(
    "gemini_graphql_operations_total",
    "GraphQL operations received, over HTTP and websockets.",
    ["operation_type", "operation_name"],
)
OPERATION_DURATION = Histogram(
    "gemini_graphql_operation_duration_seconds",
    "Time to answer a query or mutation (subscriptions are not timed).",
    ["operation_type", "operation_name"],
    buckets=_REQUEST_BUCKETS,
)
ERRORS = Counter(
    "gemini_graphql_errors_total",
    "Errors answered: top-level GraphQL errors by extensions.code (kind=response) and "
    "mutation payload errors by ErrorCode (kind=payload).",
    ["code", "kind"],
)
WEBSOCKETS_OPEN = Gauge(
    "gemini_graphql_websockets_open",
    "GraphQL websockets open (graphql-transport-ws).",
    multiprocess_mode="livesum",
)
SUBSCRIPTIONS_ACTIVE = Gauge(
    "gemini_graphql_subscriptions_active",
    "Subscriptions running, by root field.",
    ["field"],
    multiprocess_mode="livesum",
)
SUBSCRIPTION_EVENTS = Counter(
    "gemini_graphql_subscription_events_total",
    "Subscription events written to websockets, by root field.",
    ["field"],
)
SUBSCRIPTION_EVENTS_DIRECT = Counter(
    "gemini_graphql_subscription_events_direct_total",
    "Of the subscription events written, those written at once as they arrived, without "
    "waking the subscription's task (the rest: catching up, a socket that has to drain).",
)
CACHE_LOOKUPS = Counter(
    "gemini_graphql_cache_lookups_total",
    "Cache lookups: `response` (whole me/chatrooms responses), `rooms_local` (a process's "
    "copy of a room list) and `rooms_redis` (the shared copy, asked on a local miss).",
    ["cache", "result"],
)
RELAY_LAG = Gauge(
    "gemini_graphql_relay_lag_seconds",
    "How late this process's Redis pub/sub relay hands over a probe it published (the "
    "last probe's delay, or how long the one in flight has waited).",
    multiprocess_mode="livemax",
)

# --- both processes ---------------------------------------------------------------------

DB_POOL_IN_USE = Gauge(
    "gemini_graphql_db_pool_connections_in_use",
    "Database connections checked out of this process's pool.",
    multiprocess_mode="livesum",
)

# --- the worker -------------------------------------------------------------------------

JOBS_STARTED = Counter(
    "gemini_graphql_jobs_started_total",
    "Reply jobs started (every try counts).",
)
JOBS_FINISHED = Counter(
    "gemini_graphql_jobs_finished_total",
    "Reply job runs ended, by outcome: completed, failed, stopped, retried (run again "
    "later), skipped (nothing left to do), error (an unexpected exception), cancelled "
    "(its timeout, or the worker's shutdown).",
    ["outcome"],
)
QUEUE_DEPTH = Gauge(
    "gemini_graphql_queue_depth",
    "Jobs in the arq queue: waiting, deferred for a retry, or running.",
    multiprocess_mode="livemax",
)
QUEUE_OLDEST_AGE = Gauge(
    "gemini_graphql_queue_oldest_job_age_seconds",
    "How long the job due first in the queue has been due (0 when none is overdue).",
    multiprocess_mode="livemax",
)
FIRST_CHUNK = Histogram(
    "gemini_graphql_reply_first_chunk_seconds",
    "From the message that asked for a reply (sendMessage, editMessage, regenerateReply) "
    "to the reply's first chunk of text from Gemini.",
    buckets=_MODEL_BUCKETS,
)
MODEL_CALL_DURATION = Histogram(
    "gemini_graphql_gemini_call_duration_seconds",
    "Gemini streaming calls, from the request to the last chunk (or the error, or the stop).",
    buckets=_MODEL_BUCKETS,
)
MODEL_ERRORS = Counter(
    "gemini_graphql_gemini_errors_total",
    "Failed Gemini calls, by HTTP status (or `timeout`, `network`).",
    ["status"],
)
TOKENS = Counter(
    "gemini_graphql_gemini_tokens_total",
    "Tokens of finished replies as Gemini reported them: prompt, output, total.",
    ["kind"],
)
CLEANED = Counter(
    "gemini_graphql_cleanup_rows_total",
    "What the scheduled clean-up jobs removed or repaired, by job.",
    ["job"],
)


_ERROR_SERIES: dict[tuple[str, str], Counter] = {}


def count_error(code: str, kind: str) -> None:
    """One answered error; `code` from a fixed set (extensions.code values, ErrorCode)."""
    counter = _ERROR_SERIES.get((code, kind))
    if counter is None:
        counter = _ERROR_SERIES[(code, kind)] = ERRORS.labels(code, kind)
    counter.inc()


def empty_multiprocess_dir() -> None:
    """Before the processes start: values an earlier run left would be summed into this one's."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if directory:
        for path in Path(directory).glob("*.db"):
            path.unlink(missing_ok=True)


def process_exited() -> None:
    """At a process's clean exit, in multiprocess mode: its live gauges stop counting."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        mark_process_dead(os.getpid())


def registry() -> CollectorRegistry:
    """What a scrape reads: this process's metrics, or every process's in multiprocess mode."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        collected = CollectorRegistry()
        MultiProcessCollector(collected)
        return collected
    return REGISTRY
