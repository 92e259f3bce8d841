"""Native DICOM Model XML read back into what DICOM JSON holds, to compare the two."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from dicomweb.dicom_xml import NATIVE_DICOM_NAMESPACE

NS = {"n": NATIVE_DICOM_NAMESPACE}


def comparable(dataset: dict[str, Any]) -> dict[str, Any]:
    """The JSON as XML keeps it: values as text, empty values as ``None``, no group
    lengths."""
    out: dict[str, Any] = {}
    for tag, element in sorted(dataset.items()):
        given = element.get("Value", [])
        if tag.endswith("0000"):
            continue
        if element["vr"] == "SQ":
            kept: Any = [comparable(item) for item in given]
        elif element["vr"] == "PN":
            kept = [(v or {}).get("Alphabetic") for v in given]
        elif "BulkDataURI" in element or "InlineBinary" in element:
            kept = element.get("BulkDataURI") or element["InlineBinary"]
        else:
            kept = [None if v is None else str(v) for v in given]
        out[tag] = (element["vr"], kept)
    return out


def from_xml(parent: ET.Element) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attribute in parent.findall("n:DicomAttribute", NS):
        vr = attribute.get("vr")
        if vr == "SQ":
            kept: Any = [from_xml(item) for item in attribute.findall("n:Item", NS)]
        elif vr == "PN":
            kept = [_alphabetic(name) for name in attribute.findall("n:PersonName", NS)]
        elif (bulk := attribute.find("n:BulkData", NS)) is not None:
            kept = bulk.get("uri")
        elif (inline := attribute.find("n:InlineBinary", NS)) is not None:
            kept = inline.text
        else:
            kept = [v.text for v in attribute.findall("n:Value", NS)]
            numbers = [v.get("number") for v in attribute.findall("n:Value", NS)]
            assert numbers == [str(n) for n in range(1, len(kept) + 1)]
        out[str(attribute.get("tag"))] = (vr, kept)
    return out


def _alphabetic(name: ET.Element) -> str | None:
    group = name.find("n:Alphabetic", NS)
    if group is None:
        return None
    components = {c.tag.split("}")[1]: c.text for c in group}
    order = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
    return "^".join(components.get(c) or "" for c in order).rstrip("^")


def values(attribute: ET.Element) -> list[str | None]:
    return [v.text for v in attribute.findall("n:Value", NS)]
