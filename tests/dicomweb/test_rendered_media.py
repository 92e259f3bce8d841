"""Choosing a rendered answer's media type, and reading the ``accept`` query parameter
with its ``+`` kept (pure functions, table-driven)."""

from __future__ import annotations

import pytest

from dicomweb.accept_param import accept_in_query
from dicomweb.rendered_media import RenderedMedia, choose_rendered
from dicomweb.transfer_syntax import NotAcceptable

JPEG, PNG = "image/jpeg", "image/png"

# (Accept, single item?, chosen or None for 406)
CHOICES: list[tuple[str | None, bool, RenderedMedia | None]] = [
    (None, True, RenderedMedia(JPEG, multipart=False)),
    (None, False, RenderedMedia(JPEG, multipart=True)),
    ("*/*", True, RenderedMedia(JPEG, multipart=False)),
    ("*/*", False, RenderedMedia(JPEG, multipart=True)),
    ("image/png", True, RenderedMedia(PNG, multipart=False)),
    ("image/png", False, None),  # a single-part type for a study or series is ignored
    ("image/*", True, RenderedMedia(JPEG, multipart=False)),
    ("image/*", False, None),
    ("image/jpeg, */*;q=0.1", False, RenderedMedia(JPEG, multipart=True)),
    ('multipart/related; type="image/png"', False, RenderedMedia(PNG, multipart=True)),
    ('multipart/related; type="image/png"', True, RenderedMedia(PNG, multipart=True)),
    ("multipart/related; type=image/gif", False, RenderedMedia("image/gif", multipart=True)),
    ("multipart/related", False, RenderedMedia(JPEG, multipart=True)),
    ("multipart/*", False, RenderedMedia(JPEG, multipart=True)),
    ('multipart/related; type="image/*"', True, RenderedMedia(JPEG, multipart=True)),
    ('multipart/related; type="image/webp"', False, None),
    ('multipart/related; type="image/webp", image/png', True, RenderedMedia(PNG, False)),
    ('image/png, multipart/related; type="image/gif"', False, RenderedMedia("image/gif", True)),
    (
        'image/png;q=0.5, multipart/related; type="image/gif"',
        True,
        RenderedMedia("image/gif", True),
    ),
    ("text/html", True, None),
]


@pytest.mark.parametrize(("accept", "single", "expected"), CHOICES)
def test_choose_rendered(accept: str | None, single: bool, expected: RenderedMedia | None) -> None:
    if expected is None:
        with pytest.raises(NotAcceptable):
            choose_rendered(accept, single_item=single)
    else:
        assert choose_rendered(accept, single_item=single) == expected


# (raw query string, the accept parameter read from it)
QUERIES: list[tuple[str, str | None]] = [
    ("accept=application/dicom+json", "application/dicom+json"),  # written by hand
    ("accept=application%2Fdicom%2Bjson", "application/dicom+json"),  # percent-encoded
    ("accept=image/svg+xml", "image/svg+xml"),
    # a form encoder's spaces around the list's separators stay spaces
    ("accept=image%2Fjpeg%3Bq%3D0.4%2C+image%2Fpng", "image/jpeg;q=0.4, image/png"),
    ("accept=multipart/related;+type=%22image/png%22", 'multipart/related; type="image/png"'),
    ("accept=+image/png+", "image/png"),
    ("accept=a%20b", "a b"),
    ("window=1,2&accept=image/png&quality=5", "image/png"),
    ("accept=image/gif&accept=image/png", "image/gif, image/png"),  # one list
    ("accept=", None),
    ("acceptx=image/png", None),
    ("", None),
]


@pytest.mark.parametrize(("query", "expected"), QUERIES)
def test_accept_in_query(query: str, expected: str | None) -> None:
    assert accept_in_query(query) == expected
