"""Durable blob storage for DICOM Part-10 files.

A blob's key is derived from the study, series and SOP Instance UIDs (hashed,
so no UID can steer the path) plus a prefix of the content's SHA-256, so a
blob is never overwritten with different bytes: a re-sent identical instance
lands on the same key, a different one beside it, and the index decides which
one is current. Writes are atomic (temporary file in the target directory,
fsync, rename, fsync of the directory), so a crash leaves either the whole
blob or an ignorable ``.tmp-`` file, never a half-written blob under a key.

Blocking file I/O runs in worker threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

DEFAULT_CHUNK_SIZE = 256 * 1024
_TEMP_PREFIX = ".tmp-"
_STAGING = ".staging"
_KEY_RE = re.compile(
    r"^[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{40}/[0-9a-f]{40}/[0-9a-f]{40}\.[0-9a-f]{16}\.dcm$"
)


@dataclass(frozen=True)
class BlobRef:
    """Where a blob lives and what it holds: key, byte size and SHA-256 (hex)."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StagedBlob:
    """A received file not yet under its key: its path, size and SHA-256 (hex)."""

    path: Path
    size: int
    sha256: str


class BlobError(Exception):
    """A blob operation failed; ``InvalidBlobKey`` and ``BlobNotFound`` refine it."""


class InvalidBlobKey(BlobError):
    """The key is not one this store produced (guards against path traversal)."""


class BlobNotFound(BlobError):
    """No blob is stored under the key."""


class BlobStore(Protocol):
    """The seam between ingest/retrieval and where the bytes live."""

    async def write(
        self, study_uid: str, series_uid: str, sop_uid: str, chunks: AsyncIterable[bytes]
    ) -> BlobRef: ...

    def open(
        self, key: str, *, offset: int = 0, length: int | None = None, chunk_size: int = ...
    ) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> bool: ...

    async def exists(self, key: str) -> bool: ...


def _uid_hash(uid: str) -> str:
    return hashlib.sha1(uid.encode("utf-8"), usedforsecurity=False).hexdigest()


def blob_stem(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Relative path stem of an instance: two fan-out levels, then the hashed UIDs."""
    study, series, sop = _uid_hash(study_uid), _uid_hash(series_uid), _uid_hash(sop_uid)
    return f"{study[:2]}/{study[2:4]}/{study}/{series}/{sop}"


class FileBlobStore:
    """A BlobStore on a local (or mounted) file system under ``root``."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self._root = root
        self._fsync = fsync

    @property
    def root(self) -> Path:
        """The directory under which every blob lives."""
        return self._root

    def path_for(self, key: str) -> Path:
        """Absolute path of a key; raises InvalidBlobKey for anything foreign."""
        if not _KEY_RE.fullmatch(key):
            raise InvalidBlobKey(f"not a blob key: {key!r}")
        return self._root / key

    async def write(
        self, study_uid: str, series_uid: str, sop_uid: str, chunks: AsyncIterable[bytes]
    ) -> BlobRef:
        """Stream ``chunks`` into a new blob atomically and return its reference."""
        stem = blob_stem(study_uid, series_uid, sop_uid)
        series_dir = (self._root / stem).parent
        await asyncio.to_thread(self._make_dirs, series_dir)
        fd, tmp_name = await asyncio.to_thread(
            tempfile.mkstemp, prefix=_TEMP_PREFIX, dir=series_dir
        )
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                size, digest = await self._copy_in(fh, chunks)
            key = f"{stem}.{digest[:16]}.dcm"
            await asyncio.to_thread(self._commit, tmp, self._root / key)
        except BaseException:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise
        return BlobRef(key=key, size=size, sha256=digest)

    async def _copy_in(self, fh: BinaryIO, chunks: AsyncIterable[bytes]) -> tuple[int, str]:
        hasher = hashlib.sha256()
        size = 0
        async for chunk in chunks:
            hasher.update(chunk)
            size += len(chunk)
            await asyncio.to_thread(fh.write, chunk)
        await asyncio.to_thread(self._flush, fh)
        return size, hasher.hexdigest()

    def _make_dirs(self, directory: Path) -> None:
        missing = [d for d in (directory, *directory.parents) if not d.exists()]
        directory.mkdir(parents=True, exist_ok=True)
        if self._fsync:
            for created in reversed(missing):  # make each new entry durable in its parent
                _fsync_dir(created.parent)

    def _flush(self, fh: BinaryIO) -> None:
        fh.flush()
        if self._fsync:
            os.fsync(fh.fileno())

    def _commit(self, tmp: Path, final: Path) -> None:
        os.replace(tmp, final)
        if self._fsync:
            _fsync_dir(final.parent)

    async def stage(self, chunks: AsyncIterable[bytes]) -> StagedBlob:
        """Stream ``chunks`` to a durable temporary file before the UIDs are known (ingest
        parses it there), to be ``adopt``-ed under its key or ``discard``-ed."""
        staging = self._root / _STAGING
        await asyncio.to_thread(self._make_dirs, staging)
        fd, tmp_name = await asyncio.to_thread(tempfile.mkstemp, prefix=_TEMP_PREFIX, dir=staging)
        try:
            with os.fdopen(fd, "wb") as fh:
                size, digest = await self._copy_in(fh, chunks)
        except BaseException:
            await asyncio.to_thread(Path(tmp_name).unlink, missing_ok=True)
            raise
        return StagedBlob(Path(tmp_name), size, digest)

    async def adopt(
        self, staged: StagedBlob, study_uid: str, series_uid: str, sop_uid: str
    ) -> BlobRef:
        """Move a staged file under its key atomically (rename, fsync of the directory)."""
        stem = blob_stem(study_uid, series_uid, sop_uid)
        key = f"{stem}.{staged.sha256[:16]}.dcm"
        await asyncio.to_thread(self._make_dirs, (self._root / key).parent)
        await asyncio.to_thread(self._commit, staged.path, self._root / key)
        return BlobRef(key=key, size=staged.size, sha256=staged.sha256)

    async def discard(self, staged: StagedBlob) -> None:
        """Remove a staged file that will not be kept."""
        await asyncio.to_thread(staged.path.unlink, missing_ok=True)

    async def open(
        self,
        key: str,
        *,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:
        """Yield the blob's bytes from ``offset`` (``length`` bytes or to the end)."""
        path = self.path_for(key)
        try:
            fh = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc
        try:
            await asyncio.to_thread(fh.seek, offset)
            remaining = length
            while remaining is None or remaining > 0:
                want = chunk_size if remaining is None else min(chunk_size, remaining)
                chunk = await asyncio.to_thread(fh.read, want)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(fh.close)

    async def delete(self, key: str) -> bool:
        """Remove a blob; True if it existed."""
        path = self.path_for(key)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        if self._fsync:
            await asyncio.to_thread(_fsync_dir, path.parent)
        return True

    async def exists(self, key: str) -> bool:
        """True if a blob is stored under ``key``."""
        return await asyncio.to_thread(self.path_for(key).is_file)

    async def keys(self) -> list[str]:
        """Every committed key (temporary files excluded), for index reconciliation."""
        return await asyncio.to_thread(self._scan)

    def _scan(self) -> list[str]:
        if not self._root.is_dir():
            return []
        found = (p.relative_to(self._root).as_posix() for p in self._root.rglob("*.dcm"))
        return sorted(k for k in found if _KEY_RE.fullmatch(k))

    async def remove_temporaries(self, *, older_than: float | None = None) -> int:
        """Delete ``.tmp-`` files left by writes a crash interrupted (only those last
        modified before ``older_than``, a POSIX time, if given); return how many."""
        return await asyncio.to_thread(self._remove_temporaries, older_than)

    def _remove_temporaries(self, older_than: float | None) -> int:
        if not self._root.is_dir():
            return 0
        removed = 0
        for path in self._root.rglob(f"{_TEMP_PREFIX}*"):
            try:
                if older_than is not None and path.stat().st_mtime >= older_than:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
        return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
