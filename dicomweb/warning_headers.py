"""``Warning: 299`` header values (PS3.18 §8.4.3; RFC 7234 §5.5), the way DICOMweb
answers tell a client what they ignored or refused beyond their status codes.

A warning's text may quote what the client sent (a query parameter's name, a
part's Content-Type), so it is made safe for a header: every character outside
printable ASCII becomes a backslash escape, as Python writes it. A header is
Latin-1 on the wire, and one ``€`` in an ignored parameter's name made the
answer a 500; a CR or LF would end the field early.
"""

from __future__ import annotations

from collections.abc import Sequence

# warnings listed one by one in a response (``bounded``); the rest are counted in one
MAX_WARNINGS = 20


def warning_header(text: str, agent: str = "radhub") -> str:
    """One ``Warning`` header value with code 299, ``text`` quoted and header-safe."""
    printable = "".join(c if " " <= c <= "~" else _escape(c) for c in text)
    quoted = printable.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 {agent} "{quoted}"'


def _escape(character: str) -> str:
    return character.encode("unicode_escape").decode("ascii")


def bounded(warnings: Sequence[str], unlisted: str) -> tuple[str, ...]:
    """The first ``MAX_WARNINGS`` warnings, then one that counts the rest (``unlisted``
    says what they are): a request full of faults does not make a response of warnings."""
    if len(warnings) <= MAX_WARNINGS:
        return tuple(warnings)
    more = len(warnings) - MAX_WARNINGS
    return (*warnings[:MAX_WARNINGS], f"{more} more {unlisted} are not listed")
