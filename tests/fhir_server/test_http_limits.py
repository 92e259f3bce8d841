"""The HTTP listener's bounds on a request's head and on stalls (fhir_server.http.limits).

uvicorn runs in this test's event loop with the bounded protocol, short timeouts and
a small head limit, on a real socket; raw clients send what real and hostile clients
send. The parser the protocol feeds is wrapped so the tests see how much of an
endless header the server took in. The last test runs ``radhub serve`` itself with
the limits given on its command line.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httptools
import pytest
from starlette.middleware.cors import CORSMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fhir_server.app import cors_options
from fhir_server.cli import build_parser, settings_from
from fhir_server.http.limits import HttpLimits, bounded_protocol, cors_fields
from fhir_server.settings import Settings
from tests import loopback
from tests.e2e.conftest import ServerProcess

LIMITS = HttpLimits(header_bytes=8192, header_timeout=0.5, body_timeout=0.5)
PROTOCOL: type[HttpToolsProtocol] = bounded_protocol(LIMITS)
SLOW_APP = 1.2  # seconds the app at /slow waits before it reads: more than the timeouts
WAIT = 5.0  # at most, for what should come at once or after a test timeout
ONE_READ = 256 * 1024  # the most asyncio's and uvloop's transports read at once


class _App:
    """Reads the whole body and answers its length; notes how each request's reading ended."""

    def __init__(self, slow: float = SLOW_APP) -> None:
        self.ended: list[str] = []
        self.slow = slow

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/early":  # answers without reading
            headers = [(b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 413, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(self.slow)
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.ended.append("disconnect")
                return
            received += len(message["body"])
            if not message["more_body"]:
                break
        self.ended.append("complete")
        body = b"%d" % received
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _CountingParser:
    """httptools' parser, counting the bytes it is given."""

    def __init__(self, parser: httptools.HttpRequestParser, fed: list[int]) -> None:
        self._parser = parser
        self._fed = fed

    def feed_data(self, data: bytes) -> None:
        self._fed.append(len(data))
        self._parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def _counting(base: type[HttpToolsProtocol], fed: list[int]) -> type[HttpToolsProtocol]:
    class Counting(base):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            _count_feeds(self, fed)

    return Counting


def _count_feeds(protocol: HttpToolsProtocol, fed: list[int]) -> None:
    counting: Any = _CountingParser(protocol.parser, fed)  # in the place of httptools' own
    protocol.parser = counting


def _serving(
    app: _App, protocol: type[HttpToolsProtocol] = PROTOCOL
) -> AbstractAsyncContextManager[int]:
    return loopback.serving(app, protocol, log_level="critical")


class _Client:
    """A raw HTTP/1.1 client on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[_Client]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            yield cls(reader, writer)
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, bytes, bytes]:
        """The next response: status, head, body (by its Content-Length)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return status, head, await asyncio.wait_for(self.reader.readexactly(length), WAIT)

    async def closed(self) -> bytes:
        """What came before the server closed the connection."""
        with suppress(ConnectionError):
            return await asyncio.wait_for(self.reader.read(), WAIT)
        return b""


@asynccontextmanager
async def _meanwhile(sending: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Go on sending in the background while the test reads."""
    task = asyncio.create_task(sending)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _send_for_ever(client: _Client, start: bytes) -> None:
    """``start``, then an endless field value (until the server stops taking it)."""
    with suppress(ConnectionError):
        await client.send(start)
        for _ in range(1024):  # 64 MiB, as in the audit; the server stops far sooner
            await client.send(b"a" * 65536)


async def _trickle(client: _Client, data: bytes, every: float) -> None:
    with suppress(ConnectionError):
        for byte in data:
            await client.send(bytes([byte]))
            await asyncio.sleep(every)


def _get(path: str = "/", *fields: bytes) -> bytes:
    return b"\r\n".join([b"GET " + path.encode() + b" HTTP/1.1", b"Host: t", *fields, b"", b""])


def _post(length: int, *fields: bytes, path: str = "/") -> bytes:
    start = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: t", b"Content-Length: %d" % length]
    return b"\r\n".join([*start, *fields, b"", b""])


def _head_of_size(size: int) -> bytes:
    """A GET whose request line and header section (with the final blank line) are ``size``
    bytes."""
    bare = _get("/", b"X-Pad: ")
    return _get("/", b"X-Pad: " + b"p" * (size - len(bare)))


# the head's size


@pytest.mark.parametrize("piece", [None, 97], ids=["one-write", "in-pieces"])
@pytest.mark.parametrize("extra, status", [(0, 200), (1, 431)], ids=["at-limit", "one-over"])
async def test_a_head_at_the_limit_is_served_and_one_byte_more_is_431(
    extra: int, status: int, piece: int | None
) -> None:
    head = _head_of_size(LIMITS.header_bytes + extra)
    async with _serving(_App()) as port, _Client.connect(port) as client:
        for at in range(0, len(head), piece or len(head)):
            await client.send(head[at : at + (piece or len(head))])
            await asyncio.sleep(0.001 if piece else 0)
        got, answer, _ = await client.response()
        assert got == status
        if status == 431:
            assert b"connection: close" in answer
            assert await client.closed() == b""


async def test_a_body_in_the_read_that_ends_a_head_near_the_limit_is_body() -> None:
    bare = _post(1000, b"X-Pad: ")
    head = _post(1000, b"X-Pad: " + b"p" * (LIMITS.header_bytes - 10 - len(bare)))
    async with _serving(_App()) as port, _Client.connect(port) as client:
        await client.send(head + b"b" * 1000 + _get())  # and a pipelined request after it
        assert (await client.response())[0::2] == (200, b"1000")
        assert (await client.response())[0::2] == (200, b"0")


async def test_a_browser_head_with_a_long_token_and_cookies_fits_the_default_limit() -> None:
    defaults = Settings()
    limits = HttpLimits(
        defaults.http_header_limit, defaults.http_header_timeout, defaults.http_body_timeout
    )
    token = b"Authorization: Bearer " + b"t" * 8 * 1024  # an 8 KB JWT with many claims
    cookies = b"Cookie: " + b"; ".join(b"c%d=%s" % (n, b"v" * 1000) for n in range(20))
    browser = [
        b"Accept: application/dicom+json, multipart/related; type=application/octet-stream",
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0",
        b"Origin: https://viewer.example.org",
        b"Referer: https://viewer.example.org/viewer?StudyInstanceUIDs=" + b"1.2.840" * 40,
    ]
    query = "&".join(["includefield=all"] * 50)
    head = _get("/dicomweb/studies?" + query, token, cookies, *browser)
    assert 28 * 1024 < len(head) < limits.header_bytes // 2  # room to spare, twice over
    async with _serving(_App(), bounded_protocol(limits)) as port, _Client.connect(port) as client:
        await client.send(head)
        assert (await client.response())[0] == 200


async def test_an_endless_header_is_refused_without_being_taken_in() -> None:
    fed: list[int] = []
    async with _serving(_App(), _counting(PROTOCOL, fed)) as port, _Client.connect(port) as client:
        async with _meanwhile(_send_for_ever(client, b"GET / HTTP/1.1\r\nX-Big: ")):
            assert (await client.response())[0] == 431
            await client.closed()
    assert sum(fed) <= LIMITS.header_bytes


async def test_an_endless_trailer_is_refused_without_being_taken_in() -> None:
    fed: list[int] = []
    app = _App()
    async with _serving(app, _counting(PROTOCOL, fed)) as port, _Client.connect(port) as client:
        start = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        async with _meanwhile(_send_for_ever(client, start + b"5\r\nhello\r\n0\r\nX-T: ")):
            assert (await client.response())[0] == 431
            await client.closed()
    assert app.ended == ["disconnect"]
    assert sum(fed) <= LIMITS.header_bytes + 2 * ONE_READ


# the head's time


async def test_a_stalled_head_is_answered_408_after_the_timeout() -> None:
    async with _serving(_App()) as port, _Client.connect(port) as client:
        await client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        began = time.monotonic()
        status, _, _ = await client.response()
        assert status == 408
        assert LIMITS.header_timeout * 0.8 <= time.monotonic() - began < WAIT
        assert await client.closed() == b""


async def test_a_head_sent_a_byte_at_a_time_is_held_to_the_timeout() -> None:
    head = _get()
    every = LIMITS.header_timeout / 5  # each byte well within the timeout, all of them not
    async with _serving(_App()) as port, _Client.connect(port) as client:
        began = time.monotonic()
        async with _meanwhile(_trickle(client, head, every)):
            assert (await client.response())[0] == 408
        assert time.monotonic() - began < len(head) * every / 2


async def test_a_connection_that_sends_nothing_is_closed_after_the_timeout() -> None:
    async with _serving(_App()) as port, _Client.connect(port) as client:
        began = time.monotonic()
        assert await client.closed() == b""  # no 408 to a request never begun
        assert LIMITS.header_timeout * 0.8 <= time.monotonic() - began < WAIT


# the body's idleness


async def test_a_stalled_body_ends_the_request_and_the_app_sees_the_disconnect() -> None:
    app = _App()
    async with _serving(app) as port, _Client.connect(port) as client:
        await client.send(_post(100_000) + b"x" * 1000)
        began = time.monotonic()
        status, _, _ = await client.response()
        assert status == 408
        assert LIMITS.body_timeout * 0.8 <= time.monotonic() - began < WAIT
        assert await client.closed() == b""
    assert app.ended == ["disconnect"]


async def test_a_stalled_body_after_100_continue_ends_the_request() -> None:
    app = _App()
    async with _serving(app) as port, _Client.connect(port) as client:
        await client.send(_post(10, b"Expect: 100-continue"))
        continued = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), WAIT)
        assert continued == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert (await client.response())[0] == 408
    assert app.ended == ["disconnect"]


async def test_an_early_answer_does_not_hold_the_connection_for_a_stalled_body() -> None:
    async with _serving(_App()) as port, _Client.connect(port) as client:
        await client.send(_post(100_000, path="/early") + b"x" * 10)
        assert (await client.response())[0] == 413
        assert await client.closed() == b""  # no second answer: only the close


async def test_a_slow_but_steady_body_is_not_cut() -> None:
    pieces, piece = 12, b"s" * 100
    app = _App()
    async with _serving(app) as port, _Client.connect(port) as client:
        # the app starts reading late: until then only the bytes coming show the client alive
        await client.send(_post(pieces * len(piece), path="/slow"))
        for _ in range(pieces):  # 2.4 s in all, a piece every 0.4 timeouts
            await asyncio.sleep(LIMITS.body_timeout * 0.4)
            await client.send(piece)
        status, _, body = await client.response()
    assert (status, body) == (200, b"%d" % (pieces * len(piece)))
    assert app.ended == ["complete"]


@pytest.mark.parametrize("expect", [False, True], ids=["paused-reading", "100-continue"])
async def test_an_app_slow_to_read_is_not_a_stalled_client(expect: bool) -> None:
    size = 4 * 1024 * 1024  # past uvicorn's read buffer, so reading pauses
    async with _serving(_App()) as port, _Client.connect(port) as client:
        fields = [b"Expect: 100-continue"] if expect else []
        await client.send(_post(size, *fields, path="/slow"))
        if expect:
            continued = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), WAIT)
            assert continued.startswith(b"HTTP/1.1 100 ")
        await client.send(b"b" * size)
        status, _, body = await client.response()
    assert (status, body) == (200, b"%d" % size)


async def test_the_client_has_the_whole_timeout_once_the_app_asks_for_the_body() -> None:
    limits = HttpLimits(LIMITS.header_bytes, header_timeout=1.0, body_timeout=1.0)
    app = _App(slow=1.9)  # asks for the body just before the watchdog's second look
    async with _serving(app, bounded_protocol(limits)) as port, _Client.connect(port) as client:
        await client.send(_post(5, b"Expect: 100-continue", path="/slow"))
        continued = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), WAIT)
        assert continued.startswith(b"HTTP/1.1 100 ")
        await asyncio.sleep(limits.body_timeout / 2)  # a client's own pause, within the timeout
        await client.send(b"hello")
        assert (await client.response())[0::2] == (200, b"5")


async def test_a_large_upload_streams_through() -> None:
    size, chunk = 256 * 1024 * 1024, b"u" * (1024 * 1024)
    async with _serving(_App()) as port, _Client.connect(port) as client:
        await client.send(_post(size))
        for _ in range(size // len(chunk)):
            await client.send(chunk)
        status, _, body = await client.response()
    assert (status, body) == (200, b"%d" % size)


# what must keep working


async def test_kept_alive_requests_may_pause_longer_than_the_head_timeout() -> None:
    app = _App()
    async with _serving(app) as port, _Client.connect(port) as client:
        for request in (_get(), _post(5) + b"hello", _get()):
            await client.send(request)
            assert (await client.response())[0] == 200
            await asyncio.sleep(LIMITS.header_timeout * 1.5)  # uvicorn's keep-alive is 5 s
    assert app.ended == ["complete"] * 3


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with _serving(_App()) as port, _Client.connect(port) as client:
        await client.send(_post(3) + b"abc" + _get() + _post(5) + b"hello")
        answers = [await client.response() for _ in range(3)]
    assert [(status, body) for status, _, body in answers] == [
        (200, b"3"),
        (200, b"0"),
        (200, b"5"),
    ]


# radhub serve


def test_the_limits_come_from_the_command_line_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def parsed(*argv: str) -> Settings:
        return settings_from(build_parser().parse_args(["serve", *argv]))

    defaults = parsed()
    assert (defaults.http_header_limit, defaults.http_header_timeout) == (65536, 30.0)
    assert defaults.http_body_timeout == 60.0
    monkeypatch.setenv("RADHUB_HTTP_HEADER_LIMIT", "16384")
    monkeypatch.setenv("RADHUB_HTTP_BODY_TIMEOUT", "120")
    settings = parsed("--http-header-timeout", "2.5")
    assert (settings.http_header_limit, settings.http_header_timeout) == (16384, 2.5)
    assert settings.http_body_timeout == 120.0
    for bad in (("--http-header-limit", "100"), ("--http-body-timeout", "0")):
        with pytest.raises(SystemExit):
            parsed(*bad)


@pytest.mark.slow
def test_radhub_serve_holds_to_the_limits_it_is_given(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data",
        None,
        *("--validation-workers", "0", "--audit-in-process"),
        *("--http-header-limit", "8192", "--http-header-timeout", "0.5"),
        *("--http-body-timeout", "0.5"),
    )
    server.start()
    try:
        rss_before = _rss(server)
        asyncio.run(_hostile_clients(server.port))
        # ten endless headers did not stay in the server (the audit saw +640 MB)
        assert _rss(server) - rss_before < 64 * 1024 * 1024
    finally:
        server.kill()


async def _hostile_clients(port: int) -> None:
    async with _Client.connect(port) as client:
        await client.send(_get("/fhir/metadata"))
        assert (await client.response())[0] == 200
    async with _Client.connect(port) as client:
        await client.send(b"POST /fhir/Patient HTTP/1.1\r\nHost: t\r\n")  # and nothing more
        assert (await client.response())[0] == 408
    async with _Client.connect(port) as client:
        # answered at once (no token), the body it did not read stalls: closed, not held
        await client.send(_post(1000, path="/fhir/Patient") + b"{")  # and nothing more
        assert (await client.response())[0] == 401
        assert await client.closed() == b""
    await asyncio.gather(*(_endless_header(port) for _ in range(10)))


async def _endless_header(port: int) -> None:
    async with _Client.connect(port) as client:
        async with _meanwhile(_send_for_ever(client, b"GET /fhir/metadata HTTP/1.1\r\nX: ")):
            assert (await client.response())[0] == 431
            await client.closed()


def _rss(server: ServerProcess) -> int:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) * 1024


# the refusals' CORS fields


ORIGIN = b"Origin: https://viewer.example"


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [
        ((), b"access-control-allow-origin: *"),
        (("https://viewer.example",), b"access-control-allow-origin: https://viewer.example"),
        (("https://other.example",), None),
    ],
    ids=["any-origin", "listed-origin", "unlisted-origin"],
)
@pytest.mark.parametrize("refusal", ["stalled-head", "stalled-body", "head-too-large"])
async def test_a_refusal_carries_the_cors_field_a_browser_needs_to_read_it(
    allowed: tuple[str, ...], expected: bytes | None, refusal: str
) -> None:
    limits = HttpLimits(LIMITS.header_bytes, 0.3, 0.3, cors_origins=allowed)
    request = {
        # a field is parsed once the next begins (a line may continue a value)
        "stalled-head": b"GET / HTTP/1.1\r\nHost: t\r\n" + ORIGIN + b"\r\nAccept: *",
        "stalled-body": _post(100, ORIGIN) + b"x",
        "head-too-large": _get("/", ORIGIN, b"X-Pad: " + b"p" * LIMITS.header_bytes),
    }[refusal]
    async with _serving(_App(), bounded_protocol(limits)) as port, _Client.connect(port) as client:
        await client.send(request)
        status, head, _ = await client.response()
    assert status == (431 if refusal == "head-too-large" else 408)
    fields = head.lower().split(b"\r\n")
    if expected is None:
        assert not any(f.startswith(b"access-control-allow-origin") for f in fields)
    else:
        assert expected in fields


@pytest.mark.parametrize("origins", [(), ("*",), ("https://a.example", "*")])
def test_a_wildcard_origin_is_any_origin_as_the_app_reads_it(origins: tuple[str, ...]) -> None:
    """``--cors-origin '*'``: the app answers any origin, so the listener's refusals do."""
    app_side = CORSMiddleware(app=None, **cors_options(Settings(cors_origins=origins)))  # type: ignore[arg-type]
    assert app_side.allow_all_origins
    for origin in (b"https://viewer.example", None):
        assert cors_fields(origin, origins) == [(b"access-control-allow-origin", b"*")]
