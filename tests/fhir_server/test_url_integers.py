"""Integers in DICOMweb URLs: ASCII digits only, saturating within 64 bits."""

from __future__ import annotations

import pytest

from fhir_server.url_integers import INTEGER_CEILING, url_integer


@pytest.mark.parametrize(
    ("text", "signed", "value"),
    [
        ("0", False, 0),
        ("42", False, 42),
        ("007", False, 7),
        ("0" * 10_000 + "7", False, 7),
        (str(INTEGER_CEILING), False, INTEGER_CEILING),
        (str(INTEGER_CEILING + 1), False, INTEGER_CEILING),
        (str(2**63), False, INTEGER_CEILING),  # beyond SQLite's INTEGER
        ("9" * 5000, False, INTEGER_CEILING),  # beyond what int() reads by default
        ("-5", True, -5),
        ("+5", True, 5),
        ("-" + "9" * 40, True, -INTEGER_CEILING),
        # malformed
        ("", False, None),
        ("-5", False, None),
        ("+5", False, None),
        ("１", False, None),  # fullwidth digit: int() takes it
        ("٣", False, None),  # Arabic-Indic digit: int() takes it
        ("²", False, None),  # str.isdigit() takes it; int() does not
        ("1_000", False, None),  # int() takes it
        (" 1", False, None),  # int() takes it
        ("1 ", True, None),
        ("1.0", False, None),
        ("0x10", False, None),
        ("--1", True, None),
        ("-", True, None),
    ],
)
def test_url_integer(text: str, signed: bool, value: int | None) -> None:
    assert url_integer(text, signed=signed) == value
