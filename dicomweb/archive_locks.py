"""Who may change an instance's blob and index row at the same time.

Ingest renames a staged file under its key and then writes the index row;
DELETE reads a scope's rows, deletes them and then removes their blobs. Blob
keys come from the content, so an identical re-send lands on the very file a
concurrent DELETE is about to remove: without exclusion, the re-send could be
acknowledged with its row written after the DELETE and its file gone. So:

- a DELETE holds its study *exclusively*, from reading the rows it will delete
  until their blobs are gone (so no ingest commits into that study in between,
  and every blob it removes is one it read and listed in its intent);
- an ingest batch holds each of its studies *shared* (batches into one study go
  on together) and each of its SOP Instance UIDs exclusively (two batches
  carrying one instance take turns: a failed batch's clean-up cannot remove the
  file the other placed but has not indexed yet).

A waiting DELETE goes before ingests that arrive after it, so a busy study cannot
hold it off for ever. Keys are taken in one global order (instances, then
studies, each sorted), so two holders never wait for each other.

Given ``shared`` (servers sharing one MongoDB and one blob store), each *study*
key is also held across processes, by an ``flock`` (``shared_locks``), once this
process has let its holder in; study keys are then the UIDs' stripes, in process
and across, so the global order is one order for both. Instance keys stay within
the process: held across it, by stripe, two servers' batches of different studies
would take turns on the stripes their instances share (most pairs of large
batches share one), and a batch would hold an open file per instance. So two
servers sent one instance at once both place the very same file; should one of the
batches fail its index write, its clean-up (and a crashed server's, at its next
start) holds the study exclusively, as a DELETE does, and so waits until the other
batch has indexed the file, which then stays (``blob_journal.reconcile_instances``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from dicomweb.shared_locks import FileLocks, stripe

_INSTANCE = "i"
_STUDY = "s"  # after _INSTANCE: the global order of ``_Key``

_Key = tuple[str, str]
_Waiter = tuple[bool, "asyncio.Future[None]"]  # (exclusive, granted when set)


@dataclass
class _Gate:
    """One key's holders, and its waiters in arrival order; ``users`` counts both."""

    readers: int = 0
    writer: bool = False
    waiting: deque[_Waiter] = field(default_factory=deque)
    users: int = 0


class ArchiveLocks:
    """The study and instance locks of one archive (see the module docstring)."""

    def __init__(self, shared: FileLocks | None = None) -> None:
        self._gates: dict[_Key, _Gate] = {}
        self._shared = shared

    @contextlib.asynccontextmanager
    async def storing(self, studies: Iterable[str], sops: Iterable[str]) -> AsyncIterator[None]:
        """Held while a batch renames its files under their keys and indexes them."""
        wanted = {self._key(_INSTANCE, uid): True for uid in sops}
        wanted |= {self._key(_STUDY, uid): False for uid in studies}
        async with contextlib.AsyncExitStack() as held:
            for key in sorted(wanted):
                await held.enter_async_context(self._hold(key, wanted[key]))
            yield

    @contextlib.asynccontextmanager
    async def removing(self, study: str) -> AsyncIterator[None]:
        """Held while a DELETE in ``study`` reads, deletes and removes its instances."""
        async with self._hold(self._key(_STUDY, study), True):
            yield

    def _key(self, kind: str, uid: str) -> _Key:
        return (kind, stripe(uid) if self._shared is not None and kind == _STUDY else uid)

    def busy(self) -> int:
        """How many keys are held or waited for (0 when idle: nothing is kept)."""
        return len(self._gates)

    @contextlib.asynccontextmanager
    async def _hold(self, key: _Key, exclusive: bool) -> AsyncIterator[None]:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate()
        gate.users += 1
        try:
            await _acquire(gate, exclusive)
            try:
                if self._shared is None or key[0] != _STUDY:
                    yield
                else:
                    async with self._shared.hold("-".join(key), exclusive):
                        yield
            finally:
                _release(gate, exclusive)
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[key]


def _compatible(gate: _Gate, exclusive: bool) -> bool:
    return not gate.writer and (not exclusive or gate.readers == 0)


def _take(gate: _Gate, exclusive: bool) -> None:
    if exclusive:
        gate.writer = True
    else:
        gate.readers += 1


async def _acquire(gate: _Gate, exclusive: bool) -> None:
    # first come, first served: a reader arriving after a waiting writer waits too
    if not gate.waiting and _compatible(gate, exclusive):
        _take(gate, exclusive)
        return
    waiter: _Waiter = (exclusive, asyncio.get_running_loop().create_future())
    gate.waiting.append(waiter)
    try:
        await waiter[1]
    except asyncio.CancelledError:
        if waiter[1].done() and not waiter[1].cancelled():
            _release(gate, exclusive)  # granted just as it was cancelled
        else:
            if waiter in gate.waiting:  # (``_grant`` drops a cancelled one it meets)
                gate.waiting.remove(waiter)
            _grant(gate)  # it may have held back those behind it
        raise


def _release(gate: _Gate, exclusive: bool) -> None:
    # no await: a release cannot be cancelled halfway
    if exclusive:
        gate.writer = False
    else:
        gate.readers -= 1
    _grant(gate)


def _grant(gate: _Gate) -> None:
    while gate.waiting:
        exclusive, granted = gate.waiting[0]
        if granted.cancelled():  # its task has not yet seen the cancellation
            gate.waiting.popleft()
            continue
        if not _compatible(gate, exclusive):
            return
        gate.waiting.popleft()
        _take(gate, exclusive)
        granted.set_result(None)
