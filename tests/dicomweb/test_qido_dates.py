"""DA, TM and DT query values name moments that exist (PS3.5 Table 6.2-1)."""

from __future__ import annotations

import pytest

from dicomweb.qido_dates import moment_fault


@pytest.mark.parametrize(
    ("vr", "value"),
    [
        ("DA", "20240101"),
        ("DA", "20241231"),
        ("DA", "20240229"),  # a leap year
        ("DA", "20000229"),  # divisible by 400: leap
        ("DA", "20230430"),
        ("DA", "00000101"),  # the earliest bound the parser pads to
        ("DA", "99991231"),
        ("TM", "00"),
        ("TM", "23"),
        ("TM", "2359"),
        ("TM", "235960"),  # a leap second
        ("TM", "235959.999999"),
        ("TM", "120000.1"),
        ("DT", "2024"),
        ("DT", "202412"),
        ("DT", "20240229235960.5"),
        ("DT", "20240101+1400"),
        ("DT", "20240101-1200"),
        ("DT", "2024010112-0000"),
        ("DT", "20240101120000+0530"),
    ],
)
def test_a_moment_that_exists_has_no_fault(vr: str, value: str) -> None:
    assert moment_fault(vr, value) is None


@pytest.mark.parametrize(
    ("vr", "value", "fault"),
    [
        ("DA", "20241301", "month 13 is not 01-12"),
        ("DA", "20240001", "month 00 is not 01-12"),
        ("DA", "20240100", "day 00 is not 01-31 in 2024-01"),
        ("DA", "20240132", "day 32 is not 01-31 in 2024-01"),
        ("DA", "20230229", "day 29 is not 01-28 in 2023-02"),
        ("DA", "19000229", "day 29 is not 01-28 in 1900-02"),  # a century: no leap day
        ("DA", "20240431", "day 31 is not 01-30 in 2024-04"),
        ("TM", "24", "hour 24 is not 00-23"),
        ("TM", "2561", "hour 25 is not 00-23"),
        ("TM", "1260", "minute 60 is not 00-59"),
        ("TM", "125961", "second 61 is not 00-60"),
        ("TM", "129900.5", "minute 99 is not 00-59"),
        ("DT", "202413", "month 13 is not 01-12"),
        ("DT", "20240230", "day 30 is not 01-29 in 2024-02"),
        ("DT", "2024010124", "hour 24 is not 00-23"),
        ("DT", "202401011260", "minute 60 is not 00-59"),
        ("DT", "20240101125961.1", "second 61 is not 00-60"),
        ("DT", "20240101+1401", "UTC offset +1401 is not -1200 to +1400"),
        ("DT", "20240101-1201", "UTC offset -1201 is not -1200 to +1400"),
        ("DT", "20240101+0160", "UTC offset +0160 is not -1200 to +1400"),
    ],
)
def test_a_moment_that_does_not_exist_is_named(vr: str, value: str, fault: str) -> None:
    assert moment_fault(vr, value) == fault
