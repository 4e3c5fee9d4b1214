"""Decoding and the 8-bit gray rule: every mode an archive may hold, every way a file can be broken."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr.data.decode import DecodeLimits, ImageRejected, decode, decode_bytes, resize_square, to_gray8
from cxr.data.quarantine import Reason
from tests.conftest import NIH


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def bomb_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming a huge image, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
    )


def test_8_bit_gray_is_taken_as_is():
    pixels = np.random.default_rng(0).integers(0, 256, (80, 96), dtype=np.uint8)
    assert np.array_equal(decode(png(pixels)), pixels)


def test_16_bit_gray_is_scaled_by_its_effective_bit_depth():
    twelve_bit = np.array([[0, 4095], [2048, 1]], dtype=np.uint16).repeat(40, 0).repeat(40, 1)
    out = decode(png(twelve_bit))
    assert out.dtype == np.uint8 and out[0, 0] == 0 and out[0, -1] == 255 and out[-1, 0] == 128
    full = np.array([[0, 65535]], dtype=np.uint16).repeat(80, 0).repeat(40, 1)
    assert decode(png(full))[0, -1] == 255
    dark = np.full((80, 80), 100, dtype=np.uint16)  # fits in 8 bits: kept as is
    assert decode(png(dark))[0, 0] == 100


def test_rgb_and_rgba_become_luma_and_the_real_nih_rgba_files_keep_their_gray_values():
    rgb = np.zeros((70, 70, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    assert decode(png(rgb))[0, 0] == round(0.299 * 200)
    real = (NIH / "images" / "00000100_000.png").read_bytes()
    rgba = np.asarray(Image.open(io.BytesIO(real)))
    assert rgba.shape[2] == 4 and (rgba[..., 3] == 255).all()
    assert np.array_equal(decode(real), rgba[..., 0])


def test_palette_images_are_converted_through_their_palette():
    pal = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (70, 2))[:, :70]).convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    assert decode(buf.getvalue()).shape == (70, 70)


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (b"", Reason.UNREADABLE_IMAGE, "empty file"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 100, Reason.UNREADABLE_IMAGE, "JPEG"),
        (b"this is not an image\n", Reason.UNREADABLE_IMAGE, "text"),
        (png(np.zeros((100, 100), np.uint8))[:60], Reason.UNREADABLE_IMAGE, ""),
        (png(np.zeros((20, 300), np.uint8)), Reason.BAD_DIMENSIONS, "20 px"),
        (bomb_header(100_000, 100_000), Reason.TOO_LARGE, ""),
    ],
    ids=["empty", "jpeg", "text", "truncated", "tiny", "bomb"],
)
def test_broken_files_are_rejected_with_a_reason(data, reason, detail, reliability_record, request):
    with pytest.raises(ImageRejected) as err:
        decode(data)
    assert err.value.reason == reason and detail in err.value.detail
    reliability_record.record(
        "ingest",
        f"a broken image file ({request.node.callspec.id})",
        f"rejected: {reason}; quarantined by ingest with that reason",
    )


def test_truncated_pixel_data_is_unreadable(reliability_record):
    noisy = np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)
    data = png(noisy)
    with pytest.raises(ImageRejected) as err:
        decode(data[: len(data) * 2 // 3])
    assert err.value.reason == Reason.UNREADABLE_IMAGE
    reliability_record.record("ingest", "a PNG whose pixel data is cut off", "rejected: unreadable_image")


def test_corrupt_chunk_crc_is_unreadable(reliability_record):
    data = bytearray(png(np.zeros((100, 100), np.uint8)))
    data[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    with pytest.raises(ImageRejected) as err:
        decode(bytes(data))
    assert err.value.reason == Reason.UNREADABLE_IMAGE
    reliability_record.record("ingest", "a PNG with a corrupt chunk CRC", "rejected: unreadable_image")


def test_limits_are_settings():
    data = png(np.zeros((100, 100), np.uint8))
    with pytest.raises(ImageRejected, match="too_large"):
        decode(data, DecodeLimits(max_bytes=10))
    with pytest.raises(ImageRejected, match="too_large"):
        decode(data, DecodeLimits(max_pixels=99 * 100))
    assert decode(data, DecodeLimits(min_side=100)).shape == (100, 100)


def test_resize_gives_the_side_asked_for_and_keeps_a_flat_image_flat():
    flat = np.full((1024, 1000), 77, np.uint8)
    out = resize_square(flat, 224)
    assert out.shape == (224, 224) and out.dtype == np.uint8 and (out == 77).all()


def with_chunk_after_pixels(data: bytes, kind: bytes, payload: bytes) -> bytes:
    """The PNG with one more chunk between its pixel data and IEND (Pillow reads those in ``load()``)."""
    end = data.index(b"IEND") - 4
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return data[:end] + chunk + data[end:]


def test_an_unexpected_decoder_exception_is_a_decode_error_that_names_its_type():
    # An empty ICC profile chunk after the pixels: Pillow 13 raises IndexError, none of its usual errors.
    data = with_chunk_after_pixels(png(np.zeros((100, 100), np.uint8)), b"iCCP", b"")
    with pytest.raises(ImageRejected) as err:
        decode(data)
    assert err.value.reason == Reason.DECODE_ERROR and err.value.detail.startswith("IndexError"), err.value


def test_an_image_over_the_memory_budget_is_refused_before_its_pixels_are_decoded():
    sixteen = png(np.zeros((512, 512), np.uint16))
    need = decode_bytes("I;16", 512, 512)
    with pytest.raises(ImageRejected) as err:
        decode(sixteen, DecodeLimits(max_image_bytes=need - 1))
    assert err.value.reason == Reason.OVER_MEMORY_BUDGET and "512 x 512 px in mode I;16" in err.value.detail
    assert decode(sixteen, DecodeLimits(max_image_bytes=need)).shape == (512, 512)
    # the default budget takes a 16-bit 8192 x 8192 image and refuses an RGBA one
    assert decode_bytes("I;16", 8192, 8192) <= DecodeLimits().max_image_bytes < decode_bytes("RGBA", 8192, 8192)


def test_the_16_bit_conversion_holds_one_strip_beside_its_result():
    side = 2048
    values = np.random.default_rng(0).integers(0, 4096, (side, side), dtype=np.uint16)
    image = Image.fromarray(values)
    tracemalloc.start()
    try:
        gray = np.asarray(to_gray8(image))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = (values.astype(np.int64) * 510 + 4095) // (2 * 4095)  # the 12-bit rule over the whole image
    assert np.array_equal(gray, expected)
    # the result (4 MiB, and its copy as an array) and one strip; converting at once took 68 MiB here
    assert peak < 16 * 2**20, peak / 2**20
