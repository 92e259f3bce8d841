"""Where an instance's bulk data values lie in its stored file, so that WADO-RS sends
each from the file as it goes out instead of reading it into memory first.

A BulkDataURI names one value (PS3.18 §10.4.1.1.5); an instance, series or study's
bulk data is every such value (``wado_bulk``). Such a value can be large: a waveform,
MR spectroscopy data, an encapsulated document, overlay planes. ``locate`` finds each
value asked for by its element headers (``value_place``, sequence items included),
reads it when it is small (``READ_LATER`` bytes at most), and else says where it
lies; ``chunks`` then yields its bytes, a bounded block at a time. A value stored
big endian is sent little endian (PS3.18 §8.7.3.3.1), swapped block by block: blocks
start at multiples of the block size from the value's start, so no number straddles
two. A deflated data set has no value at an offset of the file: it is inflated whole
and its values are held.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from dicomweb.blobstore import FileBlobStore
from dicomweb.pixel_codec import NUMBER_WIDTHS, swap_bytes
from dicomweb.transfer_syntax import DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN
from dicomweb.value_place import TagPath, places

READ_LATER = 64 * 1024  # a value above this many bytes stays on disk until sent
BLOCK = 1024 * 1024  # a multiple of every number's width (8 at most)


@dataclass(frozen=True, slots=True)
class StoredValue:
    """One value of a stored file: where it lies, or (small, or deflated) its bytes."""

    offset: int
    length: int
    held: bytes | None
    swap_width: int  # > 1: stored big endian, numbers of this many bytes

    async def chunks(self, blobs: FileBlobStore, key: str) -> AsyncIterator[bytes]:
        """The value's bytes, little endian, a block at a time."""
        if self.held is not None:
            yield self.held
            return
        async for block in blobs.open(
            key, offset=self.offset, length=self.length, chunk_size=BLOCK
        ):
            yield swap_bytes(block, self.swap_width)


def locate(
    file: Path, wanted: Sequence[tuple[TagPath, str]], transfer_syntax: str
) -> dict[TagPath, StoredValue]:
    """Where each of ``wanted`` (tag path, VR) lies in ``file``; one that is not there
    as a value of defined length (a metadata document may name what the file does not
    hold so) is left out."""
    big_endian = transfer_syntax == EXPLICIT_VR_BIG_ENDIAN
    widths = {path: NUMBER_WIDTHS.get(vr, 1) if big_endian else 1 for path, vr in wanted}
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return _inflated(file, list(widths))
    found: dict[TagPath, StoredValue] = {}
    with file.open("rb") as fp:
        for path, (offset, length) in places(fp, list(widths), transfer_syntax).items():
            width = widths[path]
            if length > READ_LATER:
                found[path] = StoredValue(offset, length, None, width)
                continue
            fp.seek(offset)
            held = swap_bytes(fp.read(length), width)
            found[path] = StoredValue(0, len(held), held, 1)
    return found


def _inflated(file: Path, paths: Sequence[TagPath]) -> dict[TagPath, StoredValue]:
    """The values of a deflated data set, inflated whole by pydicom and held."""
    ds = dcmread(file)
    found: dict[TagPath, StoredValue] = {}
    for path in paths:
        try:
            value = _raw(ds, path)
        except (KeyError, IndexError, TypeError):
            continue
        found[path] = StoredValue(0, len(value), value, 1)
    return found


def _raw(ds: Dataset, path: TagPath) -> bytes:
    for i in range(0, len(path) - 1, 2):
        ds = ds[path[i]].value[path[i + 1]]
    raw: DataElement | RawDataElement = ds.get_item(path[-1])
    value = raw.value if isinstance(raw, RawDataElement) else None
    if not isinstance(value, bytes):
        raise KeyError(f"{path[-1]:08X} holds no raw value")
    return value
