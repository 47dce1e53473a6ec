"""How failures reach clients.

Expected failures of a mutation are data: `UserError`s in the payload.
Everything else is a top-level error with `extensions.code`; an unexpected
exception is logged with the request id and masked, so no stack trace, SQL
or secret ever reaches a response.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import strawberry
from graphql import GraphQLError

from gemini_graphql.errors import DomainError, InvalidArgument, RateLimited, Unauthenticated
from gemini_graphql.errors import ErrorCode as DomainErrorCode
from gemini_graphql.infra.outages import RETRY_AFTER_SECONDS, is_outage
from gemini_graphql.metrics import count_error

log = logging.getLogger("gemini_graphql.errors")

ErrorCode = strawberry.enum(DomainErrorCode, name="ErrorCode", description="Why a mutation failed.")

UNAUTHENTICATED = "UNAUTHENTICATED"
RATE_LIMITED = "RATE_LIMITED"
BAD_REQUEST = "BAD_REQUEST"
INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
MASKED_MESSAGE = "Internal server error."
UNAVAILABLE_MESSAGE = "The service is briefly unavailable. Please try again shortly."


@strawberry.type(description="An expected failure of a mutation, for the client to show or act on.")
class UserError:
    code: ErrorCode = strawberry.field(description="Machine-readable reason.")
    field: str | None = strawberry.field(
        description="The camelCase input field at fault, when there is one."
    )
    message: str = strawberry.field(description="A sentence for the user.")

    @classmethod
    def of(cls, error: DomainError) -> UserError:
        return cls(code=error.code, field=error.field, message=error.message)


class Payload(Protocol):
    errors: list[UserError]


P = TypeVar("P", bound=Payload)
T = TypeVar("T")


async def payload_or_errors(
    payload_type: type[P], action: Awaitable[T], build: Callable[[T], P]
) -> P:
    """Await the mutation's work and `build` the payload; a DomainError becomes its `errors`."""
    try:
        result = await action
    except DomainError as error:
        count_error(error.code.value, "payload")
        return payload_type(errors=[UserError.of(error)])  # type: ignore[call-arg]
    return build(result)


def apply_error_policy(errors: list[GraphQLError], request_id: str | None) -> bool:
    """Give every error a code, in place; mask and log the unexpected ones.

    True when a dependency was unavailable (HTTP adds a Retry-After header then)."""
    unavailable = False
    for error in errors:
        original = error.original_error
        if isinstance(original, Unauthenticated):
            error.extensions = {"code": UNAUTHENTICATED}
        elif isinstance(original, RateLimited):
            error.extensions = {"code": RATE_LIMITED, "retryAfter": original.retry_after}
        elif isinstance(original, InvalidArgument):
            error.extensions = {"code": BAD_REQUEST}
        elif isinstance(original, DomainError):  # e.g. NOT_FOUND ending a subscription
            error.extensions = {"code": original.code.value}
            if original.field:
                error.extensions["field"] = original.field
        elif original is not None and is_outage(original):
            # PostgreSQL or Redis is unreachable: nothing to mask, nothing the client did wrong.
            log.warning(
                "dependency unavailable in %s (request %s): %s",
                ".".join(map(str, error.path or ())) or "operation",
                request_id,
                type(original).__name__,
            )
            error.message = UNAVAILABLE_MESSAGE
            error.original_error = None
            unavailable = True
            error.extensions = {
                "code": SERVICE_UNAVAILABLE,
                "retryAfter": RETRY_AFTER_SECONDS,
                "requestId": request_id,
            }
        elif not error.path and (original is None or isinstance(original, GraphQLError)):
            # Parse, validation, document limits, variable coercion: the request is at fault.
            error.extensions = {"code": BAD_REQUEST}
        else:
            log.error(
                "unexpected error in %s (request %s)",
                ".".join(map(str, error.path or ())) or "operation",
                request_id,
                exc_info=(type(original), original, original.__traceback__) if original else None,
            )
            error.message = MASKED_MESSAGE
            error.original_error = None
            error.extensions = {"code": INTERNAL_SERVER_ERROR, "requestId": request_id}
    return unavailable
