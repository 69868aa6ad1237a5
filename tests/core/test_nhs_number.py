"""NHS number rules (Modulus 11) against known valid and invalid numbers."""

import pytest

from core.nhs_number import check_digit, format_nhs_number, from_identifiers, is_test_range, is_valid


@pytest.mark.parametrize("number", ["9434765919", "943 476 5919", "943-476-5919", "4010232137", "9990000018"])
def test_valid_numbers(number):
    assert is_valid(number)


@pytest.mark.parametrize(
    "number",
    ["9434765918", "943476591", "94347659190", "943476591X", "", "0000000001", "1234567890"],
)
def test_invalid_numbers(number):
    assert not is_valid(number)


def test_remainder_ten_means_no_valid_number():
    # 1000000060: weights give a remainder of 1 → check digit 10 → no valid number has this stem.
    stem = next(f"{n:09d}" for n in range(100000000, 100001000) if check_digit(f"{n:09d}") is None)
    assert all(not is_valid(stem + str(d)) for d in range(10))


def test_check_digit_eleven_becomes_zero():
    stem = next(f"{n:09d}" for n in range(999000000, 999001000) if check_digit(f"{n:09d}") == 0)
    assert is_valid(stem + "0")


def test_test_range():
    assert is_test_range("9990000018")
    assert not is_test_range("9434765919")


def test_format_and_identifiers():
    assert format_nhs_number("9434765919") == "943 476 5919"
    assert format_nhs_number("not a number") == "not a number"
    idents = [
        {"system": "urn:other", "value": "1"},
        {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "943 476 5919"},
    ]
    assert from_identifiers(idents) == "9434765919"
    assert from_identifiers([]) is None
