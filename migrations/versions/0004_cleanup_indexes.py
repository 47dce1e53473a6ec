"""indexes for the scheduled clean-ups: otps by created_at, stripe_events by received_at

The hourly delete of old one-time codes (auth.cleanup) and the daily delete of old Stripe
event ids (billing.cleanup) select the oldest rows a batch at a time; without these every
batch reads the whole table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_otps_created_at", "otps", ["created_at"])
    op.create_index("ix_stripe_events_received_at", "stripe_events", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_stripe_events_received_at", table_name="stripe_events")
    op.drop_index("ix_otps_created_at", table_name="otps")
