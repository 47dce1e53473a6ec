"""Mobile number normalisation (gemini_graphql.auth.phone): pure, no services."""

from __future__ import annotations

import pytest

from gemini_graphql.auth.phone import MAX_RAW_LENGTH, normalize_mobile_number
from gemini_graphql.errors import DomainError, ErrorCode
from tests.conftest import new_number


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+14155550123", "+14155550123"),  # US: FIXED_LINE_OR_MOBILE, the metadata can't tell
        ("+447911123456", "+447911123456"),  # UK mobile
        ("+4915123456789", "+4915123456789"),  # Germany
        ("+33612345678", "+33612345678"),  # France
        ("+393331234567", "+393331234567"),  # Italy
        ("+819012345678", "+819012345678"),  # Japan
        ("+8613800138000", "+8613800138000"),  # China
        ("+5511961234567", "+5511961234567"),  # Brazil
        ("+61412345678", "+61412345678"),  # Australia
    ],
)
def test_valid_numbers_of_several_countries(raw: str, expected: str) -> None:
    assert normalize_mobile_number(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "+1 (415) 555-0123",
        "+1-415-555-0123",
        "+1.415.555.0123",
        "+1 415/555 0123",
        "  +14155550123  ",
        "0014155550123",
        "00 1 415 555 0123",
        "\t+1\u00a0415 555 0123\n",  # a no-break space from a copied number
    ],
)
def test_separators_and_00_are_accepted(raw: str) -> None:
    assert normalize_mobile_number(raw) == "+14155550123"


def test_a_national_prefix_after_the_country_code_is_dropped() -> None:
    assert normalize_mobile_number("+44 (0)7911 123456") == "+447911123456"


def refused(raw: str, field: str = "mobileNumber") -> DomainError:
    with pytest.raises(DomainError) as caught:
        normalize_mobile_number(raw, field)
    error = caught.value
    assert error.code == ErrorCode.INVALID_INPUT and error.field == field, raw
    return error


@pytest.mark.parametrize(
    "raw",
    [
        "+9991234567890",  # 999: no such country code
        "+8091234567",  # 80: unassigned
        "+0155501020",  # a country code never starts with 0
        "+00447911123456",
    ],
)
def test_unassigned_country_codes_are_refused(raw: str) -> None:
    assert "country code" in refused(raw).message


@pytest.mark.parametrize(
    "raw",
    [
        "+1415555012",  # 9 digits after +1, which uses 10
        "+141555501234",
        "+4479111234",
        "+44791112345678",
        "+3361234567",
        "+1234567",
        "+1234567890123456",  # longer than E.164 allows
    ],
)
def test_impossible_lengths_are_refused(raw: str) -> None:
    refused(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "(415) 555-0123",
        "4155550123",
        "07911 123456",
        "14155550123",  # the country code, but no +
    ],
)
def test_national_numbers_are_refused_not_guessed(raw: str) -> None:
    assert "international format" in refused(raw).message


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "+",
        "00",
        "+1415abc0123",  # libphonenumber would read letters as a vanity number
        "+1 800 FLOWERS",
        "+14155550123 ext 5",
        "+14155550123;ext=5",
        "tel:+14155550123",
        "+١٤١٥٥٥٥٠١٢٣",  # other scripts' digits
        "+1 415 555 0123 +",
        "1; DROP TABLE users",
    ],
)
def test_anything_but_digits_and_separators_is_refused(raw: str) -> None:
    refused(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "+442079460958",  # a London fixed line
        "+390612345678",  # a Rome fixed line
        "+18005550199",  # toll-free
        "+19005550199",  # premium rate
        "+448453334444",  # UK 0845: premium rate in the metadata
        "+33884012345",  # shared cost
        "+445612345678",  # VoIP
        "+447012345678",  # personal number
        "+447640123456",  # pager
        "+4918500123456",  # UAN
    ],
)
def test_numbers_that_cannot_receive_a_text_are_refused(raw: str) -> None:
    assert "cannot receive" in refused(raw).message


def test_too_long_raw_input_is_refused_before_parsing() -> None:
    padded = "+1 415 555 0123" + " " * (MAX_RAW_LENGTH - len("+1 415 555 0123"))
    assert normalize_mobile_number(padded) == "+14155550123"
    refused(padded + " ")
    refused("+" + "1" * 10_000)


def test_the_field_is_the_one_asked_for() -> None:
    refused("nope", field="newMobileNumber")


def test_generated_test_numbers_are_valid_and_fresh() -> None:
    numbers = [new_number() for _ in range(2000)]
    assert all(normalize_mobile_number(number) == number for number in numbers)
    assert len(set(numbers)) > 1990
