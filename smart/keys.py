"""The server's token signing keys, kept in ``<data_dir>/keys/``.

One file, ``keyring.json`` (mode 0600, in a 0700 directory), holds every key
still in use: the active one signs, retired ones only verify until
``retire_after`` seconds after their retirement, so tokens they signed stay
valid to their expiry (set ``retire_after`` at least to the longest token
lifetime). Key ids are RFC 7638 thumbprints.

Several processes share the file (``radhub serve`` and ``radhub token`` may
start together on a fresh data dir): the first key is published with
``os.link`` from a complete temporary file, which fails if another process
won, so every process ends up with the same key; rotation rewrites the file
under an ``flock`` and publishes it with ``os.replace``. Readers only ever see
a whole file.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, RSAKey

KEYS_DIR = "keys"
KEYRING_FILE = "keyring.json"
DEFAULT_ALG = "RS256"
DEFAULT_RETIRE_AFTER = 24 * 3600

# Asymmetric signing algorithms only (RFC 7518 §3.1); no HMAC, no "none".
_GENERATORS: dict[str, Callable[[str], RSAKey | ECKey]] = {
    "RS256": lambda alg: RSAKey.generate_key(2048, parameters={"alg": alg, "use": "sig"}),
    "RS384": lambda alg: RSAKey.generate_key(3072, parameters={"alg": alg, "use": "sig"}),
    "ES256": lambda alg: ECKey.generate_key("P-256", parameters={"alg": alg, "use": "sig"}),
    "ES384": lambda alg: ECKey.generate_key("P-384", parameters={"alg": alg, "use": "sig"}),
}
SIGNING_ALGORITHMS = frozenset(_GENERATORS)

Clock = Callable[[], float]


class KeyRingError(RuntimeError):
    """The key directory or file is unusable (bad permissions, corrupt content)."""


@dataclass(frozen=True, eq=False, slots=True)
class SigningKey:
    """One key pair. ``retired_at`` is None for the active key."""

    kid: str
    alg: str
    created: int
    retired_at: int | None
    jwk: RSAKey | ECKey

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK (RFC 7517), for the JWKS."""
        return dict(self.jwk.as_dict(private=False, kid=self.kid, alg=self.alg, use="sig"))

    def to_record(self) -> dict[str, Any]:
        jwk = dict(self.jwk.as_dict(private=True, kid=self.kid))
        return {
            "kid": self.kid,
            "alg": self.alg,
            "created": self.created,
            "retired_at": self.retired_at,
            "jwk": jwk,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SigningKey:
        alg = record["alg"]
        if alg not in SIGNING_ALGORITHMS:
            raise KeyRingError(f"unsupported key algorithm {alg!r}")
        key_cls = RSAKey if alg.startswith("RS") else ECKey
        jwk = key_cls.import_key(record["jwk"])
        return cls(record["kid"], alg, int(record["created"]), record.get("retired_at"), jwk)

    @classmethod
    def generate(cls, alg: str, now: int) -> SigningKey:
        if alg not in SIGNING_ALGORITHMS:
            raise KeyRingError(f"unsupported key algorithm {alg!r}")
        jwk = _GENERATORS[alg](alg)
        return cls(jwk.thumbprint(), alg, now, None, jwk)


class KeyRing:
    """The signing keys of one data dir. Build with ``KeyRing.open(data_dir)``."""

    def __init__(
        self,
        directory: Path,
        *,
        alg: str = DEFAULT_ALG,
        retire_after: int = DEFAULT_RETIRE_AFTER,
        clock: Clock = time.time,
    ) -> None:
        self.directory = directory
        self.alg = alg
        self.retire_after = retire_after
        self._clock = clock
        self._keys: tuple[SigningKey, ...] = ()
        self._stamp: tuple[int, int, int] | None = None

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        alg: str = DEFAULT_ALG,
        retire_after: int = DEFAULT_RETIRE_AFTER,
        clock: Clock = time.time,
    ) -> KeyRing:
        """Load the keys of ``data_dir``, creating the first one if there is none."""
        ring = cls(Path(data_dir) / KEYS_DIR, alg=alg, retire_after=retire_after, clock=clock)
        ring._ensure_directory()
        if not ring.path.exists():
            ring._publish_first(SigningKey.generate(alg, ring._now()))
        ring.reload()
        return ring

    @property
    def path(self) -> Path:
        return self.directory / KEYRING_FILE

    @property
    def active_key(self) -> SigningKey:
        """The key new tokens are signed with; re-reads the file if another process
        (``radhub keys rotate``) rotated, so a running server signs with the new key."""
        if self._changed_on_disk():
            self.reload()
        return self._keys[-1]

    def keys(self) -> tuple[SigningKey, ...]:
        """The keys that still verify: the active one and those retired recently."""
        now = self._now()
        return tuple(k for k in self._keys if not self._expired(k, now))

    def get(self, kid: str) -> SigningKey | None:
        """The verifying key with this id; re-reads the file if another process rotated."""
        found = self._find(kid)
        if found is None and self._changed_on_disk():
            self.reload()
            found = self._find(kid)
        return found

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517 §5) served at ``/auth/jwks``."""
        if self._changed_on_disk():
            self.reload()
        return {"keys": [k.public_jwk() for k in self.keys()]}

    def rotate(self) -> SigningKey:
        """Make a new active key; the old one keeps verifying for ``retire_after`` seconds."""
        with self._locked():
            now = self._now()
            kept = [k for k in self._read() if not self._expired(k, now)]
            retired = [k if k.retired_at is not None else replace(k, retired_at=now) for k in kept]
            new = SigningKey.generate(self.alg, now)
            self._write_replace([*retired, new])
        self.reload()
        return new

    def reload(self) -> None:
        """Re-read the key file."""
        self._stamp = self._stat()
        self._keys = self._read()
        if not self._keys or self._keys[-1].retired_at is not None:
            raise KeyRingError(f"{self.path} has no active key")

    def _find(self, kid: str) -> SigningKey | None:
        # every request's token is checked against its key: no tuple of all keys for it
        for key in self._keys:
            if key.kid == kid:
                return None if self._expired(key, self._now()) else key
        return None

    def _expired(self, key: SigningKey, now: int) -> bool:
        return key.retired_at is not None and now >= key.retired_at + self.retire_after

    def _now(self) -> int:
        return int(self._clock())

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask and ignored for an existing dir.
        os.chmod(self.directory, 0o700)

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _changed_on_disk(self) -> bool:
        try:
            return self._stat() != self._stamp
        except FileNotFoundError:
            return False

    def _read(self) -> tuple[SigningKey, ...]:
        _tighten(self.path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return tuple(SigningKey.from_record(r) for r in data["keys"])
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyRingError(f"{self.path} is corrupt: {exc}") from exc

    def _publish_first(self, key: SigningKey) -> None:
        tmp = self._write_temp([key])
        try:
            os.link(tmp, self.path)  # fails if another process published first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        _fsync_dir(self.directory)

    def _write_replace(self, keys: list[SigningKey]) -> None:
        os.replace(self._write_temp(keys), self.path)
        _fsync_dir(self.directory)

    def _write_temp(self, keys: list[SigningKey]) -> Path:
        tmp = self.directory / f".{KEYRING_FILE}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
        payload = json.dumps({"keys": [k.to_record() for k in keys]}, indent=1).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, 0o600)  # the umask cannot widen it, but be explicit
            file.write(payload)
            file.flush()
            os.fsync(fd)
        return tmp

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _tighten(path: Path) -> None:
    # A key file readable by others is repaired rather than trusted silently.
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
