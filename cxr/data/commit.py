"""Writing a dataset version into its output, safely beside other ingests and ``cxr gc``.

1. Shards are copied from the parts into ``<out>/<digest>/shards/`` outside the lock (bytes of one
   digest are the same whoever copies them; a copy already there with the recorded size is kept).
2. Under the output's lock (:mod:`cxr.data.lock`): if ``dataset.json`` exists the version is done;
   else the shards are checked again (a cleanup may have run), the tables written, and
   ``dataset.json`` (with every file's hash) created only if absent, durably: it marks the version
   complete. Then ``LATEST`` moves forward by compare-and-swap (:func:`advance_latest`), and parts no
   ingest has written or reused for :data:`PART_IDLE_S` are removed, except those of the version
   ``LATEST`` names (the next ingest of a grown archive reuses them).
3. A failure before ``dataset.json`` removes the incomplete version folder (under the lock), so a
   full disk or a lost store leaves no version, and ``LATEST`` unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from cxr import storage, storage_cas
from cxr.data.integrity import FileHash, Integrity
from cxr.data.lock import Held, store_lock
from cxr.data.part_files import idle_parts, part_folders
from cxr.data.version import DatasetVersion, advance_latest, open_version, read_latest, shard_url

log = logging.getLogger(__name__)
TABLES = ("metadata.parquet", "quarantine.parquet", "boxes.parquet")


@dataclass(frozen=True)
class ShardSource:
    """A shard of the new version and the part file it is copied from."""

    size: int
    name: str
    source: str
    hash: FileHash


@dataclass(frozen=True)
class VersionDraft:
    """Everything a version is made of, before it is written."""

    out: str
    digest: str
    tables: Mapping[str, pa.Table]  # by file name: TABLES
    shards: tuple[ShardSource, ...]
    info: Mapping[str, Any]  # dataset.json, less its integrity records (added here)
    observed_at: str  # when the plan listed the source: orders versions for LATEST
    parts: tuple[str, ...]  # the keys of the parts it was assembled from

    @property
    def path(self) -> str:
        return storage.join(self.out, self.digest)


@dataclass(frozen=True)
class Committed:
    version: DatasetVersion
    created: bool  # False: the version existed (another ingest, or an earlier run, made it)
    latest: bool  # whether LATEST names it now (False: LATEST names a source observed later)


def _present(draft: VersionDraft) -> dict[str, int]:
    return {e["url"]: e["size"] for e in storage.list_files_detail(storage.join(draft.path, "shards"), recursive=True)}


def _copy_shards(draft: VersionDraft) -> None:
    """Copy every shard not yet in the version folder with its recorded size."""
    present = _present(draft)
    for shard in draft.shards:
        target = shard_url(draft.path, shard.size, shard.name)
        if present.get(target) != shard.hash.bytes:
            storage.copy(shard.source, target, immutable=True)  # part shards are replaced, never rewritten


def _write(draft: VersionDraft, held: Held) -> None:
    _copy_shards(draft)  # again, under the lock: a cleanup may have removed a copy since
    files = {}
    for name in TABLES:
        data = storage.parquet_bytes(draft.tables[name])
        storage.write_bytes(storage.join(draft.path, name), data)
        files[name] = FileHash.of(data)
    shards: dict[str, dict[str, FileHash]] = {}
    for shard in draft.shards:
        shards.setdefault(str(shard.size), {})[shard.name] = shard.hash
    info = {
        **draft.info,
        "source_observed_at": draft.observed_at,
        "parts": list(draft.parts),
        "integrity": Integrity(files, shards).plain(),
    }
    held.check()
    created = storage_cas.create_exclusive(
        storage.join(draft.path, "dataset.json"), (json.dumps(info, indent=2) + "\n").encode(), durable=True
    )
    if created is None:
        raise storage.StorageError(f"{draft.path}/dataset.json appeared while this process held the lock")


def _discard_incomplete(draft: VersionDraft) -> None:
    """Remove a version folder that has no dataset.json (ours, unfinished); caller holds the lock."""
    try:
        if not storage.exists(storage.join(draft.path, "dataset.json")):
            storage.remove(draft.path, recursive=True)
    except OSError as err:  # the original failure matters more; gc removes it later
        log.warning("could not remove the incomplete version %s: %s", draft.path, err)


def remove_idle_parts(out: str, keep: set[str], now: float | None = None) -> int:
    """Remove parts untouched for :data:`PART_IDLE_S` and not in ``keep``; how many. Caller holds the lock."""
    latest = read_latest(out)
    if latest:
        with suppress(FileNotFoundError):
            keep = keep | set(open_version(storage.join(out, latest)).info.get("parts") or [])
    removed = idle_parts(part_folders(out), keep, time.time() if now is None else now)
    for folder in removed:
        storage.remove(storage.join(folder.url, "records.parquet"))  # unfinished first, then gone
        storage.remove(folder.url, recursive=True)
    return len(removed)


def commit_version(draft: VersionDraft) -> Committed:
    """Write the version (unless it exists), move LATEST forward, remove idle parts (module docstring)."""
    info_url = storage.join(draft.path, "dataset.json")
    try:
        if not storage.exists(info_url):
            _copy_shards(draft)
    except Exception:
        with suppress(OSError), store_lock(draft.out, f"discard {draft.digest}", wait_s=60):
            _discard_incomplete(draft)  # if even that fails, gc removes the folder later
        raise
    with store_lock(draft.out, f"publish {draft.digest}") as held:
        created = not storage.exists(info_url)
        if created:
            try:
                _write(draft, held)
            except BaseException:  # a signal too: no version folder is left without its dataset.json
                _discard_incomplete(draft)
                raise
        version = open_version(draft.path)
        held.check()
        latest = advance_latest(draft.out, draft.digest, draft.observed_at)
        try:
            remove_idle_parts(draft.out, set(draft.parts))
        except OSError as err:  # the version is complete: cleanup waits for the next publish or gc
            log.warning("could not remove idle parts of %s: %s", draft.out, err)
    return Committed(version, created, latest)
