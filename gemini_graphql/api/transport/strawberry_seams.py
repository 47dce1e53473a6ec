"""Every name the transports take from Strawberry beyond its documented API, in one place.

The transports execute documents on graphql-core themselves, so they need a few things
Strawberry keeps to itself: the graphql-core schema it built, the execution context class
that gives resolvers Strawberry's `Info`, and whether an extension hooks `resolve`. An
upgrade that moves any of them fails `tests/test_strawberry_seams.py`, loudly and here,
instead of changing behaviour somewhere else in silence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import strawberry
from graphql import GraphQLSchema
from graphql.execution import Executor
from strawberry.execution import optimized_is_awaitable
from strawberry.extensions import LifecycleStep, SchemaExtension
from strawberry.resolvers import is_default_resolver
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

# Builds Strawberry's `Info` for resolvers (its operation-extensions-aware resolve info).
EXECUTION_CONTEXT_CLASS: type[Executor] = StrawberryGraphQLCoreExecutionContext

# Strawberry's cheaper check than inspect.isawaitable, as its own execution uses.
is_awaitable: Callable[[Any], bool] = optimized_is_awaitable

__all__ = [
    "EXECUTION_CONTEXT_CLASS",
    "graphql_schema",
    "hooks_resolve",
    "is_awaitable",
    "operation_span",
    "reads_attribute",
]


def graphql_schema(schema: strawberry.Schema) -> GraphQLSchema:
    """The graphql-core schema Strawberry built (and validated) from the types."""
    built = schema._schema
    if not isinstance(built, GraphQLSchema):  # pragma: no cover - an incompatible upgrade
        raise TypeError(f"strawberry.Schema._schema is {type(built).__name__}, not GraphQLSchema")
    return built


def reads_attribute(resolve: Callable[..., Any] | None) -> bool:
    """Whether a field's resolver is Strawberry's plain attribute read (no `info` needed)."""
    return resolve is not None and is_default_resolver(resolve)


def hooks_resolve(extension: SchemaExtension) -> bool:
    """Whether an extension wraps every resolver (then it runs as graphql-core middleware)."""
    return type(extension).resolve is not SchemaExtension.resolve


def operation_span(extension: SchemaExtension) -> Any:
    """The operation's span of a Strawberry OpenTelemetryExtension, while the operation runs
    (it keeps its spans by lifecycle step; api.transport.tracing adds attributes to it)."""
    return extension._span_holder[LifecycleStep.OPERATION]  # type: ignore[attr-defined]
