"""Decode, validate and convert one source image: PNG bytes in, 8-bit gray pixels out, or a reason why not.

A source's adapter names the encodings it may hold (``DecodeLimits.formats``): PNG for NIH, JPEG too for
the CheXpert family (baseline or progressive 8-bit JPEG, decoded by Pillow, through the same conversion),
DICOM for DICOM sources (:mod:`cxr.data.dicom_decode`, its own rules to 8 bits;
:func:`cxr.data.source_image.decode_source_image` sends DICOM bytes there).

Conversion to 8-bit gray (the rule every image goes through, documented in the README):

- ``L`` (8-bit gray): as is. ``1``, ``P`` (palette), ``LA``: Pillow's conversion to ``L``, alpha dropped.
- ``RGB`` / ``RGBA``: ITU-R 601-2 luma (``L = 0.299 R + 0.587 G + 0.114 B``, Pillow's ``convert("L")``),
  alpha ignored. The RGBA files in NIH's release are gray copies in three channels with an opaque alpha,
  so this gives their gray values exactly.
- 16-bit gray (``I;16`` and friends, also ``I``): scaled by the image's effective bit depth, the
  smallest ``b >= 8`` with ``max <= 2**b - 1``: ``round(v * 255 / (2**b - 1))``. A 12-bit image stored in
  16 bits keeps its full contrast instead of coming out nearly black.

Resizing to a square side (:func:`resize_square`): a box average by an integer factor when the side
divides the image's (1024 -> 256), else Pillow's bilinear filter after an integer box reduction
(``reducing_gap=2.0``); aspect ratio not kept (NIH's PNGs are square; boxes are scaled per axis).

Decoding: Pillow checks every file (signature, size limits, memory budget, every chunk's CRC) and is the
reference decoder. The pixels of the common layouts (8-bit gray, 8-bit RGB/RGBA, 16-bit gray; not
interlaced, no ``tRNS``, nothing between the pixel data and ``IEND``) come from libpng through
``imagecodecs`` instead (:mod:`cxr.data.png_fast`, about 1.3x faster on NIH's PNGs), then go through the
same conversion; they are the pixels Pillow decodes (tests/test_decode_fast.py). Whenever the fast
decoder fails or is missing, Pillow decodes the file and gives the verdict, so what is accepted or
rejected, and with which reason and detail, does not depend on it. ``decoder="pillow"`` forces the
reference path.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from cxr.data import png_fast
from cxr.data.quarantine import Reason

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
PIXEL_PIPELINE_VERSION = 1  # bump when the conversion or resizing rule changes: it is part of the digest
Decoder = Literal["fast", "pillow"]  # "fast": libpng where it gives Pillow's pixels, else Pillow; "pillow": Pillow


@dataclass(frozen=True)
class DecodeLimits:
    """What an acceptable image looks like. Defaults fit real archives (NIH: 1024 px, 0.2 to 1 MB)."""

    max_bytes: int = 64 * 2**20  # a PNG this big is not a chest film
    max_pixels: int = 8192 * 8192  # larger claimed dimensions: refused as a decompression bomb
    min_side: int = 64  # px; smaller is not a usable radiograph
    # Memory one image may take to decode and convert (decode_bytes), checked from the header before any
    # pixel is decoded: a 16-bit 8192 x 8192 image needs 192 MiB, an RGB(A) one 320 MiB (refused).
    max_image_bytes: int = 256 * 2**20
    # The encodings a source may hold (its adapter says which): "png" (NIH), "jpeg" (CheXpert, MIMIC-CXR-JPG),
    # "dicom" (DICOM sources).
    formats: tuple[str, ...] = ("png",)


class ImageRejected(Exception):
    """The image cannot be used; ``reason`` is a quarantine reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _what_is_it(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG data"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF data"
    if data[:4] == b"DICM" or data[128:132] == b"DICM":
        return "DICOM data"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in data[:64]):
        return "text"
    return f"unknown data starting {data[:8]!r}"


_STRIP_PIXELS = 2**18  # 16-bit images are converted this many pixels at a time (2 MiB of int64 each)


def _stored_bytes(mode: str) -> int:
    """Bytes per pixel Pillow holds an image of ``mode`` in (three or four channels take four)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def decode_bytes(mode: str, width: int, height: int) -> int:
    """Peak memory to decode an image and convert it to 8-bit gray by :func:`to_gray8`, about.

    The decoded image, plus the gray copy (and for palettes the RGB step between), plus one strip of the
    16-bit conversion.
    """
    per_pixel = _stored_bytes(mode)
    if mode != "L":
        per_pixel += 1 + (4 if mode in ("P", "PA") else 0)
    strip = _STRIP_PIXELS * 8 if mode.startswith("I") else 0
    return width * height * per_pixel + strip


def _fast_decode_bytes(mode: str, width: int, height: int) -> int:
    """Like :func:`decode_bytes` for the fast path: Pillow maps libpng's array, except RGB (3 bytes a pixel
    beside Pillow's 4-byte copy until the array is dropped)."""
    return decode_bytes(mode, width, height) + (2 * width * height if mode == "RGB" else 0)


def to_gray8(image: Image.Image) -> Image.Image:
    """A loaded image as an 8-bit gray (mode ``L``) image, by the rule in the module docstring."""
    mode = image.mode
    if mode == "L":
        return image
    if mode in ("P", "PA"):
        return image.convert("RGB").convert("L")
    if mode in ("1", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La"):
        return image.convert("L")
    if mode.startswith("I;16") or mode == "I":
        return _scale_to_gray8(image)
    raise ImageRejected(Reason.UNREADABLE_IMAGE, f"unsupported pixel mode {mode}")


def _scale_to_gray8(image: Image.Image) -> Image.Image:
    """16- or 32-bit gray to 8 bits by the effective bit depth, in strips: the only full-size copy is the result.

    Converting the whole array at once took 8 bytes a pixel twice over (1.3 GB for 8192 x 8192).
    """
    low, high = image.getextrema()
    if low < 0:
        raise ImageRejected(Reason.UNREADABLE_IMAGE, f"negative pixel values in mode {image.mode}")
    bits = max(8, int(high).bit_length())
    full = 2**bits - 1
    width, height = image.size
    out = np.empty((height, width), np.uint8)
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        values = np.asarray(image.crop((0, top, width, bottom))).astype(np.int64)
        values *= 255 * 2  # (v * 255 * 2 + full) // (2 * full): round half up, integers only, in place
        values += full
        values //= 2 * full
        out[top:bottom] = values
    return Image.fromarray(out)


def decode(data: bytes, limits: DecodeLimits = DecodeLimits(), *, decoder: Decoder = "fast") -> np.ndarray:
    """Validate and decode PNG bytes into a 2-D uint8 gray array, or raise :class:`ImageRejected`.

    Every failure is an :class:`ImageRejected` with a quarantine reason: Pillow's usual errors are
    ``unreadable_image``; any other exception from the decoder is ``decode_error`` with its type.
    """
    return np.asarray(decode_image(data, limits, decoder=decoder))


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits(), *, decoder: Decoder = "fast") -> Image.Image:
    """Like :func:`decode`, as a Pillow image in mode ``L`` (saves copies when it is resized next).

    ``decoder="pillow"``: Pillow decodes every file (the reference); the default takes libpng's pixels
    where they are Pillow's (the module docstring). Same pixels, same verdicts.
    """
    if decoder not in ("fast", "pillow"):
        raise ValueError(f"decoder must be 'fast' or 'pillow', got {decoder!r}")
    if len(data) == 0:
        raise ImageRejected(Reason.UNREADABLE_IMAGE, "empty file")
    if len(data) > limits.max_bytes:
        raise ImageRejected(Reason.TOO_LARGE, f"{len(data)} bytes > {limits.max_bytes}")
    is_jpeg = data.startswith(JPEG_SIGNATURE) and "jpeg" in limits.formats
    if not (data.startswith(PNG_SIGNATURE) and "png" in limits.formats) and not is_jpeg:
        expected = " or ".join(f.upper() for f in limits.formats)
        raise ImageRejected(Reason.UNREADABLE_IMAGE, f"not a {expected}: {_what_is_it(data)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            width, height = probe.size
            if width * height > limits.max_pixels:
                raise ImageRejected(
                    Reason.TOO_LARGE, f"{width} x {height} px claimed, more than {limits.max_pixels} pixels"
                )
            need = decode_bytes(probe.mode, width, height)
            if need > limits.max_image_bytes:
                raise ImageRejected(
                    Reason.OVER_MEMORY_BUDGET,
                    f"{width} x {height} px in mode {probe.mode} need {need / 2**20:.0f} MiB to decode and "
                    f"convert, more than the {limits.max_image_bytes / 2**20:.0f} MiB one image may use "
                    "(ingest --image-memory)",
                )
            mode = probe.mode
            if decoder == "fast" and not is_jpeg and min(width, height) >= limits.min_side:
                # verify() would check the CRCs from the pixel data to IEND: on the fast path libpng checks
                # every IDAT's (it refuses a bad one, and then Pillow decides), and fast_layout takes only
                # IDATs and then IEND after the first IDAT; Pillow's open() checked the chunks before.
                fast = _decode_fast(data, mode, width, height, limits)
                if fast is not None:
                    return fast
            probe.verify()  # chunk CRCs and structure, without decoding pixels
            image = Image.open(io.BytesIO(data))
            image.load()
            if min(width, height) < limits.min_side:
                raise ImageRejected(Reason.BAD_DIMENSIONS, f"{width} x {height} px, smaller than {limits.min_side} px")
            return to_gray8(image)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # Pillow's own, larger limit
        claimed = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(claimed[1])} px claimed" if claimed else "the size claimed is"
        raise ImageRejected(Reason.TOO_LARGE, f"{size}, more than {limits.max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # Pillow's ways of saying "broken"
        raise ImageRejected(Reason.UNREADABLE_IMAGE, f"{type(err).__name__}: {err}") from None
    except Exception as err:  # anything else a malformed file makes the decoder raise, e.g. an IndexError
        raise ImageRejected(Reason.DECODE_ERROR, f"{type(err).__name__}: {err}") from err


def _decode_fast(data: bytes, mode: str, width: int, height: int, limits: DecodeLimits) -> Image.Image | None:
    """The gray image from libpng's pixels, by :func:`to_gray8`; None where the fast path does not apply or fails.

    Called after Pillow's checks passed, for an image of at least ``min_side``; None sends it to Pillow.
    """
    layout = png_fast.fast_layout(data)
    if (
        layout is None
        or (layout.width, layout.height, layout.mode) != (width, height, mode)
        or _fast_decode_bytes(mode, width, height) > limits.max_image_bytes
    ):
        return None
    pixels = png_fast.fast_pixels(data, layout)
    if pixels is None:
        return None
    try:
        image = Image.fromarray(pixels)  # mapped, not copied (RGB: one copy into Pillow's 4 bytes a pixel)
        del pixels
        if image.mode != mode:
            return None
        return to_gray8(image)
    except Exception:  # noqa: BLE001 - Pillow decodes it and gives the verdict
        return None


def resize_square(gray: np.ndarray | Image.Image, side: int) -> np.ndarray:
    """Resize a 2-D uint8 array to ``side`` x ``side``.

    A square image whose side is a multiple of ``side`` (1024 -> 256) is box-averaged by that factor;
    anything else goes through Pillow's bilinear filter after an integer box reduction
    (``reducing_gap=2.0``). Both average over the source pixels, so neither aliases.
    """
    image = gray if isinstance(gray, Image.Image) else Image.fromarray(gray, mode="L")
    width, height = image.size
    if (width, height) == (side, side):
        return np.asarray(image)
    if height == width and width % side == 0:
        return np.asarray(image.reduce(width // side))
    return np.asarray(image.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0))
