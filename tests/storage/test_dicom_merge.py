"""The merge a study or series row takes its instances in by (``dicom_merge``).

Its keys are checked against ``records.match_keys`` of the merged attributes: the
keys the archive would derive from what the row now holds."""

from __future__ import annotations

from typing import Any

import pytest

from dicomweb.qido import Level
from dicomweb.records import match_keys
from fhir_server.storage.dicom_merge import (
    canonical_keys,
    carried,
    element_empty,
    key_sources,
    merge,
)

Json = dict[str, Any]


def el(vr: str, *values: Any) -> Json:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


@pytest.mark.parametrize(
    ("element", "empty"),
    [
        (el("SH"), True),
        ({"vr": "SH", "Value": []}, True),
        ({"vr": "SH", "Value": [""]}, True),
        ({"vr": "SH", "Value": [None, ""]}, True),
        (el("SH", "LW-ACC"), False),
        (el("SH", "", "B"), False),
        (el("IS", 0), False),  # a zero is a value
        (el("PN", {"Alphabetic": ""}), True),
        (el("PN", {}), True),
        (el("PN", {"Alphabetic": "Ref^Doc"}), False),
        (el("SQ"), True),
        (el("SQ", {}), True),  # one item, of nothing
        (el("SQ", {"00080100": el("SH")}), True),  # one item, of empty elements
        (el("SQ", {"00080100": el("SH", "XA")}), False),
        ({"vr": "OB", "BulkDataURI": "http://x/bulk"}, False),
    ],
)
def test_element_empty(element: Json, empty: bool) -> None:
    assert element_empty(element) is empty


@pytest.mark.parametrize(
    ("key", "sources"),
    [
        ("00080050", ("00080050",)),
        ("00400275.00400009", ("00400275",)),  # a sequence's item attribute
        ("00400275", ("00400275",)),  # a sequence's item key
        ("00080020+00080030", ("00080020", "00080030")),  # a date-time pair
    ],
)
def test_key_sources(key: str, sources: tuple[str, ...]) -> None:
    assert key_sources(key) == sources


def test_an_instance_carries_its_values_and_its_keys_sources() -> None:
    attrs = {"00080050": el("SH"), "00081030": el("LO", "CT HEAD")}
    keys = (("00100010", "doe^jane"), ("00080020+00080030", "20240105101500.000000"))
    assert carried(attrs, keys) == {"00081030", "00100010", "00080020", "00080030"}


ACC, DATE, TIME, DESC, REF = "00080050", "00080020", "00080030", "00081030", "00080090"
RAS, SPS, SERIES_DESC = "00400275", "00400009", "0008103E"
STUDY: Json = {
    ACC: el("SH", "LW-ACC"),
    DATE: el("DA", "20240105"),
    TIME: el("TM", "101500"),
    DESC: el("LO", "CT HEAD"),
    REF: el("PN", {"Alphabetic": "Ref^Doc"}),
}
SERIES: Json = {
    SERIES_DESC: el("LO", "AXIAL"),
    RAS: el("SQ", {SPS: el("SH", "SPS1")}, {SPS: el("SH", "SPS2")}),
}

# level, stored attributes, the new instance's, what the row then holds
CASES: list[tuple[Level, Json, Json, Json]] = [
    # a presentation state: accession and time empty, the rest absent: all kept
    ("study", STUDY, {ACC: el("SH"), TIME: el("TM")}, STUDY),
    # the same instance again: nothing changes
    ("study", STUDY, STUDY, STUDY),
    # a later value corrects one, the others kept
    ("study", STUDY, {DESC: el("LO", "CT HEAD W/O")}, {**STUDY, DESC: el("LO", "CT HEAD W/O")}),
    # a new date with the time left empty: the date-time pair is the new date's with
    # the stored time
    ("study", STUDY, {DATE: el("DA", "20240106"), TIME: el("TM")},
     {**STUDY, DATE: el("DA", "20240106")}),
    # a new time alone: paired with the stored date
    ("study", STUDY, {TIME: el("TM", "0800")}, {**STUDY, TIME: el("TM", "0800")}),
    # both new: the new pair
    ("study", STUDY, {DATE: el("DA", "20240107"), TIME: el("TM", "2300")},
     {**STUDY, DATE: el("DA", "20240107"), TIME: el("TM", "2300")}),
    # an attribute the row lacked is added; an empty one it lacked is not
    ("study", {DATE: el("DA", "20240105")}, {ACC: el("SH", "LW-2"), DESC: el("LO")},
     {DATE: el("DA", "20240105"), ACC: el("SH", "LW-2")}),
    # a sequence is replaced whole: the items' keys are the new items' only
    ("series", SERIES, {RAS: el("SQ", {SPS: el("SH", "SPS3")})},
     {**SERIES, RAS: el("SQ", {SPS: el("SH", "SPS3")})}),
    # a sequence of empty items leaves the stored one
    ("series", SERIES, {RAS: el("SQ", {SPS: el("SH")}), SERIES_DESC: el("LO", "")}, SERIES),
]  # fmt: skip


@pytest.mark.parametrize(("level", "stored", "new", "expected"), CASES)
def test_merge_keeps_what_the_new_instance_leaves_empty(
    level: Level, stored: Json, new: Json, expected: Json
) -> None:
    attrs, keys = merge(stored, match_keys(level, stored), new, match_keys(level, new))
    assert attrs == expected
    # the keys are the ones the archive derives from what the row holds
    assert keys == canonical_keys(match_keys(level, expected))


def test_merge_leaves_its_inputs_as_they_were() -> None:
    stored = dict(STUDY)
    merge(stored, (), {DESC: el("LO", "other")}, ())
    assert stored == STUDY


def test_a_key_without_its_attribute_still_replaces_the_stored_one() -> None:
    """A caller's keys name what the instance carries even where its attributes are
    not given with them (the contract suite's records): the new keys stand."""
    _, keys = merge(
        {}, (("00100010", "doe^jane"), (DATE, "20240105")), {}, (("00100010", "doe^janet"),)
    )
    assert keys == (("00080020", "20240105"), ("00100010", "doe^janet"))
