"""Text a user may store: what every free-text input is checked for besides its length."""

from __future__ import annotations

from gemini_graphql.errors import invalid_input


def check_storable(field: str, value: str) -> None:
    """PostgreSQL's text cannot hold NUL, which would otherwise fail the write itself."""
    if "\x00" in value:
        raise invalid_input(field, "The text must not contain NUL characters.")
