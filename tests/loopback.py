"""An ASGI app served by uvicorn, in the test's own event loop, on a real loopback
socket, with the HTTP protocol class under test (radhub's or uvicorn's stock one)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn


@asynccontextmanager
async def serving(
    app: Any, protocol: type[asyncio.Protocol], *, send_buffer: int | None = None, **config: Any
) -> AsyncIterator[int]:
    """Yield the port ``app`` is served on. ``send_buffer`` bounds what the kernel holds
    for each connection (accepted sockets inherit it); ``config`` goes to uvicorn."""
    sock = socket.socket()
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    options: dict[str, Any] = {"lifespan": "off", "log_level": "warning", **config}
    server = uvicorn.Server(uvicorn.Config(app, http=protocol, **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
