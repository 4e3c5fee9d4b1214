"""The fast PNG decoder (libpng through imagecodecs) against Pillow, the reference: the same pixels, the same verdicts.

Every case decodes twice, by default (the fast path where it applies) and with ``decoder="pillow"``, and
the two must agree: the same gray pixels, or the same quarantine reason and detail. ``route`` says which
way the default went, checked on the fast path's own parts (:mod:`cxr.data.png_fast`): ``fast`` (libpng's
pixels were used), ``fallback`` (a layout it takes, but libpng refused the file, so Pillow decided) or
``pillow`` (a layout it leaves to Pillow).
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cxr.data import png_fast
from cxr.data.decode import DecodeLimits, ImageRejected, decode, decode_bytes, decode_image, resize_square
from cxr.data.quarantine import Reason
from tests.conftest import NIH
from tests.test_decode import bomb_header, png, with_chunk_after_pixels

REAL = sorted([*(NIH / "images").glob("*.png"), *(NIH / "more_images").glob("*.png")], key=lambda p: p.name)
RNG = np.random.default_rng(7)
GRAY = RNG.integers(0, 256, (80, 96), dtype=np.uint8)


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(
    width: int,
    height: int,
    stream: bytes,
    *,
    depth: int = 8,
    colour: int = 0,
    interlace: int = 0,
    before: bytes = b"",
    idat_size: int | None = None,
    after: bytes = b"",
) -> bytes:
    """A PNG from an already compressed pixel stream, cut into IDAT chunks of ``idat_size`` bytes."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))
    size = idat_size or max(1, len(stream))
    idats = b"".join(chunk(b"IDAT", stream[i : i + size]) for i in range(0, len(stream), size))
    return b"\x89PNG\r\n\x1a\n" + ihdr + before + idats + after + chunk(b"IEND", b"")


def scanlines(rows: np.ndarray) -> bytes:
    """Rows of bytes (uint8, one row per line), each with filter type 0."""
    return b"".join(b"\x00" + row.tobytes() for row in rows)


GRAY_ROWS = scanlines(GRAY)
GRAY_STREAM = zlib.compress(GRAY_ROWS)


def gray_png(stream: bytes = GRAY_STREAM, **kw) -> bytes:
    return raw_png(96, 80, stream, **kw)


def adam7(pixels: np.ndarray) -> bytes:
    """The scanlines of an 8-bit gray image in Adam7 interlaced order, uncompressed."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    return b"".join(scanlines(pixels[y0::dy, x0::dx]) for x0, y0, dx, dy in passes if pixels[y0::dy, x0::dx].size)


def saved(image: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **params)
    return buf.getvalue()


def with_chunk_before_pixels(data: bytes, kind: bytes, payload: bytes) -> bytes:
    """The PNG with one more chunk right after IHDR."""
    return data[:33] + chunk(kind, payload) + data[33:]


def outcome(data: bytes, limits: DecodeLimits, decoder: str) -> tuple:
    try:
        image = decode_image(data, limits, decoder=decoder)
    except ImageRejected as err:
        # Pillow names the file object it could not identify, by its address: the same text otherwise
        return ("rejected", err.reason, re.sub(r" at 0x[0-9a-f]+", " at 0x...", err.detail))
    return ("accepted", image.mode, image.size, np.asarray(image).tobytes())


def route(data: bytes) -> str:
    layout = png_fast.fast_layout(data)
    if layout is None:
        return "pillow"
    return "fast" if png_fast.fast_pixels(data, layout) is not None else "fallback"


def twelve_bit() -> np.ndarray:
    return RNG.integers(0, 4096, (80, 96), dtype=np.uint16)


def flipped_idat_byte(data: bytes) -> bytes:
    changed = bytearray(data)
    changed[data.index(b"IDAT") + 20] ^= 0xFF  # pixel data changed, its CRC not: a CRC error
    return bytes(changed)


def bad_text_crc(data: bytes) -> bytes:
    changed = bytearray(with_chunk_before_pixels(data, b"tEXt", b"Comment\x00hello"))
    changed[33 + 8 + 3] ^= 0x01  # inside the ancillary chunk's payload: its CRC no longer matches
    return bytes(changed)


def four_bit() -> bytes:
    values = RNG.integers(0, 16, (80, 96), dtype=np.uint8)
    return raw_png(96, 80, zlib.compress(scanlines((values[:, 0::2] << 4) | values[:, 1::2])), depth=4)


def rgb16() -> bytes:
    values = RNG.integers(0, 65536, (80, 96, 3), dtype=np.uint16).astype(">u2")
    return raw_png(96, 80, zlib.compress(scanlines(values.reshape(80, -1).view(np.uint8))), depth=16, colour=2)


def bad_filter() -> bytes:
    rows = bytearray(GRAY_ROWS)
    rows[97 * 10] = 7  # row 10's filter type: there are five (0 to 4)
    return gray_png(zlib.compress(bytes(rows)))


def flipped_deflate() -> bytes:
    stream = bytearray(GRAY_STREAM)
    stream[len(stream) // 2] ^= 0x10
    return gray_png(bytes(stream))  # chunk CRCs computed over the changed stream: only zlib can tell


def apng() -> bytes:
    frames = [Image.fromarray(GRAY), Image.fromarray(255 - GRAY)]
    return saved(frames[0], save_all=True, append_images=frames[1:])


DEFAULT = DecodeLimits()
CASES = [
    # (id, data, limits, route, accepted)
    ("gray8", png(GRAY), DEFAULT, "fast", True),
    (
        "gray8 in 100-byte IDATs, the first empty",
        gray_png(idat_size=100, before=chunk(b"IDAT", b"")),
        DEFAULT,
        "fast",
        True,
    ),
    ("gray16 full range", png(RNG.integers(0, 65536, (80, 96), dtype=np.uint16)), DEFAULT, "fast", True),
    ("gray16 holding 12 bits", png(twelve_bit()), DEFAULT, "fast", True),
    (
        "gray16 holding 12 bits, sBIT 12",
        with_chunk_before_pixels(png(twelve_bit()), b"sBIT", b"\x0c"),
        DEFAULT,
        "fast",
        True,
    ),
    ("gray16 holding 8 bits", png(RNG.integers(0, 256, (80, 96), dtype=np.uint16)), DEFAULT, "fast", True),
    ("rgb", png(RNG.integers(0, 256, (80, 96, 3), dtype=np.uint8)), DEFAULT, "fast", True),
    ("rgba, random alpha", png(RNG.integers(0, 256, (80, 96, 4), dtype=np.uint8)), DEFAULT, "fast", True),
    (
        "rgba, gray copies and opaque (as NIH's)",
        png(np.dstack([GRAY, GRAY, GRAY, np.full_like(GRAY, 255)])),
        DEFAULT,
        "fast",
        True,
    ),
    (
        "rgb with tRNS",
        saved(Image.fromarray(RNG.integers(0, 256, (80, 96, 3), dtype=np.uint8)), transparency=(1, 2, 3)),
        DEFAULT,
        "pillow",
        True,
    ),
    ("gray8 with tRNS", saved(Image.fromarray(GRAY), transparency=5), DEFAULT, "pillow", True),
    ("palette", saved(Image.fromarray(GRAY).convert("P")), DEFAULT, "pillow", True),
    ("palette with tRNS", saved(Image.fromarray(GRAY).convert("P"), transparency=3), DEFAULT, "pillow", True),
    ("gray + alpha (LA)", saved(Image.fromarray(GRAY).convert("LA")), DEFAULT, "pillow", True),
    ("1-bit", png(GRAY > 128), DEFAULT, "pillow", True),
    ("4-bit gray", four_bit(), DEFAULT, "pillow", True),
    ("16-bit rgb", rgb16(), DEFAULT, "pillow", True),
    ("interlaced (Adam7)", gray_png(zlib.compress(adam7(GRAY)), interlace=1), DEFAULT, "pillow", True),
    ("animated (APNG)", apng(), DEFAULT, "pillow", True),
    ("tEXt after the pixels", gray_png(after=chunk(b"tEXt", b"Comment\x00x")), DEFAULT, "pillow", True),
    ("empty iCCP after the pixels", with_chunk_after_pixels(png(GRAY), b"iCCP", b""), DEFAULT, "pillow", False),
    ("extra IDAT after the stream", gray_png(after=chunk(b"IDAT", b"xx")), DEFAULT, "fast", True),
    ("bytes after the stream's end", gray_png(GRAY_STREAM + b"garbage"), DEFAULT, "fast", True),
    ("bytes after IEND", png(GRAY) + b"trailing", DEFAULT, "fast", True),
    ("stream without its Adler-32", gray_png(GRAY_STREAM[:-4]), DEFAULT, "fallback", True),
    ("stream with a wrong Adler-32", gray_png(GRAY_STREAM[:-4] + b"\x00\x00\x00\x00"), DEFAULT, "fallback", False),
    (
        "stream ending after half the rows",
        gray_png(zlib.compress(GRAY_ROWS[: len(GRAY_ROWS) // 2])),
        DEFAULT,
        "fallback",
        True,
    ),
    ("stream cut in half", gray_png(GRAY_STREAM[: len(GRAY_STREAM) // 2]), DEFAULT, "fallback", False),
    ("bad row filter type", bad_filter(), DEFAULT, "fallback", False),
    ("flipped bit in the deflate data", flipped_deflate(), DEFAULT, "fallback", False),
    ("no pixel data", raw_png(96, 80, b""), DEFAULT, "pillow", False),
    ("truncated file", png(GRAY)[: len(png(GRAY)) * 2 // 3], DEFAULT, None, False),
    ("flipped byte in IDAT (CRC error)", flipped_idat_byte(png(GRAY)), DEFAULT, None, False),
    ("corrupt ancillary chunk CRC", bad_text_crc(png(GRAY)), DEFAULT, None, False),
    ("corrupt IHDR CRC", bytes(b ^ 0xFF if i == 20 else b for i, b in enumerate(png(GRAY))), DEFAULT, None, False),
    ("not a PNG (JPEG)", b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 100, DEFAULT, None, False),
    ("not a PNG (text)", b"this is not an image\n", DEFAULT, None, False),
    ("empty bytes", b"", DEFAULT, None, False),
    ("tiny, below min_side", png(GRAY[:20]), DEFAULT, None, False),
    ("tiny and truncated", png(GRAY[:20])[:-30], DEFAULT, None, False),
    ("huge claimed size", bomb_header(100_000, 100_000), DEFAULT, None, False),
    ("over max_bytes", png(GRAY), DecodeLimits(max_bytes=100), None, False),
    ("over the memory budget", png(twelve_bit()), DecodeLimits(max_image_bytes=1000), None, False),
]


@pytest.mark.parametrize(
    ("data", "limits", "expected_route", "accepted"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_both_decoders_give_the_same_pixels_or_the_same_reason(data, limits, expected_route, accepted):
    fast, reference = outcome(data, limits, "fast"), outcome(data, limits, "pillow")
    assert fast[:3] == reference[:3]  # accepted, mode L and size; or rejected, reason and detail
    assert fast == reference  # and the same pixels
    assert (fast[0] == "accepted") == accepted, fast[:3]
    if expected_route is not None:
        assert route(data) == expected_route


def test_the_cases_prove_what_they_claim():
    # The interlaced and 4-bit files are what they say: Pillow reads back the pixels they were made from.
    interlaced = next(c[1] for c in CASES if c[0].startswith("interlaced"))
    assert interlaced[28] == 1 and np.array_equal(decode(interlaced, decoder="pillow"), GRAY)
    # A stream that ends after half the rows is accepted by Pillow (its image is cut short), as before.
    half = next(c[1] for c in CASES if c[0].startswith("stream ending after half"))
    assert not np.array_equal(decode(half, decoder="pillow"), GRAY)
    # The empty iCCP after the pixels is a decode_error from Pillow, and libpng would have accepted it:
    # why the fast path takes only files whose pixel data is followed by IEND.
    iccp = next(c[1] for c in CASES if c[0].startswith("empty iCCP"))
    with pytest.raises(ImageRejected) as err:
        decode(iccp)
    assert err.value.reason == Reason.DECODE_ERROR
    assert png_fast.png_decode(iccp).shape == (80, 96)


@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_every_real_nih_image_decodes_to_pillows_pixels_through_the_fast_path(path):
    data = path.read_bytes()
    assert route(data) == "fast"
    fast, reference = decode_image(data), decode_image(data, decoder="pillow")
    assert fast.mode == reference.mode == "L" and fast.size == reference.size == (1024, 1024)
    assert np.array_equal(np.asarray(fast), np.asarray(reference))
    for side in (256, 224):
        assert np.array_equal(resize_square(fast, side), resize_square(reference, side))


def test_the_fixtures_hold_all_28_sample_images_three_of_them_rgba():
    assert len(REAL) == len({p.name for p in REAL}) == 28
    assert sum(Image.open(p).mode == "RGBA" for p in REAL) == 3


class Spy:
    """Calls the real function and counts the calls."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def test_the_fast_path_is_the_default_for_8_bit_gray(monkeypatch):
    decoded, opened = Spy(png_fast.png_decode), Spy(Image.open)
    monkeypatch.setattr(png_fast, "png_decode", decoded)
    monkeypatch.setattr(Image, "open", opened)
    data = (NIH / "images" / "00019367_000.png").read_bytes()
    gray = decode(data)
    # libpng decoded it, and Pillow opened it once: to check it (verify), never a second time to decode it
    assert (decoded.calls, opened.calls) == (1, 1)
    decode(data, decoder="pillow")
    assert (decoded.calls, opened.calls) == (1, 3)
    assert np.array_equal(gray, decode(data, decoder="pillow"))


def test_without_imagecodecs_pillow_decodes_everything(monkeypatch):
    data = (NIH / "images" / "00000100_000.png").read_bytes()  # RGBA
    expected = decode(data, decoder="pillow")
    monkeypatch.setattr(png_fast, "png_decode", None)
    assert route(data) == "fallback"
    assert np.array_equal(decode(data), expected)


def raising(real, data):
    raise MemoryError


def narrower(real, data):
    return real(data)[:, :-1]  # a shape other than the header's


def wider_type(real, data):
    return real(data).astype(np.uint32)  # a dtype other than the mode's


def big_endian(real, data):
    return real(data).byteswap().view(">u2")  # the same values, another byte order


def column_major(real, data):
    return np.asfortranarray(real(data))  # not C-contiguous


@pytest.mark.parametrize("broken", [raising, narrower, wider_type, big_endian, column_major])
def test_a_fast_decoder_that_fails_or_returns_something_else_leaves_it_to_pillow(monkeypatch, broken):
    data = png(RNG.integers(0, 65536, (80, 96), dtype=np.uint16))
    expected = decode(data, decoder="pillow")
    real = png_fast.png_decode
    monkeypatch.setattr(png_fast, "png_decode", lambda d: broken(real, d))
    assert route(data) == "fallback"
    assert np.array_equal(decode(data), expected)


def test_rgb_within_pillows_memory_budget_but_not_the_fast_paths_is_left_to_pillow(monkeypatch):
    # libpng's 3-byte array beside Pillow's 4-byte copy: 2 bytes a pixel more than the budget counts
    data = png(RNG.integers(0, 256, (80, 96, 3), dtype=np.uint8))
    decoded = Spy(png_fast.png_decode)
    monkeypatch.setattr(png_fast, "png_decode", decoded)
    edge = DecodeLimits(max_image_bytes=decode_bytes("RGB", 96, 80))
    assert np.array_equal(decode(data, edge), decode(data, decoder="pillow"))
    assert decoded.calls == 0
    assert np.array_equal(decode(data, DecodeLimits(max_image_bytes=edge.max_image_bytes + 2 * 96 * 80)), decode(data))
    assert decoded.calls == 2


def test_an_unknown_decoder_name_is_an_error():
    with pytest.raises(ValueError, match="decoder"):
        decode(png(GRAY), decoder="libpng")


def test_warm_up_runs_the_fast_path(monkeypatch):
    from cxr.data.parts import warm_up

    decoded = Spy(png_fast.png_decode)
    monkeypatch.setattr(png_fast, "png_decode", decoded)
    warm_up()
    assert decoded.calls == 2  # the gray and the RGBA image
