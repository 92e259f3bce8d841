"""``radhub token``: mints what the server accepts, refuses what it would turn away."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from fhir_server.cli import main


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return claims


def test_a_patient_token_names_its_patient(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["token", "--data-dir", str(tmp_path), "--scope", "patient/*.rs", "--patient", "p1"]
    assert main(args) == 0
    claims = _claims(capsys.readouterr().out.strip())
    assert (claims["scope"], claims["patient"]) == ("patient/*.rs", "p1")


@pytest.mark.parametrize(
    ("scope", "said"),
    [
        ("patient/*.rs", "patient/ scopes need --patient"),
        ("openid patient/Observation.read", "patient/ scopes need --patient"),
        ("system/Patient.rx", "'system/Patient.rx' is not understood"),
        ("system/*.cruds admin", "'admin' is not understood"),
    ],
)
def test_a_token_that_would_be_turned_away_is_not_minted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scope: str, said: str
) -> None:
    assert main(["token", "--data-dir", str(tmp_path), "--scope", scope]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert said in printed.err
