"""Mobile numbers, normalised to E.164.

Only international numbers are accepted: `+` (or `00`) then the country code.
A national number such as `(415) 555-0123` is refused rather than guessed at,
because the same digits belong to different people in different countries.

Numbers are checked against libphonenumber's metadata (`phonenumberslite`): the
country code must be assigned, and the number must have a length and a prefix
that country actually uses. Of the valid numbers, only those that can receive
the text message with the login code are accepted: MOBILE, and
FIXED_LINE_OR_MOBILE, which is what the metadata says wherever it cannot tell
the two apart (all of +1, for instance). Fixed lines where the metadata can
tell, and toll-free, premium-rate, shared-cost, VoIP, personal, pager, UAN and
voicemail numbers are refused: none of them is a phone someone carries, and an
account on one could never get a code.
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from gemini_graphql.errors import invalid_input

_SEPARATORS = re.compile(r"[\s\-.()/]")
# ASCII digits only: libphonenumber would also read other scripts' digits, letters (vanity
# numbers, `1-800-FLOWERS`) and extensions, none of which belongs in a mobile number.
_INTERNATIONAL = re.compile(r"\+[0-9]+")
_CAN_RECEIVE_SMS = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
MAX_RAW_LENGTH = 32


def normalize_mobile_number(raw: str, field: str = "mobileNumber") -> str:
    """Return `raw` as E.164 (`+14155550123`) or raise INVALID_INPUT for `field`."""
    if len(raw) > MAX_RAW_LENGTH:
        raise invalid_input(field, _FORMAT)
    compact = _SEPARATORS.sub("", raw.strip())
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _INTERNATIONAL.fullmatch(compact):
        raise invalid_input(field, _FORMAT)
    try:
        number = phonenumbers.parse(compact, None)  # no default region: `+` is required
    except phonenumbers.NumberParseException:
        raise invalid_input(field, _INVALID) from None
    if not phonenumbers.is_valid_number(number):
        raise invalid_input(field, _INVALID)
    if phonenumbers.number_type(number) not in _CAN_RECEIVE_SMS:
        raise invalid_input(field, _NOT_MOBILE)
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


_FORMAT = (
    "Enter the mobile number in international format: + (or 00), the country code, "
    "then the number (e.g. +14155550123)."
)
_INVALID = (
    "This is not a valid mobile number: check the country code and the number of digits "
    "(e.g. +14155550123)."
)
_NOT_MOBILE = (
    "Enter a mobile number: this one is a landline or a service number, "
    "which cannot receive the text message with your code."
)
