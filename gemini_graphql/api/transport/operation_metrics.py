"""Each operation counted and timed under labels of bounded cardinality.

Operation names are the client's to choose: the first MAX_OPERATION_NAMES distinct ones a
process sees in valid documents get series of their own, later ones share OTHER, and
unnamed operations share ANONYMOUS. A document that does not parse or validate, or names
no operation of its own, counts as type `unknown`, name INVALID: junk takes no name's
place, and a subscription's `field` is always one of the schema's (validation says so). The label children are made once per (type, name, field)
and kept, so counting an operation costs two dictionary lookups and the increments.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
)
from graphql.utilities import get_operation_ast
from prometheus_client import Counter, Gauge, Histogram

from gemini_graphql import metrics
from gemini_graphql.api.transport.documents import Documents
from gemini_graphql.api.transport.execution import GraphQLParams

MAX_OPERATION_NAMES = 100
MAX_NAME_LENGTH = 64
ANONYMOUS = "_anonymous"
OTHER = "_other"
INVALID = "_invalid"
UNKNOWN_TYPE = "unknown"


@dataclass(slots=True)
class OperationSeries:
    """One (type, name) pair's metrics; for a subscription, its root field's too."""

    count: Counter
    duration: Histogram
    active: Gauge | None = None
    events: Counter | None = None


@dataclass(slots=True)
class OperationMetrics:
    documents: Documents
    max_names: int = MAX_OPERATION_NAMES
    _names: set[str] = field(default_factory=set)
    _series: dict[tuple[str, str, str | None], OperationSeries] = field(default_factory=dict)

    def series(self, params: GraphQLParams | None) -> OperationSeries:
        """The series an operation counts in (None: a request with no readable operation)."""
        # Validated (and cached) as the transports do: the same lookup they make.
        document = None if params is None else self.documents.prepare(params.query).document
        operation = None
        if document is not None and params is not None:
            operation = get_operation_ast(document, params.operation_name)
        if operation is None:
            return self._of(UNKNOWN_TYPE, INVALID, None)
        name = self._name(operation.name.value if operation.name else None)
        root = None
        if operation.operation is OperationType.SUBSCRIPTION:
            root = root_field(document, operation)  # type: ignore[arg-type]
        return self._of(operation.operation.value, name, root)

    def _name(self, name: str | None) -> str:
        if name is None:
            return ANONYMOUS
        if name in self._names:
            return name
        # (A validated document's names are GraphQL names: only length and ours to check.)
        if len(name) > MAX_NAME_LENGTH or name.startswith("_"):
            return OTHER  # not a name a client gave its operation (or one of ours)
        if len(self._names) >= self.max_names:
            return OTHER
        self._names.add(name)
        return name

    def _of(self, operation_type: str, name: str, root: str | None) -> OperationSeries:
        key = (operation_type, name, root)
        series = self._series.get(key)
        if series is None:
            series = OperationSeries(
                metrics.OPERATIONS.labels(operation_type, name),
                metrics.OPERATION_DURATION.labels(operation_type, name),
            )
            if root is not None:
                series.active = metrics.SUBSCRIPTIONS_ACTIVE.labels(root)
                series.events = metrics.SUBSCRIPTION_EVENTS.labels(root)
            self._series[key] = series
        return series


def root_field(document: DocumentNode, operation: OperationDefinitionNode) -> str | None:
    """A subscription's one root field (validation allows exactly one), through fragments;
    None when the document does not say (it will fail validation)."""
    fragments = {
        definition.name.value: definition
        for definition in document.definitions
        if definition.kind == "fragment_definition"
    }
    selections: SelectionSetNode | None = operation.selection_set
    for _ in range(len(fragments) + 2):  # each step enters a fragment: no cycle runs forever
        if selections is None or not selections.selections:
            return None
        first = selections.selections[0]
        if isinstance(first, FieldNode):
            return first.name.value if first.name.value != "__typename" else None
        if isinstance(first, InlineFragmentNode):
            selections = first.selection_set
        elif isinstance(first, FragmentSpreadNode):
            fragment = fragments.get(first.name.value)
            selections = fragment.selection_set if fragment is not None else None  # type: ignore[attr-defined]
    return None


def count_errors(errors: Iterable[dict[str, Any]]) -> None:
    """Top-level errors as answered (formatted, coded by the error policy)."""
    for error in errors:
        extensions = error.get("extensions") or {}
        code = extensions.get("code") if isinstance(extensions, dict) else None
        metrics.count_error(code if isinstance(code, str) else "UNCODED", "response")
