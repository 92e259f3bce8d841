"""STOW-RS through the real ASGI stack (PS3.18 §10.5)."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pydicom
import pytest
from fastapi import FastAPI

from dicomweb.warning_headers import MAX_WARNINGS
from tests.dicomweb.conftest import bundled
from tests.dicomweb.dicom_data import BOUNDARY, STOW_TYPE, make_instance, multipart

FAILED, REFERENCED, REASON, SOP = "00081198", "00081199", "00081197", "00081155"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


async def stow(
    client: httpx.AsyncClient, body: bytes, path: str = "/dicomweb/studies"
) -> httpx.Response:
    return await client.post(path, content=body, headers={"Content-Type": STOW_TYPE})


async def stow_traced(
    client: httpx.AsyncClient, body: AsyncIterator[bytes]
) -> tuple[httpx.Response, int]:
    """STOW-RS of a streamed ``body``, and the peak of Python memory allocated meanwhile."""
    tracemalloc.start()
    try:
        response = await client.post(
            "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return response, peak


def reasons(response: httpx.Response) -> list[int]:
    return [item[REASON]["Value"][0] for item in response.json()[FAILED].get("Value", [])]


async def test_all_stored_is_200_with_retrieve_urls(client: httpx.AsyncClient) -> None:
    body = multipart(
        make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1"),
        make_instance("1.2.3", "1.2.3.1", "1.2.3.1.2"),
    )
    response = await stow(client, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    refs = response.json()[REFERENCED]["Value"]
    assert [r[SOP]["Value"][0] for r in refs] == ["1.2.3.1.1", "1.2.3.1.2"]
    assert refs[0]["00081190"]["Value"][0].endswith(
        "/studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.1"
    )
    assert "Value" not in response.json()[FAILED]


async def test_partial_failure_is_202_and_total_failure_409(client: httpx.AsyncClient) -> None:
    partial = await stow(
        client, multipart(make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1"), b"not dicom")
    )
    assert partial.status_code == 202
    assert reasons(partial) == [0xC000]
    truncated = make_instance("1.2.3", "1.2.3.1", "1.2.3.1.9")[:-40]
    failed = await stow(client, multipart(b"nope", truncated))
    assert failed.status_code == 409
    assert reasons(failed) == [0xC000, 0xC000]


async def test_wrong_study_in_path_fails_that_instance(client: httpx.AsyncClient) -> None:
    body = multipart(
        make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1"), make_instance("9.9", "9.9.1", "9.9.1.1")
    )
    response = await stow(client, body, "/dicomweb/studies/1.2.3")
    assert response.status_code == 202
    failed = response.json()[FAILED]["Value"]
    assert [(f[SOP]["Value"][0], f[REASON]["Value"][0]) for f in failed] == [("9.9.1.1", 0xA900)]
    missing = await client.get("/dicomweb/studies/9.9/metadata")
    assert missing.status_code == 404


async def test_duplicate_and_conflicting_sop_instance(client: httpx.AsyncClient) -> None:
    original = make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1")
    assert (await stow(client, multipart(original))).status_code == 200
    again = await stow(client, multipart(original))
    assert again.status_code == 200
    different = make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", name="Other^Name")
    refused = await stow(client, multipart(different))
    assert refused.status_code == 409 and reasons(refused) == [0x0111]
    found = (await client.get("/dicomweb/studies/1.2.3/instances")).json()
    assert len(found) == 1


async def test_a_wrong_patient_image_never_joins_the_study(client: httpx.AsyncClient) -> None:
    """An instance naming another Patient ID (or issuer) than the study it joins holds:
    refused (0xA900), told why, and the study's patient, demographics and series stay."""
    first = make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", patient_id="PA", name="Alpha^A")
    assert (await stow(client, multipart(first))).status_code == 200
    stray = make_instance("1.2.3", "1.2.3.9", "1.2.3.9.1", patient_id="PB", name="Beta^B")
    more = make_instance("1.2.3", "1.2.3.1", "1.2.3.1.2", patient_id="PA", name="Alpha^A")
    response = await stow(client, multipart(stray, more))
    assert response.status_code == 202
    failed = response.json()[FAILED]["Value"]
    assert [(f[SOP]["Value"][0], f[REASON]["Value"][0]) for f in failed] == [("1.2.3.9.1", 0xA900)]
    assert "another patient" in response.headers["warning"]
    assert "PB" not in response.headers["warning"] and "PA" not in response.headers["warning"]
    (study,) = (await client.get("/dicomweb/studies", params={"StudyInstanceUID": "1.2.3"})).json()
    assert study["00100020"]["Value"] == ["PA"]
    assert study["00100010"]["Value"] == [{"Alphabetic": "Alpha^A"}]
    assert study["00201208"]["Value"] == [2]
    gone = await client.get("/dicomweb/studies/1.2.3/series/1.2.3.9/metadata")
    assert gone.status_code == 404
    # another patient's study of its own is stored as usual
    own = make_instance("7.7", "7.7.1", "7.7.1.1", patient_id="PB", name="Beta^B")
    assert (await stow(client, multipart(own))).status_code == 200


async def test_bad_media_types_and_bodies(client: httpx.AsyncClient) -> None:
    wrong = await client.post(
        "/dicomweb/studies", content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert wrong.status_code == 415
    part_type = f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}'
    assert (
        await client.post("/dicomweb/studies", content=b"", headers={"Content-Type": part_type})
    ).status_code == 415
    broken = await stow(
        client, b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\nabc"
    )
    assert broken.status_code == 400
    assert (await client.get("/dicomweb/studies")).json() == []


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        # a malformed header is a 400, whatever its media type
        (f'multipart/related; type="application/dicom; boundary={BOUNDARY}', 400),
        (f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}', 400),
        (f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}\\"', 400),
        ('application/json; charset="utf-8', 400),
        ('multipart/related; type="application/dicom"', 400),
        (f'multipart/related; type="application/dicom"; boundary={"x" * 71}', 400),
        # a well-formed one naming another media type, a 415
        (f"text/plain; boundary={BOUNDARY}", 415),
        (f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}', 415),
    ],
)
async def test_a_malformed_or_unsupported_content_type_stores_nothing(
    client: httpx.AsyncClient, content_type: str, status: int
) -> None:
    body = multipart(make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1"))
    response = await client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    assert response.json()["status"] == status
    assert await _stored_uids(client) == []


def _part(data: bytes, content_type: str = "application/dicom") -> bytes:
    return f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"


def _instances(count: int, first: int = 1) -> list[bytes]:
    return [make_instance("1.2.3", "1.2.3.1", f"1.2.3.1.{n}") for n in range(first, first + count)]


async def _stored_uids(client: httpx.AsyncClient) -> list[str]:
    found = (await client.get("/dicomweb/instances", params={"limit": "1000"})).json()
    return sorted(i["00080018"]["Value"][0] for i in found)


def _referenced(response: httpx.Response) -> list[str]:
    return sorted(r[SOP]["Value"][0] for r in response.json()[REFERENCED].get("Value", []))


async def test_a_part_of_another_type_fails_alone(client: httpx.AsyncClient) -> None:
    """70 parts cross the ingest's batch of 64: what was stored before the odd part and
    after it is all in the response, and only that part failed."""
    good = _instances(71)
    body = b"".join(_part(p) for p in good[:70]) + _part(b"hello", "text/plain")
    body += _part(good[70]) + f"--{BOUNDARY}--\r\n".encode()
    response = await stow(client, body)
    assert response.status_code == 202, response.text
    assert reasons(response) == [0xC000]
    assert _referenced(response) == await _stored_uids(client)
    assert len(_referenced(response)) == 71


async def test_a_part_with_a_malformed_content_type_fails_alone(
    client: httpx.AsyncClient,
) -> None:
    good = _instances(2)
    unterminated = 'application/dicom; transfer-syntax="1.2.840.10008.1.2.1'
    body = _part(good[0]) + _part(good[1], unterminated) + _part(good[1])
    response = await stow(client, body + f"--{BOUNDARY}--\r\n".encode())
    assert response.status_code == 202, response.text
    assert reasons(response) == [0xC000]
    assert _referenced(response) == ["1.2.3.1.1", "1.2.3.1.2"]


async def test_a_body_cut_short_reports_what_it_stored(client: httpx.AsyncClient) -> None:
    """Whatever the ingest's batch size, the parts received whole are stored and named;
    the part cut short (no closing delimiter) is the one failure."""
    for count, first in ((70, 1), (2, 100)):
        parts = _instances(count + 1, first)
        body = b"".join(_part(p) for p in parts[:count]) + _part(parts[count])[:-2]
        response = await stow(client, body)
        assert response.status_code == 202, response.text
        assert reasons(response) == [0xC000]
        expected = sorted(f"1.2.3.1.{n}" for n in range(first, first + count))
        assert _referenced(response) == expected
    assert len(await _stored_uids(client)) == 72


async def test_a_body_broken_between_parts(client: httpx.AsyncClient) -> None:
    """A malformed part header after whole parts: the break is a failed item of its own."""
    body = b"".join(_part(p) for p in _instances(2)) + f"--{BOUNDARY}\r\nContent-Ty".encode()
    response = await stow(client, body)
    assert response.status_code == 202, response.text
    assert reasons(response) == [0xC000]
    (item,) = response.json()[FAILED]["Value"]
    assert SOP not in item  # no instance to name
    assert _referenced(response) == ["1.2.3.1.1", "1.2.3.1.2"]


@pytest.mark.parametrize("inside_a_part", [False, True])
async def test_a_client_that_disconnects_mid_body_is_a_body_that_broke_off(
    app: FastAPI,
    client: httpx.AsyncClient,
    mint: object,
    caplog: pytest.LogCaptureFixture,
    inside_a_part: bool,
) -> None:
    """The parts received whole are stored; the outcome is audited as the client's
    (a 202), not logged and audited as a server error (it was a 500 with a traceback)."""
    whole = b"".join(_part(p) for p in _instances(2))
    rest = _part(_instances(3)[2])
    # cut inside the third part, or between parts (after the delimiter closing the second)
    sent = whole + (rest[: len(rest) // 2] if inside_a_part else f"--{BOUNDARY}\r\n".encode())
    messages = [
        {"type": "http.request", "body": sent, "more_body": True},
        {"type": "http.disconnect"},
    ]
    answers: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        answers.append(message)

    token = mint()  # type: ignore[operator]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/dicomweb/studies", "raw_path": b"/dicomweb/studies",
        "query_string": b"", "root_path": "", "server": ("radhub.test", 80),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"radhub.test"), (b"content-type", STOW_TYPE.encode()),
            (b"authorization", f"Bearer {token}".encode()),
        ],
    }  # fmt: skip
    with caplog.at_level("ERROR"):
        await app(scope, receive, send)
    start = next(a for a in answers if a["type"] == "http.response.start")
    assert start["status"] == 202
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert sorted(await _stored_uids(client)) == ["1.2.3.1.1", "1.2.3.1.2"]


async def test_failed_items_name_the_instance_when_it_was_read(
    client: httpx.AsyncClient,
) -> None:
    """PS3.18 Table I.1-1: Referenced SOP Class and Instance UIDs are Type 1 in a failed item."""
    no_series = pydicom.dcmread(io.BytesIO(make_instance("1.2.3", "1.2.3.1", "1.2.3.1.7")))
    del no_series.SeriesInstanceUID
    odd_syntax = pydicom.dcmread(io.BytesIO(make_instance("1.2.3", "1.2.3.1", "1.2.3.1.8")))
    odd_syntax.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    bodies = []
    for ds in (no_series, odd_syntax):
        out = io.BytesIO()
        ds.save_as(out, implicit_vr=False, little_endian=True)
        bodies.append(out.getvalue())
    response = await stow(client, multipart(*bodies, b"not dicom"))
    assert response.status_code == 409
    items = response.json()[FAILED]["Value"]
    named = [(i[REASON]["Value"][0], i.get(SOP, {}).get("Value", [None])[0]) for i in items]
    assert named == [(0xC000, "1.2.3.1.7"), (0xC122, "1.2.3.1.8"), (0xC000, None)]
    assert all(i["00081150"]["Value"] == [CT_IMAGE] for i in items[:2])


async def test_each_failure_is_told_in_words_in_a_warning(client: httpx.AsyncClient) -> None:
    """The Failed SOP Sequence holds codes only: 0xC000 alone does not tell a sender
    what to mend, so each failed instance also gets a ``Warning: 299``."""
    body = multipart(
        make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1"),
        make_instance("9.9", "9.9.1", "9.9.1.1"),
        make_instance("1.2.3", "1.2.3.1", "1.2.3.1.3")[:-40],
        b"not dicom",
    )
    response = await stow(client, body, "/dicomweb/studies/1.2.3")
    assert response.status_code == 202
    warnings = response.headers.get_list("warning")
    assert [w.split(": ", 1)[0] for w in warnings] == [
        '299 radhub "9.9.1.1',
        '299 radhub "1.2.3.1.3',
        '299 radhub "not a DICOM Part-10 file',
    ]
    assert "1.2.3" in warnings[0] and "study" in warnings[0].lower()
    assert "truncated" in warnings[1]
    stored = await stow(client, multipart(make_instance("1.2.3", "1.2.3.1", "1.2.3.1.2")))
    assert stored.status_code == 200 and "warning" not in stored.headers


async def test_failure_warnings_are_bounded(client: httpx.AsyncClient) -> None:
    response = await stow(client, multipart(*[b"not dicom"] * (MAX_WARNINGS + 3)))
    assert response.status_code == 409 and len(reasons(response)) == MAX_WARNINGS + 3
    warnings = response.headers.get_list("warning")
    assert len(warnings) == MAX_WARNINGS + 1
    assert warnings[-1] == '299 radhub "3 more failures are not listed"'


async def test_stow_answers_406_when_no_response_form_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    body = multipart(make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1"))
    refused = await client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": STOW_TYPE, "Accept": "text/html"},
    )
    assert refused.status_code == 406
    assert await _stored_uids(client) == []
    accepted = await client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": STOW_TYPE, "Accept": "text/html, */*;q=0.1"},
    )
    assert accepted.status_code == 200
    assert accepted.headers["content-type"] == "application/dicom+json"


async def test_retrieve_url_is_present_even_without_one_study(client: httpx.AsyncClient) -> None:
    """Type 2 in the response module: empty when two studies were stored, or none."""
    two = multipart(make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1"), make_instance("4.5", "4.5.1"))
    response = await stow(client, two)
    assert response.status_code == 200
    assert response.json()["00081190"] == {"vr": "UR"}
    one = await stow(client, multipart(make_instance("1.2.3", "1.2.3.1", "1.2.3.1.2")))
    assert one.json()["00081190"]["Value"][0].endswith("/studies/1.2.3")


async def test_bundled_files_are_byte_identical_on_retrieval(client: httpx.AsyncClient) -> None:
    names = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm"]
    files = {name: bundled(name).read_bytes() for name in names}
    response = await stow(client, multipart(*files.values()))
    assert response.status_code == 200, response.text
    for ref in response.json()[REFERENCED]["Value"]:
        url = ref["00081190"]["Value"][0].removeprefix("http://radhub.test")
        got = await client.get(
            url,
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        from tests.dicomweb.dicom_data import split_multipart

        (part,) = split_multipart(got.content, got.headers["content-type"])
        digests = {hashlib.sha256(v).hexdigest() for v in files.values()}
        assert hashlib.sha256(part).hexdigest() in digests


async def test_every_success_is_really_stored(client: httpx.AsyncClient, app: FastAPI) -> None:
    """FIELD_NOTES: a server once said 200 for instances it never stored; count them."""
    sops = [f"1.2.3.1.{i}" for i in range(1, 151)]
    body = multipart(*(make_instance("1.2.3", "1.2.3.1", s, number=i) for i, s in enumerate(sops)))
    response = await stow(client, body)
    assert response.status_code == 200
    acknowledged = {r[SOP]["Value"][0] for r in response.json()[REFERENCED]["Value"]}
    assert acknowledged == set(sops)
    index = app.state.dicomweb.index
    rows = await index.instances("1.2.3")
    assert {r.uid for r in rows} == acknowledged
    blobs = app.state.dicomweb.blobs
    assert sorted(await blobs.keys()) == sorted(r.blob.key for r in rows)
    study = await index.study("1.2.3")
    assert study is not None and study.instance_count == 150


async def test_large_stow_stays_in_bounded_memory(client: httpx.AsyncClient) -> None:
    count = 60  # 60 instances of ~512 KB: a ~30 MB body, sent in 64 KB chunks

    async def body() -> AsyncIterator[bytes]:
        for i in range(count):
            part = make_instance("1.2.3", "1.2.3.1", f"1.2.3.1.{i + 1}", frames=4000)
            head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            yield head
            for start in range(0, len(part), 64 * 1024):
                yield part[start : start + 64 * 1024]
            yield b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    response, peak = await stow_traced(client, body())
    assert response.status_code == 200, response.text
    assert len(response.json()[REFERENCED]["Value"]) == count
    # the test's own generator holds ~1 MB at a time; the server must not hold the body
    assert peak < 12 * 1024 * 1024, f"peak {peak} bytes for a ~{count * 512 // 1024} MB body"


async def test_one_large_instance_is_stored_whole_in_bounded_memory(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A part far larger than what the server writes or parses in one piece (a
    multi-frame or tomosynthesis instance): written block by block, described from
    its file, stored byte for byte, and never held whole."""
    instance = make_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", frames=200_000)  # ~25 MB
    assert len(instance) > 24 * 1024 * 1024

    async def body() -> AsyncIterator[bytes]:
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        view = memoryview(instance)
        for start in range(0, len(instance), 64 * 1024):
            yield bytes(view[start : start + 64 * 1024])
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    # traced from here, after the instance was made: only what the upload costs counts
    response, peak = await stow_traced(client, body())
    assert response.status_code == 200, response.text
    assert peak < 12 * 1024 * 1024, f"peak {peak} bytes for a {len(instance)}-byte instance"
    (row,) = await app.state.dicomweb.index.instances("1.2.3")
    assert row.attrs["00280008"]["Value"] == [200_000]  # NumberOfFrames, read from the file
    digest = hashlib.sha256(instance).hexdigest()
    assert (row.blob.sha256, row.blob.size) == (digest, len(instance))
    stored = app.state.dicomweb.blobs.path_for(row.blob.key).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == digest


@pytest.mark.parametrize(
    ("scope", "status"),
    [
        ("system/ImagingStudy.cu", 200),
        ("system/ImagingStudy.write", 200),  # SMART v1
        ("system/ImagingStudy.c", 403),  # adding to a stored study is an update
        ("system/ImagingStudy.u", 403),
        ("system/ImagingStudy.cu?status=available", 403),  # restricted
    ],
)
async def test_storing_needs_create_and_update_rights(
    app: FastAPI, mint: object, scope: str, status: int
) -> None:
    token = mint(scope)  # type: ignore[operator]
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": STOW_TYPE}
    async with httpx.AsyncClient(transport=transport, base_url="http://radhub.test") as c:
        body = multipart(make_instance("1.2", "1.2.1", "1.2.1.1"))
        response = await c.post("/dicomweb/studies/1.2", content=body, headers=headers)
    assert response.status_code == status, response.text
    if status == 403:
        assert "ImagingStudy" in response.text


async def test_patient_token_cannot_store(app: FastAPI, mint: object) -> None:
    token = mint("patient/*.cruds", patient="p1")  # type: ignore[operator]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://radhub.test") as c:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": STOW_TYPE}
        r = await c.post(
            "/dicomweb/studies", content=multipart(make_instance("1.2", "1.2.1")), headers=headers
        )
        assert r.status_code == 403
        anonymous = await c.post(
            "/dicomweb/studies",
            content=b"",
            headers={"Content-Type": STOW_TYPE, "Origin": "https://viewer.example"},
        )
        assert anonymous.status_code == 401
        assert anonymous.headers.get("access-control-allow-origin") in (
            "*",
            "https://viewer.example",
        )
