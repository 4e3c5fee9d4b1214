"""``cxr synth --format dicom``: the synthetic images and labels of :mod:`cxr.data.synth` as a DICOM source.

The rows and pixels are those of the NIH-format synth with the same settings. Each image is a DICOM file
(Digital X-Ray, MONOCHROME2, 12 bits stored in 16, explicit VR little endian) at
``images/g<patient // 100>/<image>.dcm`` (paths carry no header value): the 8-bit pixels times 16, with a
Rescale Slope of 1 and a window (center 2048, width 4096) over the whole 12-bit range, and the pixel
spacing of the NIH row. The header
carries what a hospital export would: Patient ID ``PAT<patient>``, a Patient's Name and Birth Date (made
up: they exist to prove that ingest copies neither), sex, age, view. ``labels.csv`` names each file by
``Path`` with NIH-style ``Finding Labels``. No boxes.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

HEADER = "Path,Finding Labels"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def image_path(row: dict[str, Any]) -> str:
    """Where a row's file goes, relative to the output (also its ``Path`` in labels.csv)."""
    return f"images/g{row['patient_id'] // 100:04d}/{row['image_id'].removesuffix('.png')}.dcm"


def identity(row: dict[str, Any]) -> dict[str, str]:
    """The made-up identifying values a row's file carries (never to be found in a dataset version)."""
    return {
        "PatientID": f"PAT{row['patient_id']:06d}",
        "PatientName": f"SYNTH^PATIENT{row['patient_id']:06d}",
        "PatientBirthDate": f"19{40 + row['patient_id'] % 50:02d}0{1 + row['patient_id'] % 9}15",
    }


def encode(pixels: np.ndarray, row: dict[str, Any], seed: int, index: int) -> bytes:
    """The DICOM file of one image (module docstring)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_IMAGE_STORAGE
    uid = generate_uid(entropy_srcs=["cxr-synth", str(seed), str(index)])
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_IMAGE_STORAGE, uid
    ds.Modality = "DX"
    for keyword, value in identity(row).items():
        setattr(ds, keyword, value)
    ds.PatientSex, ds.PatientAge, ds.ViewPosition = row["sex"], f"{row['age']:03d}Y", row["view"]
    ds.PixelSpacing = [row["spacing"], row["spacing"]]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def labels_table(rows: list[dict[str, Any]]) -> str:
    """``labels.csv``: each file's path and its NIH-style labels."""
    lines = [HEADER] + [f"{r['image_id']},{'|'.join(sorted(r['labels'].split('|')))}" for r in rows]
    return "\n".join(lines) + "\n"
