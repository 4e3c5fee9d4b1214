"""A source of DICOM files: ``*.dcm`` anywhere under the root, and ``labels.csv`` beside them.

``labels.csv`` names each image by ``Path`` (relative to the root) or by ``SOPInstanceUID``, and labels it
either NIH-style (a ``Finding Labels`` column: findings joined by ``|``, or ``No Finding``; every finding
labelled) or with one column per finding (the 14 findings' names, e.g. ``Effusion``, ``Pleural_Thickening``)
holding 1 / 0 / -1 / blank, read by the label policy (:mod:`cxr.data.label_policy`); a finding without a
column is missing, not negative.

Every ``.dcm`` file is an input. Its header is read when planning (the first :data:`HEADER_BYTES`, or the
whole file when they do not parse; :data:`HEADER_THREADS` at once), by :func:`cxr.data.dicom_decode.read_header`:
a structured report, an RT object, an ECG, a colour or multi-frame image or an unreadable file is
quarantined with its reason, with the row that names it if there is one. From an accepted header come
the row's patient, sex, age, view, size and pixel spacing; the pixels are decoded with the rest of the
ingest. Nothing identifying is kept: the patient is :func:`~cxr.data.dicom_decode.patient_key` of the
Patient ID with the secret salt in ``CXR_PATIENT_SALT`` (an image without a Patient ID is a patient of
its own, keyed by its SOP Instance UID), and no name, birth date or other identifying value is read.
Sex other than M or F is ``U``; a missing View Position is ``UNKNOWN``. Splits are made by patient.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cxr import storage
from cxr.data.csv_text import RowError, SourceFormatError, decode_lines, read_header, relative_path
from cxr.data.decode import DecodeLimits, ImageRejected
from cxr.data.label_policy import LabelPolicy, parse_value
from cxr.data.label_rows import LabelTable, RowReader
from cxr.data.labels import parse_finding_labels
from cxr.data.quarantine import QuarantineRecord, Reason
from cxr.data.source import SourceLayout, SourceTables
from cxr.findings import FINDINGS

if TYPE_CHECKING:
    from cxr.data.dicom_decode import DicomHeader

FORMAT = "dicom"
LABELS = "labels.csv"  # recognises the layout (cxr.data.adapters); pydicom is imported only to read one
SUFFIX = ".dcm"
HEADER_BYTES = 256 * 2**10  # read first; a header longer than this is read whole
HEADER_THREADS = 16
KEYS = ("Path", "SOPInstanceUID")


@dataclass(frozen=True)
class _Read:
    """One file's header, or why it is quarantined."""

    header: DicomHeader | None
    rejected: ImageRejected | None


def _read_one(url: str, size: int, limits: DecodeLimits) -> _Read:
    from cxr.data.dicom_decode import read_header as read_dicom_header

    try:
        data = storage.read_range(url, 0, min(size, HEADER_BYTES)) if size > HEADER_BYTES else storage.read_bytes(url)
        try:
            return _Read(read_dicom_header(data, limits), None)
        except ImageRejected as err:
            if size <= HEADER_BYTES or err.reason != Reason.UNREADABLE_IMAGE:
                raise
            return _Read(read_dicom_header(storage.read_bytes(url), limits), None)  # a header longer than the start
    except ImageRejected as err:
        return _Read(None, err)
    except PermissionError as err:
        return _Read(None, ImageRejected(Reason.PERMISSION_DENIED, str(err)))


def discover(root: str) -> tuple[SourceLayout, dict[str, dict]]:
    """The label table and every ``.dcm`` file under ``root`` (by path under the root), with listing details."""
    present = {posixpath.basename(p) for p in storage.list_files(root)}
    if LABELS not in present:
        raise SourceFormatError(f"{root}: no {LABELS} beside the DICOM files")
    prefix = len(storage.absolute(root).rstrip("/")) + 1  # the listing gives absolute paths
    details = {
        e["url"]: e for e in storage.list_files_detail(root, recursive=True) if e["url"].lower().endswith(SUFFIX)
    }
    images = {url[prefix:]: url for url in details}
    label_table = storage.join(root, LABELS)
    return SourceLayout(root, label_table, None, None, None, images, file_details=details), details


def _label_columns(header: list[str], table: str) -> tuple[str, dict[str, int]]:
    """The key column, and where each finding's label is (``Finding Labels``: one column for all)."""
    keys = [k for k in KEYS if k in header]
    if len(keys) != 1:
        raise SourceFormatError(f"{table}: name each image by exactly one of the columns {' or '.join(KEYS)}")
    if "Finding Labels" in header:
        return keys[0], {"Finding Labels": header.index("Finding Labels")}
    by_name = {f.lower().replace("_", " "): f for f in FINDINGS}
    columns = {
        by_name[h.lower().replace("_", " ")]: i for i, h in enumerate(header) if h.lower().replace("_", " ") in by_name
    }
    if not columns:
        raise SourceFormatError(f"{table}: no label column: give 'Finding Labels' or a column per finding")
    return keys[0], columns


def _labels(fields: list[str], columns: dict[str, int], policy: LabelPolicy) -> dict[str, bool | None]:
    if "Finding Labels" in columns:
        present = set(parse_finding_labels(fields[columns["Finding Labels"]]))
        return {f: f in present for f in FINDINGS}
    return {f: policy.label(parse_value(f, fields[i])) for f, i in columns.items()}


def read_dicom(root: str, policy: LabelPolicy, limits: DecodeLimits) -> SourceTables:
    """Discover a DICOM source, read every file's header and the label table, and match them."""
    from cxr.data.dicom_decode import salt_from_env

    salt = salt_from_env()  # before anything is read: without it no patient may be keyed
    layout, details = discover(root)
    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        reads = dict(
            zip(
                layout.image_files,
                pool.map(lambda u: _read_one(u, details[u]["size"], limits), layout.image_files.values()),
                strict=True,
            )
        )
    by_uid: dict[str, str] = {}
    for path in sorted(reads):
        read = reads[path]
        uid = read.header.sop_instance_uid if read.header else None
        if uid and uid in by_uid:
            detail = f"SOP Instance UID also in {by_uid[uid]}"
            reads[path] = _Read(None, ImageRejected(Reason.DUPLICATE_IMAGE_ID, detail))
        elif uid:
            by_uid[uid] = path
    labels = _read_rows(layout, reads, by_uid, policy, salt)
    named = set(labels.rows["image_id"].to_pylist()) | {q.image_id for q in labels.quarantine if q.image_id}
    for path, read in sorted(reads.items()):
        if read.rejected is not None:
            del layout.image_files[path]
            if path not in named:  # a file no row names is an input of its own
                record = QuarantineRecord(
                    layout.root.rstrip("/") + "/" + path, path, read.rejected.reason, read.rejected.detail
                )
                layout.quarantine.append(record)
    return SourceTables(layout, labels, None, None, None)


def _read_rows(
    layout: SourceLayout, reads: dict[str, _Read], by_uid: dict[str, str], policy: LabelPolicy, salt: str
) -> LabelTable:
    table = layout.label_table
    lines = decode_lines(layout.read(table), table)
    header = [h.strip() for h in read_header(lines, table)]
    key, columns = _label_columns(header, table)
    at = header.index(key)

    def image_id(fields: list[str]) -> str:
        value = fields[at].strip()
        return by_uid.get(value, value) if key == "SOPInstanceUID" else relative_path(value)

    def parse(image: str, fields: list[str]) -> tuple[dict, dict]:
        labels = _labels(fields, columns, policy)
        read = reads.get(image)
        if read is not None and read.rejected is not None:
            raise RowError(read.rejected.reason, f"{image}: {read.rejected.detail}")
        return _row(image, read.header if read else None, salt), labels

    reader = RowReader()
    reader.read(table, lines, len(header), image_id, parse)
    return reader.table(FORMAT)


def _row(image_id: str, header: DicomHeader | None, salt: str) -> dict:
    """A row's fields from its file's header (a row whose file is missing: placeholders, never published)."""
    from cxr.data.dicom_decode import patient_key

    if header is None:
        return {
            "image_id": image_id,
            "patient_id": 0,
            "follow_up": 0,
            "sex": "U",
            "view": "UNKNOWN",
            "source_format": FORMAT,
        }
    patient = header.patient_id or f"sop:{header.sop_instance_uid or image_id}"
    spacing = header.pixel_spacing or (None, None)
    return {
        "image_id": image_id,
        "patient_id": patient_key(patient, salt),
        "follow_up": 0,
        "age": header.age,
        "sex": header.sex or "U",
        "view": header.view or "UNKNOWN",
        "source_format": FORMAT,
        "orig_width": header.columns,
        "orig_height": header.rows,
        "pixel_spacing_x": spacing[0],
        "pixel_spacing_y": spacing[1],
    }
