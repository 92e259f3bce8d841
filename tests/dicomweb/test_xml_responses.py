"""The XML forms of DICOMweb's dataset responses through the real ASGI stack: QIDO-RS
results and metadata as ``multipart/related; type="application/dicom+xml"``, the
STOW-RS response as one ``application/dicom+xml`` document (PS3.18 §8.7.3.2), each
the same data, status and Warning headers as its JSON; the choice between them
(Accept, q-values, the ``accept`` parameter with its ``+``); and a STOW-RS body under
a content coding refused 415."""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET

import httpx
import pytest
from starlette.requests import Request

from dicomweb.accept_param import accept_parameter
from dicomweb.http_common import dataset_media
from dicomweb.transfer_syntax import NotAcceptable
from tests.dicomweb.dicom_data import STOW_TYPE, make_instance, multipart, split_multipart
from tests.dicomweb.xml_compare import NS, comparable, from_xml, values

XML = 'multipart/related; type="application/dicom+xml"'
DICOM_XML = "application/dicom+xml"
SERIES = "/dicomweb/studies/1.2/series/1.2.1"


@pytest.fixture
async def loaded(client: httpx.AsyncClient) -> httpx.AsyncClient:
    parts = [
        make_instance("1.2", "1.2.1", "1.2.1.1", number=1, name="Doe^Jane"),
        make_instance("1.2", "1.2.1", "1.2.1.2", number=2, name="Doe^Jane"),
        make_instance("3.4", "3.4.1", "3.4.1.1", name="Roe^Ann^B", patient_id="P2"),
    ]
    response = await client.post(
        "/dicomweb/studies", content=multipart(*parts), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text
    return client


def documents(response: httpx.Response) -> list[ET.Element]:
    """The Native DICOM Model documents of a multipart XML answer, parsed."""
    assert response.status_code == 200, response.text
    content_type = response.headers["content-type"]
    assert content_type.startswith(XML + "; boundary=")
    return [ET.fromstring(p) for p in split_multipart(response.content, content_type)]


def as_json(response: httpx.Response) -> list[dict[str, object]]:
    assert response.status_code == 200, response.text
    return [comparable(d) for d in response.json()]


@pytest.mark.parametrize(
    "path",
    [
        "/dicomweb/studies",
        "/dicomweb/series",
        "/dicomweb/studies/1.2/series",
        "/dicomweb/instances",
        f"{SERIES}/instances",
    ],
)
async def test_search_results_as_xml_hold_the_json_results(
    loaded: httpx.AsyncClient, path: str
) -> None:
    params = {"includefield": "all"}
    json_answer = await loaded.get(path, params=params)
    xml_answer = await loaded.get(path, params=params, headers={"Accept": XML})
    found = documents(xml_answer)
    assert len(found) == len(json_answer.json()) > 0
    assert [from_xml(d) for d in found] == as_json(json_answer)
    url = found[0].find("n:DicomAttribute[@keyword='RetrieveURL']", NS)
    assert url is not None and str(values(url)[0]).startswith("http")


async def test_person_names_are_split_into_components(loaded: httpx.AsyncClient) -> None:
    (found,) = documents(
        await loaded.get("/dicomweb/studies", params={"PatientID": "P2"}, headers={"Accept": XML})
    )
    name = found.find("n:DicomAttribute[@keyword='PatientName']/n:PersonName/n:Alphabetic", NS)
    assert name is not None
    assert [(c.tag.split("}")[1], c.text) for c in name] == [
        ("FamilyName", "Roe"),
        ("GivenName", "Ann"),
        ("MiddleName", "B"),
    ]


async def test_search_warnings_and_an_empty_answer_are_the_same_in_xml(
    loaded: httpx.AsyncClient,
) -> None:
    params = {"Unknown": "x", "PatientID": "nobody"}
    json_answer = await loaded.get("/dicomweb/studies", params=params)
    xml_answer = await loaded.get("/dicomweb/studies", params=params, headers={"Accept": XML})
    assert json_answer.json() == [] and documents(xml_answer) == []
    assert xml_answer.headers.get_list("warning") == json_answer.headers.get_list("warning")
    assert len(xml_answer.headers.get_list("warning")) == 1


@pytest.mark.parametrize(
    "path",
    ["/dicomweb/studies/1.2", SERIES, f"{SERIES}/instances/1.2.1.2"],
)
async def test_metadata_as_xml_holds_the_json_metadata(
    loaded: httpx.AsyncClient, path: str
) -> None:
    json_answer = await loaded.get(f"{path}/metadata")
    xml_answer = await loaded.get(f"{path}/metadata", headers={"Accept": XML})
    found = documents(xml_answer)
    assert [from_xml(d) for d in found] == as_json(json_answer)
    pixel = found[-1].find("n:DicomAttribute[@tag='7FE00010']/n:BulkData", NS)
    assert pixel is not None and str(pixel.get("uri")).endswith("/bulkdata/7FE00010")
    assert xml_answer.headers["etag"] != json_answer.headers["etag"]
    assert "Accept" in xml_answer.headers["vary"]


async def test_xml_metadata_has_its_own_etag_and_gzip(loaded: httpx.AsyncClient) -> None:
    url = f"{SERIES}/metadata"
    first = await loaded.get(url, headers={"Accept": XML, "Accept-Encoding": "identity"})
    etag = first.headers["etag"]
    plain = {"Accept": XML, "Accept-Encoding": "identity"}
    again = await loaded.get(url, headers=plain | {"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag
    json_etag = (await loaded.get(url, headers={"Accept-Encoding": "identity"})).headers["etag"]
    refetch = {"If-None-Match": etag, "Accept-Encoding": "identity"}
    assert (await loaded.get(url, headers=refetch)).status_code == 200
    changed = await loaded.get(url, headers=plain | {"If-None-Match": json_etag})
    assert changed.status_code == 200
    zipped = await loaded.get(url, headers={"Accept": XML, "Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["etag"] not in (etag, json_etag)
    # the same documents once httpx unzipped them (only the random boundary differs)
    parts = split_multipart(zipped.content, zipped.headers["content-type"])
    assert parts == split_multipart(first.content, first.headers["content-type"])


async def test_stow_response_as_one_xml_document(client: httpx.AsyncClient) -> None:
    body = multipart(make_instance("5.6", "5.6.1", "5.6.1.1"), b"not dicom")
    response = await client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": STOW_TYPE, "Accept": DICOM_XML},
    )
    assert response.status_code == 202
    assert response.headers["content-type"] == DICOM_XML
    root = ET.fromstring(response.content)
    by_keyword = {a.get("keyword"): a for a in root.findall("n:DicomAttribute", NS)}
    assert str(values(by_keyword["RetrieveURL"])[0]).endswith("/studies/5.6")
    (stored,) = by_keyword["ReferencedSOPSequence"].findall("n:Item", NS)
    sop = stored.find("n:DicomAttribute[@keyword='ReferencedSOPInstanceUID']", NS)
    assert sop is not None and values(sop) == ["5.6.1.1"]
    (failed,) = by_keyword["FailedSOPSequence"].findall("n:Item", NS)
    reason = failed.find("n:DicomAttribute[@keyword='FailureReason']", NS)
    assert reason is not None and values(reason) == [str(0xC000)]
    assert len(response.headers.get_list("warning")) == 1
    json_answer = await client.post(
        "/dicomweb/studies", content=body, headers={"Content-Type": STOW_TYPE}
    )
    assert json_answer.status_code == 202
    assert json_answer.headers.get_list("warning") == response.headers.get_list("warning")


async def test_stow_refuses_a_content_coding_before_reading(client: httpx.AsyncClient) -> None:
    body = gzip.compress(multipart(make_instance("7.8", "7.8.1", "7.8.1.1")))
    response = await client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": STOW_TYPE, "Content-Encoding": "gzip"},
    )
    assert response.status_code == 415
    assert "gzip" in response.json()["message"]
    assert response.headers["accept-encoding"] == "identity"
    assert (await client.get("/dicomweb/studies/7.8/metadata")).status_code == 404
    plain = await client.post(
        "/dicomweb/studies",
        content=gzip.decompress(body),
        headers={"Content-Type": STOW_TYPE, "Content-Encoding": "identity"},
    )
    assert plain.status_code == 200


async def test_the_accept_parameter_keeps_its_plus(loaded: httpx.AsyncClient) -> None:
    """``+`` is a space only in HTML forms: a URI query keeps it (RFC 3986 §3.4)."""
    xml = await loaded.get("/dicomweb/studies?accept=multipart/related;type=application/dicom+xml")
    assert len(documents(xml)) == 2
    json = await loaded.get("/dicomweb/studies?accept=application/dicom+json")
    assert json.status_code == 200 and len(json.json()) == 2
    encoded = await loaded.get("/dicomweb/studies?accept=application%2Fdicom%2Bjson")
    assert encoded.status_code == 200
    meta = await loaded.get(
        f"{SERIES}/metadata?accept=application/dicom+json", headers={"Accept": XML}
    )
    assert meta.headers["content-type"] == "application/dicom+json"


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/dicomweb/studies", "application/xml"),
        ("/dicomweb/studies", DICOM_XML),  # single-part: search results are multipart
        ("/dicomweb/studies", "application/dicom+json;q=0"),
        (f"{SERIES}/metadata", 'multipart/related; type="application/dicom"'),
        (f"{SERIES}/metadata", "text/html"),
    ],
)
async def test_406_when_neither_form_is_acceptable(
    loaded: httpx.AsyncClient, path: str, accept: str
) -> None:
    response = await loaded.get(path, headers={"Accept": accept})
    assert response.status_code == 406, response.text


def request(query: bytes = b"", accept: str | None = None) -> Request:
    headers = [(b"accept", accept.encode())] if accept is not None else []
    return Request({"type": "http", "query_string": query, "headers": headers})


# (Accept header, the form of QIDO-RS results or metadata, of a STOW-RS response)
NEGOTIATION: list[tuple[str | None, str | None, str | None]] = [
    (None, "json", "json"),
    ("", "json", "json"),
    ("*/*", "json", "json"),
    ("application/*", "json", "json"),
    ("application/json", "json", "json"),
    ("application/dicom+json", "json", "json"),
    (XML, "xml", None),
    ("multipart/related", "xml", None),
    ('multipart/related; type="application/dicom"', None, None),
    (DICOM_XML, None, "xml"),
    (f"application/dicom+json;q=0.5, {XML}", "xml", "json"),
    (f"application/dicom+json, {XML}", "json", "json"),  # a tie keeps JSON
    (f"{XML};q=0.9, application/dicom+json;q=0.9", "json", "json"),
    ("application/dicom+json;q=0, */*", "xml", "xml"),  # q=0 excludes beside */*
    ("application/dicom+json;q=0, application/json;q=0.2", "json", "json"),
    (f"{XML};q=0, */*", "json", "json"),
    (f"{DICOM_XML};q=0.8, application/json;q=0.3", "json", "xml"),
    ("image/png", None, None),
]


@pytest.mark.parametrize(("accept", "search", "stow"), NEGOTIATION)
def test_dataset_media_honours_q_values(
    accept: str | None, search: str | None, stow: str | None
) -> None:
    for multi, expected in ((True, search), (False, stow)):
        if expected is None:
            with pytest.raises(NotAcceptable):
                dataset_media(request(accept=accept), "results", multipart=multi)
        else:
            assert dataset_media(request(accept=accept), "results", multipart=multi) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", None),
        (b"accept=", None),
        (b"accept=application/dicom+json", "application/dicom+json"),
        (b"accept=application%2Fdicom%2Bjson&limit=2", "application/dicom+json"),
        (b"PatientName=a+b&accept=a/b%3Bq%3D0.5", "a/b;q=0.5"),
        (b"accept=a/b&accept=c/d", "a/b, c/d"),
        (b"Accept=a/b&xaccept=c/d", None),
    ],
)
def test_accept_parameter_reads_the_raw_query(query: bytes, expected: str | None) -> None:
    assert accept_parameter(request(query)) == expected


def test_the_parameter_stands_for_the_header() -> None:
    asked = request(b"accept=application/dicom+json", accept=XML)
    assert dataset_media(asked, "results") == "json"
    assert dataset_media(request(b"limit=1", accept=XML), "results") == "xml"
