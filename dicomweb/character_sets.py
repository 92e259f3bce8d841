"""What the archive says of a Specific Character Set (0008,0005) it does not know.

The archive keeps every instance as it was sent, so one naming a character set
that is none of the terms pydicom decodes (PS3.3 C.12.1.1.2's Defined Terms and a
few aliases) is still stored: no Failure Reason of PS3.18 Table I.2-2 says
"character set not supported", nothing in the file is changed, and refusing it
would lose images a modality has no other way to send. Its text, though, is read
as pydicom guesses (a misspelling it recognises as the term meant, anything else
as Latin-1), so names may be indexed, searched and shown wrongly: the STOW-RS
response says so in a ``Warning: 299`` header (PS3.18 §8.4.3), its status still
200 since the instance was stored.
"""

from __future__ import annotations

from pydicom.charset import python_encoding


def unknown_character_set(value: str | None) -> str | None:
    """Why text under ``value`` (the header's terms, joined by ``\\``) may be read
    wrongly, or None when pydicom knows every term (an empty first term is the
    default repertoire, which code extensions allow, PS3.3 C.12.1.1.2)."""
    if not value:
        return None
    unknown = [t for t in (term.strip() for term in value.split("\\")) if t not in python_encoding]
    if not unknown:
        return None
    names = ", ".join(repr(term) for term in unknown)
    return (
        f"Specific Character Set {names} is not a term this archive knows (PS3.3"
        " C.12.1.1.2): the instance is stored as sent, but its text may have been read"
        " in another character set than meant, so its names may be searched and shown"
        " wrongly"
    )
