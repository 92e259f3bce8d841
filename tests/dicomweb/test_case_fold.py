"""Person-name case folding (``case_fold``, ``qido.pn_normal``): case-insensitive
beyond ASCII, and one character stays one, so ``?`` matches any letter."""

from __future__ import annotations

import pytest

from dicomweb.case_fold import fold
from dicomweb.qido import Match, Wildcard, pn_normal
from dicomweb.qido_compile import key_filter
from dicomweb.records import normal_values


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Smith^John", "smith^john"),
        ("MÜLLER^JÜRGEN", "müller^jürgen"),
        ("Großmann", "großmann"),  # casefold would make it "grossmann": one letter more
        ("GROẞMANN", "großmann"),  # the capital sharp s lowers to ß
        ("İNCİ", "İncİ"),  # İ lowers to i + U+0307, two: kept; the rest folds
        ("ΣΊΣΥΦΟΣ", "σίσυφοσ"),
        ("ᾼ", "ᾳ"),  # casefold: two characters; lower: one
        ("ИВАНОВ^ИВАН", "иванов^иван"),
        ("山田^太郎", "山田^太郎"),
        ("ﾔﾏﾀﾞ^ﾀﾛｳ", "ﾔﾏﾀﾞ^ﾀﾛｳ"),
        ("홍^길동", "홍^길동"),
    ],
)
def test_fold(text: str, folded: str) -> None:
    assert fold(text) == folded
    assert len(fold(text)) == len(text)


@pytest.mark.parametrize(
    ("stored", "query", "hit"),
    [
        ("Großmann^Jörg", "Gro?mann^J?rg", True),
        ("Großmann^Jörg", "GRO?MANN^*", True),
        ("Großmann^Jörg", "Gro??mann^*", False),
        ("Müller^Jürgen", "M?LLER^*", True),
        ("İnci", "?nci", True),
        ("山田^太郎", "山?^太郎", True),
    ],
)
def test_a_wildcard_on_the_index_key(stored: str, query: str, hit: bool) -> None:
    """What the index compares: the stored value's key against the query's glob."""
    (key,) = normal_values("PN", {"Alphabetic": stored})
    compiled = key_filter(Match((0x00100010,), "PN", Wildcard(query)))
    assert compiled is not None and compiled.op == "glob"
    pattern = Wildcard(compiled.values[0]).regex(ignore_case=False)
    assert (pattern.fullmatch(key) is not None) is hit
    assert key == pn_normal(stored)
