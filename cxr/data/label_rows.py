"""The label rows every source format's reader produces: their schema, and the table that holds them.

``LABEL_SCHEMA`` is the label part of the metadata contract (DESIGN.md); ingest adds the split, hashes
and shard columns. A finding column is true, false, or null: null means the source does not say (a
finding its format never labels, or an uncertain or blank label its policy leaves out), never negative.
``orig_*`` and ``pixel_spacing_*`` are null where the source's tables do not state them.
``finding_labels`` lists the positive findings in the NIH order (empty: none is positive).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from cxr.data.csv_text import RowError, row_fields
from cxr.data.quarantine import QuarantineRecord, Reason
from cxr.findings import FINDING_COLUMNS, FINDINGS

LABEL_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.int64(), nullable=False),
        pa.field("follow_up", pa.int32(), nullable=False),
        pa.field("age", pa.int16(), nullable=True),  # null where the source does not say (a DICOM header)
        pa.field("sex", pa.string(), nullable=False),  # M, F, or U (unknown; not in NIH)
        pa.field("view", pa.string(), nullable=False),
        pa.field("finding_labels", pa.list_(pa.string()), nullable=False),
        *[pa.field(c, pa.bool_(), nullable=True) for c in FINDING_COLUMNS],
        pa.field("source_format", pa.string(), nullable=False),  # the adapter that read the row: nih, chexpert
        pa.field("orig_width", pa.int32(), nullable=True),
        pa.field("orig_height", pa.int32(), nullable=True),
        pa.field("pixel_spacing_x", pa.float64(), nullable=True),
        pa.field("pixel_spacing_y", pa.float64(), nullable=True),
    ]
)

_ROW_FIELDS = tuple(n for n in LABEL_SCHEMA.names if n != "finding_labels" and n not in FINDING_COLUMNS)
MAX_AGE = 120  # years; the original 2017 table has a few impossible ages (e.g. 414), quarantined as bad_row
_BATCH_ROWS = 8192  # rows held as Python objects at once; all of NIH's 112,120 at once took 150 MB


@dataclass
class LabelTable:
    """The accepted rows (``LABEL_SCHEMA``), the quarantined ones, and what was read.

    ``tables`` are the files read, in order; ``table_starts[k]`` is the index of the first accepted row
    of ``tables[k]``, and ``line_numbers`` each accepted row's line in its file.
    """

    rows: pa.Table
    quarantine: list[QuarantineRecord]
    edition: str  # NIH: "2017" (trailing commas) or "v2020"; other formats: their name
    n_input_rows: int
    tables: tuple[str, ...] = ()
    line_numbers: list[int] = field(default_factory=list)
    table_starts: tuple[int, ...] = (0,)

    def row_uri(self, index: int) -> str:
        """Where accepted row ``index`` came from: ``<table>#line=N``."""
        table = self.tables[bisect.bisect_right(self.table_starts, index) - 1]
        return f"{table}#line={self.line_numbers[index]}"


class RowBatches:
    """Accepted rows gathered into Arrow batches of ``LABEL_SCHEMA`` as they are read."""

    def __init__(self) -> None:
        self._cols: dict[str, list] = {f.name: [] for f in LABEL_SCHEMA}
        self._batches: list[pa.RecordBatch] = []
        self.line_numbers: list[int] = []

    def __len__(self) -> int:
        return len(self.line_numbers)

    def add(self, line: int, row: Mapping[str, Any], labels: Mapping[str, bool | None]) -> None:
        """One row: its fields (not the findings; absent: null) and each finding's label (absent: null)."""
        self.line_numbers.append(line)
        for key in _ROW_FIELDS:
            self._cols[key].append(row.get(key))
        self._cols["finding_labels"].append([f for f in FINDINGS if labels.get(f)])
        for finding, column in zip(FINDINGS, FINDING_COLUMNS, strict=True):
            self._cols[column].append(labels.get(finding))
        if len(self._cols["image_id"]) == _BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        self._batches.append(pa.RecordBatch.from_pydict(self._cols, schema=LABEL_SCHEMA))
        for values in self._cols.values():
            values.clear()

    def table(self) -> pa.Table:
        self._flush()
        return pa.Table.from_batches(self._batches, schema=LABEL_SCHEMA)


Lines = Iterator[tuple[int, str | None, bytes]]  # cxr.data.csv_text.decode_lines after the header
Key = Callable[[list[str]], str]  # a line's fields -> the image id it names (RowError when it names none)
Parse = Callable[[str, list[str]], tuple[Mapping[str, Any], Mapping[str, bool | None]]]  # -> fields, labels


class RowReader:
    """The lines of one or more tables into :class:`RowBatches`, the same way for every format: a line's
    fields (as many as the header's), the image id its ``key`` names, no image named twice, then the
    format's ``parse``; a line that fails any of them is a quarantine record with its reason and where it is
    (``<table>#line=N``): lines read = rows accepted + rows quarantined."""

    def __init__(self) -> None:
        self.rows = RowBatches()
        self.quarantine: list[QuarantineRecord] = []
        self._seen: dict[str, str] = {}
        self._tables: list[str] = []
        self._starts: list[int] = []
        self._lines = 0

    def read(self, table: str, lines: Lines, n_fields: int, key: Key, parse: Parse) -> None:
        self._tables.append(table)
        self._starts.append(len(self.rows))
        for number, text, raw in lines:
            self._lines += 1
            where = f"{table}#line={number}"
            image_id = None
            try:
                fields = row_fields(text, raw, n_fields)
                image_id = key(fields)
                if image_id in self._seen:
                    raise RowError(Reason.DUPLICATE_IMAGE_ID, f"{image_id} already at {self._seen[image_id]}")
                row, labels = parse(image_id, fields)
            except RowError as err:
                self.quarantine.append(QuarantineRecord(where, image_id, err.reason, err.detail))
                continue
            self._seen[image_id] = where
            self.rows.add(number, row, labels)

    def table(self, edition: str) -> LabelTable:
        """Everything read, as a :class:`LabelTable`."""
        return LabelTable(
            self.rows.table(),
            self.quarantine,
            edition,
            self._lines,
            tuple(self._tables),
            self.rows.line_numbers,
            tuple(self._starts) or (0,),
        )
