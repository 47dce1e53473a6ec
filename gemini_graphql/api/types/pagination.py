from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import strawberry

from gemini_graphql.chat.pages import Page

T = TypeVar("T")
E = TypeVar("E")


@strawberry.type(description="Where a page sits in the whole list (Relay connections).")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None

    @classmethod
    def of(cls, page: Page[object], cursors: list[str]) -> PageInfo:
        return cls(
            has_next_page=page.has_next,
            has_previous_page=page.has_previous,
            start_cursor=cursors[0] if cursors else None,
            end_cursor=cursors[-1] if cursors else None,
        )


def edges_and_info(
    page: Page[T], cursor_of: Callable[[T], str], edge_of: Callable[[str, T], E]
) -> tuple[list[E], PageInfo]:
    """A page as Relay edges (one cursor each) and its PageInfo."""
    cursors = [cursor_of(item) for item in page.items]
    edges = [edge_of(cursor, item) for cursor, item in zip(cursors, page.items, strict=True)]
    return edges, PageInfo.of(page, cursors)  # type: ignore[arg-type]
