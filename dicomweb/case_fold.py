"""Case folding for person-name matching that keeps one character one character.

QIDO-RS matches PN values case-insensitively (PS3.4 C.2.2.2.1 lets a PN match be
insensitive to case): stored keys and query values are folded alike and compared
as plain strings, with ``?`` standing for exactly one character (C.2.2.2.4).
``str.casefold`` turns some single characters into two or three (``ß`` → ``ss``,
``ẞ`` → ``ss``, ``İ`` → ``i̇``, ``ΐ``, Greek letters with ypogegrammeni), so
``Gro?mann`` never found ``Großmann``: its key held ``grossmann``. Here such a
character is lower-cased instead when that stays one character (``ẞ`` → ``ß``),
else kept as it is. A folded value is never longer than the value, which also
keeps the longest query within SQLite's GLOB pattern limit (``qido``).
"""

from __future__ import annotations


def fold(text: str) -> str:
    """``text`` case-folded character by character, its length unchanged."""
    if text.isascii():
        return text.lower()  # casefold and lower agree on ASCII: the common case
    return "".join(_fold_char(c) for c in text)


def _fold_char(char: str) -> str:
    folded = char.casefold()
    if len(folded) == 1:
        return folded
    lowered = char.lower()
    return lowered if len(lowered) == 1 else char
