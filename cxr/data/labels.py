"""Readers for the NIH label files: the label table (both editions), the box list and the split lists.

The label table comes in two editions:

- ``Data_Entry_2017.csv`` (original): every line, the header included, ends in a comma, so a CSV parser
  sees an empty 12th column.
- ``Data_Entry_2017_v2020.csv``: the same 11 columns without the trailing comma.

In both, the bracketed headers ``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]`` are
not quoted, so the comma inside them splits each into two columns. Columns are found by these split
names, so their order does not matter.

A file that cannot be read as a whole (empty, not UTF-8 in its header, a required column missing) raises
:class:`SourceFormatError`. A row that does not parse becomes a quarantine record with a reason and a detail:
rows in = rows accepted + rows quarantined, always. Labels are split on ``|`` and matched exactly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pyarrow as pa

from cxr.data.csv_text import (
    RowError,
    SourceFormatError,
    decode_lines,
    is_safe_name,
    parse_float,
    parse_int,
    read_header,
    split_csv,
)
from cxr.data.label_rows import MAX_AGE, LabelTable, RowBatches
from cxr.data.quarantine import QuarantineRecord, Reason
from cxr.findings import BOX_LABEL_ALIASES, FINDINGS, NO_FINDING

# Logical column -> header fields (after the CSV parser split the bracketed names).
_LABEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "image_id": ("Image Index",),
    "finding_labels": ("Finding Labels",),
    "follow_up": ("Follow-up #",),
    "patient_id": ("Patient ID",),
    "age": ("Patient Age",),
    "sex": ("Patient Gender",),
    "view": ("View Position",),
    "orig_size": ("OriginalImage[Width", "Height]"),
    "pixel_spacing": ("OriginalImagePixelSpacing[x", "y]"),
}

BOX_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("finding", pa.string(), nullable=False),
        pa.field("x", pa.float64(), nullable=False),
        pa.field("y", pa.float64(), nullable=False),
        pa.field("w", pa.float64(), nullable=False),
        pa.field("h", pa.float64(), nullable=False),
    ]
)
"""Bounding boxes in the 1024 px coordinates of the released PNGs."""

_IMAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.png")
_FINDING_INDEX = {f: i for i, f in enumerate(FINDINGS)}


@dataclass
class BoxList:
    rows: pa.Table  # BOX_SCHEMA
    quarantine: list[QuarantineRecord]
    n_input_rows: int


@dataclass
class SplitList:
    image_ids: list[str]
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    n_input_rows: int = 0


def _leading_image_id(line: str) -> str | None:
    """The text before the first comma, if it is a plausible image name (for a row that does not parse)."""
    first = line.split(",", 1)[0].strip()
    return first if _IMAGE_ID.fullmatch(first) else None


def _check_image_id(value: str) -> str:
    if not is_safe_name(value):
        raise RowError(Reason.UNSAFE_PATH, f"image name {value!r} would leave the image folder")
    if not _IMAGE_ID.fullmatch(value):
        raise RowError(Reason.BAD_ROW, f"Image Index {value!r} is not a .png file name")
    return value


def parse_finding_labels(value: str) -> list[str]:
    """Split ``Finding Labels`` on ``|``; exact names only. Returns the findings in NIH order ([] = No Finding)."""
    if value == "":
        raise RowError(Reason.BAD_ROW, "Finding Labels is empty")
    labels = value.split("|")
    unknown = [label for label in labels if label not in _FINDING_INDEX and label != NO_FINDING]
    if unknown:
        raise RowError(Reason.UNKNOWN_LABEL, "unknown label(s): " + ", ".join(repr(u) for u in unknown))
    if len(set(labels)) != len(labels):
        raise RowError(Reason.BAD_ROW, f"repeated label in {value!r}")
    if NO_FINDING in labels:
        if len(labels) > 1:
            raise RowError(Reason.BAD_ROW, f"{NO_FINDING!r} together with findings in {value!r}")
        return []
    return sorted(labels, key=_FINDING_INDEX.__getitem__)


def _locate(header: list[str], wanted: dict[str, tuple[str, ...]], source_uri: str) -> dict[str, list[int]]:
    stripped = [h.strip() for h in header]
    positions: dict[str, list[int]] = {}
    missing = []
    for key, names in wanted.items():
        idx = [stripped.index(n) for n in names if n in stripped]
        if len(idx) != len(names):
            missing.append(",".join(names))
        positions[key] = idx
    if missing:
        raise SourceFormatError(
            f"{source_uri}: missing column(s) {', '.join(repr(m) for m in missing)}; header is {','.join(header)!r}"
        )
    return positions


def _field_count_ok(fields: list[str], n_header: int, trailing_comma: bool) -> bool:
    if len(fields) == n_header:
        return not trailing_comma or fields[-1].strip() == ""
    # The 2017 edition ends every line in a comma; a copy that lost it on some rows is still readable.
    return trailing_comma and len(fields) == n_header - 1


def read_label_table(data: bytes, source_uri: str) -> LabelTable:
    """Parse a label table of either edition (plain or gzip) into normalized rows and quarantine records."""
    decoded = decode_lines(data, source_uri)
    header = read_header(decoded, source_uri)
    trailing_comma = header[-1].strip() == ""
    pos = _locate(header, _LABEL_COLUMNS, source_uri)
    n_header = len(header)

    rows = RowBatches()
    quarantine: list[QuarantineRecord] = []
    seen: dict[str, int] = {}
    n_rows = 0
    for number, text, raw in decoded:
        n_rows += 1
        where = f"{source_uri}#line={number}"
        image_id: str | None = None
        try:
            if text is None:
                raise RowError(Reason.BAD_ROW, f"not UTF-8 text: {raw[:60]!r}")
            try:
                fields = split_csv(text)
            except RowError:
                image_id = _leading_image_id(text) if pos["image_id"][0] == 0 else None
                raise
            image_id = fields[pos["image_id"][0]].strip() if len(fields) > pos["image_id"][0] else None
            if not _field_count_ok(fields, n_header, trailing_comma):
                raise RowError(Reason.BAD_ROW, f"expected {n_header} fields, got {len(fields)}")
            image_id = _check_image_id(fields[pos["image_id"][0]])
            findings = parse_finding_labels(fields[pos["finding_labels"][0]])
            row = {
                "image_id": image_id,
                "patient_id": parse_int("Patient ID", fields[pos["patient_id"][0]], 0, 2**62),
                "follow_up": parse_int("Follow-up #", fields[pos["follow_up"][0]], 0, 2**31 - 1),
                "age": parse_int("Patient Age", fields[pos["age"][0]], 0, MAX_AGE),
                "sex": fields[pos["sex"][0]],
                "view": fields[pos["view"][0]],
                "orig_width": parse_int("OriginalImage Width", fields[pos["orig_size"][0]], 1, 2**31 - 1),
                "orig_height": parse_int("OriginalImage Height", fields[pos["orig_size"][1]], 1, 2**31 - 1),
                "pixel_spacing_x": parse_float("OriginalImagePixelSpacing x", fields[pos["pixel_spacing"][0]]),
                "pixel_spacing_y": parse_float("OriginalImagePixelSpacing y", fields[pos["pixel_spacing"][1]]),
                "source_format": "nih",
            }
            if row["sex"] not in ("M", "F"):
                raise RowError(Reason.BAD_ROW, f"Patient Gender {row['sex']!r} is not M or F")
            if row["view"] not in ("PA", "AP"):
                raise RowError(Reason.BAD_ROW, f"View Position {row['view']!r} is not PA or AP")
            if image_id in seen:
                raise RowError(Reason.DUPLICATE_IMAGE_ID, f"{image_id} already on line {seen[image_id]}")
        except RowError as err:
            quarantine.append(QuarantineRecord(where, image_id or None, err.reason, err.detail))
            continue
        seen[image_id] = number
        present = set(findings)
        rows.add(number, row, {f: f in present for f in FINDINGS})
    edition = "2017" if trailing_comma else "v2020"
    return LabelTable(rows.table(), quarantine, edition, n_rows, (source_uri,), rows.line_numbers)


def read_box_list(data: bytes, source_uri: str) -> BoxList:
    """Parse ``BBox_List_2017.csv``: image, label ("Infiltrate" read as Infiltration), x, y, w, h."""
    lines = decode_lines(data, source_uri)
    header = read_header(lines, source_uri)
    stripped = [h.strip() for h in header]
    if stripped[:3] != ["Image Index", "Finding Label", "Bbox [x"]:
        raise SourceFormatError(
            f"{source_uri}: expected a header starting 'Image Index,Finding Label,Bbox [x,y,w,h]', "
            f"got {','.join(header)!r}"
        )
    cols: dict[str, list] = {f.name: [] for f in BOX_SCHEMA}
    quarantine: list[QuarantineRecord] = []
    n_rows = 0
    for number, text, raw in lines:
        n_rows += 1
        where = f"{source_uri}#line={number}"
        image_id = None
        try:
            if text is None:
                raise RowError(Reason.BAD_ROW, f"not UTF-8 text: {raw[:60]!r}")
            try:
                fields = split_csv(text)
            except RowError:
                image_id = _leading_image_id(text)
                raise
            while fields and fields[-1].strip() == "" and len(fields) > 6:
                fields.pop()  # the header's trailing commas appear on some copies' rows too
            if len(fields) != 6:
                raise RowError(Reason.BAD_ROW, f"expected 6 fields, got {len(fields)}")
            image_id = _check_image_id(fields[0])
            label = BOX_LABEL_ALIASES.get(fields[1], fields[1])
            if label not in _FINDING_INDEX:
                raise RowError(Reason.UNKNOWN_LABEL, f"unknown label {fields[1]!r}")
            x, y = (_coordinate(n, v) for n, v in zip(("x", "y"), fields[2:4], strict=True))
            w, h = (parse_float(n, v) for n, v in zip(("w", "h"), fields[4:6], strict=True))
        except RowError as err:
            quarantine.append(QuarantineRecord(where, image_id, err.reason, err.detail))
            continue
        for key, value in zip(("image_id", "finding", "x", "y", "w", "h"), (image_id, label, x, y, w, h), strict=True):
            cols[key].append(value)
    return BoxList(pa.Table.from_pydict(cols, schema=BOX_SCHEMA), quarantine, n_rows)


def _coordinate(column: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise RowError(Reason.BAD_ROW, f"{column} {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise RowError(Reason.BAD_ROW, f"{column} {value!r} must be a number >= 0")
    return number


def read_split_list(data: bytes, source_uri: str) -> SplitList:
    """Parse ``train_val_list.txt`` or ``test_list.txt``: one image name per line."""
    result = SplitList([])
    seen: set[str] = set()
    for number, text, raw in decode_lines(data, source_uri):
        result.n_input_rows += 1
        where = f"{source_uri}#line={number}"
        name = text.strip() if text is not None else None
        try:
            if name is None:
                raise RowError(Reason.BAD_ROW, f"not UTF-8 text: {raw[:60]!r}")
            _check_image_id(name)
            if name in seen:
                raise RowError(Reason.DUPLICATE_IMAGE_ID, f"{name} listed twice")
        except RowError as err:
            result.quarantine.append(QuarantineRecord(where, name, err.reason, err.detail))
            continue
        seen.add(name)
        result.image_ids.append(name)
    return result
