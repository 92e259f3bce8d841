"""The most data elements one instance may hold: an instance past the limits
fails alone (0xC000, with its UIDs), and the rest of its request is stored."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomweb.ingest_parse import CANNOT_UNDERSTAND
from dicomweb.records import MAX_TOP_LEVEL_ELEMENTS, element_count, too_many_elements
from tests.dicomweb.archive_app import fast_settings, running
from tests.dicomweb.test_ingest_races import X, Y, Z, agree, failures, instance, referenced, stow


def element(value: str = "v") -> dict[str, Any]:
    return {"vr": "LO", "Value": [value]}


def sequence(*items: dict[str, Any]) -> dict[str, Any]:
    return {"vr": "SQ", "Value": list(items)}


def flat(n: int) -> dict[str, Any]:
    return {f"0009{1000 + i:04X}": element() for i in range(n)}


@pytest.mark.parametrize(
    ("dataset", "count"),
    [
        ({}, 0),
        (flat(3), 3),
        ({"00081115": sequence(flat(2), flat(3))}, 6),  # the sequence and its items' five
        ({"00081115": sequence({"0040A730": sequence(flat(4))})}, 6),  # nested
        ({"00081115": {"vr": "SQ"}}, 1),  # an empty sequence (no Value)
    ],
)
def test_element_count(dataset: dict[str, Any], count: int) -> None:
    assert element_count(dataset, 1_000) == count


def test_the_count_stops_soon_after_it_passes_the_limit() -> None:
    many = {"00081115": sequence(*(flat(10) for _ in range(1_000)))}
    assert element_count(many, 10_001) == 10_001
    assert 50 < element_count(many, 50) <= 61  # an item's worth past it, not all 10,001


@pytest.mark.parametrize(
    ("dataset", "why"),
    [
        (flat(5), None),  # both limits exactly
        (flat(6), "6 data elements at its top level (at most 5)"),
        ({"00081115": sequence(flat(4), flat(4))}, None),  # 9 in all, 1 at the top
        (
            {"00081115": sequence(flat(4), flat(4), flat(1))},
            "more than 9 data elements in all",
        ),
    ],
)
def test_too_many_elements(dataset: dict[str, Any], why: str | None) -> None:
    assert too_many_elements(dataset, 5, 9) == why


def with_private_elements(data: bytes, count: int) -> bytes:
    """``data`` with ``count`` more top-level elements, private ones (odd groups
    from 7001, each with its creator), before the pixel data."""
    ds = pydicom.dcmread(io.BytesIO(data))
    group = 0x7001
    while count > 0:
        ds.private_block(group, "RADHUB TEST", create=True)
        block = min(count, 255)  # the creator takes one of the group's top-level slots too
        for offset in range(block):
            ds.add_new(group << 16 | 0x1000 | offset, "LO", "v")
        count -= block + 1
        group += 2
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def test_an_instance_with_too_many_top_level_elements_fails_alone(tmp_path: Path) -> None:
    """Each top-level element goes into every QIDO-RS includefield=all answer that
    names the instance: 300,000 of them made one answer 11 MB."""
    crowded = with_private_elements(instance(Y, 2), MAX_TOP_LEVEL_ELEMENTS)
    async with running(fast_settings(tmp_path)) as (app, client):
        response = await stow(client, instance(X), crowded, instance(Z, 3))
        assert response.status_code == 202
        assert referenced(response) == [X, Z]
        assert failures(response) == {Y: CANNOT_UNDERSTAND}
        (warning,) = response.headers.get_list("warning")
        assert warning.startswith(f'299 radhub "{Y}: the data set has 10,0')
        assert "data elements at its top level (at most 10,000)" in warning
        assert await agree(app) == [X, Z]
