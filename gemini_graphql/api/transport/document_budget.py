"""The first check of every document: its size after expanding fragments, in linear time.

graphql-core's rules and Strawberry's depth and alias limiters expand every fragment
spread where it is used, without remembering what a fragment expanded to. A chain of
fragments that each spread the next one twice is a few hundred bytes and expands to
2**n fields: those rules then block the event loop for minutes. And the rule that checks
that same-named fields can merge compares them pairwise, so a hundred copies of one small
field already cost it a quarter of a second.

So before any of them runs, one walk expands the operations with a budget: it stops at
the first node past MAX_NODES (fields, spreads and inline fragments after expansion), so
its cost is bounded by the budget and the document's length, whatever the fragments do.
The same walk finds unknown fragments and fragment cycles, measures the depth and counts
aliases (as Strawberry's limiters define them), and bounds how many fields answer at one
response path. Only a document within every bound goes on to the other rules.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    Node,
    OperationDefinitionNode,
    SelectionSetNode,
)


@dataclass(frozen=True, slots=True)
class Budget:
    max_depth: int  # fields with a selection nested in one another (introspection not counted)
    max_aliases: int  # aliased fields after expansion, across the document's operations
    max_nodes: int  # fields, fragment spreads and inline fragments after expansion
    max_repeats: int  # fields answering at the same response path (e.g. `me { id } me { id }`)


def check(document: DocumentNode, budget: Budget) -> GraphQLError | None:
    """The first bound the document breaks, as a validation error; None when within all."""
    fragments: dict[str, FragmentDefinitionNode] = {}
    operations: list[OperationDefinitionNode] = []
    for definition in document.definitions:
        if isinstance(definition, FragmentDefinitionNode):
            fragments.setdefault(definition.name.value, definition)
        elif isinstance(definition, OperationDefinitionNode):
            operations.append(definition)
    walk = _Walk(fragments, budget)
    for operation in operations:
        error = walk.operation(operation)
        if error is not None:
            return error
    for name, fragment in fragments.items():
        if name not in walk.used:  # graphql-core would walk it on its own: refuse it first
            return GraphQLError(f"Fragment '{name}' is never used.", fragment)
    return None


class _Walk:
    """One budget shared by every operation of the document."""

    def __init__(self, fragments: dict[str, FragmentDefinitionNode], budget: Budget) -> None:
        self._fragments = fragments
        self._budget = budget
        self._nodes = 0
        self._aliases = 0
        self.used: set[str] = set()

    def operation(self, operation: OperationDefinitionNode) -> GraphQLError | None:
        """Expand one operation, iteratively (no recursion limit to hit)."""
        budget = self._budget
        label = operation.name.value if operation.name else "anonymous"
        repeats: Counter[tuple[str, ...]] = Counter()
        # (selection set, depth so far, counts towards depth, response path, fragments on the path)
        stack: list[tuple[SelectionSetNode, int, bool, tuple[str, ...], frozenset[str]]] = [
            (operation.selection_set, 0, True, (), frozenset())
        ]
        while stack:
            selection_set, depth, counted, path, spread_path = stack.pop()
            for selection in selection_set.selections:
                self._nodes += 1
                if self._nodes > budget.max_nodes:
                    return _error(
                        f"The document selects more than {budget.max_nodes} fields and "
                        "fragments once its fragments are expanded.",
                        selection,
                    )
                if isinstance(selection, FieldNode):
                    key = selection.alias.value if selection.alias else selection.name.value
                    if selection.alias is not None:
                        self._aliases += 1
                        if self._aliases > budget.max_aliases:
                            return _error(
                                f"More than {budget.max_aliases} aliases found. "
                                f"Allowed: {budget.max_aliases}",
                                selection,
                            )
                    field_path = (*path, key)
                    repeats[field_path] += 1
                    if repeats[field_path] > budget.max_repeats:
                        return _error(
                            f"'{'.'.join(field_path)}' is selected more than "
                            f"{budget.max_repeats} times.",
                            selection,
                        )
                    if selection.selection_set is None:
                        continue
                    # As Strawberry's QueryDepthLimiter: introspection fields add no depth.
                    counts = counted and not selection.name.value.startswith("__")
                    nested = depth + 1 if counts else depth
                    if nested > budget.max_depth:
                        return _error(
                            f"'{label}' exceeds maximum operation depth of {budget.max_depth}",
                            selection,
                        )
                    stack.append((selection.selection_set, nested, counts, field_path, spread_path))
                elif isinstance(selection, InlineFragmentNode):
                    stack.append((selection.selection_set, depth, counted, path, spread_path))
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self._fragments.get(name)
                    if fragment is None:
                        return _error(f"Unknown fragment '{name}'.", selection)
                    if name in spread_path:
                        return _error(f"Cannot spread fragment '{name}' within itself.", selection)
                    self.used.add(name)
                    stack.append(
                        (fragment.selection_set, depth, counted, path, spread_path | {name})
                    )
        return None


def _error(message: str, node: Node) -> GraphQLError:
    return GraphQLError(message, node)
