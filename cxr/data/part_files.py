"""An ingest's parts on storage (``<out>/.work/parts/<key>/``): which can be trusted, which are idle.

A part is finished when its ``records.parquet`` (written after its shards) records the shards' hashes
and every shard it names exists with the recorded size; anything less (records without a shard, a
part written before hashes were recorded) is decoded again, never trusted. An ingest that reuses a
finished part writes an ``in-use`` mark into it, so a part's newest file tells when an ingest last
needed it. Cleanup (publish, ``cxr gc``) removes only parts idle for :data:`PART_IDLE_S`: a part an
ingest in flight is writing or has reused is never removed under it.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from cxr import storage
from cxr.data.integrity import FileHash, part_hashes

IN_USE = "in-use"  # rewritten by every ingest that reuses the part
PART_IDLE_S = 24 * 3600.0  # no write or reuse for this long: no ingest in flight needs the part


class PartFiles(Protocol):
    """Where a part's files are (:class:`cxr.data.parts.PartSpec` is one)."""

    key: str
    sizes: tuple[int, ...]

    @property
    def records_url(self) -> str: ...

    def shard_url(self, size: int) -> str: ...


class UnfinishedPartError(FileNotFoundError):
    """A part publish needs is missing or incomplete: rerun the ingest, which decodes it again."""


def parts_root(out: str) -> str:
    """The folder holding an output's parts."""
    return storage.join(out, ".work", "parts")


@dataclass(frozen=True)
class FinishedPart:
    records: pa.Table
    hashes: Mapping[int, FileHash]  # by shard size; {} when no image of the part was accepted


def _problem(part: PartFiles, records: pa.Table, sizes: Mapping[str, int] | None) -> str | None:
    """Why a part with records cannot be trusted, or None. ``sizes``: a listing (URL -> bytes), if at hand."""
    hashes = part_hashes(records.schema)
    if hashes is None:
        return "its records.parquet records no shard hashes (written by an older version of the ingest)"
    accepted = records["reason"].null_count  # a null reason: accepted
    expected = set(part.sizes) if accepted else set()
    if set(hashes) != expected:
        return f"its records name shards at {sorted(hashes)} px, it needs {sorted(expected)}"
    for size, recorded in hashes.items():
        url = part.shard_url(size)
        actual = sizes.get(url) if sizes is not None else (storage.size(url) if storage.exists(url) else None)
        if actual is None:
            return f"its shard {url} is missing"
        if actual != recorded.bytes:
            return f"its shard {url} has {actual} bytes, its records say {recorded.bytes}"
    return None


def reuse_finished_part(part: PartFiles) -> bool:
    """Whether a part is finished and can be trusted; if so, mark it in use by this ingest."""
    if not storage.exists(part.records_url):
        return False
    if _problem(part, storage.read_parquet(part.records_url), None) is not None:
        return False
    mark_in_use(part)
    return True


def finished_keys(parts: Iterable[PartFiles], out: str) -> set[str]:
    """The keys of the parts that are finished and can be trusted (nothing marked: a count to report)."""
    listing = {e["url"]: e["size"] for e in storage.list_files_detail(parts_root(out), recursive=True)}
    done = set()
    for part in parts:
        if part.records_url not in listing:
            continue
        try:
            if _problem(part, storage.read_parquet(part.records_url), listing) is None:
                done.add(part.key)
        except FileNotFoundError:
            continue
    return done


def mark_in_use(part: PartFiles) -> None:
    """Record that an ingest needs this part now (cleanup leaves it alone for :data:`PART_IDLE_S`)."""
    folder = posixpath.dirname(part.records_url)
    storage.write_text(storage.join(folder, IN_USE), dt.datetime.now(dt.UTC).isoformat() + "\n")


def read_finished_part(part: PartFiles, listing: Mapping[str, int] | None = None) -> FinishedPart:
    """A part's records and shard hashes, checked; :class:`UnfinishedPartError` names what is wrong."""
    try:
        records = storage.read_parquet(part.records_url)
    except FileNotFoundError:
        raise UnfinishedPartError(
            f"part {part.key}: {part.records_url} is missing (the part was removed or never finished); "
            "rerun the ingest to decode it again"
        ) from None
    problem = _problem(part, records, listing)
    if problem:
        raise UnfinishedPartError(f"part {part.key}: {problem}; rerun the ingest to decode it again")
    return FinishedPart(records, part_hashes(records.schema) or {})


@dataclass(frozen=True)
class PartFolder:
    """A part folder as a listing shows it: when it was last written or reused, and its size."""

    key: str
    url: str
    modified: float  # newest file, seconds since the epoch
    bytes: int
    files: int


def part_folders(out: str, listing: Iterable[Mapping[str, Any]] | None = None) -> list[PartFolder]:
    """Every part folder under ``out`` (``listing``: a recursive :func:`storage.list_files_detail` of it)."""
    root = parts_root(out)
    entries = storage.list_files_detail(root, recursive=True) if listing is None else listing
    prefix = root.rstrip("/") + "/"
    found: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        if entry["url"].startswith(prefix) and "/" in entry["url"][len(prefix) :]:
            found.setdefault(entry["url"][len(prefix) :].split("/", 1)[0], []).append(entry)
    return [
        PartFolder(
            key, storage.join(root, key), max(e["modified"] for e in files), sum(e["size"] for e in files), len(files)
        )
        for key, files in sorted(found.items())
    ]


def idle_parts(
    folders: Iterable[PartFolder], keep: set[str], now: float, idle_s: float = PART_IDLE_S
) -> list[PartFolder]:
    """The part folders that may be removed: not in ``keep`` and untouched for ``idle_s``."""
    return [f for f in folders if f.key not in keep and now - f.modified >= idle_s]
