"""Search benchmark: latency of the fixed query mix at growing population sizes.

Generates a realistic radiology population (patients with MRNs and names,
imaging orders with accession numbers, appointments, imaging studies, reports,
a pool of practitioners) straight into the embedded store in large batches
(``write_many`` with the extracted index, generation and extraction spread
over worker processes), then runs each query of the fixed mix of issue 3
through the search interaction, in process, with fresh random arguments each
time, and prints p50/p95 latency per query and the load time.

    .venv/bin/python bench/search_bench.py --sizes 10000 100000 [--runs 200]
    .venv/bin/python bench/search_bench.py --sizes 1000000 --keep /tmp/bench-1m

``--keep DIR`` keeps the store in DIR; a later run with the same ``--keep``
and size reuses it (no load), so SQL and index changes can be measured on the
same data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_server.access.compartment import PatientCompartment  # noqa: E402
from fhir_server.access.context import AuthContext  # noqa: E402
from fhir_server.access.policy import AccessPolicy  # noqa: E402
from fhir_server.access.scopes import ScopeSet  # noqa: E402
from fhir_server.interactions.search import search  # noqa: E402
from fhir_server.interactions.services import Services  # noqa: E402
from fhir_server.resources.meta import format_instant  # noqa: E402
from fhir_server.search.extract import extract_index  # noqa: E402
from fhir_server.search.registry import SearchRegistry  # noqa: E402
from fhir_server.storage.base import NewVersion  # noqa: E402
from fhir_server.storage.sqlite.store import SqliteStore  # noqa: E402

BASE = "http://bench.local/fhir"
MRN = "urn:oid:2.16.840.1.113883.19.5"
ACCESSION = "urn:oid:2.16.840.1.113883.19.6"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOINC = "http://loinc.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
T0 = datetime(2020, 1, 1, tzinfo=UTC)
PRACTITIONERS = 500
PATIENTS_PER_CHUNK = 2000
RESOURCES_PER_PATIENT = 8.4  # measured average of ``patient_resources``

SYLLABLES = ["ab", "ber", "car", "dan", "el", "fis", "gar", "hol", "ing", "jo", "kel", "lam"]
SYLLABLES += ["mor", "nor", "os", "pet", "quin", "ros", "sul", "tor", "ul", "van", "wel", "zim"]
GIVENS = ["Anna", "Ben", "Chloé", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "José"]
GIVENS += ["Karin", "Lukas", "Maria", "Nils", "Olga", "Paul", "Rosa", "Sven", "Zoë", "Åsa"]
MODALITIES = ["CT", "MR", "DX", "US", "MG", "NM"]
PROCEDURES = ["24627-2", "36643-5", "30746-2", "24558-9", "37359-7"]


def family(n: int) -> str:
    """One of 24^3 family names: a name prefix of three letters selects ~1/500."""
    a, b, c = n % 24, (n // 24) % 24, (n // 576) % 24
    return (SYLLABLES[a] + SYLLABLES[b] + SYLLABLES[c]).capitalize()


def _instant(rng: random.Random) -> datetime:
    return T0 + timedelta(minutes=rng.randrange(0, 4 * 365 * 24 * 60))


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def patient_resources(p: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """A patient and their orders, appointments, studies and reports."""
    pid = f"pat{p}"
    yield {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": MRN, "value": f"MRN{p:08d}"}],
        "name": [{"family": family(rng.randrange(24**3)), "given": [rng.choice(GIVENS)]}],
        "gender": rng.choice(["male", "female"]),
        "birthDate": f"{rng.randint(1930, 2015)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "active": True,
    }
    subject = {"reference": f"Patient/{pid}"}
    for o in range(rng.choice([1, 1, 2, 2, 2, 3, 3])):
        when = _instant(rng)
        oid = f"{pid}-o{o}"
        practitioner = {"reference": f"Practitioner/pr{rng.randrange(PRACTITIONERS)}"}
        status = rng.choices(["active", "completed", "revoked"], [3, 6, 1])[0]
        yield {
            "resourceType": "ServiceRequest",
            "id": oid,
            "identifier": [
                {
                    "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                    "system": ACCESSION,
                    "value": f"ACC{p:08d}{o}",
                }
            ],
            "status": status,
            "intent": "order",
            "priority": rng.choices(["routine", "urgent", "stat"], [8, 2, 1])[0],
            "code": {"coding": [{"system": LOINC, "code": rng.choice(PROCEDURES)}]},
            "subject": subject,
            "requester": practitioner,
            "authoredOn": _iso(when),
        }
        yield {
            "resourceType": "Appointment",
            "id": f"{oid}-a",
            "status": rng.choice(["booked", "fulfilled", "cancelled"]),
            "basedOn": [{"reference": f"ServiceRequest/{oid}"}],
            "start": _iso(when + timedelta(days=2)),
            "end": _iso(when + timedelta(days=2, minutes=30)),
            "participant": [{"actor": subject, "status": "accepted"}],
        }
        started = when + timedelta(days=2, minutes=5)
        yield {
            "resourceType": "ImagingStudy",
            "id": f"{oid}-s",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{p}{o}"}],
            "status": rng.choices(["available", "registered", "cancelled"], [7, 2, 1])[0],
            "subject": subject,
            "basedOn": [{"reference": f"ServiceRequest/{oid}"}],
            "started": _iso(started),
            "modality": [{"system": DCM, "code": rng.choice(MODALITIES)}],
            "numberOfSeries": 1,
            "numberOfInstances": rng.randint(1, 400),
        }
        if rng.random() < 0.7:
            yield {
                "resourceType": "DiagnosticReport",
                "id": f"{oid}-r",
                "status": rng.choices(["final", "preliminary", "amended"], [7, 2, 1])[0],
                "category": [{"coding": [{"system": "http://loinc.org", "code": "LP29684-5"}]}],
                "code": {"coding": [{"system": LOINC, "code": "18748-4"}]},
                "subject": subject,
                "basedOn": [{"reference": f"ServiceRequest/{oid}"}],
                "imagingStudy": [{"reference": f"ImagingStudy/{oid}-s"}],
                "effectiveDateTime": _iso(started),
                "issued": _iso(started + timedelta(hours=6)),
                "resultsInterpreter": [practitioner],
                "conclusion": "No acute findings.",
            }


def practitioners() -> Iterator[dict[str, Any]]:
    rng = random.Random(1)
    for i in range(PRACTITIONERS):
        yield {
            "resourceType": "Practitioner",
            "id": f"pr{i}",
            "name": [{"family": family(rng.randrange(24**3)), "given": [rng.choice(GIVENS)]}],
        }


Prepared = tuple[str, str, bytes, tuple[Any, ...]]


def _prepare(resource: dict[str, Any], registry: SearchRegistry, when: datetime) -> Prepared:
    body = dict(resource, meta={"versionId": "1", "lastUpdated": format_instant(when)})
    entries = tuple(extract_index(body, registry))
    return resource["resourceType"], resource["id"], json.dumps(body).encode(), entries


_REGISTRY: SearchRegistry | None = None


def prepare_chunk(args: tuple[int, int, int]) -> list[Prepared]:
    """Generate and index patients [first, last) in a worker process."""
    first, last, seed = args
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = SearchRegistry.load()
    rng = random.Random(seed * 1_000_003 + first)
    when = T0 + timedelta(days=4 * 365)
    out: list[Prepared] = []
    for p in range(first, last):
        for resource in patient_resources(p, rng):
            out.append(_prepare(resource, _REGISTRY, when + timedelta(microseconds=p)))
    return out


async def load(store: SqliteStore, registry: SearchRegistry, patients: int, workers: int) -> int:
    """Write the population; returns the number of resources written."""
    when = T0 + timedelta(days=4 * 365)
    batch = [_prepare(r, registry, when) for r in practitioners()]
    written = await _write(store, batch, when)
    chunks = [
        (start, min(start + PATIENTS_PER_CHUNK, patients), 7)
        for start in range(0, patients, PATIENTS_PER_CHUNK)
    ]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for prepared in pool.imap(prepare_chunk, chunks):
            written += await _write(store, prepared, when)
    return written


async def _write(store: SqliteStore, prepared: list[Prepared], when: datetime) -> int:
    versions = [
        NewVersion(rtype, rid, 1, when, "create", body, entries)
        for rtype, rid, body, entries in prepared
    ]
    await store.write_many(versions)
    return len(versions)


# -- the query mix -----------------------------------------------------------------------

Params = list[tuple[str, str]]
QueryMaker = Callable[[random.Random, int], tuple[str, Params]]


def _pat(rng: random.Random, patients: int) -> int:
    return rng.randrange(patients)


def _day(rng: random.Random) -> str:
    return (T0 + timedelta(days=rng.randrange(0, 4 * 365 - 7))).date().isoformat()


def _week_after(day: str) -> str:
    return (datetime.fromisoformat(day) + timedelta(days=7)).date().isoformat()


MIX: dict[str, QueryMaker] = {
    "patient by identifier": lambda r, n: (
        "Patient",
        [("identifier", f"{MRN}|MRN{_pat(r, n):08d}")],
    ),
    "patient by name prefix": lambda r, n: (
        "Patient",
        [("name", family(r.randrange(24**3))[:5])],
    ),
    "patient's studies + subject": lambda r, n: (
        "ImagingStudy",
        [("patient", f"Patient/pat{_pat(r, n)}"), ("_include", "ImagingStudy:subject")],
    ),
    "reading worklist": lambda r, n: (
        "ImagingStudy",
        [
            ("status", "available"),
            ("basedon:ServiceRequest.status", "active"),
            ("_sort", "-started"),
            ("_include", "ImagingStudy:patient"),
        ],
    ),
    "patient's final reports": lambda r, n: (
        "DiagnosticReport",
        [("patient", f"pat{_pat(r, n)}"), ("status", "final")],
    ),
    "order by accession": lambda r, n: (
        "ServiceRequest",
        [("identifier", f"{ACCESSION}|ACC{_pat(r, n):08d}0")],
    ),
    "chained subject:Patient.identifier": lambda r, n: (
        "ImagingStudy",
        [("subject:Patient.identifier", f"{MRN}|MRN{_pat(r, n):08d}")],
    ),
    "_revinclude studies of a patient": lambda r, n: (
        "Patient",
        [("_id", f"pat{_pat(r, n)}"), ("_revinclude", "ImagingStudy:subject")],
    ),
    "studies in a week (date range)": lambda r, n: (
        "ImagingStudy",
        [("started", f"ge{(d := _day(r))}"), ("started", f"lt{_week_after(d)}")],
    ),
    "reports issued in a week, newest": lambda r, n: (
        "DiagnosticReport",
        [("date", f"ge{(d := _day(r))}"), ("date", f"lt{_week_after(d)}"), ("_sort", "-date")],
    ),
}


@dataclass
class Result:
    name: str
    p50: float
    p95: float
    hits: float


async def measure(svc: Services, auth: AuthContext, patients: int, runs: int) -> list[Result]:
    rng = random.Random(11)
    results: list[Result] = []
    for name, make in MIX.items():
        times: list[float] = []
        hits: list[int] = []
        for i in range(runs + 5):
            rtype, params = make(rng, patients)
            start = time.perf_counter()
            bundle = await search(svc, auth, rtype, params)
            elapsed = (time.perf_counter() - start) * 1000
            if i >= 5:  # warm-up
                times.append(elapsed)
                hits.append(len(bundle["entry"]))
        times.sort()
        p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
        results.append(Result(name, statistics.median(times), p95, statistics.mean(hits)))
    return results


async def run_size(size: int, runs: int, workers: int, keep: Path | None) -> None:
    registry = SearchRegistry.load()
    folder = keep or Path(tempfile.mkdtemp(prefix="radhub-search-bench-"))
    marker = folder / f"loaded-{size}"
    if keep is not None and not marker.exists() and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    patients = max(1, int((size - PRACTITIONERS) / RESOURCES_PER_PATIENT))
    store = SqliteStore(folder, registry)
    await store.start()
    load_seconds: float | None = None
    written = 0
    try:
        if not marker.exists():
            start = time.perf_counter()
            written = await load(store, registry, patients, workers)
            load_seconds = time.perf_counter() - start
            marker.write_text(f"{written} {load_seconds:.1f}\n")
        else:
            count, seconds = marker.read_text().split()
            written, load_seconds = int(count), float(seconds)
            print(f"(reusing the population in {folder})")
        svc = Services(store, registry, AccessPolicy(PatientCompartment.load()), BASE)
        auth = AuthContext("bench", None, ScopeSet.parse("system/*.rs"))
        results = await measure(svc, auth, patients, runs)
    finally:
        await store.close()
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    _print(size, written, patients, load_seconds, results)


def _print(
    size: int, written: int, patients: int, load_seconds: float | None, results: list[Result]
) -> None:
    rate = written / load_seconds if load_seconds else 0.0
    print(
        f"\n## {size:,} resources ({written:,} written, {patients:,} patients); "
        f"load {load_seconds or 0:.0f} s ({rate:,.0f} resources/s)\n"
    )
    print("| query | p50 ms | p95 ms | entries |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r.name} | {r.p50:.1f} | {r.p95:.1f} | {r.hits:.1f} |")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per query")
    parser.add_argument("--workers", type=int, default=max(1, multiprocessing.cpu_count()))
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the store in this folder")
    args = parser.parse_args()
    for size in args.sizes:
        keep = args.keep / str(size) if args.keep else None
        asyncio.run(run_size(size, args.runs, args.workers, keep))


if __name__ == "__main__":
    main()
