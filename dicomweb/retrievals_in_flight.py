"""Retrievals in flight, per study, so that a DELETE leaves their files for a while.

A WADO retrieval reads its study's index rows, sends its status and headers,
and only then opens each file as its turn in the body comes. A DELETE of the
same study removes the rows and then the files; a file removed before the
retrieval reached it would cut the body off half-way. So each retrieval is
counted from before it reads the rows until its body has been sent, or
abandoned (the client went away, an error, a HEAD that sends no body, a
response never sent), and a DELETE, its rows deleted and before it removes
any file, waits until its study has no retrieval in flight, at most a grace
period (``DicomwebServices.delete_grace``). A retrieval starting after the
rows are gone finds none (404), so the wait ends.

One that outlasts the grace and then meets a removed file is broken off: its
client sees a cut-off body, the log one warning naming the study
(``ResponseBrokenOff``). A file missing before the response starts (a frame,
a rendered image, a transcoding) is a 404, as if the DELETE had come first.

Counting costs one dict update when a retrieval starts and one when it ends,
not one per file: whole-study retrieval is the archive's hottest path.

Given ``shared`` (servers sharing one blob store), a study with retrievals in
flight here also holds a shared ``flock`` on its stripe's retrieval lock
(``shared_locks``), taken when its first retrieval starts and let go when its
last ends, and a DELETE also waits, within the same grace, until no process
holds its study's (so retrievals of other studies on that stripe may hold it
back too, never beyond the grace). A retrieval that starts while a DELETE
takes that lock for its moment goes on without it (it finds its rows gone,
unless another study of the stripe's was deleted): the next retrieval of the
study takes it, if that one is not waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from dicomweb.blob_errors import BlobNotFound
from dicomweb.shared_locks import FileLocks, stripe
from fhir_server.errors import NotFound, ResponseBrokenOff

DELETE_GRACE = 30.0  # seconds a DELETE leaves a study's files to retrievals in flight
Chunk = str | bytes | memoryview


class RetrievalsInFlight:
    """How many retrievals of each study are in flight; what a DELETE waits on."""

    def __init__(self, shared: FileLocks | None = None) -> None:
        self._counts: dict[str, int] = {}
        self._idle: dict[str, asyncio.Event] = {}  # only for studies a DELETE waits on
        self._shared = shared
        self._locked: dict[str, int] = {}  # study -> the open file holding its shared lock

    def in_flight(self, study: str) -> int:
        return self._counts.get(study, 0)

    def busy(self) -> int:
        """How many studies have retrievals in flight (0 when idle: nothing is kept)."""
        return len(self._counts)

    def hold(self, study: str) -> Retrieval:
        """Count one retrieval of ``study`` until the handle is released."""
        if self._shared is not None and study not in self._locked:
            # (tried again by each later retrieval while it has none: a DELETE
            # elsewhere held it for a moment when the first one started)
            fd = self._shared.try_shared(_lock_name(study))
            if fd is not None:
                self._locked[study] = fd
        self._counts[study] = self._counts.get(study, 0) + 1
        return Retrieval(self, study)

    def _release(self, study: str) -> None:
        left = self._counts[study] - 1
        if left:
            self._counts[study] = left
            return
        del self._counts[study]
        fd = self._locked.pop(study, None)
        if fd is not None:
            os.close(fd)  # which lets go of its shared lock
        idle = self._idle.pop(study, None)
        if idle is not None:
            idle.set()

    async def settled(self, study: str, grace: float) -> bool:
        """Wait until no retrieval of ``study`` is in flight (in any process, when
        ``shared``): True then, at once if there is none; False if ``grace``
        seconds pass first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if study in self._counts:
            idle = self._idle.setdefault(study, asyncio.Event())
            try:
                await asyncio.wait_for(idle.wait(), grace)
            except TimeoutError:
                return False
        if self._shared is None:
            return True
        return await self._shared.free(_lock_name(study), max(0.0, deadline - loop.time()))


def _lock_name(study: str) -> str:
    return f"r-{stripe(study)}"


class Retrieval:
    """One retrieval counted in flight; ``release`` may be called any number of times."""

    __slots__ = ("_registry", "_released", "study")

    def __init__(self, registry: RetrievalsInFlight, study: str) -> None:
        self._registry, self.study, self._released = registry, study, False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._registry._release(self.study)


async def retrieval(
    registry: RetrievalsInFlight, study: str, make: Callable[[], Awaitable[Response]]
) -> Response:
    """``make()``'s response, counted in flight from before it reads the index until
    its body is sent or abandoned; a file gone before the response starts is a 404."""
    held = registry.hold(study)
    try:
        with missing_is_not_found():
            response = await make()
    except BaseException:
        held.release()
        raise
    if not isinstance(response, StreamingResponse):
        held.release()  # made whole before the response starts: nothing to keep
        return response
    return HeldResponse(response, held)


@contextlib.contextmanager
def missing_is_not_found() -> Iterator[None]:
    """A blob gone between reading its row and reading it: the DELETE came first (404)."""
    try:
        yield
    except (BlobNotFound, FileNotFoundError) as exc:
        raise NotFound("the instance was deleted while it was being read") from exc


class HeldResponse(Response):
    """A streamed response sent as it is, its retrieval released when its body ends, is
    closed unread (``routes._HeadersOnly``), or the response is over or dropped."""

    def __init__(self, response: StreamingResponse, held: Retrieval) -> None:
        self.status_code = response.status_code
        self.raw_headers = response.raw_headers
        self.background = response.background
        self.body_iterator = response.body_iterator = HeldBody(response.body_iterator, held)
        self._response, self._held = response, held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._response(scope, receive, send)
        finally:  # also when the body was never started (a client gone before it)
            self._held.release()


class HeldBody:
    """A body that releases its retrieval when it ends, fails or is closed; a file
    found removed once the response has started breaks the response off."""

    def __init__(self, body: AsyncIterable[Chunk], held: Retrieval) -> None:
        self._body: AsyncIterator[Chunk] = aiter(body)
        self._held = held

    def __aiter__(self) -> HeldBody:
        return self

    async def __anext__(self) -> Chunk:
        try:
            return await anext(self._body)
        except (BlobNotFound, FileNotFoundError) as exc:
            self._held.release()
            text = f"a file of study {self._held.study} was deleted while it was being sent"
            raise ResponseBrokenOff(text) from exc
        except BaseException:  # the end (StopAsyncIteration), an error, a cancellation
            self._held.release()
            raise

    async def aclose(self) -> None:
        self._held.release()
        close = getattr(self._body, "aclose", None)
        if close is not None:
            await close()

    def __del__(self) -> None:
        # last resort, for a response dropped without being sent or closed (its
        # request cancelled between the endpoint and sending): a DELETE would
        # otherwise wait out the whole grace
        self._held.release()
