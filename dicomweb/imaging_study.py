"""DICOM index rows → FHIR R4 ImagingStudy and Patient (pure mappings).

See https://hl7.org/fhir/R4/imagingstudy.html: the study is identified by
``urn:dicom:uid`` / ``urn:oid:<StudyInstanceUID>`` and by its accession number
(identifier type ACSN); modalities and SOP classes are Codings in the DICOM
and RFC 3986 systems. No I/O, clock or id generation here: the caller passes
the links it resolved (``StudyLinks``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import quote

from dicomweb.body_parts import SNOMED, body_site
from fhir_server.storage.dicom_port import InstanceRow, Json, SeriesRow, StudyRow

DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
RFC3986 = "urn:ietf:rfc:3986"
UNKNOWN_PATIENT_SYSTEM = "urn:radhub:dicom-study-without-patient-id"
LOCAL_ISSUER_SYSTEM = "urn:radhub:issuer:"  # + the issuer's name, percent-encoded
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")  # RFC 3986 scheme; FHIR uri is \S*

_SEX = {"M": "male", "F": "female", "O": "other"}
# PS3.16 CID 244 Laterality → its SNOMED CT codes. R4's binding of
# ImagingStudy.series.laterality is only an example (bodysite-laterality, other SNOMED
# codes), so the codes DICOM itself uses for ImageLaterality are the ones kept.
_LATERALITY = {
    "R": ("24028007", "Right"),
    "L": ("7771000", "Left"),
    "B": ("51440002", "Right and left"),
}
# FHIR's unsignedInt: series and instance numbers beyond it (IS allows up to 2^31 - 1
# too, but some senders exceed it) are left out rather than failing the resource
_UNSIGNED_INT_MAX = 2**31 - 1
_WHITESPACE = re.compile(r"\s+")
# PS3.16 Table 8-1 Coding Scheme Designators → FHIR system URIs, for the schemes FHIR
# names. SRT is left out on purpose: its SNOMED RT identifiers are not SNOMED CT codes.
_CODING_SYSTEMS = {
    "DCM": DCM,
    "SCT": SNOMED,
    "LN": "http://loinc.org",
    "RADLEX": "http://radlex.org",
    "UCUM": "http://unitsofmeasure.org",
}


@dataclass(frozen=True)
class StudyLinks:
    """What the caller resolved: the subject, order and DICOMweb endpoint references,
    and the site's time zone for DICOM times without an offset (``fhir_started``)."""

    patient: str
    service_request: str | None = None
    endpoint: str | None = None
    zone: tzinfo | None = None


def first(attrs: Json, tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object, or None."""
    values = (attrs.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _text(attrs: Json, tag: str) -> str | None:
    """The first value as text, without the padding that is not part of it: every
    attribute read here (LO, SH, CS, PN, DA, TM...) has leading and trailing spaces
    that are not significant (PS3.5 6.2), so ``" P18 "`` is Patient ID ``P18``."""
    value = first(attrs, tag)
    if isinstance(value, dict):
        value = value.get("Alphabetic")
    text = "" if value is None else str(value).strip()
    return text or None


def accession_number(study_attrs: Json) -> str | None:
    """The study's AccessionNumber, its padding removed, if it has one."""
    return _text(study_attrs, "00080050")


def fhir_code(text: str | None) -> str | None:
    """``text`` as a FHIR ``code`` (R4: no leading or trailing whitespace, single
    spaces within), or None when nothing is left: DICOM allows ``"C  T"`` in a CS
    or SH that FHIR would refuse, and one such value must not fail the whole study."""
    if text is None:
        return None
    return _WHITESPACE.sub(" ", text).strip() or None


def _unsigned(number: Any) -> int | None:
    """A DICOM IS value as FHIR's unsignedInt, or None when it is none."""
    if isinstance(number, int) and not isinstance(number, bool):
        return number if 0 <= number <= _UNSIGNED_INT_MAX else None
    return None


@dataclass(frozen=True)
class PatientNamespaces:
    """Where DICOM Patient IDs live as FHIR identifiers: ``default`` for IDs without
    an IssuerOfPatientID, ``issuers`` for the local issuer names a site has mapped."""

    default: str
    issuers: Mapping[str, str] = field(default_factory=dict)

    def system(self, issuer: str) -> str:
        """An IssuerOfPatientID's system: as mapped; a URI as it is; an OID as
        ``urn:oid:``; any other name in a namespace of its own."""
        if issuer in self.issuers:
            return self.issuers[issuer]
        if _URI.fullmatch(issuer):
            return issuer
        if _OID.fullmatch(issuer):
            return f"urn:oid:{issuer}"
        return LOCAL_ISSUER_SYSTEM + quote(issuer, safe="")


def patient_identifier(study_attrs: Json, namespaces: PatientNamespaces) -> tuple[str, str]:
    """(system, value) of the study's patient: PatientID in the namespace its
    IssuerOfPatientID names (the default one without); the study UID without a
    PatientID. A Patient ID is unique only within its issuer (PS3.3 C.7.1.1), so
    IDs of two issuers never share a system: that would make two people one
    Patient, and give each one's patient token the other's studies."""
    value = _text(study_attrs, "00100020")
    if value is None:
        return UNKNOWN_PATIENT_SYSTEM, str(first(study_attrs, "0020000D"))
    issuer = (_text(study_attrs, "00100021") or "").strip()
    return namespaces.system(issuer) if issuer else namespaces.default, value


# PS3.5 Table 6.2-1: TM ``HHMM[SS[.F]]`` (read with its pre-3.0 colons removed), and
# an offset ``&ZZXX`` within FHIR's -14:00..+14:00
_TM = re.compile(r"([01][0-9]|2[0-3])([0-5][0-9])([0-5][0-9]|60)?(\.[0-9]{1,6})?")
_OFFSET = re.compile(r"[+-]((0[0-9]|1[0-3])[0-5][0-9]|1400)")


def fhir_date(da: str | None) -> str | None:
    """DICOM DA ``YYYYMMDD`` → FHIR date, or None when it is no day of the calendar
    (``00000000``, common for an unknown date, would fail the FHIR validation)."""
    if not da or len(da) != 8 or not (da.isascii() and da.isdigit()):
        return None
    try:
        date(int(da[:4]), int(da[4:6]), int(da[6:]))
    except ValueError:
        return None
    return f"{da[:4]}-{da[4:6]}-{da[6:]}"


def fhir_started(
    day: str | None, time: str | None, offset: str | None, zone: tzinfo | None = None
) -> str | None:
    """DA + TM (+ TimezoneOffsetFromUTC) → FHIR dateTime, seconds' fraction kept.
    FHIR requires a zone whenever a time is given, and most modalities send no
    TimezoneOffsetFromUTC: then the site's ``zone`` (``--dicom-timezone``) gives
    the offset that held at that local time; without either, the date alone."""
    when = fhir_date(day)
    clock = _TM.fullmatch(time.replace(":", "")) if time else None
    if when is None or clock is None:
        return when
    hours, minutes, seconds = clock.group(1), clock.group(2), clock.group(3) or "00"
    if offset and _OFFSET.fullmatch(offset):
        zoned = f"{offset[:3]}:{offset[3:]}"
    elif not offset and zone is not None:
        zoned = _offset_at(when, int(hours), int(minutes), int(seconds), zone)
    else:  # an offset that is none: no time rather than a wrong one
        return when
    return f"{when}T{hours}:{minutes}:{seconds}{clock.group(4) or ''}{zoned}"


def _offset_at(day: str, hours: int, minutes: int, seconds: int, zone: tzinfo) -> str:
    """``±HH:MM``, the UTC offset of ``zone`` at that local time (summer time too)."""
    year, month, date_of_month = map(int, day.split("-"))
    local = datetime(year, month, date_of_month, hours, minutes, min(seconds, 59), tzinfo=zone)
    shift = local.utcoffset() or timedelta()
    sign, total = ("-", -shift) if shift < timedelta() else ("+", shift)
    whole_minutes = int(total.total_seconds()) // 60
    return f"{sign}{whole_minutes // 60:02d}:{whole_minutes % 60:02d}"


def human_name(pn: str) -> Json:
    """A DICOM person name's alphabetic group (family^given^middle^prefix^suffix,
    PS3.5 6.2) → an R4 HumanName; empty when every component is."""
    family, given, middle, prefix, suffix = (p.strip() for p in (pn.split("^") + [""] * 5)[:5])
    human: Json = {"family": family} if family else {}
    if names := [n for n in (given, middle) if n]:
        human["given"] = names
    if prefix:
        human["prefix"] = [prefix]
    if suffix:
        human["suffix"] = [suffix]
    return human


# R4's core extension for the script a name is written in (ISO 21090 EN.representation)
EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
_PN_GROUPS = (("Alphabetic", None), ("Ideographic", "IDE"), ("Phonetic", "SYL"))


def person_names(value: object) -> list[Json]:
    """Every component group of a DICOM JSON person name (PS3.18 F.2.2) as a
    HumanName: the alphabetic one plain, the ideographic and phonetic ones marked
    with their representation (a name given only in kanji or hangul is kept)."""
    if not isinstance(value, dict):
        return []
    names: list[Json] = []
    for group, representation in _PN_GROUPS:
        text = value.get(group)
        if not isinstance(text, str) or not (human := human_name(text)):
            continue
        if representation is not None:
            human["extension"] = [{"url": EN_REPRESENTATION, "valueCode": representation}]
        names.append(human)
    return names


def name_text(human: Json) -> str:
    """A HumanName as people write it: prefix, given names, family name, suffix."""
    family = [human["family"]] if "family" in human else []
    words = [*human.get("prefix", []), *human.get("given", []), *family, *human.get("suffix", [])]
    return " ".join(words)


def _started(attrs: Json, date_tag: str, time_tag: str, zone: tzinfo | None) -> str | None:
    """``fhir_started`` of a level's date and time, with the TimezoneOffsetFromUTC
    every level keeps."""
    day, time = _text(attrs, date_tag), _text(attrs, time_tag)
    return fhir_started(day, time, _text(attrs, "00080201"), zone)


def map_patient(study_attrs: Json, system: str, value: str) -> dict[str, Any]:
    """A Patient from the DICOM demographics (PatientName, Sex, BirthDate)."""
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": value}],
    }
    if names := person_names(first(study_attrs, "00100010")):
        patient["name"] = names
    sex = _text(study_attrs, "00100040")
    patient["gender"] = _SEX.get(sex or "", "unknown")
    birth = fhir_date(_text(study_attrs, "00100030"))
    if birth:
        patient["birthDate"] = birth
    return patient


def coded_concept(item: Json) -> Json | None:
    """A DICOM Code Sequence item (PS3.3 8.8) → an R4 CodeableConcept: the system of a
    scheme FHIR names, else the code and meaning without one; None without a code."""
    meaning = _text(item, "00080104")
    if urn := fhir_code(_text(item, "00080120")):  # URN Code Value: its own system
        coding: Json = {"system": RFC3986, "code": urn}
    elif code := fhir_code(_text(item, "00080100") or _text(item, "00080119")):
        coding = {"code": code}
        if system := _CODING_SYSTEMS.get(_text(item, "00080102") or ""):
            coding = {"system": system, **coding}
    else:
        return None
    if meaning:
        coding["display"] = meaning
    return {"coding": [coding], "text": meaning} if meaning else {"coding": [coding]}


def _instance(row: InstanceRow) -> dict[str, Any]:
    out: dict[str, Any] = {
        "uid": row.uid,
        "sopClass": {"system": RFC3986, "code": f"urn:oid:{first(row.attrs, '00080016')}"},
    }
    if (number := _unsigned(row.instance_number)) is not None:
        out["number"] = number
    return out


def _series(
    row: SeriesRow, mine: Sequence[InstanceRow], endpoint: str | None, zone: tzinfo | None
) -> Json:
    a = row.attrs
    out: dict[str, Any] = {
        "uid": row.uid,
        "modality": {"system": DCM, "code": fhir_code(_text(a, "00080060")) or "OT"},
        "numberOfInstances": row.instance_count,
    }
    if (number := _unsigned(first(a, "00200011"))) is not None:
        out["number"] = number
    if description := _text(a, "0008103E"):
        out["description"] = description
    if started := _started(a, "00080021", "00080031", zone):
        out["started"] = started
    if body := _text(a, "00180015"):
        out["bodySite"] = body_site(body)
    if (side := _laterality(a, mine)) is not None:
        code, display = _LATERALITY[side]
        out["laterality"] = {"system": SNOMED, "code": code, "display": display}
    if endpoint:
        out["endpoint"] = [{"reference": endpoint}]
    out["instance"] = [_instance(i) for i in sorted(mine, key=_instance_order)]
    return out


def _laterality(series_attrs: Json, mine: Sequence[InstanceRow]) -> str | None:
    """The series' Laterality, else the ImageLaterality its instances all share (a
    mammography or radiography series gives only the latter, per image)."""
    if (side := _text(series_attrs, "00200060")) in _LATERALITY:
        return side
    sides = {_text(i.attrs, "00200062") for i in mine}
    if len(sides) == 1 and (only := sides.pop()) in _LATERALITY:
        return only
    return None


def _number_order(number: Any, uid: str) -> tuple[int, int, str]:
    """By number where there is one, then the unnumbered; UID breaks ties."""
    numbered = _unsigned(number)
    return (1, 0, uid) if numbered is None else (0, numbered, uid)


def _series_order(row: SeriesRow) -> tuple[int, int, str]:
    return _number_order(first(row.attrs, "00200011"), row.uid)


def _instance_order(row: InstanceRow) -> tuple[int, int, str]:
    return _number_order(row.instance_number, row.uid)


def map_study(
    study: StudyRow,
    series: Sequence[SeriesRow],
    instances: Sequence[InstanceRow],
    links: StudyLinks,
) -> dict[str, Any]:
    """The ImagingStudy of one indexed study (id: the Study Instance UID)."""
    a = study.attrs
    identifiers: list[dict[str, Any]] = [
        {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study.uid}"}
    ]
    if accession := accession_number(a):
        coding = {"system": V2_0203, "code": "ACSN"}
        identifiers.append({"type": {"coding": [coding]}, "value": accession})
    out: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": study.uid,
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": links.patient},
        "numberOfSeries": study.series_count,
        "numberOfInstances": study.instance_count,
    }
    if modalities := list(dict.fromkeys(filter(None, map(fhir_code, study.modalities)))):
        out["modality"] = [{"system": DCM, "code": m} for m in modalities]
    if started := _started(a, "00080020", "00080030", links.zone):
        out["started"] = started
    if links.service_request:
        out["basedOn"] = [{"reference": links.service_request}]
    if names := person_names(first(a, "00080090")):
        # ReferringPhysicianName names no Practitioner resource: the name alone, from
        # its first group that has one (a name given only in kanji is still shown)
        out["referrer"] = {"display": name_text(names[0])}
    if links.endpoint:
        out["endpoint"] = [{"reference": links.endpoint}]
    if description := _text(a, "00081030"):
        out["description"] = description
    items = (a.get("00081032") or {}).get("Value") or []
    if procedures := [c for c in map(coded_concept, items) if c is not None]:
        out["procedureCode"] = procedures
    # in the order a reader expects them: by series, then instance, number
    by_series: dict[str, list[InstanceRow]] = {}
    for instance in instances:
        by_series.setdefault(instance.series_uid, []).append(instance)
    out["series"] = [
        _series(s, by_series.get(s.uid, []), links.endpoint, links.zone)
        for s in sorted(series, key=_series_order)
    ]
    return out


# What ``map_study`` writes (when the images have it): the archive's. ``text`` too: a
# narrative of the old content would no longer say what the resource says.
ARCHIVE_ELEMENTS = frozenset(
    {
        "resourceType", "id", "meta", "text", "identifier", "status", "subject",
        "numberOfSeries", "numberOfInstances", "modality", "started", "basedOn",
        "referrer", "endpoint", "description", "procedureCode", "series",
    }
)  # fmt: skip


def with_client_elements(mapped: Json, current: Json | None) -> Json:
    """``mapped`` with the elements of the stored ImagingStudy the archive does not
    write (a note, reasonCode, interpreter… a FHIR client added) and its meta but
    for the server's own (tags, security labels): rewriting the study from the
    images must not silently drop them."""
    if current is None:
        return mapped
    kept = {k: v for k, v in current.items() if k not in ARCHIVE_ELEMENTS}
    meta = current.get("meta") or {}
    if labels := {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}:
        kept["meta"] = labels
    return mapped | kept
