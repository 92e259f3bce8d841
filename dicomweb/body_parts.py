"""DICOM Body Part Examined (0018,0015) → SNOMED CT, for ImagingStudy.series.bodySite.

The table (``definitions/body_parts.json``) is PS3.16 CID 4031 "Common Anatomic
Regions" as pydicom's code dictionary holds it, keyed by Body Part Examined
term: a term is the concept's keyword in capitals (CHEST, KNEE, PELVIS), or one
of PS3.16 Annex L's abbreviations in ``ABBREVIATIONS``. It is written by
``python -m dicomweb.body_parts`` and checked against pydicom by the tests, so
the server does not load pydicom's whole concept dictionary (~16 MB) for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType

TABLE = Path(__file__).with_name("definitions") / "body_parts.json"
SNOMED = "http://snomed.info/sct"
ABBREVIATIONS = {
    "CSPINE": "CervicalSpine",
    "TSPINE": "ThoracicSpine",
    "LSPINE": "LumbarSpine",
    "ABDOMENPELVIS": "AbdomenAndPelvis",
    "CHESTABDOMEN": "ChestAndAbdomen",
    "HEADNECK": "HeadAndNeck",
    "ANKLE": "AnkleJoint",
    "ELBOW": "ElbowJoint",
    "WRIST": "WristJoint",
    "WHOLEBODY": "EntireBody",
    "ARM": "UpperArm",
    "LEG": "LowerLeg",
    "CTSPINE": "CervicoThoracicSpine",
    "TLSPINE": "ThoracoLumbarSpine",
    "LSSPINE": "LumboSacralSpine",
    "SSPINE": "SacroCoccygealSpine",
    "SIJOINT": "SacroiliacJoint",
    "TMJ": "TemporomandibularJoint",
    "ACJOINT": "AcromioclavicularJoint",
    "ORBIT": "OrbitalStructure",
    "JAW": "JawRegion",
    "IAC": "InternalAuditoryCanal",
    "SELLA": "SellaTurcica",
}


def generate() -> dict[str, tuple[str, str]]:
    """Term → (SNOMED CT code, meaning), from pydicom's CID 4031."""
    from pydicom.sr.codedict import codes  # only here: its dictionary is large

    cid = codes.cid4031
    concepts = {name.upper(): getattr(cid, name) for name in cid.dir()}
    concepts |= {term: getattr(cid, name) for term, name in ABBREVIATIONS.items()}
    return {
        term: (code.value, code.meaning)
        for term, code in sorted(concepts.items())
        if code.scheme_designator == "SCT"
    }


def load() -> MappingProxyType[str, tuple[str, str]]:
    raw = json.loads(TABLE.read_text())
    return MappingProxyType({term: (code, meaning) for term, (code, meaning) in raw.items()})


BODY_PARTS = load()


def body_site(term: str) -> dict[str, str]:
    """The R4 Coding of a Body Part Examined term: SNOMED CT where the table knows
    it, else the term as the display alone."""
    known = BODY_PARTS.get(term.strip().upper())
    if known is None:
        return {"display": term}
    code, meaning = known
    return {"system": SNOMED, "code": code, "display": meaning}


def dump(table: dict[str, tuple[str, str]]) -> str:
    """The table as written: one term per line."""
    lines = (
        f"  {json.dumps(t)}: {json.dumps(list(v), ensure_ascii=False)}" for t, v in table.items()
    )
    return "{\n" + ",\n".join(lines) + "\n}\n"


if __name__ == "__main__":
    TABLE.write_text(dump(generate()))
