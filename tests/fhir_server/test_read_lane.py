"""The plain read's short lane answers exactly as the route would, and leaves
everything else to the route (``fhir_server/http/read_lane.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fhir_server.http.read_lane import ReadLane
from fhir_server.http.security_headers import SecurityHeaders
from tests.conftest import BASE, MintToken

PATIENT = {"resourceType": "Patient", "name": [{"family": "Lane", "given": ["Plain"]}]}


@pytest.fixture
def lane(app: FastAPI) -> ReadLane:
    headed = app._lane  # type: ignore[attr-defined]
    assert isinstance(headed, SecurityHeaders)
    found = headed.app
    assert isinstance(found, ReadLane)
    return found


@pytest.fixture
def route_answers(lane: ReadLane, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records each request the lane hands to the route (by path and query)."""
    handed: list[str] = []
    inner = lane.app

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        query = scope["query_string"].decode()
        handed.append(scope["path"] + (f"?{query}" if query else ""))
        await inner(scope, receive, send)

    monkeypatch.setattr(lane, "app", counting)
    yield handed


def route_only(lane: ReadLane, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the lane claims nothing: every request is the route's."""
    monkeypatch.setattr(lane, "_target", lambda scope: None)


def raw(response: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return response.status_code, list(response.headers.raw), response.content


async def created(client: httpx.AsyncClient) -> str:
    response = await client.post("/fhir/Patient", json=PATIENT)
    assert response.status_code == 201
    return str(response.json()["id"])


async def test_a_plain_read_is_the_lanes_and_byte_for_byte_the_routes(
    client: httpx.AsyncClient,
    lane: ReadLane,
    route_answers: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    id = await created(client)
    await client.put(f"/fhir/Patient/{id}", json={**PATIENT, "id": id, "gender": "other"})
    route_answers.clear()
    by_lane = await client.get(f"/fhir/Patient/{id}")
    assert route_answers == []  # the lane answered
    assert by_lane.status_code == 200
    assert by_lane.headers["etag"] == 'W/"2"'
    assert by_lane.json()["gender"] == "other"

    route_only(lane, monkeypatch)
    by_route = await client.get(f"/fhir/Patient/{id}")
    assert route_answers == [f"/fhir/Patient/{id}"]
    assert raw(by_lane) == raw(by_route)


# Requests that change the answer, or are not plain reads: the route's.
HANDED_ON: dict[str, tuple[str, dict[str, str]]] = {
    "query string": ("/fhir/Patient/{id}?_summary=true", {}),
    "_format": ("/fhir/Patient/{id}?_format=json", {}),
    "If-None-Match": ("/fhir/Patient/{id}", {"If-None-Match": 'W/"1"'}),
    "If-Modified-Since": (
        "/fhir/Patient/{id}",
        {"If-Modified-Since": "Tue, 01 Dec 2099 00:00:00 GMT"},
    ),
    "browser Origin": ("/fhir/Patient/{id}", {"Origin": "https://viewer.example"}),
    "XML only": ("/fhir/Patient/{id}", {"Accept": "application/fhir+xml"}),
    "type history": ("/fhir/Patient/_history", {}),
    "not an id": ("/fhir/Patient/bad$id", {}),
    "unknown id": ("/fhir/Patient/no-such-patient", {}),
    "unknown type": ("/fhir/Spaceship/{id}", {}),
    "no token": ("/fhir/Patient/{id}", {"Authorization": ""}),
    "bad token": ("/fhir/Patient/{id}", {"Authorization": "Bearer not.a.jwt"}),
    "vread": ("/fhir/Patient/{id}/_history/1", {}),
}


@pytest.mark.parametrize(("path", "headers"), HANDED_ON.values(), ids=HANDED_ON.keys())
async def test_everything_but_a_plain_read_is_the_routes(
    client: httpx.AsyncClient,
    route_answers: list[str],
    path: str,
    headers: dict[str, str],
) -> None:
    id = await created(client)
    target = path.format(id=id)
    route_answers.clear()
    response = await client.get(target, headers=headers)
    assert route_answers == [target]
    assert response.status_code != 500


async def test_two_authorization_headers_are_the_routes(
    client: httpx.AsyncClient,
    anon: httpx.AsyncClient,
    mint: MintToken,
    route_answers: list[str],
) -> None:
    id = await created(client)
    route_answers.clear()
    twice = [("Authorization", "Bearer not.a.jwt"), ("Authorization", f"Bearer {mint()}")]
    request = anon.build_request("GET", f"/fhir/Patient/{id}", headers=twice)
    response = await anon.send(request)
    assert route_answers == [f"/fhir/Patient/{id}"]
    assert response.status_code == 401  # the route goes by the first


async def test_a_deleted_resource_and_a_wrong_patient_get_the_routes_answers(
    client: httpx.AsyncClient, app: FastAPI, mint: MintToken, route_answers: list[str]
) -> None:
    gone, other = await created(client), await created(client)
    await client.delete(f"/fhir/Patient/{gone}")
    route_answers.clear()
    assert (await client.get(f"/fhir/Patient/{gone}")).status_code == 410
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {mint('patient/*.rs', patient=gone)}"}
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as patient:
        refused = await patient.get(f"/fhir/Patient/{other}")
    assert refused.status_code in (403, 404)
    assert route_answers == [f"/fhir/Patient/{gone}", f"/fhir/Patient/{other}"]


def _what_matters(event: dict[str, Any]) -> dict[str, Any]:
    """An AuditEvent without what differs between any two events (id, time, chain)."""
    return {k: v for k, v in event.items() if k not in ("id", "meta", "recorded", "extension")}


async def test_the_lane_audits_and_counts_a_read_as_the_route_does(
    client: httpx.AsyncClient,
    app: FastAPI,
    lane: ReadLane,
    flush_audit: Callable[[], Awaitable[None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    id = await created(client)
    label = 'method="GET",route="/fhir/{resource_type}/{id}",status="200"'

    async def reads_counted() -> float:
        text = (await client.get("/metrics")).text
        line = next((x for x in text.splitlines() if label in x and "_total" in x), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = await reads_counted()
    await client.get(f"/fhir/Patient/{id}")
    assert await reads_counted() == before + 1
    route_only(lane, monkeypatch)
    await client.get(f"/fhir/Patient/{id}")
    assert await reads_counted() == before + 2

    await flush_audit()
    found = await client.get(
        "/fhir/AuditEvent", params={"entity": f"Patient/{id}", "subtype": "read"}
    )
    events = [e["resource"] for e in found.json().get("entry", [])]
    assert len(events) == 2
    assert _what_matters(events[0]) == _what_matters(events[1])
    assert events[0]["outcome"] == "0"


async def test_the_lane_answers_only_once_the_audit_trail_has_room(
    client: httpx.AsyncClient, lane: ReadLane, mint: MintToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like the route, it waits for the trail's backpressure before answering:
    a client gets its answer, and sends its next request, only then."""
    id = await created(client)
    room = asyncio.Event()
    audited = lane.fhir.audited

    async def held(*args: Any) -> None:
        await room.wait()
        await audited(*args)

    monkeypatch.setattr(lane.fhir, "audited", held)
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "method": "GET",
        "path": f"/fhir/Patient/{id}",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {mint()}".encode())],
        "client": ("127.0.0.1", 40000),
    }
    answering = asyncio.ensure_future(lane(scope, receive, send))
    await asyncio.sleep(0.1)
    assert sent == []
    room.set()
    await asyncio.wait_for(answering, 5)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 200
