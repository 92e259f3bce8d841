"""The ``accept`` query parameter as the client wrote it (PS3.18 §8.3.3.1).

Starlette reads a query string as a form (``application/x-www-form-urlencoded``),
where ``+`` stands for a space; a client writing ``accept=application/dicom+json``
or ``accept=image/svg+xml`` into a URL by hand (as PS3.18's own examples do)
would have the server look for ``application/dicom json``. A media type holds no
space (RFC 9110 §8.3.1: tokens); the only spaces in an Accept-style list are
the optional whitespace around its ``,``, ``;`` and ``=``. So for this one
parameter a raw ``+`` is a space only where such whitespace may be (next to one
of those separators, or at either end: what a form encoder makes of
``image/jpeg;q=0.4, image/png``), and is itself everywhere else. ``%XX``
escapes are decoded as usual: ``%2B`` is always a plus, ``%20`` a space.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from starlette.requests import HTTPConnection

ACCEPT = "accept"
# a raw "+" (marked NUL while %XX escapes are decoded) where whitespace may be
_MARK = "\x00"
_SPACE = re.compile(r"(?:^|(?<=[,;=\s]))\x00+|\x00+(?=[,;=\s]|$)")


def _value(raw: str) -> str:
    decoded = unquote(raw.replace("+", _MARK))
    spaced = _SPACE.sub(lambda found: " " * len(found.group()), decoded)
    return spaced.replace(_MARK, "+")


def accept_in_query(query: str) -> str | None:
    """The ``accept`` parameter's media ranges in a raw query string, ``%XX`` decoded
    and a ``+`` kept where it cannot be a space; several occurrences joined as the
    fields of one list (RFC 9110 §5.3); None when absent or empty."""
    values: list[str] = []
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if unquote(name.replace("+", " ")) == ACCEPT and (text := _value(value).strip()):
            values.append(text)
    return ", ".join(values) or None


def accept_parameter(request: HTTPConnection) -> str | None:
    """The request's ``accept`` query parameter (``accept_in_query``)."""
    query: bytes = request.scope.get("query_string", b"")
    return accept_in_query(query.decode("latin-1"))


def requested_accept(request: HTTPConnection) -> str | None:
    """What the request accepts: its ``accept`` parameter, which overrides the Accept
    header (PS3.18 §8.3.3.1), else that header."""
    return accept_parameter(request) or request.headers.get("accept")
