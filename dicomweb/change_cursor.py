"""A change-log consumer's durable position: the last ``seq`` it finished with.

Kept in a small file under the data dir (beside the blobs and keys every
instance of a deployment shares) and replaced atomically -- write a temporary,
fsync, rename, fsync the directory -- so after a crash the file holds either
the old or the new position, never a torn one. Consumers are idempotent, so
falling back to an older position only repeats work that changes nothing.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


class ChangeCursor:
    """The position of one named consumer in ``<directory>/<name>.cursor``."""

    def __init__(self, directory: Path, name: str) -> None:
        self._path = directory / f"{name}.cursor"

    @property
    def path(self) -> Path:
        return self._path

    def load(self) -> int:
        """The saved position, 0 (the start of the log) when none was saved."""
        try:
            return int(self._path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    async def save(self, seq: int) -> None:
        """Durably record ``seq`` as done."""
        await asyncio.to_thread(self._write, seq)

    def _write(self, seq: int) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(f"{seq}\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self._path)
        fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
