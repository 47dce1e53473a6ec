"""Subscription events rendered directly when the selection is flat.

Every event of a subscription executes the same selection set on a new root value. When
that selection holds only leaf fields read by Strawberry's plain attribute resolvers (what
a chat client asks of `messageStream`: seq, delta, status), executing it is one attribute
read and one serialize per field, while graphql-core's general path (collecting fields,
building resolve infos, completing values) costs several times the rest of the fan-out.
Anything else (a nested object, a fragment, a directive, an argument, a null where the
schema forbids one) goes through graphql-core exactly as before, so results never differ.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any

from graphql import (
    ExecutionResult,
    FieldNode,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    is_leaf_type,
)
from graphql.execution import Executor, execute_subscription_event

from gemini_graphql.api.transport.strawberry_seams import reads_attribute


@dataclass(frozen=True, slots=True)
class _Leaf:
    key: str  # the response key (alias or name)
    resolve: Callable[[Any, Any], Any] | None  # Strawberry's plain reader; None for __typename
    serialize: Callable[[Any], Any]
    nullable: bool


class _NotFlat(Exception):
    """This event needs the general path (e.g. a null in a non-null field: an error)."""


class FlatEvents:
    """Renders each event of one subscription operation; see the module docstring."""

    def __init__(self, root_key: str, type_name: str, leaves: tuple[_Leaf, ...]) -> None:
        self._root_key = root_key
        self._type_name = type_name
        self._leaves = leaves

    @classmethod
    def of(cls, schema: GraphQLSchema, operation: OperationDefinitionNode) -> FlatEvents | None:
        """The renderer for `operation`, or None when its selection is not flat."""
        subscription = schema.subscription_type
        roots = operation.selection_set.selections
        if operation.operation is not OperationType.SUBSCRIPTION or subscription is None:
            return None
        if len(roots) != 1 or not isinstance(roots[0], FieldNode) or roots[0].directives:
            return None
        root = roots[0]
        root_field = subscription.fields.get(root.name.value)
        if root_field is None or root_field.subscribe is None or root.selection_set is None:
            return None
        event_type = root_field.type
        if isinstance(event_type, GraphQLNonNull):
            event_type = event_type.of_type
        if not isinstance(event_type, GraphQLObjectType):
            return None
        leaves = []
        for node in root.selection_set.selections:
            if not isinstance(node, FieldNode) or node.directives or node.arguments:
                return None
            key = node.alias.value if node.alias else node.name.value
            if node.name.value == "__typename":
                leaves.append(_Leaf(key, None, str, False))
                continue
            field = event_type.fields.get(node.name.value)
            if field is None or not reads_attribute(field.resolve):
                return None  # a resolver of its own: it may need `info`
            field_type, nullable = field.type, True
            if isinstance(field_type, GraphQLNonNull):
                field_type, nullable = field_type.of_type, False
            if not is_leaf_type(field_type):
                return None
            serialize = field_type.serialize  # type: ignore[union-attr]
            leaves.append(_Leaf(key, field.resolve, serialize, nullable))
        root_key = root.alias.value if root.alias else root.name.value
        return cls(root_key, event_type.name, tuple(leaves))

    async def results(
        self, rebuild: Callable[[], Executor], events: AsyncGenerator[Any, None]
    ) -> AsyncGenerator[ExecutionResult, None]:
        """Each event's result; what graphql-core's map_source_to_response_event would give.

        `rebuild` makes the operation's executor again for an event that needs the general
        path: holding one per idle subscription would cost more memory than anything else
        the subscription keeps.
        """
        async with aclosing(events):  # closing this closes the source (its Redis channel) at once
            async for event in events:
                data = self.data(event)
                if data is not None:
                    result = ExecutionResult(data, None)
                else:
                    executed = execute_subscription_event(rebuild().build_per_event_executor(event))
                    result = await executed if isawaitable(executed) else executed  # type: ignore[misc]
                yield result

    def data(self, event: Any) -> dict[str, Any] | None:
        """The event's `data`, None when it needs the general path."""
        try:
            return {self._root_key: self._render(event)}
        except _NotFlat:
            return None

    def _render(self, event: Any) -> dict[str, Any]:
        if event is None:
            raise _NotFlat
        rendered: dict[str, Any] = {}
        for leaf in self._leaves:
            if leaf.resolve is None:
                rendered[leaf.key] = self._type_name
                continue
            try:
                value = leaf.resolve(event, None)  # plain readers ignore `info`
                rendered[leaf.key] = None if value is None else leaf.serialize(value)
            except Exception:  # noqa: BLE001 - graphql-core reports it properly
                raise _NotFlat from None
            if value is None and not leaf.nullable:
                raise _NotFlat
        return rendered
