"""Quarantine records: every rejected input is kept with a reason, never silently dropped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa


class Reason(StrEnum):
    """Why an input was rejected (the contract in DESIGN.md)."""

    MISSING_IMAGE = "missing_image"  # a label row whose image file does not exist
    UNLABELED_IMAGE = "unlabeled_image"  # an image file without a label row
    UNREADABLE_IMAGE = "unreadable_image"  # not a decodable PNG (empty, truncated, other format)
    BAD_DIMENSIONS = "bad_dimensions"  # decodes, but too small or not 2-D
    DUPLICATE_IMAGE_ID = "duplicate_image_id"  # the same image id seen twice
    UNKNOWN_LABEL = "unknown_label"  # a label that is not exactly one of the 14 findings or "No Finding"
    BAD_ROW = "bad_row"  # a row that does not parse: field count, type, range, encoding
    UNSAFE_PATH = "unsafe_path"  # a name that would leave the source root
    TOO_LARGE = "too_large"  # a decompression bomb or an oversized file
    MALFORMED_ROW = "malformed_row"  # a line the csv parser rejects (a stray CR inside a row, ...)
    FIELD_TOO_LARGE = "field_too_large"  # a field longer than the csv parser's limit (128 KiB)
    PERMISSION_DENIED = "permission_denied"  # the image file (or object) may not be read
    NON_UTF8_NAME = "non_utf8_name"  # a file name that is not UTF-8 (shown with \x escapes)
    SYMLINK = "symlink"  # a symbolic link in the source; never followed
    OVER_MEMORY_BUDGET = "over_memory_budget"  # decoding it would need more memory than one image may use
    DECODE_ERROR = "decode_error"  # the decoder failed in an unexpected way (the exception type is in the detail)
    DECODE_CRASHED = "decode_crashed"  # its worker process died decoding it, in its part and alone (crash or memory)
    ENCRYPTED = "encrypted"  # a zip member stored encrypted (the ingest reads no passwords)
    DAMAGED_ARCHIVE = "damaged_archive"  # a packed archive ends early or is corrupt: what could not be read
    NOT_AN_IMAGE = "not_an_image"  # a DICOM object without an image: a structured report, an RT plan or dose, an ECG
    MULTI_FRAME = "multi_frame"  # a DICOM image of several frames (a cine, a volume): not one radiograph
    COLOUR_IMAGE = "colour_image"  # a DICOM image in colour (RGB, YBR, palette): not a radiograph


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """One rejected input. ``source_uri`` names the file, and for a row the line (``...csv#line=12``)."""

    source_uri: str
    image_id: str | None
    reason: Reason
    detail: str


QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=True),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)


def quarantine_table(records: list[QuarantineRecord]) -> pa.Table:
    """The records as a table with :data:`QUARANTINE_SCHEMA`."""
    return pa.Table.from_pydict(
        {
            "source_uri": [r.source_uri for r in records],
            "image_id": [r.image_id for r in records],
            "reason": [str(r.reason) for r in records],
            "detail": [r.detail for r in records],
        },
        schema=QUARANTINE_SCHEMA,
    )


def count_by_reason(records: Sequence[QuarantineRecord]) -> dict[str, int]:
    """How many records there are per reason, most frequent first."""
    return dict(Counter(str(r.reason) for r in records).most_common())
