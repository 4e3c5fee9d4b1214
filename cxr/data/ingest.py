"""Ingest: an NIH archive (folder or S3) becomes a versioned dataset, decoded once into training shards.

Three steps, each usable on its own (the Prefect tasks wrap them one by one):

1. :func:`plan_ingest` reads the tables, lists the images, settles every input that needs no pixels
   (rows without a file, files without a row, bad rows), assigns splits, and cuts the rest into parts.
2. :func:`run_parts` decodes the parts on a Dask cluster (one task per part, never one per image) (:mod:`cxr.ingest_parts`); finished parts are
   kept, so a killed run resumes where it stopped, and a grown archive decodes only its new parts.
3. :func:`publish` assembles metadata, quarantine and boxes, computes the digest, writes the version
   folder, and writes ``LATEST`` last.

Accounting: every label row and every image file lands in metadata or quarantine exactly once. An
accepted image is one row plus its file; a quarantine record stands for a row (with its file, if any),
or for a file that no row names. So ``inputs = label rows + files no row names = accepted + quarantined``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cxr import __version__, storage
from cxr.dataset import METADATA_SCHEMA, SCHEMA_VERSION, DatasetVersion, content_digest, open_version, read_latest
from cxr.decode import PIXEL_PIPELINE_VERSION, DecodeLimits
from cxr.ingest_parts import PartImage, PartSpec, part_key, process_part
from cxr.labels import BOX_SCHEMA
from cxr.quarantine import QuarantineRecord, Reason, quarantine_table
from cxr.source import NihSource, read_source
from cxr.splits import assign_splits

PART_BYTES = 64 * 2**20  # decoded pixels held by one part, all sizes together


@dataclass(frozen=True)
class IngestOptions:
    """How to ingest. Every field has a default that fits NIH on a laptop."""

    sizes: tuple[int, ...] = (256,)  # shard sides in px; training picks one
    limits: DecodeLimits = DecodeLimits()
    test_share: float = 0.2  # patients to test when no official list names them
    val_share: float = 0.1  # patients to validation, out of train/val
    part_images: int | None = None  # images per part on average; None: as many as fit PART_BYTES, at most 64

    def __post_init__(self) -> None:
        if not self.sizes or any(not 16 <= s <= 2048 for s in self.sizes) or len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes must be distinct sides in [16, 2048] px, got {list(self.sizes)}")
        if self.part_images is not None and self.part_images < 1:
            raise ValueError(f"part_images must be >= 1, got {self.part_images}")

    @property
    def images_per_part(self) -> int:
        if self.part_images:
            return self.part_images
        return max(8, min(64, PART_BYTES // sum(s * s for s in self.sizes)))


@dataclass
class IngestPlan:
    """Everything decided before any pixel is decoded."""

    source_root: str
    out: str
    options: IngestOptions
    fingerprint: str
    candidates: pa.Table  # label rows with a file, sorted by image_id, with split, source_uri
    parts: list[PartSpec]
    quarantine: list[QuarantineRecord]  # rows and files settled without pixels
    boxes: pa.Table
    box_quarantine: list[QuarantineRecord]
    split_quarantine: list[QuarantineRecord]
    counts: dict[str, int] = field(default_factory=dict)  # label_rows, image_files, inputs, box_rows, split_lines
    source_info: dict[str, Any] = field(default_factory=dict)
    existing: str | None = None  # digest of a version already made from exactly this input


def _fingerprint(source: NihSource, files: list[dict[str, Any]], options: IngestOptions) -> str:
    h = hashlib.sha256(repr((PIXEL_PIPELINE_VERSION, SCHEMA_VERSION, asdict(options))).encode())
    layout = source.layout
    for url in (layout.label_table, layout.box_list, layout.train_val_list, layout.test_list):
        h.update(f"\n{url and posixpath.basename(url)}".encode())
        if url:
            h.update(hashlib.sha256(storage.read_bytes(url)).digest())
    for f in files:
        h.update(f"\n{f['url']}\t{f['size']}\t{f['version']}".encode())
    return h.hexdigest()


def _list_images(source: NihSource) -> dict[str, dict[str, Any]]:
    """Listing details (size, version) of every image file, by URL."""
    from cxr.source import image_folders

    details: dict[str, dict[str, Any]] = {}
    for folder in image_folders(source.layout.root):
        for entry in storage.list_files_detail(folder):
            details[entry["url"]] = entry
    return details


def chunk_images(images: list[PartImage], target: int) -> list[tuple[PartImage, ...]]:
    """Cut the sorted images into parts of about ``target`` images, at content-defined boundaries.

    A part ends after an image whose id hashes to 0 modulo ``target`` (or at 4 x ``target`` images), so
    adding or removing images changes only the parts around them: a growing archive re-decodes its new
    images, not everything after the first insertion.
    """
    chunks: list[tuple[PartImage, ...]] = []
    current: list[PartImage] = []
    for image in images:
        current.append(image)
        boundary = int.from_bytes(hashlib.sha256(image.image_id.encode()).digest()[:8], "big") % target == 0
        if boundary or len(current) >= 4 * target:
            chunks.append(tuple(current))
            current = []
    if current:
        chunks.append(tuple(current))
    return chunks


def plan_ingest(source_url: str, out: str, options: IngestOptions = IngestOptions()) -> IngestPlan:
    """Read and reconcile the archive's tables and files; cut the work into parts."""
    source = read_source(source_url)
    layout, labels = source.layout, source.labels
    details = _list_images(source)
    fingerprint = _fingerprint(source, [details[u] for u in sorted(details)], options)

    quarantine: list[QuarantineRecord] = list(labels.quarantine) + list(layout.quarantine)
    named = set(labels.rows["image_id"].to_pylist()) | {q.image_id for q in labels.quarantine if q.image_id}
    for name, url in sorted(layout.image_files.items()):
        if name not in named:
            quarantine.append(QuarantineRecord(url, name, Reason.UNLABELED_IMAGE, "no row in the label table names this file"))

    rows = labels.rows
    ids = rows["image_id"].to_pylist()
    has_file = [i in layout.image_files for i in ids]
    for index, (image_id, present) in enumerate(zip(ids, has_file, strict=True)):
        if not present:
            quarantine.append(
                QuarantineRecord(labels.row_uri(layout.label_table, index), image_id, Reason.MISSING_IMAGE,
                                 f"no file {image_id} under images/ or images_NNN/images/")  # fmt: skip
            )
    candidates = rows.filter(pa.array(has_file, pa.bool_())).sort_by("image_id")
    split = assign_splits(
        candidates["image_id"].to_pylist(),
        candidates["patient_id"].to_pylist(),
        source.train_val.image_ids if source.train_val else None,
        source.test.image_ids if source.test else None,
        options.test_share,
        options.val_share,
    )
    candidates = candidates.append_column("split", split).append_column(
        "source_uri", pa.array([layout.image_files[i] for i in candidates["image_id"].to_pylist()], pa.string())
    )

    work = storage.join(out, ".work", "parts")
    per_part = options.images_per_part
    images = [
        PartImage(i, u, details[u]["size"], details[u]["version"])
        for i, u in zip(candidates["image_id"].to_pylist(), candidates["source_uri"].to_pylist(), strict=True)
    ]
    parts = []
    for chunk in chunk_images(images, per_part):
        key = part_key(chunk, options.sizes, options.limits, PIXEL_PIPELINE_VERSION)
        parts.append(PartSpec(key, storage.join(work, key), chunk, tuple(options.sizes), options.limits))

    boxes = source.boxes.rows if source.boxes else pa.Table.from_pylist([], schema=BOX_SCHEMA)
    box_quarantine = list(source.boxes.quarantine) if source.boxes else []
    split_quarantine = [q for s in (source.train_val, source.test) if s for q in s.quarantine]
    counts = {
        "label_rows": labels.n_input_rows,
        "image_files": layout.n_image_files,
        "inputs": labels.n_input_rows + sum(1 for q in quarantine if q.reason in (Reason.UNLABELED_IMAGE,))
        + len(layout.quarantine),
        "box_rows": source.boxes.n_input_rows if source.boxes else 0,
        "split_lines": sum(s.n_input_rows for s in (source.train_val, source.test) if s),
    }
    existing = None
    latest = read_latest(out)
    if latest:
        try:
            version = open_version(storage.join(out, latest))
            if version.info.get("source_fingerprint") == fingerprint:
                existing = latest
        except FileNotFoundError:
            existing = None
    return IngestPlan(
        source_root=layout.root, out=out, options=options, fingerprint=fingerprint, candidates=candidates,
        parts=parts, quarantine=quarantine, boxes=boxes, box_quarantine=box_quarantine,
        split_quarantine=split_quarantine, counts=counts, existing=existing,
        source_info={"root": layout.root, "label_table": layout.label_table, "edition": labels.edition,
                     "box_list": layout.box_list, "train_val_list": layout.train_val_list,
                     "test_list": layout.test_list},
    )  # fmt: skip


def run_parts(
    plan: IngestPlan, client: Any | None = None, progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """Decode every part not yet done, with Dask when ``client`` is given (else in this process)."""
    if not plan.parts:
        return []
    if client is None:
        results = []
        for spec in plan.parts:
            results.append(process_part(spec))
            if progress:
                progress(len(spec.images))
        return results
    from distributed import as_completed

    # One Dask task per part, never one per image, submitted largest first (part sizes vary:
    # content-defined boundaries) so that each worker's last task is a small one. A bag over the
    # same parts ran 2 workers at 1.79x of one; these priorities at 1.91x (bench/ingest.py).
    futures = [
        client.submit(process_part, spec, key=f"process_part-{spec.key}", priority=len(spec.images), pure=False)
        for spec in plan.parts
    ]
    size_of = {f.key: len(spec.images) for f, spec in zip(futures, plan.parts, strict=True)}
    results = []
    for future in as_completed(futures):
        results.append(future.result())
        if progress:
            progress(size_of[future.key])
    return results


@dataclass
class IngestResult:
    version: DatasetVersion
    created: bool  # False when an identical version already existed
    accounting: dict[str, Any]


def publish(plan: IngestPlan) -> IngestResult:
    """Assemble the version from the finished parts, write it, then LATEST."""
    if plan.existing:
        version = open_version(storage.join(plan.out, plan.existing))
        return IngestResult(version, False, version.info["accounting"])
    # Parts hold the candidates in order, so records line up with candidate rows one to one.
    shard_names: dict[str, str] = {}
    columns: dict[str, list] = {n: [] for n in ("png_width", "png_height", "sha256", "shard", "shard_index")}
    keep: list[bool] = []
    quarantine = list(plan.quarantine)
    for spec in plan.parts:
        records = storage.read_parquet(spec.records_url).to_pylist()
        if [r["image_id"] for r in records] != [image.image_id for image in spec.images]:
            raise RuntimeError(f"part {spec.work_dir} does not hold the images it was planned with")
        if any(r["reason"] is None for r in records):
            shard_names[spec.key] = f"shard-{len(shard_names):05d}"
        for r, image in zip(records, spec.images, strict=True):
            keep.append(r["reason"] is None)
            if r["reason"] is not None:
                quarantine.append(QuarantineRecord(image.url, image.image_id, Reason(r["reason"]), r["detail"]))
                continue
            for name in ("png_width", "png_height", "sha256", "shard_index"):
                columns[name].append(r[name])
            columns["shard"].append(shard_names[spec.key])
    metadata = plan.candidates.filter(pa.array(keep, pa.bool_()))
    for name, values in columns.items():
        metadata = metadata.append_column(name, pa.array(values, METADATA_SCHEMA.field(name).type))
    metadata = metadata.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA)

    accepted_ids = metadata["image_id"]
    box_ok = pc.is_in(plan.boxes["image_id"], accepted_ids)
    boxes = plan.boxes.filter(box_ok)
    box_quarantine = list(plan.box_quarantine) + [
        QuarantineRecord(plan.source_info["box_list"], r["image_id"], Reason.MISSING_IMAGE,
                         f"box ({r['finding']}) for an image that is not in the dataset")  # fmt: skip
        for r in plan.boxes.filter(pc.invert(box_ok)).to_pylist()
    ]
    all_quarantine = quarantine + box_quarantine + list(plan.split_quarantine)
    q_table = quarantine_table(all_quarantine)
    accounting = _accounting(plan, metadata.num_rows, quarantine, boxes.num_rows, box_quarantine)

    digest = content_digest(metadata, boxes, q_table, list(plan.options.sizes), PIXEL_PIPELINE_VERSION, plan.source_root)
    target = storage.join(plan.out, digest)
    if storage.exists(storage.join(target, "dataset.json")):
        version = open_version(target)
        created = False
    else:
        for spec in plan.parts:
            if spec.key in shard_names:
                for size in plan.options.sizes:
                    storage.copy(spec.shard_url(size), storage.join(target, "shards", str(size), f"{shard_names[spec.key]}.npy"))
        storage.write_parquet(metadata, storage.join(target, "metadata.parquet"))
        storage.write_parquet(q_table, storage.join(target, "quarantine.parquet"))
        storage.write_parquet(boxes, storage.join(target, "boxes.parquet"))
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
            "accounting": accounting,
        }
        storage.write_text(storage.join(target, "dataset.json"), json.dumps(info, indent=2) + "\n")
        version = DatasetVersion(plan.out, digest, info)
        created = True
    storage.write_text(storage.join(plan.out, "LATEST"), digest + "\n")
    # Keep this version's parts (the next ingest of a grown archive reuses them); drop all others.
    keep = {spec.key for spec in plan.parts}
    for folder in storage.list_dirs(storage.join(plan.out, ".work", "parts")):
        if posixpath.basename(folder.rstrip("/")) not in keep:
            storage.remove(folder, recursive=True)
    return IngestResult(version, created, accounting)


def _accounting(
    plan: IngestPlan, accepted: int, quarantine: list[QuarantineRecord], boxes: int, box_quarantine: list[QuarantineRecord]
) -> dict[str, Any]:
    by_reason = dict(Counter(str(q.reason) for q in quarantine).most_common())
    result = {
        "label_rows": plan.counts["label_rows"],
        "image_files": plan.counts["image_files"],
        "inputs": plan.counts["inputs"],
        "accepted": accepted,
        "quarantined": len(quarantine),
        "quarantined_by_reason": by_reason,
        "boxes": {"inputs": plan.counts["box_rows"], "accepted": boxes, "quarantined": len(box_quarantine)},
        "split_lists": {"inputs": plan.counts["split_lines"], "quarantined": len(plan.split_quarantine)},
    }
    if accepted + len(quarantine) != plan.counts["inputs"] or boxes + len(box_quarantine) != plan.counts["box_rows"]:
        raise RuntimeError(f"ingest accounting does not add up (a bug): {result}")
    return result


def ingest(
    source_url: str,
    out: str,
    options: IngestOptions = IngestOptions(),
    client: Any | None = None,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[IngestPlan], None] | None = None,
) -> IngestResult:
    """The whole ingest: plan, decode the parts (on Dask when ``client`` is given), publish."""
    plan = plan_ingest(source_url, out, options)
    if on_plan:
        on_plan(plan)
    if not plan.existing:
        run_parts(plan, client, progress)
    return publish(plan)
