"""A small generated demo data set: a radiology department's patients,
practitioners, imaging orders and appointments, as one transaction Bundle.

Deterministic for a given seed, so the demo looks the same on every machine.
"""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from fhir_server.access import AuthContext, ScopeSet
from fhir_server.interactions.services import Services
from fhir_server.interactions.transaction import transaction
from fhir_server.search.ast import SearchQuery

_FAMILY = (
    "Smith",
    "García",
    "Müller",
    "Nguyen",
    "Okafor",
    "Rossi",
    "Kowalski",
    "Haddad",
    "Johansson",
    "Tanaka",
    "Dubois",
    "O'Brien",
)
_GIVEN = (
    "Anna",
    "José",
    "Lena",
    "Minh",
    "Chidi",
    "Giulia",
    "Piotr",
    "Layla",
    "Erik",
    "Yuki",
    "Chloé",
    "Sean",
)


class Procedure(NamedTuple):
    """An orderable imaging procedure: LOINC code and display, the modality that
    performs it and the DICOM body part it images (the demo images use both)."""

    code: str
    display: str
    modality: str
    body_part: str


PROCEDURES = (
    Procedure("24627-2", "CT Chest", "CT", "CHEST"),
    Procedure("24725-4", "CT Head", "CT", "HEAD"),
    Procedure("36643-5", "XR Chest 2 Views", "DX", "CHEST"),
    Procedure("24590-2", "MR Brain", "MR", "HEAD"),
    Procedure("24558-9", "US Abdomen", "US", "ABDOMEN"),
)
MRN_SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"
ACCESSION_SYSTEM = "urn:radhub:accession"

DEMO_CONTEXT = AuthContext(
    subject="radhub-demo", client_id=None, scopes=ScopeSet.parse("system/*.cruds")
)


def _entry(uuid: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{uuid}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def _patient(rng: random.Random, n: int) -> dict[str, Any]:
    birth = datetime(1940, 1, 1) + timedelta(days=rng.randrange(0, 80 * 365))
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN_SYSTEM, "value": f"MRN{100000 + n}"}],
        "name": [{"family": rng.choice(_FAMILY), "given": [rng.choice(_GIVEN)]}],
        "gender": rng.choice(("female", "male")),
        "birthDate": birth.date().isoformat(),
    }


def _practitioner(n: int, role: str) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "identifier": [{"system": "urn:radhub:staff", "value": f"STAFF{n:03d}"}],
        "name": [
            {
                "family": _FAMILY[n % len(_FAMILY)],
                "given": [_GIVEN[n % len(_GIVEN)]],
                "prefix": ["Dr."],
            }
        ],
        "qualification": [{"code": {"text": role}}],
    }


def _order(rng: random.Random, n: int, patient: str, referrer: str) -> dict[str, Any]:
    code, display, _, _ = rng.choice(PROCEDURES)
    return {
        "resourceType": "ServiceRequest",
        "identifier": [
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "system": ACCESSION_SYSTEM,
                "value": f"ACC{200000 + n}",
            }
        ],
        "status": rng.choice(("active", "active", "completed")),
        "intent": "order",
        "priority": rng.choice(("routine", "routine", "urgent", "stat")),
        "category": [
            {
                "coding": [
                    {"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": f"urn:uuid:{patient}"},
        "requester": {"reference": f"urn:uuid:{referrer}"},
    }


def _appointment(start: datetime, patient: str, order: str, radiologist: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "basedOn": [{"reference": f"urn:uuid:{order}"}],
        "start": start.isoformat().replace("+00:00", "Z"),
        "end": (start + timedelta(minutes=30)).isoformat().replace("+00:00", "Z"),
        "participant": [
            {"actor": {"reference": f"urn:uuid:{patient}"}, "status": "accepted"},
            {"actor": {"reference": f"urn:uuid:{radiologist}"}, "status": "accepted"},
        ],
    }


def demo_bundle(
    *, patients: int = 20, seed: int = 7, now: datetime | None = None
) -> dict[str, Any]:
    """The demo data as a transaction Bundle with ``urn:uuid`` references (pure)."""
    rng = random.Random(seed)
    day = (now or datetime(2026, 12, 1, tzinfo=UTC)).replace(
        hour=8, minute=0, second=0, microsecond=0
    )
    entries = [
        _entry(f"00000000-0000-4000-8000-{n:012d}", _practitioner(n, role))
        for n, role in enumerate(("radiologist", "radiologist", "referrer", "referrer"))
    ]
    for n in range(patients):
        pid, oid, aid = (f"{k}0000000-0000-4000-8000-{n:012d}" for k in (1, 2, 3))
        entries.append(_entry(pid, _patient(rng, n)))
        referrer = f"00000000-0000-4000-8000-{2 + n % 2:012d}"
        entries.append(_entry(oid, _order(rng, n, pid, referrer)))
        radiologist = f"00000000-0000-4000-8000-{n % 2:012d}"
        start = day + timedelta(minutes=30 * n)
        entries.append(_entry(aid, _appointment(start, pid, oid, radiologist)))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def load_demo(svc: Services, bundle: dict[str, Any]) -> int:
    """Load the demo set ``bundle`` (``demo_bundle``) into an empty store, leaving
    ``bundle`` as it was; return how many resources were written."""
    existing = await svc.store.search(SearchQuery(types=("Patient",), count=1))
    if existing.matches:
        return 0
    # a copy: the transaction resolves the references of what it is given in place
    result = await transaction(svc, DEMO_CONTEXT, copy.deepcopy(bundle))
    return len(result["entry"])
