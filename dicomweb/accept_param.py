"""The ``accept`` query parameter (PS3.18 §8.3.3.1), read as a URI query, not a form.

Starlette's ``request.query_params`` decodes the query as an HTML form, where
``+`` stands for a space, so ``?accept=application/dicom+json`` arrived as
``application/dicom json`` and was refused 406. A URI query has no such rule
(RFC 3986 §3.4): here each ``&``-separated pair of the raw query string is
percent-decoded and nothing more.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.requests import HTTPConnection

ACCEPT = "accept"


def accept_parameter(request: HTTPConnection) -> str | None:
    """The ``accept`` query parameter's media ranges, None when absent or empty.
    Several occurrences are joined as the fields of one list (RFC 9110 §5.3)."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    values = []
    for pair in raw.split("&"):
        name, _, value = pair.partition("=")
        if unquote(name) == ACCEPT and value.strip():
            values.append(unquote(value).strip())
    return ", ".join(values) or None
