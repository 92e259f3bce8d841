"""QIDO-RS queries: the standard's tables as data and the query-parameter parser.

``parse_qido`` turns a search's query parameters (PS3.18 §8.3.4, §10.6.1)
into a ``QidoQuery``: typed matchers per attribute, the include fields, the
page and the warnings to send as ``Warning: 299``. Backends compile the
matchers; ``dicomweb.qido_match`` evaluates them over DICOM JSON records and
is the test oracle.

Range bounds are normalised at parse time so that plain string comparison
decides them: dates as ``YYYYMMDD``, times as ``HHMMSS.FFFFFF``, date-times
as ``YYYYMMDDHHMMSS.FFFFFF`` (time-zone offsets are dropped); a lower bound
is padded with the earliest, an upper bound with the latest value its
precision covers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydicom.datadict import tag_for_keyword

from dicomweb.case_fold import fold
from dicomweb.dicom_json import dictionary_vr
from dicomweb.qido_dates import moment_fault
from dicomweb.qido_levels import PATIENT_GROUP, SERIES_TAGS, STUDY_TAGS
from dicomweb.warning_headers import bounded
from fhir_server.storage.dicom_port import glob_regex
from fhir_server.url_integers import url_integer

Level = Literal["study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")


def _tags(*keywords: str) -> tuple[int, ...]:
    found = tuple(tag_for_keyword(k) for k in keywords)
    return tuple(t for t in found if t is not None)


# PS3.18 (2024c) Table 10.6.3-3 Study, 10.6.3-4 Series and 10.6.3-5 Instance
# Resources Search Response Payload: attributes every result carries.
RETURN_ATTRIBUTES: dict[Level, tuple[int, ...]] = {
    "study": _tags(
        "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
        "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC",
        "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
        "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "series": _tags(
        "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
        "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
    ),
    "instance": _tags(
        "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
        "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
        "NumberOfFrames",
    ),
}  # fmt: skip

_REQUEST_ATTRIBUTES = tag_for_keyword("RequestAttributesSequence") or 0x00400275

# PS3.18 (2024c) Table 10.6.1-5 Required Matching Attributes, plus the few
# further attributes radhub indexes (StudyDescription, PatientBirthDate, ...).
MATCHING_ATTRIBUTES: dict[Level, tuple[tuple[int, ...], ...]] = {
    "study": tuple(
        (t,)
        for t in _tags(
            "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
            "ReferringPhysicianName", "PatientName", "PatientID", "StudyInstanceUID",
            "StudyID", "StudyDescription", "PatientBirthDate", "PatientSex",
            "IssuerOfPatientID",
        )
    ),
    "series": (
        *((t,) for t in _tags(
            "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
            "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
            "BodyPartExamined", "SeriesDate",
        )),
        (_REQUEST_ATTRIBUTES, tag_for_keyword("ScheduledProcedureStepID") or 0x00400009),
        (_REQUEST_ATTRIBUTES, tag_for_keyword("RequestedProcedureID") or 0x00401001),
    ),
    "instance": tuple(
        (t,) for t in _tags("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "ContentDate")
    ),
}  # fmt: skip

# Which level an attribute belongs to, for attributes the tables above name
# (``attribute_level`` for every attribute).
LEVEL_OF: dict[int, Level] = {
    path[0]: level for level in LEVELS for path in MATCHING_ATTRIBUTES[level]
} | {tag: level for level in LEVELS for tag in RETURN_ATTRIBUTES[level] if tag != 0x00081190}

# PS3.4 C.2.2.2.4: VRs on which * and ? are wildcards.
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})
NUMERIC_VRS = frozenset({"IS", "DS", "SL", "SS", "UL", "US", "SV", "UV", "FL", "FD"})
LIST_VRS = frozenset({"UI", "CS"})  # UID list matching (PS3.4 C.2.2.2.2), value lists for CS
# PS3.18 §8.3.4.2, §8.3.4.5, §8.3.4.6: matching the server does not perform, each
# asked for with ``true`` or ``false``; for ``true``, the Warning text the standard gives.
UNSUPPORTED_MATCHING: dict[str, str] = {
    "fuzzymatching": (
        "The fuzzymatching parameter is not supported. Only literal matching has been performed."
    ),
    "emptyvaluematching": (
        "The emptyvaluematching parameter is not supported. "
        "Empty Value Matching has not been performed."
    ),
    "multiplevaluematching": (
        "The multiplevaluematching parameter is not supported. "
        "Multiple Value Matching has not been performed."
    ),
}

# The longest query value matched. No value a matching key holds comes near it (a
# PN is three groups of 64 characters; LT, the longest VR of bounded length, is
# 10,240 but no match key; UC, UR and UT are unbounded and none either), nor a
# list of 100 UIDs, nor any request line most proxies pass (8 KB). And once case
# folded (one character stays one, ``case_fold``) and escaped, a character is at
# most 6 UTF-8 bytes, so the longest wildcard stays a GLOB pattern SQLite takes
# (at most 50,000 bytes).
MAX_MATCH_VALUE_LENGTH = 8192
# The most attributes one query may name in includefield: every result carries
# each of them, empty when it has no value (C-FIND-like, ``qido_compile``), so the
# response grows with results x includes. A thousand exceed what an 8 KB request
# line can name (8-digit tags and commas: about 900); ``all`` asks for everything.
MAX_INCLUDEFIELDS = 1000

# PS3.4 C.2.2.2.5 (combined date and time range matching, which PS3.18 §8.3.4.1
# requires of QIDO-RS): the DA/TM attribute pairs that name one moment. A pair
# is combined at a level only where both are matching attributes there.
DATE_TIME_PAIRS: tuple[tuple[int, int], ...] = (
    (0x00080020, 0x00080030),  # StudyDate, StudyTime
    (0x00080021, 0x00080031),  # SeriesDate, SeriesTime
    (0x00400244, 0x00400245),  # PerformedProcedureStepStartDate, ...StartTime
    (0x00080022, 0x00080032),  # AcquisitionDate, AcquisitionTime
    (0x00080023, 0x00080033),  # ContentDate, ContentTime
)

_LOW = {"DA": "00000101", "TM": "000000.000000", "DT": "00000101000000.000000"}
_HIGH = {"DA": "99991231", "TM": "235959.999999", "DT": "99991231235959.999999"}
_SHAPES = {  # re.ASCII: \d is [0-9], as in DICOM, not any script's digits
    "DA": re.compile(r"^\d{8}$", re.ASCII),
    "TM": re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$", re.ASCII),
    "DT": re.compile(
        r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$", re.ASCII
    ),
}
_TZ = re.compile(r"[+-]\d{4}$", re.ASCII)
_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?", re.ASCII)


class QidoError(ValueError):
    """The query cannot be run as asked (HTTP 400, PS3.18 §10.6.2)."""


@dataclass(frozen=True)
class Universal:
    """Empty value: matches everything, asks for the attribute back (PS3.4 C.2.2.2.3)."""


@dataclass(frozen=True)
class SingleValue:
    """Exact match (PS3.4 C.2.2.2.1); PN is compared case-insensitively."""

    value: str


@dataclass(frozen=True)
class ValueList:
    """Any of the values: UID list matching (PS3.4 C.2.2.2.2), or a CS value list."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class Wildcard:
    """``*`` any run of characters, ``?`` one character (PS3.4 C.2.2.2.4)."""

    pattern: str

    def regex(self, *, ignore_case: bool) -> re.Pattern[str]:
        """The pattern as an anchored regular expression (``glob_regex``)."""
        flags = re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL
        return re.compile(glob_regex(self.pattern), flags)


@dataclass(frozen=True)
class Range:
    """Inclusive range over normalised DA/TM/DT strings (PS3.4 C.2.2.2.5).

    ``single`` records that the query gave one value, not a range: combined
    date and time matching applies only to two ranges (see ``combined_range``).
    """

    low: str | None
    high: str | None
    single: bool = field(default=False, compare=False)


Matcher = Universal | SingleValue | ValueList | Wildcard | Range


@dataclass(frozen=True)
class Match:
    """One match key: tag path (sequence, then item attribute), its VR, the matcher."""

    path: tuple[int, ...]
    vr: str
    matcher: Matcher


@dataclass(frozen=True)
class QidoQuery:
    """A parsed QIDO-RS search (PS3.18 §10.6.1)."""

    level: Level
    levels: tuple[Level, ...]
    matches: tuple[Match, ...] = ()
    includefields: tuple[tuple[int, ...], ...] = ()
    include_all: bool = False
    limit: int = 100
    offset: int = 0
    fuzzymatching: bool = False
    warnings: tuple[str, ...] = field(default=())


def sequence_keys(level: Level) -> dict[int, tuple[tuple[int, ...], ...]]:
    """A level's sequence match keys: sequence tag -> item attribute paths, in table
    order (PS3.4 C.2.2.2.6: keys in one sequence must match in the same item)."""
    found: dict[int, list[tuple[int, ...]]] = {}
    for path in MATCHING_ATTRIBUTES[level]:
        if len(path) > 1:
            found.setdefault(path[0], []).append(path[1:])
    return {seq: tuple(items) for seq, items in found.items()}


def date_time_pairs(level: Level) -> tuple[tuple[int, int], ...]:
    """The DA/TM pairs matched as one moment at ``level``: both are its match keys."""
    keys = {path for path in MATCHING_ATTRIBUTES[level] if len(path) == 1}
    return tuple(p for p in DATE_TIME_PAIRS if {(p[0],), (p[1],)} <= keys)


def combined_range(date: Range, time: Range) -> Range | None:
    """The datetime range a DA range and a TM range make together, or None where
    they stay two conditions (PS3.4 C.2.2.2.5: ``20200101-20200103`` with
    ``1000-1800`` is Jan 1 10:00 to Jan 3 18:00, not 10:00-18:00 on each day).

    A single value for either keeps the two conditions, as does a date range
    within one day (then both readings agree).
    """
    if date.single or time.single or (date.low is not None and date.low == date.high):
        return None
    return Range(
        None if date.low is None else date.low + (time.low or _LOW["TM"]),
        None if date.high is None else date.high + (time.high or _HIGH["TM"]),
    )


def attribute_level(tag: int) -> Level:
    """The information-model level of an attribute: the QIDO-RS tables', else the
    patient's and study's at the study level and the series' at the series level
    (``qido_levels``), else instance."""
    if (found := LEVEL_OF.get(tag)) is not None:
        return found
    if tag in STUDY_TAGS or tag >> 16 == PATIENT_GROUP:
        return "study"
    return "series" if tag in SERIES_TAGS else "instance"


def searchable_levels(level: Level, scope: Level | None) -> tuple[Level, ...]:
    """Levels a search may match and must return (PS3.18 §10.6.1.2, §10.6.3.3).

    ``scope`` is the resource the URL is inside: None for /studies, /series,
    /instances; "study" for /studies/{s}/...; "series" for .../series/{se}/instances.
    """
    start = 0 if scope is None else LEVELS.index(scope) + 1
    return LEVELS[start : LEVELS.index(level) + 1]


def pn_normal(text: str) -> str:
    """Case-fold one PN component group (``case_fold``: ``?`` stays one character)
    and drop trailing empty components: ``Smith^John^^`` == ``SMITH^JOHN`` (the
    index's keys and the matcher both use it)."""
    components = [c.strip() for c in text.split("^")]
    while components and not components[-1]:
        components.pop()
    return fold("^".join(components))


def normalise_bound(vr: str, value: str, *, high: bool) -> str:
    """Pad a DA/TM/DT value to full precision: earliest or latest instant it covers."""
    value = _TZ.sub("", value) if vr == "DT" else value.replace(":", "")
    template = (_HIGH if high else _LOW)[vr]
    return value + template[len(value) :]


def parse_qido(
    level: Level,
    params: Iterable[tuple[str, str]],
    *,
    scope: Level | None = None,
    max_limit: int = 1000,
) -> QidoQuery:
    """Parse QIDO-RS query parameters into a QidoQuery (PS3.18 §8.3.4, §10.6.1)."""
    levels = searchable_levels(level, scope)
    allowed = {path for lv in levels for path in MATCHING_ATTRIBUTES[lv]}
    state = _State()
    for name, value in params:
        state.take(name, value, allowed)
    limit = _limit(state, max_limit)
    return QidoQuery(
        level=level,
        levels=levels,
        matches=tuple(state.matches.values()),
        includefields=tuple(state.includes),
        include_all=state.include_all,
        limit=limit,
        offset=_offset(state),
        fuzzymatching=state.fuzzy,
        warnings=bounded(state.warnings, "ignored parameters"),
    )


class _State:
    """Accumulates parameters while parsing; local to one parse_qido call."""

    def __init__(self) -> None:
        self.matches: dict[tuple[int, ...], Match] = {}
        self.includes: dict[tuple[int, ...], None] = {}  # an ordered set
        self.included_names: set[str] = set()
        self.include_all = False
        self.single: dict[str, str] = {}
        self.fuzzy = False
        self.warnings: list[str] = []

    def take(self, name: str, value: str, allowed: set[tuple[int, ...]]) -> None:
        if name == "includefield":
            self._include(value)
        elif name in ("limit", "offset"):
            self.single[name] = value
        elif name in UNSUPPORTED_MATCHING:
            self._unsupported(name, value)
        elif name == "accept":
            pass  # media type negotiation: the HTTP layer's (PS3.18 §8.3.3.1)
        else:
            self._match(name, value, allowed)

    def _include(self, value: str) -> None:
        for item in filter(None, (v.strip() for v in value.split(","))):
            if item == "all":
                self.include_all = True
                continue
            self.included_names.add(item)  # unknown names too: each is one more warning
            if len(self.included_names) > MAX_INCLUDEFIELDS:
                raise QidoError(f"includefield may name at most {MAX_INCLUDEFIELDS} attributes")
            if (path := attribute_path(item)) is None:
                self.warnings.append(f"unknown includefield {item!r} was ignored")
            else:
                self.includes[path] = None

    def _unsupported(self, name: str, value: str) -> None:
        if value not in ("true", "false"):
            raise QidoError(f"{name} must be true or false, not {value!r}")
        if name == "fuzzymatching":
            self.fuzzy = value == "true"
        if value == "true" and UNSUPPORTED_MATCHING[name] not in self.warnings:
            self.warnings.append(UNSUPPORTED_MATCHING[name])

    def _match(self, name: str, value: str, allowed: set[tuple[int, ...]]) -> None:
        path = attribute_path(name)
        if path is not None and value == "" and any(len(p) > 1 and p[:1] == path for p in allowed):
            # an empty sequence key: universal matching, return the sequence (C.2.2.2.3)
            allowed = allowed | {path}
        if path is None or path not in allowed:
            self.warnings.append(f"query parameter {name!r} is not supported and was ignored")
            return
        if path in self.matches:
            raise QidoError(f"attribute {name!r} appears more than once")
        vr = dictionary_vr(path[-1])
        self.matches[path] = Match(path, vr, parse_matcher(vr, value))


def _limit(state: _State, max_limit: int) -> int:
    if "limit" not in state.single:
        return max_limit
    # 0 is a uint like any other (PS3.18 §8.3.4.4): a request for no results, 200 []
    limit = _unsigned("limit", state.single["limit"])
    # above the maximum: the maximum; a warning only if results are cut (qido_rs)
    return min(limit, max_limit)


def _offset(state: _State) -> int:
    """A huge offset is cut to ``INTEGER_CEILING`` (``url_integers``): it matches nothing."""
    return _unsigned("offset", state.single.get("offset", "0"))


def _unsigned(name: str, value: str) -> int:
    """PS3.18 §8.3.4.4: ``limit`` and ``offset`` are uints, so a sign, a fraction or
    anything but ASCII digits is a syntax error in the query (400, §8.3.4)."""
    number = url_integer(value)
    if number is None:
        raise QidoError(f"{name} must be an unsigned integer (ASCII digits), not {value!r}")
    return number


def attribute_path(text: str) -> tuple[int, ...] | None:
    """``PatientName``, ``00100010`` or dotted ``Seq.Attr`` → tag path; None if unknown."""
    path: list[int] = []
    for part in text.split("."):
        tag = _tag(part)
        if tag is None:
            return None
        path.append(tag)
    return tuple(path)


def _tag(text: str) -> int | None:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        return int(text, 16)
    return tag_for_keyword(text)


def parse_matcher(vr: str, value: str) -> Matcher:
    """The matcher a query value asks for, given the attribute's VR (PS3.4 C.2.2.2)."""
    if len(value) > MAX_MATCH_VALUE_LENGTH:
        raise QidoError(f"a matching value is at most {MAX_MATCH_VALUE_LENGTH} characters long")
    if value == "" or (vr in WILDCARD_VRS and value.strip("*") == ""):
        # a value of only * matches any value, an empty one too (PS3.4 C.2.2.2.4)
        return Universal()
    if vr in RANGE_VRS:
        return _range(vr, value)
    if vr in LIST_VRS and ("," in value or "\\" in value):
        return ValueList(tuple(v for v in re.split(r"[,\\]", value) if v))
    if vr in WILDCARD_VRS and ("*" in value or "?" in value):
        return Wildcard(value)
    if vr in NUMERIC_VRS and not _NUMBER.fullmatch(value):
        raise QidoError(f"{value!r} is not a number")
    return SingleValue(value)


def _range(vr: str, value: str) -> Range:
    """A DA/TM/DT value or range (PS3.4 C.2.2.2.5) whose bounds each name a moment
    (``moment_fault``); a TM may keep ACR-NEMA's colons (``10:30``)."""
    plain = value.replace(":", "") if vr == "TM" else value
    if _SHAPES[vr].fullmatch(plain):
        fault = moment_fault(vr, plain)
        if fault is None:
            low = normalise_bound(vr, value, high=False)
            return Range(low, normalise_bound(vr, value, high=True), True)
        if vr != "DT" or "-" not in value:
            raise QidoError(f"invalid {vr} value {value!r}: {fault}")
        # a DT such as 2020-2021 is a range, not the year 2020 at UTC offset -2021
    low, sep, high = value.partition("-")
    if not sep or not (low or high):
        raise QidoError(f"invalid {vr} value or range {value!r}")
    for bound in (low, high):
        _check_bound(vr, bound)
    return Range(
        normalise_bound(vr, low, high=False) if low else None,
        normalise_bound(vr, high, high=True) if high else None,
    )


def _check_bound(vr: str, bound: str) -> None:
    plain = bound.replace(":", "") if vr == "TM" else bound
    if plain and not _SHAPES[vr].fullmatch(plain):
        raise QidoError(f"invalid {vr} value {bound!r}")
    if plain and (fault := moment_fault(vr, plain)) is not None:
        raise QidoError(f"invalid {vr} value {bound!r}: {fault}")


def return_attributes(query: QidoQuery) -> tuple[tuple[int, ...], ...]:
    """Attribute paths every result must carry: the tables, match keys, includefields.

    An included attribute of a level the search does not return is left out (PS3.18
    §10.6.3.3: a study search returns no series or instance attribute, not even empty).
    """
    required = [(tag,) for lv in query.levels for tag in RETURN_ATTRIBUTES[lv]]
    matched = [(m.path[0],) for m in query.matches]
    included = [p for p in query.includefields if attribute_level(p[0]) in query.levels]
    return tuple(dict.fromkeys([*required, *matched, *included]))
