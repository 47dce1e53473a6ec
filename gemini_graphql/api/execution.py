"""What both transports share: the shape of a request's parameters, and running a prepared
document on graphql-core with Strawberry's execution context (so resolvers get Strawberry's
`Info`) and its cheaper awaitable check."""

from __future__ import annotations

from dataclasses import dataclass
from inspect import isawaitable
from typing import Any

from graphql import DocumentNode, ExecutionResult, GraphQLError, GraphQLSchema, execute
from graphql.execution import Executor
from strawberry.execution import optimized_is_awaitable
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from gemini_graphql.api.context import Context


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
        if operation_name is not None and not isinstance(operation_name, str):
            raise InvalidParams("`operationName` must be a string.")
        return cls(query, variables, operation_name)


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
