"""DICOM decoding: pydicom's packaged test files and DICOM files written here from the real NIH PNGs, no mocks.

Every accepted image is checked against an independent computation: pydicom's pixel_array and Modality LUT,
then the window rule written out with NumPy here (never the module's helpers), to the documented +-1 level.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, generate_uid

from cxr.data.decode import DecodeLimits, ImageRejected, decode, resize_square
from cxr.data.dicom_decode import PERCENTILES, SALT_ENV, DicomImage, decode_dicom, is_dicom, patient_key, salt_from_env
from cxr.data.quarantine import Reason
from tests.conftest import NIH

PACKAGED = Path(pydicom.data.__file__).parent / "test_files"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SMALL = DecodeLimits(min_side=8)  # pydicom's JPEG-LS samples are 45 x 10 and 50 x 10


def packaged(name: str) -> bytes:
    """A file packaged with pydicom; skipped when this pydicom does not ship it (never downloaded)."""
    if not (PACKAGED / name).is_file():
        pytest.skip(f"{name} is not packaged with pydicom {pydicom.__version__}")
    return Path(pydicom.data.get_testdata_file(name)).read_bytes()


# --- the rule, written out independently -----------------------------------------------------------------


def percentile(values: np.ndarray, q: float) -> float:
    """The q-th percentile by linear interpolation between order statistics, by hand."""
    ordered = np.sort(values, axis=None)
    position = q / 100 * (ordered.size - 1)
    below = int(np.floor(position))
    above = min(below + 1, ordered.size - 1)
    return float(ordered[below] + (position - below) * (ordered[above] - ordered[below]))


def round_half_up(y: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(y, dtype=np.float64) + 0.5).astype(np.uint8)


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR, to 0..255, as the standard's three cases."""
    low_edge, high_edge = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    inside = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.where(x <= low_edge, 0.0, np.where(x > high_edge, 255.0, inside))


def percentile_window(x: np.ndarray) -> np.ndarray:
    low, high = percentile(x, 0.5), percentile(x, 99.5)
    if high == low:
        return np.zeros_like(x)
    return np.minimum(np.maximum((x - low) / (high - low) * 255, 0), 255)


def first(value) -> float:
    return float(value[0]) if isinstance(value, pydicom.multival.MultiValue) else float(value)


def expected(data: bytes) -> tuple[np.ndarray, str]:
    """The 8-bit pixels and the window kind, from pydicom's pixels and the rule above (no VOI LUT here)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    assert "VOILUTSequence" not in ds and ds.get("VOILUTFunction") in (None, "", "LINEAR")
    x = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        gray, kind = round_half_up(linear_window(x, first(ds.WindowCenter), first(ds.WindowWidth))), "window"
    else:
        gray, kind = round_half_up(percentile_window(x)), "percentile"
    return (255 - gray if ds.PhotometricInterpretation == "MONOCHROME1" else gray), kind


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """Within one gray level everywhere (the module's stated tolerance), and equal almost everywhere."""
    assert got.dtype == np.uint8 and got.shape == want.shape
    difference = np.abs(got.astype(int) - want.astype(int))
    assert difference.max() <= 1
    assert (difference == 0).mean() >= 0.999


# --- pydicom's packaged files -----------------------------------------------------------------------------

GRAY = {  # name: (window kind, limits): what each file turned out to be is in the comment
    "CT_small.dcm": "percentile",  # CT, 128 x 128 signed 16 bit, Rescale -1024, no window
    "MR_small.dcm": "window",  # MR, 64 x 64 signed 16 bit, explicit VR little endian
    "MR_small_RLE.dcm": "window",  # the same, RLE Lossless
    "MR_small_bigendian.dcm": "window",  # the same, explicit VR big endian
    "MR_small_expb.dcm": "window",  # the same, explicit VR big endian
    "MR_small_implicit.dcm": "window",  # the same, implicit VR little endian
    "MR_small_padded.dcm": "window",  # the same, with trailing padding
    "MR_small_jp2klossless.dcm": "window",  # the same, JPEG 2000 lossless
    "MR_small_jpeg_ls_lossless.dcm": "window",  # the same, JPEG-LS lossless
    "JPEG2000.dcm": "percentile",  # NM secondary capture 256 x 1024, JPEG 2000
    "JPGExtended.dcm": "percentile",  # the same, 12-bit JPEG Extended (process 4)
    "693_J2KI.dcm": "window",  # CT 512 x 512, JPEG 2000 (lossy allowed), Rescale -1024
    "J2K_pixelrep_mismatch.dcm": "window",  # CT, J2K stream unsigned in a signed dataset; three windows
    "examples_overlay.dcm": "window",  # MR 484 x 300, 12 of 16 bits, two windows, with an overlay
    "image_dfl.dcm": "percentile",  # secondary capture 512 x 512 8 bit, Deflated explicit VR
}
TINY_GRAY = ["JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm"]  # 10 x 45 and 10 x 50, JPEG-LS near-lossless

COLOUR = [
    "ExplVR_BigEnd.dcm",  # ultrasound RGB
    "GDCMJ2K_TextGBR.dcm",  # YBR_RCT, JPEG 2000
    "SC_jpeg_no_color_transform.dcm",
    "SC_jpeg_no_color_transform_2.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "examples_jpeg2k.dcm",  # ultrasound YBR_RCT
    "examples_palette.dcm",  # ultrasound PALETTE COLOR, one sample per pixel
    "examples_rgb_color.dcm",
    "examples_ybr_color.dcm",  # ultrasound YBR_FULL_422, 30 frames: colour is checked first
    *sorted(p.name for p in PACKAGED.glob("SC_rgb*.dcm")),  # RGB and YBR_FULL(_422), 1 to 32 bits, 1 or 2 frames
]

NOT_AN_IMAGE = {  # name: what the detail names
    "test-SR.dcm": "Comprehensive SR Storage",
    "reportsi.dcm": "Basic Text SR Storage",
    "reportsi_with_empty_number_tags.dcm": "Basic Text SR Storage",
    "rtplan.dcm": "RT Plan Storage",
    "rtdose.dcm": "RT Dose Storage",  # 15 frames of dose: RT, so not a multi-frame image
    "rtdose_1frame.dcm": "RT Dose Storage",
    "rtdose_expb.dcm": "RT Dose Storage",
    "rtdose_expb_1frame.dcm": "RT Dose Storage",
    "rtdose_rle.dcm": "RT Dose Storage",
    "rtdose_rle_1frame.dcm": "RT Dose Storage",
    "badVR.dcm": "RT Dose Storage",  # also an invalid Number of Frames ("1A"): the class decides first
    "waveform_ecg.dcm": "12-lead ECG Waveform Storage",
    "liver_1frame.dcm": "Segmentation Storage",  # 1-bit segmentation masks
    "liver_expb_1frame.dcm": "Segmentation Storage",
    "no_meta_group_length.dcm": "RT Image Storage",  # the class from the file meta; no Pixel Data either
    "UN_sequence.dcm": "no Pixel Data",  # only a sequence, classed CT in the file meta
    "priv_SQ.dcm": "no Pixel Data",  # only private sequences, classed MR in the file meta
    "empty_charset_LEI.dcm": "no Pixel Data",  # two elements, no class
}

UNREADABLE = {  # name: what the detail says
    "rtstruct.dcm": "no 'DICM'",  # an RT Structure Set without preamble: pydicom reads it only with force=True
    "no_meta.dcm": "no 'DICM'",
    "ExplVR_BigEndNoMeta.dcm": "no 'DICM'",
    "ExplVR_LitEndNoMeta.dcm": "no 'DICM'",
    "JPEG-lossy.dcm": "JPEG Extended (Process 2 and 4)",  # a broken 12-bit JPEG stream (fixed: JPGExtended.dcm)
    "JPEG2000-embedded-sequence-delimiter.dcm": "JPEG 2000",  # codestream bytes overwritten on purpose
    "MR_truncated.dcm": "truncated",  # pixel data cut short
    "rtplan_truncated.dcm": "truncated",
    "meta_missing_tsyntax.dcm": "no Transfer Syntax UID",
    "nested_priv_SQ.dcm": "Pixel Data without Rows",
}


@pytest.mark.parametrize("name", sorted(GRAY))
def test_packaged_gray_images_match_an_independent_computation(name):
    data = packaged(name)
    image = decode_dicom(data)
    want, kind = expected(data)
    assert image.window == kind == GRAY[name]
    assert_close(image.pixels, want)


@pytest.mark.parametrize("name", TINY_GRAY)
def test_packaged_tiny_images_are_too_small_by_default_and_match_when_allowed(name):
    data = packaged(name)
    with pytest.raises(ImageRejected) as info:
        decode_dicom(data)
    assert info.value.reason == Reason.BAD_DIMENSIONS
    image = decode_dicom(data, SMALL)
    want, kind = expected(data)
    assert image.window == kind
    assert_close(image.pixels, want)


def rejected(data: bytes, limits: DecodeLimits | None = None) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        decode_dicom(data, limits or DecodeLimits())
    return info.value


@pytest.mark.parametrize("name", COLOUR)
def test_packaged_colour_images_are_colour(name):
    err = rejected(packaged(name), SMALL)
    ds = pydicom.dcmread(PACKAGED / name, stop_before_pixels=True)
    assert err.reason == Reason.COLOUR_IMAGE and ds.PhotometricInterpretation in err.detail


@pytest.mark.parametrize("name", sorted(NOT_AN_IMAGE))
def test_packaged_objects_without_an_image_are_not_images(name):
    err = rejected(packaged(name), SMALL)
    assert err.reason == Reason.NOT_AN_IMAGE and NOT_AN_IMAGE[name] in err.detail


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_packaged_broken_files_are_unreadable(name):
    err = rejected(packaged(name), SMALL)
    assert err.reason == Reason.UNREADABLE_IMAGE and UNREADABLE[name] in err.detail


def test_every_packaged_dicom_file_is_classified_here():
    known = set(GRAY) | set(TINY_GRAY) | set(COLOUR) | set(NOT_AN_IMAGE) | set(UNREADABLE)
    assert {p.name for p in PACKAGED.glob("*.dcm")} <= known


@pytest.mark.parametrize("cut", [100, 150, 300, 1001, 6000, 20000, -1000, -100])
def test_a_cut_file_is_unreadable(cut):
    data = packaged("CT_small.dcm")  # header up to byte 6300, then 32 KiB of pixels, then 138 bytes
    err = rejected(data[:cut])
    assert err.reason == Reason.UNREADABLE_IMAGE


@pytest.mark.parametrize("cut", [-200, -20, 1600])
def test_a_cut_compressed_file_is_unreadable(cut):
    data = packaged("MR_small_RLE.dcm")  # pixel data in RLE fragments from byte 1516, then trailing padding
    assert rejected(data[:cut]).reason == Reason.UNREADABLE_IMAGE


def test_a_cut_inside_a_tag_is_unreadable_and_a_cut_between_elements_is_judged_on_what_is_left():
    data = packaged("CT_small.dcm")
    study_date = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).get_item(0x00080020)
    boundary = study_date.value_tell + study_date.length
    assert rejected(data[:boundary]).reason == Reason.NOT_AN_IMAGE  # a whole file that holds no Pixel Data
    for inside in (boundary + 1, boundary + 3, boundary + 7):
        assert rejected(data[:inside]).reason == Reason.UNREADABLE_IMAGE


@pytest.mark.parametrize(
    "data",
    [b"", b"patient list\nname,id\n" * 20, b"\x89PNG\r\n\x1a\n" + bytes(200), bytes(128) + b"DICM" + bytes(64)],
    ids=["empty", "text", "png", "dicm-then-zeros"],
)
def test_other_bytes_are_unreadable(data):
    assert rejected(data).reason == Reason.UNREADABLE_IMAGE


def test_is_dicom_looks_for_the_prefix_after_the_preamble():
    assert is_dicom(packaged("CT_small.dcm")) and is_dicom(bytes(128) + b"DICM")
    assert not is_dicom(packaged("rtstruct.dcm"))  # a DICOM data set without the file preamble
    assert not is_dicom(b"") and not is_dicom(b"DICM" + bytes(200))


def test_the_limits_are_checked_from_the_header():
    data = packaged("CT_small.dcm")
    assert rejected(data, DecodeLimits(max_bytes=len(data) - 1)).reason == Reason.TOO_LARGE
    assert rejected(data, DecodeLimits(max_pixels=128 * 127)).reason == Reason.TOO_LARGE
    assert rejected(data, DecodeLimits(min_side=129)).reason == Reason.BAD_DIMENSIONS
    err = rejected(data, DecodeLimits(max_image_bytes=128 * 128 * 18))  # 2 bytes a sample + 17
    assert err.reason == Reason.OVER_MEMORY_BUDGET
    assert decode_dicom(data, DecodeLimits(max_image_bytes=128 * 128 * 19)).pixels.shape == (128, 128)


def test_damaged_files_raise_only_image_rejected():
    data = packaged("MR_small.dcm")
    rng = np.random.default_rng(7)
    outcomes = set()
    for _ in range(60):
        damaged = bytearray(data)
        for at in rng.integers(132, len(data), 4):
            damaged[at] = rng.integers(0, 256)
        try:
            outcomes.add(decode_dicom(bytes(damaged)).window)
        except ImageRejected as err:
            outcomes.add(str(err.reason))
    assert outcomes  # every outcome was a DicomImage or an ImageRejected


# --- files written here from the real NIH PNGs ----------------------------------------------------------


@pytest.fixture(scope="module")
def chest() -> np.ndarray:
    """A real NIH radiograph as 256 x 256 8-bit gray."""
    return resize_square(decode((NIH / "images" / "00001369_000.png").read_bytes()), 256)


def twelve_bit(gray: np.ndarray) -> np.ndarray:
    """8-bit gray spread over 12 bits: (v << 4) | (v >> 4), 0..4095."""
    v = gray.astype(np.uint16)
    return (v << 4) | (v >> 4)


def dicom(pixels: np.ndarray, *, bits: int = 12, frames: int = 1, syntax=ExplicitVRLittleEndian, **tags) -> bytes:
    """A Digital X-Ray file of ``pixels`` (16 bits allocated, ``bits`` stored) with ``tags`` set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = DX_STORAGE, generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "PID-0042"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    if syntax == JPEG2000Lossless:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        ds.compress(JPEG2000Lossless, pixels.astype(np.uint16))  # pylibjpeg-openjpeg's encoder
    elif syntax == JPEGLosslessSV1:  # libjpeg-turbo's lossless JPEG (imagecodecs), first-order prediction
        ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(pixels, lossless=True, bitspersample=bits, predictor=1)])
    else:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_monochrome1_is_the_inverted_window_of_the_stored_values(chest):
    stored = twelve_bit(chest)
    image = decode_dicom(dicom(stored, PhotometricInterpretation="MONOCHROME1", WindowCenter=2000, WindowWidth=3001))
    assert image.window == "window"
    assert_close(image.pixels, 255 - round_half_up(linear_window(stored.astype(float), 2000, 3001)))


def test_rescale_then_the_first_window(chest):
    stored = twelve_bit(chest)
    image = decode_dicom(
        dicom(stored, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=[1500, 40], WindowWidth=[4000, 400])
    )
    assert image.window == "window"
    assert_close(image.pixels, round_half_up(linear_window(2.0 * stored - 1024, 1500, 4000)))


def test_no_window_takes_the_percentiles(chest):
    assert PERCENTILES == (0.5, 99.5)
    stored = twelve_bit(chest)
    image = decode_dicom(dicom(stored, RescaleSlope=1, RescaleIntercept=-1024))
    assert image.window == "percentile"
    assert_close(image.pixels, round_half_up(percentile_window(stored - 1024.0)))
    flat = decode_dicom(dicom(np.full((256, 256), 700, np.uint16)))
    assert flat.window == "percentile" and not flat.pixels.any()  # high == low: all 0


def test_a_voi_lut_sequence_comes_before_the_window(chest):
    stored = twelve_bit(chest)
    count, first_mapped = 3000, 500
    lut = np.round(4095 * (np.arange(count) / (count - 1)) ** 0.6).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [count, first_mapped, 12])  # LUT Descriptor
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    image = decode_dicom(dicom(stored, VOILUTSequence=[item], WindowCenter=100, WindowWidth=10))
    assert image.window == "voi_lut"
    entries = lut[np.clip(stored.astype(int) - first_mapped, 0, count - 1)].astype(float)
    assert_close(image.pixels, round_half_up((entries - lut.min()) * 255 / (lut.max() - lut.min())))


@pytest.mark.parametrize("syntax", [JPEGLosslessSV1, JPEG2000Lossless], ids=["jpeg-lossless", "jpeg2000-lossless"])
def test_lossless_compression_decodes_to_the_uncompressed_pixels(chest, syntax):
    stored = twelve_bit(chest)
    for tags in ({}, {"WindowCenter": 2048, "WindowWidth": 2500}):
        compressed = dicom(stored, syntax=syntax, **tags)
        assert pydicom.dcmread(io.BytesIO(compressed)).file_meta.TransferSyntaxUID == syntax
        plain = decode_dicom(dicom(stored, **tags))
        assert np.array_equal(decode_dicom(compressed).pixels, plain.pixels)


def test_several_frames_are_multi_frame(chest):
    stored = twelve_bit(np.stack([chest, chest[::-1]]))
    err = rejected(dicom(stored, frames=2))
    assert err.reason == Reason.MULTI_FRAME and "2 frames" in err.detail


def test_pixel_spacing_first_then_the_imager_pixel_spacing(chest):
    stored = twelve_bit(chest)
    both = decode_dicom(dicom(stored, PixelSpacing=[0.2, 0.15], ImagerPixelSpacing=[0.143, 0.139]))
    assert both.pixel_spacing == (0.15, 0.2)  # (x: between columns, y: between rows)
    assert decode_dicom(dicom(stored, ImagerPixelSpacing=[0.143, 0.139])).pixel_spacing == (0.139, 0.143)
    assert decode_dicom(dicom(stored)).pixel_spacing is None


def test_header_values_and_no_identifying_value_in_the_result(chest):
    identifying = {
        "PatientName": "Doe^Jane",
        "PatientBirthDate": "19580214",
        "OtherPatientIDs": "MRN-77777",
        "PatientAddress": "12 Elm Street",
        "InstitutionName": "Saint Nowhere Hospital",
        "ReferringPhysicianName": "House^Gregory",
        "AccessionNumber": "ACC-31337",
    }
    tags = {"ViewPosition": "pa", "PatientSex": "F", "PatientAge": "058Y", **identifying}
    data = dicom(twelve_bit(chest), **tags)
    image = decode_dicom(data)
    assert (image.view, image.sex, image.age, image.patient_id) == ("PA", "F", 58, "PID-0042")
    assert image.sop_instance_uid == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    shown = repr(image) + "".join(str(getattr(image, f.name)) for f in dataclasses.fields(image) if f.name != "pixels")
    assert "PID-0042" not in repr(image)  # the caller hashes it; a logged result does not show it
    for value in [*identifying.values(), "Doe", "1958"]:
        assert value not in shown
    err = rejected(dicom(twelve_bit(np.stack([chest, chest])), frames=2, **tags))
    assert not any(value in err.detail for value in [*identifying.values(), "PID-0042"])


@pytest.mark.parametrize(
    ("age", "years"), [("058Y", 58), ("003M", 0), ("010W", 0), ("005D", 0), ("", None), ("58", None), (None, None)]
)
def test_patient_age(chest, age, years):
    tags = {} if age is None else {"PatientAge": age}
    assert decode_dicom(dicom(twelve_bit(chest), **tags)).age == years


def test_the_result_is_frozen(chest):
    image = decode_dicom(dicom(twelve_bit(chest)))
    assert isinstance(image, DicomImage) and image.pixels.dtype == np.uint8 and image.pixels.ndim == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.view = "AP"  # type: ignore[misc]


# --- the patient key --------------------------------------------------------------------------------------


def test_patient_key_is_a_stable_salted_non_negative_int64():
    salt = "0123456789abcdef-salt"
    key = patient_key("PID-0042", salt)
    assert key == patient_key("PID-0042", salt)
    assert 0 <= key < 2**63
    digest = hmac.new(salt.encode(), b"PID-0042", hashlib.sha256).digest()
    assert key == int.from_bytes(digest[:8], "big") & (2**63 - 1)
    assert key != patient_key("PID-0042", salt + "x") and key != patient_key("PID-0043", salt)
    keys = {patient_key(f"P{i}", salt) for i in range(2000)}
    assert len(keys) == 2000 and max(keys) >= 2**62  # the top usable bit is used, the sign bit never


def test_salt_from_env_refuses_a_missing_or_short_salt(monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    with pytest.raises(ValueError, match=f"set {SALT_ENV} to a secret.*salted hash of Patient ID"):
        salt_from_env()
    monkeypatch.setenv(SALT_ENV, "too-short")
    with pytest.raises(ValueError, match="has 9 characters"):
        salt_from_env()
    monkeypatch.setenv(SALT_ENV, "a-long-enough-secret")
    assert salt_from_env() == "a-long-enough-secret"
