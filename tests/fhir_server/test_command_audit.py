"""The admin commands audit what they change (``cli.command_audit``): ``radhub
import`` each commit and its error, ``client add``, ``user add``, ``launch``,
``keys rotate`` and ``token`` their change, refusal or token. Their events join
the server's own hash chain, also while a server's audit trail (in its process,
or the audit process beside it) is writing to the same data dir (``audit_lock``)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_server.audit import AuditLog, AuditRecord
from fhir_server.audit_lock import ChainLock
from fhir_server.audit_process import AuditProcess
from fhir_server.cli import main
from fhir_server.cli.command_audit import CommandAudit
from fhir_server.interactions.services import new_uuid
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.base import NewVersion
from fhir_server.storage.sqlite import queries
from fhir_server.storage.sqlite.store import SqliteStore
from tests.fhir_server.test_audit_process import written

REGISTRY = SearchRegistry.load()
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def own_code(event: dict[str, Any]) -> str:
    return str(event["subtype"][-1]["code"])


def by_command(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e for e in found if e["agent"][-1]["who"].get("identifier", {}).get("value") == "radhub-cli"
    ]


def cli(data: Path, *args: str) -> int:
    """``radhub`` with ``--data-dir`` after the command's words (``client add``...)."""
    words = next(i for i, a in enumerate([*args, "--"]) if a.startswith("--"))
    return main([*args[:words], "--data-dir", str(data), *args[words:]])


def test_an_import_audits_each_commit_as_the_operator(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lines = [json.dumps({"resourceType": "Patient", "id": f"p{n}"}) for n in range(3)]
    (tmp_path / "p.ndjson").write_text("\n".join(lines))
    assert (
        main(["import", "--data-dir", str(data), "--chunk", "2", str(tmp_path / "p.ndjson")]) == 0
    )
    found = asyncio.run(written(data))
    assert [e["outcomeDesc"] for e in found] == [
        "2 resources (entries 1 to 2)",
        "1 resources (entries 3 to 3)",
    ]
    first = found[0]
    assert first["type"]["code"] == "110107" and first["type"]["system"] == DCM
    assert own_code(first) == "import" and first["subtype"][0]["code"] == "transaction"
    assert first["outcome"] == "0"
    assert first["agent"][0]["who"]["identifier"]["value"].startswith("os-user:")
    assert first["entity"][0]["description"] == str(tmp_path / "p.ndjson")


def test_an_import_error_is_audited_as_a_failure(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bad = {"resourceType": "Patient", "id": "x", "birthDate": "not-a-date"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["import", "--data-dir", str(data), str(tmp_path / "bad.json")]) == 1
    [event] = asyncio.run(written(data))
    assert own_code(event) == "import" and event["outcome"] == "4"
    assert event["entity"][0]["description"].endswith("bad.json")
    assert "Patient.birthDate" in event["outcomeDesc"]


def test_a_batch_import_commits_the_good_entries_and_fails_on_the_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": "ok"},
                "request": {"method": "PUT", "url": "Patient/ok"},
            },
            {
                "resource": {"resourceType": "Patient", "birthDate": "not-a-date"},
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    (tmp_path / "b.json").write_text(json.dumps(bundle))
    assert main(["import", "--data-dir", str(data), str(tmp_path / "b.json")]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "Bundle.entry[1]" in out and "imported 1 resources before the error" in out
    [event] = asyncio.run(written(data))
    assert own_code(event) == "import-batch" and event["subtype"][0]["code"] == "batch"
    assert event["outcomeDesc"] == "1 resources (a batch); 1 entries failed"


def test_client_user_launch_and_key_commands_are_audited(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli(data, "client", "add", "--client-id", "app", "--public") == 0
    assert cli(data, "client", "add", "--client-id", "app", "--public", "--name", "App") == 0
    user = ["--username", "rita", "--password", "pw-123456", "--role", "radiologist"]
    assert cli(data, "user", "add", *user) == 0
    assert cli(data, "user", "add", *user) == 2  # the name is taken
    assert cli(data, "launch", "--client-id", "app", "--patient", "p1") == 0
    assert cli(data, "launch", "--client-id", "nobody", "--patient", "p1") == 2
    assert cli(data, "keys", "rotate") == 0
    assert cli(data, "token", "--scope", "patient/*.rs", "--patient", "p1") == 0
    found = by_command(asyncio.run(written(data)))
    summary = [(own_code(e), e["action"], e["outcome"]) for e in found]
    assert summary == [
        ("admin-client-create", "C", "0"),
        ("admin-client-update", "U", "0"),
        ("admin-user-create", "C", "0"),
        ("admin-user-create", "C", "4"),
        ("launch", "C", "0"),
        ("launch", "C", "4"),
        ("keys-rotate", "U", "0"),
        ("token", "E", "0"),
    ]
    assert found[-1]["entity"][0]["what"]["reference"] == "Patient/p1"
    assert "already exists" in found[3]["outcomeDesc"]
    assert found[4]["entity"][0]["what"]["reference"] == "Patient/p1"
    assert all("pw-123456" not in json.dumps(e) for e in found)


def server_record(n: int) -> AuditRecord:
    return AuditRecord("read", 200, datetime.now(UTC), None, "Patient", f"s{n}")


async def test_commands_and_a_server_in_process_trail_share_one_chain(tmp_path: Path) -> None:
    """The server's trail caches nothing of the chain: a command's events written
    between two of its batches are linked to, not forked from."""
    store = SqliteStore(tmp_path, REGISTRY)
    await store.start()
    log = AuditLog(store, new_uuid, ChainLock(tmp_path))
    try:
        for n in range(3):
            log.record(server_record(n))
            await log.flush()
            await asyncio.to_thread(
                cli, tmp_path, "client", "add", "--client-id", f"c{n}", "--public"
            )
        log.record(server_record(9))
        await log.flush()
    finally:
        await log.close()
        await store.close()
    found = await written(tmp_path)
    assert [own_code(e) for e in found] == ["read", "admin-client-create"] * 3 + ["read"]


async def test_commands_write_while_the_audit_process_runs(tmp_path: Path) -> None:
    """The audit process holds the lock for a batch, not for its life: a command
    run while it is up is not kept waiting, and the chain stays one."""
    audit = AuditProcess(Settings(data_dir=tmp_path, audit_process=True), flush_interval=0.02)
    audit.start()
    try:
        for n in range(20):
            audit.record(server_record(n))
        command = asyncio.to_thread(
            cli, tmp_path, "user", "add", "--username", "u", "--password", "pw-123456",
            "--role", "radiologist",
        )  # fmt: skip
        assert await asyncio.wait_for(command, 60) == 0
        for n in range(20, 40):
            audit.record(server_record(n))
    finally:
        await audit.close()
    found = await written(tmp_path)
    assert len(found) == 41 and [own_code(e) for e in by_command(found)] == ["admin-user-create"]


async def test_a_write_cancelled_mid_commit_keeps_the_lock_until_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C on a command while its batch is on its way to the disk: the store's
    writer thread commits it anyway, so the chain lock must be held until it has,
    or another writer links to the head before it and the chain forks."""
    entered, calls = threading.Event(), []
    real = queries.write_batch

    def first_commits_late(conn: sqlite3.Connection, versions: list[NewVersion]) -> Any:
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            time.sleep(0.5)
        return real(conn, versions)

    monkeypatch.setattr(queries, "write_batch", first_commits_late)
    one, two = SqliteStore(tmp_path, REGISTRY), SqliteStore(tmp_path, REGISTRY)  # two processes'
    await one.start()
    await two.start()
    first, second = CommandAudit(one, tmp_path), CommandAudit(two, tmp_path)
    try:
        task = asyncio.create_task(first.record("keys-rotate", 200, "first"))
        await asyncio.to_thread(entered.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await second.record("keys-rotate", 200, "second")  # another command, at once
    finally:
        first.close()
        second.close()
        await one.close()
        await two.close()
    assert [e["outcomeDesc"] for e in await written(tmp_path)] == ["first", "second"]
