"""Which Rendered Media Type answers a rendered request (PS3.18 §8.7.4, §8.7.8.1).

A rendered study or series is every instance of it rendered, so it is answered
as ``multipart/related; type="image/jpeg"`` (or png, gif), one part per image.
Single-part media types are only for a resource that is a single item: the note
to PS3.18 Table 10.4.4-1 has the server ignore them for the others, and a 406 when
nothing else is left (even for a study of one single-frame image). An instance
or a frame may be asked for either way. ``*/*``, ``multipart/*`` and a
``multipart/related`` without a ``type`` take the default, JPEG (Table 8.7.4-1);
``image/*`` names only single-part types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dicomweb.render import MEDIA
from dicomweb.transfer_syntax import (
    MediaRange,
    NotAcceptable,
    acceptable,
    parse_accept,
    weighted_values,
)

DEFAULT = "image/jpeg"
RELATED = "multipart/related"
_ANY_MULTIPART = (RELATED, "multipart/*")


@dataclass(frozen=True)
class RenderedMedia:
    """The chosen image media type, and whether it goes as parts of a multipart body."""

    media_type: str
    multipart: bool


def choose_media(accept: str | None, supported: Sequence[str], what: str) -> str:
    """The best supported single-part media type in an Accept-style list (with q
    values); image/jpeg when the list is empty or names a wildcard first (PS3.18 §8.7.5),
    unless a more specific q=0 range excludes it (RFC 9110 §12.5.1)."""
    if not accept or not accept.strip():
        return DEFAULT
    every = weighted_values(accept)
    for media in parse_accept(accept):
        if media.media_type in ("*/*", "image/*"):
            covered = [m for m in (DEFAULT, *supported) if acceptable((media,), m) > 0]
        else:
            covered = [media.media_type] if media.media_type in supported else []
        chosen = next((m for m in covered if acceptable(every, m) > 0), None)
        if chosen is not None:
            return chosen
    raise NotAcceptable(f"{what} are {', '.join(supported)}; none of {accept!r}")


def choose_rendered(accept: str | None, *, single_item: bool) -> RenderedMedia:
    """The best acceptable rendered form of a resource: single-part only when it is a
    ``single_item`` (an instance or a frame), else a multipart/related of images; a
    form a more specific q=0 range excludes is passed over (RFC 9110 §12.5.1)."""
    if not accept or not accept.strip():
        return RenderedMedia(DEFAULT, multipart=not single_item)
    every = weighted_values(accept)

    def allowed(choice: RenderedMedia) -> bool:
        if choice.multipart:
            return acceptable(every, RELATED, {"type": choice.media_type}) > 0
        return acceptable(every, choice.media_type) > 0

    for media in parse_accept(accept):
        chosen = next((c for c in _choices(media, single_item) if allowed(c)), None)
        if chosen is not None:
            return chosen
    kinds = ", ".join(f'{RELATED}; type="{m}"' for m in MEDIA)
    if single_item:
        kinds = f"{kinds}, or {', '.join(MEDIA)}"
    else:
        kinds += " (a study or series is several images: single-part types are not enough)"
    raise NotAcceptable(f"rendered images are {kinds}; none of {accept!r}")


_IMAGES = (DEFAULT, *(m for m in MEDIA if m != DEFAULT))  # the default first


def _choices(media: MediaRange, single_item: bool) -> list[RenderedMedia]:
    """The rendered forms one Accept entry names, the default first."""
    if media.media_type == "*/*":
        return [RenderedMedia(m, multipart=not single_item) for m in _IMAGES]
    if media.media_type in _ANY_MULTIPART:
        part = media.param("type") if media.media_type == RELATED else None
        if part is None or part in ("*/*", "image/*"):
            return [RenderedMedia(m, multipart=True) for m in _IMAGES]
        return [RenderedMedia(part, multipart=True)] if part in MEDIA else []
    if single_item and media.media_type in MEDIA:
        return [RenderedMedia(media.media_type, multipart=False)]
    if single_item and media.media_type == "image/*":
        return [RenderedMedia(m, multipart=False) for m in _IMAGES]
    return []
