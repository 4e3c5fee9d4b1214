"""Decode, validate and convert one source image: PNG bytes in, 8-bit gray pixels out, or a reason why not.

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
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cxr.data.quarantine import Reason

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIXEL_PIPELINE_VERSION = 1  # bump when the conversion or resizing rule changes: it is part of the digest


@dataclass(frozen=True)
class DecodeLimits:
    """What an acceptable image looks like. Defaults fit real archives (NIH: 1024 px, 0.2 to 1 MB)."""

    max_bytes: int = 64 * 2**20  # a PNG this big is not a chest film
    max_pixels: int = 8192 * 8192  # larger claimed dimensions: refused as a decompression bomb
    min_side: int = 64  # px; smaller is not a usable radiograph


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
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0:
            raise ImageRejected(Reason.UNREADABLE_IMAGE, f"negative pixel values in mode {mode}")
        bits = max(8, int(values.max()).bit_length())
        scaled = (values * 255 * 2 + (2**bits - 1)) // (2 * (2**bits - 1))  # round half up, integers only
        return Image.fromarray(scaled.astype(np.uint8), mode="L")
    raise ImageRejected(Reason.UNREADABLE_IMAGE, f"unsupported pixel mode {mode}")


def decode(data: bytes, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Validate and decode PNG bytes into a 2-D uint8 gray array, or raise :class:`ImageRejected`."""
    return np.asarray(decode_image(data, limits))


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """Like :func:`decode`, as a Pillow image in mode ``L`` (saves copies when it is resized next)."""
    if len(data) == 0:
        raise ImageRejected(Reason.UNREADABLE_IMAGE, "empty file")
    if len(data) > limits.max_bytes:
        raise ImageRejected(Reason.TOO_LARGE, f"{len(data)} bytes > {limits.max_bytes}")
    if not data.startswith(PNG_SIGNATURE):
        raise ImageRejected(Reason.UNREADABLE_IMAGE, f"not a PNG: {_what_is_it(data)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            width, height = probe.size
            if width * height > limits.max_pixels:
                raise ImageRejected(
                    Reason.TOO_LARGE, f"{width} x {height} px claimed, more than {limits.max_pixels} pixels"
                )
            probe.verify()  # chunk CRCs and structure, without decoding pixels
            image = Image.open(io.BytesIO(data))
            image.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected(Reason.TOO_LARGE, str(err)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # Pillow's ways of saying "broken"
        raise ImageRejected(Reason.UNREADABLE_IMAGE, f"{type(err).__name__}: {err}") from None
    if min(width, height) < limits.min_side:
        raise ImageRejected(Reason.BAD_DIMENSIONS, f"{width} x {height} px, smaller than {limits.min_side} px")
    return to_gray8(image)


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
