"""WADO retrievals against a DELETE of their study: a retrieval under way keeps the
study's files for the delete grace, one that outlasts it is broken off with a warning,
(and one found gone before a response starts is a 404: ``test_wado``).

A retrieval opens each file only when its turn in the body comes. The slow client
reads the head and a little of the body over a real socket whose buffers are kept
small, so the server is held back with most of the study's files still unopened,
as a viewer on a slow link holds it.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import app_token
from tests.dicomweb.archive_app import DEADLINE, eventually, fast_settings, running
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart, split_multipart
from tests.dicomweb.test_wado import ANY_TS
from tests.fhir_server.test_broken_off import serving

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.72", "1.2.826.0.1.3680043.8.498.72.1"
STUDY_PATH = f"/dicomweb/studies/{STUDY}"
INSTANCES, FRAMES = 16, 2048  # 16 files of 256 KiB: many times what the buffers hold
BUFFER = 16 * 1024  # the client's receive buffer and the server's send buffer
FIRST = 1000  # bytes of the body the slow client reads before it stalls


async def _stow_study(client: httpx.AsyncClient) -> list[str]:
    """The study, stored; the SHA-256 of each of its files."""
    parts = [
        make_instance(STUDY, SERIES, f"{SERIES}.{n}", number=n, frames=FRAMES)
        for n in range(1, INSTANCES + 1)
    ]
    response = await client.post(
        "/dicomweb/studies", content=multipart(*parts), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text
    return sorted(hashlib.sha256(p).hexdigest() for p in parts)


class SlowClient:
    """A GET of the study on a connection with a small receive buffer, stalled
    after the head and ``FIRST`` bytes of the body until the test reads on."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.content_type, self.length, self.body = "", 0, b""

    @classmethod
    async def get(cls, port: int, token: str) -> SlowClient:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=BUFFER)
        client = cls(reader, writer)
        request = (
            f"GET {STUDY_PATH} HTTP/1.1\r\nHost: radhub.test\r\n"
            f"Authorization: Bearer {token}\r\nAccept: {ANY_TS}\r\n\r\n"
        )
        writer.write(request.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200 "), head
        fields = dict(
            line.decode().lower().split(": ", 1) for line in head.split(b"\r\n")[1:] if line
        )
        client.content_type, client.length = fields["content-type"], int(fields["content-length"])
        client.body = await asyncio.wait_for(reader.readexactly(FIRST), DEADLINE)
        return client

    async def read_on(self) -> bytes:
        """The rest, up to the promised length or until the server closes."""
        rest = await asyncio.wait_for(self.reader.read(self.length - FIRST + 1), DEADLINE)
        while rest and len(self.body) + len(rest) < self.length:
            more = await asyncio.wait_for(self.reader.read(1 << 20), DEADLINE)
            if not more:
                break
            rest += more
        self.body += rest
        return self.body

    def close(self) -> None:
        self.writer.close()


async def _left(app: FastAPI) -> list[str]:
    return list(await app.state.dicomweb.blobs.keys())


async def test_a_retrieval_under_way_keeps_its_files_until_it_ends(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "data", delete_grace=DEADLINE)
    async with running(settings) as (app, client), serving(app, send_buffer=BUFFER) as port:
        stored = await _stow_study(client)
        slow = await SlowClient.get(port, app_token(app))
        try:
            delete = asyncio.create_task(client.delete(STUDY_PATH))

            async def rows_gone() -> bool | None:
                return True if await app.state.dicomweb.index.study(STUDY) is None else None

            await eventually(rows_gone, "the DELETE to remove the study's rows")
            assert not delete.done(), "the DELETE did not wait for the retrieval"
            assert (await client.get(STUDY_PATH)).status_code == 404  # its rows are gone
            body = await slow.read_on()
        finally:
            slow.close()
        assert (await asyncio.wait_for(delete, DEADLINE)).status_code == 204
        assert len(body) == slow.length
        parts = split_multipart(body, slow.content_type)
        assert sorted(hashlib.sha256(p).hexdigest() for p in parts) == stored
        assert await _left(app) == []
        assert app.state.dicomweb.retrievals.in_flight(STUDY) == 0


async def test_a_retrieval_past_the_grace_is_broken_off_with_one_warning(
    tmp_path: Path, logged: pytest.LogCaptureFixture
) -> None:
    grace = 0.3
    settings = fast_settings(tmp_path / "data", delete_grace=grace)
    async with running(settings) as (app, client), serving(app, send_buffer=BUFFER) as port:
        await _stow_study(client)
        slow = await SlowClient.get(port, app_token(app))
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            deleted = await asyncio.wait_for(client.delete(STUDY_PATH), DEADLINE)
            waited = loop.time() - started
            body = await slow.read_on()
        finally:
            slow.close()
        assert deleted.status_code == 204 and await _left(app) == []
        assert waited >= grace, "the DELETE did not wait for the retrieval"
        assert len(body) < slow.length  # cut off: never a body that looks complete
        assert app.state.dicomweb.retrievals.in_flight(STUDY) == 0
    assert [(r.levelname, r.exc_info) for r in logged.records] == [("WARNING", None)]
    assert f"study {STUDY}" in logged.records[0].getMessage()
