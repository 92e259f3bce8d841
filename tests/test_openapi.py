"""The exported OpenAPI document in openapi/ matches the running app.

Regenerate with ``make openapi`` after changing routes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from fhir_server.app import create_app
from fhir_server.settings import Settings

OPENAPI_FILE = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def current_document(tmp_path: Path) -> str:
    app = create_app(Settings(data_dir=tmp_path, base_url="https://radhub.example.org"))
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


def test_openapi_document_is_current(tmp_path: Path) -> None:
    document = current_document(tmp_path)
    if os.environ.get("RADHUB_UPDATE_OPENAPI") == "1":
        OPENAPI_FILE.write_text(document)
    assert OPENAPI_FILE.exists(), "openapi/openapi.json is missing: run `make openapi`"
    assert OPENAPI_FILE.read_text() == document, "openapi/openapi.json is stale: run `make openapi`"


def test_openapi_lists_the_fhir_interactions(tmp_path: Path) -> None:
    paths = json.loads(current_document(tmp_path))["paths"]
    assert "/fhir/{resource_type}/{id}" in paths
    assert {"get", "put", "patch", "delete"} <= set(paths["/fhir/{resource_type}/{id}"])
    assert "/fhir/metadata" in paths and "/healthz" in paths


async def test_openapi_is_not_served_without_a_token(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, audit_process=False))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/openapi.json")
    assert response.status_code in (401, 404)
