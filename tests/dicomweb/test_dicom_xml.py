"""DICOM JSON to Native DICOM Model XML (PS3.19 §A.1): expected snippets per VR kind,
and every kind parsed back with ElementTree."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from dicomweb.dicom_xml import NATIVE_DICOM_NAMESPACE, native_xml, xml_parts
from tests.dicomweb.dicom_data import split_multipart
from tests.dicomweb.xml_compare import NS, comparable, from_xml, values

# (case, one DICOM JSON element under its tag, the DicomAttribute expected for it)
SNIPPETS: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "string",
        "00080060",
        {"vr": "CS", "Value": ["CT"]},
        '<DicomAttribute tag="00080060" vr="CS" keyword="Modality">'
        '<Value number="1">CT</Value></DicomAttribute>',
    ),
    (
        "empty value among values",
        "00080008",
        {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]},
        '<DicomAttribute tag="00080008" vr="CS" keyword="ImageType">'
        '<Value number="1">ORIGINAL</Value><Value number="2"/>'
        '<Value number="3">AXIAL</Value></DicomAttribute>',
    ),
    (
        "no value",
        "00200012",
        {"vr": "IS"},
        '<DicomAttribute tag="00200012" vr="IS" keyword="AcquisitionNumber"></DicomAttribute>',
    ),
    (
        "decimal strings",
        "00280030",
        {"vr": "DS", "Value": [0.5, 70, 1e-05]},
        '<DicomAttribute tag="00280030" vr="DS" keyword="PixelSpacing">'
        '<Value number="1">0.5</Value><Value number="2">70</Value>'
        '<Value number="3">1e-05</Value></DicomAttribute>',
    ),
    (
        "a 64-bit integer JSON holds as a string",
        "00189219",
        {"vr": "UV", "Value": ["18446744073709551615"]},
        '<DicomAttribute tag="00189219" vr="UV" keyword="TagAngleSecondAxis">'
        '<Value number="1">18446744073709551615</Value></DicomAttribute>',
    ),
    (
        "person name components and groups",
        "00100010",
        {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou^^Dr", "Ideographic": "山田^太郎"}]},
        '<DicomAttribute tag="00100010" vr="PN" keyword="PatientName">'
        '<PersonName number="1"><Alphabetic><FamilyName>Yamada</FamilyName>'
        "<GivenName>Tarou</GivenName><NamePrefix>Dr</NamePrefix></Alphabetic>"
        "<Ideographic><FamilyName>山田</FamilyName><GivenName>太郎</GivenName></Ideographic>"
        "</PersonName></DicomAttribute>",
    ),
    (
        "attribute tag",
        "00209165",
        {"vr": "AT", "Value": ["0020000d", "00209057"]},
        '<DicomAttribute tag="00209165" vr="AT" keyword="DimensionIndexPointer">'
        '<Value number="1">0020000D</Value><Value number="2">00209057</Value>'
        "</DicomAttribute>",
    ),
    (
        "bulk data",
        "7FE00010",
        {"vr": "OW", "BulkDataURI": "http://h/x?a=1&b=2"},
        '<DicomAttribute tag="7FE00010" vr="OW" keyword="PixelData">'
        '<BulkData uri="http://h/x?a=1&amp;b=2"/></DicomAttribute>',
    ),
    (
        "inline binary",
        "00420011",
        {"vr": "OB", "InlineBinary": "AAEC"},
        '<DicomAttribute tag="00420011" vr="OB" keyword="EncapsulatedDocument">'
        "<InlineBinary>AAEC</InlineBinary></DicomAttribute>",
    ),
    (
        "markup characters",
        "00081030",
        {"vr": "LO", "Value": ["<a> & b"]},
        '<DicomAttribute tag="00081030" vr="LO" keyword="StudyDescription">'
        '<Value number="1">&lt;a&gt; &amp; b</Value></DicomAttribute>',
    ),
    (
        "characters XML 1.0 cannot hold",
        "00104000",
        {"vr": "LT", "Value": ["page\x0cbreak\x00\r\n"]},
        '<DicomAttribute tag="00104000" vr="LT" keyword="PatientComments">'
        '<Value number="1">page\ufffdbreak\ufffd&#13;\n</Value></DicomAttribute>',
    ),
    (
        "private element without its creator",
        "00091001",
        {"vr": "LO", "Value": ["x"]},
        '<DicomAttribute tag="00091001" vr="LO"><Value number="1">x</Value></DicomAttribute>',
    ),
]


@pytest.mark.parametrize(
    ("tag", "element", "expected"),
    [case[1:] for case in SNIPPETS],
    ids=[case[0] for case in SNIPPETS],
)
def test_each_kind_of_value_is_written_as_ps3_19_says(
    tag: str, element: dict[str, Any], expected: str
) -> None:
    document = native_xml({tag: element}).decode("utf-8")
    assert document.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel ')
    assert 'xml:space="preserve"' in document
    assert expected in document
    ET.fromstring(document.encode())  # well-formed whatever the value held


def test_private_elements_name_their_creator_and_drop_the_block() -> None:
    document = native_xml(
        {
            "00090010": {"vr": "LO", "Value": ["ACME 1"]},
            "00090011": {"vr": "LO", "Value": ["OTHER"]},
            "00091001": {"vr": "LO", "Value": ["first"]},
            "00091101": {"vr": "LO", "Value": ["second"]},
            "00080000": {"vr": "UL", "Value": [12]},  # a group length: left out
        }
    )
    root = ET.fromstring(document)
    written = [
        (a.get("tag"), a.get("privateCreator"), a.get("keyword"), values(a))
        for a in root.findall("n:DicomAttribute", NS)
    ]
    assert written == [
        ("00090010", None, None, ["ACME 1"]),
        ("00090011", None, None, ["OTHER"]),
        ("00090001", "ACME 1", None, ["first"]),
        ("00090001", "OTHER", None, ["second"]),
    ]


EVERY_KIND: dict[str, Any] = {
    "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
    "00080020": {"vr": "DA", "Value": ["20240102"]},
    "00100010": {
        "vr": "PN",
        "Value": [{"Alphabetic": "Doe^Jane"}, {"Alphabetic": "Roe^Ann^B^Ms^III"}, None],
    },
    "00101010": {"vr": "AS", "Value": ["042Y"]},
    "00200013": {"vr": "IS", "Value": [7]},
    "00281050": {"vr": "DS", "Value": [40.5, -3]},
    "00180088": {"vr": "DS"},
    "00189089": {"vr": "FD", "Value": [0.0, 1.25]},
    "00189219": {"vr": "FL", "Value": [2.5]},
    "00280010": {"vr": "US", "Value": [512]},
    "00281041": {"vr": "SS", "Value": [-1]},
    "00081161": {"vr": "UL", "Value": [4294967295]},
    "00189806": {"vr": "SL", "Value": [-2147483648]},
    "00720064": {"vr": "UV", "Value": [9007199254740991]},
    "00720066": {"vr": "SV", "Value": ["-9223372036854775808"]},
    "00209165": {"vr": "AT", "Value": ["7FE00010"]},
    "00400275": {
        "vr": "SQ",
        "Value": [
            {
                "00400009": {"vr": "SH", "Value": ["SPS1"]},
                "00400008": {
                    "vr": "SQ",
                    "Value": [{"00080100": {"vr": "SH", "Value": ["X1"]}}, {}],
                },
            }
        ],
    },
    "00081199": {"vr": "SQ"},
    "7FE00010": {"vr": "OW", "BulkDataURI": "http://h/bulkdata/7FE00010"},
    "00420011": {"vr": "OB", "InlineBinary": "3q2+7w=="},
}


def test_every_kind_parses_back_to_the_jsonvalues() -> None:
    root = ET.fromstring(native_xml(EVERY_KIND))
    assert root.tag == f"{{{NATIVE_DICOM_NAMESPACE}}}NativeDicomModel"
    assert from_xml(root) == comparable(EVERY_KIND)


def test_xml_parts_are_one_document_each() -> None:
    content_type = 'multipart/related; type="application/dicom+xml"; boundary=b0'
    body = b"".join(xml_parts([{"00080060": {"vr": "CS", "Value": [m]}} for m in "AB"], "b0"))
    documents = [ET.fromstring(p) for p in split_multipart(body, content_type)]
    assert [values(d[0]) for d in documents] == [["A"], ["B"]]
    assert b"Content-Type: application/dicom+xml\r\n" in body
    assert b"".join(xml_parts([], "b0")) == b"--b0--\r\n"


def test_a_carriage_return_survives_parsing() -> None:
    """XML parsers turn CR LF into LF unless the CR is a character reference."""
    root = ET.fromstring(native_xml({"00104000": {"vr": "LT", "Value": ["a\r\nb\rc"]}}))
    assert values(root[0]) == ["a\r\nb\rc"]
