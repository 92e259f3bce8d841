"""``glob_regex``: the QIDO wildcard as a regular expression (the MongoDB adapter's
filter and the QIDO oracle), checked against a plain matcher, and on the patterns
whose naive translation backtracks without end."""

from __future__ import annotations

import random
import re

import pytest

from fhir_server.storage.dicom_port import glob_regex


def glob_matches(pattern: str, value: str) -> bool:
    """The reference: dynamic programming over pattern and value positions."""
    reach = [True] + [False] * len(value)  # value prefixes the pattern so far can match
    for p in pattern:
        if p == "*":
            for i in range(1, len(reach)):
                reach[i] = reach[i] or reach[i - 1]
        else:
            reach = [False] + [reach[i] and (p == "?" or p == value[i]) for i in range(len(value))]
    return reach[-1]


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("", "", True),
        ("", "a", False),
        ("*", "", True),
        ("**", "anything", True),
        ("SMI*", "SMITH^JOHN", True),
        ("*TH", "SMITH", True),
        ("*TH", "SMITHS", False),
        ("S?ITH", "SMITH", True),
        ("S?ITH", "SITH", False),
        ("*a*b*", "xxaxxbxx", True),
        ("*a*b*", "xxbxxaxx", False),
        ("a*a", "a", False),  # the two ends may not share the one character
        ("*ab*ab", "abab", True),
        ("*ab*ab", "abxab", True),
        ("*ab*ab", "aab", False),
        ("1.2.*", "1.2.3", True),  # regex metacharacters are literal
        ("1.2.*", "1x2.3", False),
        ("(a|b)*", "(a|b)c", True),
        ("*\n*", "line\nbreak", True),
    ],
)
def test_glob_regex_table(pattern: str, value: str, expected: bool) -> None:
    assert glob_matches(pattern, value) is expected  # the reference agrees with the table
    assert (re.fullmatch(glob_regex(pattern), value, re.DOTALL) is not None) is expected


def test_glob_regex_agrees_with_the_reference_on_random_patterns() -> None:
    rng = random.Random(20261203)
    for _ in range(5000):
        pattern = "".join(rng.choice("ab*?") for _ in range(rng.randint(0, 8)))
        value = "".join(rng.choice("ab") for _ in range(rng.randint(0, 10)))
        found = re.fullmatch(glob_regex(pattern), value, re.DOTALL) is not None
        assert found is glob_matches(pattern, value), (pattern, value)


def test_many_stars_against_a_long_value_end_at_once() -> None:
    # ``^.*a.*a…b$`` would try every placement of 40 stars in 300 characters
    pattern, value = "*a" * 40 + "*b", "a" * 300
    assert re.fullmatch(glob_regex(pattern), value, re.DOTALL) is None
    assert re.fullmatch(glob_regex(pattern), value + "b", re.DOTALL) is not None
