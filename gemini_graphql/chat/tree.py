"""The conversation tree in SQL: branches, versions and leaves.

Every message has a parent (None for a room's first); siblings are versions of one
another, oldest first; a room's current branch runs from its first message down to its
`current_leaf_id`. Because a child is always created after its parent and ids are
time-ordered (UUIDv7), id order along a branch is conversation order.

A branch is read by walking up from a message with one recursive CTE (`WITH RECURSIVE`
runs on PostgreSQL and SQLite), one primary-key probe per step: the newest N messages of
a branch cost N steps however deep the room is or however many branches it has. Walks
start from several rooms at once, so a page of rooms asking for their messages is still
one statement.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gemini_graphql.models import Chatroom, Message, loaded

_ROOMS = Chatroom.__table__  # type: ignore[attr-defined]
_MESSAGES = Message.__table__  # type: ignore[attr-defined]


def _branch_cte(starts: sa.Select[Any], **limits: Any) -> sa.CTE:
    """Ancestors of the start rows: (id, chatroom_id, parent_id, n)."""
    seed = starts.add_columns(sa.literal(0, sa.Integer).label("n"))
    walk = seed.cte("branch", recursive=True)
    step = sa.select(
        _MESSAGES.c.id, _MESSAGES.c.chatroom_id, _MESSAGES.c.parent_id, walk.c.n + 1
    ).join(walk, _MESSAGES.c.id == walk.c.parent_id)
    if (max_steps := limits.get("max_steps")) is not None:
        step = step.where(walk.c.n < max_steps)
    if (stop := limits.get("stop")) is not None:
        step = step.where(walk.c.id != stop)
    return walk.union_all(step)


_ROOM_IDS = sa.bindparam("room_ids", expanding=True)
_LEAVES = sa.select(_MESSAGES.c.id, _MESSAGES.c.chatroom_id, _MESSAGES.c.parent_id).where(
    _MESSAGES.c.id.in_(sa.select(_ROOMS.c.current_leaf_id).where(_ROOMS.c.id.in_(_ROOM_IDS)))
)
_CURSOR = sa.bindparam("cursor", type_=sa.Uuid)
_LIMIT = sa.bindparam("limit", type_=sa.Integer)


def _rows_of(branch: sa.CTE) -> sa.Select[Any]:
    return (
        sa.select(_MESSAGES)
        .join(branch, branch.c.id == _MESSAGES.c.id)
        .order_by(_MESSAGES.c.chatroom_id, _MESSAGES.c.id)
    )


# The newest `limit` messages of each room's current branch.
_NEWEST = _rows_of(_branch_cte(_LEAVES, max_steps=_LIMIT - 1))
# The `limit` messages before the cursor's message, along its branch (its ancestors).
_BEFORE = _rows_of(
    _branch_cte(
        sa.select(_MESSAGES.c.id, _MESSAGES.c.chatroom_id, _MESSAGES.c.parent_id).where(
            _MESSAGES.c.id
            == sa.select(_MESSAGES.c.parent_id)
            .where(_MESSAGES.c.id == _CURSOR, _MESSAGES.c.chatroom_id.in_(_ROOM_IDS))
            .scalar_subquery()
        ),
        max_steps=_LIMIT - 1,
    )
)


def _oldest(branch: sa.CTE, *, after_cursor: bool) -> sa.Select[Any]:
    """The oldest `limit` rows of each walked branch (after the cursor, when given)."""
    ranked = sa.select(
        branch.c.id,
        sa.func.row_number()
        .over(partition_by=branch.c.chatroom_id, order_by=branch.c.id)
        .label("rank"),
    )
    if after_cursor:
        ranked = ranked.where(branch.c.id > _CURSOR)
    ranked_cte = ranked.cte("ranked")
    return (
        sa.select(_MESSAGES)
        .join(ranked_cte, ranked_cte.c.id == _MESSAGES.c.id)
        .where(ranked_cte.c.rank <= _LIMIT)
        .order_by(_MESSAGES.c.chatroom_id, _MESSAGES.c.id)
    )


# Forward pages walk each branch from its leaf up to the start (or the cursor).
_FIRST = _oldest(_branch_cte(_LEAVES), after_cursor=False)
_AFTER = _oldest(_branch_cte(_LEAVES, stop=_CURSOR), after_cursor=True)


async def branch_rows(
    connection: AsyncConnection,
    room_ids: Sequence[uuid.UUID],
    *,
    backwards: bool,
    limit: int,
    cursor: uuid.UUID | None,
) -> list[Message]:
    """Up to `limit` messages per room along its current branch, by room then id.

    Backwards: the newest ones (before the cursor's message, along its branch). Forwards:
    the oldest ones (after the cursor). A cursor of another room gives that room nothing.
    """
    if limit <= 0 or not room_ids:
        return []
    parameters: dict[str, Any] = {"room_ids": list(room_ids), "limit": limit}
    if cursor is not None:
        parameters["cursor"] = cursor
    if backwards:
        statement = _BEFORE if cursor is not None else _NEWEST
    else:
        statement = _AFTER if cursor is not None else _FIRST
    rows = (await connection.execute(statement, parameters)).mappings().all()
    return [loaded(Message, row) for row in rows]


# The context of a reply: the branch ending at the message it answers. Replies that are not
# COMPLETE are left out, so the walk goes far enough to still find `limit` messages. The walk
# carries the columns it needs: joined back to `messages` and ordered by id, PostgreSQL chose
# a backward scan of the whole primary key down to the branch (every newer message of every
# room read, per reply), not one probe per step.
_CONTEXT_COLUMNS = (
    _MESSAGES.c.id,
    _MESSAGES.c.parent_id,
    _MESSAGES.c.role,
    _MESSAGES.c.content,
    _MESSAGES.c.status,
)
_CONTEXT_START = (
    sa.select(*_CONTEXT_COLUMNS, sa.literal(0, sa.Integer).label("n"))
    .where(_MESSAGES.c.id == sa.bindparam("last_id", type_=sa.Uuid))
    .cte("context", recursive=True)
)
_CONTEXT_WALK = _CONTEXT_START.union_all(
    sa.select(*_CONTEXT_COLUMNS, _CONTEXT_START.c.n + 1)
    .join(_CONTEXT_START, _MESSAGES.c.id == _CONTEXT_START.c.parent_id)
    .where(_CONTEXT_START.c.n < sa.bindparam("steps", type_=sa.Integer))
)
_CONTEXT = (
    sa.select(_CONTEXT_WALK.c.role, _CONTEXT_WALK.c.content)
    .where(_CONTEXT_WALK.c.status == "complete", _CONTEXT_WALK.c.content != "")
    .order_by(_CONTEXT_WALK.c.n)  # newest first: n counts the steps up from `last_id`
    .limit(_LIMIT)
)


async def context_rows(
    connection: AsyncConnection, last_id: uuid.UUID, limit: int
) -> list[tuple[str, str]]:
    """(role, content) of the newest `limit` COMPLETE messages of the branch ending at
    `last_id`, newest first."""
    parameters = {"last_id": last_id, "steps": 2 * limit, "limit": limit}
    rows = (await connection.execute(_CONTEXT, parameters)).all()
    return [(role, content) for role, content in rows]


# The versions of messages: the children of their parents (a room's roots for a first one).
_SIBLINGS = (
    sa.select(_MESSAGES)
    .where(
        sa.or_(
            _MESSAGES.c.parent_id.in_(sa.bindparam("parent_ids", expanding=True)),
            sa.and_(
                _MESSAGES.c.parent_id.is_(None),
                _MESSAGES.c.chatroom_id.in_(sa.bindparam("root_rooms", expanding=True)),
            ),
        )
    )
    .order_by(_MESSAGES.c.id)
)

VersionGroup = tuple[uuid.UUID, uuid.UUID | None]
"""Whose versions: (room id, parent id); a parent of None means the room's first messages."""


async def versions_of(
    connection: AsyncConnection, groups: Sequence[VersionGroup]
) -> dict[VersionGroup, list[Message]]:
    """Each group's messages, oldest first: one statement for any number of groups."""
    parents = sorted({parent for _, parent in groups if parent is not None})
    roots = sorted({room for room, parent in groups if parent is None})
    found: dict[VersionGroup, list[Message]] = {group: [] for group in groups}
    if not parents and not roots:
        return found
    rows = await connection.execute(_SIBLINGS, {"parent_ids": parents, "root_rooms": roots})
    for row in rows.mappings():
        message = loaded(Message, row)
        group = (message.chatroom_id, message.parent_id)
        if group in found:
            found[group].append(message)
    return found


# The newest descendant of a message (itself when it has none): a leaf, since nothing was
# created after it below it.
_DESCENDANTS = (
    sa.select(_MESSAGES.c.id)
    .where(_MESSAGES.c.id == sa.bindparam("message_id", type_=sa.Uuid))
    .cte("descendants", recursive=True)
)
_DESCENDANTS = _DESCENDANTS.union_all(
    sa.select(_MESSAGES.c.id).join(_DESCENDANTS, _MESSAGES.c.parent_id == _DESCENDANTS.c.id)
)
_NEWEST_LEAF = sa.select(_DESCENDANTS.c.id).order_by(_DESCENDANTS.c.id.desc()).limit(1)


async def newest_leaf(connection: AsyncConnection, message_id: uuid.UUID) -> uuid.UUID:
    leaf = await connection.scalar(_NEWEST_LEAF, {"message_id": message_id})
    return leaf if isinstance(leaf, uuid.UUID) else uuid.UUID(str(leaf))
