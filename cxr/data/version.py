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
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from cxr import storage
from cxr.data.accounting import Accounting
from cxr.data.labels import LABEL_SCHEMA
from cxr.digest import canonical_digest
from cxr.records import from_plain

SCHEMA_VERSION = 1

_LABEL_FIELDS = list(LABEL_SCHEMA)
METADATA_SCHEMA = pa.schema(
    [
        *_LABEL_FIELDS[:-4],  # image_id ... the 14 finding columns
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


def _relative(uri: str, root: str) -> str:
    prefix = root.rstrip("/") + "/"
    return uri[len(prefix) :] if uri.startswith(prefix) else uri


def content_digest(
    metadata: pa.Table, boxes: pa.Table, quarantine: pa.Table, sizes: list[int], pipeline_version: int, source_root: str
) -> str:
    """The digest of a version: its tables, shard sizes and pixel pipeline, source URIs made relative."""

    def relative(row: dict[str, Any]) -> dict[str, Any]:
        if "source_uri" in row:
            row["source_uri"] = _relative(row["source_uri"], source_root)
        return row

    header = {"schema_version": SCHEMA_VERSION, "sizes": sorted(sizes), "pixel_pipeline_version": pipeline_version}
    tables = [
        ("metadata", metadata, ["image_id"]),
        ("boxes", boxes, ["image_id", "finding", "x", "y", "w", "h"]),
        ("quarantine", quarantine, ["source_uri", "reason", "detail"]),
    ]
    return canonical_digest(header, tables, relative)


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

    def metadata(self, columns: list[str] | None = None) -> pa.Table:
        return storage.read_parquet(self.file("metadata.parquet"), columns=columns)

    def quarantine(self) -> pa.Table:
        return storage.read_parquet(self.file("quarantine.parquet"))

    def boxes(self) -> pa.Table:
        return storage.read_parquet(self.file("boxes.parquet"))

    @property
    def sizes(self) -> list[int]:
        return list(self.info["sizes"])

    @property
    def accounting(self) -> Accounting:
        return from_plain(Accounting, self.info["accounting"])

    def load_shard(self, size: int, shard: str) -> np.ndarray:
        """One shard as a uint8 array [n, size, size] (read whole; training memory-maps a local copy)."""
        import io

        return np.load(io.BytesIO(storage.read_bytes(self.shard_path(size, shard))), allow_pickle=False)


def read_latest(root: str) -> str | None:
    """The digest ``<root>/LATEST`` names, or None if there is none yet."""
    url = storage.join(root, "LATEST")
    if not storage.exists(url):
        return None
    return storage.read_text(url).strip() or None


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
