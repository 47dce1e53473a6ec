"""Mobile numbers, normalised to E.164.

Only international numbers are accepted: `+` (or `00`) then the country code.
A national number such as `(415) 555-0123` is refused rather than guessed at,
because the same digits belong to different people in different countries.
"""

from __future__ import annotations

import re

from gemini_graphql.errors import DomainError, invalid_input

_SEPARATORS = re.compile(r"[\s\-.()/]")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
MAX_RAW_LENGTH = 32


def normalize_mobile_number(raw: str, field: str = "mobileNumber") -> str:
    """Return `raw` as E.164 (`+14155550123`) or raise INVALID_INPUT for `field`."""
    if len(raw) > MAX_RAW_LENGTH:
        raise _invalid(field)
    compact = _SEPARATORS.sub("", raw.strip())
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _E164.fullmatch(compact):
        raise _invalid(field)
    return compact


def _invalid(field: str) -> DomainError:
    return invalid_input(
        field,
        "Enter the mobile number in international format: + then the country code "
        "and number, 8 to 15 digits (e.g. +14155550123).",
    )
