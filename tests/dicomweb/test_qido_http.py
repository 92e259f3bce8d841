"""QIDO-RS conformance over the real ASGI stack: universal ``*``, paging
parameters, the result-cap warning, the ``accept`` parameter, instance results,
and the HTTP methods every DICOMweb path answers (HEAD, 405 with Allow)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import orjson
import pydicom
import pytest
from fastapi import FastAPI

from dicomweb.qido import MAX_INCLUDEFIELDS, MAX_MATCH_VALUE_LENGTH
from dicomweb.routes import dicomweb_router
from tests.dicomweb.archive_app import eventually
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart

TOO_MANY = (
    '299 radhub.test: "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)
NAMES = {"1.1": "Doe^Jane", "2.2": "", "3.3": "Roe^Ann"}  # 2.2: PatientName empty


@pytest.fixture
async def loaded(client: httpx.AsyncClient) -> httpx.AsyncClient:
    parts = [
        make_instance(uid, f"{uid}.1", f"{uid}.1.1", name=name, patient_id=f"P{uid}")
        for uid, name in NAMES.items()
    ]
    response = await client.post(
        "/dicomweb/studies", content=multipart(*parts), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200
    return client


def media(response: httpx.Response) -> list[str]:
    """Content-Type parameters but a multipart boundary (random per response)."""
    params = response.headers["content-type"].split(";")
    return [p.strip() for p in params if not p.strip().startswith("boundary=")]


def study_uids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(r["0020000D"]["Value"][0] for r in response.json())


async def test_star_alone_is_universal_matching(loaded: httpx.AsyncClient) -> None:
    every = study_uids(await loaded.get("/dicomweb/studies", params={"PatientName": ""}))
    assert every == ["1.1", "2.2", "3.3"]
    for value in ("*", "**"):
        found = await loaded.get("/dicomweb/studies", params={"PatientName": value})
        assert study_uids(found) == every
    some = await loaded.get("/dicomweb/studies", params={"PatientName": "*o*"})
    assert study_uids(some) == ["1.1", "3.3"]


async def test_a_negative_offset_is_400_and_limit_zero_is_no_results(
    loaded: httpx.AsyncClient,
) -> None:
    # PS3.18 §8.3.4.4: limit and offset are uints
    for params in ({"offset": "-5"}, {"offset": "-1", "limit": "1"}, {"offset": "one"}):
        bad = await loaded.get("/dicomweb/studies", params=params)
        assert bad.status_code == 400, params
        assert "offset must be an unsigned integer" in bad.json()["message"]
    none = await loaded.get("/dicomweb/studies", params={"limit": "0"})
    assert none.status_code == 200 and none.json() == []
    assert "warning" not in none.headers
    # and no match stays 200 [] (not 204)
    nothing = await loaded.get("/dicomweb/studies", params={"PatientID": "nobody"})
    assert nothing.status_code == 200 and nothing.json() == []


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("fuzzymatching", "Only literal matching has been performed."),
        ("emptyvaluematching", "Empty Value Matching has not been performed."),
        ("multiplevaluematching", "Multiple Value Matching has not been performed."),
    ],
)
async def test_unsupported_matching_parameters(
    loaded: httpx.AsyncClient, name: str, text: str
) -> None:
    """PS3.18 §8.3.4.2, §8.3.4.5, §8.3.4.6: ``true`` is answered with the standard's
    Warning; ``false`` with none; any other value is a 400."""
    asked = await loaded.get("/dicomweb/studies", params={name: "true"})
    assert study_uids(asked) == ["1.1", "2.2", "3.3"]
    expected = f'299 radhub "The {name} parameter is not supported. {text}"'
    assert asked.headers.get_list("warning") == [expected]
    declined = await loaded.get("/dicomweb/studies", params={name: "false"})
    assert len(study_uids(declined)) == 3 and "warning" not in declined.headers
    wrong = await loaded.get("/dicomweb/studies", params={name: "TRUE"})
    assert wrong.status_code == 400
    assert wrong.json()["message"] == f"{name} must be true or false, not 'TRUE'"


EVERY = ["1.1", "2.2", "3.3"]


# Query parameters and the studies they find (None: a 400).
INTEGERS: list[tuple[dict[str, str], list[str] | None]] = [
    ({"offset": "１"}, None),  # fullwidth one: int() takes it
    ({"offset": "²"}, None),  # str.isdigit() takes it, int() does not
    ({"offset": "1_0"}, None),
    ({"limit": "１"}, None),
    ({"limit": "²"}, None),
    ({"limit": "1_0"}, None),
    ({"StudyDate": "２０２４０１０５"}, None),
    ({"offset": str(2**63)}, []),  # beyond SQLite's integers: past every result
    ({"offset": "1" + "0" * 30}, []),
    ({"offset": "-1" + "0" * 30, "limit": "1"}, None),
    ({"limit": "1" + "0" * 30}, EVERY),
    ({"offset": "002", "limit": "01"}, ["3.3"]),
]


async def test_integers_are_ascii_digits_and_never_overflow(loaded: httpx.AsyncClient) -> None:
    wrong = []
    for params, found in INTEGERS:
        response = await loaded.get("/dicomweb/studies", params=params)
        expected = 400 if found is None else 200
        if response.status_code != expected:
            wrong.append((params, response.status_code))
        elif found is not None and study_uids(response) != found:
            wrong.append((params, study_uids(response)))
    assert wrong == []


# Well shaped, but no moment (PS3.5 Table 6.2-1): a syntax error in the query
# (PS3.18 §8.3.4), not a value that matches nothing; path, parameters, the fault.
IMPOSSIBLE_MOMENTS: list[tuple[str, dict[str, str], str]] = [
    ("/dicomweb/studies", {"StudyDate": "20241301"}, "month 13 is not 01-12"),
    ("/dicomweb/studies", {"StudyDate": "20240101-20240230"}, "day 30 is not 01-29"),
    ("/dicomweb/studies", {"StudyTime": "2561"}, "hour 25 is not 00-23"),
    ("/dicomweb/studies", {"StudyTime": "1000-2400"}, "hour 24 is not 00-23"),
    ("/dicomweb/series", {"PerformedProcedureStepStartDate": "20230229-"}, "day 29"),
    ("/dicomweb/instances", {"ContentDate": "-20241232"}, "day 32 is not 01-31"),
]


async def test_an_impossible_date_or_time_is_400(loaded: httpx.AsyncClient) -> None:
    wrong = []
    for path, params, fault in IMPOSSIBLE_MOMENTS:
        response = await loaded.get(path, params=params)
        if response.status_code != 400 or fault not in response.json()["message"]:
            wrong.append((params, response.status_code, response.text[:200]))
    assert wrong == []
    leap = await loaded.get("/dicomweb/studies", params={"StudyDate": "20240229-20240301"})
    assert leap.status_code == 200 and leap.json() == []


# PatientName values: the longest taken, in the character whose GLOB pattern is the
# longest once case folded (6 UTF-8 bytes), and in ASCII; then too long.
MATCHING_VALUES: list[tuple[str, list[str] | None]] = [
    ("*" + "\u0390" * (MAX_MATCH_VALUE_LENGTH - 1), []),
    ("*" + "e" * (MAX_MATCH_VALUE_LENGTH - 2) + "*", []),
    ("*" + "e" * MAX_MATCH_VALUE_LENGTH, None),
    ("*" + "e" * 60_000, None),  # beyond SQLite's GLOB pattern limit: was a 503
]


async def test_a_matching_value_longer_than_the_bound_is_400(loaded: httpx.AsyncClient) -> None:
    wrong = []
    for value, found in MATCHING_VALUES:
        response = await loaded.get("/dicomweb/studies", params={"PatientName": value})
        if found is not None:
            right = response.status_code == 200 and response.json() == found
        else:
            limit = str(MAX_MATCH_VALUE_LENGTH)
            right = response.status_code == 400 and limit in response.json()["message"]
        if not right:
            wrong.append((len(value), response.status_code, response.text[:200]))
    assert wrong == []


async def test_includefield_names_a_bounded_number_of_attributes(
    loaded: httpx.AsyncClient,
) -> None:
    """Each result carries each included attribute, empty if need be: 7,000 private
    tags made a 165 MB response."""
    tags = [f"0009{n:04X}" for n in range(MAX_INCLUDEFIELDS + 1)]
    # private attributes are of the instance level: an instance search returns them
    most = await loaded.get("/dicomweb/instances", params={"includefield": tags[:-1]})
    assert study_uids(most) == EVERY
    assert all(tags[0] in r and tags[-2] in r for r in most.json())
    refused = await loaded.get("/dicomweb/instances", params={"includefield": tags})
    assert refused.status_code == 400
    assert f"at most {MAX_INCLUDEFIELDS}" in refused.json()["message"]


@asynccontextmanager
async def capped(
    app: FastAPI, client: httpx.AsyncClient, most: int
) -> AsyncIterator[httpx.AsyncClient]:
    """The DICOMweb routes over the same archive, with ``--qido-max-results`` ``most``."""
    sub = FastAPI()
    sub.include_router(
        dicomweb_router(replace(app.state.dicomweb, max_results=most)), prefix="/dicomweb"
    )
    transport = httpx.ASGITransport(app=sub)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://radhub.test", headers=client.headers
    ) as c:
        yield c


@pytest.mark.parametrize(
    ("most", "limit", "count", "warned"),
    [
        (2, None, 2, True),  # cut at the maximum
        (2, "500", 2, True),  # asked for more than the maximum, and cut
        (2, "1", 1, False),  # cut by the client's own limit
        (3, "500", 3, False),  # asked for more than the maximum, nothing cut
        (2, "2", 2, True),  # the maximum asked for, more exist
    ],
)
async def test_cap_warning_only_when_results_are_cut(
    app: FastAPI,
    loaded: httpx.AsyncClient,
    most: int,
    limit: str | None,
    count: int,
    warned: bool,
) -> None:
    params = {"limit": limit} if limit else {}
    async with capped(app, loaded, most) as c:
        response = await c.get("/dicomweb/studies", params=params)
    assert len(study_uids(response)) == count
    assert response.headers.get_list("warning") == ([TOO_MANY] if warned else [])


async def test_accept_query_parameter_stands_for_the_header(loaded: httpx.AsyncClient) -> None:
    xml = {"Accept": "application/xml"}
    assert (await loaded.get("/dicomweb/studies", headers=xml)).status_code == 406
    ok = await loaded.get(
        "/dicomweb/studies", params={"accept": "application/dicom+json"}, headers=xml
    )
    assert len(study_uids(ok)) == 3 and "warning" not in ok.headers
    refused = await loaded.get("/dicomweb/studies", params={"accept": "application/xml"})
    assert refused.status_code == 406


async def test_empty_sequence_key_is_universal_without_warning(loaded: httpx.AsyncClient) -> None:
    response = await loaded.get("/dicomweb/series", params={"RequestAttributesSequence": ""})
    assert len(response.json()) == 3 and "warning" not in response.headers


async def test_instance_results_carry_no_file_meta(loaded: httpx.AsyncClient) -> None:
    response = await loaded.get("/dicomweb/studies/1.1/instances", params={"includefield": "all"})
    (instance,) = response.json()
    assert "00020010" not in instance
    assert instance["00083002"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}
    plain = (await loaded.get("/dicomweb/studies/1.1/instances")).json()[0]
    assert "00083002" not in plain and "00020010" not in plain


async def test_attributes_without_a_value_are_returned_empty(loaded: httpx.AsyncClient) -> None:
    # The instances have no ReferringPhysicianName, StudyID, OperatorsName,
    # SeriesDescription, ... : asked for (required, matched or included), each is
    # returned with no value, as a C-FIND SCP returns them (PS3.4 C.4.1.1.3.2).
    params = {
        "ReferringPhysicianName": "*",
        "includefield": "NameOfPhysiciansReadingStudy,StudyDescription,OperatorsName",
    }
    for include in (params["includefield"], "all"):
        found = await loaded.get(
            "/dicomweb/studies", params={**params, "includefield": include, "PatientID": "P1.1"}
        )
        (study,) = found.json()
        assert study["00080090"] == {"vr": "PN"}  # required and matched, absent
        assert study["00200010"] == {"vr": "SH"}  # StudyID, required, absent
        assert study["00081030"] == {"vr": "LO", "Value": ["CHEST"]}  # included, present
        assert "00080201" not in study  # TimezoneOffsetFromUTC: only if present
        # NameOfPhysiciansReadingStudy: empty where named; "all" returns what the study has
        assert study.get("00081060") == ({"vr": "PN"} if include != "all" else None)
        assert "00081070" not in study  # OperatorsName: a series attribute (PS3.18 §10.6.3.3)
    (series,) = (await loaded.get("/dicomweb/studies/1.1/series")).json()
    assert series["0008103E"] == {"vr": "LO"}  # SeriesDescription
    assert series["00400244"] == {"vr": "DA"}  # PerformedProcedureStepStartDate
    assert series["00400275"] == {"vr": "SQ"}  # RequestAttributesSequence
    assert series["00080060"] == {"vr": "CS", "Value": ["CT"]}
    (instance,) = (await loaded.get("/dicomweb/studies/1.1/instances")).json()
    assert instance["00280008"] == {"vr": "IS"}  # NumberOfFrames of a single frame
    assert instance["00280010"] == {"vr": "US", "Value": [8]}
    (plain,) = (await loaded.get("/dicomweb/studies", params={"PatientID": "P1.1"})).json()
    assert "00081060" not in plain  # not asked for: not returned


async def test_a_patient_attribute_is_found_at_the_study_level(client: httpx.AsyncClient) -> None:
    """PatientWeight and PatientSize (Patient Study module), OtherPatientIDs (Patient
    module): kept with the study, so a study-level includefield returns their values,
    and every instance-level answer still carries them."""
    ds = pydicom.dcmread(io.BytesIO(make_instance("5.5", "5.5.1", "5.5.1.1")))
    ds.PatientWeight, ds.PatientSize, ds.OtherPatientIDs = "70", "1.8", "ALT-9"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    stored = await client.post(
        "/dicomweb/studies", content=multipart(out.getvalue()), headers={"Content-Type": STOW_TYPE}
    )
    assert stored.status_code == 200
    wanted = {"includefield": "PatientWeight,PatientSize,OtherPatientIDs"}
    (study,) = (await client.get("/dicomweb/studies", params=wanted)).json()
    assert study["00101030"] == {"vr": "DS", "Value": [70]}
    assert study["00101020"] == {"vr": "DS", "Value": [1.8]}
    assert study["00101000"] == {"vr": "LO", "Value": ["ALT-9"]}
    (instance,) = (await client.get("/dicomweb/instances", params={"includefield": "all"})).json()
    assert instance["00101030"] == {"vr": "DS", "Value": [70]}
    metadata = (await client.get("/dicomweb/studies/5.5/metadata")).json()
    assert metadata[0]["00101030"] == {"vr": "DS", "Value": [70]}


async def test_a_lower_levels_attributes_are_not_returned(client: httpx.AsyncClient) -> None:
    """PS3.18 §10.6.3.3: a study search returns no series or instance attribute an
    includefield names, not even empty; a series search no instance attribute."""
    ds = pydicom.dcmread(io.BytesIO(make_instance("6.6", "6.6.1", "6.6.1.1")))
    ds.Manufacturer, ds.ImageType, ds.PatientWeight = "ACME", ["ORIGINAL", "PRIMARY"], "70"
    ds.SliceThickness, ds.WindowCenter = "2.5", "40"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    stored = await client.post(
        "/dicomweb/studies", content=multipart(out.getvalue()), headers={"Content-Type": STOW_TYPE}
    )
    assert stored.status_code == 200
    named = "ImageType,Manufacturer,SliceThickness,WindowCenter,PatientWeight"
    wanted = {"includefield": named}
    instance_tags = ("00080008", "00180050", "00281050")  # ImageType, SliceThickness, ...
    (study,) = (await client.get("/dicomweb/studies", params=wanted)).json()
    assert not {"00080070", *instance_tags} & study.keys()
    assert study["00101030"] == {"vr": "DS", "Value": [70]}  # PatientWeight: the patient's
    for path in ("/dicomweb/series", "/dicomweb/studies/6.6/series"):
        (series,) = (await client.get(path, params=wanted)).json()
        # Manufacturer is the series' (General Equipment): kept there, so returned
        assert series["00080070"] == {"vr": "LO", "Value": ["ACME"]}
        assert not set(instance_tags) & series.keys()
    (instance,) = (await client.get("/dicomweb/instances", params=wanted)).json()
    assert instance["00080070"] == {"vr": "LO", "Value": ["ACME"]}
    assert instance["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}
    assert instance["00180050"] == {"vr": "DS", "Value": [2.5]}


@pytest.mark.parametrize(
    "path",
    [
        "/dicomweb/studies",
        "/dicomweb/studies/1.1/series",
        "/dicomweb/studies/1.1/metadata",
        "/dicomweb/studies/1.1",  # WADO-RS retrieve: a streamed body
        "/dicomweb/studies/1.1/series/1.1.1/instances/1.1.1.1/frames/1",
    ],
)
async def test_head_answers_like_get_without_a_body(
    loaded: httpx.AsyncClient, anon: httpx.AsyncClient, path: str
) -> None:
    got = await loaded.get(path)
    head = await loaded.head(path)
    assert got.status_code == head.status_code == 200
    assert head.content == b"" and got.content != b""
    assert media(head) == media(got)
    assert head.headers.get("content-length") == got.headers.get("content-length")
    refused = await anon.head(path)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/dicomweb/studies", "GET, HEAD, POST"),
        ("DELETE", "/dicomweb/studies", "GET, HEAD, POST"),
        ("POST", "/dicomweb/series", "GET, HEAD"),
        ("PATCH", "/dicomweb/studies/1.1", "DELETE, GET, HEAD, POST"),
        ("PUT", "/dicomweb/studies/1.1/series/1.1.1/instances/1.1.1.1", "DELETE, GET, HEAD"),
        ("POST", "/dicomweb/studies/1.1/metadata", "GET, HEAD"),
    ],
)
async def test_405_allows_every_method_of_the_path(
    anon: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await anon.request(method, path, headers={"Origin": "https://viewer.example"})
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert "access-control-allow-origin" in response.headers  # CORS still applies


async def test_head_passes_cors_and_audit(loaded: httpx.AsyncClient) -> None:
    head = await loaded.head(
        "/dicomweb/studies", params={"PatientID": "P3.3"}, headers={"Origin": "https://v.example"}
    )
    assert head.status_code == 200 and "access-control-allow-origin" in head.headers

    async def audited() -> bool | None:
        found = await loaded.get("/fhir/AuditEvent", params={"_count": "200"})
        return True if b"HEAD /dicomweb/studies?PatientID=P3.3" in found.content else None

    assert await eventually(audited, "the HEAD request's AuditEvent")
    assert orjson.loads(head.content or b"null") is None


@pytest.mark.parametrize(
    ("query", "warning"),
    [
        ("%E2%82%AC=1", "query parameter '\\\\u20ac' is not supported and was ignored"),
        ("includefield=%E2%82%AC", "unknown includefield '\\\\u20ac' was ignored"),
        ("a%0D%0Ab=1", "query parameter 'a\\\\r\\\\nb' is not supported and was ignored"),
    ],
)
async def test_a_warning_quoting_any_character_is_a_header_field(
    loaded: httpx.AsyncClient, query: str, warning: str
) -> None:
    """A parameter named ``€`` made the answer a 500: a header is Latin-1 at most."""
    response = await loaded.get(f"/dicomweb/studies?{query}")
    assert response.status_code == 200 and len(response.json()) == 3
    assert response.headers.get_list("warning") == [f'299 radhub "{warning}"']


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/dicomweb/studies", ";"),
        ("/dicomweb/studies?accept=;", None),
        ("/dicomweb/studies/1.1/series/1.1.1/metadata", " ; "),
        ("/dicomweb/studies/1.1/series/1.1.1/instances/1.1.1.1/rendered", ";"),
    ],
)
async def test_an_accept_of_separators_alone_is_a_406_not_a_fault(
    loaded: httpx.AsyncClient, path: str, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    assert (await loaded.get(path, headers=headers)).status_code == 406
