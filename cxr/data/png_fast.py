"""A faster PNG pixel decoder (libpng through ``imagecodecs``) for the files where it gives Pillow's pixels exactly.

:func:`cxr.data.decode.decode_image` validates every file with Pillow first (signature, limits, the
header and the CRCs of the chunks before the pixel data); then, for the layouts :func:`fast_layout`
accepts, it asks :func:`fast_pixels` for the pixels instead of Pillow's ``verify()`` and ``load()``:
libpng checks the CRC of every ``IDAT`` chunk and refuses a bad one (tests/test_decode_fast.py), and
after the pixel data only ``IEND`` may follow, so a file that ``verify()`` would refuse goes to Pillow.
Anything else, or any error here, and Pillow decodes as before and gives the verdict, so what is
accepted or rejected, and why, never changes.

What Pillow's ``load()`` may still reject after ``verify()``, and why libpng cannot accept it instead:

- the compressed pixel data (a broken or cut deflate stream, a bad Adler-32, a bad row filter, too few
  rows): libpng reads the whole stream and raises on each of these (tests/test_decode_fast.py builds
  them), and the caller falls back to Pillow;
- the chunks after the pixel data, which Pillow parses in ``load()`` and libpng may skip (an empty
  ``iCCP`` there makes Pillow raise ``IndexError``, libpng only warn): :func:`fast_layout` takes only
  files whose pixel data is followed directly by ``IEND``.

The layouts taken: not interlaced, no ``tRNS`` (libpng would add an alpha channel), no APNG chunks, and
8-bit gray, 8-bit RGB, 8-bit RGBA or 16-bit gray. Palettes, gray + alpha, 1 to 4 bits, 16-bit colour
and interlaced files stay with Pillow.
"""

from __future__ import annotations

import logging
import struct
from typing import NamedTuple

import numpy as np

try:  # optional at run time: without it every image is decoded by Pillow
    from imagecodecs import png_decode
except ImportError:  # imagecodecs is a dependency; this keeps an install without it working
    png_decode = None
else:
    # libpng's warnings on odd ancillary chunks would otherwise go to stderr through logging's last resort
    # (the Pillow path is quiet about them); an application that configures logging still sees them.
    logging.getLogger("imagecodecs").addHandler(logging.NullHandler())

AVAILABLE = png_decode is not None

# (bit depth, colour type) -> (the mode Pillow opens it in, the array libpng returns: channels, dtype)
FAST_TYPES: dict[tuple[int, int], tuple[str, int, type[np.integer]]] = {
    (8, 0): ("L", 1, np.uint8),
    (8, 2): ("RGB", 3, np.uint8),
    (8, 6): ("RGBA", 4, np.uint8),
    (16, 0): ("I;16", 1, np.uint16),
}
_NOT_BEFORE_PIXELS = (b"tRNS", b"acTL", b"fcTL")  # libpng turns tRNS into an alpha channel; APNG
_CHUNK_HEAD = struct.Struct(">I4s")
_IHDR = struct.Struct(">I4sIIBBBBB")  # length, type, width, height, depth, colour type, compression, filter, interlace


class FastLayout(NamedTuple):
    """A PNG :func:`fast_pixels` may decode: its size, the mode Pillow opens it in, the array libpng returns."""

    width: int
    height: int
    mode: str
    shape: tuple[int, ...]
    dtype: type[np.integer]


def fast_layout(data: bytes) -> FastLayout | None:
    """The file's size and Pillow mode if its layout is one libpng decodes to Pillow's pixels, else None.

    Reads only chunk headers (Pillow's open() checked the CRCs before the pixel data, libpng checks the
    pixel data's; no ``verify()`` on this path): ``IHDR`` first, a type in :data:`FAST_TYPES`,
    not interlaced, none of ``tRNS``/``acTL``/``fcTL`` before the pixel data, and after the first ``IDAT``
    only more ``IDAT`` then ``IEND``.
    """
    if len(data) < 8 + _IHDR.size + 4:
        return None
    length, kind, width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack_from(data, 8)
    if length != 13 or kind != b"IHDR" or compression or filtering or interlace:
        return None
    known = FAST_TYPES.get((depth, colour))
    if known is None:
        return None
    mode, channels, dtype = known
    pos, end, pixels = 8, len(data), False
    while pos + 8 <= end:
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        if kind == b"IEND":
            if not pixels:
                return None
            shape = (height, width) if channels == 1 else (height, width, channels)
            return FastLayout(width, height, mode, shape, dtype)
        if kind == b"IDAT":
            if pos + 12 + length > end:
                return None  # cut short: Pillow says how
            pixels = True
        elif pixels:
            return None  # a chunk between the pixel data and IEND: Pillow parses it in load(), libpng may not
        elif kind in _NOT_BEFORE_PIXELS:
            return None
        pos += 12 + length
    return None


def fast_pixels(data: bytes, layout: FastLayout) -> np.ndarray | None:
    """The pixels libpng decodes, as Pillow's mode would hold them, or None if it fails or returns anything else.

    2-D (height, width) for gray (uint8 or uint16, native byte order), (height, width, 3 or 4) uint8 for
    RGB and RGBA; C-contiguous, so Pillow can map it without a copy.
    """
    if png_decode is None:
        return None
    try:
        pixels = png_decode(data)
    except Exception:  # noqa: BLE001 - libpng errors, MemoryError, anything: Pillow decodes it, gives the verdict
        return None
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.shape != layout.shape
        or pixels.dtype != layout.dtype
        or not pixels.dtype.isnative
        or not pixels.flags.c_contiguous
    ):
        return None
    return pixels
