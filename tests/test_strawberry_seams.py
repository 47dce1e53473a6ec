"""What the transports take from Strawberry's internals still means what they expect: if an
upgrade changes any of it, these fail here, naming the seam, before anything else breaks."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLSchema, parse
from graphql.execution import Executor
from strawberry.extensions import SchemaExtension
from strawberry.extensions.tracing import OpenTelemetryExtension

from gemini_graphql.api.schema import build_schema
from gemini_graphql.api.transport import strawberry_seams
from gemini_graphql.api.transport.execution import run


@strawberry.type
class _Pet:
    name: str

    @strawberry.field
    def shout(self) -> str:
        return self.name.upper()


@strawberry.type
class _SeamQuery:
    @strawberry.field
    def pet(self, info: strawberry.Info) -> _Pet:
        return _Pet(name=info.context["name"])


def test_the_graphql_core_schema_is_the_one_strawberry_built() -> None:
    schema = build_schema()
    built = strawberry_seams.graphql_schema(schema)
    assert isinstance(built, GraphQLSchema)
    assert built.query_type is not None and built.query_type.name == "Query"
    assert "messageStream" in built.subscription_type.fields  # type: ignore[union-attr]


async def test_the_execution_context_gives_resolvers_strawberrys_info() -> None:
    assert issubclass(strawberry_seams.EXECUTION_CONTEXT_CLASS, Executor)
    schema = strawberry_seams.graphql_schema(strawberry.Schema(query=_SeamQuery))
    result = await run(
        schema,
        parse("{ pet { name shout } }"),
        {"name": "rex"},  # type: ignore[arg-type]
        None,
        None,
        hide_suggestions=False,
    )
    assert result.errors is None
    assert result.data == {"pet": {"name": "rex", "shout": "REX"}}


def test_plain_attribute_resolvers_are_told_from_resolvers_of_their_own() -> None:
    schema = strawberry_seams.graphql_schema(strawberry.Schema(query=_SeamQuery))
    pet = schema.get_type("_Pet") or schema.get_type("Pet")
    assert strawberry_seams.reads_attribute(pet.fields["name"].resolve)  # type: ignore[union-attr]
    assert not strawberry_seams.reads_attribute(pet.fields["shout"].resolve)  # type: ignore[union-attr]
    assert not strawberry_seams.reads_attribute(None)


def test_extensions_that_wrap_resolvers_are_recognised() -> None:
    class Plain(SchemaExtension):
        def on_operation(self) -> Any:
            yield

    assert strawberry_seams.hooks_resolve(OpenTelemetryExtension())
    assert not strawberry_seams.hooks_resolve(Plain())


def test_the_awaitable_check_tells_coroutines_from_values() -> None:
    async def coroutine() -> None:
        return None

    pending = coroutine()
    assert strawberry_seams.is_awaitable(pending)
    assert not strawberry_seams.is_awaitable("value")
    pending.close()
