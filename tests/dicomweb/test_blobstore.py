"""FileBlobStore: atomic, content-checked, path-safe, streaming in bounded memory."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import tempfile
import threading
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from dicomweb.blob_errors import BlobError, BlobNotFound, InvalidBlobKey
from dicomweb.blob_gather import Piece
from dicomweb.blobstore import WRITE_ON_LOOP_MOST, BlobRef, FileBlobStore, blob_stem

Sample = Callable[[str], Path]
STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


async def achunks(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def read_all(store: FileBlobStore, key: str, **kwargs: int) -> bytes:
    return b"".join([chunk async for chunk in store.open(key, **kwargs)])


async def test_write_streams_and_records_size_and_sha256(tmp_path: Path, sample: Sample) -> None:
    data = sample("CT_small.dcm").read_bytes()
    store = FileBlobStore(tmp_path)
    ref = await store.write(STUDY, SERIES, SOP, achunks(split(data, 1000)))
    assert ref == BlobRef(ref.key, len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / ref.key).read_bytes() == data
    assert await read_all(store, ref.key, chunk_size=777) == data


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, None, b"0123456789"),
        (3, None, b"3456789"),
        (3, 4, b"3456"),
        (9, 5, b"9"),
        (20, None, b""),
    ],
)
async def test_open_reads_a_byte_range(
    tmp_path: Path, offset: int, length: int | None, expected: bytes
) -> None:
    store = FileBlobStore(tmp_path)
    ref = await store.write(STUDY, SERIES, SOP, achunks([b"01234", b"56789"]))
    kwargs = {"offset": offset, "chunk_size": 2} | ({} if length is None else {"length": length})
    assert await read_all(store, ref.key, **kwargs) == expected


async def test_same_content_same_key_different_content_new_key(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    first = await store.write(STUDY, SERIES, SOP, achunks([b"version one"]))
    again = await store.write(STUDY, SERIES, SOP, achunks([b"version one"]))
    other = await store.write(STUDY, SERIES, SOP, achunks([b"version two"]))
    assert again == first
    assert other.key != first.key
    assert await read_all(store, first.key) == b"version one"
    assert await read_all(store, other.key) == b"version two"
    assert await store.keys() == sorted([first.key, other.key])


async def test_key_is_hashed_fan_out_of_the_uids(tmp_path: Path) -> None:
    ref = await FileBlobStore(tmp_path).write(STUDY, SERIES, SOP, achunks([b"x"]))
    stem = blob_stem(STUDY, SERIES, SOP)
    study_hash = hashlib.sha1(STUDY.encode()).hexdigest()
    assert stem.startswith(f"{study_hash[:2]}/{study_hash[2:4]}/{study_hash}/")
    assert ref.key == f"{stem}.{ref.sha256[:16]}.dcm"


@pytest.mark.parametrize("uid", ["../../../etc", "/etc/passwd", "a/../../b", "..", "\x00", "C:\\x"])
async def test_hostile_uids_stay_under_the_root(tmp_path: Path, uid: str) -> None:
    root = tmp_path / "blobs"
    ref = await FileBlobStore(root).write(uid, uid, uid, achunks([b"data"]))
    assert (root / ref.key).resolve().is_relative_to(root.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs"]


@pytest.mark.parametrize(
    "key",
    [
        "../outside.dcm",
        "/etc/passwd",
        "",
        "ab/cd/x.dcm",
        "AB/CD/" + "a" * 40 + "/" + "b" * 40 + "/" + "c" * 40 + "." + "d" * 16 + ".dcm",
        "ab/cd/" + "a" * 40 + "/" + "b" * 40 + "/../" + "c" * 37 + "." + "d" * 16 + ".dcm",
        "ab/cd/" + "a" * 40 + "/" + "b" * 40 + "/.tmp-" + "c" * 35 + "." + "d" * 16 + ".dcm",
    ],
)
async def test_foreign_keys_are_refused(tmp_path: Path, key: str) -> None:
    store = FileBlobStore(tmp_path)
    with pytest.raises(InvalidBlobKey):
        await read_all(store, key)
    with pytest.raises(InvalidBlobKey):
        await store.delete(key)


async def test_delete_and_missing_blob(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    ref = await store.write(STUDY, SERIES, SOP, achunks([b"bytes"]))
    assert await store.exists(ref.key)
    assert await store.delete(ref.key) is True
    assert await store.delete(ref.key) is False
    assert not await store.exists(ref.key)
    with pytest.raises(BlobNotFound):
        await read_all(store, ref.key)


async def test_delete_prunes_the_emptied_series_and_study_directories(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    first = await store.write(STUDY, SERIES, SOP, achunks([b"one"]))
    second = await store.write(STUDY, SERIES, "1.2.3.4.6", achunks([b"two"]))
    other = await store.write(STUDY, "1.2.3.7", "1.2.3.7.1", achunks([b"three"]))
    series_dir = store.path_for(first.key).parent
    study_dir = series_dir.parent
    await store.delete(first.key)
    assert series_dir.is_dir()  # the series still holds an instance
    await store.delete(second.key)
    assert not series_dir.exists() and study_dir.is_dir()  # the study still has a series
    await store.delete(other.key)
    assert not study_dir.exists()
    assert study_dir.parent.is_dir()  # the shared fan-out levels stay
    again = await store.write(STUDY, SERIES, SOP, achunks([b"one"]))
    assert await read_all(store, again.key) == b"one"


async def test_a_directory_pruned_before_the_rename_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DELETE may remove the series directory between ingest making it and renaming
    a staged file into it: the rename fails, the directory is made again."""
    store = FileBlobStore(tmp_path)
    keep = await store.write(STUDY, SERIES, SOP, achunks([b"kept"]))
    real_replace = os.replace
    pruned: list[Path] = []

    def replace(src: str, dst: str) -> None:
        target = Path(dst)
        if not pruned and target.parent.name != ".staging":
            shutil.rmtree(target.parent.parent)  # the study, as a DELETE leaves it
            pruned.append(target.parent)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    ref = await store.write(STUDY, SERIES, "1.2.3.4.9", achunks([b"late"]))
    assert pruned and await read_all(store, ref.key) == b"late"
    assert not await store.exists(keep.key)  # (the simulated DELETE took it)


async def failing_body() -> AsyncIterator[bytes]:
    yield b"first half of the instance"
    raise ConnectionResetError("client went away")


async def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    with pytest.raises(ConnectionResetError):
        await store.write(STUDY, SERIES, SOP, failing_body())
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert await store.keys() == []


async def test_failed_rename_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space"):
        await FileBlobStore(tmp_path).write(STUDY, SERIES, SOP, achunks([b"data"]))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_write_fsyncs_file_then_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store = FileBlobStore(tmp_path)
    await store.write(STUDY, SERIES, SOP, achunks([b"data"]))
    first_events = list(events)
    events.clear()
    await store.write(STUDY, SERIES, "9.9", achunks([b"data"]))
    # the staging directory made durable in its parent; the file; the key's four new
    # directories, each in its parent; the rename, in the key's directory
    assert first_events == ["fsync-dir", "fsync-file", *["fsync-dir"] * 4, "rename", "fsync-dir"]
    assert events == ["fsync-file", "rename", "fsync-dir"]


async def test_staging_returns_once_read_while_its_last_write_goes_on(tmp_path: Path) -> None:
    """A STOW-RS request's next part is read while the last one is still written."""
    opened = threading.Event()
    release = threading.Event()

    class SlowDisk(FileBlobStore):
        def _open_temporary(self, directory: Path) -> tuple[BinaryIO, Path]:
            opened.set()
            release.wait(10)
            return super()._open_temporary(directory)

    data = os.urandom(300_000)
    store = SlowDisk(tmp_path)
    staging = await store.stage_behind(achunks(split(data, 65536)))
    await asyncio.to_thread(opened.wait, 10)
    assert opened.is_set() and not staging.done()  # read: the write is in its thread
    release.set()
    staged = await staging
    assert (staged.size, staged.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert staged.path.read_bytes() == data


async def test_a_small_file_is_staged_on_the_loop_a_larger_one_in_a_thread(
    tmp_path: Path,
) -> None:
    """Two thread hand-offs cost a small instance more than writing it: measured
    with 64x64 instances through STOW-RS (see ``WRITE_ON_LOOP_MOST``)."""
    threads: list[str] = []

    class Watched(FileBlobStore):
        def _open_temporary(self, directory: Path) -> tuple[BinaryIO, Path]:
            threads.append(threading.current_thread().name)
            return super()._open_temporary(directory)

    store = Watched(tmp_path)
    small, large = os.urandom(WRITE_ON_LOOP_MOST), os.urandom(WRITE_ON_LOOP_MOST + 1)
    for data in (small, large):
        staged = await store.stage(achunks(split(data, 10_000)))
        assert (staged.size, staged.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert staged.path.read_bytes() == data
    loop_thread = threading.current_thread().name
    assert threads[0] == loop_thread and threads[1] != loop_thread


async def test_a_failed_staging_write_leaves_no_file(tmp_path: Path) -> None:
    class FullDisk(FileBlobStore):
        def _open_temporary(self, directory: Path) -> tuple[BinaryIO, Path]:
            handle, path = super()._open_temporary(directory)
            handle.close()
            return open(path, "rb"), path  # noqa: SIM115 - a handle that cannot write

    staging = await FullDisk(tmp_path).stage_behind(achunks([b"x" * 5000]))
    with pytest.raises(OSError):
        await staging
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


async def test_temporaries_are_not_keys_and_can_be_swept(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    ref = await store.write(STUDY, SERIES, SOP, achunks([b"data"]))
    stale = tmp_path / ".staging" / ".tmp-crashed"
    stale.write_bytes(b"half")
    assert await store.keys() == [ref.key]
    assert await store.remove_temporaries() == 1
    assert not stale.exists()
    assert await store.exists(ref.key)


async def test_writes_start_in_staging_so_the_sweep_never_walks_the_archive(
    tmp_path: Path,
) -> None:
    """A start-up sweep over every directory of a large archive took longer the more
    it held; every write's temporary is made in the staging directory instead."""
    store = FileBlobStore(tmp_path)
    seen: list[Path] = []

    class Watched(FileBlobStore):
        def _open_temporary(self, directory: Path) -> tuple[BinaryIO, Path]:
            handle, path = super()._open_temporary(directory)
            seen.append(path)
            return handle, path

    watched = Watched(tmp_path)
    ref = await watched.write(STUDY, SERIES, SOP, achunks([b"written"]))
    staged = await watched.stage(achunks([b"staged"]))
    assert [p.parent for p in seen] == [tmp_path / ".staging"] * 2
    assert seen[1] == staged.path
    # a file of that name among the blobs is not the sweep's: it reads staging alone
    elsewhere = (tmp_path / ref.key).parent / ".tmp-not-ours"
    elsewhere.write_bytes(b"x")
    assert await store.remove_temporaries() == 1  # the staged file, never adopted
    assert elsewhere.exists() and await store.exists(ref.key)


async def test_streaming_write_and_read_use_bounded_memory(tmp_path: Path) -> None:
    chunk, count = b"\xa5" * (1 << 20), 96  # 96 MiB through 1 MiB chunks

    async def body() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk

    store = FileBlobStore(tmp_path, fsync=False)
    tracemalloc.start()
    try:
        ref = await store.write(STUDY, SERIES, SOP, body())
        total = 0
        async for piece in store.open(ref.key, chunk_size=1 << 20):
            total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ref.size == total == count * len(chunk)
    # a few blocks in flight at most (not the body): loose enough for a loaded machine,
    # where hand-offs queue a little longer, and still far below the 96 MiB streamed
    assert peak < 16 * (1 << 20)


async def gathered(store: FileBlobStore, pieces: list[Piece], block_size: int) -> list[bytes]:
    return [bytes(block) async for block in store.gather(pieces, block_size=block_size)]


async def test_gather_sends_literals_blobs_and_computed_pieces_in_order_in_blocks(
    tmp_path: Path,
) -> None:
    store = FileBlobStore(tmp_path, fsync=False)
    contents = [os.urandom(10), os.urandom(300_000), b"", os.urandom(1_100_000)]
    refs = [
        await store.write(STUDY, SERIES, f"{SOP}.{n}", achunks([c])) for n, c in enumerate(contents)
    ]
    pieces: list[Piece] = [b"head-0", refs[0], b"head-1", refs[1], lambda: b"computed"]
    pieces += [refs[2], b"head-3", refs[3], b"end"]
    blocks = await gathered(store, pieces, 256 * 1024)
    expected = b"head-0" + contents[0] + b"head-1" + contents[1] + b"computed"
    expected += contents[2] + b"head-3" + contents[3] + b"end"
    assert b"".join(blocks) == expected
    assert all(0 < len(b) <= 256 * 1024 for b in blocks)
    assert len(blocks) == -(-len(expected) // (256 * 1024))  # coalesced: full blocks


def _tmpfs() -> Path | None:
    """/dev/shm when it is a tmpfs, which refuses RWF_NOWAIT reads (EOPNOTSUPP)."""
    mounts = Path("/proc/mounts").read_text() if Path("/proc/mounts").exists() else ""
    found = any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts.splitlines())
    return Path("/dev/shm") if found else None


async def _gather_everything(root: Path) -> None:
    store = FileBlobStore(root, fsync=False)
    contents = [os.urandom(700_000), os.urandom(5)]
    refs = [
        await store.write(STUDY, SERIES, f"{SOP}.{n}", achunks([c])) for n, c in enumerate(contents)
    ]
    blocks = await gathered(store, [b"head", refs[0], refs[1], b"end"], 256 * 1024)
    assert b"".join(blocks) == b"head" + contents[0] + contents[1] + b"end"


async def test_gather_reads_where_reads_without_waiting_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system without RWF_NOWAIT (tmpfs, some network file systems) answers
    EOPNOTSUPP: the blocks are then read in threads, not the response broken off."""
    real = os.preadv
    refused: list[int] = []

    def preadv(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if flags:
            refused.append(flags)
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    await _gather_everything(tmp_path)
    assert len(refused) == 1  # asked once per retrieval, then straight to the threads


async def test_gather_from_a_tmpfs(tmp_path: Path) -> None:
    shm = _tmpfs()
    if shm is None:
        pytest.skip("no tmpfs at /dev/shm on this machine")
    root = Path(tempfile.mkdtemp(dir=shm, prefix="radhub-test-"))
    try:
        await _gather_everything(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_gather_sends_a_literal_larger_than_a_block_whole(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path, fsync=False)
    ref = await store.write(STUDY, SERIES, SOP, achunks([b"blob"]))
    big = bytes(range(256)) * 8
    assert await gathered(store, [b"ab", big, ref], 1024) == [b"ab", big, b"blob"]


async def test_gather_sends_a_blob_as_recorded_or_fails(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path, fsync=False)
    ref = await store.write(STUDY, SERIES, SOP, achunks([b"0123456789"]))
    # exactly the recorded size: a Content-Length promised from the index holds
    fewer = BlobRef(ref.key, 4, ref.sha256)
    assert b"".join(await gathered(store, [fewer], 3)) == b"0123"
    with pytest.raises(BlobError, match="shorter than its recorded size"):
        await gathered(store, [BlobRef(ref.key, 11, ref.sha256)], 64)
    await store.delete(ref.key)
    with pytest.raises(BlobNotFound):
        await gathered(store, [b"x", ref], 64)
    with pytest.raises(InvalidBlobKey):
        await gathered(store, [BlobRef("../etc/passwd", 1, "")], 64)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
async def test_gather_streams_in_bounded_memory_and_closes_when_stopped(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path, fsync=False)
    blob = b"\xa5" * (1 << 20)
    refs = [await store.write(STUDY, SERIES, f"{SOP}.{n}", achunks([blob])) for n in range(40)]
    head = b"--part\r\n\r\n"
    pieces: list[Piece] = [p for ref in refs for p in (head, ref)]
    tracemalloc.start()
    try:
        total = 0
        async for block in store.gather(pieces, block_size=1 << 20):
            total += len(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 40 * (len(head) + len(blob))
    assert peak < 5 * (1 << 20)  # 40 MiB sent through a few 1 MiB blocks
    before = _open_fds()
    stream = store.gather(pieces, block_size=1 << 19)
    await anext(stream)  # a blob is open, the next block is being read ahead
    await stream.aclose()  # the client went away
    assert _open_fds() == before


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="RWF_NOWAIT reads are Linux's")
async def test_gather_reads_cached_blobs_on_the_loop_and_the_rest_in_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileBlobStore(tmp_path, fsync=False)
    contents = [os.urandom(200_000) for _ in range(6)]
    refs = [
        await store.write(STUDY, SERIES, f"{SOP}.{n}", achunks([c])) for n, c in enumerate(contents)
    ]
    pieces: list[Piece] = [p for ref in refs for p in (b"--part\r\n", ref)]
    loop = asyncio.get_running_loop()
    handoffs: list[object] = []
    real_handoff = loop.run_in_executor

    def counted(executor: Any, fn: Any, *args: Any) -> Any:
        handoffs.append(fn)
        return real_handoff(executor, fn, *args)

    monkeypatch.setattr(loop, "run_in_executor", counted)
    expected = b"".join(b"--part\r\n" + c for c in contents)
    assert b"".join(await gathered(store, pieces, 256 * 1024)) == expected
    assert handoffs == []  # all in the page cache: no thread hand-off

    # the kernel's answer for pages not in memory, from the fourth blob's read on
    real_preadv = os.preadv
    nowait_reads: list[int] = []

    def cold_after_three(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        if flags & os.RWF_NOWAIT:
            nowait_reads.append(fd)
            if len(nowait_reads) > 3:
                raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_preadv(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", cold_after_three)
    assert b"".join(await gathered(store, pieces, 256 * 1024)) == expected
    # the first block was cached; from the second (which needed the disk) on,
    # threads read, one block ahead, up to the end; then one closes the last file
    assert len(nowait_reads) == 4  # no cached-only attempt after the first miss
    blocks = -(-len(expected) // (256 * 1024))
    # (to_thread hands on ``functools.partial(context.run, fn)``)
    names = [getattr(getattr(fn, "args", (fn,))[-1], "__name__", "") for fn in handoffs]
    assert names == ["next_block"] * blocks + ["close"]


async def test_a_read_cancelled_while_the_file_opens_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client went away while the worker thread was opening the blob: the thread
    still opens it, and the file it opened is closed, not left to the collector."""
    import dicomweb.blobstore as blobstore

    store = FileBlobStore(tmp_path)
    ref = await store.write(STUDY, SERIES, SOP, achunks([b"x" * 1000]))
    proceed, opened = threading.Event(), []
    real = blobstore._open_and_read

    def slow_open(path: Path, offset: int, want: int) -> tuple[BinaryIO, bytes]:
        proceed.wait(5)
        fh, chunk = real(path, offset, want)
        opened.append(fh)
        return fh, chunk

    monkeypatch.setattr(blobstore, "_open_and_read", slow_open)
    reading = asyncio.ensure_future(anext(store.open(ref.key)))
    await asyncio.sleep(0.05)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    proceed.set()
    for _ in range(100):
        if opened and opened[0].closed:
            break
        await asyncio.sleep(0.01)
    assert opened and opened[0].closed
