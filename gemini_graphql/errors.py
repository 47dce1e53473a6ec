"""Errors the domain raises; the GraphQL layer maps them to the contract's shapes."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Expected failures, returned to clients as payload errors (see the contract)."""

    INVALID_INPUT = "INVALID_INPUT"
    MOBILE_NUMBER_TAKEN = "MOBILE_NUMBER_TAKEN"
    OTP_INVALID = "OTP_INVALID"
    OTP_ATTEMPTS_EXCEEDED = "OTP_ATTEMPTS_EXCEEDED"
    OTP_THROTTLED = "OTP_THROTTLED"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    NOT_FOUND = "NOT_FOUND"
    DAILY_LIMIT_REACHED = "DAILY_LIMIT_REACHED"
    REPLY_IN_PROGRESS = "REPLY_IN_PROGRESS"  # regenerate a reply still being written: stop it first
    ALREADY_SUBSCRIBED = "ALREADY_SUBSCRIBED"
    PAYMENTS_UNAVAILABLE = "PAYMENTS_UNAVAILABLE"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"  # a dependency failed; nothing was changed


class DomainError(Exception):
    """An expected failure a user can act on. `field` is the camelCase input name."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def invalid_input(field: str, message: str) -> DomainError:
    return DomainError(ErrorCode.INVALID_INPUT, message, field)


class InvalidArgument(Exception):
    """A query argument the request cannot be answered with (a bad cursor, a page too large)."""


class Unauthenticated(Exception):
    """No token, or one that is invalid, expired or revoked. `reason` says which, in a few
    words (a websocket's close reason carries it)."""

    def __init__(self, message: str = "Authentication required.", reason: str = "no token") -> None:
        super().__init__(message)
        self.reason = reason


class RateLimited(Exception):
    """Too many requests of one kind; the client should wait `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many requests. Try again in {retry_after} seconds.")
        self.retry_after = retry_after
