"""Integrity of a dataset version: the sha256 and size of every file it is read from, checked on read.

``dataset.json`` (the version's completion marker, written last) records the hash of
``metadata.parquet``, ``quarantine.parquet``, ``boxes.parquet`` and of every shard. Readers check a
file against its record the first time they read it and raise :class:`IntegrityError`, which names the
file, on any difference. The records are outside the dataset digest (the digest is over the content,
these are over its bytes), so adding them changed no digest.

A part (``.work/parts/<key>/``) records its shards' hashes in the schema metadata of its
``records.parquet``, written after the shards; that is what lets a later ingest trust, or refuse, a
finished part (:mod:`cxr.data.part_files`), and what the version's shard records are copied from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa

from cxr.records import from_plain, to_plain

PART_HASHES_KEY = b"cxr.shard_hashes"  # schema metadata of a part's records.parquet: {size: FileHash}


@dataclass(frozen=True)
class FileHash:
    """What a file's bytes must be: their sha256 (hex) and their length."""

    sha256: str
    bytes: int

    @classmethod
    def of(cls, data: bytes) -> FileHash:
        return cls(hashlib.sha256(data).hexdigest(), len(data))


@dataclass(frozen=True)
class Integrity:
    """``dataset.json["integrity"]``: the version's tables by file name, its shards by size and name."""

    files: Mapping[str, FileHash]
    shards: Mapping[str, Mapping[str, FileHash]]  # str(size) -> shard name -> hash

    def shard(self, size: int, name: str) -> FileHash | None:
        return self.shards.get(str(size), {}).get(name)

    @classmethod
    def parse(cls, plain: object) -> Integrity:
        return from_plain(cls, plain)

    def plain(self) -> object:
        return to_plain(self)


class IntegrityError(ValueError):
    """A file's bytes differ from what the version (or the manifest) recorded for it."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"{url}: {detail}")
        self.url = url


def _compare(url: str, actual: FileHash, expected: FileHash) -> None:
    if actual.bytes != expected.bytes:
        raise IntegrityError(url, f"{actual.bytes} bytes, the version records {expected.bytes}: changed or truncated")
    if actual.sha256 != expected.sha256:
        raise IntegrityError(
            url, f"sha256 {actual.sha256[:16]}..., the version records {expected.sha256[:16]}...: corrupt"
        )


def verify_bytes(url: str, data: bytes, expected: FileHash) -> None:
    """Raise :class:`IntegrityError` naming ``url`` unless ``data`` is what ``expected`` records."""
    _compare(url, FileHash.of(data), expected)


def hash_file(path: str) -> FileHash:
    """The hash of a local file, read in blocks (shards can be large)."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        return FileHash(digest.hexdigest(), f.tell())


def verify_file(path: str, expected: FileHash) -> None:
    """Like :func:`verify_bytes` for a local file, without holding it in memory."""
    _compare(path, hash_file(path), expected)


def with_part_hashes(table: pa.Table, hashes: Mapping[int, FileHash]) -> pa.Table:
    """A part's records table carrying its shards' hashes (``{}``: a part with no accepted image)."""
    plain = {str(size): to_plain(h) for size, h in sorted(hashes.items())}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), PART_HASHES_KEY: json.dumps(plain)})


def part_hashes(schema: pa.Schema) -> dict[int, FileHash] | None:
    """The shard hashes a part's records recorded, or None for a part written without them."""
    raw = (schema.metadata or {}).get(PART_HASHES_KEY)
    if raw is None:
        return None
    return {int(size): from_plain(FileHash, h) for size, h in json.loads(raw).items()}
