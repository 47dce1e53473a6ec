"""Telling an outage of PostgreSQL or Redis from a bug.

An unreachable dependency is not the request's fault nor ours: clients are told
SERVICE_UNAVAILABLE with a time to retry (instead of a masked internal error), and the
worker waits and tries again instead of failing the reply.
"""

from __future__ import annotations

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
