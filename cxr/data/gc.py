"""``cxr gc``: what a dataset root holds that nothing needs, and removing it.

Always kept:

- every version a registered model version (or a training run still in progress) names by its dataset
  digest: :class:`NeededVersions`, read from MLflow by :mod:`cxr.tracking.needed` (no MLflow here);
- the version ``LATEST`` names, and the ``keep`` newest complete versions (newest: source observed last);
- the parts of the version ``LATEST`` names (the next ingest of a grown archive reuses them);
- whatever was written or reused within :data:`PART_IDLE_S`: an ingest in flight (its parts, the
  version folder it is filling).

Removed: other complete versions (``dataset.json`` first, so a reader sees no version rather than
half of one), version folders never finished, other parts, local cached shard copies (``CXR_CACHE``)
of digests neither kept nor needed (those of a version removed now at once, others once idle), and
temp files of killed writes. Only folders named like a digest are versions; nothing else is touched.
A dry run (the default) only reports; ``apply`` decides again under the root's lock and removes.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cxr import local_writes, storage
from cxr.data.archives import archives_root
from cxr.data.lock import store_lock
from cxr.data.part_files import PART_IDLE_S, idle_parts, part_folders
from cxr.data.version import DatasetVersion, open_version, read_latest

_DIGEST = re.compile(r"[0-9a-f]{16}")
KEEP_NEWEST = 1  # complete versions kept besides LATEST and those models need
KINDS = ("version", "unfinished version", "part", "cached shards", "temp file")


@dataclass(frozen=True)
class NeededVersions:
    """Dataset digests that models need, and who needs each (e.g. ``model chest version 3``)."""

    by: Mapping[str, tuple[str, ...]]

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(self.by)


@dataclass(frozen=True)
class Removal:
    kind: str  # one of KINDS
    url: str
    bytes: int
    files: int
    reason: str


@dataclass(frozen=True)
class KeptVersion:
    digest: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class GcReport:
    """What gc keeps and removes (or, in a dry run, would remove)."""

    root: str
    applied: bool
    kept: tuple[KeptVersion, ...]
    removals: tuple[Removal, ...]

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def counts(self) -> dict[str, int]:
        """Removals by kind, in the order of :data:`KINDS`."""
        found = Counter(r.kind for r in self.removals)
        return {kind: found[kind] for kind in KINDS if found[kind]}


def _by_folder(root: str, entries: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    prefix = root.rstrip("/") + "/"
    folders: dict[str, list[Mapping[str, Any]]] = {}
    for e in entries:
        rel = e["url"][len(prefix) :] if e["url"].startswith(prefix) else ""
        if "/" in rel:
            folders.setdefault(rel.split("/", 1)[0], []).append(e)
    return folders


def _version_folders(
    root: str, entries: list[Mapping[str, Any]]
) -> tuple[dict[str, DatasetVersion], dict[str, list[Mapping[str, Any]]]]:
    """Complete versions (with their dataset.json) and the files of every digest-named folder."""
    files = {name: found for name, found in _by_folder(root, entries).items() if _DIGEST.fullmatch(name)}
    complete = {}
    for digest, found in files.items():
        if any(e["url"].endswith(f"{digest}/dataset.json") for e in found):
            complete[digest] = open_version(storage.join(root, digest))
    return complete, files


def _kept(
    complete: Mapping[str, DatasetVersion], latest: str | None, needed: NeededVersions, keep: int
) -> dict[str, list[str]]:
    newest = sorted(complete.values(), key=lambda v: (v.observed_at, v.digest), reverse=True)[:keep]
    reasons: dict[str, list[str]] = {}
    if latest in complete:
        reasons.setdefault(latest, []).append("LATEST")
    for rank, version in enumerate(newest, 1):
        reasons.setdefault(version.digest, []).append(f"newest {rank} of --keep {keep}")
    for digest, who in needed.by.items():
        if digest in complete:
            reasons.setdefault(digest, []).extend(f"needed by {w}" for w in who)
    return reasons


def _cache_removals(cache: str, keep: set[str], removed_now: set[str], now: float, idle_s: float) -> list[Removal]:
    base = os.path.join(cache, "shards")
    out = []
    for digest in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if digest in keep:
            continue
        sizes, modified = [], 0.0
        for folder, _, names in os.walk(os.path.join(base, digest)):
            for name in names:
                st = os.stat(os.path.join(folder, name))
                sizes.append(st.st_size)
                modified = max(modified, st.st_mtime)
        if digest in removed_now or now - modified >= idle_s:
            why = "its version is removed now" if digest in removed_now else "no model needs it and it is idle"
            out.append(Removal("cached shards", os.path.join(base, digest), sum(sizes), len(sizes), why))
    return out


def check_root(root: str, keep: int = KEEP_NEWEST) -> None:
    """Refuse what ``cxr gc`` cannot work on, before anything else is opened: a datasets root that does not
    exist or is a file, a negative ``keep``."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    if not storage.exists(root):
        raise FileNotFoundError(f"datasets root {root!r} does not exist")
    if storage.is_file(root):
        raise ValueError(f"{root}: is a file, where a datasets root (the --out of cxr ingest) was expected")


def plan_gc(
    root: str,
    needed: NeededVersions,
    keep: int = KEEP_NEWEST,
    cache: str | None = None,
    now: float | None = None,
    idle_s: float = PART_IDLE_S,
) -> GcReport:
    """What :func:`collect_garbage` would remove from ``root`` (and the shard ``cache``), and why the rest stays."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    check_root(root)
    now = time.time() if now is None else now
    entries = storage.list_files_detail(root, recursive=True)
    complete, files = _version_folders(root, entries)
    latest = read_latest(root)
    kept = _kept(complete, latest, needed, keep)
    removals = []
    for digest, found in sorted(files.items()):
        size, count = sum(e["size"] for e in found), len(found)
        url = storage.join(root, digest)
        if digest in complete and digest not in kept:
            removals.append(Removal("version", url, size, count, "not LATEST, not among the newest, no model needs it"))
        elif digest not in complete and now - max(e["modified"] for e in found) >= idle_s:
            removals.append(Removal("unfinished version", url, size, count, "no dataset.json, and idle"))
    latest_version = complete.get(latest) if latest else None
    parts_needed = latest_version.info.get("parts") if latest_version else []
    folders = part_folders(root, entries)
    if parts_needed is None:  # LATEST predates part lists: which parts it needs is unknown, keep them all
        parts_needed = [f.key for f in folders]
    for f in idle_parts(folders, set(parts_needed), now, idle_s):
        removals.append(Removal("part", f.url, f.bytes, f.files, "not a part of LATEST's version, and idle"))
    listings = archives_root(root).rstrip("/") + "/"
    for e in entries:  # an archive's listing is worth keeping while LATEST uses its parts (a rerun skips it)
        if e["url"].startswith(listings) and e["url"].endswith(".parquet") and now - e["modified"] >= idle_s:
            named = storage.read_parquet(e["url"], columns=["part"])["part"].drop_null().to_pylist()
            if not set(named) & set(parts_needed):
                reason = "a .tar.gz listing none of whose parts LATEST's version uses, and idle"
                removals.append(Removal("archive listing", e["url"], e["size"], 1, reason))
    for e in entries:
        if (
            local_writes.is_temp_name(e["url"])
            and not storage.is_remote(e["url"])
            and local_writes.is_stale_temp(e["url"])
        ):
            removals.append(Removal("temp file", e["url"], e["size"], 1, "left by a killed write"))
    if cache:
        removed_now = {r.url.rstrip("/").rsplit("/", 1)[-1] for r in removals if r.kind == "version"}
        removals += _cache_removals(cache, set(kept) | set(needed.digests), removed_now, now, idle_s)
    kept_versions = tuple(KeptVersion(d, tuple(r)) for d, r in sorted(kept.items()))
    return GcReport(root, False, kept_versions, tuple(removals))


def _remove(removal: Removal) -> None:
    if removal.kind == "version":
        storage.remove(storage.join(removal.url, "dataset.json"))  # no longer a version, then gone
    storage.remove(removal.url, recursive=removal.kind not in ("temp file", "archive listing"))


def collect_garbage(
    root: str,
    needed: NeededVersions,
    keep: int = KEEP_NEWEST,
    cache: str | None = None,
    apply: bool = False,
    idle_s: float = PART_IDLE_S,
) -> GcReport:
    """Report (dry run) or remove (``apply``) what nothing needs; see the module docstring."""
    if not apply:
        return plan_gc(root, needed, keep, cache, idle_s=idle_s)
    with store_lock(root, "gc") as held:
        report = plan_gc(root, needed, keep, cache, idle_s=idle_s)
        for removal in report.removals:
            held.check()
            _remove(removal)
    return replace(report, applied=True)
