"""the conversation tree (parent_id, each room's current leaf), room system instructions,
token usage; every v1 room becomes one branch

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09 10:00:00

On SQLite, changing `messages` means recreating it (copy, DROP TABLE, rename), and with
foreign_keys=ON (the app's engine, inside a transaction where the pragma cannot be turned
off) DROP TABLE deletes the old rows first, so ON DELETE CASCADE empties the copy of every
row whose parent_id/reply_to_id points at one of them. So the self-references are always
NULL while the table is recreated, and are filled in afterwards. `users` and `chatrooms` are
referenced with ON DELETE CASCADE too, so they are never recreated: columns are added and
dropped in place (SQLite's ALTER TABLE ... DROP COLUMN needs 3.35 or later).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROOTS = "parent_id IS NULL"
_STATUS_0002 = "status IN ('pending', 'streaming', 'complete', 'failed')"
_STATUS_0003 = "status IN ('pending', 'streaming', 'complete', 'failed', 'stopped')"
# Holds the reply_to_id values across the downgrade's recreate of `messages` (see above).
_HOLD = "_migration_0003_reply_to"


def _is_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(
            sa.Column("daily_token_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("last_token_date", sa.Date(), nullable=True))
    with op.batch_alter_table("chatrooms") as batch_op:
        batch_op.add_column(sa.Column("system_instruction", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("current_leaf_id", sa.Uuid(), nullable=True))

    # The old links are replaced by the tree below; cleared first (see the module docstring).
    op.execute("UPDATE messages SET reply_to_id = NULL WHERE reply_to_id IS NOT NULL")
    with op.batch_alter_table("messages") as batch_op:
        batch_op.alter_column("reply_to_id", new_column_name="parent_id")
        batch_op.add_column(sa.Column("prompt_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("output_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("total_tokens", sa.Integer(), nullable=True))
        batch_op.drop_constraint("ck_messages_status", type_="check")
        batch_op.create_check_constraint("ck_messages_status", _STATUS_0003)
    if _is_postgresql():  # the name a fresh database gives it (SQLite's is unnamed)
        op.execute(
            "ALTER TABLE messages RENAME CONSTRAINT messages_reply_to_id_fkey"
            " TO messages_parent_id_fkey"
        )

    # Every room becomes one branch: each message follows the one before it (ids are
    # time-ordered UUIDv7; SQLite stores them as 32 lower-case hex characters, which sort the
    # same way), the room's first has no parent, and the branch ends at the room's last.
    # (ORDER BY ... LIMIT 1 rather than max(): PostgreSQL has no max(uuid).)
    op.execute(
        "UPDATE messages SET parent_id = ("
        " SELECT p.id FROM messages p"
        " WHERE p.chatroom_id = messages.chatroom_id AND p.id < messages.id"
        " ORDER BY p.id DESC LIMIT 1)"
    )
    op.execute(
        "UPDATE chatrooms SET current_leaf_id = ("
        " SELECT m.id FROM messages m WHERE m.chatroom_id = chatrooms.id"
        " ORDER BY m.id DESC LIMIT 1)"
    )

    op.create_index("ix_messages_parent_id", "messages", ["parent_id", "id"], unique=False)
    op.create_index(
        "ix_messages_roots",
        "messages",
        ["chatroom_id", "id"],
        unique=False,
        postgresql_where=sa.text(_ROOTS),
        sqlite_where=sa.text(_ROOTS),
    )


def downgrade() -> None:
    # 'stopped' is not a status before 0003: a stopped reply becomes a failed one (its error
    # says so unless it has one), so the old CHECK constraint holds.
    op.execute(
        "UPDATE messages SET status = 'failed', error = COALESCE(error, 'Stopped.')"
        " WHERE status = 'stopped'"
    )

    # reply_to_id again: an ASSISTANT message's parent (the USER message it answers), NULL
    # for USER messages. Held aside while `messages` is recreated (see the module docstring).
    op.create_table(
        _HOLD,
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("reply_to_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(
        f"INSERT INTO {_HOLD} (id, reply_to_id) SELECT id, parent_id FROM messages"
        " WHERE role = 'assistant' AND parent_id IS NOT NULL"
    )
    op.execute("UPDATE messages SET parent_id = NULL WHERE parent_id IS NOT NULL")

    op.drop_index("ix_messages_roots", table_name="messages")
    op.drop_index("ix_messages_parent_id", table_name="messages")
    if _is_postgresql():
        op.execute(
            "ALTER TABLE messages RENAME CONSTRAINT messages_parent_id_fkey"
            " TO messages_reply_to_id_fkey"
        )
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_constraint("ck_messages_status", type_="check")
        batch_op.create_check_constraint("ck_messages_status", _STATUS_0002)
        batch_op.drop_column("total_tokens")
        batch_op.drop_column("output_tokens")
        batch_op.drop_column("prompt_tokens")
        batch_op.alter_column("parent_id", new_column_name="reply_to_id")
    op.execute(
        f"UPDATE messages SET reply_to_id = ("
        f" SELECT h.reply_to_id FROM {_HOLD} h WHERE h.id = messages.id)"
        f" WHERE id IN (SELECT id FROM {_HOLD})"
    )
    op.drop_table(_HOLD)

    # In place, never through batch mode's recreate (see the module docstring).
    op.drop_column("chatrooms", "current_leaf_id")
    op.drop_column("chatrooms", "system_instruction")
    op.drop_column("users", "last_token_date")
    op.drop_column("users", "daily_token_count")
