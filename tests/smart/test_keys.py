from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from smart.keys import KEYRING_FILE, KEYS_DIR, KeyRing, KeyRingError

ROOT = Path(__file__).resolve().parents[2]
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_creates_keys_with_restrictive_modes(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        ring = KeyRing.open(tmp_path / "data")
    finally:
        os.umask(old)
    assert mode(tmp_path / "data" / KEYS_DIR) == 0o700
    assert mode(ring.path) == 0o600
    assert [p.name for p in ring.directory.iterdir()] == [KEYRING_FILE]  # no temp left over


def test_tightens_loose_modes(tmp_path: Path) -> None:
    ring = KeyRing.open(tmp_path)
    os.chmod(ring.directory, 0o755)
    os.chmod(ring.path, 0o644)
    KeyRing.open(tmp_path)
    assert mode(ring.directory) == 0o700
    assert mode(ring.path) == 0o600


def test_reuses_the_key_on_restart(tmp_path: Path) -> None:
    first = KeyRing.open(tmp_path).active_key
    second = KeyRing.open(tmp_path).active_key
    assert first.kid == second.kid
    assert first.jwk.as_dict(private=True) == second.jwk.as_dict(private=True)


def test_kid_is_the_rfc7638_thumbprint(tmp_path: Path) -> None:
    key = KeyRing.open(tmp_path).active_key
    assert key.kid == key.jwk.thumbprint()
    assert key.alg == "RS256"


@pytest.mark.parametrize("alg", ["RS384", "ES256", "ES384"])
def test_other_algorithms(tmp_path: Path, alg: str) -> None:
    ring = KeyRing.open(tmp_path, alg=alg)
    assert ring.active_key.alg == alg
    assert ring.jwks()["keys"][0]["alg"] == alg


def test_refuses_symmetric_algorithms(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError):
        KeyRing.open(tmp_path, alg="HS256")


def test_jwks_has_no_private_parts(tmp_path: Path) -> None:
    ring = KeyRing.open(tmp_path)
    ring.rotate()
    jwks = ring.jwks()
    assert len(jwks["keys"]) == 2
    for jwk in jwks["keys"]:
        assert not PRIVATE_MEMBERS & set(jwk)
        assert jwk["use"] == "sig"
        assert {"kty", "kid", "alg", "n", "e"} <= set(jwk)
    json.dumps(jwks)


def test_rotation_keeps_old_keys_until_retired(tmp_path: Path) -> None:
    clock = Clock()
    ring = KeyRing.open(tmp_path, retire_after=600, clock=clock)
    old = ring.active_key
    clock.now += 10
    new = ring.rotate()
    assert ring.active_key.kid == new.kid != old.kid
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old.kid, new.kid}
    assert ring.get(old.kid) is not None

    clock.now += 599
    assert ring.get(old.kid) is not None
    clock.now += 1
    assert ring.get(old.kid) is None
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new.kid]

    ring.rotate()  # prunes the expired key from the file
    stored = json.loads(ring.path.read_text())["keys"]
    assert old.kid not in {k["kid"] for k in stored}
    assert len(stored) == 2


def test_restart_keeps_the_rotated_key_active(tmp_path: Path) -> None:
    ring = KeyRing.open(tmp_path)
    new = ring.rotate()
    assert KeyRing.open(tmp_path).active_key.kid == new.kid
    assert mode(ring.path) == 0o600


def test_sees_a_rotation_by_another_process(tmp_path: Path) -> None:
    server = KeyRing.open(tmp_path)
    admin = KeyRing.open(tmp_path)
    new = admin.rotate()
    assert server.get(new.kid) is not None  # re-read because the file changed
    assert server.active_key.kid == new.kid


def test_unknown_kid_does_not_reread_an_unchanged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = KeyRing.open(tmp_path)
    reloads: list[None] = []
    monkeypatch.setattr(ring, "reload", lambda: reloads.append(None))
    assert ring.get("nope") is None
    assert reloads == []


def test_corrupt_file_is_reported(tmp_path: Path) -> None:
    ring = KeyRing.open(tmp_path)
    ring.path.write_text("{not json")
    with pytest.raises(KeyRingError):
        KeyRing.open(tmp_path)


def test_concurrent_creation_in_threads(tmp_path: Path) -> None:
    barrier = threading.Barrier(8)
    kids: list[str] = []

    def start() -> None:
        barrier.wait()
        kids.append(KeyRing.open(tmp_path).active_key.kid)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kids) == 8
    assert len(set(kids)) == 1
    assert [p.name for p in (tmp_path / KEYS_DIR).iterdir()] == [KEYRING_FILE]


CHILD = """
import sys, time
from smart.keys import KeyRing
start = float(sys.argv[2])
while time.time() < start:
    pass
print(KeyRing.open(sys.argv[1]).active_key.kid)
"""


def test_concurrent_creation_in_processes(tmp_path: Path) -> None:
    import time

    start = time.time() + 1.5  # every child is up and spinning by then
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(start)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(4)
    ]
    kids = {child.communicate(timeout=60)[0].strip() for child in children}
    assert all(child.returncode == 0 for child in children)
    assert len(kids) == 1
    assert KeyRing.open(tmp_path).active_key.kid in kids


def test_radhub_keys_rotate_reaches_a_running_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fhir_server.cli import main

    server = KeyRing.open(tmp_path)
    old = server.active_key.kid
    assert main(["keys", "rotate", "--data-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    # the server signs with the new key at once, without a restart or a lookup first
    new = server.active_key.kid
    assert new != old and new in printed and old in printed
    assert {k["kid"] for k in server.jwks()["keys"]} == {old, new}
    assert server.get(old) is not None  # tokens signed before still verify
