"""Where a synthetic archive's files go and what they hold, per layout: NIH (PNGs under ``images_NNN/images``,
the label table, box list and split lists), CheXpert (:mod:`cxr.data.synth_chexpert`) or DICOM
(:mod:`cxr.data.synth_dicom`). The rows and pixels do not depend on the layout (:mod:`cxr.data.synth`)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cxr import storage
from cxr.data.dicom_source import LABELS as DICOM_LABELS

if TYPE_CHECKING:
    from cxr.data.synth import SynthConfig

LABEL_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
Boxes = list[list[tuple[str, float, float, float, float]]]  # per image: finding, x, y, w, h (1024 px frame)


def label_table_name(config: SynthConfig) -> str:
    """The table written last: its presence says the synth is complete."""
    if config.format == "chexpert":
        return "train.csv"
    if config.format == "dicom":
        return DICOM_LABELS
    return "Data_Entry_2017.csv" if config.edition == "2017" else "Data_Entry_2017_v2020.csv"


def place_images(config: SynthConfig, rows: list[dict[str, Any]], test_patients: set[int]) -> None:
    """For the CheXpert and DICOM layouts, each row's ``image_id`` becomes its file's path under the output."""
    if config.format == "chexpert":
        from cxr.data.synth_chexpert import image_path as chexpert_path

        for r in rows:
            r["image_id"] = chexpert_path(r, r["patient_id"] in test_patients)
    elif config.format == "dicom":
        from cxr.data.synth_dicom import image_path as dicom_path

        for r in rows:
            r["image_id"] = dicom_path(r)


def image_path(config: SynthConfig, index: int, image_id: str) -> str:
    if config.format != "nih":  # image_id is the path under the output (place_images)
        return storage.join(config.out, *image_id.split("/"))
    folder = f"images_{index // config.per_folder + 1:03d}"
    return storage.join(config.out, folder, "images", image_id)


def encode(config: SynthConfig, pixels: np.ndarray, index: int, row: dict[str, Any]) -> bytes:
    """An image's file: PNG (nih), JPEG (chexpert) or DICOM (dicom)."""
    if config.format == "dicom":
        from cxr.data.synth_dicom import encode as dicom_file

        return dicom_file(pixels, row, config.seed, index)
    buf = io.BytesIO()
    if config.format == "chexpert":
        Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=95)
    else:
        Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _nih_label_table(rows: list[dict[str, Any]], edition: str) -> str:
    end = "," if edition == "2017" else ""
    lines = [LABEL_HEADER + end]
    for r in rows:
        lines.append(
            f"{r['image_id']},{'|'.join(sorted(r['labels'].split('|')))},{r['follow_up']},{r['patient_id']},"
            f"{r['age']},{r['sex']},{r['view']},{r['width']},{r['height']},{r['spacing']!r},{r['spacing']!r}{end}"
        )
    return "\n".join(lines) + "\n"


def write_tables(
    config: SynthConfig, rows: list[dict[str, Any]], test_patients: set[int], boxes: Boxes
) -> tuple[int, int]:
    """The layout's tables, the one that says the synth is complete last; (boxes written, test images)."""
    out = config.out
    test = [r["image_id"] for r in rows if r["patient_id"] in test_patients]
    if config.format == "chexpert":
        from cxr.data.synth_chexpert import tables

        written = tables(rows, test_patients, config.seed)
        for name in sorted(written, reverse=True):  # valid.csv, then train.csv
            storage.write_text(storage.join(out, name), written[name])
        return 0, len(test)
    if config.format == "dicom":
        from cxr.data.synth_dicom import labels_table

        storage.write_text(storage.join(out, DICOM_LABELS), labels_table(rows))
        return 0, 0
    box_lines = [BOX_HEADER]
    for r, image_boxes in zip(rows, boxes, strict=True):
        for finding, x, y, w, h in image_boxes:
            label = "Infiltrate" if finding == "Infiltration" else finding  # the real list's spelling
            box_lines.append(f"{r['image_id']},{label},{x:.3f},{y:.3f},{w:.3f},{h:.3f}")
    storage.write_text(storage.join(out, "BBox_List_2017.csv"), "\n".join(box_lines) + "\n")
    train_val = [r["image_id"] for r in rows if r["patient_id"] not in test_patients]
    storage.write_text(storage.join(out, "train_val_list.txt"), "".join(f"{i}\n" for i in train_val))
    storage.write_text(storage.join(out, "test_list.txt"), "".join(f"{i}\n" for i in test))
    storage.write_text(storage.join(out, label_table_name(config)), _nih_label_table(rows, config.edition))
    return sum(len(b) for b in boxes), len(test)
