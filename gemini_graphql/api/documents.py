"""Documents parsed and validated once: the limits every operation must pass, and a cache.

A client sends the same few documents over and over; parsing and validating them is
most of GraphQL's per-request cost, so the outcome is kept per document text.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from graphql import DocumentNode, GraphQLError, GraphQLSchema, OperationType, parse
from graphql.utilities import get_operation_ast
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule, specified_rules
from strawberry.extensions.max_aliases import MaxAliasesLimiter
from strawberry.extensions.query_depth_limiter import QueryDepthLimiter
from strawberry.schema.schema import validate_document

from gemini_graphql.api.errors import BAD_REQUEST
from gemini_graphql.api.response_cache import reads_only_user_state

# Limits on the document itself (answered as BAD_REQUEST before anything runs).
MAX_DEPTH = 10
MAX_ALIASES = 15
MAX_TOKENS = 2_000
CACHE_SIZE = 512
# Longer documents are checked every time instead of being kept (the cache stays small).
CACHE_MAX_CHARS = 16_384

# Strawberry's limiter rules, made once (each limiter instance makes new rule classes).
LIMIT_RULES: tuple[type[ASTValidationRule], ...] = (
    *QueryDepthLimiter(max_depth=MAX_DEPTH).validation_rules,
    *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules,
)


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
    """Parses with the token limit and validates with every rule, remembering the outcome."""

    def __init__(self, schema: GraphQLSchema, *, introspection: bool) -> None:
        self._schema = schema
        rules = (*specified_rules, *LIMIT_RULES)
        self._rules = rules if introspection else (*rules, NoSchemaIntrospectionCustomRule)
        self._cache: OrderedDict[str, Prepared] = OrderedDict()

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
        try:
            document = parse(query, max_tokens=MAX_TOKENS)
        except GraphQLError as error:
            return Prepared(None, (request_error(error),))
        errors = validate_document(self._schema, document, self._rules)
        if errors:
            return Prepared(None, tuple(request_error(error) for error in errors))
        return Prepared(document, user_state_only=reads_only_user_state(self._schema, document))


def request_error(error: GraphQLError) -> dict[str, Any]:
    """A parse or validation error: the request is at fault."""
    return {**error.formatted, "extensions": {"code": BAD_REQUEST}}
