"""Strawberry's SchemaExtension hooks around the transports' own execution.

With no extension on the schema (the default) nothing here runs and the transports keep
their fast paths. With any (`OpenTelemetryExtension`, `MaskErrors`, a query-cost or
PyInstrument extension...) every operation goes through the hooks in Strawberry's order:
`on_operation` around `on_parse`, `on_validate` and `on_execute`, each extension's
`resolve` around every resolver (graphql-core middleware), `on_stream_result` around each
result of a subscription, and `get_results` into the response's `extensions`.

As in Strawberry, an extension may supply the document in `on_parse` or the result in
`on_execute`, and our error policy (codes, masking of unexpected errors, logging) runs on
the raw errors right after execution, before `on_operation` ends: so a `MaskErrors` after
it sees, and may anonymise further, what the client is about to get.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

import strawberry
from graphql import ExecutionResult, MiddlewareManager, OperationType
from graphql.execution import map_source_to_response_event
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionContext

from gemini_graphql.api.context import Context
from gemini_graphql.api.errors import apply_error_policy
from gemini_graphql.api.transport.documents import Documents, Prepared
from gemini_graphql.api.transport.execution import (
    GraphQLParams,
    event_source,
    guarded,
    run,
    subscription_executor,
)
from gemini_graphql.api.transport.strawberry_seams import (
    graphql_schema,
    hooks_resolve,
)

ALL_OPERATIONS = frozenset(OperationType)


class Refused(Exception):
    """Raised by a transport's `allow` check: the operation type is not served this way."""


@dataclass(slots=True)
class Hooked:
    """One operation's result; whether the document was refused before anything ran (parse,
    validation, limits), and whether a dependency was unavailable (Retry-After)."""

    result: ExecutionResult
    refused: bool = False
    unavailable: bool = False


class SchemaHooks:
    """Runs a schema's extensions around operations; see the module docstring."""

    def __init__(self, schema: strawberry.Schema, documents: Documents) -> None:
        self.schema = schema
        self.graphql_schema = graphql_schema(schema)
        self.documents = documents

    @classmethod
    def of(cls, schema: strawberry.Schema, documents: Documents) -> SchemaHooks | None:
        """The hooks of `schema`; None when it has no extension (then nothing is run)."""
        return cls(schema, documents) if schema.extensions else None

    async def execute(
        self,
        params: GraphQLParams,
        context: Context,
        *,
        allow: Callable[[OperationType | None], None] = lambda _: None,
    ) -> Hooked:
        """A query or mutation, to its one result. `allow` may raise Refused (e.g. a
        mutation over GET); it propagates once the extensions' hooks have ended."""
        operation = _Operation(self, params, context, ALL_OPERATIONS)
        await operation.run(allow)
        return await operation.outcome()

    async def stream(self, params: GraphQLParams, context: Context) -> AsyncGenerator[Hooked, None]:
        """Any operation over a websocket: one result for a query or mutation, every
        event's for a subscription."""
        operation = _Operation(self, params, context, ALL_OPERATIONS)
        async with aclosing(operation.stream()) as results:
            async for hooked in results:
                yield hooked


class _Operation:
    """One operation's ExecutionContext, extensions and runner (made per operation, as
    Strawberry makes them: extensions keep per-operation state)."""

    def __init__(
        self,
        hooks: SchemaHooks,
        params: GraphQLParams,
        context: Context,
        allowed: frozenset[OperationType],
    ) -> None:
        schema = hooks.schema
        self._hooks = hooks
        self._params = params
        self._context = context
        self.execution = ExecutionContext(
            query=params.query,
            schema=schema,
            allowed_operations=allowed,
            context=context,
            variables=params.variables,
            provided_operation_name=params.operation_name,
        )
        self._extensions: list[SchemaExtension] = schema.get_extensions()
        for extension in self._extensions:
            extension.execution_context = self.execution
        self._runner = schema.create_extensions_runner(self.execution, self._extensions)
        resolving = [extension for extension in self._extensions if hooks_resolve(extension)]
        self._middleware = MiddlewareManager(*resolving) if resolving else None
        self._unavailable = False
        self._refused = False

    async def run(self, allow: Callable[[OperationType | None], None]) -> None:
        refusal: Refused | None = None
        async with self._runner.operation():
            prepared = await self._prepare()
            if prepared.document is not None:
                try:
                    allow(self._operation_type(prepared))
                except Refused as refused:  # raised once the hooks have ended normally
                    refusal = refused
                else:
                    await self._execute(prepared)
        if refusal is not None:
            raise refusal

    async def stream(self) -> AsyncGenerator[Hooked, None]:
        async with self._runner.operation():
            prepared = await self._prepare()
            if prepared.document is None:
                pass
            elif self._operation_type(prepared) is OperationType.SUBSCRIPTION:
                async with self._runner.executing():
                    source = await self._subscribe(prepared)
                if not isinstance(source, ExecutionResult):
                    async with aclosing(source):
                        async for event_result in source:
                            self._finish(event_result)
                            async with self._runner.on_stream_result(event_result):  # type: ignore[arg-type]
                                yield await self.outcome()
                    return
                self._finish(source)
            else:
                await self._execute(prepared)
            async with self._runner.on_stream_result(self.execution.result):  # type: ignore[arg-type]
                yield await self.outcome()

    async def _execute(self, prepared: Prepared) -> None:
        async with self._runner.executing():
            if self.execution.result is None:  # an extension may have answered already
                self._finish(await self._run(prepared))

    async def outcome(self) -> Hooked:
        result = self.execution.result
        if not isinstance(result, ExecutionResult):  # an extension's own result type
            result = ExecutionResult(getattr(result, "data", None), getattr(result, "errors", None))
        reported = await self._runner.get_extensions_results(self.execution)
        if reported:
            result.extensions = {**(result.extensions or {}), **reported}
        return Hooked(result, refused=self._refused, unavailable=self._unavailable)

    async def _prepare(self) -> Prepared:
        documents, query = self._hooks.documents, self._params.query
        async with self._runner.parsing():
            if self.execution.graphql_document is None:  # an extension may have supplied it
                parsed = documents.parse(query)
                if parsed.document is None:
                    return self._refuse(parsed)
                self.execution.graphql_document = parsed.document
        async with self._runner.validation():
            prepared = documents.validate(query, self.execution.graphql_document)
            if prepared.document is None:
                return self._refuse(prepared)
        return prepared

    def _refuse(self, prepared: Prepared) -> Prepared:
        errors = list(prepared.graphql_errors)
        self._refused = True
        self.execution.pre_execution_errors = errors
        self.execution.result = ExecutionResult(None, errors)
        return prepared

    def _operation_type(self, prepared: Prepared) -> OperationType | None:
        return prepared.operation_type(self._params.operation_name)

    async def _run(self, prepared: Prepared) -> ExecutionResult:
        return await run(
            self._hooks.graphql_schema,
            prepared.document,  # type: ignore[arg-type]
            self._context,
            self._params.variables,
            self._params.operation_name,
            hide_suggestions=self._hooks.documents.hide_suggestions,
            middleware=self._middleware,
        )

    async def _subscribe(
        self, prepared: Prepared
    ) -> AsyncGenerator[ExecutionResult, None] | ExecutionResult:
        executor = subscription_executor(
            self._hooks.graphql_schema,
            prepared.document,  # type: ignore[arg-type]
            self._context,
            self._params.variables,
            self._params.operation_name,
            hide_suggestions=self._hooks.documents.hide_suggestions,
            middleware=self._middleware,
        )
        if isinstance(executor, list):
            return ExecutionResult(None, executor)
        source = await event_source(executor)
        if isinstance(source, ExecutionResult):
            return source
        return guarded(map_source_to_response_event(executor, source))  # type: ignore[arg-type]

    def _finish(self, result: ExecutionResult) -> None:
        """Our error policy on the raw errors, before the extensions' closing hooks."""
        if result.errors:
            self.execution.pre_execution_errors = result.errors
            self._unavailable = apply_error_policy(result.errors, self._context.request_id)
        self.execution.result = result
