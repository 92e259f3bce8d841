"""The audit trail written by a process beside the server (``audit_process``):
every record reaches the store as a chained AuditEvent, through close, a killed
or stalled child, and a server that dies; the read path's memory of current
versions survives its commits."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server.access.context import AuthContext
from fhir_server.access.scopes import ScopeSet
from fhir_server.audit import AuditRecord, to_audit_event
from fhir_server.audit_chain import verify_chain
from fhir_server.audit_process import AuditProcess, from_wire, to_wire
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.sqlite.store import SqliteStore

REGISTRY = SearchRegistry.load()
CALLER = AuthContext(
    subject="u1",
    client_id="viewer",
    scopes=ScopeSet.parse("patient/*.rs"),
    patient="p7",
    fhir_user="Practitioner/d1",
)


def record(n: int, auth: AuthContext | None = CALLER) -> AuditRecord:
    return AuditRecord("read", 200, datetime.now(UTC), auth, "Patient", f"p{n}")


@pytest.mark.parametrize(
    "original",
    [
        record(1),
        record(2, None),
        AuditRecord(
            "search-type",
            403,
            datetime(2026, 12, 1, 23, 59, 59, 999999, tzinfo=UTC),
            CALLER,
            "Patient",
            None,
            "name=smith&_count=10",
            "10.0.0.7",
            "insufficient scope",
        ),
        AuditRecord("login", 401, datetime(2031, 1, 1, tzinfo=UTC), None, description="bad"),
        AuditRecord("read", 200, datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC), CALLER),
        AuditRecord(
            "retrieve", 200, datetime(2026, 12, 3, tzinfo=UTC), None, "ImagingStudy", patient="p9"
        ),
    ],
)
def test_a_record_crosses_the_pipe_as_the_same_audit_event(original: AuditRecord) -> None:
    """What arrives makes exactly the AuditEvent the original would have made
    (the caller's grant stays behind: no event names it)."""
    import pickle

    crossed = from_wire(pickle.loads(pickle.dumps(to_wire(original))), {})
    assert to_audit_event(crossed) == to_audit_event(original)
    assert crossed._replace(auth=None) == original._replace(auth=None)  # every other field


def test_one_context_per_caller_in_the_child() -> None:
    """The event templates are kept by context: records of one caller share one."""
    callers: dict[Any, AuthContext] = {}
    other = AuthContext(subject="u2", client_id="viewer", scopes=ScopeSet.parse("user/*.rs"))
    first, second, third = (
        from_wire(to_wire(r), callers) for r in (record(1), record(2), record(3, other))
    )
    assert first.auth is second.auth and first.auth is not third.auth
    assert third.auth is not None and third.auth.subject == "u2"


def test_moments_keep_their_microseconds() -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for step in range(0, 10**12, 7_777_777_777):  # about 30 years in uneven steps
        moment = start + timedelta(microseconds=step + step % 999_983)
        assert from_wire(to_wire(AuditRecord("read", 200, moment, None)), {}).moment == moment


def settings_for(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, audit_process=True)


@asynccontextmanager
async def trail(tmp_path: Path, **options: Any) -> AsyncIterator[AuditProcess]:
    audit = AuditProcess(settings_for(tmp_path), flush_interval=0.02, **options)
    audit.start()
    try:
        yield audit
    finally:
        await audit.close()


async def written(tmp_path: Path) -> list[dict[str, Any]]:
    store = SqliteStore(tmp_path, REGISTRY)
    await store.start()
    try:
        versions = await store.changes(0, 100_000, "AuditEvent")
        report = await verify_chain(store)
    finally:
        await store.close()
    assert report.ok, report.summary()
    return [orjson.loads(v.body or b"{}") for v in versions]


def entity(event: dict[str, Any]) -> str:
    return str(event["entity"][0]["what"]["reference"])


async def wait_until(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_records_become_chained_audit_events_in_order(tmp_path: Path) -> None:
    async with trail(tmp_path) as audit:
        for n in range(250):
            audit.record(record(n))
            if n % 50 == 0:
                await asyncio.sleep(0.03)  # several batches
    events = await written(tmp_path)
    assert [entity(e) for e in events] == [f"Patient/p{n}" for n in range(250)]
    first = events[0]
    assert first["agent"][0]["who"] == {"reference": "Practitioner/d1"}
    assert first["agent"][1]["who"] == {"identifier": {"value": "viewer"}}
    assert first["entity"][1]["what"] == {"reference": "Patient/p7"}
    assert first["subtype"][0]["code"] == "read" and first["outcome"] == "0"


async def test_close_writes_what_was_just_recorded(tmp_path: Path) -> None:
    async with trail(tmp_path) as audit:
        await wait_until(lambda: audit.pid is not None)
        for n in range(40):
            audit.record(record(n))
    assert len(await written(tmp_path)) == 40


async def test_a_killed_child_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    """Records sent to the child that was killed before it wrote them, and those
    recorded while it was down, are written by the next one; the chain stays
    intact (a batch written but not acknowledged before a kill would be written
    twice)."""
    async with trail(tmp_path) as audit:
        for n in range(50):
            audit.record(record(n))
        await wait_until(lambda: audit.pid is not None and not audit._queue and not audit._sent)
        first = audit.pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)  # receives no more, writes nothing
        for n in range(50, 100):
            audit.record(record(n))
        await wait_until(lambda: not audit._queue)
        assert len(audit._sent) == 50  # sent, not acknowledged
        os.kill(first, signal.SIGKILL)
        for n in range(100, 150):
            audit.record(record(n))
        await wait_until(lambda: audit.pid not in (None, first))
    references = [entity(e) for e in await written(tmp_path)]
    assert references == [f"Patient/p{n}" for n in range(150)]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
async def test_a_stop_signal_to_the_group_leaves_the_child_to_the_server(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """Ctrl-C, or systemd stopping the service, signals the child too: it keeps
    writing until the server closes the pipe, and is not restarted meanwhile."""
    async with trail(tmp_path) as audit:
        for n in range(10):
            audit.record(record(n))
        await wait_until(lambda: not audit._queue and not audit._sent)  # the child is up
        child = audit.pid
        assert child is not None
        os.kill(child, stop)
        for n in range(10, 30):
            audit.record(record(n))
        await wait_until(lambda: not audit._queue and not audit._sent)
        assert audit.pid == child
    references = [entity(e) for e in await written(tmp_path)]
    assert references == [f"Patient/p{n}" for n in range(30)]


async def test_a_child_that_never_says_it_is_ready_is_killed_and_replaced(
    tmp_path: Path,
) -> None:
    """Stopped before it could answer: after ``start_timeout`` it is killed (its
    pipe must close to free the thread reading it) and a new one writes."""
    async with trail(tmp_path, start_timeout=3.0) as audit:
        await wait_until(lambda: audit.pid is not None)
        hung = audit.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        for n in range(20):
            audit.record(record(n))
        await wait_until(lambda: audit.pid not in (None, hung), timeout=60)
        await wait_until(lambda: not audit._queue and not audit._sent, timeout=60)
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)  # gone (reaped), not left stopped
    assert [entity(e) for e in await written(tmp_path)] == [f"Patient/p{n}" for n in range(20)]


async def test_requests_wait_while_the_child_is_behind(tmp_path: Path) -> None:
    async with trail(tmp_path, max_queued=20, room_timeout=30.0) as audit:
        await wait_until(lambda: audit.pid is not None)
        await asyncio.sleep(0.2)  # the child has said it is ready
        pid = audit.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            for n in range(30):
                audit.record(record(n))
            waiting = asyncio.ensure_future(audit.room())
            await asyncio.sleep(0.3)
            assert not waiting.done()  # 30 not acknowledged, over the limit of 20
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(waiting, 30)
    assert len(await written(tmp_path)) == 30


async def test_the_child_writes_what_it_received_when_the_server_dies(tmp_path: Path) -> None:
    """The server's end of the pipe closes (as when it is killed): the child
    writes the batch it has and exits."""
    audit = AuditProcess(settings_for(tmp_path), flush_interval=0.02)
    audit.start()
    await wait_until(lambda: audit._down is not None and audit.pid is not None)
    await asyncio.sleep(0.2)
    for n in range(10):
        audit.record(record(n))
    await wait_until(lambda: not audit._queue)  # handed to the sender thread
    # ... which writes it to the pipe in its own time: its one thread runs jobs in
    # order, so an empty job behind it returns once the batch is in the pipe
    await asyncio.get_running_loop().run_in_executor(audit._sender, lambda: None)
    child = audit._child
    assert child is not None
    audit._stopping = True  # no restart
    assert audit._down is not None
    audit._down.close()
    await asyncio.get_running_loop().run_in_executor(None, child.join, 30)
    assert child.exitcode == 0
    assert len(await written(tmp_path)) == 10
    await audit.close()


async def test_the_server_reads_from_memory_beside_the_child(tmp_path: Path) -> None:
    """The child's commits hold AuditEvents only: the server's memory of the
    Patient it reads stays, so reads need no hand-off to a reader thread."""
    from fhir_server.storage.base import NewVersion

    store = SqliteStore(tmp_path, REGISTRY)
    await store.start()
    body = orjson.dumps({"resourceType": "Patient", "id": "p1"})
    await store.write_many([NewVersion("Patient", "p1", 1, datetime.now(UTC), "create", body)])
    try:
        async with trail(tmp_path) as audit:
            for n in range(30):
                audit.record(record(n))
            await wait_until(lambda: not audit._queue and not audit._sent)
        assert store._current.get("Patient", "p1") is not None
    finally:
        await store.close()
    assert len(await written(tmp_path)) == 30


async def test_the_server_audits_through_the_child(tmp_path: Path) -> None:
    """``create_app`` with ``audit_process``: a read through the real ASGI stack
    is audited by the child and searchable once the server has stopped."""
    import httpx

    from fhir_server.app import create_app
    from tests.conftest import BASE, app_token

    settings = Settings(data_dir=tmp_path, base_url=BASE, audit_flush_interval=0.02)
    app = create_app(replace(settings, audit_process=True))
    async with app.router.lifespan_context(app):
        headers = {"Authorization": f"Bearer {app_token(app)}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as c:
            created = await c.post("/fhir/Patient", json={"resourceType": "Patient"})
            pid = created.json()["id"]
            assert (await c.get(f"/fhir/Patient/{pid}")).status_code == 200
            observation = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "weight"},
                "subject": {"reference": f"Patient/{pid}"},
            }
            oid = (await c.post("/fhir/Observation", json=observation)).json()["id"]
            assert (await c.get(f"/fhir/Observation/{oid}")).status_code == 200
    events = await written(tmp_path)
    assert [(e["subtype"][0]["code"], entity(e)) for e in events] == [
        ("create", f"Patient/{pid}"),
        ("read", f"Patient/{pid}"),
        ("create", f"Observation/{oid}"),
        ("read", f"Observation/{oid}"),
    ]
    # the Patient whose record was reached crosses to the child (IHE BALP's Patient entity)
    for event in events[2:]:
        assert event["entity"][-1]["what"]["reference"] == f"Patient/{pid}"
        assert event["entity"][-1]["role"]["code"] == "1"
