"""Search test fixtures. The corpus: the official examples plus generated radiology
data, loaded into a real SQLite database (the store's schema + the search index) and, independently,
into the oracle's in-memory form."""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fhir_server.search.dates import parse_date_range
from fhir_server.search.extract import extract_index
from fhir_server.search.match import Corpus, Indexed
from fhir_server.search.registry import SearchRegistry
from fhir_server.storage.sqlite.search_sql import INDEX_DDL, write_index

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "fhir" / "examples"

SCHEMA = (
    """CREATE TABLE resources(pk INTEGER PRIMARY KEY, type TEXT NOT NULL, id TEXT NOT NULL,
    version INTEGER NOT NULL, last_updated INTEGER NOT NULL, deleted INTEGER NOT NULL,
    body BLOB, UNIQUE(type, id))""",
    """CREATE TABLE history(seq INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL,
    id TEXT NOT NULL, version INTEGER NOT NULL, last_updated INTEGER NOT NULL,
    method TEXT NOT NULL, body BLOB, UNIQUE(type, id, version))""",
)

BASE_TIME = parse_date_range("2024-01-01T00:00:00Z").low  # type: ignore[union-attr]
FAMILIES = [
    "Smith",
    "Smyth",
    "Müller",
    "Muller",
    "García",
    "O'Brien",
    "Nguyễn",
    "Dupont",
    "van Dijk",
]
GIVENS = ["Anna", "Åsa", "José", "Peter", "Zoë", "Li", "Chloé", "Ängel"]
MODALITIES = ["CT", "MR", "DX", "US"]
LOINC = "http://loinc.org"
ACSN = "http://terminology.hl7.org/CodeSystem/v2-0203"


@dataclass
class Loaded:
    conn: sqlite3.Connection
    corpus: Corpus
    registry: SearchRegistry


def example_resources() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.json")):
        resource = json.loads(path.read_text())
        if resource["resourceType"] == "Bundle":
            found += [e["resource"] for e in resource.get("entry", ()) if "resource" in e]
        else:
            found.append(resource)
    return found


def _day(rng: random.Random, year: int = 2023) -> str:
    return f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def generated(rng: random.Random, patients: int = 40) -> Iterator[dict[str, Any]]:
    for p in range(patients):
        yield _patient(rng, p)
        for o in range(rng.randint(0, 3)):
            order_id = f"sr{p}-{o}"
            yield _order(rng, p, order_id)
            if rng.random() < 0.8:
                yield _study(rng, p, o, order_id)
            if rng.random() < 0.5:
                yield _report(rng, p, o, order_id)
        if rng.random() < 0.4:
            yield _observation(rng, p)


def _patient(rng: random.Random, p: int) -> dict[str, Any]:
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": f"p{p}",
        "identifier": [{"system": "urn:mrn", "value": f"MRN{p:04d}"}],
        "name": [{"family": rng.choice(FAMILIES), "given": [rng.choice(GIVENS)]}],
        "gender": rng.choice(["male", "female", "other"]),
        "active": rng.random() < 0.9,
    }
    if rng.random() < 0.8:
        patient["birthDate"] = rng.choice([_day(rng, rng.randint(1940, 2010)), "1980", "1975-06"])
    if rng.random() < 0.3:
        patient["telecom"] = [{"system": "phone", "value": f"555-{p:04d}"}]
    if rng.random() < 0.2:
        patient["meta"] = {"tag": [{"system": "urn:tags", "code": "vip"}]}
    return patient


def _order(rng: random.Random, p: int, order_id: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": order_id,
        "status": rng.choice(["active", "completed", "revoked", "draft"]),
        "intent": "order",
        "priority": rng.choice(["routine", "urgent", "stat"]),
        "identifier": [
            {
                "type": {"coding": [{"system": ACSN, "code": "ACSN"}]},
                "system": "urn:acc",
                "value": f"ACC{order_id}",
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": rng.choice(["24627-2", "36643-5"])}]},
        "subject": {"reference": f"Patient/p{p}"},
        "authoredOn": f"{_day(rng)}T{rng.randint(0, 23):02d}:15:00Z",
    }


def _study(rng: random.Random, p: int, o: int, order_id: str) -> dict[str, Any]:
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": f"st{p}-{o}",
        "status": rng.choice(["available", "registered", "cancelled"]),
        "subject": {"reference": f"Patient/p{p}"},
        "basedOn": [{"reference": f"ServiceRequest/{order_id}"}],
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:1.2.3.{p}.{o}"}],
        "series": [{"uid": f"1.2.3.{p}.{o}.1", "modality": {"code": rng.choice(MODALITIES)}}],
    }
    if rng.random() < 0.9:
        study["started"] = f"{_day(rng)}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00+01:00"
    return study


def _report(rng: random.Random, p: int, o: int, order_id: str) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "id": f"dr{p}-{o}",
        "status": rng.choice(["final", "preliminary", "amended"]),
        "category": [{"coding": [{"system": "urn:cat", "code": "RAD", "display": "Radiology"}]}],
        "code": {
            "coding": [{"system": LOINC, "code": "18748-4"}],
            "text": "Diagnostic imaging study",
        },
        "subject": {"reference": f"Patient/p{p}"},
        "basedOn": [{"reference": f"ServiceRequest/{order_id}"}],
        "effectivePeriod": {"start": f"{_day(rng)}T08:00:00Z", "end": f"{_day(rng)}T09:00:00Z"},
        "conclusion": "No acute findings",
    }


def _observation(rng: random.Random, p: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs{p}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "29463-7"}]},
        "subject": {"reference": f"Patient/p{p}"},
        "valueQuantity": {
            "value": round(rng.uniform(40, 120), rng.choice([0, 1, 2])),
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
        "effectiveDateTime": _day(rng),
    }


def load(path: Path, seed: int = 7) -> Loaded:
    """Write every resource (some later deleted, some updated) to SQLite and the oracle."""
    registry = SearchRegistry.load()
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    for ddl in (*SCHEMA, *INDEX_DDL):
        conn.execute(ddl)
    corpus: dict[tuple[str, str], Indexed] = {}
    resources = [r for r in example_resources() if registry.supports(r["resourceType"])]
    resources += list(generated(rng))
    for n, resource in enumerate(resources):
        entries = extract_index(resource, registry)
        # Some ties on last_updated, so the pk tie-break is exercised.
        updated = BASE_TIME + (n // 3) * 1_000_000
        deleted = rng.random() < 0.05
        cursor = conn.execute(
            "INSERT INTO resources(type, id, version, last_updated, deleted, body)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                resource["resourceType"],
                resource["id"],
                1 + n % 2,
                updated,
                int(deleted),
                json.dumps(resource).encode(),
            ),
        )
        pk = int(cursor.lastrowid or 0)
        write_index(conn, pk, resource["resourceType"], entries)
        if not deleted:
            key = (resource["resourceType"], resource["id"])
            corpus[key] = Indexed(pk, key[0], key[1], updated, tuple(entries))
    conn.commit()
    return Loaded(conn, corpus, registry)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """The shared corpus, in SQLite and in the oracle (read-only for tests)."""
    data = load(tmp_path_factory.mktemp("search") / "search.db")
    yield data
    data.conn.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Callable[[int], Loaded]]:
    """A private corpus a test may change, built from ``seed``."""
    opened: list[Loaded] = []

    def make(seed: int) -> Loaded:
        opened.append(load(tmp_path / f"corpus-{seed}.db", seed))
        return opened[-1]

    yield make
    for data in opened:
        data.conn.close()
