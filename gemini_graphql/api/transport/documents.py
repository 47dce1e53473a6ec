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

from gemini_graphql.api.transport import document_budget
from gemini_graphql.api.errors import BAD_REQUEST
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
    """A document ready to execute, or the request errors (already formatted) refusing it."""

    document: DocumentNode | None
    errors: tuple[dict[str, Any], ...] = ()
    # Its response depends on nothing but the user's row, rooms and the day (response_cache).
    user_state_only: bool = False

    def operation_type(self, operation_name: str | None) -> OperationType | None:
        """The type of the operation that would run; None when the name picks none."""
        assert self.document is not None
        operation = get_operation_ast(self.document, operation_name)
        return operation.operation if operation is not None else None


class Documents:
    """Parses with the token limit, checks the budget, then validates with every rule,
    remembering the outcome.

    Without introspection (production) the schema is private, so validation messages do not
    suggest names either ("Did you mean 'me'?").
    """

    def __init__(self, schema: GraphQLSchema, *, introspection: bool) -> None:
        self._schema = schema
        private = (*specified_rules, NoSchemaIntrospectionCustomRule)
        self._rules = specified_rules if introspection else private
        self._hide_suggestions = not introspection
        self._cache: OrderedDict[str, Prepared] = OrderedDict()

    @property
    def hide_suggestions(self) -> bool:
        """Whether execution, too, must keep names out of its messages (variable errors)."""
        return self._hide_suggestions

    def prepare(self, query: str) -> Prepared:
        prepared = self._cache.get(query)
        if prepared is not None:
            self._cache.move_to_end(query)
            return prepared
        prepared = self._prepare(query)
        if len(query) <= CACHE_MAX_CHARS:
            self._cache[query] = prepared
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return prepared

    def _prepare(self, query: str) -> Prepared:
        if len(query) > MAX_CHARS:
            message = f"The document is longer than {MAX_CHARS} characters."
            return Prepared(None, ({"message": message, "extensions": {"code": BAD_REQUEST}},))
        try:
            document = parse(query, max_tokens=MAX_TOKENS)
        except GraphQLError as error:
            return Prepared(None, (request_error(error),))
        over_budget = document_budget.check(document, BUDGET)
        if over_budget is not None:  # before any rule that expands fragments
            return Prepared(None, (request_error(over_budget),))
        errors = validate(
            self._schema, document, self._rules, hide_suggestions=self._hide_suggestions
        )
        if errors:
            return Prepared(None, tuple(request_error(error) for error in errors))
        return Prepared(document, user_state_only=reads_only_user_state(self._schema, document))


def request_error(error: GraphQLError) -> dict[str, Any]:
    """A parse or validation error: the request is at fault."""
    return {**error.formatted, "extensions": {"code": BAD_REQUEST}}
