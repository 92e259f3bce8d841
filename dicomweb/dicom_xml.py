"""DICOM JSON (PS3.18 Annex F) to the Native DICOM Model XML (PS3.19 §A.1), the
``application/dicom+xml`` form of QIDO-RS results, metadata and STOW-RS responses
(PS3.18 §8.7.3.2, Annex F.3).

A pure mapping from the JSON radhub already makes, written as text in one pass
(no element tree is built: a study's metadata is converted on every request).
Following Table A.1.5-2 of PS3.19:

- ``tag`` is eight upper-case hex digits; a private data element is written as
  ``gggg00ee`` with the ``privateCreator`` of its block, when the dataset holds
  that block's creator (one without a known creator keeps its full tag: its
  block cannot be named otherwise); ``keyword`` comes from pydicom's data
  dictionary, for standard attributes only; group lengths are left out.
- one ``Value`` per value (an empty value an empty ``Value``), ``PersonName``
  split into its ``Alphabetic``/``Ideographic``/``Phonetic`` groups and their
  ``^``-separated components, ``Item`` per sequence item, ``BulkData uri`` for a
  ``BulkDataURI``, ``InlineBinary`` as the JSON's base64; AT values as eight hex
  digits.

XML 1.0 cannot carry some characters a DICOM value may hold (control characters
but TAB, LF and CR, e.g. the form feed PS3.5 §6.1.3 allows in text; U+FFFE,
U+FFFF); not even as character references (XML 1.0 §2.2, §4.1). PS3.19 gives no
escape for them, so each becomes U+FFFD, the replacement character: the document
stays well-formed, and where a value was damaged stays visible. A CR is written
as ``&#13;``, which a parser does not fold into LF (XML 1.0 §2.11).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pydicom.datadict import keyword_for_tag

from dicomweb.multipart import close_delimiter, part_head

DICOM_XML = "application/dicom+xml"
NATIVE_DICOM_NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
_ROOT_OPEN = f'<NativeDicomModel xmlns="{NATIVE_DICOM_NAMESPACE}" xml:space="preserve">'
# PS3.5 §6.2, PN: the five components of each component group, in order
NAME_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
# XML 1.0 §2.2 Char: what is not in it cannot appear in a document at all
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTRIBUTE_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}
)

Dataset = Mapping[str, Any]


def native_xml(dataset: Dataset) -> bytes:
    """One DICOM JSON dataset as a Native DICOM Model document, UTF-8 (PS3.19 §A.1)."""
    return "".join((_DECLARATION, _ROOT_OPEN, *_attributes(dataset), "</NativeDicomModel>")).encode(
        "utf-8"
    )


def _attributes(dataset: Dataset) -> Iterator[str]:
    for key in sorted(dataset, key=str.upper):
        tag = int(key, 16)
        if tag & 0xFFFF == 0:  # group length: "shall not be included" (PS3.19 §A.1.5)
            continue
        yield from _attribute(tag, dataset[key], dataset)


def _attribute(tag: int, element: Mapping[str, Any], dataset: Dataset) -> Iterator[str]:
    vr = element.get("vr")
    written, creator = _tag_and_creator(tag, dataset)
    head = f'<DicomAttribute tag="{written:08X}"'
    if isinstance(vr, str):
        head += f' vr="{_attribute_text(vr)}"'
    if not tag >> 16 & 1:
        keyword = keyword_for_tag(tag)
        if keyword:
            head += f' keyword="{keyword}"'
    if creator is not None:
        head += f' privateCreator="{_attribute_text(creator)}"'
    yield head + ">"
    yield from _content(vr, element)
    yield "</DicomAttribute>"


def _tag_and_creator(tag: int, dataset: Dataset) -> tuple[int, str | None]:
    """The tag to write and its Private Creator: a private data element of a block
    whose creator this dataset holds is ``gggg00ee`` (PS3.19 Table A.1.5-2, tag)."""
    group, element = tag >> 16, tag & 0xFFFF
    if not group & 1 or element < 0x1000:  # standard, or a Private Creator itself
        return tag, None
    creator = _first_value(dataset, f"{group:04X}{element >> 8:04X}")
    if not isinstance(creator, str) or not creator:
        return tag, None
    return (group << 16) | (element & 0xFF), creator


def _first_value(dataset: Dataset, key: str) -> Any:
    element = dataset.get(key) or dataset.get(key.lower())
    if not isinstance(element, Mapping):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


def _content(vr: Any, element: Mapping[str, Any]) -> Iterator[str]:
    if "BulkDataURI" in element:
        yield f'<BulkData uri="{_attribute_text(str(element["BulkDataURI"]))}"/>'
    elif "InlineBinary" in element:
        yield f"<InlineBinary>{_text(str(element['InlineBinary']))}</InlineBinary>"
    else:
        values = element.get("Value")
        if isinstance(values, list):
            yield from _values(vr, values)


def _values(vr: Any, values: Sequence[Any]) -> Iterator[str]:
    for number, value in enumerate(values, start=1):
        if vr == "SQ":
            yield f'<Item number="{number}">'
            if isinstance(value, Mapping):
                yield from _attributes(value)
            yield "</Item>"
        elif vr == "PN":
            yield _person_name(number, value)
        elif value is None:
            yield f'<Value number="{number}"/>'
        else:
            yield f'<Value number="{number}">{_text(_scalar(vr, value))}</Value>'


def _scalar(vr: Any, value: Any) -> str:
    if vr == "AT" and isinstance(value, str):
        return value.upper()
    if isinstance(value, bool):  # (not a DICOM JSON number; as JSON would write it)
        return "true" if value else "false"
    return str(value)  # an int, a float (shortest round-trip form) or a string


def _person_name(number: int, value: Any) -> str:
    """A ``PersonName`` element: each component group of the JSON, split at ``^``
    into the components it has (PS3.19 Table A.1.5-2, PersonName; PS3.5 §6.2)."""
    groups = value if isinstance(value, Mapping) else {}
    parts = [f'<PersonName number="{number}">']
    for group in NAME_GROUPS:
        text = groups.get(group)
        if not isinstance(text, str) or not text:
            continue
        parts.append(f"<{group}>")
        for name, component in zip(NAME_COMPONENTS, text.split("^"), strict=False):
            if component:
                parts.append(f"<{name}>{_text(component)}</{name}>")
        parts.append(f"</{group}>")
    parts.append("</PersonName>")
    return "".join(parts)


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value).translate(_TEXT_ESCAPES)


def _attribute_text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value).translate(_ATTRIBUTE_ESCAPES)


def xml_parts(datasets: Iterable[Dataset], boundary: str) -> Iterator[bytes]:
    """``datasets`` as the body of a ``multipart/related; type="application/dicom+xml"``
    response, one document per part (PS3.18 §8.7.3.2), made one at a time as read."""
    first = True
    for dataset in datasets:
        yield part_head(boundary, DICOM_XML, first=first) + native_xml(dataset)
        first = False
    yield close_delimiter(boundary, empty=first)
