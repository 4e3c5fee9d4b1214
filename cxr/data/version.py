"""A dataset version: the folder ingest writes, its schema, its digest, and ``LATEST``.

```
<out>/<digest>/            digest = sha256 over the canonical content, first 16 hex chars
  metadata.parquet         one row per accepted image (METADATA_SCHEMA)
  quarantine.parquet       one row per rejected input, with a reason
  boxes.parquet            image_id, finding, x, y, w, h (1024 px coordinates)
  shards/<size>/<shard>.npy  uint8 [n, size, size]; metadata rows point at (shard, shard_index)
  dataset.json             digest, counts, source, sizes, schema version, created, code version
<out>/LATEST               the digest of the newest complete version, written last
```

The digest covers the metadata, boxes and quarantine tables (sorted, with source URIs made relative
to the source root, so the same archive on disk or on S3 gives the same digest), the shard sizes and
the pixel pipeline version. It does not cover ``created`` or where the source was.

Every file a reader uses is checked against the sha256 ``dataset.json`` records for it
(:mod:`cxr.data.integrity`): a table on every read, a shard when a process first reads it; versions
written before those records existed are read unchecked.

``LATEST`` names the version whose source was observed last: each publish carries the time its plan
listed the source (``source_observed_at``), and :func:`advance_latest` moves ``LATEST`` by
compare-and-swap only to a source observed later than the one it names, so a slow ingest of an older
snapshot never wins over a newer one. ``<out>/.latest.json`` keeps that time for the version ``LATEST``
names (a version can be published again from a later snapshot, e.g. an archive put back as it was).
Clocks of the machines that plan ingests into one output must agree (NTP).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import posixpath
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from cxr import storage, storage_cas
from cxr.data.accounting import Accounting
from cxr.data.integrity import FileHash, Integrity, IntegrityError, verify_bytes
from cxr.data.label_rows import LABEL_SCHEMA
from cxr.digest import canonical_digest
from cxr.records import from_plain

SCHEMA_VERSION = 2  # 2: source_format; findings nullable (missing); orig_* and pixel spacing nullable

_LABEL_FIELDS = list(LABEL_SCHEMA)
METADATA_SCHEMA = pa.schema(
    [
        *_LABEL_FIELDS[:-4],  # image_id ... the 14 finding columns, source_format
        pa.field("split", pa.string(), nullable=False),
        *_LABEL_FIELDS[-4:],  # orig_width, orig_height, pixel_spacing_x, pixel_spacing_y
        pa.field("png_width", pa.int32(), nullable=False),  # the decoded file's size (NIH: 1024)
        pa.field("png_height", pa.int32(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),  # of the source file's bytes
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),  # file name stem under shards/<size>/
        pa.field("shard_index", pa.int32(), nullable=False),
    ]
)
"""DESIGN.md's metadata contract, plus ``png_width``/``png_height`` (needed to scale boxes)."""


def shard_url(version_path: str, size: int, shard: str) -> str:
    """Where a shard of a version lives: ``<version>/shards/<size>/<shard>.npy``."""
    return storage.join(version_path, "shards", str(size), f"{shard}.npy")


class DatasetNotFoundError(FileNotFoundError):
    """No complete dataset version at the given place."""


PLACEMENT_COLUMNS = ("source_uri", "shard", "shard_index")  # where an image came from and where it is kept
DIGEST_RULE = 2  # 2: placement left out, so packed and unpacked sources give one digest (1: placement hashed)


def _location_key(uri: str, root: str) -> str:
    """A quarantined input without an image id, named without its source's place: a path under the root, or
    the member name of an archive, keeping a ``#line=N`` fragment."""
    path, _, fragment = uri.partition("#")
    if path.startswith(("zip://", "tar://")) and "::" in path:
        path = path.split("://", 1)[1].split("::", 1)[0]
    else:
        prefix = root.rstrip("/") + "/"
        path = path[len(prefix) :] if path.startswith(prefix) else path
    return f"{path}#{fragment}" if fragment else path


def content_digest(
    metadata: pa.Table, boxes: pa.Table, quarantine: pa.Table, sizes: list[int], pipeline_version: int, source_root: str
) -> str:
    """The digest of a version: what its images are, not where they came from or where they are kept.

    Hashed: the metadata without :data:`PLACEMENT_COLUMNS` (ids, labels, splits, pixel sha256s, sizes),
    the boxes, and each quarantined input as (image id, or its place under the root when it has none;
    reason); the shard sizes and the pixel pipeline. So the same images give the same digest whether they
    came in ``.tar.gz`` archives, a zip or folders, from any place, and whatever the shards' layout.
    """
    keys = [r["image_id"] or _location_key(r["source_uri"], source_root) for r in quarantine.to_pylist()]
    inputs = pa.table({"input": pa.array(keys, pa.string()), "reason": quarantine["reason"]})
    header = {
        "schema_version": SCHEMA_VERSION,
        "digest_rule": DIGEST_RULE,
        "sizes": sorted(sizes),
        "pixel_pipeline_version": pipeline_version,
    }
    tables = [
        ("metadata", metadata.drop_columns([c for c in PLACEMENT_COLUMNS if c in metadata.column_names]), ["image_id"]),
        ("boxes", boxes, ["image_id", "finding", "x", "y", "w", "h"]),
        ("quarantine", inputs, ["input", "reason"]),
    ]
    return canonical_digest(header, tables)


@dataclass(frozen=True)
class DatasetVersion:
    """A complete version folder and its ``dataset.json``."""

    root: str  # the <out> folder
    digest: str
    info: dict[str, Any]

    @property
    def path(self) -> str:
        return storage.join(self.root, self.digest)

    def file(self, name: str) -> str:
        return storage.join(self.path, name)

    def shard_path(self, size: int, shard: str) -> str:
        return shard_url(self.path, size, shard)

    @cached_property
    def integrity(self) -> Integrity | None:
        """The recorded hashes of the version's files, or None for a version written before them."""
        plain = self.info.get("integrity")
        return None if plain is None else Integrity.parse(plain)

    def read_file(self, name: str) -> bytes:
        """A table file of the version, checked against its recorded hash."""
        url = self.file(name)
        data = storage.read_bytes(url)
        if self.integrity is not None:
            expected = self.integrity.files.get(name)
            if expected is None:
                raise IntegrityError(url, "dataset.json records no hash for this file")
            verify_bytes(url, data, expected)
        return data

    def verify_file(self, name: str) -> str:
        """Check a table file against its recorded hash (for readers that read it by URL); its URL."""
        self.read_file(name)
        return self.file(name)

    def metadata(self, columns: list[str] | None = None) -> pa.Table:
        """The metadata table (``columns`` only, if given); a version of schema 1 reads as NIH-format rows."""
        wanted = columns
        old = "source_format" not in self.schema_names
        if old and columns is not None:
            columns = [c for c in columns if c != "source_format"]
        table = storage.parquet_table(self.read_file("metadata.parquet"), columns)
        if old and (wanted is None or "source_format" in wanted):
            table = table.append_column("source_format", pa.array(["nih"] * table.num_rows, pa.string()))
            if wanted is not None:
                table = table.select(wanted)
        return table

    @cached_property
    def schema_names(self) -> tuple[str, ...]:
        """The metadata's column names, from ``dataset.json``'s schema version (schema 1 had no source_format)."""
        if self.info.get("schema_version", 1) >= 2:
            return tuple(METADATA_SCHEMA.names)
        return tuple(n for n in METADATA_SCHEMA.names if n != "source_format")

    def quarantine(self) -> pa.Table:
        return storage.parquet_table(self.read_file("quarantine.parquet"))

    def boxes(self) -> pa.Table:
        return storage.parquet_table(self.read_file("boxes.parquet"))

    @property
    def sizes(self) -> list[int]:
        return list(self.info["sizes"])

    @property
    def accounting(self) -> Accounting:
        return from_plain(Accounting, self.info["accounting"])

    def shard_hash(self, size: int, shard: str) -> FileHash | None:
        """What a shard's bytes must be; None for a version written before shard hashes."""
        if self.integrity is None:
            return None
        expected = self.integrity.shard(size, shard)
        if expected is None:
            raise IntegrityError(self.shard_path(size, shard), "dataset.json records no such shard")
        return expected

    def load_shard(self, size: int, shard: str) -> np.ndarray:
        """One shard as a uint8 array [n, size, size], read whole and checked (training memory-maps a local copy)."""
        url = self.shard_path(size, shard)
        data = storage.read_bytes(url)
        expected = self.shard_hash(size, shard)
        if expected is not None:
            verify_bytes(url, data, expected)
        return np.load(io.BytesIO(data), allow_pickle=False)

    @property
    def observed_at(self) -> dt.datetime:
        """When the source of this version was first listed (older versions: when they were created)."""
        return _when(self.info.get("source_observed_at") or self.info["created"])


LATEST = "LATEST"
_LATEST_RECORD = ".latest.json"  # {"digest", "observed_at"} of the publish that last moved LATEST


def read_latest(root: str) -> str | None:
    """The digest ``<root>/LATEST`` names, or None if there is none yet."""
    url = storage.join(root, LATEST)
    if not storage.exists(url):
        return None
    return storage.read_text(url).strip() or None


def observed_now() -> str:
    """The time a plan observes its source (UTC, microseconds): what orders versions for ``LATEST``."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _when(stamp: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(stamp)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _recorded_observation(root: str, digest: str) -> dt.datetime | None:
    """When the source of version ``digest`` was last observed, or None if there is no such version."""
    try:
        record = json.loads(storage.read_text(storage.join(root, _LATEST_RECORD)))
    except (FileNotFoundError, ValueError):
        record = {}
    if record.get("digest") == digest and record.get("observed_at"):
        return _when(record["observed_at"])
    try:
        return open_version(storage.join(root, digest)).observed_at
    except FileNotFoundError:
        return None


def advance_latest(root: str, digest: str, observed_at: str, attempts: int = 20) -> bool:
    """Point ``LATEST`` at ``digest`` if its source was observed after the one ``LATEST`` names.

    Compare-and-swap: a change of ``LATEST`` between reading and writing it is seen, and decided again.
    Returns whether ``LATEST`` names ``digest`` afterwards.
    """
    url, record_url = storage.join(root, LATEST), storage.join(root, _LATEST_RECORD)
    when = _when(observed_at)
    record = (json.dumps({"digest": digest, "observed_at": observed_at}) + "\n").encode()
    for _ in range(attempts):
        current = storage_cas.read_versioned(url)
        named = current.data.decode().strip() if current else None
        previous = _recorded_observation(root, named) if named else None
        if named == digest:
            if previous is None or previous < when:
                storage.write_bytes(record_url, record, durable=True)
            return True
        if previous is not None and previous >= when:
            return False  # LATEST names a source observed later: ours is the older snapshot
        storage.write_bytes(record_url, record, durable=True)
        if storage_cas.replace_if(url, f"{digest}\n".encode(), current.token if current else None, durable=True):
            return True
    raise storage.StorageError(f"{url} kept changing: {attempts} compare-and-swap attempts failed")


def open_version(url: str) -> DatasetVersion:
    """A dataset root (meaning its LATEST) or a version folder, opened and checked for completeness."""
    url = url.rstrip("/") if storage.is_remote(url) else url
    if storage.exists(storage.join(url, "dataset.json")):
        root, digest = posixpath.split(url.rstrip("/")) if storage.is_remote(url) else _split_local(url)
    else:
        digest = read_latest(url)
        if digest is None:
            raise DatasetNotFoundError(f"{url}: neither a dataset version (no dataset.json) nor a root with LATEST")
        root = url
    info_url = storage.join(root, digest, "dataset.json")
    if not storage.exists(info_url):
        raise DatasetNotFoundError(f"{url}: version {digest} has no dataset.json (incomplete)")
    info = json.loads(storage.read_text(info_url))
    if info.get("digest") != digest:
        raise DatasetNotFoundError(f"{info_url} says digest {info.get('digest')!r}, its folder is {digest!r}")
    return DatasetVersion(root=root, digest=digest, info=info)


def _split_local(url: str) -> tuple[str, str]:
    import os

    path = os.path.abspath(url)
    return os.path.dirname(path), os.path.basename(path)
