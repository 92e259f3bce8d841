"""Streaming ``multipart/related`` (RFC 2387 over RFC 2046 §5.1) for DICOMweb.

The parser turns an async stream of byte chunks (a STOW-RS request body,
PS3.18 §10.5.1) into parts, each with its headers and an async stream of its
body; it never holds more than one incoming chunk plus a boundary's length.
A part's body must be read before the next part is requested; whatever is
left unread is skipped. The writer does the reverse for WADO-RS responses
(PS3.18 §8.6.1.2).

Errors: every malformed body raises ``MultipartError`` (a ``ValueError``).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass

# RFC 2046 §5.1.1 allows 1 to 70 characters, and the writer keeps to that. What is
# received may be longer: Orthanc 1.7's STOW-RS client (Debian's) joins two UUIDs
# (73 characters), and refusing it would only break a common PACS's sends. Still
# bounded: the parser holds a boundary's length beside each chunk.
MAX_BOUNDARY_LENGTH = 200
DEFAULT_MAX_HEADER_SIZE = 16 * 1024
_MAX_PADDING = 1024


class MultipartError(ValueError):
    """The body is not well-formed multipart (HTTP 400 at the edge)."""


@dataclass(frozen=True)
class ContentType:
    """A parsed Content-Type: lower-case media type and parameters (RFC 9110 §8.3.1)."""

    media_type: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        """Value of parameter ``name`` (case-insensitive name), or None."""
        lowered = name.lower()
        return next((v for k, v in self.params if k == lowered), None)


# One parameter (RFC 9110 §5.6.6) up to the next ``;``: a name, then ``=`` and a
# token or a quoted string (a backslash quotes the next character). What follows a
# closing quote before the ``;`` is ignored; ``closed`` is unset when no quote closes.
_PARAMETER = re.compile(
    r"""
    (?P<name>[^=;]*)
    (?: = \s* (?: "(?P<quoted>(?:[^"\\]|\\.)*)(?P<closed>")?[^;]*
              | (?P<token>[^;]*) ) )?
    (?: ; | \Z )
    """,
    re.DOTALL | re.VERBOSE,
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def parse_content_type(header: str) -> ContentType:
    """Parse a Content-Type header value, unquoting quoted parameters (RFC 9110 §5.6.6).

    One scan over the header (a parameter never re-reads what follows it), so the
    time taken grows only with the header's length.
    """
    media, _, rest = header.partition(";")
    params: list[tuple[str, str]] = []
    for found in _PARAMETER.finditer(rest):
        name, quoted, token = found["name"].strip().lower(), found["quoted"], found["token"]
        if quoted is not None:
            if found["closed"] is None:
                raise MultipartError("unterminated quoted parameter in Content-Type")
            params.append((name, _QUOTED_PAIR.sub(r"\1", quoted)))
        elif name or token is not None:  # not an empty stretch between two ``;``
            params.append((name, (token or "").strip()))
    return ContentType(media.strip().lower(), tuple(params))


def boundary_of(content_type: ContentType) -> str:
    """The boundary parameter of a multipart Content-Type, validated (RFC 2046 §5.1.1)."""
    boundary = content_type.param("boundary")
    if not content_type.media_type.startswith("multipart/"):
        raise MultipartError(f"not a multipart media type: {content_type.media_type}")
    if not boundary:
        raise MultipartError("multipart Content-Type has no boundary parameter")
    _check_boundary(boundary)
    return boundary


def _check_boundary(boundary: str) -> None:
    if not 0 < len(boundary) <= MAX_BOUNDARY_LENGTH or any(c in boundary for c in "\r\n"):
        raise MultipartError(f"invalid multipart boundary: {boundary!r}")


@dataclass(frozen=True)
class Part:
    """One received part: its header fields (names lower-case) and its body stream."""

    headers: tuple[tuple[str, str], ...]
    body: AsyncIterator[bytes | bytearray]  # a chunk is not copied to make it bytes

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k == lowered), None)

    def content_type(self, default: str) -> ContentType:
        """The part's Content-Type, or ``default`` (the related ``type``) when absent."""
        return parse_content_type(self.header("content-type") or default)


class _Reader:
    """Shared state of one parse: the source iterator and the look-ahead buffer."""

    def __init__(self, source: AsyncIterator[bytes], boundary: str, max_header: int) -> None:
        self._source = source
        # A virtual CRLF lets the first boundary be found like every other one.
        self._buf = bytearray(b"\r\n")
        self._eof = False
        self._delim = b"\r\n--" + boundary.encode("latin-1")
        self._max_header = max_header
        self.in_body = False
        self.part_no = 0

    async def _fill(self) -> bool:
        while not self._eof:
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self._eof = True
                break
            if chunk:
                self._buf += chunk
                return True
        return False

    async def _need(self, n: int) -> bool:
        while len(self._buf) < n:
            if not await self._fill():
                return False
        return True

    async def skip_preamble(self) -> None:
        keep = len(self._delim) - 1
        while (idx := self._buf.find(self._delim)) < 0:
            del self._buf[: max(0, len(self._buf) - keep)]
            if not await self._fill():
                raise MultipartError("no multipart boundary found in body")
        del self._buf[: idx + len(self._delim)]

    async def after_delimiter(self) -> bool:
        """Consume the rest of a boundary line; False if it was the close delimiter."""
        if not await self._need(2):
            raise MultipartError("body ended after a boundary")
        if self._buf[:2] == b"--":
            self._buf.clear()  # the epilogue is ignored (RFC 2046 §5.1.1)
            return False
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > _MAX_PADDING or not await self._fill():
                raise MultipartError("malformed boundary line")
        if self._buf[:end].strip(b" \t"):
            raise MultipartError("unexpected characters after a boundary")
        del self._buf[: end + 2]
        return True

    async def read_headers(self) -> tuple[tuple[str, str], ...]:
        await self._need(2)
        if self._buf[:2] == b"\r\n":
            del self._buf[:2]
            return ()
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > self._max_header:
                raise MultipartError("part header block too large")
            if not await self._fill():
                raise MultipartError("body ended inside part headers")
        block = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        return _parse_header_block(block)

    async def next_body_chunk(self) -> bytes | bytearray | None:
        """The next piece of the current part's body, or None at its end."""
        keep = len(self._delim) - 1
        while True:
            idx = self._buf.find(self._delim)
            if idx >= 0:
                return self._end_of_part(idx)
            if len(self._buf) > keep:
                # hand the buffer itself on, keeping its tail (a delimiter may start
                # there): copies ``keep`` bytes instead of the whole chunk twice
                chunk = self._buf
                self._buf = chunk[-keep:]
                del chunk[-keep:]  # truncation: no copy
                return chunk
            if not await self._fill():
                raise MultipartError("body ended before the closing boundary")

    def _end_of_part(self, idx: int) -> bytes | bytearray | None:
        if idx > 0:
            chunk = self._buf  # as above: copy what follows, not the part's end
            self._buf = chunk[idx:]
            del chunk[idx:]
            return chunk
        del self._buf[: len(self._delim)]
        self.in_body = False
        return None


def _parse_header_block(block: str) -> tuple[tuple[str, str], ...]:
    fields: list[tuple[str, str]] = []
    for line in block.split("\r\n"):
        if line[:1] in (" ", "\t") and fields:  # obsolete line folding
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}")
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or name != name.strip():
            raise MultipartError(f"malformed part header line: {line!r}")
        fields.append((name.lower(), value.strip()))
    return tuple(fields)


class _PartBody:
    """Async iterator over one part's body, reading through the shared reader."""

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader
        self._part_no = reader.part_no

    def __aiter__(self) -> _PartBody:
        return self

    async def __anext__(self) -> bytes | bytearray:
        if not self._reader.in_body or self._reader.part_no != self._part_no:
            raise StopAsyncIteration
        chunk = await self._reader.next_body_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


async def iter_parts(
    chunks: AsyncIterable[bytes], boundary: str, *, max_header_size: int = DEFAULT_MAX_HEADER_SIZE
) -> AsyncGenerator[Part, None]:
    """Yield the parts of a multipart body as they arrive (RFC 2046 §5.1; PS3.18 §8.6.1.2)."""
    _check_boundary(boundary)
    reader = _Reader(aiter(chunks), boundary, max_header_size)
    await reader.skip_preamble()
    while await reader.after_delimiter():
        headers = await reader.read_headers()
        reader.in_body = True
        reader.part_no += 1
        body = _PartBody(reader)
        yield Part(headers, body)
        async for _ in body:  # skip what the consumer left unread
            pass


@dataclass(frozen=True)
class OutPart:
    """One part to send: its Content-Type, extra headers, and body chunks."""

    content_type: str
    body: AsyncIterable[bytes]
    headers: tuple[tuple[str, str], ...] = ()


def new_boundary() -> str:
    """A fresh random boundary (32 hex digits; cannot collide with content by design)."""
    return secrets.token_hex(16)


def related_content_type(boundary: str, part_type: str, transfer_syntax: str | None = None) -> str:
    """The response Content-Type for a multipart/related body (PS3.18 §8.7.3.3.2)."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return f"{value}; transfer-syntax={transfer_syntax}" if transfer_syntax else value


async def write_parts(
    parts: AsyncIterable[OutPart] | Iterable[OutPart], boundary: str
) -> AsyncIterator[bytes]:
    """Yield a multipart body: boundary and headers, then each part's chunks (RFC 2046 §5.1)."""
    _check_boundary(boundary)
    first = True
    async for part in _aiter_any(parts):
        yield part_head(boundary, part.content_type, part.headers, first=first)
        first = False
        async for chunk in part.body:
            if chunk:
                yield chunk
    yield close_delimiter(boundary, empty=first)


def part_head(
    boundary: str, content_type: str, headers: Iterable[tuple[str, str]] = (), *, first: bool
) -> bytes:
    """What comes before a part's body: the delimiter (after the previous body's
    CRLF unless ``first``) and the header block (RFC 2046 §5.1.1). For writers
    that frame bodies themselves (``FileBlobStore.gather``)."""
    lead = b"--" if first else b"\r\n--"
    return lead + boundary.encode("latin-1") + b"\r\n" + _header_bytes(content_type, headers)


def close_delimiter(boundary: str, *, empty: bool = False) -> bytes:
    """The close delimiter that ends a multipart body (``empty``: no part before it)."""
    return (b"--" if empty else b"\r\n--") + boundary.encode("latin-1") + b"--\r\n"


def _header_bytes(content_type: str, headers: Iterable[tuple[str, str]]) -> bytes:
    fields = (("Content-Type", content_type), *headers)
    lines = []
    for name, value in fields:
        if any(c in name + value for c in "\r\n") or ":" in name:
            raise ValueError(f"invalid header field {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return ("".join(lines) + "\r\n").encode("latin-1")


async def _aiter_any(parts: AsyncIterable[OutPart] | Iterable[OutPart]) -> AsyncIterator[OutPart]:
    if isinstance(parts, AsyncIterable):
        async for part in parts:
            yield part
    else:
        for part in parts:
            yield part


async def single_chunk(data: bytes) -> AsyncIterator[bytes]:
    """A part body (or response body) that is one chunk already in memory."""
    yield data
