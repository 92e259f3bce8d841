"""EHR launch (a launch value bound to client, patient, encounter) and standalone
launch (the patient picker; a patient user gets their own record)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from smart.launch import Launches, UnknownClient

from .conftest import Smart, bearer, query_of

OBS = "http://terminology.hl7.org/CodeSystem/observation-category"


def patient(pid: str, family: str) -> dict[str, object]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}


def report(rid: str, pid: str, status: str) -> dict[str, object]:
    return {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "status": status,
        "code": {"text": "CT chest"},
        "subject": {"reference": f"Patient/{pid}"},
    }


async def seed(client: httpx.AsyncClient) -> None:
    for body in (
        patient("p1", "Doe"),
        patient("p2", "Roe"),
        report("r1", "p1", "final"),
        report("r2", "p1", "preliminary"),
        report("r3", "p2", "final"),
    ):
        path = f"/fhir/{body['resourceType']}/{body['id']}"
        assert (await client.put(path, json=body)).status_code in (200, 201)


async def test_ehr_launch_binds_patient_and_encounter(app: FastAPI, smart: Smart) -> None:
    await smart.add_client()
    await smart.add_user("rita", "radiologist")
    launch = await Launches(smart.store.auth).mint("app", "p1", "e1")
    body = await smart.tokens(
        "launch patient/*.rs openid fhirUser", "rita", params={"launch": launch}
    )
    assert (body["patient"], body["encounter"]) == ("p1", "e1")
    assert body["need_patient_banner"] is False


async def test_launch_of_another_client_is_refused(smart: Smart) -> None:
    await smart.add_client()
    await smart.add_client("other", redirect_uris=("https://other/cb",))
    launch = await Launches(smart.store.auth).mint("other", "p1")
    flow = smart.request("launch patient/*.rs", launch=launch)
    response = await smart.http.get("/auth/authorize", params=flow.params)
    assert query_of(response.headers["location"])["error"] == "invalid_request"


async def test_launch_api_needs_an_authorised_caller(
    smart: Smart, mint: Callable[..., str]
) -> None:
    await smart.add_client()
    make = mint
    data = {"client_id": "app", "patient": "p1"}
    refused = await smart.http.post(
        "/auth/launch", data=data, headers=bearer(make("user/Patient.rs"))
    )
    assert refused.status_code == 403
    # an admin's token only if it grants user-level Patient reads: an app an admin
    # signs in to with narrow scopes cannot mint launches by the role alone
    narrow = make("patient/Observation.rs", roles=["admin"], patient="p1")
    assert (
        await smart.http.post("/auth/launch", data=data, headers=bearer(narrow))
    ).status_code == 403
    admin = make("user/Patient.rs", roles=["admin"])
    assert (
        await smart.http.post("/auth/launch", data=data, headers=bearer(admin))
    ).status_code == 200
    made = await smart.http.post(
        "/auth/launch", data=data, headers=bearer(make("system/Patient.rs"))
    )
    assert made.status_code == 200
    resolved = await Launches(smart.store.auth).resolve(made.json()["launch"], "app")
    assert resolved is not None and resolved.patient == "p1"


async def test_a_launch_for_an_unregistered_client_is_refused(
    smart: Smart, mint: Callable[..., str]
) -> None:
    """It could never be used; ``radhub launch`` refused it, the API minted it."""
    ehr = bearer(mint("system/Patient.rs"))
    data = {"client_id": "nobody", "patient": "p1"}
    refused = await smart.http.post("/auth/launch", data=data, headers=ehr)
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "invalid_request",
        "error_description": "unknown client nobody",
    }
    with pytest.raises(UnknownClient):
        await Launches(smart.store.auth).mint("nobody", "p1")


async def test_standalone_launch_picks_a_patient(smart: Smart, client: httpx.AsyncClient) -> None:
    await seed(client)
    await smart.add_client()
    await smart.add_user("rita", "radiologist")
    flow = smart.request("launch/patient patient/*.rs")
    assert (await smart.login(flow, "rita")).status_code == 200
    assert flow.consent is not None and sorted(flow.consent.options) == ["p1", "p2"]
    unknown = await smart.approve(flow, patient="nobody")
    assert unknown.status_code == 200 and "Pick a patient" in unknown.text
    code = (await smart.approve(flow, patient="p2")).headers["location"]
    body = (await smart.exchange(flow, query_of(code)["code"])).json()
    assert body["patient"] == "p2" and body["need_patient_banner"] is True
    token = bearer(body["access_token"])
    assert (await smart.http.get("/fhir/DiagnosticReport/r3", headers=token)).status_code == 200
    assert (await smart.http.get("/fhir/DiagnosticReport/r1", headers=token)).status_code == 404


async def test_patient_user_gets_own_record_and_final_reports(
    smart: Smart, client: httpx.AsyncClient
) -> None:
    await seed(client)
    await smart.add_client()
    await smart.add_user("jo", "patient", "Patient/p1")
    flow = smart.request("launch/patient patient/*.rs user/*.rs")
    await smart.login(flow, "jo")
    assert flow.consent is not None and flow.consent.options == []  # no picker: own record
    code = (await smart.approve(flow)).headers["location"]
    body = (await smart.exchange(flow, query_of(code)["code"])).json()
    assert body["patient"] == "p1"
    token = bearer(body["access_token"])
    found = await smart.http.get("/fhir/DiagnosticReport", headers=token)
    assert [e["resource"]["id"] for e in found.json().get("entry", [])] == ["r1"]
    for path in ("/fhir/DiagnosticReport/r2", "/fhir/DiagnosticReport/r3", "/fhir/Patient/p2"):
        assert (await smart.http.get(path, headers=token)).status_code == 404, path
    assert (await smart.http.get("/fhir/Patient/p1", headers=token)).status_code == 200
