"""QIDO matching rules that span attributes, on every adapter, against the oracle.

Records are DICOM JSON indexed with ``records.match_keys``; queries go through
``parse_qido`` and ``compile_query`` to the store, and the same query through
``qido_match`` over the same JSON. Each case also names the expected UIDs, so
the store and the oracle cannot agree on a wrong answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import orjson
import pytest

from dicomweb.qido import Level, parse_qido
from dicomweb.qido_compile import Scope, compile_query
from dicomweb.qido_match import matches
from dicomweb.records import KEYS_VERSION, datetime_key, item_key, match_keys, rekey_index
from fhir_server.storage.base import Store
from fhir_server.storage.dicom_port import BlobLocation, InstanceRecord

Json = dict[str, Any]


def el(vr: str, *values: Any) -> Json:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def request_item(sps: str | None, rp: str | None) -> Json:
    item: Json = {}
    if sps is not None:
        item["00400009"] = el("SH", sps)
    if rp is not None:
        item["00401001"] = el("SH", rp)
    return item


# study uid -> (PatientName, StudyDate, StudyTime); None: the attribute is empty
STUDIES: dict[str, tuple[str | None, str | None, str | None]] = {
    "1.1": ("Doe^Jane", "20200101", "100000"),
    "1.2": (None, "20200102", "030000"),  # no name; the middle day, at night
    "1.3": ("Roe^Ann", "20200103", "180030"),  # inside 18:00 (HHMM covers its minute)
    "1.4": ("Doe^John", "20200103", "190000"),  # after the range
    "1.5": ("Poe^Ed", "20200101", "095900"),  # before the range
    "1.6": ("Moe^Al", "20200102", None),  # a date and no time
}
# series uid (under study 1.1) -> RequestAttributesSequence items, PPS start date and time
SERIES: dict[str, tuple[list[Json], str, str]] = {
    "1.1.1": ([request_item("SPS1", "RP1"), request_item("SPS2", "RP2")], "20200101", "2300"),
    "1.1.2": ([request_item("SPS1", "RP2")], "20200102", "0100"),
    "1.1.3": ([request_item("SPS3", None)], "20200103", "1200"),
    "1.1.4": ([], "20200104", "1200"),
}


def study_attrs(uid: str) -> Json:
    name, date, time = STUDIES[uid]
    return {
        "0020000D": el("UI", uid),
        "00100010": el("PN", {"Alphabetic": name}) if name else el("PN"),
        "00080020": el("DA", date) if date else el("DA"),
        "00080030": el("TM", time) if time else el("TM"),
    }


def series_attrs(uid: str) -> Json:
    items, date, time = SERIES.get(uid, ([], "20190101", "1200"))
    return {
        "0020000E": el("UI", uid),
        "00080060": el("CS", "CT"),
        "00400275": {"vr": "SQ", "Value": items},
        "00400244": el("DA", date),
        "00400245": el("TM", time),
    }


def record(study: str, series: str) -> InstanceRecord:
    sop = f"{series}.1"
    s_attrs, se_attrs = study_attrs(study), series_attrs(series)
    i_attrs = {"00080018": el("UI", sop)}
    sha = hashlib.sha256(sop.encode()).hexdigest()
    return InstanceRecord(
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        blob=BlobLocation(f"blob-{sop}", 1, sha),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        study_attrs=s_attrs,
        series_attrs=se_attrs,
        instance_attrs=i_attrs,
        metadata=orjson.dumps(i_attrs),
        study_keys=match_keys("study", s_attrs),
        series_keys=match_keys("series", se_attrs),
        instance_keys=match_keys("instance", i_attrs),
        modality="CT",
    )


def all_records() -> list[InstanceRecord]:
    out = [record(uid, f"{uid}.9") for uid in STUDIES if uid != "1.1"]
    return out + [record("1.1", uid) for uid in SERIES]


def oracle_records(level: Level) -> dict[str, Json]:
    if level == "study":
        return {uid: study_attrs(uid) for uid in STUDIES}
    return {r.series_uid: r.study_attrs | r.series_attrs for r in all_records()}


async def search(store: Store, level: Level, params: dict[str, str]) -> list[str]:
    query = compile_query(parse_qido(level, list(params.items())), Scope(), None)
    page = await store.dicom.search(query)
    return [m.series.uid if m.series else m.study.uid for m in page.matches]


def expected_by_oracle(level: Level, params: dict[str, str]) -> list[str]:
    query = parse_qido(level, list(params.items()))
    return sorted(uid for uid, rec in oracle_records(level).items() if matches(query, rec))


EVERY_STUDY = sorted(STUDIES)
CASES: list[tuple[Level, dict[str, str], list[str]]] = [
    # PS3.4 C.2.2.2.4: a value of only * is universal matching, empty values included
    ("study", {"PatientName": "*"}, EVERY_STUDY),
    ("study", {"PatientName": "**"}, EVERY_STUDY),
    ("study", {"PatientName": ""}, EVERY_STUDY),
    ("study", {"PatientName": "*e*"}, ["1.1", "1.3", "1.4", "1.5", "1.6"]),
    # PS3.4 C.2.2.2.5 combined date and time: Jan 1 10:00 to Jan 3 18:00(:59.999999)
    ("study", {"StudyDate": "20200101-20200103", "StudyTime": "1000-1800"}, ["1.1", "1.2", "1.3"]),
    ("study", {"StudyDate": "20200102-", "StudyTime": "1000-"}, ["1.3", "1.4"]),
    ("study", {"StudyDate": "-20200102", "StudyTime": "-0300"}, ["1.1", "1.2", "1.5"]),
    ("study", {"StudyDate": "20200101-20200103", "StudyTime": "-1000"}, ["1.1", "1.2", "1.5"]),
    # a time range alone, a date range alone: unchanged
    ("study", {"StudyTime": "1000-1800"}, ["1.1", "1.3"]),
    ("study", {"StudyDate": "20200102-20200103"}, ["1.2", "1.3", "1.4", "1.6"]),
    # a single value for either (or a one-day range): date AND time, as before
    ("study", {"StudyDate": "20200102", "StudyTime": "0300"}, ["1.2"]),
    ("study", {"StudyDate": "20200101-20200103", "StudyTime": "1000"}, ["1.1"]),
    ("study", {"StudyDate": "20200103-20200103", "StudyTime": "1800-"}, ["1.3", "1.4"]),
    # PS3.4 C.2.2.2.6: keys within one sequence match in one item
    (
        "series",
        {
            "RequestAttributesSequence.ScheduledProcedureStepID": "SPS1",
            "RequestAttributesSequence.RequestedProcedureID": "RP2",
        },
        ["1.1.2"],
    ),
    (
        "series",
        {
            "RequestAttributesSequence.ScheduledProcedureStepID": "SPS1",
            "RequestAttributesSequence.RequestedProcedureID": "RP1",
        },
        ["1.1.1"],
    ),
    (
        "series",
        {
            "RequestAttributesSequence.ScheduledProcedureStepID": "SPS?",
            "RequestAttributesSequence.RequestedProcedureID": "rp2",
        },
        [],
    ),
    (
        "series",
        {
            "RequestAttributesSequence.ScheduledProcedureStepID": "SPS*",
            "RequestAttributesSequence.RequestedProcedureID": "RP2",
        },
        ["1.1.1", "1.1.2"],
    ),
    (
        "series",
        {
            "RequestAttributesSequence.ScheduledProcedureStepID": "SPS3",
            "RequestAttributesSequence.RequestedProcedureID": "RP?",
        },
        [],
    ),
    (
        "series",
        {
            "RequestAttributesSequence.ScheduledProcedureStepID": "SPS3",
            "RequestAttributesSequence.RequestedProcedureID": "*",
        },
        ["1.1.3"],
    ),
    ("series", {"RequestAttributesSequence.RequestedProcedureID": "RP2"}, ["1.1.1", "1.1.2"]),
    # combined matching at the series level: Jan 1 22:00 to Jan 2 02:00
    (
        "series",
        {
            "PerformedProcedureStepStartDate": "20200101-20200102",
            "PerformedProcedureStepStartTime": "2200-0200",
            "StudyInstanceUID": "1.1",
        },
        ["1.1.1", "1.1.2"],
    ),
]


@pytest.mark.parametrize(("level", "params", "expected"), CASES, ids=[str(c[1]) for c in CASES])
async def test_store_agrees_with_the_oracle(
    store: Store, level: Level, params: dict[str, str], expected: list[str]
) -> None:
    await store.dicom.store_batch(all_records())
    assert expected_by_oracle(level, params) == expected
    assert sorted(await search(store, level, params)) == expected


def legacy(rec: InstanceRecord) -> InstanceRecord:
    """``rec`` as indexed before the datetime and item keys existed."""
    derived = {datetime_key(0x00080020, 0x00080030), datetime_key(0x00400244, 0x00400245)}
    derived.add(item_key(0x00400275))

    def old(keys: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        return tuple(k for k in keys if k[0] not in derived)

    return replace(rec, study_keys=old(rec.study_keys), series_keys=old(rec.series_keys))


async def test_rekey_brings_earlier_rows_to_the_current_keys(store: Store) -> None:
    await store.dicom.store_batch([legacy(r) for r in all_records()])
    moments = {"StudyDate": "20200101-20200103", "StudyTime": "1000-1800"}
    same_item = {
        "RequestAttributesSequence.ScheduledProcedureStepID": "SPS1",
        "RequestAttributesSequence.RequestedProcedureID": "RP1",
    }
    assert await search(store, "study", moments) == []  # not indexed yet
    assert await search(store, "series", same_item) == []
    rekeyed = await rekey_index(store.dicom)
    assert rekeyed == len(STUDIES) + len(STUDIES) - 1 + len(SERIES)  # studies, then series
    assert sorted(await search(store, "study", moments)) == ["1.1", "1.2", "1.3"]
    assert await search(store, "series", same_item) == ["1.1.1"]
    # the index's own ModalitiesInStudy keys survive, and the version is remembered
    assert len(await search(store, "study", {"ModalitiesInStudy": "CT"})) == len(STUDIES)
    assert await rekey_index(store.dicom) == 0
    assert await store.dicom.rekey(KEYS_VERSION + "-next", match_keys, ("study",)) == len(STUDIES)


@pytest.mark.parametrize("level", ["study", "series", "instance"])
async def test_limit_zero_finds_nothing_and_says_more_exist(store: Store, level: Level) -> None:
    """PS3.18 §8.3.4.4: limit=0 is a valid uint; no adapter takes it as "no limit"
    (MongoDB's ``limit(0)`` would)."""
    await store.dicom.store_batch(all_records())
    query = compile_query(parse_qido(level, [("limit", "0")]), Scope(), None)
    page = await store.dicom.search(query)
    assert page.matches == [] and page.more
    one = await store.dicom.search(replace(query, limit=1))
    assert len(one.matches) == 1
