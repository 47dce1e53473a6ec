"""Telling an outage of PostgreSQL or Redis from a bug.

An unreachable dependency is not the request's fault nor ours: clients are told
SERVICE_UNAVAILABLE with a time to retry (instead of a masked internal error), and the
worker waits and tries again instead of failing the reply.
"""

from __future__ import annotations

import logging
import time

import asyncpg
import sqlalchemy.exc
from redis import exceptions as redis_errors

RETRY_AFTER_SECONDS = 5

_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable host, and timeouts (TimeoutError is an OSError)
    redis_errors.ConnectionError,  # includes BusyLoadingError (Redis loading its data)
    redis_errors.TimeoutError,
    redis_errors.TryAgainError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,  # "the database system is starting up"
    asyncpg.AdminShutdownError,  # "terminating connection due to administrator command"
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,  # e.g. "connection is closed"
    sqlalchemy.exc.TimeoutError,  # no pooled connection came free in time
)
_MAX_CAUSES = 8  # how far along __cause__/__context__ (and SQLAlchemy's .orig) to look


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says a dependency could not be reached."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < _MAX_CAUSES:
        if isinstance(current, _UNREACHABLE):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError):
            if current.connection_invalidated:
                return True
            orig = current.orig
            if isinstance(orig, BaseException):
                current = orig
                seen += 1
                continue
        current = current.__cause__ or current.__context__
        seen += 1
    return False


class Outage:
    """A dependency's ups and downs as one process sees them: one log line when it goes and
    one when it returns (not one per failed try), and a capped backoff between tries."""

    def __init__(
        self, log: logging.Logger, what: str, *, first_delay: float = 0.1, max_delay: float = 5.0
    ) -> None:
        self._log = log
        self._what = what
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._delay = first_delay
        self._since: float | None = None

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> float:
        """Note a failed try; returns how long to wait before the next one."""
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning(
                "%s unavailable (%s: %s); retrying until it returns",
                self._what,
                type(exc).__name__,
                exc,
            )
        delay = self._delay
        self._delay = min(self._delay * 2, self._max_delay)
        return delay

    def recovered(self) -> None:
        if self._since is not None:
            self._log.warning(
                "%s available again after %.1fs", self._what, time.monotonic() - self._since
            )
        self._since = None
        self._delay = self._first_delay
