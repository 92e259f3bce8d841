"""``radhub import`` loads NDJSON and Bundles into the data dir of a running server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "fhir" / "examples"


def _write_inputs(folder: Path) -> None:
    folder.mkdir()
    lines = [
        json.dumps(
            {
                "resourceType": "Patient",
                "id": f"nd-{n}",
                "identifier": [{"system": "urn:import", "value": str(n)}],
            }
        )
        for n in range(120)
    ]
    (folder / "patients.ndjson").write_text("\n".join(lines) + "\n")
    collection = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": json.loads((EXAMPLES / name).read_text())}
            for name in ("practitioner-example.json", "organization-example.json")
        ],
    }
    (folder / "directory.json").write_text(json.dumps(collection))
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5b0c3a52-0000-4000-8000-000000000001",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:import", "value": "tx"}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": "urn:uuid:5b0c3a52-0000-4000-8000-000000000001"},
                },
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
        ],
    }
    (folder / "order.json").write_text(json.dumps(transaction))


def test_import_into_a_running_server(
    tmp_path: Path, radhub_server: Callable[..., Any], radhub_cli: Callable[..., str]
) -> None:
    data = tmp_path / "data"
    server = radhub_server(data)
    inputs = tmp_path / "in"
    _write_inputs(inputs)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fhir_server.cli",
            "import",
            "--data-dir",
            str(data),
            str(inputs),
            "--chunk",
            "50",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "imported 124 resources" in done.stdout

    token = radhub_cli("token", "--data-dir", str(data), "--scope", "system/*.rs")
    with httpx.Client(
        base_url=f"{server.base}/fhir", headers={"Authorization": f"Bearer {token}"}
    ) as fhir:
        found = fhir.get("/Patient", params={"identifier": "urn:import|", "_total": "accurate"})
        assert found.json()["total"] == 121
        assert fhir.get("/Patient/nd-119").json()["identifier"][0]["value"] == "119"
        assert fhir.get("/Practitioner/example").status_code == 200
        order = fhir.get("/ServiceRequest", params={"subject.identifier": "urn:import|tx"}).json()
        assert len(order["entry"]) == 1


def test_import_refuses_a_broken_file(tmp_path: Path, radhub_cli: Callable[..., str]) -> None:
    broken = tmp_path / "broken.ndjson"
    broken.write_text('{"resourceType": "Patient"}\n{not json\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fhir_server.cli",
            "import",
            "--data-dir",
            str(tmp_path / "d"),
            str(broken),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "broken.ndjson:2" in done.stdout + done.stderr
