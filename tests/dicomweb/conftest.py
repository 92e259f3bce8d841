"""Fixtures for the dicomweb tests: pydicom's bundled sample files (never downloaded)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

Sample = Callable[[str], Path]


def bundled(name: str) -> Path:
    """Path of one of pydicom's bundled test files; fails instead of downloading."""
    found = get_testdata_file(name, download=False)
    if found is None:
        raise FileNotFoundError(f"{name} is not bundled with pydicom")
    return Path(str(found))


@pytest.fixture
def sample() -> Sample:
    return bundled
