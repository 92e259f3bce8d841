"""The negative suite (issue 5, "What it must show"): each attack is refused with
the right OAuth error or FHIR/DICOMweb status, and leaves an AuditEvent an
admin can find afterwards.

One table, one test: every case runs on a fresh app seeded with two patients
(A is the signed-in patient, B the other one), their FHIR records and one
DICOM study each, stored through STOW-RS. Tokens come from the real
authorisation code flow (login and consent forms), except the forged ones.

Refusals must be audited with a failure outcome (AuditEvent.outcome 4).
A search is not refused: it is narrowed inside the query, so it answers 200
without B's records and is audited as a success naming patient A.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fhir_server.audit import AUTH_EVENTS
from fhir_server.storage.auth_port import AuthorizationCode, GrantInfo
from smart.keys import KeyRing
from smart.secrets import digest
from smart.tokens import mint_access_token
from tests.conftest import MintToken
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart

from .conftest import AUD, REDIRECT, Smart, audit_events, bearer, query_of

PATIENT_SYSTEM = "urn:radhub:patient-id"
STUDY_A, SERIES_A, SOP_A = "1.2.826.0.9.1", "1.2.826.0.9.1.1", "1.2.826.0.9.1.1.1"
STUDY_B, SERIES_B, SOP_B = "1.2.826.0.9.2", "1.2.826.0.9.2.1", "1.2.826.0.9.2.1.1"
SECRET = {"system": "http://loinc.org", "code": "secret-b"}


def _patient(id: str, family: str, mrn: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": id,
        "name": [{"family": family}],
        "identifier": [{"system": PATIENT_SYSTEM, "value": mrn}],
    }


def _obs(id: str, patient: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [extra.pop("coding", {"system": "http://loinc.org", "code": "x"})]},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


SEED: list[dict[str, Any]] = [
    _patient("pa", "Alpha", "PAT-A"),
    _patient("pb", "Bravo", "PAT-B"),
    _obs("oa", "pa"),
    # B's observation: a secret code, and a has-member link to A's one
    _obs("ob", "pb", coding=SECRET, hasMember=[{"reference": "Observation/oa"}]),
    # A's final report whose result wrongly points at B's observation
    {
        "resourceType": "DiagnosticReport",
        "id": "ra",
        "status": "final",
        "code": {"text": "CT chest"},
        "subject": {"reference": "Patient/pa"},
        "result": [{"reference": "Observation/ob"}],
    },
    {
        "resourceType": "DiagnosticReport",
        "id": "rb",
        "status": "final",
        "code": {"text": "MR head"},
        "subject": {"reference": "Patient/pb"},
    },
]


@dataclass
class World:
    """The seeded app, the SMART driver, an admin client and the patient's token."""

    app: FastAPI
    smart: Smart
    admin: httpx.AsyncClient
    mint: MintToken
    tmp: Path
    patient_token: str = ""

    async def as_patient(self, method: str, url: str) -> httpx.Response:
        return await self.smart.http.request(method, url, headers=bearer(self.patient_token))


@pytest.fixture
async def world(
    app: FastAPI, smart: Smart, client: httpx.AsyncClient, mint: MintToken, tmp_path: Path
) -> World:
    for resource in SEED:
        url = f"/fhir/{resource['resourceType']}/{resource['id']}"
        assert (await client.put(url, json=resource)).status_code == 201
    body = multipart(
        make_instance(STUDY_A, SERIES_A, SOP_A, patient_id="PAT-A", accession="ACC-A"),
        make_instance(STUDY_B, SERIES_B, SOP_B, patient_id="PAT-B", accession="ACC-B"),
    )
    stow = await client.post("/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE})
    assert stow.status_code == 200, stow.text
    await asyncio.wait_for(app.state.archive_tasks.settled(), 30)  # the deferred FHIR sync
    await smart.add_client()
    await smart.add_user("pat", "patient", "Patient/pa")
    await smart.add_user("sam", "scheduler", "Practitioner/sam")
    await smart.add_user("rita", "radiologist", "Practitioner/rita")
    world = World(app, smart, client, mint, tmp_path)
    tokens = await smart.tokens("openid fhirUser patient/*.rs", "pat")
    assert tokens["patient"] == "pa"
    world.patient_token = tokens["access_token"]
    return world


# -- what a case expects -------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    """An AuditEvent that must exist afterwards: its interaction, outcome, and
    strings its JSON must contain (entity, agent, reason)."""

    subtype: str
    outcome: str = "4"
    contains: tuple[str, ...] = ()


Attempt = Callable[["World"], Awaitable[httpx.Response]]


@dataclass(frozen=True)
class Case:
    id: str
    attempt: Attempt
    status: int
    audit: Audit
    oauth_error: str | None = None  # JSON ``error``, or the redirect's ``error``
    absent: tuple[str, ...] = field(default=())  # must not appear in the body


def patient_get(url: str) -> Attempt:
    async def attempt(w: World) -> httpx.Response:
        return await w.as_patient("GET", url)

    return attempt


# -- the OAuth flow attacks ----------------------------------------------------------


async def wrong_verifier(w: World) -> httpx.Response:
    flow = w.smart.request("patient/*.rs")
    code = await w.smart.code(flow, "pat")
    return await w.smart.exchange(flow, code, code_verifier="x" * 43)


async def missing_verifier(w: World) -> httpx.Response:
    flow = w.smart.request("patient/*.rs")
    code = await w.smart.code(flow, "pat")
    return await w.smart.exchange(flow, code, code_verifier="")


async def missing_challenge(w: World) -> httpx.Response:
    flow = w.smart.request("patient/*.rs")
    del flow.params["code_challenge"]
    return await w.smart.http.get("/auth/authorize", params=flow.params)


async def unregistered_redirect(w: World) -> httpx.Response:
    flow = w.smart.request("patient/*.rs", redirect_uri="https://evil.example.org/cb")
    return await w.smart.http.get("/auth/authorize", params=flow.params)


async def mismatched_redirect(w: World) -> httpx.Response:
    flow = w.smart.request("patient/*.rs")
    code = await w.smart.code(flow, "pat")
    return await w.smart.exchange(flow, code, redirect_uri=REDIRECT + "/other")


async def expired_code(w: World) -> httpx.Response:
    """A code past its lifetime (stored as the flow stores codes, already expired)."""
    flow = w.smart.request("patient/*.rs")
    grant = GrantInfo("g-expired", "app", "pat", "patient/*.rs", patient="pa")
    code = AuthorizationCode(
        digest("expired-code"),
        grant,
        REDIRECT,
        flow.params["code_challenge"],
        expires_at=time.time() - 1,
    )
    await w.smart.store.auth.put_code(code)
    return await w.smart.exchange(flow, "expired-code")


async def replayed_code(w: World) -> httpx.Response:
    flow = w.smart.request("patient/*.rs")
    code = await w.smart.code(flow, "pat")
    first = await w.smart.exchange(flow, code)
    assert first.status_code == 200
    replay = await w.smart.exchange(flow, code)
    # the replay also revoked the token the first redemption issued
    used = await w.smart.http.get("/fhir/Patient/pa", headers=bearer(first.json()["access_token"]))
    assert used.status_code == 401
    return replay


async def wrong_authorize_audience(w: World) -> httpx.Response:
    flow = w.smart.request("patient/*.rs", aud="https://other.example.org/fhir")
    return await w.smart.http.get("/auth/authorize", params=flow.params)


async def role_forbids_scope(w: World) -> httpx.Response:
    return await w.smart.login(w.smart.request("user/DiagnosticReport.rs"), "sam")


async def scheduler_reads_report(w: World) -> httpx.Response:
    tokens = await w.smart.tokens("user/*.rs", "sam")
    return await w.smart.http.get(
        "/fhir/DiagnosticReport/ra", headers=bearer(tokens["access_token"])
    )


async def scheduler_searches_reports(w: World) -> httpx.Response:
    tokens = await w.smart.tokens("user/*.rs", "sam")
    return await w.smart.http.get("/fhir/DiagnosticReport", headers=bearer(tokens["access_token"]))


async def introspect_as_public_client(w: World) -> httpx.Response:
    data = {"client_id": "app", "token": w.patient_token}
    return await w.smart.http.post("/auth/introspect", data=data)


async def revoke_unauthenticated(w: World) -> httpx.Response:
    data = {"client_id": "nobody", "token": w.patient_token}
    return await w.smart.http.post("/auth/revoke", data=data)


async def metrics_with_forged_token(w: World) -> httpx.Response:
    return await w.smart.http.get("/metrics", headers=bearer(tampered(w)))


async def patient_mints_launch(w: World) -> httpx.Response:
    data = {"client_id": "app", "patient": "pb"}
    return await w.smart.http.post("/auth/launch", data=data, headers=bearer(w.patient_token))


# -- forged and stale tokens ----------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return result


def expired(w: World) -> str:
    return w.mint("patient/*.rs", patient="pa", now=time.time() - 7200, ttl=3600)


def tampered(w: World) -> str:
    header, payload, signature = w.patient_token.split(".")
    claims = _unb64(payload)
    claims["patient"] = "pb"
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def wrong_audience(w: World) -> str:
    identity = w.app.state.identity
    return mint_access_token(
        w.app.state.keyring,
        issuer=identity.issuer,
        audience="https://other.example.org/fhir",
        scope="patient/*.rs",
        subject="pat",
        patient="pa",
    )


def alg_none(w: World) -> str:
    header, payload, _ = w.patient_token.split(".")
    head = _unb64(header)
    head["alg"] = "none"
    return f"{_b64(json.dumps(head).encode())}.{payload}."


def foreign_key(w: World) -> str:
    """Signed by a key this server never issued, under the server's own ``kid``."""
    theirs = KeyRing.open(w.tmp / "attacker")
    header = _unb64(w.patient_token.split(".")[0])
    token = mint_access_token(
        theirs,
        issuer=w.app.state.identity.issuer,
        audience=AUD,
        scope="patient/*.rs",
        subject="pat",
        patient="pb",
    )
    head, payload, signature = token.split(".")
    forged = {**_unb64(head), "kid": header["kid"]}
    return f"{_b64(json.dumps(forged).encode())}.{payload}.{signature}"


# -- the table ----------------------------------------------------------------------


def oauth(
    id: str, attempt: Attempt, status: int, error: str | None, subtype: str, *contains: str
) -> Case:
    """A refusal by the authorisation server (or a role), with its OAuth ``error``,
    audited with that error and ``contains`` in the record."""
    expected = (error, *contains) if error else contains
    return Case(id, attempt, status, Audit(subtype, "4", expected), error)


def token(id: str, forge: Callable[[World], str]) -> Case:
    """A FHIR read with a token the server must not honour: 401, audited as anonymous."""

    async def attempt(w: World) -> httpx.Response:
        return await w.smart.http.get("/fhir/Observation/oa", headers=bearer(forge(w)))

    return Case(id, attempt, 401, Audit("read", contains=("Observation/oa", "anonymous")))


def refused(id: str, url: str, status: int, subtype: str, *entity: str) -> Case:
    """Patient A's token refused on B's data, audited as failed, naming what was asked."""
    return Case(id, patient_get(url), status, Audit(subtype, "4", (*entity, "Patient/pa")))


def narrowed(id: str, url: str, absent: str, subtype: str = "search-type") -> Case:
    """A search narrowed to patient A: 200 without ``absent``, audited as A's success."""
    audit = Audit(subtype, "0", ("Patient/pa",))
    return Case(id, patient_get(url), 200, audit, absent=(absent,))


DICOM_B = f"/dicomweb/studies/{STUDY_B}"
INSTANCE_B = f"{DICOM_B}/series/{SERIES_B}/instances/{SOP_B}"
WADO_B = f"/dicomweb/wado?requestType=WADO&studyUID={STUDY_B}&seriesUID={SERIES_B}"
IS_B = f"ImagingStudy/{STUDY_B}"
BAD_GRANT = "invalid_grant"
BAD_CLIENT = "invalid_client"
SAM = "Practitioner/sam"

CASES: tuple[Case, ...] = (
    # the code flow
    oauth("pkce-wrong-verifier", wrong_verifier, 400, BAD_GRANT, "token", "PKCE"),
    oauth("pkce-missing-verifier", missing_verifier, 400, BAD_GRANT, "token", "PKCE"),
    oauth("pkce-missing-challenge", missing_challenge, 302, "invalid_request", "authorize", "PKCE"),
    oauth(
        "redirect-uri-unregistered", unregistered_redirect, 400, None, "authorize", "redirect_uri"
    ),
    oauth("redirect-uri-mismatch", mismatched_redirect, 400, BAD_GRANT, "token", "redirect_uri"),
    oauth("code-replayed", replayed_code, 400, BAD_GRANT, "token", "already used"),
    oauth("code-expired", expired_code, 400, BAD_GRANT, "token", "expired"),
    # client authentication at the other endpoints, and the metrics endpoint
    oauth("introspect-public-client", introspect_as_public_client, 401, BAD_CLIENT, "introspect"),
    oauth("revoke-unknown-client", revoke_unauthenticated, 401, BAD_CLIENT, "revoke"),
    oauth("metrics-forged-token", metrics_with_forged_token, 401, None, "metrics", "anonymous"),
    oauth(
        "authorize-wrong-aud", wrong_authorize_audience, 302, "invalid_request", "authorize", "aud"
    ),
    # what a role forbids
    oauth(
        "role-forbids-scope", role_forbids_scope, 302, "invalid_scope", "authorize", "invalid_scope"
    ),
    oauth(
        "role-forbids-read", scheduler_reads_report, 403, None, "read", "DiagnosticReport/ra", SAM
    ),
    oauth(
        "role-forbids-search",
        scheduler_searches_reports,
        403,
        None,
        "search-type",
        "DiagnosticReport",
        SAM,
    ),
    oauth("launch-minted-by-patient", patient_mints_launch, 403, None, "launch", "admin"),
    # tokens the server did not issue as presented
    token("token-expired", expired),
    token("token-tampered", tampered),
    token("token-wrong-audience", wrong_audience),
    token("token-alg-none", alg_none),
    token("token-foreign-key", foreign_key),
    # patient A's token on patient B's records: unknown (404), or no such access (403)
    refused("read-patient", "/fhir/Patient/pb", 404, "read", "Patient/pb"),
    refused("read-observation", "/fhir/Observation/ob", 404, "read", "Observation/ob"),
    refused("read-report", "/fhir/DiagnosticReport/rb", 404, "read", "DiagnosticReport/rb"),
    refused("vread", "/fhir/Observation/ob/_history/1", 404, "vread", "Observation/ob"),
    refused(
        "history-instance",
        "/fhir/Observation/ob/_history",
        404,
        "history-instance",
        "Observation/ob",
    ),
    refused("history-type", "/fhir/Observation/_history", 403, "history-type", "Observation"),
    refused("history-system", "/fhir/_history", 403, "history-system"),
    refused("everything", "/fhir/Patient/pb/$everything", 404, "operation", "Patient/pb"),
    refused("dicomweb-metadata", f"{DICOM_B}/metadata", 404, "read", IS_B),
    refused("dicomweb-retrieve", f"{DICOM_B}/series/{SERIES_B}", 404, "read", IS_B),
    refused("dicomweb-instance-metadata", f"{INSTANCE_B}/metadata", 404, "read", IS_B),
    refused("dicomweb-rendered", f"{INSTANCE_B}/rendered", 404, "read", IS_B),
    refused("dicomweb-frames", f"{INSTANCE_B}/frames/1", 404, "read", IS_B),
    refused("dicomweb-wado-uri", f"{WADO_B}&objectUID={SOP_B}", 404, "read", IS_B),
    # ... and searches narrowed inside the query: 200 without B's records
    narrowed("search-by-subject", "/fhir/Observation?subject=Patient/pb", "Observation/ob"),
    narrowed("search-by-id", "/fhir/Patient?_id=pb", "Patient/pb"),
    narrowed(
        "search-compartment", "/fhir/Patient/pb/Observation", "Observation/ob", "search-compartment"
    ),
    narrowed(
        "include", "/fhir/DiagnosticReport?_include=DiagnosticReport:result", "Observation/ob"
    ),
    narrowed(
        "revinclude", "/fhir/Observation?_revinclude=Observation:has-member", "Observation/ob"
    ),
    narrowed("chain", "/fhir/Observation?subject:Patient.name=Bravo", "Observation/ob"),
    narrowed("chain-probe", "/fhir/DiagnosticReport?result.code=secret-b", "DiagnosticReport/ra"),
    narrowed("has-probe", "/fhir/Patient?_has:Observation:subject:code=secret-b", "Patient/pb"),
    narrowed("dicomweb-qido-patient-id", "/dicomweb/studies?PatientID=PAT-B", STUDY_B),
    narrowed("dicomweb-qido-study-uid", f"/dicomweb/studies?StudyInstanceUID={STUDY_B}", STUDY_B),
    narrowed("dicomweb-qido-series", f"{DICOM_B}/series", SERIES_B),
    narrowed("dicomweb-qido-instances", "/dicomweb/instances?PatientID=PAT-B", SOP_B),
)


async def audited(w: World, audit: Audit) -> list[dict[str, Any]]:
    """The AuditEvents matching ``audit``, as an admin finds them (waiting for the writer)."""
    query = {"subtype": audit.subtype, "outcome": audit.outcome}
    return await audit_events(w.admin, query, *audit.contains)


def _shown(response: httpx.Response) -> str:
    """What a response reveals: a Bundle's entries as ``Type/id``, else the raw body."""
    if response.headers.get("content-type", "").startswith("application/fhir+json"):
        body = response.json()
        if body.get("resourceType") == "Bundle":
            resources = [e["resource"] for e in body.get("entry", [])]
            return " ".join(f"{r['resourceType']}/{r['id']}" for r in resources)
    return response.text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_refused_and_audited(world: World, case: Case) -> None:
    response = await case.attempt(world)
    assert response.status_code == case.status, response.text
    if case.oauth_error is not None:
        if response.status_code == 302:
            answer = query_of(response.headers["location"])
            assert response.headers["location"].startswith(REDIRECT + "?")
        else:
            answer = response.json()
            assert response.headers["cache-control"] == "no-store"
        assert answer["error"] == case.oauth_error, answer
    if response.status_code == 302:
        assert "code" not in query_of(response.headers["location"])
    if response.status_code == 401:
        challenge = response.headers["www-authenticate"]
        # a resource answers RFC 6750's challenge; the OAuth endpoints RFC 6749 §5.2's
        expected = (
            'Basic realm="radhub"'
            if case.oauth_error
            else 'Bearer realm="radhub", error="invalid_token"'
        )
        assert challenge.startswith(expected), challenge
    shown = _shown(response)
    for leaked in case.absent:
        assert leaked not in shown, response.text
    events = await audited(world, case.audit)
    assert events, f"no AuditEvent matching {case.audit}"
    codes = AUTH_EVENTS.get(case.audit.subtype)
    if codes is not None:  # the authorisation server's events carry DICOM/IHE codes
        assert all(e["type"] == codes.type for e in events), events
        assert all(e["subtype"][0] == codes.subtype for e in events), events


async def test_the_probes_find_b_for_an_admin(world: World) -> None:
    """The probes in the table would reveal B's data if they were not narrowed."""
    probes = {
        "/fhir/DiagnosticReport?result.code=secret-b": "DiagnosticReport/ra",
        "/fhir/Patient?_has:Observation:subject:code=secret-b": "Patient/pb",
        "/fhir/Observation?_revinclude=Observation:has-member": "Observation/ob",
    }
    for url, found in probes.items():
        response = await world.admin.get(url)
        assert found in _shown(response).split(), (url, response.text)
    qido = await world.admin.get("/dicomweb/studies?PatientID=PAT-B")
    assert STUDY_B in qido.text


async def test_the_same_token_reaches_patient_a(world: World) -> None:
    """The controls: each path the table refuses for B answers for A, so the
    refusals above are the policy at work, not a broken route."""
    own = [
        "/fhir/Patient/pa",
        "/fhir/Observation/oa",
        "/fhir/Observation/oa/_history/1",
        "/fhir/Observation/oa/_history",
        f"/dicomweb/studies/{STUDY_A}/metadata",
        f"/dicomweb/studies/{STUDY_A}/series/{SERIES_A}",
        f"/dicomweb/studies/{STUDY_A}/series/{SERIES_A}/instances/{SOP_A}/rendered",
    ]
    for url in own:
        response = await world.as_patient("GET", url)
        assert response.status_code == 200, (url, response.text)
    qido = await world.as_patient("GET", "/dicomweb/studies?PatientID=PAT-A")
    assert STUDY_A in qido.text
    included = await world.as_patient(
        "GET", "/fhir/DiagnosticReport?_include=DiagnosticReport:result"
    )
    assert _shown(included) == "DiagnosticReport/ra"
    chained = await world.as_patient("GET", "/fhir/Observation?subject:Patient.name=Alpha")
    assert _shown(chained) == "Observation/oa"


async def test_everything_answers_for_a_role_capped_patient(world: World) -> None:
    response = await world.as_patient("GET", "/fhir/Patient/pa/$everything")
    assert response.status_code == 200, response.text
