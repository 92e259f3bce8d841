"""Validating many resources on another core while the event loop goes on.

Validation with the R4B models is pure Python and costs about as much as all
the rest of writing a resource; under the GIL no thread can overlap it. For
large Bundles the resources are validated in a worker process instead, while
the transaction indexes and writes them; the transaction commits only once
every one of them has passed. Small batches are validated inline: sending them
to another process would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from fhir_server.errors import FhirError, InvalidResource, Issue, UnknownResourceType
from fhir_server.resources.validate import validate_resource

INLINE_BELOW = 32
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_ERRORS: dict[str, type[FhirError]] = {
    "InvalidResource": InvalidResource,
    "UnknownResourceType": UnknownResourceType,
}

Failure = tuple[str, str, tuple[tuple[str, str, str, tuple[str, ...]], ...]]


def _check(resource: Any) -> Failure | None:
    try:
        validate_resource(resource)
    except (InvalidResource, UnknownResourceType) as exc:
        issues = tuple((i.severity, i.code, i.diagnostics, i.expression) for i in exc.issues)
        return type(exc).__name__, exc.diagnostics, issues
    return None


def _check_all(resources: Sequence[Any]) -> list[Failure | None]:
    return [_check(resource) for resource in resources]


def _warm() -> None:
    """Die with the server, then import the models before the first batch arrives."""
    _die_with_parent()
    validate_resource({"resourceType": "Patient"})


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


class ValidationPool:
    """Validates batches of resources in ``workers`` processes (0: inline)."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the server process has threads (SQLite, the loop)
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self._workers, context, initializer=_warm)
        return self._pool

    async def validate_all(self, resources: Sequence[Any]) -> list[FhirError | None]:
        """For each resource, None or the error its validation raises."""
        if self._workers == 0 or len(resources) < INLINE_BELOW:
            failures = _check_all(resources)
        else:
            loop = asyncio.get_running_loop()
            failures = await loop.run_in_executor(self._executor(), _check_all, list(resources))
        return [None if f is None else _error(f) for f in failures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
