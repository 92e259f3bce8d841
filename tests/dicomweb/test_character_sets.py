"""DICOM text in each common Specific Character Set (0008,0005), end to end through
the real ASGI stack: an instance encoded in it is stored by STOW-RS, comes back from
WADO-RS byte for byte, and its names come back decoded from QIDO-RS (JSON and XML)
and /metadata, match QIDO-RS queries (exact, wildcards on non-ASCII characters,
case-insensitively, percent-encoded UTF-8), and reach the FHIR Patient and
ImagingStudy the archive writes.

Instances are made with pydicom, which encodes each value in the data set's
character set (PS3.5 §6.1, Annex H-K for the code extensions); pydicom's bundled
character-set files (``get_charset_files``) are stored and read back too, with
pydicom's own decoding as the oracle.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset

from tests.dicomweb.archive_app import settled
from tests.dicomweb.dicom_data import (
    STOW_TYPE,
    make_instance,
    multipart,
    split_multipart,
)
from tests.dicomweb.xml_compare import NS

ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
XML = 'multipart/related; type="application/dicom+xml"'
EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
STUDY, SERIES, SOP = "1.2.826.0.1.7", "1.2.826.0.1.7.1", "1.2.826.0.1.7.1.1"
INSTANCE = f"/dicomweb/studies/{STUDY}/series/{SERIES}/instances/{SOP}"


@dataclass(frozen=True)
class Case:
    """One character set: the name and description written in it, and QIDO-RS
    PatientName values that must find the study (``hits``) or must not (``misses``)."""

    charset: str | list[str] | None
    name: str
    description: str
    hits: tuple[str, ...]
    misses: tuple[str, ...] = ()


CASES: dict[str, Case] = {
    "default repertoire": Case(
        None, "Smith^John", "CHEST PA", ("Smith^John", "SMITH^john", "Sm?th^*", "*ith*")
    ),
    "ISO_IR 100 (Latin-1)": Case(
        "ISO_IR 100",
        "Müller^Jürgen",
        "Thorax ärztlich",
        (
            "Müller^Jürgen",
            "MÜLLER^JÜRGEN",  # case-insensitive beyond ASCII: ü and Ü
            "müller^jürgen",
            "M?ller^J?rgen",  # ? is one character, a non-ASCII one too
            "Mü*",
            "MÜ*",
        ),
        ("Muller^Jurgen", "M??ller^Jürgen", "Mü"),
    ),
    "ISO_IR 100, sharp s": Case(
        "ISO_IR 100",
        "Großmann^Jörg",
        "Schädel",
        # ß is one character: ? stands for it, and ẞ is its capital
        ("Großmann^Jörg", "GROẞMANN^JÖRG", "Gro?mann^J?rg", "gro?mann*"),
        ("Gro??mann^Jörg",),
    ),
    "ISO_IR 192 (UTF-8)": Case(
        "ISO_IR 192",
        "Łukasiewicz^Zoë=王^小東",
        "Грудная клетка 胸部",
        ("ŁUKASIEWICZ^ZOË", "łukasiewicz^zoë", "?ukasiewicz^Zo?", "王^小東", "王^?東", "王*"),
        ("Lukasiewicz^Zoe", "王^小"),
    ),
    "ISO 2022 IR 87 (PS3.5 H.3.1)": Case(
        ["", "ISO 2022 IR 87"],
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "胸部 CT",
        ("Yamada^Tarou", "YAMADA^TAROU", "山田^太郎", "山?^太郎", "やまだ^*", "*^たろう"),
        ("山田^次郎",),
    ),
    "ISO 2022 IR 13 with IR 87 (PS3.5 H.3.2)": Case(
        ["ISO 2022 IR 13", "ISO 2022 IR 87"],
        "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
        "ｷｮｳﾌﾞ 胸部",
        ("ﾔﾏﾀﾞ^ﾀﾛｳ", "ﾔﾏ?ﾞ^*", "山田^太郎", "やまだ^たろう"),
        ("Yamada^Tarou",),
    ),
    "ISO 2022 IR 13 with IR 87, romaji alphabetic": Case(
        ["ISO 2022 IR 13", "ISO 2022 IR 87"],
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "胸部",
        ("yamada^tarou", "山田^太郎", "山田*"),
    ),
    "ISO_IR 144 (Cyrillic)": Case(
        "ISO_IR 144",
        "Иванов^Иван",
        "Грудная клетка",
        ("Иванов^Иван", "ИВАНОВ^ИВАН", "иванов^иван", "Ив?нов^*"),
        ("Ivanov^Ivan",),
    ),
    "GB18030": Case(
        "GB18030",
        "Wang^XiaoDong=王^小东",
        "胸部 平扫",
        ("Wang^XiaoDong", "WANG^XIAODONG", "王^小东", "王^小?", "王*"),
        ("王^小東",),
    ),
    "ISO 2022 IR 149 (Korean)": Case(
        ["", "ISO 2022 IR 149"],
        "Hong^Gildong=洪^吉洞=홍^길동",
        "흉부",
        ("Hong^Gildong", "hong^GILDONG", "洪^吉洞", "홍^길동", "홍^?동", "홍*"),
        ("홍^길",),
    ),
}


def encoded(case: Case) -> bytes:
    """A CT instance whose text is written in ``case``'s character set by pydicom."""
    ds = pydicom.dcmread(io.BytesIO(make_instance(STUDY, SERIES, SOP)))
    if case.charset is not None:
        ds.SpecificCharacterSet = case.charset
    ds.PatientName, ds.StudyDescription = case.name, case.description
    ds.ReferringPhysicianName = case.name
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    body = out.getvalue()
    assert str(pydicom.dcmread(io.BytesIO(body)).PatientName) == case.name
    return body


def pn_json(name: str) -> dict[str, str]:
    """The DICOM JSON of a PN value (PS3.18 §F.2.2): its non-empty component groups."""
    return {g: text for g, text in zip(GROUPS, name.split("="), strict=False) if text}


async def stow(client: httpx.AsyncClient, *bodies: bytes) -> httpx.Response:
    return await client.post(
        "/dicomweb/studies", content=multipart(*bodies), headers={"Content-Type": STOW_TYPE}
    )


@pytest.fixture(params=list(CASES), ids=list(CASES))
async def stored(request: pytest.FixtureRequest, client: httpx.AsyncClient) -> tuple[Case, bytes]:
    case = CASES[request.param]
    body = encoded(case)
    response = await stow(client, body)
    assert response.status_code == 200, response.text
    return case, body


async def test_the_stored_file_comes_back_byte_for_byte(
    client: httpx.AsyncClient, stored: tuple[Case, bytes]
) -> None:
    _, body = stored
    response = await client.get(INSTANCE, headers={"Accept": ANY_TS})
    assert response.status_code == 200
    (part,) = split_multipart(response.content, response.headers["content-type"])
    assert hashlib.sha256(part).hexdigest() == hashlib.sha256(body).hexdigest()


async def test_qido_json_and_xml_give_the_decoded_name(
    client: httpx.AsyncClient, stored: tuple[Case, bytes]
) -> None:
    case, _ = stored
    found = await client.get("/dicomweb/studies", params={"includefield": "StudyDescription"})
    assert found.status_code == 200 and found.headers["content-type"] == "application/dicom+json"
    (study,) = found.json()
    assert study["00100010"] == {"vr": "PN", "Value": [pn_json(case.name)]}
    assert study["00080090"] == {"vr": "PN", "Value": [pn_json(case.name)]}
    assert study["00081030"]["Value"] == [case.description]
    as_xml = await client.get(
        "/dicomweb/studies", params={"includefield": "StudyDescription"}, headers={"Accept": XML}
    )
    assert as_xml.status_code == 200
    (document,) = split_multipart(as_xml.content, as_xml.headers["content-type"])
    root = ET.fromstring(document)
    name = root.find("n:DicomAttribute[@tag='00100010']/n:PersonName", NS)
    assert name is not None
    assert _xml_name(name) == pn_json(case.name)
    description = root.find("n:DicomAttribute[@tag='00081030']/n:Value", NS)
    assert description is not None and description.text == case.description


def _xml_name(person_name: ET.Element) -> dict[str, str]:
    """A PersonName element's groups, components joined by ``^`` (PS3.19 A.1.5)."""
    components = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
    out = {}
    for group in GROUPS:
        element = person_name.find(f"n:{group}", NS)
        if element is None:
            continue
        parts = [element.findtext(f"n:{c}", "", NS) for c in components]
        out[group] = "^".join(parts).rstrip("^")
    return out


async def test_qido_matches_names_in_the_character_set(
    client: httpx.AsyncClient, stored: tuple[Case, bytes]
) -> None:
    case, _ = stored
    for value in case.hits:
        for level in ("studies", "series", "instances"):
            found = await client.get(f"/dicomweb/{level}", params={"PatientName": value})
            assert found.status_code == 200, (value, found.text)
            assert len(found.json()) == 1, (level, value)
        # the value as a client percent-encodes it in the URL, UTF-8 (RFC 3986 §2.5)
        raw = f"/dicomweb/studies?PatientName={quote(value, safe='')}"
        assert len((await client.get(raw)).json()) == 1, value
    for value in case.misses:
        found = await client.get("/dicomweb/studies", params={"PatientName": value})
        assert found.status_code == 200 and found.json() == [], value


async def test_metadata_gives_the_decoded_values(
    client: httpx.AsyncClient, stored: tuple[Case, bytes]
) -> None:
    case, _ = stored
    for url in (f"/dicomweb/studies/{STUDY}/metadata", f"{INSTANCE}/metadata"):
        response = await client.get(url)
        assert response.status_code == 200
        (metadata,) = response.json()
        assert metadata["00100010"]["Value"] == [pn_json(case.name)]
        assert metadata["00081030"]["Value"] == [case.description]
    as_xml = await client.get(f"{INSTANCE}/metadata", headers={"Accept": XML})
    (document,) = split_multipart(as_xml.content, as_xml.headers["content-type"])
    name = ET.fromstring(document).find("n:DicomAttribute[@tag='00100010']/n:PersonName", NS)
    assert name is not None and _xml_name(name) == pn_json(case.name)


def _human(group: str, representation: str | None) -> dict[str, Any]:
    family, given = (group.split("^") + [""])[:2]
    human: dict[str, Any] = {"family": family, "given": [given]}
    if representation:
        human["extension"] = [{"url": EN_REPRESENTATION, "valueCode": representation}]
    return human


async def test_the_patient_and_imaging_study_carry_the_names(
    app: FastAPI, client: httpx.AsyncClient, stored: tuple[Case, bytes]
) -> None:
    case, _ = stored
    await settled(app)
    study = (await client.get(f"/fhir/ImagingStudy/{STUDY}")).json()
    groups = pn_json(case.name)
    family, given = groups["Alphabetic"].split("^")
    assert study["description"] == case.description
    assert study["referrer"] == {"display": f"{given} {family}"}
    patient = (await client.get(f"/fhir/{study['subject']['reference']}")).json()
    expected = [_human(groups["Alphabetic"], None)]
    for group, code in (("Ideographic", "IDE"), ("Phonetic", "SYL")):
        if group in groups:
            expected.append(_human(groups[group], code))
    assert patient["name"] == expected


def _charset_files() -> list[Path]:
    """pydicom's bundled character-set files that are whole images (chrJapMulti and
    chrKoreanMulti have image attributes without pixel data: refused with 0xA900)."""
    kept = []
    for name in sorted(get_charset_files("chr*.dcm")):
        ds = pydicom.dcmread(name)
        if "SOPInstanceUID" in ds and "PixelData" in ds:
            kept.append(Path(name))
    return kept


@pytest.mark.parametrize("path", _charset_files(), ids=lambda p: p.name)
async def test_pydicoms_charset_files_round_trip(
    app: FastAPI, client: httpx.AsyncClient, path: Path
) -> None:
    body = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        groups = pn_json(str(ds.PatientName))
    response = await stow(client, body)
    assert response.status_code == 200, response.text
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    got = await client.get(url, headers={"Accept": ANY_TS})
    (part,) = split_multipart(got.content, got.headers["content-type"])
    assert part == body
    (found,) = (await client.get("/dicomweb/studies")).json()
    assert found["00100010"]["Value"] == [groups]
    (metadata,) = (await client.get(f"{url}/metadata")).json()
    assert metadata["00100010"]["Value"] == [groups]
    for value in groups.values():
        hit = await client.get("/dicomweb/studies", params={"PatientName": value.upper()})
        assert len(hit.json()) == 1, value
    await settled(app)
    imaging = (await client.get(f"/fhir/ImagingStudy/{study}")).json()
    patient = (await client.get(f"/fhir/{imaging['subject']['reference']}")).json()
    assert patient["name"][0]["family"] == groups["Alphabetic"].split("^")[0]


def _with_item_in_its_own_character_set() -> bytes:
    """A Latin-1 instance whose Other Patient IDs item is in Cyrillic (ISO_IR 144),
    the item saying so itself (PS3.5 §7.5.3), with a nested item inheriting it."""
    ds = pydicom.dcmread(io.BytesIO(make_instance(STUDY, SERIES, SOP)))
    ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 100", "Müller^Jürgen"
    nested = Dataset()
    nested.PatientName = "Петров^Пётр"
    item = Dataset()
    item.SpecificCharacterSet, item.PatientName, item.PatientID = "ISO_IR 144", "Иванов", "X1"
    item.OtherPatientIDsSequence = [nested]
    plain = Dataset()
    plain.PatientName, plain.PatientID = "Jörg", "X2"  # the enclosing Latin-1 again
    ds.OtherPatientIDsSequence = [item, plain]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def test_a_sequence_item_is_read_in_its_own_character_set(
    client: httpx.AsyncClient,
) -> None:
    assert (await stow(client, _with_item_in_its_own_character_set())).status_code == 200
    (metadata,) = (await client.get(f"{INSTANCE}/metadata")).json()
    assert metadata["00100010"]["Value"] == [{"Alphabetic": "Müller^Jürgen"}]
    first, second = metadata["00101002"]["Value"]
    assert first["00100010"]["Value"] == [{"Alphabetic": "Иванов"}]
    assert first["00101002"]["Value"][0]["00100010"]["Value"] == [{"Alphabetic": "Петров^Пётр"}]
    assert second["00100010"]["Value"] == [{"Alphabetic": "Jörg"}]
    # the patient's attributes are the study's: QIDO-RS returns the same
    found = await client.get("/dicomweb/studies", params={"includefield": "00101002"})
    (study,) = found.json()
    assert study["00101002"] == metadata["00101002"]


@pytest.mark.parametrize(
    ("charset", "name", "decoded"),
    [
        # pydicom falls back to Latin-1 for a term it does not know
        ("ISO_IR 999", b"M\xfcller^J\xfcrgen", "Müller^Jürgen"),
        ("\\ISO 2022 IR 999", b"Smith^John", "Smith^John"),
        # a misspelling pydicom reads as the term meant: still none of the Defined Terms
        ("ISO-IR 144", b"\xb8\xd2\xd0\xdd\xde\xd2", "Иванов"),
    ],
)
async def test_an_unknown_character_set_is_stored_with_a_warning(
    client: httpx.AsyncClient, charset: str, name: bytes, decoded: str
) -> None:
    """The instance is kept as sent (no Failure Reason of PS3.18 Table I.2-2 fits,
    and nothing in it changes); the 200 answer warns that its text may be misread."""
    body = _raw_named(charset, name)
    response = await stow(client, body)
    assert response.status_code == 200, response.text
    (warning,) = response.headers.get_list("warning")
    assert warning.startswith(f'299 radhub "{SOP}: Specific Character Set ')
    assert "is not a term this archive knows" in warning
    got = await client.get(INSTANCE, headers={"Accept": ANY_TS})
    assert split_multipart(got.content, got.headers["content-type"]) == [body]
    (study,) = (await client.get("/dicomweb/studies")).json()
    assert study["00100010"]["Value"] == [{"Alphabetic": decoded}]


def _raw_named(charset: str, name: bytes) -> bytes:
    """An instance whose (0008,0005) and PatientName bytes are as given, written
    around pydicom (which warns of, or refuses, a character set it does not know)."""
    ds = pydicom.dcmread(io.BytesIO(make_instance(STUDY, SERIES, SOP, name="X")))
    ds.SpecificCharacterSet = "ISO_IR 100"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    body = out.getvalue()

    def element(tag: bytes, vr: bytes, value: bytes) -> bytes:
        value += b" " * (len(value) % 2)
        return tag + vr + len(value).to_bytes(2, "little") + value

    old_charset = element(b"\x08\x00\x05\x00", b"CS", b"ISO_IR 100")
    old_name = element(b"\x10\x00\x10\x00", b"PN", b"X")
    assert body.count(old_charset) == 1 and body.count(old_name) == 1
    body = body.replace(old_charset, element(b"\x08\x00\x05\x00", b"CS", charset.encode()))
    return body.replace(old_name, element(b"\x10\x00\x10\x00", b"PN", name))
