"""The DICOM index port: study, series and instance rows beside the FHIR resources.

The index knows nothing of DICOM encoding (the kernel never imports
``dicomweb``): each row carries opaque DICOM JSON (``attrs``, returned by
searches; ``metadata``, the instance's precomputed WADO-RS metadata) and the
*match keys* its caller derived from it -- ``(key, value)`` strings already
normalised for matching (case-folded person names, padded dates). A search is
a conjunction of ``KeyFilter``s per level, which each adapter compiles to an
indexed lookup on those keys; nothing is evaluated after the query ran.

Study and series aggregates (ModalitiesInStudy, NumberOfStudyRelatedSeries,
NumberOfStudyRelatedInstances, NumberOfSeriesRelatedInstances) are kept up to
date by every write, never computed per query. Writes come in batches: one
durable transaction per batch of instances, not per instance.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

DicomLevel = Literal["study", "series", "instance"]
Json = dict[str, Any]
MatchKeys = tuple[tuple[str, str], ...]
# Derives a row's match keys from its stored attributes (``DicomIndex.rekey``).
KeyDeriver = Callable[[DicomLevel, Json], MatchKeys]

# The match key of ModalitiesInStudy, maintained by the index from series rows.
MODALITIES_KEY = "00080061"

StoreOutcome = Literal[
    "stored", "duplicate", "replaced", "conflict", "other-patient", "unindexable"
]


@dataclass(frozen=True, slots=True)
class BlobLocation:
    """Where the instance's bytes are: blob key, size and SHA-256 (hex)."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One instance to index, with its study and series attributes as received."""

    study_uid: str
    series_uid: str
    sop_uid: str
    blob: BlobLocation
    transfer_syntax_uid: str
    study_attrs: Json
    series_attrs: Json
    instance_attrs: Json
    metadata: bytes
    study_keys: MatchKeys = ()
    series_keys: MatchKeys = ()
    instance_keys: MatchKeys = ()
    modality: str | None = None
    instance_number: int | None = None
    patient_ref: str | None = None
    extra: Json = field(default_factory=dict)
    # who the instance says its patient is (its caller's encoding of Patient ID and
    # issuer): a study keeps the first one, and refuses instances naming another
    patient_key: str | None = None


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What the index did with one record; ``previous`` is a replaced blob to remove,
    ``detail`` why an ``unindexable`` record could not be held (words for a client)."""

    sop_uid: str
    outcome: StoreOutcome
    previous: BlobLocation | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StudyRow:
    """A study with its aggregates and the FHIR Patient it belongs to."""

    uid: str
    attrs: Json
    modalities: tuple[str, ...]
    series_count: int
    instance_count: int
    patient_ref: str | None
    # bumped by every change to the study's instances; ``synced_revision`` is the
    # latest one its FHIR ImagingStudy was written from (``mark_synced``)
    revision: int = 0
    synced_revision: int = 0
    # who the study's first instance named as its patient (``InstanceRecord.patient_key``;
    # None in an index made before the key was kept): ``set_patient`` compares it
    patient_key: str | None = None


@dataclass(frozen=True, slots=True)
class SeriesRow:
    uid: str
    study_uid: str
    attrs: Json
    instance_count: int
    revision: int


@dataclass(frozen=True, slots=True)
class InstanceFile:
    """Where an instance's file is and what it holds: all that retrieving it as
    stored, or keeping the blob store in step, needs (no attributes to decode)."""

    uid: str
    series_uid: str
    study_uid: str
    blob: BlobLocation
    transfer_syntax_uid: str


@dataclass(frozen=True, slots=True)
class InstanceRow:
    uid: str
    series_uid: str
    study_uid: str
    attrs: Json
    blob: BlobLocation
    transfer_syntax_uid: str
    instance_number: int | None
    extra: Json

    @property
    def file(self) -> InstanceFile:
        """Where its file is and what it holds (what sending it needs)."""
        return InstanceFile(
            self.uid, self.series_uid, self.study_uid, self.blob, self.transfer_syntax_uid
        )


@dataclass(frozen=True, slots=True)
class KeyFilter:
    """One match condition on a level's keys (PS3.4 C.2.2.2, pre-normalised).

    ``eq``: the key has ``values[0]``; ``any``: one of ``values``; ``glob``:
    ``values[0]`` with ``*`` and ``?`` wildcards; ``range``: ``values`` is
    ``(low, high)``, either may be empty for an open end, both inclusive.
    """

    key: str
    op: Literal["eq", "any", "glob", "range"]
    values: tuple[str, ...]


def glob_regex(pattern: str) -> str:
    """A ``glob`` pattern (``*`` any run, ``?`` one character) as an anchored regular
    expression (for ``re`` and MongoDB's PCRE alike) that cannot backtrack badly.

    ``^.*a.*a.*a…b$``, the plain translation, tries every way of placing each
    ``*`` before it fails: exponential in the number of stars (``*a*a*…*b``
    against a long run of ``a`` never ends). The segments between stars have a
    fixed length, so each middle one may be matched at its earliest place and
    never reconsidered (an atomic group): an earliest placement leaves the most
    room for the rest, so no match is lost; the last segment must end the value.
    """
    first, *rest = re.split(r"\*+", pattern)
    if not rest:
        return f"^{_segment(first)}$"
    *middle, last = rest
    committed = "".join(f"(?>.*?{_segment(m)})" for m in middle)
    return f"^{_segment(first)}{committed}.*{_segment(last)}$"


def _segment(text: str) -> str:
    return "".join("." if c == "?" else re.escape(c) for c in text)


@dataclass(frozen=True, slots=True)
class DicomQuery:
    """A QIDO search compiled for the index: the level, its scope and filters."""

    level: DicomLevel
    study_filters: tuple[KeyFilter, ...] = ()
    series_filters: tuple[KeyFilter, ...] = ()
    instance_filters: tuple[KeyFilter, ...] = ()
    study_uid: str | None = None
    series_uid: str | None = None
    patient_ref: str | None = None
    # access control: only studies of these FHIR Patients (None: no restriction)
    patient_refs: tuple[str, ...] | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class DicomMatch:
    """One search result: the row at the query's level and its parents."""

    study: StudyRow
    series: SeriesRow | None = None
    instance: InstanceRow | None = None


@dataclass(frozen=True, slots=True)
class DicomPage:
    """At most ``limit`` matches; ``more`` when further matches exist past them."""

    matches: list[DicomMatch]
    more: bool


@dataclass(frozen=True, slots=True)
class Deleted:
    """What a delete removed: the blobs to remove and the studies it touched."""

    blobs: list[BlobLocation]
    studies: list[str]


class DicomIndex(Protocol):
    """The DICOM index sub-store; every adapter passes ``tests/contract/test_dicom_index``."""

    async def start(self) -> None:
        """Create tables or collections and their indexes."""

    async def store_batch(
        self, records: Sequence[InstanceRecord], *, overwrite: bool = False
    ) -> list[StoreResult]:
        """Index a batch in one durable unit, updating aggregates; one result per record.

        An identical re-send (same SHA-256) is a ``duplicate``; a different
        instance under a known SOP Instance UID is a ``conflict`` unless
        ``overwrite``, when it is ``replaced``; an instance whose ``patient_key``
        is not its study's (a wrong-patient image) is ``other-patient``, and
        nothing of it is written; so is one the index cannot hold (too large for
        one MongoDB document, say), which is ``unindexable``. A stored study or
        series takes in each instance's attributes and keys by ``dicom_merge``: what
        the instance leaves empty keeps the stored value.
        """

    async def study(self, study_uid: str) -> StudyRow | None:
        """One study, or None."""

    async def series_of(self, study_uid: str) -> list[SeriesRow]:
        """A study's series, by series UID."""

    async def instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRow]:
        """A study's (series', one) instances, by series then instance number."""

    async def instance_files(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceFile]:
        """``instances``' files, in the same order."""

    async def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[bytes]:
        """The precomputed DICOM JSON of the instances ``instances`` would return."""

    async def search(self, query: DicomQuery) -> DicomPage:
        """Matches of ``query`` in UID order, served by indexes."""

    async def set_patient(
        self, study_uid: str, patient_ref: str | None, patient_key: str | None
    ) -> None:
        """Record which FHIR Patient a study belongs to (access control uses it), if
        the study's ``patient_key`` is still ``patient_key``, the one the Patient was
        found from: a study deleted and sent again for another patient meanwhile is
        left without one, for its own sync to find (never given the first's)."""

    async def mark_synced(self, study_uid: str, revision: int) -> None:
        """Record that the study's ImagingStudy was written from ``revision`` (kept
        if a later one was recorded already): a study whose ``synced_revision`` is
        behind its ``revision`` missed its sync (a crash), whatever its counts say."""

    async def rekey(self, version: str, derive: KeyDeriver, levels: Sequence[DicomLevel]) -> int:
        """Unless the index's keys are at ``version``: replace the match keys of every
        row of ``levels`` with ``derive(level, attrs)`` (the index's own aggregate
        keys kept), then record ``version``. Returns the rows re-keyed. Idempotent;
        interrupted, it starts over next time."""

    async def delete(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> Deleted:
        """Remove a study, series or instance, updating aggregates."""
