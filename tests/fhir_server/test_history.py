"""History at instance, type and system level, with _since, _at, _count and paging.
See https://hl7.org/fhir/R4/http.html#history"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx

FHIR = {"Content-Type": "application/fhir+json"}
BASE = "http://radhub.test"


async def _all_pages(client: httpx.AsyncClient, url: str) -> tuple[list[dict[str, Any]], int]:
    """Follow ``next`` links to the end: (entries, pages)."""
    entries: list[dict[str, Any]] = []
    pages = 0
    seen: set[str] = set()
    while url:
        assert url not in seen, "paging loops"
        seen.add(url)
        r = await client.get(url.removeprefix(BASE))
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["type"] == "history"
        pages += 1
        entries += page.get("entry", [])
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), "")
    return entries, pages


async def _versions(client: httpx.AsyncClient, rtype: str, n: int) -> tuple[str, list[str]]:
    """Create a resource and update it to ``n`` versions; returns its id and the
    lastUpdated of each version."""
    r = await client.post(f"/fhir/{rtype}", json=_body(rtype, 1), headers=FHIR)
    assert r.status_code == 201
    rid = r.json()["id"]
    stamps = [r.json()["meta"]["lastUpdated"]]
    for v in range(2, n + 1):
        r = await client.put(
            f"/fhir/{rtype}/{rid}", json={**_body(rtype, v), "id": rid}, headers=FHIR
        )
        assert r.status_code == 200
        stamps.append(r.json()["meta"]["lastUpdated"])
    return rid, stamps


def _body(rtype: str, n: int) -> dict[str, Any]:
    if rtype == "Patient":
        return {"resourceType": "Patient", "name": [{"family": f"v{n}"}]}
    return {"resourceType": "Practitioner", "name": [{"family": f"v{n}"}]}


async def test_instance_history_pages_to_the_end(client: httpx.AsyncClient) -> None:
    rid, _ = await _versions(client, "Patient", 7)
    first = (await client.get(f"/fhir/Patient/{rid}/_history?_count=3")).json()
    assert first["total"] == 7
    assert len(first["entry"]) == 3
    entries, pages = await _all_pages(client, f"/fhir/Patient/{rid}/_history?_count=3")
    assert pages == 3
    versions = [e["resource"]["meta"]["versionId"] for e in entries]
    assert versions == ["7", "6", "5", "4", "3", "2", "1"]
    assert entries[-1]["request"] == {"method": "POST", "url": "Patient"}
    assert entries[0]["request"] == {"method": "PUT", "url": f"Patient/{rid}"}
    assert all(e["fullUrl"] == f"{BASE}/fhir/Patient/{rid}" for e in entries)


async def test_instance_history_of_unknown_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/fhir/Patient/nobody/_history")).status_code == 404


async def test_since_and_at(client: httpx.AsyncClient) -> None:
    rid, stamps = await _versions(client, "Patient", 4)
    url = f"/fhir/Patient/{rid}/_history"
    since = (await client.get(f"{url}?_since={quote(stamps[2])}")).json()
    assert [e["resource"]["meta"]["versionId"] for e in since["entry"]] == ["4", "3"]

    at = (await client.get(f"{url}?_at={quote(stamps[1])}")).json()
    assert [e["resource"]["meta"]["versionId"] for e in at["entry"]] == ["2"]
    before_all = (await client.get(f"{url}?_at=2000-01-01")).json()
    assert before_all.get("entry", []) == []

    future = (await client.get(f"{url}?_since=2999-01-01T00:00:00Z")).json()
    assert future.get("entry", []) == []
    assert (await client.get(f"{url}?_since=yesterday")).status_code == 400
    assert (await client.get(f"{url}?_count=-1")).status_code == 400
    assert (await client.get(f"{url}?_bogus=1")).status_code == 400


async def test_type_history(client: httpx.AsyncClient) -> None:
    a, _ = await _versions(client, "Patient", 2)
    b, _ = await _versions(client, "Patient", 3)
    await _versions(client, "Practitioner", 2)
    await client.delete(f"/fhir/Patient/{a}")
    entries, pages = await _all_pages(client, "/fhir/Patient/_history?_count=2")
    assert pages == 3
    assert len(entries) == 6
    assert {e["fullUrl"].rsplit("/", 2)[-2] for e in entries} == {"Patient"}
    assert entries[0]["request"]["method"] == "DELETE"
    assert entries[0]["response"]["status"].startswith("410")
    assert sorted(
        e["resource"]["meta"]["versionId"] for e in entries if e["fullUrl"].endswith(b)
    ) == ["1", "2", "3"]


async def test_system_history(client: httpx.AsyncClient) -> None:
    await _versions(client, "Patient", 2)
    mark = (await client.get("/fhir/_history?_count=1")).json()["entry"][0]
    since = mark["response"]["lastModified"]
    await asyncio.sleep(0.002)
    await _versions(client, "Practitioner", 3)
    entries, _ = await _all_pages(client, f"/fhir/_history?_count=2&_since={quote(since)}")
    types = [e["fullUrl"].rsplit("/", 2)[-2] for e in entries]
    # the Patient version at `since` itself, then the three Practitioner versions
    assert types.count("Practitioner") == 3
    everything, _ = await _all_pages(client, "/fhir/_history?_count=100")
    kinds = {e["fullUrl"].rsplit("/", 2)[-2] for e in everything}
    assert {"Patient", "Practitioner"} <= kinds


async def test_history_links_are_absolute_and_keep_params(client: httpx.AsyncClient) -> None:
    rid, _ = await _versions(client, "Patient", 3)
    page = (await client.get(f"/fhir/Patient/{rid}/_history?_count=1")).json()
    links = {link["relation"]: link["url"] for link in page["link"]}
    assert links["self"].startswith(f"{BASE}/fhir/Patient/{rid}/_history")
    assert links["next"].startswith(f"{BASE}/fhir/Patient/{rid}/_history")
    assert "_count=1" in links["next"]
    last = (await client.get(f"/fhir/Patient/{rid}/_history?_count=3")).json()
    assert "next" not in {link["relation"] for link in last["link"]}
