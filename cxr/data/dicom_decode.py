"""Decode one DICOM file: its bytes in, the 8-bit gray pixels the pipeline stores out, or a quarantine reason.

The rules, checked in this order; every failure is an :class:`~cxr.data.decode.ImageRejected`:

1. More than ``limits.max_bytes``: ``too_large``. Empty, no ``DICM`` at byte 128, pydicom fails to parse it
   (``dcmread(force=False)``) or no Transfer Syntax UID in the file meta: ``unreadable_image``. pydicom reads a
   cut file without a word, so a value, tag, length or file meta group that the end of the file cuts short is
   ``unreadable_image`` ("truncated"); a file cut exactly between two elements cannot be told from a whole one
   and is judged on what it holds. The header (``stop_before_pixels``) is checked first; the pixel data are
   read only when it passes.
2. A SOP Class under one of :data:`NON_IMAGE_SOP_CLASSES` (structured reports, radiotherapy objects,
   waveforms such as ECGs, presentation states, encapsulated documents, raw data, registrations and
   segmentations), or no Pixel Data (7FE0,0010): ``not_an_image``; the detail names the SOP Class. Pixel Data
   without Rows, Columns, Bits Allocated, Samples per Pixel or Photometric Interpretation: ``unreadable_image``.
3. Samples per Pixel other than 1, or a Photometric Interpretation other than MONOCHROME1/2 (RGB, YBR_*,
   PALETTE COLOR): ``colour_image``, checked before the frames (a colour cine is a colour image). More than
   one frame: ``multi_frame``.
4. Rows x Columns above ``limits.max_pixels``: ``too_large``; a side under ``limits.min_side``:
   ``bad_dimensions``; more than ``limits.max_image_bytes`` to decode and convert, counted as
   ``rows * columns * (bytes per sample + 17)`` (the samples, two float64 arrays, the result):
   ``over_memory_budget``.
5. pydicom decodes the pixels (compressed syntaxes through the pylibjpeg plug-ins). An unsupported transfer
   syntax, a decoder failure or pixel data of the wrong size: ``unreadable_image`` naming the transfer syntax;
   any other exception: ``decode_error`` naming its type. Then the Modality LUT (``apply_modality_lut``:
   Rescale Slope/Intercept or a Modality LUT Sequence), as float64.
6. To 8 bits by the first that applies (:attr:`DicomImage.window` says which):
   ``voi_lut``: the first VOI LUT Sequence item (``apply_voi_lut``; a value between entries takes the one
   below), its lowest entry -> 0, its highest -> 255, linear between, all 0 when equal (the entries' own
   range: LUT Descriptors often overstate the bits).
   ``window``: the first Window Center ``c`` / Width ``w`` by the VOI LUT Function (PS3.3 C.11.2.1.2):
   LINEAR, also when absent or unknown (``w >= 1``): ``((x - (c - 0.5)) / (w - 1) + 0.5) * 255`` clipped,
   ``w == 1`` a step at ``c - 0.5``; LINEAR_EXACT (``w > 0``): ``((x - c) / w + 0.5) * 255`` clipped; SIGMOID
   (``w > 0``): ``255 / (1 + exp(-4 (x - c) / w))``. A window that is not a number or narrower is ignored.
   ``percentile``: ``low, high`` = the :data:`PERCENTILES` of the modality values (NumPy's linear
   interpolation), ``(x - low) * 255 / (high - low)`` clipped; all 0 when ``high == low``.
   Rounded half up to uint8. Computed in float64: a value within a rounding error of a half level may land
   one level off an exact computation, so each path holds to +-1 gray level.
7. MONOCHROME1 (low is white) is inverted after the window: ``255 - v``.
8. Of the patient only Patient ID (raw, for :func:`patient_key`, and left out of ``repr``), sex and age come
   back; names, birth dates and other identifying elements are never converted, returned or put in a detail.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import UID

from cxr.data.decode import DecodeLimits, ImageRejected
from cxr.data.quarantine import Reason

PERCENTILES = (0.5, 99.5)  # the window when the file gives none: these percentiles of the modality values
SALT_ENV = "CXR_PATIENT_SALT"
MIN_SALT_CHARS = 16
NON_IMAGE_SOP_CLASSES = (  # SOP Class UIDs that hold no radiograph: each one and every UID under it
    "1.2.840.10008.5.1.4.1.1.9",  # waveforms: ECG, haemodynamic, audio, ...
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registrations, fiducials, segmentations
    "1.2.840.10008.5.1.4.1.1.88",  # structured reports, key object selections
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated documents: PDF, CDA, STL, ...
    "1.2.840.10008.5.1.4.1.1.481",  # radiotherapy: plans, structure sets, doses, RT images, ...
)
Window = Literal["voi_lut", "window", "percentile"]
_REQUIRED = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")
_DECODE_FAILURES = (NotImplementedError, RuntimeError, ValueError, EOFError, OSError)  # pydicom's "cannot decode"
_DEFAULT_LIMITS = DecodeLimits()
T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class DicomImage:
    """One decoded DICOM image and the few header values the pipeline keeps."""

    pixels: np.ndarray  # 2-D uint8, rows x columns
    pixel_spacing: tuple[float, float] | None  # (x: between columns, y: between rows) in mm
    patient_id: str | None = field(repr=False)  # raw Patient ID: hash it (patient_key), never store it
    sop_instance_uid: str | None
    view: str | None  # View Position, upper case: "PA", "AP", "LL", ...
    sex: str | None  # "M" or "F"
    age: int | None  # years; an age in days, weeks or months is 0
    window: Window  # how the 8-bit window was chosen (rule 6)


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` has the DICOM file prefix: ``DICM`` after the 128-byte preamble."""
    return data[128:132] == b"DICM"


def patient_key(patient_id: str, salt: str) -> int:
    """A non-negative int64 for a patient: HMAC-SHA256 keyed by ``salt``, its first 8 bytes, top bit cleared."""
    digest = hmac.new(salt.encode(), patient_id.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def salt_from_env() -> str:
    """The patient salt from :data:`SALT_ENV`; ValueError when it is unset or shorter than 16 characters."""
    salt = os.environ.get(SALT_ENV, "")
    if len(salt) < MIN_SALT_CHARS:
        state = f"has {len(salt)} characters" if salt else "is not set"
        raise ValueError(
            f"{SALT_ENV} {state}: set {SALT_ENV} to a secret of at least {MIN_SALT_CHARS} characters; the patient "
            "key is a salted hash of Patient ID, and without a secret salt anyone could recompute it from an ID"
        )
    return salt


@dataclass(frozen=True)
class DicomHeader:
    """What a DICOM file's header says of its image, read without its pixels (rules 1 to 4 passed)."""

    patient_id: str | None = field(repr=False)  # raw Patient ID: hash it (patient_key), never store it
    sop_instance_uid: str | None
    view: str | None  # View Position, upper case: "PA", "AP", "LL", ...
    sex: str | None  # "M" or "F"
    age: int | None  # years; an age in days, weeks or months is 0
    pixel_spacing: tuple[float, float] | None  # (x: between columns, y: between rows) in mm
    rows: int
    columns: int


def read_header(data: bytes, limits: DecodeLimits = _DEFAULT_LIMITS) -> DicomHeader:
    """Rules 1 to 4 on a file's bytes (its start is enough when it holds the whole header), or
    :class:`ImageRejected`: what ingest plans with before any pixel is decoded."""
    return _guarded(lambda: _header(data, limits)[0], data, limits)


def decode_dicom(data: bytes, limits: DecodeLimits = _DEFAULT_LIMITS) -> DicomImage:
    """Validate and decode one DICOM file's bytes by the module's rules, or raise :class:`ImageRejected`."""
    return _guarded(lambda: _decode(data, limits), data, limits)


def _guarded(work: Callable[[], T], data: bytes, limits: DecodeLimits) -> T:
    if len(data) > limits.max_bytes:
        raise ImageRejected(Reason.TOO_LARGE, f"{len(data)} bytes > {limits.max_bytes}")
    if not is_dicom(data):
        raise ImageRejected(Reason.UNREADABLE_IMAGE, "not DICOM: no 'DICM' at byte 128" if data else "empty file")
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # pydicom's warnings may quote header values
            return work()
    except ImageRejected:
        raise
    except Exception as err:  # anything else a malformed file makes pydicom or NumPy raise
        raise ImageRejected(Reason.DECODE_ERROR, _clip(f"{type(err).__name__}: {err}")) from err


def _header(data: bytes, limits: DecodeLimits) -> tuple[DicomHeader, Dataset | None]:
    """The header's rules; with the full dataset when checking them needed it read whole."""
    header = _read(data, header=True)
    sop_class = str(header.get("SOPClassUID") or header.file_meta.get("MediaStorageSOPClassUID") or "").strip()
    if sop_class.startswith(tuple(f"{root}." for root in NON_IMAGE_SOP_CLASSES)) or sop_class in NON_IMAGE_SOP_CLASSES:
        raise ImageRejected(Reason.NOT_AN_IMAGE, _class_name(sop_class))
    full = None
    if missing := [keyword for keyword in _REQUIRED if header.get(keyword) in (None, "")]:
        if "PixelData" in (full := _read(data, header=False)):
            raise ImageRejected(Reason.UNREADABLE_IMAGE, f"Pixel Data without {', '.join(missing)}")
        raise ImageRejected(Reason.NOT_AN_IMAGE, f"no Pixel Data: {_class_name(sop_class)}")
    _check_image(header, limits)
    sex = (_text(header, "PatientSex") or "").upper()
    return DicomHeader(
        patient_id=_text(header, "PatientID"),
        sop_instance_uid=_text(header, "SOPInstanceUID"),
        view=(_text(header, "ViewPosition") or "").upper() or None,
        sex=sex if sex in ("M", "F") else None,
        age=_age(_text(header, "PatientAge")),
        pixel_spacing=_spacing(header),
        rows=int(header.Rows),
        columns=int(header.Columns),
    ), full


def _decode(data: bytes, limits: DecodeLimits) -> DicomImage:
    header, full = _header(data, limits)
    full = full or _read(data, header=False)
    if "PixelData" not in full:
        raise ImageRejected(Reason.NOT_AN_IMAGE, f"no Pixel Data: {_class_name(str(full.get('SOPClassUID') or ''))}")
    pixels, window = _pixels(full)
    return DicomImage(
        pixels=pixels,
        pixel_spacing=header.pixel_spacing,
        patient_id=header.patient_id,
        sop_instance_uid=header.sop_instance_uid,
        view=header.view,
        sex=header.sex,
        age=header.age,
        window=window,
    )


class _Source(io.BytesIO):
    """The file, noting a tag or length that its end cuts short: pydicom stops there without a word."""

    cut = False

    def read(self, size: int | None = -1, /) -> bytes:
        out = super().read(size)
        self.cut = self.cut or (size in (4, 8) and 0 < len(out) < size)
        return out


def _read(data: bytes, *, header: bool) -> Dataset:
    """The dataset (up to the pixel data when ``header``), or ImageRejected when it does not parse or is cut."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(source := _Source(data), force=False, stop_before_pixels=header)
        except Exception as err:  # pydicom's ways of saying "not DICOM" or "broken" are many
            raise ImageRejected(Reason.UNREADABLE_IMAGE, _clip(f"{type(err).__name__}: {err}")) from err
    meta_end = 144 + int(ds.file_meta.get("FileMetaInformationGroupLength") or 0)  # preamble, DICM, this element
    if source.cut or len(data) < meta_end or any("End of file" in str(w.message) for w in caught):
        raise ImageRejected(Reason.UNREADABLE_IMAGE, "truncated: the file ends inside an element")
    if not ds.file_meta.get("TransferSyntaxUID"):
        raise ImageRejected(Reason.UNREADABLE_IMAGE, "no Transfer Syntax UID in the file meta information")
    if (tag := _short_element(ds)) is not None:
        raise ImageRejected(Reason.UNREADABLE_IMAGE, f"truncated: the file ends inside element {tag}")
    return ds


def _short_element(ds: Dataset) -> Any:
    """The tag of the first element whose value is shorter than its stated length, or None."""
    for elem in ds.elements():
        if isinstance(elem, RawDataElement):
            if elem.length != 0xFFFFFFFF and len(elem.value or b"") < elem.length:
                return elem.tag
        elif elem.VR == "SQ":
            for item in elem.value:
                if (tag := _short_element(item)) is not None:
                    return tag
    return None


def _class_name(uid: str) -> str:
    name = UID(uid).name if uid else "no SOP Class UID"
    return name if name in (uid, "no SOP Class UID") else f"{name} ({uid})"


def _check_image(ds: Dataset, limits: DecodeLimits) -> None:
    """Rules 3 and 4 on the header: colour, frames, dimensions, memory."""
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    try:
        samples, frames, bits = int(ds.SamplesPerPixel), int(ds.get("NumberOfFrames") or 1), int(ds.BitsAllocated)
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (TypeError, ValueError) as err:
        raise ImageRejected(Reason.UNREADABLE_IMAGE, _clip(f"a value of the Image Pixel module: {err}")) from err
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageRejected(Reason.COLOUR_IMAGE, f"photometric interpretation {photometric}, {samples} samples/pixel")
    if frames > 1:
        raise ImageRejected(Reason.MULTI_FRAME, f"{frames} frames")
    if rows * columns > limits.max_pixels:
        raise ImageRejected(Reason.TOO_LARGE, f"{columns} x {rows} px, more than {limits.max_pixels} pixels")
    if min(rows, columns) < limits.min_side:
        raise ImageRejected(Reason.BAD_DIMENSIONS, f"{columns} x {rows} px, smaller than {limits.min_side} px")
    need = rows * columns * (math.ceil(bits / 8) + 17)
    if need > limits.max_image_bytes:
        raise ImageRejected(
            Reason.OVER_MEMORY_BUDGET,
            f"{columns} x {rows} px of {bits} bits need {need / 2**20:.0f} MiB to decode and convert, "
            f"more than the {limits.max_image_bytes / 2**20:.0f} MiB one image may use (ingest --image-memory)",
        )


def _pixels(ds: Dataset) -> tuple[np.ndarray, Window]:
    """Rules 5 to 7: decode, Modality LUT, window to 8 bits, MONOCHROME1 inverted."""
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        stored = pixel_array(ds)  # what ds.pixel_array decodes, without keeping a copy on the dataset
    except _DECODE_FAILURES as err:
        raise ImageRejected(Reason.UNREADABLE_IMAGE, _clip(f"{UID(syntax).name}: {type(err).__name__}: {err}")) from err
    del ds.PixelData
    if stored.shape != (ds.Rows, ds.Columns):
        raise ImageRejected(Reason.BAD_DIMENSIONS, f"decoded to shape {stored.shape}, not {ds.Rows} x {ds.Columns}")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    del stored
    window: Window = "percentile"
    if (items := ds.get("VOILUTSequence")) and "LUTDescriptor" in items[0] and "LUTData" in items[0]:
        values, window = _by_voi_lut(values, ds, *items[0].LUTDescriptor[:2]), "voi_lut"
    elif (center_width := _center_width(ds)) is not None:
        _by_window(values, *center_width, _voi_function(ds))
        window = "window"
    elif (high_low := np.percentile(values, PERCENTILES))[1] > high_low[0]:
        _linear(values, high_low[0], 255 / (high_low[1] - high_low[0]), 0.0)
    else:
        values[...] = 0
    values += 0.5  # round half up
    gray = np.floor(values, out=values).astype(np.uint8)
    if str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        np.subtract(255, gray, out=gray)
    return gray, window


def _linear(values: np.ndarray, origin: float, scale: float, offset: float) -> None:
    """``clip((values - origin) * scale + offset, 0, 255)``, in place."""
    values -= origin
    values *= scale
    values += offset
    np.clip(values, 0, 255, out=values)


def _by_window(values: np.ndarray, center: float, width: float, function: str) -> None:
    """Rule 6's window functions, in place."""
    if function == "SIGMOID":
        values -= center
        values *= -4 / width
        np.exp(values, out=values)
        values += 1
        np.divide(255, values, out=values)
    elif function == "LINEAR_EXACT":
        _linear(values, center, 255 / width, 127.5)
    elif width == 1:
        values[...] = np.where(values > center - 0.5, 255, 0)
    else:
        _linear(values, center - 0.5, 255 / (width - 1), 127.5)


def _voi_function(ds: Dataset) -> str:
    return str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()


def _center_width(ds: Dataset) -> tuple[float, float] | None:
    """The first Window Center and Width, when both are numbers and the width suits the VOI LUT Function."""
    center, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    narrowest = 1 if _voi_function(ds) not in ("LINEAR_EXACT", "SIGMOID") else math.ulp(0)
    return (center, width) if width >= narrowest else None


def _by_voi_lut(values: np.ndarray, ds: Dataset, count: int, first: int) -> np.ndarray:
    """The first VOI LUT of the modality values (overwritten), its entries' range scaled to 0..255, as float64."""
    count = count or 2**16
    np.floor(values, out=values)
    indices = np.clip(values, first - 1, first + count, out=values).astype(np.int32)  # the same entries
    del values
    entries = apply_voi_lut(np.arange(first, first + count, dtype=np.int32), ds, index=0)
    low, high = int(entries.min()), int(entries.max())
    gray = apply_voi_lut(indices, ds, index=0).astype(np.float64)
    _linear(gray, low, 255 / (high - low) if high > low else 0.0, 0.0)
    return gray


def _first_number(value: Any) -> float | None:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    """(x, y) in mm from Pixel Spacing, else Imager Pixel Spacing; both store (row spacing, column spacing)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) and len(value) == 2:
            row, column = _first_number(value[0]), _first_number(value[1])
            if row is not None and column is not None and row > 0 and column > 0:
                return (column, row)
    return None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return (str(value).strip() or None) if value is not None else None


def _age(text: str | None) -> int | None:
    """Patient Age ``nnnY`` in years; ``nnnD``, ``nnnW``, ``nnnM``: 0; anything else: None."""
    match = re.fullmatch(r"(\d{1,3})\s*([DWMY])", (text or "").upper())
    if match is None:
        return None
    return int(match.group(1)) if match.group(2) == "Y" else 0


def _clip(detail: str, limit: int = 300) -> str:
    detail = " ".join(detail.split())
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."
