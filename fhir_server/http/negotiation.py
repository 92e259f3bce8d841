"""Content negotiation for the FHIR REST API: JSON only, as R4 names it.
See https://hl7.org/fhir/R4/http.html#mime-type
"""

from __future__ import annotations

from functools import lru_cache

from starlette.requests import Request

from fhir_server.errors import NotAcceptable, UnsupportedMediaType

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"

_JSON_TYPES = frozenset({FHIR_JSON, "application/json", "application/json+fhir", "text/json"})
_FORMAT_ALIASES = frozenset({"json", "application/json", FHIR_JSON, "application/json+fhir"})
_ACCEPT_ANY = frozenset({"*/*", "application/*"})


def _media_types(header: str) -> list[tuple[str, float]]:
    """``Accept`` → [(type, q)], dropping parameters other than q."""
    found: list[tuple[str, float]] = []
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        if not pieces[0]:
            continue
        q = 1.0
        for param in pieces[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        found.append((pieces[0].lower(), q))
    return found


def check_accept(request: Request) -> None:
    """Raise 406 unless the client accepts FHIR JSON (``_format`` wins over Accept)."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        if fmt.strip().lower().split(";")[0] not in _FORMAT_ALIASES:
            raise NotAcceptable(f"_format={fmt!r} is not supported; this server speaks JSON")
        return
    header = request.headers.get("accept")
    if header and not accepts_json(header):
        raise NotAcceptable(f"cannot produce any of {header!r}; this server speaks {FHIR_JSON}")


@lru_cache(maxsize=256)
def accepts_json(header: str) -> bool:
    """Whether an ``Accept`` value admits FHIR JSON. Clients send a handful of
    distinct values, so each is parsed once."""
    return any(
        q > 0 and (media in _JSON_TYPES or media in _ACCEPT_ANY or media == FHIR_JSON)
        for media, q in _media_types(header)
    )


def check_content_type(request: Request, *, patch: bool = False) -> None:
    """Raise 415 unless the body is FHIR JSON (or JSON Patch for a patch)."""
    header = request.headers.get("content-type")
    if header is None:
        raise UnsupportedMediaType(f"a body needs Content-Type {FHIR_JSON}")
    media = header.split(";")[0].strip().lower()
    allowed = {JSON_PATCH} if patch else _JSON_TYPES
    if media not in allowed:
        wanted = JSON_PATCH if patch else FHIR_JSON
        raise UnsupportedMediaType(f"Content-Type {media!r} is not supported here; use {wanted}")
