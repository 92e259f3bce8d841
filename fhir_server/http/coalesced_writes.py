"""One send per response where uvicorn makes two.

uvicorn's httptools protocol writes a response's status line and headers when
the app sends ``http.response.start`` and the body when it sends
``http.response.body``: two ``transport.write`` calls, and on an idle
connection each is a ``send`` system call of its own, which on loopback also
pays for the peer's receive. For a small response such as a read, that second
system call was the largest single item of the event loop's time per request.

``CoalescingHttpToolsProtocol`` gives the protocol a transport that holds what
is written within one turn of the event loop and hands it to the real
transport as one write at the end of that turn. Nothing waits longer than the
turn in which it was written, and a write past ``FLUSH_AT`` bytes goes out at
once with what was held before it, so large streamed responses go out as
before. Closing or aborting the connection, and anything that asks for the
size of the write buffer, first sends what is held (or drops it, on abort).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

FLUSH_AT = 64 * 1024  # bytes held at most before they go out at once


class CoalescingTransport:
    """A transport that gathers the writes of one loop turn into one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes | bytearray | memoryview] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= FLUSH_AT:
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is held, as one write."""
        if not self._held:
            return
        held = self._held
        self._held, self._held_bytes = [], 0
        if self._transport.is_closing():
            return
        self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_bytes

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held, self._held_bytes = [], 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # everything else (extra info, reading, flow control) is the real transport's
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = CoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)  # type: ignore[arg-type]
