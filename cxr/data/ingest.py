"""Ingest: an NIH archive (folder or S3) becomes a versioned dataset, decoded once into training shards.

Three steps, each usable on its own (the Prefect tasks wrap them one by one):

1. :func:`cxr.data.plan.plan_ingest` reads the tables, lists the images, settles every input that needs no pixels
   (rows without a file, files without a row, bad rows), assigns splits, and cuts the rest into parts.
2. :func:`run_parts` decodes the parts on a Dask cluster (one task per part, never one per image;
   :mod:`cxr.data.parts`); finished parts are kept, so a killed run resumes where it stopped, and a
   grown archive decodes only its new parts.
3. :func:`publish` assembles metadata, quarantine and boxes, computes the digest, writes the version
   folder, and writes ``LATEST`` last.

Accounting: every label row and every image file lands in metadata or quarantine exactly once. An
accepted image is one row plus its file; a quarantine record stands for a row (with its file, if any),
or for a file that no row names. So ``inputs = label rows + files no row names = accepted + quarantined``.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cxr import __version__, storage
from cxr.data.accounting import Accounting, BoxAccounting, SplitListAccounting
from cxr.data.archives import ArchiveSpec
from cxr.data.commit import ShardSource, VersionDraft, commit_version
from cxr.data.decode import PIXEL_PIPELINE_VERSION
from cxr.data.part_files import finished_keys, parts_root, read_finished_part
from cxr.data.parts import PartResult, PartSpec, process_part
from cxr.data.plan import IngestOptions, IngestPlan, plan_ingest
from cxr.data.quarantine import QuarantineRecord, Reason, count_by_reason, quarantine_table
from cxr.data.reconcile import Settled, candidates_with_splits, settle
from cxr.data.tar_scan import PROGRESS_TOPIC, ArchiveResult, scan_archive, scan_on_worker, scanned
from cxr.data.version import METADATA_SCHEMA, SCHEMA_VERSION, DatasetVersion, content_digest, open_version
from cxr.records import to_plain


@dataclass(frozen=True)
class PartsToDo:
    """Before decoding: how many parts, images and archives an earlier run finished, and what is left."""

    parts: int
    images: int
    reused_parts: int
    reused_images: int
    archives: int = 0  # .tar.gz files, read front to back, one task each
    reused_archives: int = 0
    bytes: int = 0  # source bytes still to read: image files, plus the packed size of archives not yet read

    @classmethod
    def of(cls, plan: IngestPlan) -> PartsToDo:
        done = finished_keys(plan.parts, plan.out)
        scanned_keys = scanned(plan.archives)
        return cls(
            parts=len(plan.parts),
            images=sum(len(p.images) for p in plan.parts),
            reused_parts=sum(1 for p in plan.parts if p.key in done),
            reused_images=sum(len(p.images) for p in plan.parts if p.key in done),
            archives=len(plan.archives),
            reused_archives=sum(1 for a in plan.archives if a.key in scanned_keys),
            bytes=sum(i.size for p in plan.parts if p.key not in done for i in p.images)
            + sum(a.size for a in plan.archives if a.key not in scanned_keys),
        )

    def kept(self) -> str:
        """After an interruption (counted once the workers stopped): what a rerun will reuse."""
        text = f"{self.reused_parts} of {self.parts} parts finished are kept"
        if self.archives:
            text += f", {self.reused_archives} of {self.archives} archives read"
        return text + "; a rerun reuses them"

    def line(self) -> str:
        """``3 of 6 parts reused, decoding 300 images in 3 parts`` (or ``decoding 600 images in 6 parts``),
        and for archives ``2 of 12 .tar.gz archives read before, reading 10`` (or ``reading 12 .tar.gz archives``)."""
        said = []
        if self.parts or not self.archives:
            parts = self.parts - self.reused_parts
            left = f"decoding {self.images - self.reused_images} images in {parts} part{'s' if parts != 1 else ''}"
            said.append(f"{self.reused_parts} of {self.parts} parts reused, {left}" if self.reused_parts else left)
        if self.archives:
            todo = self.archives - self.reused_archives
            if self.reused_archives:
                said.append(f"{self.reused_archives} of {self.archives} .tar.gz archives read before, reading {todo}")
            else:
                said.append(f"reading {todo} .tar.gz archive{'s' if todo != 1 else ''}")
        return "; ".join(said)


@dataclass(frozen=True)
class DecodeSummary:
    """What decoding the parts of a plan did: parts finished by an earlier run are skipped, not redone."""

    parts: int
    images: int
    skipped_parts: int
    skipped_images: int
    archives: int = 0
    skipped_archives: int = 0  # read by an earlier run: not read again
    archive_images: int = 0  # image members of the archives that this run decoded
    damaged_archives: tuple[str, ...] = ()  # names of archives read only up to damage

    @property
    def decoded(self) -> int:
        """Images decoded by this run: in parts, and in the archives it read."""
        return self.images - self.skipped_images + self.archive_images

    @classmethod
    def of(cls, results: list[PartResult], archives: list[ArchiveResult] | None = None) -> DecodeSummary:
        archives = archives or []
        return cls(
            parts=len(results),
            images=sum(r.images for r in results),
            skipped_parts=sum(1 for r in results if r.skipped),
            skipped_images=sum(r.images for r in results if r.skipped),
            archives=len(archives),
            skipped_archives=sum(1 for a in archives if a.skipped),
            archive_images=sum(a.decoded for a in archives),
            damaged_archives=tuple(a.name for a in archives if a.damaged),
        )

    @classmethod
    def nothing_to_do(cls, plan: IngestPlan) -> DecodeSummary:
        """An unchanged source: every part is already in a version."""
        images = sum(len(p.images) for p in plan.parts)
        n = len(plan.archives)
        return cls(len(plan.parts), images, len(plan.parts), images, n, n)


def run_parts(
    plan: IngestPlan, client: Any | None = None, progress: Callable[[int], None] | None = None
) -> DecodeSummary:
    """Read every archive and decode every part not yet done, with Dask when ``client`` is given (else here).

    ``progress(n)`` is told the source bytes read as they are: an image file's size when its part is
    done, an archive's packed bytes as it is read (:data:`PROGRESS_TOPIC` events from its worker).
    """
    if plan.existing:
        return DecodeSummary.nothing_to_do(plan)
    if client is None:
        scans = [scan_archive(spec, progress) for spec in plan.archives]
        results = []
        for spec in plan.parts:
            results.append(process_part(spec))
            if progress and not results[-1].skipped:
                progress(sum(i.size for i in spec.images))
        return DecodeSummary.of(results, scans)
    from distributed import as_completed

    from cxr.data.isolate import isolate_archive_crashes, isolate_crashes, worker_died

    # One Dask task per part, never one per image, submitted largest first (part sizes vary:
    # content-defined boundaries) so that each worker's last task is a small one. A bag over the
    # same parts ran 2 workers at 1.79x of one; these priorities at 1.91x (bench/ingest.py).
    # Archives go first of all: each is one long task.
    token = uuid.uuid4().hex
    reported: dict[str, int] = {}
    completed: set[str] = set()  # archives whose remainder was counted: a late event is not counted twice
    lock = threading.Lock()

    def on_event(event: Any) -> None:
        message = event[1] if isinstance(event, tuple) else event
        if not (isinstance(message, dict) and message.get("token") == token and progress):
            return
        with lock:
            if message["key"] in completed:
                return
            reported[message["key"]] = reported.get(message["key"], 0) + message["bytes"]
        progress(message["bytes"])

    def read(archive: ArchiveSpec, scan: ArchiveResult) -> None:
        """An archive is done: count what its events did not (late events are not counted then)."""
        with lock:
            completed.add(archive.key)
            rest = archive.size - reported.get(archive.key, 0)
        if progress and not scan.skipped and rest > 0:
            progress(rest)

    if progress and plan.archives:
        client.subscribe_topic(PROGRESS_TOPIC, on_event)
    try:
        archive_futures = [
            client.submit(
                scan_on_worker, spec, token, key=f"scan_archive-{spec.key}", priority=2**40 + spec.size, pure=False
            )
            for spec in plan.archives
        ]
        futures = [
            client.submit(process_part, spec, key=f"process_part-{spec.key}", priority=len(spec.images), pure=False)
            for spec in plan.parts
        ]
        spec_of = {f.key: spec for f, spec in zip(futures, plan.parts, strict=True)}
        archive_of = {f.key: spec for f, spec in zip(archive_futures, plan.archives, strict=True)}
        results: list[PartResult] = []
        scans: list[ArchiveResult] = []
        crashed: list[PartSpec] = []  # parts whose workers died: isolated image by image once the rest is done
        crashed_archives: list[ArchiveSpec] = []  # archives whose workers died: isolated a chunk at a time
        for future in as_completed(archive_futures + futures):
            if future.key in archive_of:
                archive = archive_of[future.key]
                if worker_died(future):
                    crashed_archives.append(archive)
                    continue
                scans.append(future.result())
                read(archive, scans[-1])
                continue
            if worker_died(future):
                crashed.append(spec_of[future.key])
                continue
            results.append(future.result())
            if progress and not results[-1].skipped:
                progress(sum(i.size for i in spec_of[future.key].images))
        for spec in crashed:
            results.append(isolate_crashes(client, spec))
            if progress:
                progress(sum(i.size for i in spec.images))
        for archive in crashed_archives:
            scans.append(isolate_archive_crashes(client, archive, token))
            read(archive, scans[-1])
    finally:
        if progress and plan.archives:
            client.unsubscribe_topic(PROGRESS_TOPIC)
    return DecodeSummary.of(results, scans)


@dataclass(frozen=True)
class IngestSummary:
    """A published dataset version: where it is, whether this ingest made it, and its accounting."""

    digest: str
    root: str  # the dataset root (OUT); the version is the folder ``root/digest``
    created: bool  # False when an identical version already existed
    splits: Mapping[str, int]
    accounting: Accounting
    latest: bool = True  # False: LATEST names a version of a source observed later than this one

    @property
    def path(self) -> str:
        return storage.join(self.root, self.digest)

    @classmethod
    def of(cls, version: DatasetVersion, created: bool, latest: bool = True) -> IngestSummary:
        return cls(version.digest, version.root, created, dict(version.info["splits"]), version.accounting, latest)


def publish(plan: IngestPlan) -> IngestSummary:
    """Assemble the version from the finished parts, write it, then move LATEST forward.

    Rows are matched to the members of ``.tar.gz`` archives first (:mod:`cxr.data.reconcile`), and the
    splits assigned to the images that exist. Every part must be finished and whole
    (:func:`cxr.data.part_files.read_finished_part`); writing, LATEST and the cleanup of idle parts are
    safe beside other ingests (:mod:`cxr.data.commit`). Temp files that killed writes left in the output
    are removed first.
    """
    storage.remove_stale_temps(plan.out, recursive=True)
    if plan.existing:
        return IngestSummary.of(open_version(storage.join(plan.out, plan.existing)), created=False)
    settled = settle(plan)
    candidates = candidates_with_splits(plan, settled)
    listing = {e["url"]: e["size"] for e in storage.list_files_detail(parts_root(plan.out), recursive=True)}
    # part key -> (image id -> row, the record's columns): columns, not a dict per image (NIH: 112,120 of them)
    records: dict[str, tuple[dict[str, int], dict[str, list]]] = {}
    hashes: dict[str, Mapping[int, Any]] = {}
    for key in [spec.key for spec in plan.parts] + settled.archive_parts:
        files = PartSpec.at(plan.out, key, (), plan.options.sizes, plan.options.limits)
        part = read_finished_part(files, listing)
        values = part.records.to_pydict()
        records[key] = ({image_id: i for i, image_id in enumerate(values["image_id"])}, values)
        hashes[key] = part.hashes

    shard_names: dict[str, str] = {}
    columns: dict[str, list] = {n: [] for n in ("png_width", "png_height", "sha256", "shard", "shard_index")}
    keep: list[bool] = []
    quarantine = list(plan.quarantine) + settled.quarantine
    for image_id in candidates["image_id"].to_pylist():
        found = settled.found[image_id]
        if found.reason is not None:
            quarantine.append(QuarantineRecord(found.uri, image_id, found.reason, found.detail or ""))
            keep.append(False)
            continue
        assert found.part is not None
        rows, values = records[found.part]
        i = rows[image_id]
        reason = values["reason"][i]
        keep.append(reason is None)
        if reason is not None:
            quarantine.append(QuarantineRecord(found.uri, image_id, Reason(reason), values["detail"][i]))
            continue
        for column in ("png_width", "png_height", "sha256", "shard_index"):
            columns[column].append(values[column][i])
        columns["shard"].append(shard_names.setdefault(found.part, f"shard-{len(shard_names):05d}"))
    shards = [
        ShardSource(size, name, PartSpec.at(plan.out, key, (), (), plan.options.limits).shard_url(size), h)
        for key, name in shard_names.items()
        for size, h in sorted(hashes[key].items())
    ]
    metadata = candidates.filter(pa.array(keep, pa.bool_()))
    for column, values in columns.items():
        metadata = metadata.append_column(column, pa.array(values, METADATA_SCHEMA.field(column).type))
    metadata = metadata.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA)

    accepted_ids = metadata["image_id"]
    box_ok = pc.is_in(plan.boxes["image_id"], accepted_ids)
    boxes = plan.boxes.filter(box_ok)
    box_quarantine = list(plan.box_quarantine) + [
        QuarantineRecord(
            plan.source_info["box_list"],
            r["image_id"],
            Reason.MISSING_IMAGE,
            f"box ({r['finding']}) for an image that is not in the dataset",
        )
        for r in plan.boxes.filter(pc.invert(box_ok)).to_pylist()
    ]
    all_quarantine = quarantine + box_quarantine + list(plan.split_quarantine)
    q_table = quarantine_table(all_quarantine)
    accounting = _accounting(plan, settled, metadata.num_rows, quarantine, boxes.num_rows, box_quarantine)

    digest = content_digest(
        metadata, boxes, q_table, list(plan.options.sizes), PIXEL_PIPELINE_VERSION, plan.source_root
    )
    info = {
        "digest": digest,
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code_version": __version__,
        "source": plan.source_info,
        "source_fingerprint": plan.fingerprint,
        "sizes": list(plan.options.sizes),
        "pixel_pipeline_version": PIXEL_PIPELINE_VERSION,
        "limits": asdict(plan.options.limits),
        "splits": dict(sorted(Counter(metadata["split"].to_pylist()).items())),
        "shards": len(shard_names),
        "accounting": to_plain(accounting),
    }
    tables = {"metadata.parquet": metadata, "quarantine.parquet": q_table, "boxes.parquet": boxes}
    parts_used = tuple(spec.key for spec in plan.parts) + tuple(settled.archive_parts)
    draft = VersionDraft(plan.out, digest, tables, tuple(shards), info, plan.observed_at, parts_used)
    committed = commit_version(draft)
    return IngestSummary.of(committed.version, committed.created, committed.latest)


def _accounting(
    plan: IngestPlan,
    settled: Settled,
    accepted: int,
    quarantine: list[QuarantineRecord],
    boxes: int,
    box_quarantine: list[QuarantineRecord],
) -> Accounting:
    return Accounting(
        label_rows=plan.counts["label_rows"],
        image_files=plan.counts["image_files"] + settled.image_files,
        inputs=plan.counts["inputs"] + settled.unnamed,
        accepted=accepted,
        quarantined=len(quarantine),
        quarantined_by_reason=count_by_reason(quarantine),
        boxes=BoxAccounting(plan.counts["box_rows"], boxes, len(box_quarantine)),
        split_lists=SplitListAccounting(plan.counts["split_lines"], len(plan.split_quarantine)),
    ).check()


def ingest(
    source_url: str,
    out: str,
    options: IngestOptions | None = None,
    client: Any | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """The whole ingest: plan, decode the parts (on Dask when ``client`` is given), publish."""
    plan = plan_ingest(source_url, out, options or IngestOptions())
    run_parts(plan, client, progress)
    return publish(plan)
