"""Warning: 299 values are quoted-strings of printable ASCII, whatever the text."""

from __future__ import annotations

import pytest

from dicomweb.warning_headers import MAX_WARNINGS, bounded, warning_header


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("plain", '299 radhub "plain"'),
        ('bad "x"', '299 radhub "bad \\"x\\""'),
        ("a\\b", '299 radhub "a\\\\b"'),
        ("€", '299 radhub "\\\\u20ac"'),  # Latin-1 cannot carry it: escaped, then quoted
        ("é", '299 radhub "\\\\xe9"'),  # Latin-1 could, but obs-text is obsolete (RFC 9110)
        ("a\r\nSet-Cookie: x", '299 radhub "a\\\\r\\\\nSet-Cookie: x"'),  # no second field
        ("tab\there", '299 radhub "tab\\\\there"'),
        ("\x7f", '299 radhub "\\\\x7f"'),
    ],
)
def test_warning_header(text: str, value: str) -> None:
    assert warning_header(text) == value
    assert all(" " <= c <= "~" for c in value)


def test_warning_header_agent() -> None:
    assert warning_header("x", "pacs.example:") == '299 pacs.example: "x"'


def test_bounded_lists_the_first_and_counts_the_rest() -> None:
    texts = [f"w{n}" for n in range(MAX_WARNINGS + 5)]
    assert bounded(texts[:MAX_WARNINGS], "faults") == tuple(texts[:MAX_WARNINGS])
    listed = bounded(texts, "faults")
    assert listed == (*texts[:MAX_WARNINGS], "5 more faults are not listed")
