"""Durable blob storage for DICOM Part-10 files.

A blob's key is derived from the study, series and SOP Instance UIDs (hashed,
so no UID can steer the path) plus a prefix of the content's SHA-256, so a
blob is never overwritten with different bytes: a re-sent identical instance
lands on the same key, a different one beside it, and the index decides which
one is current. Writes are atomic (temporary file in the one staging
directory, fsync, rename under the key, fsync of the key's directory), so a
crash leaves either the whole blob or an ignorable ``.tmp-`` file, never a
half-written blob under a key; and the start-up sweep for those files reads
the staging directory alone, not the whole archive.

Blocking file I/O runs in worker threads (``asyncio.to_thread``), in blocks
of about a megabyte: a thread hand-off costs more than writing or reading a
few hundred kilobytes, so per-chunk hand-offs dominated ingest and retrieval.
Retrieval of many blobs (``FileBlobStore.gather``) lives in ``blob_gather``.
A received file of at most 64 KiB (``WRITE_ON_LOOP_MOST``) is written on the
loop: it goes to the page cache, and its fsync, later, runs in a thread.
Ingest stages files without fsync, makes them durable in the background while
the next ones arrive (``make_durable_many``), and moves a whole batch under
its keys with one fsync per directory (``adopt_many``); the caller
acknowledges nothing before all of that has finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, Protocol

from dicomweb import blob_gather
from dicomweb.blob_errors import BlobNotFound, InvalidBlobKey
from dicomweb.blob_gather import GATHER_BLOCK, Piece
from dicomweb.coalesce import outcomes
from fhir_server.run_to_end import run_to_end, succeeded

DEFAULT_CHUNK_SIZE = 1024 * 1024
# a received body arrives in these (the multipart parser hands on its buffer)
Chunk = bytes | bytearray
WRITE_BLOCK = 1024 * 1024
# A file this small is written on the event loop: the page-cache copy takes tens of
# microseconds, less than the two thread hand-offs it replaces. 64x64 instances through
# STOW-RS with four clients: faster in 5 of 6 interleaved pairs (477-534 against 419-544
# instances/s), with less CPU each in 5 of 6 (docs/performance.md, session 12).
WRITE_ON_LOOP_MOST = 64 * 1024
_TEMP_PREFIX = ".tmp-"
_STAGING = ".staging"
_PLACE_TRIES = 3
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
    data: bytes | None = None  # the contents, when they fitted in ``stage``'s ``keep``


StagedItem = tuple[StagedBlob, str, str, str]  # a staged file, its study, series, SOP UIDs


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
        spool = _Spool(partial(self._open_temporary, self._root / _STAGING))
        try:
            size, digest, _ = await spool.fill(chunks, 0)
            key = f"{stem}.{digest[:16]}.dcm"
            await asyncio.to_thread(self._commit, spool.written_path(), self._root / key)
        except BaseException:
            await spool.discard()
            raise
        return BlobRef(key=key, size=size, sha256=digest)

    def _open_temporary(self, directory: Path) -> tuple[BinaryIO, Path]:
        if not directory.is_dir():
            self._make_dirs(directory)
        fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=directory)
        return os.fdopen(fd, "wb"), Path(name)

    def _make_dirs(self, directory: Path) -> None:
        missing = [d for d in (directory, *directory.parents) if not d.exists()]
        directory.mkdir(parents=True, exist_ok=True)
        if self._fsync:
            for created in reversed(missing):  # make each new entry durable in its parent
                fsync_path(created.parent)

    def _commit(self, tmp: Path, final: Path) -> None:
        if self._fsync:
            fsync_path(tmp)
        self._place(tmp, final)
        if self._fsync:
            fsync_path(final.parent)

    def _place(self, tmp: Path, final: Path) -> None:
        """Rename ``tmp`` to ``final``, making its directory if it is missing, again if
        a DELETE pruned it (emptied) between the two: the rename fails, then only."""
        for attempt in range(_PLACE_TRIES):
            if attempt or not final.parent.is_dir():
                self._make_dirs(final.parent)
            try:
                os.replace(tmp, final)
                return
            except FileNotFoundError:
                if attempt == _PLACE_TRIES - 1 or not tmp.exists():
                    raise

    async def stage(self, chunks: AsyncIterable[Chunk], *, keep: int = 0) -> StagedBlob:
        """Stream ``chunks`` to a temporary file before the UIDs are known (ingest
        parses it), to be ``adopt``-ed under its key or ``discard``-ed. Not durable
        until ``make_durable``. Contents of up to ``keep`` bytes also come back in
        ``data``, so the parser need not read the file again."""
        return await (await self.stage_behind(chunks, keep=keep))

    async def stage_behind(
        self, chunks: AsyncIterable[Chunk], *, keep: int = 0
    ) -> asyncio.Future[StagedBlob]:
        """``stage``, returning as soon as ``chunks`` are read to their end: the
        last block's hashing and writing go on in a thread while the caller reads
        what comes next (a STOW-RS request's next part). The future gives the
        staged file, or the error that left none behind."""
        spool = _Spool(partial(self._open_temporary, self._root / _STAGING))
        try:
            last_block = await spool.read(chunks, keep)
        except BaseException:
            await spool.discard()
            raise
        return asyncio.ensure_future(self._staged(spool, last_block))

    async def _staged(self, spool: _Spool, last_block: Awaitable[Filled]) -> StagedBlob:
        try:
            size, digest, data = await last_block
        except BaseException:
            await spool.discard()
            raise
        return StagedBlob(spool.written_path(), size, digest, data)

    async def make_durable_many(self, staged: Sequence[StagedBlob]) -> list[Exception | None]:
        """fsync staged files' contents, in one thread hand-off (ingest runs it while
        the next ones arrive); each file's own error, if its fsync failed."""
        if not self._fsync:
            return [None] * len(staged)
        paths = [s.path for s in staged]
        return await asyncio.to_thread(outcomes, fsync_path, paths, OSError)

    async def adopt(
        self, staged: StagedBlob, study_uid: str, series_uid: str, sop_uid: str
    ) -> BlobRef:
        """Make a staged file durable and move it under its key atomically."""
        (error,) = await self.make_durable_many([staged])
        if error is not None:
            raise error
        (ref,) = await self.adopt_many([(staged, study_uid, series_uid, sop_uid)])
        return ref

    async def adopt_many(self, items: Sequence[StagedItem]) -> list[BlobRef]:
        """Move staged files already made durable under their keys: a rename each,
        then one fsync per directory touched, all in one thread hand-off."""
        return await asyncio.to_thread(self._adopt_all, items)

    def _adopt_all(self, items: Sequence[StagedItem]) -> list[BlobRef]:
        refs: list[BlobRef] = []
        directories: dict[Path, None] = {}
        for staged, study_uid, series_uid, sop_uid in items:
            key = f"{blob_stem(study_uid, series_uid, sop_uid)}.{staged.sha256[:16]}.dcm"
            final = self._root / key
            self._place(staged.path, final)
            directories[final.parent] = None
            refs.append(BlobRef(key=key, size=staged.size, sha256=staged.sha256))
        if self._fsync:
            for directory in directories:
                fsync_path(directory)
        return refs

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
        want = chunk_size if length is None else min(chunk_size, length)
        opening = asyncio.ensure_future(asyncio.to_thread(_open_and_read, path, offset, want))
        try:  # the client gone meanwhile: the thread opens the file anyway, so close it
            fh, chunk = await run_to_end(opening, _close_opened)
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc
        try:
            remaining = length
            while chunk:
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
                # a short read of a regular file is its end: no hand-off to learn that
                if len(chunk) < want or remaining == 0:
                    break
                want = chunk_size if remaining is None else min(chunk_size, remaining)
                chunk = await asyncio.to_thread(fh.read, want)
        finally:
            fh.close()  # opened read-only: closing does not wait for the disk

    def gather(
        self, pieces: Iterable[Piece], *, block_size: int = GATHER_BLOCK
    ) -> AsyncIterator[bytes | memoryview]:
        """Yield ``pieces`` in order, coalesced into blocks of about ``block_size``:
        ``blob_gather.gather`` over this store's keys."""
        return blob_gather.gather(self.path_for, pieces, block_size=block_size)

    async def delete(self, key: str) -> bool:
        """Remove a blob; True if it existed. Its series' and study's directories go
        too once empty, so an archive that deletes does not fill up with them."""
        return await asyncio.to_thread(self._delete, self.path_for(key))

    def _delete(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        if self._fsync:
            fsync_path(path.parent)
        # not fsynced: an empty directory back after a crash is only an empty directory
        for directory in (path.parent, path.parent.parent):  # series, then study
            try:
                directory.rmdir()
            except OSError:  # not empty (the usual case), or already gone
                break
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
        modified before ``older_than``, a POSIX time, if given); return how many.
        Every write starts in the staging directory, so only that one is read: the
        start-up's work is what was in flight, not a walk of the whole archive."""
        return await asyncio.to_thread(self._remove_temporaries, older_than)

    def _remove_temporaries(self, older_than: float | None) -> int:
        staging = self._root / _STAGING
        if not staging.is_dir():
            return 0
        removed = 0
        for path in staging.glob(f"{_TEMP_PREFIX}*"):
            try:
                if older_than is not None and path.stat().st_mtime >= older_than:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
        return removed


Filled = tuple[int, str, bytes | None]  # size, SHA-256 (hex), contents if kept


class _Spool:
    """One file written from received chunks, hashed as it is written. It is
    opened in the first write's thread hand-off rather than one of its own: an
    instance smaller than a block is opened, written and closed in one, and one of
    at most ``WRITE_ON_LOOP_MOST`` bytes without a hand-off."""

    def __init__(self, open_file: Callable[[], tuple[BinaryIO, Path]]) -> None:
        self._open_file = open_file
        self._hasher = hashlib.sha256()
        self._fh: BinaryIO | None = None
        self._path: Path | None = None

    async def fill(self, chunks: AsyncIterable[Chunk], keep: int) -> Filled:
        """Write ``chunks`` in blocks and close the file. Size, SHA-256 (hex), and the
        contents if they never grew past ``keep`` bytes."""
        return await (await self.read(chunks, keep))

    async def read(self, chunks: AsyncIterable[Chunk], keep: int) -> Awaitable[Filled]:
        """Read ``chunks`` to their end, writing each full block on the way; what
        ``fill`` returns comes from the last block's write, still to be awaited
        (its thread runs already). A block is kept as the chunks that came, and
        joined once, in the thread that writes it."""
        pending: list[Chunk] = []
        held = 0
        size, spilled, limit = 0, False, max(keep, WRITE_BLOCK)
        async for chunk in chunks:
            pending.append(chunk)
            held += len(chunk)
            if held >= limit:
                block, pending = pending, []
                await asyncio.to_thread(self._write, block, False)
                size, spilled, limit, held = size + held, True, WRITE_BLOCK, 0
        data = b"".join(pending) if not spilled and held <= keep else None
        block = pending if data is None else [data]
        last: asyncio.Future[None]
        if spilled or held > WRITE_ON_LOOP_MOST:
            last = asyncio.ensure_future(asyncio.to_thread(self._write, block, True))
        else:
            last = asyncio.get_running_loop().create_future()
            try:
                self._write(block, True)
            except Exception as exc:  # this file's own failure, as the thread would report it
                last.set_exception(exc)
            else:
                last.set_result(None)
        return self._filled(last, size + held, data)

    async def _filled(self, last: Awaitable[None], size: int, data: bytes | None) -> Filled:
        await last
        return size, self._hasher.hexdigest(), data

    def _write(self, block: list[Chunk], last: bool) -> None:
        if self._fh is None:
            self._fh, self._path = self._open_file()
        # One buffer: hashing and writing each let go of the GIL once, not once per
        # chunk; each time, the thread waits for the event loop to give it back.
        data = block[0] if len(block) == 1 else b"".join(block)
        self._hasher.update(data)
        self._fh.write(data)
        if last:
            self._fh.close()

    def written_path(self) -> Path:
        assert self._path is not None  # fill() returned: the file exists
        return self._path

    async def discard(self) -> None:
        """Close and remove the file, if it was opened. (One opened by a write still
        in its thread after a cancellation is swept at the next start-up.)"""
        if self._fh is not None and self._path is not None:
            await asyncio.to_thread(_close_and_unlink, self._fh, self._path)


def _close_and_unlink(fh: BinaryIO, path: Path) -> None:
    fh.close()
    path.unlink(missing_ok=True)


def _close_opened(opening: asyncio.Future[tuple[BinaryIO, bytes]]) -> None:
    if succeeded(opening):
        opening.result()[0].close()


def _open_and_read(path: Path, offset: int, want: int) -> tuple[BinaryIO, bytes]:
    fh = path.open("rb")
    try:
        if offset:
            fh.seek(offset)
        return fh, fh.read(want)
    except BaseException:
        fh.close()
        raise


def fsync_path(path: Path) -> None:
    """fsync a file's contents or a directory's entries (Linux opens both read-only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
