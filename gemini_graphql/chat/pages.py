"""Keyset pages: opaque cursors and the page-size rules shared by every connection."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from gemini_graphql.errors import InvalidArgument

MAX_PAGE_SIZE = 100
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    has_next: bool
    has_previous: bool


def page_size(value: int | None, default: int, name: str) -> int:
    if value is None:
        return default
    if not 0 <= value <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"`{name}` must be between 0 and {MAX_PAGE_SIZE}.")
    return value


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


def _decode(cursor: str, count: int) -> list[str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("Invalid cursor.") from None
    parts = raw.split("|")
    if len(parts) != count:
        raise InvalidArgument("Invalid cursor.")
    return parts


def decode_id_cursor(cursor: str) -> uuid.UUID:
    [raw_id] = _decode(cursor, 1)
    try:
        return uuid.UUID(raw_id)
    except ValueError:
        raise InvalidArgument("Invalid cursor.") from None


def decode_time_id_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    raw_time, raw_id = _decode(cursor, 2)
    try:
        moment = datetime.fromisoformat(raw_time)
        if moment.tzinfo is None:
            raise ValueError
        return moment, uuid.UUID(raw_id)
    except ValueError:
        raise InvalidArgument("Invalid cursor.") from None
