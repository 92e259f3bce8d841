"""Subscriptions: radhub sends no notifications yet, so it refuses to store a
Subscription that asks for them (``resources.validate``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_server.app import create_app
from fhir_server.settings import Settings
from tests.conftest import BASE, app_token

ACTIVE: dict[str, Any] = {
    "resourceType": "Subscription",
    "status": "active",
    "reason": "reports",
    "criteria": "DiagnosticReport?status=final",
    "channel": {"type": "rest-hook", "endpoint": "https://ehr.example/hook"},
}


@pytest.mark.parametrize("status", ["requested", "active"])
async def test_a_subscription_asking_for_notifications_is_refused(
    client: httpx.AsyncClient, status: str
) -> None:
    """radhub sends no notifications: a Subscription that asks for them is a 422 that
    says so, not a record stored and never honoured. One switched off may be kept."""
    subscription = {
        "resourceType": "Subscription",
        "status": status,
        "reason": "reports back to the EHR",
        "criteria": "DiagnosticReport?status=final",
        "channel": {"type": "rest-hook", "endpoint": "https://ehr.example/hook"},
    }
    refused = await client.post("/fhir/Subscription", json=subscription)
    assert refused.status_code == 422
    assert "notifications" in refused.json()["issue"][0]["diagnostics"]
    kept = await client.post("/fhir/Subscription", json={**subscription, "status": "off"})
    assert kept.status_code == 201


@pytest.fixture(params=[0, 1], ids=["inline", "workers"])
async def validating(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app validating in its own process, or in one worker process."""
    settings = Settings(
        data_dir=tmp_path / "data",
        base_url=BASE,
        audit_process=False,
        validation_workers=request.param,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        headers = {"Authorization": f"Bearer {app_token(app)}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as c:
            yield c


@pytest.mark.parametrize("size", [5, 40])  # 40: validated in chunks by the workers
async def test_in_a_transaction_the_subscription_entry_is_the_one_named(
    validating: httpx.AsyncClient, size: int
) -> None:
    resources: list[dict[str, Any]] = [{"resourceType": "Patient"} for _ in range(size)]
    at = size // 2
    resources[at] = ACTIVE
    entries = [
        {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    response = await validating.post("/fhir", json=bundle)
    assert response.status_code == 422, response.text
    named = [i.get("expression") for i in response.json()["issue"]]
    assert [f"Bundle.entry[{at}]"] in named, response.text
