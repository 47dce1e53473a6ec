"""The tables. PostgreSQL is the only durable store; Redis may be lost at any time.

Enumerations are stored as short strings guarded by CHECK constraints rather
than native enum types, so adding a value is a one-line migration.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from gemini_graphql.ids import new_id


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite keeps no zone: naive values are UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


TIMESTAMP = UTCDateTime()


class Tier(StrEnum):
    BASIC = "basic"
    PRO = "pro"


class OtpPurpose(StrEnum):
    LOGIN = "login"
    PASSWORD_RESET = "password_reset"


class MessageRole(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(StrEnum):
    PENDING = "pending"
    STREAMING = "streaming"
    COMPLETE = "complete"
    FAILED = "failed"
    STOPPED = "stopped"


UNFINISHED_STATUSES = frozenset({MessageStatus.PENDING, MessageStatus.STREAMING})
FINISHED_STATUSES = frozenset({MessageStatus.COMPLETE, MessageStatus.FAILED, MessageStatus.STOPPED})


def _check_in(column: str, enum: type[StrEnum], name: str) -> sa.CheckConstraint:
    values = ", ".join(f"'{member.value}'" for member in enum)
    return sa.CheckConstraint(f"{column} IN ({values})", name=name)


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (_check_in("subscription_tier", Tier, "ck_users_subscription_tier"),)

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    mobile_number: str = Field(max_length=16, unique=True)
    name: str | None = Field(default=None, max_length=100)
    email: str | None = Field(default=None, max_length=254)
    password_hash: str | None = Field(default=None, max_length=255)
    subscription_tier: str = Field(
        default=Tier.BASIC.value, max_length=10, sa_column_kwargs={"server_default": "basic"}
    )
    daily_message_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    last_message_date: date | None = Field(default=None)
    stripe_customer_id: str | None = Field(default=None, max_length=255, unique=True)
    # Gemini's tokens of the user's replies finished on `last_token_date` (UTC).
    daily_token_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    last_token_date: date | None = Field(default=None)
    # Bumped when the password changes or is reset: every older token dies.
    token_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Set by the first successful OTP login; password login needs a verified number.
    mobile_verified_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    is_active: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})
    created_at: datetime = Field(sa_type=TIMESTAMP)
    updated_at: datetime = Field(sa_type=TIMESTAMP)

    @property
    def tier(self) -> Tier:
        return Tier(self.subscription_tier)


class Otp(SQLModel, table=True):
    """A one-time code. Only a keyed hash of the code is stored."""

    __tablename__ = "otps"
    __table_args__ = (
        _check_in("purpose", OtpPurpose, "ck_otps_purpose"),
        sa.Index("ix_otps_number_purpose_created", "mobile_number", "purpose", "created_at"),
        sa.Index("ix_otps_number_created", "mobile_number", "created_at"),
        # The hourly clean-up's range (auth.cleanup): the oldest codes, of every number.
        sa.Index("ix_otps_created_at", "created_at"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    mobile_number: str = Field(max_length=16)
    code_hash: str = Field(max_length=64)
    purpose: str = Field(max_length=20)
    expires_at: datetime = Field(sa_type=TIMESTAMP)
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    used_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    created_at: datetime = Field(sa_type=TIMESTAMP)


class Chatroom(SQLModel, table=True):
    __tablename__ = "chatrooms"
    __table_args__ = (
        # The room list: a user's rooms, most recently updated first.
        sa.Index("ix_chatrooms_user_updated", "user_id", "updated_at", "id"),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    user_id: uuid.UUID = Field(
        sa_column=sa.Column(sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    )
    title: str = Field(max_length=255)
    description: str | None = Field(default=None, max_length=2000)
    # The system instruction of every reply in this room (else the configured default).
    system_instruction: str | None = Field(default=None, sa_type=sa.Text)
    # The end of the current branch (see chat.tree); None while the room is empty.
    # No foreign key: rooms and messages would reference each other.
    current_leaf_id: uuid.UUID | None = Field(default=None, sa_type=sa.Uuid)
    created_at: datetime = Field(sa_type=TIMESTAMP)
    updated_at: datetime = Field(sa_type=TIMESTAMP)


UNFINISHED_CONDITION = "status IN ('pending', 'streaming')"
ROOT_CONDITION = "parent_id IS NULL"


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        _check_in("role", MessageRole, "ck_messages_role"),
        _check_in("status", MessageStatus, "ck_messages_status"),
        # A room's messages (deleting a room, the stop of its replies in progress).
        sa.Index("ix_messages_chatroom_id", "chatroom_id", "id"),
        # The tree: a message's children (its versions are its parent's children) ...
        sa.Index("ix_messages_parent_id", "parent_id", "id"),
        # ... and a room's first messages, which have no parent.
        sa.Index(
            "ix_messages_roots",
            "chatroom_id",
            "id",
            postgresql_where=sa.text(ROOT_CONDITION),
            sqlite_where=sa.text(ROOT_CONDITION),
        ),
        # The worker's sweep for replies nobody is working on, at any age: only unfinished
        # replies are in it, so it stays small however long the history grows.
        sa.Index(
            "ix_messages_unfinished",
            "updated_at",
            postgresql_where=sa.text(UNFINISHED_CONDITION),
            sqlite_where=sa.text(UNFINISHED_CONDITION),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    chatroom_id: uuid.UUID = Field(
        sa_column=sa.Column(
            sa.Uuid, sa.ForeignKey("chatrooms.id", ondelete="CASCADE"), nullable=False
        )
    )
    role: str = Field(max_length=10)
    # The conversation tree: an ASSISTANT message's parent is the USER message it answers,
    # a USER message's the message it follows (None: the room's first). Siblings are
    # versions of one another, oldest first.
    parent_id: uuid.UUID | None = Field(
        default=None,
        sa_column=sa.Column(sa.Uuid, sa.ForeignKey("messages.id", ondelete="CASCADE")),
    )
    content: str = Field(default="", sa_type=sa.Text)
    status: str = Field(default=MessageStatus.COMPLETE.value, max_length=10)
    error: str | None = Field(default=None, sa_type=sa.Text)
    gemini_response_id: str | None = Field(default=None, max_length=255)
    # Gemini's usageMetadata, summed over every call the reply took; None until reported.
    prompt_tokens: int | None = Field(default=None)
    output_tokens: int | None = Field(default=None)
    total_tokens: int | None = Field(default=None)
    created_at: datetime = Field(sa_type=TIMESTAMP)
    updated_at: datetime = Field(sa_type=TIMESTAMP)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class Subscription(SQLModel, table=True):
    """A Stripe subscription as last seen; the user's tier follows its status."""

    __tablename__ = "subscriptions"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    user_id: uuid.UUID = Field(
        sa_column=sa.Column(
            sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    stripe_subscription_id: str = Field(max_length=255, unique=True)
    stripe_customer_id: str | None = Field(default=None, max_length=255)
    status: str = Field(max_length=32)
    # `created` of the Stripe event this state came from: an older event never overwrites it.
    state_as_of: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"}
    )
    current_period_start: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    current_period_end: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    cancel_at_period_end: bool = Field(
        default=False, sa_column_kwargs={"server_default": sa.false()}
    )
    created_at: datetime = Field(sa_type=TIMESTAMP)
    updated_at: datetime = Field(sa_type=TIMESTAMP)


class StripeEvent(SQLModel, table=True):
    """Each processed Stripe event id, once: redeliveries are recognised and skipped."""

    __tablename__ = "stripe_events"
    __table_args__ = (
        # The daily clean-up's range (billing.cleanup): the oldest event ids.
        sa.Index("ix_stripe_events_received_at", "received_at"),
    )

    id: str = Field(primary_key=True, max_length=255)
    type: str = Field(max_length=100)
    received_at: datetime = Field(sa_type=TIMESTAMP)


sa.orm.configure_mappers()  # every table is declared: `loaded` needs the mappers ready

T = TypeVar("T", bound=SQLModel)


def loaded(model: type[T], row: Mapping[str, Any]) -> T:
    """A table model from a row just read, built the way the ORM loads one: no __init__, no
    validation of what the database returned. About 3 µs, against 70 for `model(**row)`,
    which on a page of 100 messages was most of the request's CPU."""
    instance = model._sa_class_manager.new_instance()  # type: ignore[attr-defined]
    instance.__dict__.update(row)
    return instance  # type: ignore[no-any-return]
