"""Documents parsed and validated once: the limits every operation must pass, and a cache.

A client sends the same few documents over and over; parsing and validating them is
most of GraphQL's per-request cost, so the outcome is kept per document text.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from graphql import DocumentNode, GraphQLError, GraphQLSchema, OperationType, parse, validate
from graphql.utilities import get_operation_ast
from graphql.validation import NoSchemaIntrospectionCustomRule, specified_rules

from gemini_graphql.api.errors import BAD_REQUEST
from gemini_graphql.api.transport import document_budget
from gemini_graphql.api.transport.response_cache import reads_only_user_state

# Limits on the document itself (answered as BAD_REQUEST before anything runs).
MAX_TOKENS = 2_000
# Lexing costs ~0.15 ms per KB even of comments; a message's content (10,000 characters) fits.
MAX_CHARS = 131_072
BUDGET = document_budget.Budget(max_depth=10, max_aliases=15, max_nodes=1_000, max_repeats=10)
CACHE_SIZE = 512
# Longer documents are checked every time instead of being kept (the cache stays small).
CACHE_MAX_CHARS = 16_384


@dataclass(frozen=True, slots=True)
class Prepared:
    """A document ready to execute, or the request errors refusing it (`errors` formatted,
    `graphql_errors` the same as GraphQLErrors for extensions to see)."""

    document: DocumentNode | None
    graphql_errors: tuple[GraphQLError, ...] = ()
    errors: tuple[dict[str, Any], ...] = ()
    # Its response depends on nothing but the user's row, rooms and the day (response_cache).
    user_state_only: bool = False

    @classmethod
    def refused(cls, *errors: GraphQLError) -> Prepared:
        coded = tuple(_request_error(error) for error in errors)
        return cls(None, coded, tuple(error.formatted for error in coded))

    def operation_type(self, operation_name: str | None) -> OperationType | None:
        """The type of the operation that would run; None when the name picks none."""
        assert self.document is not None
        operation = get_operation_ast(self.document, operation_name)
        return operation.operation if operation is not None else None


@dataclass(slots=True)
class _Cached:
    parsed: Prepared  # the parsed document (not yet valid), or the parse errors
    prepared: Prepared | None = None  # once validated


class Documents:
    """Parses with the token limit, checks the budget, then validates with every rule,
    remembering the outcome of each step per document text.

    Without introspection (production) the schema is private, so validation messages do not
    suggest names either ("Did you mean 'me'?").
    """

    def __init__(self, schema: GraphQLSchema, *, introspection: bool) -> None:
        self._schema = schema
        private = (*specified_rules, NoSchemaIntrospectionCustomRule)
        self._rules = specified_rules if introspection else private
        self._hide_suggestions = not introspection
        self._cache: OrderedDict[str, _Cached] = OrderedDict()

    @property
    def hide_suggestions(self) -> bool:
        """Whether execution, too, must keep names out of its messages (variable errors)."""
        return self._hide_suggestions

    def prepare(self, query: str) -> Prepared:
        """Parsed and validated: what the transports execute."""
        entry = self._entry(query)
        if entry.prepared is None:
            entry.prepared = self._validate(entry.parsed)
        return entry.prepared

    def parse(self, query: str) -> Prepared:
        """Only parsed (for extensions' on_parse): `document` is set unless it failed."""
        return self._entry(query).parsed

    def validate(self, query: str, document: DocumentNode) -> Prepared:
        """`document` validated (for extensions' on_validate); remembered when it is the one
        `parse(query)` gave, checked afresh when an extension supplied another."""
        entry = self._entry(query)
        if entry.parsed.document is not document:
            return self._validate(Prepared(document))
        if entry.prepared is None:
            entry.prepared = self._validate(entry.parsed)
        return entry.prepared

    def _entry(self, query: str) -> _Cached:
        entry = self._cache.get(query)
        if entry is not None:
            self._cache.move_to_end(query)
            return entry
        entry = _Cached(self._parse(query))
        if len(query) <= CACHE_MAX_CHARS:
            self._cache[query] = entry
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return entry

    def _parse(self, query: str) -> Prepared:
        if len(query) > MAX_CHARS:
            return Prepared.refused(
                GraphQLError(f"The document is longer than {MAX_CHARS} characters.")
            )
        try:
            return Prepared(parse(query, max_tokens=MAX_TOKENS))
        except GraphQLError as error:
            return Prepared.refused(error)

    def _validate(self, parsed: Prepared) -> Prepared:
        document = parsed.document
        if document is None:
            return parsed
        over_budget = document_budget.check(document, BUDGET)
        if over_budget is not None:  # before any rule that expands fragments
            return Prepared.refused(over_budget)
        errors = validate(
            self._schema, document, self._rules, hide_suggestions=self._hide_suggestions
        )
        if errors:
            return Prepared.refused(*errors)
        return Prepared(document, user_state_only=reads_only_user_state(self._schema, document))


def _request_error(error: GraphQLError) -> GraphQLError:
    """A parse or validation error, coded: the request is at fault."""
    return GraphQLError(
        error.message,
        error.nodes,
        error.source,
        error.positions,
        error.path,
        error.original_error,
        {"code": BAD_REQUEST},
    )
