"""The count of retrievals in flight (dicomweb.retrievals_in_flight): released however
a retrieval ends, and what a DELETE's wait on it does."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.responses import Response, StreamingResponse

from dicomweb.blob_errors import BlobNotFound
from dicomweb.retrievals_in_flight import HeldBody, RetrievalsInFlight, retrieval
from fhir_server.errors import NotFound, ResponseBrokenOff

STUDY = "1.2.3"


class Body:
    """A streamed body that notes whether it was finished off (its ``finally`` ran)."""

    def __init__(self, *chunks: bytes, fail: Exception | None = None) -> None:
        self.chunks, self.fail, self.finished = chunks, fail, False

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            for chunk in self.chunks:
                yield chunk
            if self.fail is not None:
                raise self.fail
        finally:
            self.finished = True


def test_each_study_counts_its_holds_and_a_hold_is_released_once() -> None:
    flights = RetrievalsInFlight()
    first, second, other = flights.hold(STUDY), flights.hold(STUDY), flights.hold("9.9")
    assert (flights.in_flight(STUDY), flights.in_flight("9.9")) == (2, 1)
    first.release()
    first.release()
    assert flights.in_flight(STUDY) == 1
    second.release()
    other.release()
    assert (flights.in_flight(STUDY), flights.in_flight("9.9")) == (0, 0)


async def test_settled_answers_at_once_when_no_retrieval_is_in_flight() -> None:
    flights = RetrievalsInFlight()
    flights.hold("9.9")  # another study's
    assert await asyncio.wait_for(flights.settled(STUDY, 60.0), 0.5)


async def test_settled_waits_for_the_last_retrieval() -> None:
    flights = RetrievalsInFlight()
    first, second = flights.hold(STUDY), flights.hold(STUDY)
    waiting = asyncio.create_task(flights.settled(STUDY, 60.0))
    first.release()
    await asyncio.sleep(0.05)
    assert not waiting.done()
    second.release()
    assert await asyncio.wait_for(waiting, 0.5)


async def test_settled_gives_up_after_the_grace() -> None:
    flights = RetrievalsInFlight()
    held = flights.hold(STUDY)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await flights.settled(STUDY, 0.1)
    assert loop.time() - started >= 0.1
    held.release()  # and a later wait is over at once
    assert await asyncio.wait_for(flights.settled(STUDY, 60.0), 0.5)


async def test_a_body_read_to_its_end_releases() -> None:
    flights, inner = RetrievalsInFlight(), Body(b"a", b"b")
    body = HeldBody(inner.stream(), flights.hold(STUDY))
    assert [chunk async for chunk in body] == [b"a", b"b"]
    assert flights.in_flight(STUDY) == 0 and inner.finished


@pytest.mark.parametrize("read", [0, 1], ids=["never-iterated", "after-a-chunk"])
async def test_a_body_closed_early_releases_and_closes_what_it_wraps(read: int) -> None:
    flights, inner = RetrievalsInFlight(), Body(b"a", b"b")
    body = HeldBody(inner.stream(), flights.hold(STUDY))
    for _ in range(read):
        await anext(body)
    assert flights.in_flight(STUDY) == 1
    await body.aclose()
    assert flights.in_flight(STUDY) == 0
    assert inner.finished == (read > 0)  # a generator never started has nothing to finish


async def test_a_body_that_fails_releases_and_raises() -> None:
    flights = RetrievalsInFlight()
    body = HeldBody(Body(b"a", fail=OSError("disk")).stream(), flights.hold(STUDY))
    with pytest.raises(OSError, match="disk"):
        [chunk async for chunk in body]
    assert flights.in_flight(STUDY) == 0


async def test_a_file_deleted_under_a_body_breaks_it_off_naming_the_study() -> None:
    flights = RetrievalsInFlight()
    body = HeldBody(Body(b"a", fail=BlobNotFound("k")).stream(), flights.hold(STUDY))
    with pytest.raises(ResponseBrokenOff, match=f"study {STUDY}"):
        [chunk async for chunk in body]
    assert flights.in_flight(STUDY) == 0


async def test_a_body_dropped_unread_releases() -> None:
    flights = RetrievalsInFlight()
    body = HeldBody(Body(b"a").stream(), flights.hold(STUDY))
    del body
    gc.collect()
    assert flights.in_flight(STUDY) == 0


def _streamed(inner: Body) -> Any:
    async def make() -> Response:
        return StreamingResponse(inner.stream(), media_type="application/octet-stream")

    return make


async def _send_nothing(message: Any) -> None:
    raise OSError("the client is gone")


async def _disconnected() -> dict[str, Any]:
    return {"type": "http.disconnect"}


SCOPE = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "GET", "headers": []}


async def test_a_streamed_response_is_held_until_sent() -> None:
    flights, inner, sent = RetrievalsInFlight(), Body(b"a", b"b"), []

    async def send(message: Any) -> None:
        sent.append(message)

    async def waiting() -> dict[str, Any]:
        await asyncio.sleep(60)
        return {"type": "http.disconnect"}

    response = await retrieval(flights, STUDY, _streamed(inner))
    assert flights.in_flight(STUDY) == 1
    await response(SCOPE, waiting, send)
    assert flights.in_flight(STUDY) == 0
    assert b"".join(m.get("body", b"") for m in sent) == b"ab"


@pytest.mark.parametrize("gone", ["at-start", "disconnected"])
async def test_a_response_whose_body_never_starts_releases(gone: str) -> None:
    flights = RetrievalsInFlight()
    response = await retrieval(flights, STUDY, _streamed(Body(b"a")))
    if gone == "at-start":  # the start cannot be sent
        with pytest.raises(OSError):
            await response(SCOPE, _disconnected, _send_nothing)
    else:  # the client goes away as the response starts: the body is cancelled unread

        async def send(message: Any) -> None:
            await asyncio.sleep(0.05)

        await response(SCOPE, _disconnected, send)
    assert flights.in_flight(STUDY) == 0


async def test_a_response_made_whole_or_failing_is_released_at_once() -> None:
    flights = RetrievalsInFlight()

    async def whole() -> Response:
        assert flights.in_flight(STUDY) == 1  # held while the index and files are read
        return Response(b"jpeg")

    async def missing() -> Response:
        raise BlobNotFound("k")

    assert (await retrieval(flights, STUDY, whole)).body == b"jpeg"
    assert flights.in_flight(STUDY) == 0
    with pytest.raises(NotFound):  # read before the response started: as if deleted first
        await retrieval(flights, STUDY, missing)
    assert flights.in_flight(STUDY) == 0
