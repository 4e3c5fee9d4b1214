"""One image file of any encoding a source may hold, as 8-bit gray: PNG and JPEG by :mod:`cxr.data.decode`,
DICOM by :mod:`cxr.data.dicom_decode` (imported only for DICOM bytes: pydicom loads in about half a second)."""

from __future__ import annotations

from PIL import Image

from cxr.data.decode import DecodeLimits, decode_image

ANY_FORMAT = DecodeLimits(formats=("png", "jpeg", "dicom"))  # what `cxr predict` reads


def decode_source_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """The bytes of a format ``limits.formats`` allows as a mode ``L`` image, or :class:`ImageRejected`."""
    if "dicom" in limits.formats and data[128:132] == b"DICM":
        from cxr.data.dicom_decode import decode_dicom

        return Image.fromarray(decode_dicom(data, limits).pixels, mode="L")
    return decode_image(data, limits)
