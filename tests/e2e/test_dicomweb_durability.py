"""Every acknowledged STOW-RS instance survives SIGKILL.

A real ``radhub serve`` receives 1,000 small generated instances in several
concurrent STOW-RS requests, streamed part by part; the server is killed
with SIGKILL while requests are in flight. After a restart every instance a
STOW response acknowledged is retrievable byte for byte, the blob store and
the index agree (no orphan, no temporary, nothing half-written served), the
server started cleanly, and the unacknowledged remainder can simply be sent
again.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread

from tests.dicomweb.dicom_data import BOUNDARY, STOW_TYPE, make_instance, split_multipart

TOTAL, PER_REQUEST, CONCURRENT = 1000, 50, 5
STUDIES = 10
ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
REFERENCED, SOP, INSTANCES = "00081199", "00081155", "00201208"


def generate() -> dict[str, tuple[str, bytes]]:
    """SOP Instance UID -> (Study Instance UID, Part-10 bytes), over ten studies."""
    out = {}
    for n in range(TOTAL):
        study = f"1.2.826.0.1.3680043.10.1{n % STUDIES}"
        series = f"{study}.{n % 3}"
        sop = f"{series}.{n}"
        body = make_instance(study, series, sop, patient_id=f"P{n % STUDIES}", number=n)
        out[sop] = (study, body)
    return out


async def stream(parts: list[bytes]) -> AsyncIterator[bytes]:
    """A STOW body sent part by part, slowly enough that a kill lands mid-request."""
    for part in parts:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        half = len(part) // 2
        yield part[:half]
        await asyncio.sleep(0.004)
        yield part[half:] + b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


async def stow_until_killed(
    base: str, token: str, instances: dict[str, tuple[str, bytes]], kill: Callable[[], None]
) -> set[str]:
    """Send everything; SIGKILL the server once a few requests were acknowledged.
    Returns the SOP Instance UIDs the server acknowledged."""
    acknowledged: set[str] = set()
    answered = 0
    bodies = [body for _, body in instances.values()]
    chunks = [bodies[i : i + PER_REQUEST] for i in range(0, len(bodies), PER_REQUEST)]
    sem = asyncio.Semaphore(CONCURRENT)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": STOW_TYPE}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:

        async def send(parts: list[bytes]) -> None:
            nonlocal answered
            async with sem:
                try:
                    r = await client.post("/dicomweb/studies", content=stream(parts))
                except httpx.TransportError:
                    return  # killed under it: not acknowledged
            assert r.status_code == 200, r.text
            acknowledged.update(i[SOP]["Value"][0] for i in r.json()[REFERENCED]["Value"])
            answered += 1
            if answered == CONCURRENT + 2:  # the second wave is streaming now
                kill()

        await asyncio.gather(*(send(parts) for parts in chunks))
    return acknowledged


def blob_files(data: Path) -> tuple[list[Path], list[Path]]:
    """The committed blobs and everything else (temporaries, intents) under the blob dir."""
    files = [p for p in (data / "blobs").rglob("*") if p.is_file()]
    committed = [p for p in files if p.suffix == ".dcm" and not p.name.startswith(".")]
    return committed, [p for p in files if p not in committed]


async def archive_contents(base: str, token: str) -> tuple[int, dict[str, str]]:
    """Instances the index counts (QIDO aggregates), and the SHA-256 of every instance
    WADO-RS serves by its SOP Instance UID (read from the served bytes themselves)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        studies = (await client.get("/dicomweb/studies", params={"limit": "100"})).json()
        counted = sum(s[INSTANCES]["Value"][0] for s in studies)
        served: dict[str, str] = {}
        for study in studies:
            uid = study["0020000D"]["Value"][0]
            got = await client.get(f"/dicomweb/studies/{uid}", headers={"Accept": ANY_TS})
            assert got.status_code == 200
            for part in split_multipart(got.content, got.headers["content-type"]):
                sop = dcmread(io.BytesIO(part), stop_before_pixels=True).SOPInstanceUID
                served[str(sop)] = hashlib.sha256(part).hexdigest()
        return counted, served


def test_acknowledged_instances_survive_sigkill_mid_stow(
    tmp_path: Path, radhub_server: Callable[..., Any], radhub_cli: Callable[..., str]
) -> None:
    data = tmp_path / "data"
    server = radhub_server(data)
    token = radhub_cli("token", "--data-dir", str(data), "--scope", "system/*.cruds")
    instances = generate()
    digest = {sop: hashlib.sha256(body).hexdigest() for sop, (_, body) in instances.items()}

    acknowledged = asyncio.run(stow_until_killed(server.base, token, instances, server.kill))
    assert server.proc.poll() is not None, "the server was not killed during the STOW"
    assert 0 < len(acknowledged) < TOTAL

    restarted = radhub_server(data, server.port)
    assert httpx.get(f"{restarted.base}/healthz").status_code == 200
    counted, served = asyncio.run(archive_contents(restarted.base, token))
    # every acknowledged instance is there, intact; whatever else is there is intact too
    assert acknowledged <= served.keys()
    for sop, sha in served.items():
        assert sha == digest[sop], f"{sop} is not what was sent"
    # the index and the blob store agree; no temporary or intent is left behind
    committed, other = blob_files(data)
    assert counted == len(served) == len(committed)
    assert other == []
    assert "Traceback" not in "".join(restarted.output)

    # the unacknowledged rest can be sent again; then the archive holds all 1,000
    rest = {sop: v for sop, v in instances.items() if sop not in acknowledged}
    again = asyncio.run(stow_until_killed(restarted.base, token, rest, lambda: None))
    assert again == rest.keys()
    counted, served = asyncio.run(archive_contents(restarted.base, token))
    assert counted == TOTAL and served == digest
    assert len(blob_files(data)[0]) == TOTAL
