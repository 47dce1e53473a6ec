"""Whole responses to queries that read nothing but the user's own row and room list.

Clients poll `me` and their room list far more often than either changes, and for a
page of 20 rooms graphql-core's per-field work costs several times what the data does.
Such a response depends only on the user's row, their rooms and the UTC day (usage
resets at midnight), so it is kept with the user's other copies in `UserCache` and
dropped with them by the same change notices (see user_cache for why that is safe).

A document qualifies only if every field it selects, through fragments too, is one of
CACHEABLE_FIELDS; messages, subscriptions, introspection and mutations never do.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLSchema,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    visit,
)

# Every field here is computed from the user's row, their chatroom rows, and the day.
CACHEABLE_FIELDS = frozenset(
    {
        "Query.me",
        *(
            f"User.{name}"
            for name in (
                "id",
                "mobileNumber",
                "name",
                "email",
                "tier",
                "hasPassword",
                "createdAt",
                "usage",
            )
        ),
        *(f"Usage.{name}" for name in ("used", "limit", "remaining", "resetsAt")),
        "Query.chatrooms",
        "ChatroomConnection.edges",
        "ChatroomConnection.pageInfo",
        "ChatroomEdge.cursor",
        "ChatroomEdge.node",
        *(f"Chatroom.{name}" for name in ("id", "title", "description", "createdAt", "updatedAt")),
        *(
            f"PageInfo.{name}"
            for name in (
                "hasNextPage",
                "hasPreviousPage",
                "startCursor",
                "endCursor",
            )
        ),
    }
)


def reads_only_user_state(schema: GraphQLSchema, document: DocumentNode) -> bool:
    """Whether every operation of the document selects only CACHEABLE_FIELDS."""
    type_info = TypeInfo(schema)
    checker = _FieldChecker(type_info)
    visit(document, TypeInfoVisitor(type_info, checker))
    return checker.cacheable


def response_key(
    query: str, operation_name: str | None, variables: dict[str, Any] | None, day: date
) -> str:
    """Everything a qualifying response depends on besides the user's own data."""
    canonical = json.dumps(variables or {}, sort_keys=True, separators=(",", ":"))
    return f"{day.isoformat()}\x00{operation_name or ''}\x00{canonical}\x00{query}"


class _FieldChecker(Visitor):
    def __init__(self, type_info: TypeInfo) -> None:
        super().__init__()
        self._type_info = type_info
        self.cacheable = True

    def enter_field(self, node: FieldNode, *_: Any) -> Any:
        name = node.name.value
        if name == "__typename":
            return None
        parent = self._type_info.get_parent_type()
        if parent is None or f"{parent.name}.{name}" not in CACHEABLE_FIELDS:
            self.cacheable = False
            return self.BREAK
        return None
