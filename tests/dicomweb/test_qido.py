"""QIDO-RS: tables, parameter parser, and the matching oracle."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomweb.qido import (
    LEVEL_OF,
    MATCHING_ATTRIBUTES,
    RETURN_ATTRIBUTES,
    Level,
    Match,
    QidoError,
    Range,
    SingleValue,
    Universal,
    ValueList,
    Wildcard,
    parse_matcher,
    parse_qido,
    return_attributes,
    searchable_levels,
    warning_header,
)
from dicomweb.qido_match import filter_records, match_value, matches


def test_return_attribute_tables_are_complete() -> None:
    # PS3.18 Tables 10.6.3-3/4/5, by tag, so a misspelt keyword cannot slip out.
    assert RETURN_ATTRIBUTES["study"] == (
        0x00080020, 0x00080030, 0x00080050, 0x00080056, 0x00080061, 0x00080090,
        0x00080201, 0x00081190, 0x00100010, 0x00100020, 0x00100030, 0x00100040,
        0x0020000D, 0x00200010, 0x00201206, 0x00201208,
    )  # fmt: skip
    assert RETURN_ATTRIBUTES["series"] == (
        0x00080060, 0x00080201, 0x0008103E, 0x00081190, 0x0020000E, 0x00200011,
        0x00201209, 0x00400244, 0x00400245, 0x00400275,
    )  # fmt: skip
    assert RETURN_ATTRIBUTES["instance"] == (
        0x00080016, 0x00080018, 0x00080056, 0x00080201, 0x00081190, 0x00200013,
        0x00280010, 0x00280011, 0x00280100, 0x00280008,
    )  # fmt: skip
    assert (0x00400275, 0x00401001) in MATCHING_ATTRIBUTES["series"]
    assert len(MATCHING_ATTRIBUTES["study"]) == 13
    assert LEVEL_OF[0x00100010] == "study" and LEVEL_OF[0x00080060] == "series"


@pytest.mark.parametrize(
    ("level", "scope", "levels"),
    [
        ("study", None, ("study",)),
        ("series", None, ("study", "series")),
        ("series", "study", ("series",)),
        ("instance", None, ("study", "series", "instance")),
        ("instance", "study", ("series", "instance")),
        ("instance", "series", ("instance",)),
    ],
)
def test_searchable_levels(level: Level, scope: Level | None, levels: tuple[str, ...]) -> None:
    assert searchable_levels(level, scope) == levels


@pytest.mark.parametrize(
    ("vr", "value", "matcher"),
    [
        ("PN", "", Universal()),
        ("PN", "Smith^J*", Wildcard("Smith^J*")),
        ("LO", "AB?", Wildcard("AB?")),
        ("UI", "1.2.3", SingleValue("1.2.3")),
        ("UI", "1.2.3,1.2.4", ValueList(("1.2.3", "1.2.4"))),
        ("UI", "1.2.3\\1.2.4", ValueList(("1.2.3", "1.2.4"))),
        ("UI", "1.2.*", SingleValue("1.2.*")),  # no wildcards on UI
        ("CS", "CT,MR", ValueList(("CT", "MR"))),
        ("DA", "20200101", Range("20200101", "20200101")),
        ("DA", "20200101-", Range("20200101", None)),
        ("DA", "-20201231", Range(None, "20201231")),
        ("DA", "20200101-20201231", Range("20200101", "20201231")),
        ("TM", "10", Range("100000.000000", "105959.999999")),
        ("TM", "1030-12", Range("103000.000000", "125959.999999")),
        ("TM", "10:30-", Range("103000.000000", None)),
        ("DT", "2020-202106", Range("20200101000000.000000", "20210631235959.999999")),
        ("DT", "20200101120000-0500", Range("20200101120000.000000", "20200101120000.999999")),
        ("IS", "5", SingleValue("5")),
    ],
)
def test_parse_matcher(vr: str, value: str, matcher: object) -> None:
    assert parse_matcher(vr, value) == matcher


@pytest.mark.parametrize(
    ("vr", "value"),
    [
        ("DA", "2020-01-01"),
        ("DA", "202001"),
        ("DA", "-"),
        ("TM", "25x"),
        ("IS", "five"),
        ("DA", "x-"),
    ],
)
def test_parse_matcher_rejects(vr: str, value: str) -> None:
    with pytest.raises(QidoError):
        parse_matcher(vr, value)


def test_parse_qido_full_example() -> None:
    query = parse_qido(
        "series",
        [
            ("PatientName", "smith*"),
            ("00080060", "CT"),
            ("RequestAttributesSequence.RequestedProcedureID", "RP1"),
            ("includefield", "00081030,SeriesDescription"),
            ("includefield", "all"),
            ("limit", "10"),
            ("offset", "20"),
            ("fuzzymatching", "true"),
            ("SOPInstanceUID", "1.2"),
            ("NoSuchKeyword", "x"),
            ("includefield", "NotAKeyword"),
        ],
    )
    assert query.levels == ("study", "series")
    assert query.matches == (
        Match((0x00100010,), "PN", Wildcard("smith*")),
        Match((0x00080060,), "CS", SingleValue("CT")),
        Match((0x00400275, 0x00401001), "SH", SingleValue("RP1")),
    )
    assert query.includefields == ((0x00081030,), (0x0008103E,))
    assert query.include_all and query.fuzzymatching
    assert (query.limit, query.offset) == (10, 20)
    assert len(query.warnings) == 4
    assert "fuzzymatching" in query.warnings[0]
    assert "'SOPInstanceUID'" in query.warnings[1] and "'NoSuchKeyword'" in query.warnings[2]


def test_scoped_series_search_ignores_study_keys() -> None:
    query = parse_qido("series", [("PatientID", "X"), ("Modality", "MR")], scope="study")
    assert [m.path for m in query.matches] == [(0x00080060,)]
    assert query.warnings == ("query parameter 'PatientID' is not supported and was ignored",)


@pytest.mark.parametrize(
    "params",
    [
        [("limit", "-1")],
        [("limit", "0")],
        [("limit", "ten")],
        [("offset", "1.5")],
        [("fuzzymatching", "yes")],
        [("PatientID", "a"), ("00100020", "b")],
        [("StudyDate", "yesterday")],
    ],
)
def test_parse_qido_rejects(params: list[tuple[str, str]]) -> None:
    with pytest.raises(QidoError):
        parse_qido("study", params)


def test_limit_is_capped_with_a_warning() -> None:
    assert parse_qido("study", [], max_limit=50).limit == 50
    capped = parse_qido("study", [("limit", "500")], max_limit=50)
    assert capped.limit == 50 and "exceeds the maximum" in capped.warnings[0]


def test_return_attributes_follow_levels_and_includefields() -> None:
    query = parse_qido(
        "series",
        [("StudyDescription", ""), ("includefield", "BodyPartExamined,SOPClassUID,00191010")],
        scope="study",
    )
    attrs = return_attributes(query)
    assert (0x0020000E,) in attrs and (0x0020000D,) not in attrs  # study keys not asked for
    assert (0x00180015,) in attrs and (0x00191010,) in attrs  # unknown level: kept
    assert (0x00080016,) not in attrs  # instance level is never returned for series
    unscoped = return_attributes(parse_qido("series", []))
    assert (0x00201208,) in unscoped and (0x00201209,) in unscoped


def test_warning_header() -> None:
    assert warning_header('bad "x"') == '299 radhub "bad \\"x\\""'


def pn(alphabetic: str, ideographic: str = "") -> dict[str, str]:
    return {"Alphabetic": alphabetic} | ({"Ideographic": ideographic} if ideographic else {})


STUDY: dict[str, Any] = {
    "00100010": {"vr": "PN", "Value": [pn("SMITH^JOHN^^^", "山田^太郎")]},
    "00100020": {"vr": "LO", "Value": ["PID-1"]},
    "00080020": {"vr": "DA", "Value": ["20200615"]},
    "00080030": {"vr": "TM", "Value": ["103015.25"]},
    "00080061": {"vr": "CS", "Value": ["CT", "SR"]},
    "0020000D": {"vr": "UI", "Value": ["1.2.840.1"]},
    "00080050": {"vr": "SH"},
    "00200010": {"vr": "SH", "Value": ["S7"]},
    "00201208": {"vr": "IS", "Value": [12]},
    "00400275": {
        "vr": "SQ",
        "Value": [
            {"00401001": {"vr": "SH", "Value": ["RP1"]}},
            {"00401001": {"vr": "SH", "Value": ["RP2"]}},
        ],
    },
}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("PatientName", "SMITH^JOHN", True),
        ("PatientName", "smith^john", True),
        ("PatientName", "Smith^John^^", True),
        ("PatientName", "SMITH", False),
        ("PatientName", "smi*", True),
        ("PatientName", "*^jo?n", True),
        ("PatientName", "jones*", False),
        ("PatientName", "山田^太郎", True),
        ("PatientName", "山田*", True),
        ("PatientName", "", True),
        ("PatientID", "PID-1", True),
        ("PatientID", "pid-1", False),
        ("PatientID", "PID-?", True),
        ("PatientID", "P*1", True),
        ("PatientID", "P*2", False),
        ("StudyDate", "20200615", True),
        ("StudyDate", "20200101-", True),
        ("StudyDate", "-20200614", False),
        ("StudyDate", "20200615-20200615", True),
        ("StudyDate", "20200616-20201231", False),
        ("StudyTime", "10", True),
        ("StudyTime", "1030", True),
        ("StudyTime", "1031-", False),
        ("StudyTime", "-103015", True),
        ("StudyTime", "103016-", False),
        ("ModalitiesInStudy", "SR", True),
        ("ModalitiesInStudy", "MR", False),
        ("ModalitiesInStudy", "MR,CT", True),
        ("ModalitiesInStudy", "C?", True),
        ("StudyInstanceUID", "1.2.840.1", True),
        ("StudyInstanceUID", "1.2.840", False),
        ("StudyInstanceUID", "9.9,1.2.840.1", True),
        ("StudyInstanceUID", "9.9\\9.8", False),
        ("AccessionNumber", "A1", False),
        ("AccessionNumber", "", True),
        ("StudyID", "S7", True),
        ("ReferringPhysicianName", "X*", False),
    ],
)
def test_study_matching(key: str, value: str, expected: bool) -> None:
    query = parse_qido("study", [(key, value)])
    assert query.matches, query.warnings
    assert matches(query, STUDY) is expected


@pytest.mark.parametrize(("value", "expected"), [("RP2", True), ("RP3", False), ("", True)])
def test_sequence_matching(value: str, expected: bool) -> None:
    query = parse_qido("series", [("RequestAttributesSequence.RequestedProcedureID", value)])
    assert matches(query, STUDY) is expected


def test_several_keys_must_all_match() -> None:
    both = parse_qido("study", [("PatientID", "PID-1"), ("ModalitiesInStudy", "CT")])
    one_off = parse_qido("study", [("PatientID", "PID-1"), ("ModalitiesInStudy", "MR")])
    assert matches(both, STUDY) and not matches(one_off, STUDY)


@pytest.mark.parametrize(
    ("vr", "value", "stored", "expected"),
    [
        ("IS", "12", 12, True),
        ("IS", "12", "12", True),
        ("IS", "12.0", 12, True),
        ("IS", "13", 12, False),
        ("DT", "2020-", "20200615103015+0100", True),
        ("DT", "-2019", "20200615", False),
        ("UI", "1.2", "1.2", True),
    ],
)
def test_match_value(vr: str, value: str, stored: object, expected: bool) -> None:
    assert match_value(vr, parse_matcher(vr, value), stored) is expected


def test_filter_records_pages() -> None:
    records = [{"00100020": {"vr": "LO", "Value": [f"P{i}"]}} for i in range(10)]
    query = parse_qido("study", [("PatientID", "P*"), ("limit", "3"), ("offset", "8")])
    assert [r["00100020"]["Value"][0] for r in filter_records(query, records)] == ["P8", "P9"]


DATES = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2099, 12, 31))


@given(value=DATES, low=st.none() | DATES, high=st.none() | DATES)
def test_date_range_matches_calendar_order(
    value: dt.date, low: dt.date | None, high: dt.date | None
) -> None:
    if low is None and high is None:
        return
    text = f"{low:%Y%m%d}" if low else ""
    text += "-" + (f"{high:%Y%m%d}" if high else "")
    expected = (low is None or low <= value) and (high is None or value <= high)
    record = {"00080020": {"vr": "DA", "Value": [f"{value:%Y%m%d}"]}}
    assert matches(parse_qido("study", [("StudyDate", text)]), record) is expected
