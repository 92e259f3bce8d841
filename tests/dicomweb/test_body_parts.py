"""Body Part Examined → SNOMED CT (ImagingStudy.series.bodySite), and the table
kept in step with pydicom's CID 4031."""

from __future__ import annotations

import pytest

from dicomweb.body_parts import SNOMED, TABLE, body_site, dump, generate


def test_the_table_is_what_pydicom_gives() -> None:
    # regenerate with `python -m dicomweb.body_parts` when pydicom's dictionary moves
    assert TABLE.read_text() == dump(generate())


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("HEAD", {"system": SNOMED, "code": "69536005", "display": "Head"}),
        ("CHEST", {"system": SNOMED, "code": "816094009", "display": "Chest"}),
        ("ABDOMEN", {"system": SNOMED, "code": "818981001", "display": "Abdomen"}),
        ("knee ", {"system": SNOMED, "code": "72696002", "display": "Knee"}),  # as sent
        ("CSPINE", {"system": SNOMED, "code": "122494005", "display": "Cervical spine"}),
        ("ANKLE", {"system": SNOMED, "code": "70258002", "display": "Ankle joint"}),
        # PS3.16 Annex L's other abbreviations
        ("WHOLEBODY", {"system": SNOMED, "code": "38266002", "display": "Entire body"}),
        ("TMJ", {"system": SNOMED, "code": "53620006", "display": "Temporomandibular joint"}),
        ("TLSPINE", {"system": SNOMED, "code": "1217256009", "display": "Thoraco-lumbar spine"}),
        ("LEFTTOE3", {"display": "LEFTTOE3"}),  # unknown: the text alone, no invented code
    ],
)
def test_body_site(term: str, expected: dict[str, str]) -> None:
    assert body_site(term) == expected
