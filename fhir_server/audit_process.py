"""The audit trail written by a process of its own beside the server.

Every request leaves an audit record. Turning it into an indexed, hash-chained
AuditEvent and binding its rows into SQLite costs about as much Python time as
the audited read itself, and in the server's process that time holds the one
interpreter lock the event loop needs (measured: the read rate fell by 40 %
with the trail in process; ``docs/performance.md``). Here the server only
queues the records and hands them, a batch at a time, to a child process that
owns the chain (``audit.AuditWriter``) and its own connection to the store.

What is recorded is not lost on the way:

- the server keeps every record it sent until the child says it is written
  (durably: the child's ``write_many`` returns after the fsync); a child that
  dies is started again and sent them again (a batch written but not yet
  acknowledged when it died is then written twice: two events for one access,
  the chain still intact);
- if the server dies, the child writes what it has received and stops when
  the pipe closes; what was still queued in the server is lost, as it is with
  the in-process log (at most one flush interval of records);
- ``room()`` holds requests back while more than ``max_queued`` records are
  not acknowledged, as ``AuditLog.room()`` does.

The child is spawned (a fresh interpreter: the server's threads and event loop
are not forked) and exits when its pipe closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import pickle
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from typing_extensions import Unpack

from fhir_server import heap
from fhir_server.access.context import AuthContext
from fhir_server.access.scopes import ScopeSet
from fhir_server.audit import AuditRecord, AuditWriter, QueuedTrail, TrailOptions
from fhir_server.audit_lock import ChainLock
from fhir_server.settings import Settings

log = logging.getLogger(__name__)

_ACK = 8  # bytes of a count of records written
RESTART_DELAY = 1.0  # seconds before a child that died is started again (doubling)
MAX_RESTART_DELAY = 30.0
READY = b"ready"
RETRY_DELAY = 1.0  # seconds before the child retries a batch that failed to write
MAX_CALLERS = 10_000  # callers the child remembers (forgotten wholesale beyond)


Wire = tuple[Any, ...]
Caller = tuple[str, str | None, str | None, str | None]  # subject, client, patient, fhirUser
_NO_SCOPES = ScopeSet()


def to_wire(record: AuditRecord) -> Wire:
    """A record as sent to the child: a tuple pickles in a quarter of the time a
    dataclass does, and the moment as a timestamp in a fifth of a datetime's.
    Of the caller only what an AuditEvent names travels (not the grant, whose
    parsed scopes are the server's business). Every field after ``auth`` travels
    as it is, so a field added to the record cannot be left behind."""
    auth = record.auth
    caller = None if auth is None else (auth.subject, auth.client_id, auth.patient, auth.fhir_user)
    return (record.interaction, record.status, record.moment.timestamp(), caller, *record[4:])


def from_wire(wire: Wire, callers: dict[Caller, AuthContext]) -> AuditRecord:
    """``to_wire`` undone, as far as the AuditEvent goes. A float timestamp of this
    era holds the microseconds exactly enough that ``fromtimestamp`` (which
    rounds to the nearest one) gives the same moment back. ``callers`` hands out
    one context per caller, so the event templates (kept by context) are reused."""
    interaction, status, stamp, caller, *rest = wire
    auth = None
    if caller is not None:
        auth = callers.get(caller)
        if auth is None:
            subject, client_id, patient, fhir_user = caller
            auth = AuthContext(subject, client_id, _NO_SCOPES, patient, fhir_user=fhir_user)
            callers[caller] = auth
    moment = datetime.fromtimestamp(stamp, UTC)
    return AuditRecord(interaction, status, moment, auth, *rest)


class AuditProcess(QueuedTrail):
    """The server's side: queue, send, keep until acknowledged."""

    def __init__(
        self,
        settings: Settings,
        *,
        start_timeout: float = 60.0,
        **options: Unpack[TrailOptions],
    ) -> None:
        super().__init__(**options)
        self._settings = settings
        self._start_timeout = start_timeout
        self._sent: list[AuditRecord] = []  # in order, until acknowledged
        self._child: BaseProcess | None = None
        self._down: Connection | None = None  # batches to the child
        self._up: Connection | None = None  # acknowledgements from it
        # one thread each way: batches reach the child in order, and a full pipe
        # blocks a thread, not the loop
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="audit-send")
        self._receiver = ThreadPoolExecutor(1, thread_name_prefix="audit-receive")

    @property
    def pid(self) -> int | None:
        """The child's process id (tests kill it)."""
        return None if self._child is None else self._child.pid

    def unwritten(self) -> int:
        """Records accepted and not yet confirmed written by the child."""
        return len(self._queue) + len(self._sent)

    async def _run(self) -> None:
        delay = RESTART_DELAY
        while True:
            try:
                await self._spawn()
                delay = RESTART_DELAY
                await self._serve()
            except Exception:
                log.exception("the audit process failed")
            if self._stopping:
                return
            log.error(
                "the audit process stopped; starting it again in %.0f s and resending %d records",
                delay,
                len(self._sent),
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    async def _spawn(self) -> None:
        self._reap()
        context = multiprocessing.get_context("spawn")
        # two one-way pipes: closing one end is a clean end of file at the other
        inbox, down = context.Pipe(duplex=False)
        up, outbox = context.Pipe(duplex=False)
        child = context.Process(
            target=child_main,
            args=(self._settings, inbox, outbox),
            name="radhub-audit",
            daemon=True,
        )
        child.start()
        inbox.close()
        outbox.close()
        self._child, self._down, self._up = child, down, up
        # records sent to a child that died go first, in their order
        self._queue[:0], self._sent = self._sent, []
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._start_timeout):
            ready = await loop.run_in_executor(self._receiver, up.recv_bytes)
        if ready != READY:
            raise RuntimeError(f"the audit process did not start: {ready[:200]!r}")

    async def _serve(self) -> None:
        """Send batches and take acknowledgements until the child goes away, or
        the trail is closing and everything was acknowledged."""
        down, up = self._down, self._up
        assert down is not None and up is not None
        gone = asyncio.ensure_future(self._take_acknowledgements(up))
        try:
            while not gone.done():
                if self._stopping and not self._queue and not self._sent:
                    return
                if self._queue:
                    await self._send(down)
                await self._next_turn(gone)
        finally:
            gone.cancel()

    async def _take_acknowledgements(self, up: Connection) -> None:
        """Returns when the child is gone. Blocking reads in a thread of their own:
        the loop's reader callbacks would make the pipe non-blocking (uvloop does),
        and a non-blocking pipe can take half a message."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                ack = await loop.run_in_executor(self._receiver, up.recv_bytes)
            except (EOFError, OSError):
                return
            self._acknowledged(int.from_bytes(ack, "big"))

    async def _next_turn(self, gone: asyncio.Future[None]) -> None:
        """Until the flush interval passes, a batch fills, the trail is closing,
        an acknowledgement arrives while closing, or the child goes away."""
        woken = asyncio.ensure_future(self._wakeup.wait())
        either: set[asyncio.Future[Any]] = {woken, gone}
        try:
            await asyncio.wait(either, timeout=self._interval, return_when="FIRST_COMPLETED")
        finally:
            woken.cancel()
        self._wakeup.clear()

    async def _send(self, down: Connection) -> None:
        batch = self._queue[: self._max_batch]
        del self._queue[: len(batch)]
        self._sent.extend(batch)
        payload = pickle.dumps([to_wire(r) for r in batch], protocol=pickle.HIGHEST_PROTOCOL)
        try:
            await asyncio.get_running_loop().run_in_executor(self._sender, down.send_bytes, payload)
        except OSError:
            pass  # the child is gone: the reader sees it; the batch stays in _sent

    def _acknowledged(self, count: int) -> None:
        del self._sent[:count]
        self._pressure.written()
        if self._stopping:
            self._wakeup.set()

    def _reap(self) -> None:
        """Let go of the last child. One still alive (it never said it was ready, or
        did not stop when asked) is killed: what it was sent is sent again, and
        its end of the pipe must close for the receiving thread to come free."""
        child = self._child
        if child is not None and child.is_alive():
            log.error("the audit process %s does not answer; killing it", child.pid)
            child.kill()
            child.join(timeout=5)
        for end in (self._down, self._up):
            if end is not None:
                end.close()
        self._down = self._up = None
        if child is not None:
            child.join(timeout=0)
            self._child = None

    async def close(self) -> None:
        """Send what is queued, wait until the child wrote it, then stop the child."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        down, child = self._down, self._child
        if down is not None and child is not None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(OSError):
                await loop.run_in_executor(self._sender, down.send_bytes, b"")  # "stop"
            await loop.run_in_executor(self._sender, child.join, 30.0)
        self._reap()
        self._sender.shutdown(wait=True)
        self._receiver.shutdown(wait=True)
        if self._queue or self._sent:
            log.error("%d audit records were not written", len(self._queue) + len(self._sent))


def child_main(settings: Settings, inbox: Connection, outbox: Connection) -> None:
    """The audit process: write what the server sends, acknowledge, repeat."""
    # The server decides when this process stops: it closes the pipe once all is
    # sent. A stop signal sent to the whole group (Ctrl-C, systemd's default
    # KillMode) would otherwise end the child first, mid-batch, and the server
    # would start another while shutting down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s radhub-audit: %(message)s")
    asyncio.run(_write_trail(settings, inbox, outbox))


async def _write_trail(settings: Settings, inbox: Connection, outbox: Connection) -> None:
    # imported here: the server's process imports this module without them
    from fhir_server.interactions.services import new_uuid
    from fhir_server.search.registry import SearchRegistry
    from fhir_server.storage.factory import build_store

    loop = asyncio.get_running_loop()
    # A server killed with SIGKILL leaves its child writing its last batch; the
    # lock keeps the next server's child from reading the chain's head before
    # that commit (as it keeps admin commands writing to the chain from forking it)
    store = build_store(settings, SearchRegistry.load())
    await store.start()
    writer = AuditWriter(store, new_uuid, ChainLock(settings.data_dir))
    callers: dict[Caller, AuthContext] = {}
    heap.settle()  # each event allocates dozens of containers (see heap)
    try:
        outbox.send_bytes(READY)
        while True:
            try:
                payload = await loop.run_in_executor(None, inbox.recv_bytes)
            except (EOFError, OSError):
                return  # the server is gone: everything received was written
            if not payload:
                return  # closed by the server
            if len(callers) > MAX_CALLERS:
                callers.clear()
            batch = [from_wire(w, callers) for w in pickle.loads(payload)]
            while True:
                try:
                    await writer.write(batch)
                    break
                except Exception:
                    log.exception("writing the audit trail failed; retrying")
                    await asyncio.sleep(RETRY_DELAY)
            with contextlib.suppress(OSError):
                outbox.send_bytes(len(batch).to_bytes(_ACK, "big"))
    finally:
        await store.close()
        writer.close()
