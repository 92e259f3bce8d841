"""Streaming multipart/related: parser and writer, round-tripped under random splits."""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomweb.multipart import (
    ContentType,
    MultipartError,
    OutPart,
    Part,
    boundary_of,
    close_delimiter,
    iter_parts,
    new_boundary,
    parse_content_type,
    part_head,
    related_content_type,
    write_parts,
)

BOUNDARY = "7d9f1c2b"


async def achunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


async def collect(body: bytes, boundary: str = BOUNDARY, size: int = 7) -> list[tuple[Part, bytes]]:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return [
        (part, b"".join([c async for c in part.body]))
        async for part in iter_parts(achunks(pieces), boundary)
    ]


async def render(parts: list[OutPart], boundary: str = BOUNDARY) -> bytes:
    return b"".join([chunk async for chunk in write_parts(parts, boundary)])


@pytest.mark.parametrize(
    ("header", "media_type", "params"),
    [
        ("application/dicom", "application/dicom", ()),
        (
            'Multipart/Related; TYPE="application/dicom"; boundary=abc',
            "multipart/related",
            (("type", "application/dicom"), ("boundary", "abc")),
        ),
        (
            'multipart/related; boundary="a;b=c"; type=application/dicom',
            "multipart/related",
            (("boundary", "a;b=c"), ("type", "application/dicom")),
        ),
        ('text/plain; title="say \\"hi\\""', "text/plain", (("title", 'say "hi"'),)),
        ("multipart/related ;boundary = x ", "multipart/related", (("boundary", "x"),)),
        ('a/b; p="back\\\\slash; \\x"', "a/b", (("p", "back\\slash; x"),)),
        ('a/b; p = "v" ignored ; q=w', "a/b", (("p", "v"), ("q", "w"))),
        ('a/b; p=un"quoted', "a/b", (("p", 'un"quoted'),)),
        ("a/b; p=; flag;; q=1;", "a/b", (("p", ""), ("flag", ""), ("q", "1"))),
        ("a/b;  ", "a/b", ()),
        ("", "", ()),
    ],
)
def test_parse_content_type(
    header: str, media_type: str, params: tuple[tuple[str, str], ...]
) -> None:
    assert parse_content_type(header) == ContentType(media_type, params)


@pytest.mark.parametrize(
    "header",
    [
        'multipart/related; type="application/dicom; boundary=B',
        'a/b; p="ends with an escaped quote\\"; q=1',
        'a/b; p="ends with a backslash\\',
        'a/b; p=1; q="',
    ],
)
def test_parse_content_type_refuses_an_unterminated_quote(header: str) -> None:
    with pytest.raises(MultipartError, match="unterminated quoted parameter"):
        parse_content_type(header)


def test_parse_content_type_reads_a_header_of_200_000_parameters() -> None:
    """Each parameter is read once. When each re-sliced the rest of the header
    (quadratic), these 200,000 took 7.6 s on the event loop; read once, ~0.1 s. No
    time is asserted here (this machine is shared): ``--durations`` shows a regression."""
    header = 'multipart/related; type="application/dicom"; boundary=B' + "; x=y" * 200_000
    parsed = parse_content_type(header)
    assert len(parsed.params) == 200_002 and boundary_of(parsed) == "B"
    assert parsed.params[-1] == ("x", "y")


@pytest.mark.parametrize(
    "header",
    [
        "multipart/related; type=application/dicom",
        "application/dicom; boundary=abc",
        "multipart/related; boundary=",
        f"multipart/related; boundary={'x' * 201}",
        'multipart/related; boundary="unterminated',
    ],
)
def test_boundary_of_rejects(header: str) -> None:
    with pytest.raises(MultipartError):
        boundary_of(parse_content_type(header))


def test_boundary_of_accepts_orthancs_73_characters() -> None:
    """Longer than RFC 2046's 70: what Orthanc 1.7's STOW-RS client sends."""
    boundary = f"{uuid.uuid4()}-{uuid.uuid4()}"
    header = f"multipart/related; type=application/dicom; boundary={boundary}"
    assert len(boundary) == 73 and boundary_of(parse_content_type(header)) == boundary


def test_boundary_of_accepts_quoted() -> None:
    header = 'multipart/related; type="application/dicom"; boundary="b:o u=nd"'
    assert boundary_of(parse_content_type(header)) == "b:o u=nd"


EXAMPLE = (
    b"This preamble is ignored.\r\n"
    b"--7d9f1c2b\r\n"
    b"Content-Type: application/dicom\r\n"
    b"Content-Location: first\r\n"
    b"\r\n"
    b"DICM one\r\n--7d9f1c2 is not a boundary\r\n"
    b"--7d9f1c2b  \r\n"
    b"\r\n"
    b"no headers at all"
    b"\r\n--7d9f1c2b\r\n"
    b"content-type: application/dicom+json\r\n"
    b"X-Folded: a\r\n  b\r\n"
    b"\r\n"
    b"\r\n--7d9f1c2b--\r\n"
    b"epilogue --7d9f1c2b\r\n also ignored"
)


async def test_parses_parts_with_preamble_epilogue_and_odd_headers() -> None:
    parsed = await collect(EXAMPLE)
    assert [body for _, body in parsed] == [
        b"DICM one\r\n--7d9f1c2 is not a boundary",
        b"no headers at all",
        b"",
    ]
    first, second, third = (part for part, _ in parsed)
    assert first.header("CONTENT-LOCATION") == "first"
    assert first.content_type("x/y").media_type == "application/dicom"
    assert second.headers == ()
    assert (
        second.content_type('application/dicom; transfer-syntax="1.2"').param("transfer-syntax")
        == "1.2"
    )
    assert third.content_type("x/y") == ContentType("application/dicom+json")
    assert third.header("x-folded") == "a b"


async def test_body_may_start_with_the_boundary() -> None:
    parsed = await collect(b"--7d9f1c2b\r\n\r\nonly\r\n--7d9f1c2b--", size=1)
    assert [body for _, body in parsed] == [b"only"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no multipart boundary"),
        (b"just some bytes without any boundary", "no multipart boundary"),
        (b"--7d9f1c2b\r\n\r\ndata that never ends", "before the closing boundary"),
        (b"--7d9f1c2b\r\nContent-Type: application/dicom\r\n", "inside part headers"),
        (b"--7d9f1c2b\r\nno colon here\r\n\r\nx\r\n--7d9f1c2b--", "malformed part header"),
        (b"--7d9f1c2b\r\n: empty name\r\n\r\nx\r\n--7d9f1c2b--", "malformed part header"),
        (b"--7d9f1c2bXYZ\r\n\r\nx\r\n--7d9f1c2b--", "after a boundary"),
        (b"--7d9f1c2b", "ended after a boundary"),
        (b"--7d9f1c2b\r\nA: " + b"x" * 40_000 + b"\r\n\r\n", "too large"),
    ],
)
async def test_malformed_bodies_raise(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        await collect(body)


async def test_unread_body_is_skipped() -> None:
    body = await render(
        [
            OutPart("application/dicom", achunks([b"A" * 100, b"B" * 100])),
            OutPart("a/b", achunks([b"second"])),
        ]
    )
    seen = []
    async for part in iter_parts(
        achunks([body[i : i + 10] for i in range(0, len(body), 10)]), BOUNDARY
    ):
        seen.append((part.header("content-type"), (await anext(part.body))[:1]))
    assert seen == [("application/dicom", b"A"), ("a/b", b"s")]


async def test_stale_body_iterator_does_not_steal_the_next_part() -> None:
    body = await render([OutPart("a/a", achunks([b"one"])), OutPart("b/b", achunks([b"two"]))])
    parts = iter_parts(achunks([body]), BOUNDARY)
    first = await anext(parts)
    second = await anext(parts)
    assert [c async for c in first.body] == []
    assert [c async for c in second.body] == [b"two"]


async def test_writer_output_is_exact() -> None:
    parts = [
        OutPart("application/dicom", achunks([b"ab", b"", b"c"]), (("Content-Location", "/x"),)),
        OutPart("application/dicom", achunks([])),
    ]
    assert await render(parts) == (
        b"--7d9f1c2b\r\nContent-Type: application/dicom\r\nContent-Location: /x\r\n\r\nabc"
        b"\r\n--7d9f1c2b\r\nContent-Type: application/dicom\r\n\r\n"
        b"\r\n--7d9f1c2b--\r\n"
    )
    assert await render([]) == b"--7d9f1c2b--\r\n"


@pytest.mark.parametrize("bodies", [[], [b""], [b"abc"], [b"ab", b"", b"--7d9f1c2b\r\n"]])
async def test_framing_pieces_make_what_the_writer_makes(bodies: list[bytes]) -> None:
    # what WADO-RS sends through the blob store's gather, built from the same parts
    headers = (("Content-Location", "/x"),)
    parts = [OutPart("application/dicom", achunks([b]), headers) for b in bodies]
    framed = [
        part_head(BOUNDARY, "application/dicom", headers, first=n == 0) + body
        for n, body in enumerate(bodies)
    ]
    framed.append(close_delimiter(BOUNDARY, empty=not bodies))
    assert b"".join(framed) == await render(parts)


@pytest.mark.parametrize(
    "headers", [(("X-Evil", "a\r\nContent-Type: text/html"),), (("Bad:Name", "v"),)]
)
async def test_writer_refuses_header_injection(headers: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ValueError, match="invalid header"):
        await render([OutPart("application/dicom", achunks([b"x"]), headers)])


def test_related_content_type_and_boundaries() -> None:
    boundary = new_boundary()
    assert len(boundary) == 32 and boundary != new_boundary()
    value = related_content_type(boundary, "application/dicom", "1.2.840.10008.1.2.1")
    parsed = parse_content_type(value)
    assert boundary_of(parsed) == boundary
    assert parsed.param("type") == "application/dicom"
    assert parsed.param("transfer-syntax") == "1.2.840.10008.1.2.1"


# Content built from fragments that look like the delimiter, to stress partial matches.
FRAGMENTS = st.sampled_from(
    [b"\r", b"\n", b"-", b"--", b"\r\n--", b"\r\n--7d9f1c2", b"7d9f1c2", b"\r\n\r\n", b"x", b"\x00"]
)
CONTENTS = st.one_of(st.binary(max_size=300), st.lists(FRAGMENTS, max_size=60).map(b"".join))
TYPES = st.sampled_from(["application/dicom", "application/dicom+json", "application/octet-stream"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    contents=st.lists(st.tuples(TYPES, CONTENTS), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=40),
    preamble=st.sampled_from([b"", b"preamble\r\n", b"--7d9f1c2\r\n"]),
    epilogue=st.sampled_from([b"", b"epilogue", b"\r\n--7d9f1c2b\r\n"]),
)
async def test_round_trip_under_random_chunk_splits(
    contents: list[tuple[str, bytes]], cuts: list[int], preamble: bytes, epilogue: bytes
) -> None:
    body = preamble + await render([OutPart(t, achunks([c])) for t, c in contents]) + epilogue
    if not contents:
        return  # a body with no parts is a close delimiter only; covered above
    received = []
    async for part in iter_parts(achunks(split_at(body, cuts)), BOUNDARY):
        chunks = [c async for c in part.body]
        assert all(chunks)  # never an empty chunk
        received.append((part.header("content-type"), b"".join(chunks)))
    assert received == contents


async def test_large_part_streams_in_bounded_memory() -> None:
    chunk, count = b"\x5a" * 65536, 512  # a 32 MiB part in 64 KiB chunks

    async def body() -> AsyncIterator[bytes]:
        yield b"--7d9f1c2b\r\nContent-Type: application/dicom\r\n\r\n"
        for _ in range(count):
            yield chunk
        yield b"\r\n--7d9f1c2b--\r\n"

    tracemalloc.start()
    try:
        sizes = []
        async for part in iter_parts(body(), BOUNDARY):
            async for piece in part.body:
                sizes.append(len(piece))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(sizes) == count * len(chunk)
    assert max(sizes) <= len(chunk) + len(BOUNDARY) + 4
    assert peak < 2 * (1 << 20)
