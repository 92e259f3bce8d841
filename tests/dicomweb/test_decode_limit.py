"""The decoded-size limit: what one decoding produces, judged from the header alone."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from pydicom.dataset import Dataset

from dicomweb.codestream_size import CodestreamError
from dicomweb.decode_limit import (
    DEFAULT_MAX_DECODED_BYTES,
    DecodeTooLarge,
    check_codestreams,
    check_decode,
    decoded_bytes,
    frame_count,
)
from fhir_server.settings import Settings

MiB = 2**20

# (rows, columns, samples, bits, frames, decoded bytes): images an archive must serve
WITHIN_THE_DEFAULT = [
    (3500, 4300, 1, 16, 1, 30_100_000),  # CR/DX
    (5000, 4000, 1, 16, 1, 40_000_000),  # mammography
    (10000, 8000, 1, 16, 1, 160_000_000),  # scanned film
    (10000, 8000, 3, 8, 1, 240_000_000),  # scanned film in colour
    (512, 512, 1, 16, 512, 256 * MiB),  # an enhanced CT of 512 frames, whole
    (256, 256, 3, 8, 1, 196_608),  # one tile of a whole-slide image
]


@pytest.mark.parametrize(
    ("rows", "columns", "samples", "bits", "frames", "size"), WITHIN_THE_DEFAULT
)
def test_large_clinical_images_fit_the_default(
    rows: int, columns: int, samples: int, bits: int, frames: int, size: int
) -> None:
    assert decoded_bytes(rows, columns, samples, bits, frames) == size <= DEFAULT_MAX_DECODED_BYTES


def test_what_a_small_rle_file_can_declare_does_not() -> None:
    # the largest Rows and Columns: 8 GiB of 16-bit samples, from an RLE file of ~134 MB
    assert decoded_bytes(65535, 65535, 1, 16, 1) > 30 * DEFAULT_MAX_DECODED_BYTES
    # ... and a whole-slide image's tiles all at once are too many for one decoding
    assert decoded_bytes(256, 256, 3, 8, 5000) > DEFAULT_MAX_DECODED_BYTES


@pytest.mark.parametrize(("bits", "per_sample"), [(1, 1), (8, 1), (12, 2), (16, 2), (32, 4)])
def test_a_sample_takes_whole_bytes(bits: int, per_sample: int) -> None:
    # 1-bit pixels are decoded a byte each; 12 bits are allocated in 16
    assert decoded_bytes(10, 10, 1, bits, 1) == 100 * per_sample


def image(rows: int, columns: int, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = rows, columns, 16, 1
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def test_check_decode_reads_the_dataset_header() -> None:
    ds = image(512, 512, NumberOfFrames=4)
    assert frame_count(ds) == 4 and frame_count(image(1, 1)) == 1
    check_decode(ds, frame_count(ds), 512 * 512 * 2 * 4, "the instance")  # exactly the limit
    with pytest.raises(DecodeTooLarge, match="2,097,152 bytes") as refused:
        check_decode(ds, frame_count(ds), 512 * 512 * 2 * 4 - 1, "the instance")
    assert (refused.value.size, refused.value.limit) == (2_097_152, 2_097_151)
    rgb = image(512, 512, SamplesPerPixel=3, BitsAllocated=8)
    with pytest.raises(DecodeTooLarge):
        check_decode(rgb, 1, 512 * 512 * 3 - 1, "a frame")


def test_the_settings_default_is_the_archive_default() -> None:
    # the kernel cannot import dicomweb: the two literals must agree
    assert Settings().max_decoded_bytes == DEFAULT_MAX_DECODED_BYTES


def black_jpeg(side: int) -> bytes:
    """A black 8-bit greyscale JPEG: ``side``² bytes decoded, a few KB encoded."""
    out = io.BytesIO()
    Image.new("L", (side, side)).save(out, "JPEG")
    return out.getvalue()


def test_check_codestreams_sums_what_the_frames_declare() -> None:
    frame, rle = black_jpeg(1024), b"\x01\x00\x00\x00" + bytes(60)  # 1 MiB; RLE: nothing
    check_codestreams([frame, rle], MiB, "one frame")  # exactly the limit
    with pytest.raises(DecodeTooLarge, match="2,097,152 bytes") as refused:
        check_codestreams(iter([frame, frame]), 3 * MiB // 2, "2 frames")
    assert (refused.value.size, refused.value.limit) == (2 * MiB, 3 * MiB // 2)


def test_check_codestreams_refuses_what_it_cannot_judge() -> None:
    data = bytearray(black_jpeg(16))
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 7] = b"\x00\x00"  # height left to a DNL segment
    with pytest.raises(CodestreamError):  # a ValueError: the roads treat it as undecodable
        check_codestreams([bytes(data)], DEFAULT_MAX_DECODED_BYTES, "a frame")
