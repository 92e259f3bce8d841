"""``radhub import`` on files that are not what it takes: one clear line naming the
file (and line or entry), exit status 1, no traceback; what was committed before
an error is said, and a searchset's outcome entry is not data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_server.cli import main


def run(tmp_path: Path, name: str, content: str, *extra: str) -> int:
    path = tmp_path / name
    path.write_text(content)
    return main(["import", "--data-dir", str(tmp_path / "data"), str(path), *extra])


HISTORY = {
    "resourceType": "Bundle",
    "type": "history",
    "entry": [
        {
            "resource": {"resourceType": "Patient", "id": "h2"},
            "request": {"method": "PUT", "url": "Patient/h2"},
        },
        {"request": {"method": "DELETE", "url": "Patient/h9"}},
    ],
}


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("a.json", "[1, 2]", "a.json: not a JSON object"),
        ("b.ndjson", '{"resourceType":"Patient","id":"x"}\n[1]\n', "b.ndjson:2: not a JSON object"),
        ("c.ndjson", '{"resourceType":"Patient","id":"[/bold]"}\n', "[/bold]"),  # not markup
        (
            "d.json",
            '{"resourceType":"Bundle","type":"collection","entry":{"a":1}}',
            "Bundle.entry is not a list",
        ),
        ("e.json", json.dumps(HISTORY), "Bundle.entry[1] has no resource"),
    ],
)
def test_a_file_it_cannot_take_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str, says: str
) -> None:
    assert run(tmp_path, name, content) == 1
    out = capsys.readouterr()
    assert says in " ".join(out.out.split())  # the console wraps long lines
    assert "Traceback" not in out.out + out.err


def test_what_was_committed_before_an_error_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        '{"resourceType":"Patient","id":"p1"}',
        '{"resourceType":"Patient","id":"p2"}',
        '{"resourceType":"Patient","id":"p3","gender":12}',
    ]
    assert run(tmp_path, "p.ndjson", "\n".join(lines) + "\n", "--chunk", "2") == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "imported 2 resources before the error (committed, not undone)" in out
    assert "gender" in out  # the OperationOutcome's issue says which element


def test_a_searchset_outcome_entry_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "informational"}],
    }
    searchset = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "s1"}, "search": {"mode": "match"}},
            {"resource": outcome, "search": {"mode": "outcome"}},
        ],
    }
    assert run(tmp_path, "s.json", json.dumps(searchset)) == 0
    assert run(tmp_path, "s2.ndjson", "") == 0
