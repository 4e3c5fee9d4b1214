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
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cxr import __version__, storage
from cxr.data.accounting import Accounting, BoxAccounting, SplitListAccounting
from cxr.data.commit import ShardSource, VersionDraft, commit_version
from cxr.data.decode import PIXEL_PIPELINE_VERSION
from cxr.data.part_files import finished_keys, parts_root, read_finished_part
from cxr.data.parts import PartResult, PartSpec, process_part
from cxr.data.plan import IngestOptions, IngestPlan, plan_ingest
from cxr.data.quarantine import QuarantineRecord, Reason, count_by_reason, quarantine_table
from cxr.data.version import METADATA_SCHEMA, SCHEMA_VERSION, DatasetVersion, content_digest, open_version
from cxr.records import to_plain


@dataclass(frozen=True)
class PartsToDo:
    """Before decoding: how many parts (and images) an earlier run finished, and what is left."""

    parts: int
    images: int
    reused_parts: int
    reused_images: int

    @classmethod
    def of(cls, plan: IngestPlan) -> PartsToDo:
        done = finished_keys(plan.parts, plan.out)
        return cls(
            parts=len(plan.parts),
            images=sum(len(p.images) for p in plan.parts),
            reused_parts=sum(1 for p in plan.parts if p.key in done),
            reused_images=sum(len(p.images) for p in plan.parts if p.key in done),
        )

    def kept(self) -> str:
        """After an interruption (counted once the workers stopped): what a rerun will reuse."""
        return f"{self.reused_parts} of {self.parts} parts finished are kept; a rerun reuses them"

    def line(self) -> str:
        """``3 of 6 parts reused, decoding 300 images in 3 parts`` (or ``decoding 600 images in 6 parts``)."""
        parts = self.parts - self.reused_parts
        left = f"decoding {self.images - self.reused_images} images in {parts} part{'s' if parts != 1 else ''}"
        return f"{self.reused_parts} of {self.parts} parts reused, {left}" if self.reused_parts else left


@dataclass(frozen=True)
class DecodeSummary:
    """What decoding the parts of a plan did: parts finished by an earlier run are skipped, not redone."""

    parts: int
    images: int
    skipped_parts: int
    skipped_images: int

    @property
    def decoded(self) -> int:
        """Images decoded by this run."""
        return self.images - self.skipped_images

    @classmethod
    def of(cls, results: list[PartResult]) -> DecodeSummary:
        return cls(
            parts=len(results),
            images=sum(r.images for r in results),
            skipped_parts=sum(1 for r in results if r.skipped),
            skipped_images=sum(r.images for r in results if r.skipped),
        )

    @classmethod
    def nothing_to_do(cls, plan: IngestPlan) -> DecodeSummary:
        """An unchanged source: every part is already in a version."""
        images = sum(len(p.images) for p in plan.parts)
        return cls(len(plan.parts), images, len(plan.parts), images)


def run_parts(
    plan: IngestPlan, client: Any | None = None, progress: Callable[[int], None] | None = None
) -> DecodeSummary:
    """Decode every part not yet done, with Dask when ``client`` is given (else in this process)."""
    if plan.existing:
        return DecodeSummary.nothing_to_do(plan)
    if client is None:
        results = []
        for spec in plan.parts:
            results.append(process_part(spec))
            if progress:
                progress(len(spec.images))
        return DecodeSummary.of(results)
    from distributed import as_completed

    from cxr.data.isolate import isolate_crashes, worker_died

    # One Dask task per part, never one per image, submitted largest first (part sizes vary:
    # content-defined boundaries) so that each worker's last task is a small one. A bag over the
    # same parts ran 2 workers at 1.79x of one; these priorities at 1.91x (bench/ingest.py).
    futures = [
        client.submit(process_part, spec, key=f"process_part-{spec.key}", priority=len(spec.images), pure=False)
        for spec in plan.parts
    ]
    spec_of = {f.key: spec for f, spec in zip(futures, plan.parts, strict=True)}
    results: list[PartResult] = []
    crashed: list[PartSpec] = []  # parts whose workers died: isolated image by image once the rest is done
    for future in as_completed(futures):
        if worker_died(future):
            crashed.append(spec_of[future.key])
            continue
        results.append(future.result())
        if progress:
            progress(len(spec_of[future.key].images))
    for spec in crashed:
        results.append(isolate_crashes(client, spec))
        if progress:
            progress(len(spec.images))
    return DecodeSummary.of(results)


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

    Every part must be finished and whole (:func:`cxr.data.part_files.read_finished_part`); writing,
    LATEST and the cleanup of idle parts are safe beside other ingests (:mod:`cxr.data.commit`). Temp
    files that killed writes left in the output are removed first.
    """
    storage.remove_stale_temps(plan.out, recursive=True)
    if plan.existing:
        return IngestSummary.of(open_version(storage.join(plan.out, plan.existing)), created=False)
    listing = {e["url"]: e["size"] for e in storage.list_files_detail(parts_root(plan.out), recursive=True)}
    # Parts hold the candidates in order, so records line up with candidate rows one to one.
    shards: list[ShardSource] = []
    columns: dict[str, list] = {n: [] for n in ("png_width", "png_height", "sha256", "shard", "shard_index")}
    keep: list[bool] = []
    quarantine = list(plan.quarantine)
    for spec in plan.parts:
        part = read_finished_part(spec, listing)
        records = part.records.to_pylist()
        if [r["image_id"] for r in records] != [image.image_id for image in spec.images]:
            raise RuntimeError(f"part {spec.work_dir} does not hold the images it was planned with")
        name = f"shard-{len({s.name for s in shards}):05d}"
        shards += [ShardSource(size, name, spec.shard_url(size), h) for size, h in sorted(part.hashes.items())]
        for r, image in zip(records, spec.images, strict=True):
            keep.append(r["reason"] is None)
            if r["reason"] is not None:
                quarantine.append(QuarantineRecord(image.url, image.image_id, Reason(r["reason"]), r["detail"]))
                continue
            for column in ("png_width", "png_height", "sha256", "shard_index"):
                columns[column].append(r[column])
            columns["shard"].append(name)
    metadata = plan.candidates.filter(pa.array(keep, pa.bool_()))
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
    accounting = _accounting(plan, metadata.num_rows, quarantine, boxes.num_rows, box_quarantine)

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
        "shards": len({s.name for s in shards}),
        "accounting": to_plain(accounting),
    }
    tables = {"metadata.parquet": metadata, "quarantine.parquet": q_table, "boxes.parquet": boxes}
    draft = VersionDraft(
        plan.out, digest, tables, tuple(shards), info, plan.observed_at, tuple(spec.key for spec in plan.parts)
    )
    committed = commit_version(draft)
    return IngestSummary.of(committed.version, committed.created, committed.latest)


def _accounting(
    plan: IngestPlan,
    accepted: int,
    quarantine: list[QuarantineRecord],
    boxes: int,
    box_quarantine: list[QuarantineRecord],
) -> Accounting:
    return Accounting(
        label_rows=plan.counts["label_rows"],
        image_files=plan.counts["image_files"],
        inputs=plan.counts["inputs"],
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
