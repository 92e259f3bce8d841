"""Fixtures for the FHIR REST API tests: the official examples, and a way to wait
for the audit trail."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

AUDIT_WAIT = 30.0  # seconds: the most flush_audit waits for the trail to write
EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "fhir" / "examples"

# One official example per main type (https://hl7.org/fhir/R4/ examples).
MAIN_EXAMPLES = {
    "Patient": "patient-example.json",
    "ServiceRequest": "servicerequest-example-di.json",
    "Appointment": "appointment-example.json",
    "ImagingStudy": "imagingstudy-example.json",
    "DiagnosticReport": "diagnosticreport-example-ultrasound.json",
}

Example = Callable[[str], dict[str, Any]]


def load_example(name: str) -> dict[str, Any]:
    data = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture
def example() -> Example:
    """Load an official example by file name (a fresh copy each call)."""
    return load_example


@pytest.fixture
def flush_audit(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """Let the background writer (every 50 ms in tests) write the queued AuditEvents.
    Waiting, not calling ``flush()``, so the test sees what the server really writes;
    until nothing is left unwritten, not for a fixed time, which a busy machine outlasts."""

    async def flush() -> None:
        audit = app.state.audit
        deadline = time.monotonic() + AUDIT_WAIT
        while audit.unwritten() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    return flush


@pytest.fixture(params=sorted(MAIN_EXAMPLES), ids=sorted(MAIN_EXAMPLES))
def main_example(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each of the five main types, as its official example."""
    return load_example(MAIN_EXAMPLES[request.param])
