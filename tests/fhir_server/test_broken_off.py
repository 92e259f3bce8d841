"""A response broken off on purpose (fhir_server.http.broken_off): the client sees a
cut-off body, the log one warning and no traceback.

uvicorn runs in this test's event loop with radhub's protocol on a real socket, its
log records propagating to pytest's capture (``log_config=None``).
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from fhir_server.errors import ResponseBrokenOff
from fhir_server.http.limits import HttpLimits, bounded_protocol
from fhir_server.settings import Settings
from tests import loopback

WAIT = 5.0
_DEFAULTS = Settings()
PROTOCOL = bounded_protocol(
    HttpLimits(_DEFAULTS.http_header_limit, _DEFAULTS.http_header_timeout, WAIT)
)


def serving(app: Any, *, send_buffer: int | None = None) -> AbstractAsyncContextManager[int]:
    """``app`` served by radhub's protocol, uvicorn's log records left to ``caplog``."""
    return loopback.serving(app, PROTOCOL, send_buffer=send_buffer, log_config=None)


class _App:
    """Sends a head promising 10 bytes, 4 of them, then raises ``failure``; at
    ``/early``, raises it before anything is sent."""

    def __init__(self, failure: type[Exception]) -> None:
        self.failure = failure

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/early":
            raise self.failure("before the start")
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"1234", "more_body": True})
        raise self.failure("the study went away")


async def _exchange(port: int, path: str) -> bytes:
    """What the server sends for one GET until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()


async def test_a_broken_off_response_is_cut_off_with_one_warning(
    logged: pytest.LogCaptureFixture,
) -> None:
    async with serving(_App(ResponseBrokenOff)) as port:
        answer = await _exchange(port, "/")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 10" in head.lower()
    assert body == b"1234"  # what was sent goes out; the connection closes short of 10
    assert [r.levelname for r in logged.records] == ["WARNING"]
    assert logged.records[0].getMessage().endswith(" - response broken off: the study went away")
    assert logged.records[0].exc_info is None


async def test_any_other_exception_is_still_an_error_with_its_traceback(
    logged: pytest.LogCaptureFixture,
) -> None:
    async with serving(_App(RuntimeError)) as port:
        answer = await _exchange(port, "/")
    assert answer.endswith(b"\r\n\r\n1234")
    assert [r.levelname for r in logged.records] == ["ERROR"]
    assert logged.records[0].exc_info is not None


async def test_broken_off_before_the_response_started_is_a_500(
    logged: pytest.LogCaptureFixture,
) -> None:
    async with serving(_App(ResponseBrokenOff)) as port:
        answer = await _exchange(port, "/early")
    assert answer.startswith(b"HTTP/1.1 500")
    assert [r.levelname for r in logged.records] == ["ERROR"]
