"""QIDO-RS: tables, parameter parser, and the matching oracle."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.datadict import tag_for_keyword

from dicomweb import qido_levels
from dicomweb.qido import (
    LEVEL_OF,
    MATCHING_ATTRIBUTES,
    MAX_INCLUDEFIELDS,
    MAX_MATCH_VALUE_LENGTH,
    RETURN_ATTRIBUTES,
    Level,
    Match,
    QidoError,
    Range,
    SingleValue,
    Universal,
    ValueList,
    Wildcard,
    attribute_level,
    combined_range,
    parse_matcher,
    parse_qido,
    return_attributes,
    searchable_levels,
)
from dicomweb.qido_levels import SERIES_TAGS, STUDY_TAGS
from dicomweb.qido_match import filter_records, match_key, match_value, matches
from dicomweb.warning_headers import MAX_WARNINGS
from fhir_server.url_integers import INTEGER_CEILING


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
        ("DT", "2020-2021", Range("20200101000000.000000", "20211231235959.999999")),
        ("DA", "20240229", Range("20240229", "20240229")),
        ("TM", "235960", Range("235960.000000", "235960.999999")),  # a leap second
        ("IS", "5", SingleValue("5")),
        ("PN", "*", Universal()),  # PS3.4 C.2.2.2.4 note: * alone is universal matching
        ("LO", "***", Universal()),
        ("UI", "*", SingleValue("*")),  # not a wildcard VR: a literal
    ],
)
def test_parse_matcher(vr: str, value: str, matcher: object) -> None:
    assert parse_matcher(vr, value) == matcher


@pytest.mark.parametrize(
    ("vr", "value", "message"),
    [
        ("DA", "20241301", "invalid DA value '20241301': month 13 is not 01-12"),
        ("DA", "20240101-20240230", "invalid DA value '20240230': day 30 is not 01-29 in 2024-02"),
        ("TM", "2561", "invalid TM value '2561': hour 25 is not 00-23"),
        ("TM", "-12:60", "invalid TM value '12:60': minute 60 is not 00-59"),
    ],
)
def test_an_impossible_moment_is_named_in_the_error(vr: str, value: str, message: str) -> None:
    with pytest.raises(QidoError) as raised:
        parse_matcher(vr, value)
    assert str(raised.value) == message


def test_a_matching_value_may_be_as_long_as_the_bound() -> None:
    longest = "*" + "x" * (MAX_MATCH_VALUE_LENGTH - 1)
    assert parse_matcher("LO", longest) == Wildcard(longest)


@pytest.mark.parametrize(
    ("vr", "value"),
    [
        ("DA", "2020-01-01"),
        # well shaped, but no moment (PS3.5 Table 6.2-1): single values, either bound
        ("DA", "20241301"),
        ("DA", "20230229"),
        ("DA", "20240101-20241301"),
        ("DA", "20240132-"),
        ("DA", "-20240431"),
        ("TM", "2561"),
        ("TM", "24"),
        ("TM", "25:00"),
        ("TM", "1000-2400"),
        ("TM", "1260-"),
        ("DT", "20241301"),
        ("DT", "2024010125"),
        ("DT", "20240101+1500"),
        ("DT", "20240101-20240230"),
        ("DT", "2024:01"),  # colons are TM's (ACR-NEMA), never DT's
        ("DA", "202001"),
        ("DA", "-"),
        ("TM", "25x"),
        ("IS", "five"),
        ("DA", "x-"),
        ("DA", "*"),
        ("DA", "２０２００１０１"),  # fullwidth digits: DICOM's are ASCII
        ("TM", "1０"),
        ("IS", "٣"),
        ("LO", "x" * (MAX_MATCH_VALUE_LENGTH + 1)),
        ("PN", "*" * (MAX_MATCH_VALUE_LENGTH + 1)),
        ("UI", "1," * (MAX_MATCH_VALUE_LENGTH // 2 + 1)),
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
        [("limit", "ten")],
        [("offset", "1.5")],
        [("offset", "-5")],
        [("offset", "-0")],
        [("offset", "+1")],
        [("offset", "-" + "9" * 30)],
        [("fuzzymatching", "yes")],
        [("fuzzymatching", "TRUE")],
        [("emptyvaluematching", "TRUE")],
        [("emptyvaluematching", "")],
        [("multiplevaluematching", "1")],
        [("multiplevaluematching", "yes")],
        [("PatientID", "a"), ("00100020", "b")],
        [("StudyDate", "yesterday")],
        # integers are ASCII digits: not other scripts', superscripts, _ or spaces
        [("offset", "１")],
        [("offset", "²")],
        [("offset", "1_0")],
        [("offset", " 1")],
        [("offset", "")],
        [("limit", "１")],
        [("limit", "²")],
        [("limit", "1_0")],
        [("limit", "+1")],
        [("PatientName", "Doe*" + "x" * MAX_MATCH_VALUE_LENGTH)],
    ],
)
def test_parse_qido_rejects(params: list[tuple[str, str]]) -> None:
    with pytest.raises(QidoError):
        parse_qido("study", params)


@pytest.mark.parametrize(
    ("value", "offset"),
    [
        ("0", 0),
        ("7", 7),
        ("007", 7),
        # beyond a 64-bit integer: cut to one that still is (and matches nothing)
        ("9223372036854775808", INTEGER_CEILING),
        ("1" + "0" * 30, INTEGER_CEILING),
        ("9" * 5000, INTEGER_CEILING),  # more digits than int() reads by default
    ],
)
def test_offset_is_an_unsigned_integer(value: str, offset: int) -> None:
    # PS3.18 §8.3.4.4: offset = uint; a negative one is refused (test_parse_qido_rejects)
    assert parse_qido("study", [("offset", value)]).offset == offset


@pytest.mark.parametrize(("value", "limit"), [("0", 0), ("00", 0), ("1", 1), ("50", 50)])
def test_limit_zero_asks_for_no_results(value: str, limit: int) -> None:
    assert parse_qido("study", [("limit", value)], max_limit=50).limit == limit


@pytest.mark.parametrize(
    ("name", "value"), [("offset", "-5"), ("limit", "-1"), ("offset", "x"), ("limit", "1.0")]
)
def test_paging_errors_name_the_parameter(name: str, value: str) -> None:
    with pytest.raises(QidoError, match=f"^{name} must be an unsigned integer"):
        parse_qido("study", [(name, value)])


EMPTY_WARNING = (
    "The emptyvaluematching parameter is not supported. "
    "Empty Value Matching has not been performed."
)
MULTIPLE_WARNING = (
    "The multiplevaluematching parameter is not supported. "
    "Multiple Value Matching has not been performed."
)


@pytest.mark.parametrize(
    ("params", "warnings"),
    [
        ([("emptyvaluematching", "true")], (EMPTY_WARNING,)),
        ([("multiplevaluematching", "true")], (MULTIPLE_WARNING,)),
        ([("emptyvaluematching", "false"), ("multiplevaluematching", "false")], ()),
        ([("multiplevaluematching", "true")] * 2, (MULTIPLE_WARNING,)),  # said once
        (
            [("multiplevaluematching", "true"), ("emptyvaluematching", "true")],
            (MULTIPLE_WARNING, EMPTY_WARNING),
        ),
    ],
)
def test_empty_and_multiple_value_matching_are_reserved(
    params: list[tuple[str, str]], warnings: tuple[str, ...]
) -> None:
    # PS3.18 §8.3.4.5, §8.3.4.6: not matching keys, nor "unknown parameters"
    query = parse_qido("study", params)
    assert query.warnings == warnings
    assert query.matches == () and not query.fuzzymatching


def test_includefield_names_at_most_the_bound() -> None:
    tags = [f"0009{n:04X}" for n in range(MAX_INCLUDEFIELDS + 1)]
    most = parse_qido("study", [("includefield", ",".join(tags[:-1]))])
    assert len(most.includefields) == MAX_INCLUDEFIELDS
    repeated = parse_qido("study", [("includefield", "PatientAge")] * 5000)
    assert repeated.includefields == ((0x00101010,),)
    unknown = [("includefield", f"NoSuchKeyword{n}") for n in range(MAX_INCLUDEFIELDS + 1)]
    for params in ([("includefield", ",".join(tags))], unknown):
        with pytest.raises(QidoError, match=f"at most {MAX_INCLUDEFIELDS} attributes"):
            parse_qido("study", params)


def test_accept_parameter_and_empty_sequence_key_are_not_warned() -> None:
    query = parse_qido(
        "series", [("accept", "application/dicom+json"), ("RequestAttributesSequence", "")]
    )
    assert query.warnings == ()
    assert query.matches == (Match((0x00400275,), "SQ", Universal()),)
    odd = parse_qido("series", [("RequestAttributesSequence", "x")])
    assert odd.matches == () and len(odd.warnings) == 1


def test_range_remembers_a_single_value() -> None:
    assert parse_matcher("DA", "20200101").single  # type: ignore[union-attr]
    assert not parse_matcher("DA", "20200101-20200101").single  # type: ignore[union-attr]
    assert not parse_matcher("TM", "10-").single  # type: ignore[union-attr]


def test_combined_range() -> None:
    date, time = parse_matcher("DA", "20200101-20200103"), parse_matcher("TM", "1000-1800")
    assert isinstance(date, Range) and isinstance(time, Range)
    assert combined_range(date, time) == Range("20200101100000.000000", "20200103180059.999999")
    open_high = Range("20200101", None)
    assert combined_range(open_high, Range(None, "120000.000000")) == Range(
        "20200101000000.000000", None
    )
    one_day = parse_matcher("DA", "20200101-20200101")
    assert isinstance(one_day, Range) and combined_range(one_day, time) is None
    single = parse_matcher("TM", "10")
    assert isinstance(single, Range) and combined_range(date, single) is None


def test_limit_is_capped_silently() -> None:
    # PS3.18 §8.3.4.4: the warning is for results actually cut (qido_rs), not for the ask
    assert parse_qido("study", [], max_limit=50).limit == 50
    capped = parse_qido("study", [("limit", "500")], max_limit=50)
    assert capped.limit == 50 and capped.warnings == ()
    assert parse_qido("study", [("limit", "7")], max_limit=50).limit == 7


def test_return_attributes_follow_levels_and_includefields() -> None:
    query = parse_qido(
        "series",
        [("StudyDescription", ""), ("includefield", "BodyPartExamined,SOPClassUID,00191010")],
        scope="study",
    )
    attrs = return_attributes(query)
    assert (0x0020000E,) in attrs and (0x0020000D,) not in attrs  # study keys not asked for
    assert (0x00180015,) in attrs  # BodyPartExamined: a series attribute
    assert (0x00191010,) not in attrs  # private: of the instance level
    assert (0x00080016,) not in attrs  # instance level is never returned for series
    unscoped = return_attributes(parse_qido("series", []))
    assert (0x00201208,) in unscoped and (0x00201209,) in unscoped


@pytest.mark.parametrize(
    ("keyword", "level"),
    [
        ("PatientName", "study"),  # the QIDO-RS tables
        ("Modality", "series"),
        ("SOPClassUID", "instance"),
        ("PatientWeight", "study"),  # Patient Study module, group 0010
        ("OtherPatientIDsSequence", "study"),  # Patient module, group 0010
        ("NameOfPhysiciansReadingStudy", "study"),  # General Study module
        ("AdmittingDiagnosesDescription", "study"),  # Patient Study, not group 0010
        ("ClinicalTrialSubjectID", "study"),
        ("Manufacturer", "series"),  # General Equipment
        ("StationName", "series"),
        ("OperatorsName", "series"),  # General Series
        ("FrameOfReferenceUID", "series"),  # Frame of Reference
        ("ImageType", "instance"),
        ("SliceThickness", "instance"),
        ("WindowCenter", "instance"),
        ("AcquisitionDate", "instance"),
    ],
)
def test_attribute_level_follows_the_information_model(keyword: str, level: Level) -> None:
    tag = tag_for_keyword(keyword)
    assert tag is not None and attribute_level(tag) == level


def test_private_attributes_are_of_the_instance_level() -> None:
    assert attribute_level(0x00191010) == "instance" and attribute_level(0x00090010) == "instance"


def test_level_tables_are_disjoint_and_checked() -> None:
    assert not STUDY_TAGS & SERIES_TAGS
    # where the QIDO-RS tables name an attribute too, they agree
    assert {LEVEL_OF[t] for t in STUDY_TAGS if t in LEVEL_OF} == {"study"}
    assert {LEVEL_OF[t] for t in SERIES_TAGS if t in LEVEL_OF} == {"series"}
    with pytest.raises(KeyError, match="NoSuchKeyword"):
        qido_levels._tags("PatientName NoSuchKeyword")


@pytest.mark.parametrize(
    ("level", "scope", "includes", "returned", "left_out"),
    [
        (
            "study",
            None,
            "ImageType,Manufacturer,SliceThickness,WindowCenter,PatientWeight,StudyDescription",
            ["PatientWeight", "StudyDescription"],
            ["ImageType", "Manufacturer", "SliceThickness", "WindowCenter"],
        ),
        (
            "series",
            "study",
            "Manufacturer,ImageType,PatientWeight,OperatorsName",
            ["Manufacturer", "OperatorsName"],
            ["ImageType", "PatientWeight"],  # /studies/{s}/series: the series level only
        ),
        (
            "series",
            None,
            "Manufacturer,ImageType,PatientWeight",
            ["Manufacturer", "PatientWeight"],
            ["ImageType"],
        ),
        ("instance", "series", "ImageType,WindowCenter", ["ImageType", "WindowCenter"], []),
    ],
)
def test_includefield_returns_only_the_levels_searched(
    level: Level, scope: Level | None, includes: str, returned: list[str], left_out: list[str]
) -> None:
    # PS3.18 §10.6.3.3: a lower level's attributes are not returned, even empty
    attrs = return_attributes(parse_qido(level, [("includefield", includes)], scope=scope))
    assert all((tag_for_keyword(k),) in attrs for k in returned)
    assert not any((tag_for_keyword(k),) in attrs for k in left_out)


def test_warnings_are_listed_up_to_a_bound_then_counted() -> None:
    params = [(f"Unknown{n}", "x") for n in range(MAX_WARNINGS + 5)]
    warnings = parse_qido("study", params).warnings
    assert len(warnings) == MAX_WARNINGS + 1
    assert warnings[0] == "query parameter 'Unknown0' is not supported and was ignored"
    assert warnings[-1] == "5 more ignored parameters are not listed"
    exactly = parse_qido("study", params[:MAX_WARNINGS]).warnings
    assert len(exactly) == MAX_WARNINGS and "more" not in exactly[-1]


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


@pytest.mark.parametrize("pattern", ["*", "**"])
def test_oracle_takes_star_alone_as_universal(pattern: str) -> None:
    # built by hand, not parsed: the oracle decides this itself
    key = Match((0x00080050,), "SH", Wildcard(pattern))
    assert match_key(key, STUDY)  # AccessionNumber has no value
    assert not match_key(Match((0x00080050,), "SH", Wildcard("*1")), STUDY)


SERIES_ITEMS: dict[str, Any] = {
    "00400275": {
        "vr": "SQ",
        "Value": [
            {
                "00400009": {"vr": "SH", "Value": ["SPS1"]},
                "00401001": {"vr": "SH", "Value": ["RP1"]},
            },
            {
                "00400009": {"vr": "SH", "Value": ["SPS2"]},
                "00401001": {"vr": "SH", "Value": ["RP2"]},
            },
        ],
    }
}


@pytest.mark.parametrize(
    ("sps", "rp", "expected"),
    [
        ("SPS1", "RP2", False),  # PS3.4 C.2.2.2.6: both in one item
        ("SPS1", "RP1", True),
        ("SPS2", "RP2", True),
        ("SPS*", "RP2", True),
        ("SPS1", "*", True),
        ("SPS3", "", False),
    ],
)
def test_sequence_keys_match_in_one_item(sps: str, rp: str, expected: bool) -> None:
    query = parse_qido(
        "series",
        [
            ("RequestAttributesSequence.ScheduledProcedureStepID", sps),
            ("RequestAttributesSequence.RequestedProcedureID", rp),
        ],
    )
    assert matches(query, SERIES_ITEMS) is expected


@pytest.mark.parametrize(
    ("date", "time", "stored", "expected"),
    [
        # PS3.4 C.2.2.2.5 note: one period, not 10:00-18:00 on each day
        ("20200101-20200103", "1000-1800", ("20200102", "030000"), True),
        ("20200101-20200103", "1000-1800", ("20200101", "095959"), False),
        ("20200101-20200103", "1000-1800", ("20200103", "1801"), False),
        ("20200101-20200103", "1000-1800", ("20200102", None), False),
        # single values: date and time each, as before
        ("20200102", "0300", ("20200102", "030000"), True),
        ("20200101-20200103", "10", ("20200102", "030000"), False),
        ("20200101-20200101", "1000-1800", ("20200101", "1900"), False),
    ],
)
def test_combined_date_time_matching(
    date: str, time: str, stored: tuple[str, str | None], expected: bool
) -> None:
    record = {
        "00080020": {"vr": "DA", "Value": [stored[0]]},
        "00080030": {"vr": "TM", "Value": [stored[1]]} if stored[1] else {"vr": "TM"},
    }
    query = parse_qido("study", [("StudyDate", date), ("StudyTime", time)])
    assert matches(query, record) is expected


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
