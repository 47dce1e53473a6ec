"""an index of unfinished replies, for the stranded-reply sweep at any age

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNFINISHED = "status IN ('pending', 'streaming')"


def upgrade() -> None:
    op.create_index(
        "ix_messages_unfinished",
        "messages",
        ["updated_at"],
        postgresql_where=sa.text(_UNFINISHED),
        sqlite_where=sa.text(_UNFINISHED),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_unfinished", table_name="messages")
