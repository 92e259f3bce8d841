"""The coalescing HTTP protocol: one write per small response, nothing held back.

uvicorn runs in this test's event loop on a real socket; a raw client reads
the responses. Between the protocol and the real transport sits a wrapper that
records each write reaching the real transport, so the tests see how many
``send`` calls a response cost and what they carried.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fhir_server.http.coalesced_writes import FLUSH_AT, CoalescingHttpToolsProtocol
from tests.loopback import serving

pytestmark = pytest.mark.asyncio

SMALL = b'{"resourceType":"Patient","id":"p1"}'
LARGE_CHUNKS = 3


class _RecordedWrites:
    """The real transport, with each write it is given recorded."""

    def __init__(self, transport: asyncio.Transport, log: list[bytes]) -> None:
        self._transport = transport
        self._log = log

    def write(self, data: bytes) -> None:
        self._log.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _recording(base: type[HttpToolsProtocol], log: list[bytes]) -> type[HttpToolsProtocol]:
    class Recording(base):
        def connection_made(self, transport: asyncio.Transport) -> None:
            # below the coalescing transport (which the base class adds, if it is ours)
            super().connection_made(_RecordedWrites(transport, log))  # type: ignore[arg-type]

    return Recording


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    path = scope["path"]
    headers = [(b"content-type", b"application/fhir+json")]
    if path == "/large":
        size = LARGE_CHUNKS * FLUSH_AT
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*headers, (b"content-length", str(size).encode())]})  # fmt: skip
        for n in range(LARGE_CHUNKS):
            chunk = bytes([65 + n]) * FLUSH_AT
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    headers.append((b"content-length", str(len(SMALL)).encode()))
    if path == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if path == "/later":
        await asyncio.sleep(0.05)  # the head goes out on its own turn
    await send({"type": "http.response.body", "body": SMALL})


async def _get(port: int, path: str, *, until_eof: bool = False) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    body = await reader.readexactly(length)
    if until_eof:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed it
    writer.close()
    return head, body


@pytest.fixture
def writes() -> list[bytes]:
    return []


async def test_a_small_response_is_one_write(writes: list[bytes]) -> None:
    async with serving(_app, _recording(CoalescingHttpToolsProtocol, writes)) as port:
        head, body = await _get(port, "/small")
    assert body == SMALL
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes == [head + body]


async def test_stock_uvicorn_writes_head_and_body_apart(writes: list[bytes]) -> None:
    """What the coalescing protocol saves (and why the test above can fail)."""
    async with serving(_app, _recording(HttpToolsProtocol, writes)) as port:
        head, body = await _get(port, "/small")
    assert writes == [head, body]


async def test_a_head_is_not_held_past_its_turn(writes: list[bytes]) -> None:
    async with serving(_app, _recording(CoalescingHttpToolsProtocol, writes)) as port:
        head, body = await _get(port, "/later")
    assert body == SMALL
    assert writes == [head, body]


async def test_a_large_body_goes_out_as_it_comes(writes: list[bytes]) -> None:
    async with serving(_app, _recording(CoalescingHttpToolsProtocol, writes)) as port:
        head, body = await _get(port, "/large")
    assert body == b"".join(bytes([65 + n]) * FLUSH_AT for n in range(LARGE_CHUNKS))
    assert b"".join(writes) == head + body
    # the head rides with the first chunk; each chunk reaching FLUSH_AT goes at once
    assert len(writes) == LARGE_CHUNKS
    assert all(len(w) >= FLUSH_AT for w in writes)


async def test_closing_sends_what_is_held_first(writes: list[bytes]) -> None:
    async with serving(_app, _recording(CoalescingHttpToolsProtocol, writes)) as port:
        head, body = await _get(port, "/close", until_eof=True)
    assert body == SMALL
    assert b"connection: close" in head.lower()
    assert b"".join(writes) == head + body
