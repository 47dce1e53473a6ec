"""How both transports run a prepared document on graphql-core: with Strawberry's execution
context (so resolvers get Strawberry's `Info`) and its cheaper awaitable check."""

from __future__ import annotations

from inspect import isawaitable
from typing import Any

from graphql import DocumentNode, ExecutionResult, GraphQLError, GraphQLSchema, execute
from graphql.execution import Executor
from strawberry.execution import optimized_is_awaitable
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from gemini_graphql.api.context import Context


async def run(
    schema: GraphQLSchema,
    document: DocumentNode,
    context: Context,
    variables: dict[str, Any] | None,
    operation_name: str | None,
) -> ExecutionResult:
    """A query or mutation, to its one result."""
    result = execute(
        schema,
        document,
        context_value=context,
        variable_values=variables,
        operation_name=operation_name,
        executor_class=StrawberryGraphQLCoreExecutionContext,
        is_awaitable=optimized_is_awaitable,
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
) -> Executor | list[GraphQLError]:
    """The executor for a subscription (or the request errors that prevent one)."""
    return StrawberryGraphQLCoreExecutionContext.build(
        schema,
        document,
        context_value=context,
        raw_variable_values=variables,
        operation_name=operation_name,
        is_awaitable=optimized_is_awaitable,
    )
