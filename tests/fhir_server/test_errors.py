"""Bad input gets the right status and an OperationOutcome, and the server stays up.
See https://hl7.org/fhir/R4/http.html#Status-Codes"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fhir_server.app import create_app
from fhir_server.settings import Settings

FHIR = {"Content-Type": "application/fhir+json"}
PATIENT = {"resourceType": "Patient", "name": [{"family": "Doe"}]}


def _outcome(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"], body
    assert all(i["severity"] in ("fatal", "error", "warning", "information") for i in body["issue"])
    return body


async def _still_up(client: httpx.AsyncClient) -> None:
    r = await client.post("/fhir/Patient", json=PATIENT, headers=FHIR)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    "raw",
    [b"{", b"", b"not json", b'{"resourceType": "Patient",}', b"\xff\xfe", b"[1,2"],
    ids=["open", "empty", "text", "trailing-comma", "not-utf8", "array"],
)
async def test_malformed_json_is_400(client: httpx.AsyncClient, raw: bytes) -> None:
    for method, url in (("POST", "/fhir/Patient"), ("PUT", "/fhir/Patient/x"), ("POST", "/fhir")):
        r = await client.request(method, url, content=raw, headers=FHIR)
        _outcome(r, 400)
    await _still_up(client)


async def test_json_that_is_not_a_resource_is_400(client: httpx.AsyncClient) -> None:
    for body in ([], 1, "x", None, {"no": "type"}):
        _outcome(await client.post("/fhir/Patient", json=body, headers=FHIR), 400)
        _outcome(await client.put("/fhir/Patient/x", json=body, headers=FHIR), 400)
    await _still_up(client)


async def test_unknown_resource_type_is_404(client: httpx.AsyncClient) -> None:
    _outcome(await client.get("/fhir/Foo/1"), 404)
    _outcome(await client.get("/fhir/Foo"), 404)
    _outcome(await client.get("/fhir/Foo/_history"), 404)
    _outcome(await client.get("/fhir/Foo/1/_history/1"), 404)
    _outcome(await client.post("/fhir/Foo", json={"resourceType": "Foo"}, headers=FHIR), 404)
    _outcome(
        await client.put("/fhir/Foo/1", json={"resourceType": "Foo", "id": "1"}, headers=FHIR),
        404,
    )
    _outcome(await client.delete("/fhir/Foo/1"), 404)
    # a real FHIR type this server does not serve
    _outcome(await client.get("/fhir/Medication/1"), 404)
    await _still_up(client)


async def test_invalid_resource_is_400_with_issues(client: httpx.AsyncClient) -> None:
    bad = {"resourceType": "Patient", "gender": 12, "birthDate": "yesterday", "bogus": True}
    body = _outcome(await client.post("/fhir/Patient", json=bad, headers=FHIR), 400)
    text = " ".join(i.get("diagnostics", "") for i in body["issue"])
    assert "gender" in text and "birthDate" in text
    assert len(body["issue"]) >= 3
    # a missing required element (ServiceRequest.intent, status, subject)
    _outcome(
        await client.post(
            "/fhir/ServiceRequest", json={"resourceType": "ServiceRequest"}, headers=FHIR
        ),
        400,
    )
    # a contained resource of an unknown type (found by the hypothesis tests: the
    # model library raised KeyError, which was a 500)
    for contained in ({"resourceType": ""}, {"resourceType": "Nope"}):
        unknown = {"resourceType": "Appointment", "contained": [contained]}
        body = _outcome(await client.post("/fhir/Appointment", json=unknown, headers=FHIR), 400)
        assert "unknown resourceType" in body["issue"][0]["diagnostics"]
    # body type differs from the URL
    _outcome(await client.post("/fhir/Practitioner", json=PATIENT, headers=FHIR), 400)
    # an invalid id in the URL or body
    _outcome(
        await client.put("/fhir/Patient/a_b", json={**PATIENT, "id": "a_b"}, headers=FHIR), 400
    )
    await _still_up(client)


async def test_update_body_id_must_match_url(client: httpx.AsyncClient) -> None:
    _outcome(await client.put("/fhir/Patient/a", json={**PATIENT, "id": "b"}, headers=FHIR), 400)
    _outcome(await client.put("/fhir/Patient/a", json=PATIENT, headers=FHIR), 400)
    assert (await client.get("/fhir/Patient/a")).status_code == 404
    assert (await client.get("/fhir/Patient/b")).status_code == 404


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/fhir+xml", None, "image/png"]
)
async def test_wrong_content_type_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    raw = b'{"resourceType": "Patient"}'
    _outcome(await client.post("/fhir/Patient", content=raw, headers=headers), 415)
    _outcome(await client.put("/fhir/Patient/x", content=raw, headers=headers), 415)
    _outcome(await client.post("/fhir", content=raw, headers=headers), 415)
    _outcome(await client.patch("/fhir/Patient/x", content=b"[]", headers=headers), 415)
    await _still_up(client)


async def test_json_content_types_are_accepted(client: httpx.AsyncClient) -> None:
    for media in (
        "application/json",
        "application/fhir+json; charset=utf-8",
        "application/json+fhir",
    ):
        r = await client.post("/fhir/Patient", json=PATIENT, headers={"Content-Type": media})
        assert r.status_code == 201, (media, r.text)


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        ("application/fhir+xml", None),
        ("text/html", None),
        ("application/xml;q=1, application/json;q=0", None),
        (None, "xml"),
        (None, "application/fhir+xml"),
        ("application/fhir+json", "turtle"),
    ],
)
async def test_unacceptable_format_is_406(
    client: httpx.AsyncClient, accept: str | None, fmt: str | None
) -> None:
    rid = (await client.post("/fhir/Patient", json=PATIENT, headers=FHIR)).json()["id"]
    headers = {"Accept": accept} if accept else {}
    params = {"_format": fmt} if fmt else {}
    _outcome(await client.get(f"/fhir/Patient/{rid}", headers=headers, params=params), 406)
    _outcome(await client.get("/fhir/Patient", headers=headers, params=params), 406)
    _outcome(await client.get("/fhir/metadata", headers=headers, params=params), 406)
    await _still_up(client)


async def test_acceptable_formats(client: httpx.AsyncClient) -> None:
    rid = (await client.post("/fhir/Patient", json=PATIENT, headers=FHIR)).json()["id"]
    for accept, fmt in (
        ("application/fhir+json", None),
        ("application/json", None),
        ("*/*", None),
        ("text/html, application/fhir+json;q=0.9", None),
        ("application/fhir+xml", "json"),  # _format overrides Accept
        (None, "application/fhir+json"),
    ):
        headers = {"Accept": accept} if accept else {}
        params = {"_format": fmt} if fmt else {}
        r = await client.get(f"/fhir/Patient/{rid}", headers=headers, params=params)
        assert r.status_code == 200, (accept, fmt, r.text)


async def test_oversized_body_is_413(tmp_path: Any, mint: Any) -> None:
    settings = Settings(
        data_dir=tmp_path / "small",
        base_url="http://radhub.test",
        max_body_bytes=2048,
        audit_process=False,
    )
    application: FastAPI = create_app(settings)
    async with application.router.lifespan_context(application):
        from smart.tokens import mint_access_token

        token = mint_access_token(
            application.state.keyring,
            issuer=application.state.identity.issuer,
            audience=application.state.identity.audience,
            scope="system/*.cruds",
            subject="tester",
        )
        transport = httpx.ASGITransport(app=application)
        headers = {"Authorization": f"Bearer {token}", **FHIR}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://radhub.test", headers=headers
        ) as c:
            big = {
                **PATIENT,
                "text": {"status": "generated", "div": "<div>" + "x" * 4096 + "</div>"},
            }
            _outcome(await c.post("/fhir/Patient", json=big), 413)
            _outcome(await c.put("/fhir/Patient/big", json={**big, "id": "big"}), 413)
            _outcome(
                await c.post(
                    "/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [big] * 4}
                ),
                413,
            )

            # without a Content-Length (chunked), the limit holds while streaming
            async def chunks() -> Any:
                for _ in range(10):
                    yield b" " * 1024
                yield b'{"resourceType": "Patient"}'

            _outcome(await c.post("/fhir/Patient", content=chunks()), 413)
            assert (await c.post("/fhir/Patient", json=PATIENT)).status_code == 201


async def test_method_not_allowed_and_unknown_paths(client: httpx.AsyncClient) -> None:
    r = await client.request("PATCH", "/fhir/Patient")
    assert r.status_code in (404, 405)
    r = await client.get("/fhir/Patient/1/_history/1/extra/bits")
    assert r.status_code in (400, 404)
    await _still_up(client)


async def test_bad_search_and_history_parameters_are_400(client: httpx.AsyncClient) -> None:
    _outcome(await client.get("/fhir/Patient?_count=abc"), 400)
    _outcome(await client.get("/fhir/Patient/_history?_count=abc"), 400)
    _outcome(await client.get("/fhir/Patient/_history?_at=nope"), 400)
    _outcome(await client.get("/fhir/_history?_since=2020-13-45"), 400)
    r = await client.get("/fhir/Patient?bogus=1", headers={"Prefer": "handling=strict"})
    _outcome(r, 400)
    # lenient by default: the unknown parameter is reported, not fatal
    r = await client.get("/fhir/Patient?bogus=1")
    assert r.status_code == 200
    await _still_up(client)
