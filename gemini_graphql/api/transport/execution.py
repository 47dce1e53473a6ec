"""What both transports share: the shape of a request's parameters, and running a prepared
document on graphql-core with Strawberry's execution context (so resolvers get Strawberry's
`Info`) and its cheaper awaitable check (both through `strawberry_seams`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    MiddlewareManager,
    execute,
)
from graphql.execution import Executor, create_source_event_stream

from gemini_graphql.api.context import Context
from gemini_graphql.api.transport.strawberry_seams import EXECUTION_CONTEXT_CLASS, is_awaitable

# Deeper JSON in `variables` is refused: no input of the schema nests like that, and
# encoding or inspecting it further down would recurse once per level.
MAX_VARIABLES_DEPTH = 32


class InvalidParams(ValueError):
    """A query, variables or operationName of the wrong shape; the message says which."""


@dataclass(frozen=True, slots=True)
class GraphQLParams:
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None

    @classmethod
    def of(cls, query: object, variables: object, operation_name: object) -> GraphQLParams:
        """The parameters as a client sent them (decoded JSON); raises InvalidParams."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidParams("No GraphQL query found in the request (`query` must be a string).")
        if variables is not None and not isinstance(variables, dict):
            raise InvalidParams("`variables` must be a JSON object.")
        if variables and _nested_deeper(variables, MAX_VARIABLES_DEPTH):
            raise InvalidParams(f"`variables` nests deeper than {MAX_VARIABLES_DEPTH} levels.")
        if not _encodable(query, operation_name, variables):
            raise InvalidParams(
                "The request holds text that is not valid Unicode (a lone surrogate)."
            )
        if operation_name is not None and not isinstance(operation_name, str):
            raise InvalidParams("`operationName` must be a string.")
        return cls(query, variables, operation_name)


def _nested_deeper(value: object, limit: int) -> bool:
    """Whether decoded JSON nests more than `limit` arrays or objects deep (no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:  # type: ignore[union-attr]
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _encodable(*values: object) -> bool:
    """Whether every string in `values` (JSON, so nested in lists and objects) is valid
    UTF-8 text: JSON's `\\ud800` escapes decode to lone surrogates, which nothing further
    down (the database, the response) can encode."""
    stack = list(values)
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


async def run(
    schema: GraphQLSchema,
    document: DocumentNode,
    context: Context,
    variables: dict[str, Any] | None,
    operation_name: str | None,
    *,
    hide_suggestions: bool,
    middleware: MiddlewareManager | None = None,
) -> ExecutionResult:
    """A query or mutation, to its one result. `hide_suggestions` keeps schema names out of
    variable errors (production: the schema is not public); `middleware` wraps resolvers
    (extensions' `resolve`)."""
    result = execute(
        schema,
        document,
        context_value=context,
        variable_values=variables,
        operation_name=operation_name,
        middleware=middleware,
        executor_class=EXECUTION_CONTEXT_CLASS,  # type: ignore[arg-type]
        is_awaitable=is_awaitable,  # type: ignore[arg-type]
        hide_suggestions=hide_suggestions,
    )
    if isawaitable(result):
        result = await result
    return result  # type: ignore[return-value]


def subscription_executor(
    schema: GraphQLSchema,
    document: DocumentNode,
    context: Context,
    variables: dict[str, Any] | None,
    operation_name: str | None,
    *,
    hide_suggestions: bool,
    middleware: MiddlewareManager | None = None,
) -> Executor | list[GraphQLError]:
    """The executor for a subscription (or the request errors that prevent one)."""
    return EXECUTION_CONTEXT_CLASS.build(  # type: ignore[attr-defined, no-any-return]
        schema,
        document,
        context_value=context,
        raw_variable_values=variables,
        operation_name=operation_name,
        middleware=middleware,
        is_awaitable=is_awaitable,
        hide_suggestions=hide_suggestions,
    )


async def event_source(executor: Executor) -> AsyncIterator[Any] | ExecutionResult:
    """A subscription's source event stream, or the result refusing it (e.g. an error of
    its root resolver)."""
    source = create_source_event_stream(executor)
    if is_awaitable(source):
        source = await source  # type: ignore[misc]
    return source  # type: ignore[return-value]


async def guarded(
    results: AsyncGenerator[ExecutionResult, None],
) -> AsyncGenerator[ExecutionResult, None]:
    """A subscription's results, with an error its source raised (graphql-core lets it out)
    as the last result instead of an exception."""
    async with aclosing(results):
        try:
            async for result in results:
                yield result
        except Exception as exc:  # noqa: BLE001 - reported to the client as a result
            error = (
                exc if isinstance(exc, GraphQLError) else GraphQLError(str(exc), original_error=exc)
            )
            yield ExecutionResult(None, [error])
