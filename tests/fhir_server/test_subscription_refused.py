"""Subscriptions: radhub sends no notifications yet, so it refuses to store a
Subscription that asks for them (``resources.validate``)."""

from __future__ import annotations

import httpx
import pytest


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
