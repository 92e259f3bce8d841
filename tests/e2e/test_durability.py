"""Every acknowledged write survives SIGKILL: a real ``radhub serve`` process,
500 writes, kill -9, restart, and every write is there at the right version."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

FHIR = {"Content-Type": "application/fhir+json"}


async def _write(client: httpx.AsyncClient, n: int) -> tuple[str, str, int]:
    """Create a patient; every third one is updated once more (version 2)."""
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": str(n)}]}
    created = await client.post("/fhir/Patient", json=body, headers=FHIR)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    if n % 3:
        return "Patient", rid, 1
    updated = await client.put(
        f"/fhir/Patient/{rid}", json={**body, "id": rid, "active": True}, headers=FHIR
    )
    assert updated.status_code == 200, updated.text
    return "Patient", rid, 2


async def _write_all(base: str, token: str, count: int) -> list[tuple[str, str, int]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        sem = asyncio.Semaphore(8)

        async def one(n: int) -> tuple[str, str, int]:
            async with sem:
                return await _write(client, n)

        return list(await asyncio.gather(*(one(n) for n in range(count))))


async def _versions(base: str, token: str, refs: list[tuple[str, str, int]]) -> list[int]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        found = []
        for rtype, rid, _ in refs:
            r = await client.get(f"/fhir/{rtype}/{rid}")
            found.append(int(r.json()["meta"]["versionId"]) if r.status_code == 200 else -1)
        return found


def test_acknowledged_writes_survive_sigkill(
    tmp_path: Path, radhub_server: Callable[..., Any], radhub_cli: Callable[..., str]
) -> None:
    data = tmp_path / "data"
    server = radhub_server(data)
    token = radhub_cli("token", "--data-dir", str(data), "--scope", "system/*.cruds")
    acknowledged = asyncio.run(_write_all(server.base, token, 500))
    server.kill()  # SIGKILL: no shutdown, no flush
    restarted = radhub_server(data, server.port)
    versions = asyncio.run(_versions(restarted.base, token, acknowledged))
    assert len(acknowledged) == 500
    assert versions == [v for _, _, v in acknowledged]
