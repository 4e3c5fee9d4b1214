"""Reading the text tables of a source: lines (plain or gzip, UTF-8), CSV fields, and typed values.

Shared by every source format's readers (:mod:`cxr.data.labels` for NIH, :mod:`cxr.data.chexpert_labels`).
A table that cannot be read as a whole raises :class:`SourceFormatError`; a row that does not parse raises
:class:`RowError`, which the reader turns into a quarantine record: rows in = rows accepted + quarantined.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Iterator

from cxr.data.quarantine import Reason


class SourceFormatError(ValueError):
    """A source table that cannot be read as a whole: empty, wrongly encoded, or missing a column."""


class RowError(Exception):
    """A row that does not parse: it becomes a quarantine record with this reason and detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def decode_lines(data: bytes, source_uri: str) -> Iterator[tuple[int, str | None, bytes]]:
    """Yield (line number, text or None if not UTF-8, raw bytes) for each non-empty line."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise SourceFormatError(f"{source_uri}: UTF-16 encoded; convert it to UTF-8")
    if data[:3] == b"\xef\xbb\xbf":
        data = data[3:]
    start, number = 0, 0
    while start <= len(data):  # one line at a time: splitting all at once held every line twice (NIH: 15 MB)
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        raw, start, number = data[start:end].rstrip(b"\r"), end + 1, number + 1
        if not raw:
            continue
        try:
            yield number, raw.decode("utf-8"), raw
        except UnicodeDecodeError:
            yield number, None, raw


def split_csv(line: str) -> list[str]:
    """One line's fields; a line the csv module rejects raises :class:`RowError` with the reason."""
    try:
        return next(csv.reader([line]))
    except csv.Error as err:
        # csv's own message, stable across CPython versions: "field larger than field limit (131072)"
        if "field larger than field limit" in str(err):
            limit = csv.field_size_limit()
            raise RowError(Reason.FIELD_TOO_LARGE, f"a field is longer than {limit} characters") from None
        if "\r" in line:
            raise RowError(Reason.MALFORMED_ROW, "a carriage return (CR) inside an unquoted field") from None
        raise RowError(Reason.MALFORMED_ROW, f"the csv parser rejects the line: {err}") from None


def is_safe_name(name: str) -> bool:
    return not ("/" in name or "\\" in name or ".." in name or name.startswith(".") or "\x00" in name)


def parse_int(column: str, value: str, lo: int, hi: int) -> int:
    text = value.strip()
    if column == "Patient Age" and text[-1:] in ("Y", "y"):  # some copies write 058Y
        text = text[:-1]
    try:
        number = int(text)
    except ValueError:
        raise RowError(Reason.BAD_ROW, f"{column} {value!r} is not an integer") from None
    if not lo <= number <= hi:
        raise RowError(Reason.BAD_ROW, f"{column} {number} is outside [{lo}, {hi}]")
    return number


def parse_float(column: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise RowError(Reason.BAD_ROW, f"{column} {value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise RowError(Reason.BAD_ROW, f"{column} {value!r} must be a positive number")
    return number


def read_header(lines: Iterator[tuple[int, str | None, bytes]], source_uri: str) -> list[str]:
    try:
        _, text, raw = next(lines)
    except StopIteration:
        raise SourceFormatError(f"{source_uri}: the file is empty") from None
    if text is None:
        raise SourceFormatError(f"{source_uri}: the header is not UTF-8 text: {raw[:60]!r}")
    try:
        return split_csv(text)
    except RowError as err:
        raise SourceFormatError(f"{source_uri}: the header does not parse: {err.detail}") from None


def row_fields(text: str | None, raw: bytes, n_fields: int) -> list[str]:
    """A row's fields: :class:`RowError` when the line is not UTF-8 text, does not parse, or has another number
    of fields than the header."""
    if text is None:
        raise RowError(Reason.BAD_ROW, f"not UTF-8 text: {raw[:60]!r}")
    fields = split_csv(text)
    if len(fields) != n_fields:
        raise RowError(Reason.BAD_ROW, f"expected {n_fields} fields, got {len(fields)}")
    return fields


def relative_path(value: str, column: str = "Path") -> str:
    """A path under the source root, ``/``-separated; :class:`RowError` (``unsafe_path``) when it would leave it."""
    parts = value.strip().replace("\\", "/").split("/")
    if any(p in ("", ".", "..") or "\x00" in p for p in parts):
        raise RowError(Reason.UNSAFE_PATH, f"{column} {value!r} would leave the source folder")
    return "/".join(parts)
