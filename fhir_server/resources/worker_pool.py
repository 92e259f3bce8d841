"""The server's worker processes: CPU-bound work on another core while the event
loop goes on. Their first use, and the reason for them, is validating and
indexing many resources; DICOM ingest hands them its header parsing (``run``).

Validation with the R4B models and search-index extraction are pure Python and
together cost more than all the rest of writing a resource; under the GIL no
thread can overlap them. For large Bundles both run in worker processes
instead, in chunks, while the transaction writes the chunks already prepared;
the transaction commits only once every resource has passed. Small batches are
prepared inline: sending them to another process would cost more than it saves.
The index of a resource does not depend on the server's id and meta stamps
(``_id`` and ``_lastUpdated`` come from columns), so it can be extracted before
the resource is stamped.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import os
import signal
import sys
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from fhir_server import heap
from fhir_server.errors import (
    FhirError,
    InvalidResource,
    Issue,
    UnknownResourceType,
    UnprocessableEntity,
)
from fhir_server.resources.validate import validate_resource
from fhir_server.resources.worker_processes import WorkerProcesses
from fhir_server.search.extract import extract_packed
from fhir_server.search.packed import PackedIndex
from fhir_server.search.registry import SearchRegistry

T = TypeVar("T")

INLINE_BELOW = 32
CHUNK = 64  # resources per worker call
FIRST_CHUNK = 8  # the first comes back soon; each next doubles up to CHUNK
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_ERRORS: dict[str, type[FhirError]] = {
    "InvalidResource": InvalidResource,
    "UnknownResourceType": UnknownResourceType,
    "UnprocessableEntity": UnprocessableEntity,  # a Subscription asking for notifications
}

Failure = tuple[str, str, tuple[tuple[str, str, str, tuple[str, ...]], ...]]


def _check(resource: Any) -> Failure | None:
    try:
        validate_resource(resource)
    except (InvalidResource, UnknownResourceType, UnprocessableEntity) as exc:
        issues = tuple((i.severity, i.code, i.diagnostics, i.expression) for i in exc.issues)
        return type(exc).__name__, exc.diagnostics, issues
    return None


Prepared = tuple[Failure | None, PackedIndex | None]


def _prepare(resource: Any, registry: SearchRegistry) -> Prepared:
    """Validate and index a resource; the index packed, for the trip back to the
    server (``search.packed``: unpickling entry objects cost it more than the rest)."""
    failure = _check(resource)
    if failure is not None:
        return failure, None
    return None, extract_packed(resource, registry)


def _prepare_all(resources: Sequence[Any], base_url: str | None) -> list[Prepared]:
    registry = _worker_registry(base_url)
    return [_prepare(resource, registry) for resource in resources]


@cache
def _worker_registry(base_url: str | None) -> SearchRegistry:
    """The search definitions, loaded once per worker process."""
    registry = SearchRegistry.load()
    return registry.with_base_url(base_url) if base_url else registry


def _warm(preload: tuple[str, ...] = ()) -> None:
    """Die with the server, import the models (and the ``preload`` modules) before
    the first batch arrives, and settle the heap (``fhir_server.heap``) with them in
    it. Ctrl-C reaches the whole process group: the server, not the worker, decides
    when it stops (else every worker printed a KeyboardInterrupt traceback on the
    way out)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    validate_resource({"resourceType": "Patient"})
    for name in preload:
        importlib.import_module(name)
    heap.settle()


def _die_with_parent() -> None:
    """Linux: have the kernel end this worker when the server process dies, even
    by SIGKILL; otherwise an orphaned worker would linger holding the server's pipes."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the server died before the line above ran
        os._exit(1)


def _error(failure: Failure) -> FhirError:
    kind, diagnostics, issues = failure
    return _ERRORS[kind](diagnostics, issues=tuple(Issue(*i) for i in issues))  # type: ignore[arg-type]


PreparedResource = tuple[FhirError | None, PackedIndex | None]
"""A resource's validation error, or its search index."""


def _result(prepared: Prepared) -> PreparedResource:
    failure, index = prepared
    return (None if failure is None else _error(failure)), index


def _results(future: asyncio.Future[list[Prepared]]) -> asyncio.Future[list[PreparedResource]]:
    async def convert() -> list[PreparedResource]:
        return [_result(p) for p in await future]

    return asyncio.ensure_future(convert())


@dataclass(frozen=True)
class PreparedChunks:
    """Futures of prepared resources, chunk by chunk; ``starts``: each chunk's first
    position in the prepared sequence."""

    starts: list[int]
    chunks: list[asyncio.Future[list[PreparedResource]]]

    async def get(self, position: int) -> PreparedResource:
        """The result for the resource at ``position`` of the prepared sequence."""
        n = bisect_right(self.starts, position) - 1
        chunk = await self.chunks[n]
        return chunk[position - self.starts[n]]

    def cancel(self) -> None:
        for chunk in self.chunks:
            chunk.cancel()


def chunk_starts(total: int) -> list[int]:
    """Where each chunk of ``total`` resources starts: small at first, so the caller
    can begin writing soon (it waits for the first chunk idle), then ``CHUNK``."""
    starts, size, at = [], FIRST_CHUNK, 0
    while at < total:
        starts.append(at)
        at += size
        size = min(2 * size, CHUNK)
    return starts


class WorkerPool:
    """Validates batches of resources in ``workers`` processes (0: inline); the
    same processes run other CPU-bound work handed to ``run`` (the DICOM ingest's
    header parsing), so a two-core server keeps two workers, not four."""

    def __init__(self, workers: int, preload: Sequence[str] = ()) -> None:
        """``preload``: modules each worker imports as it starts, for work handed to
        ``run`` (DICOM parsing's imports took ~1.7 s, which the first STOW waited for)."""
        self._workers = workers
        self._preload = tuple(preload)
        self._pool: WorkerProcesses | None = None

    @property
    def size(self) -> int:
        """Worker processes (0: everything runs in the caller's process)."""
        return self._workers

    def pids(self) -> list[int]:
        """The worker processes' ids (none before they are first needed)."""
        return [] if self._pool is None else self._pool.pids

    def _processes(self) -> WorkerProcesses:
        if self._pool is None:
            self._pool = WorkerProcesses(self._workers, _warm, (self._preload,))
        return self._pool

    def prepare(self, resources: Sequence[Any], registry: SearchRegistry) -> PreparedChunks:
        """Validate and index ``resources``, in chunks (inline when few)."""
        loop = asyncio.get_running_loop()
        if self._workers == 0 or len(resources) < INLINE_BELOW:
            done = loop.create_future()
            done.set_result([_result(_prepare(r, registry)) for r in resources])
            return PreparedChunks([0], [done])
        processes = self._processes()
        starts = chunk_starts(len(resources))
        ends = [*starts[1:], len(resources)]
        chunks = [list(resources[a:b]) for a, b in zip(starts, ends, strict=True)]
        base = registry.base_url
        futures = [asyncio.ensure_future(processes.run(_prepare_all, c, base)) for c in chunks]
        return PreparedChunks(starts, [_results(f) for f in futures])

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process (``fn`` and its arguments picklable);
        in a thread of this process when there are no workers."""
        if self._workers == 0:
            return await asyncio.to_thread(fn, *args)
        result: T = await self._processes().run(fn, *args)
        return result

    def warm(self, registry: SearchRegistry) -> None:
        """Start the worker processes now, not at the first large Bundle: each
        imports the models and loads the search definitions first (over a
        second), which that Bundle would wait for. Call from the event loop."""
        if self._workers:
            self._processes().run_on_each(_worker_registry, registry.base_url)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
