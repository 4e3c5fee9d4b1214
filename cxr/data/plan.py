"""Planning an ingest: everything decided before any pixel is decoded.

:func:`plan_ingest` reads the archive's tables, lists its images, settles every input that needs no
pixels (files without a row, bad rows), and cuts the rest into parts at content-defined boundaries, so a
grown archive changes only the parts around its new images. Images in ``.tar.gz`` archives are listed
only as they are read (:mod:`cxr.data.tar_scan`): rows no file holds are settled at publish, when every
archive has been read, and so are the splits (they depend on which images exist).
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pyarrow as pa

from cxr import storage
from cxr.data.adapters import adapter, detect_format
from cxr.data.archives import ArchiveSpec, archive_key
from cxr.data.csv_text import SourceFormatError
from cxr.data.decode import PIXEL_PIPELINE_VERSION, DecodeLimits
from cxr.data.label_policy import LabelPolicy
from cxr.data.labels import BOX_SCHEMA
from cxr.data.parts import PartImage, PartSpec, part_key
from cxr.data.quarantine import QuarantineRecord, Reason
from cxr.data.source import SourceTables
from cxr.data.splits import TEST_SHARE, VAL_SHARE
from cxr.data.version import SCHEMA_VERSION, observed_now, open_version, read_latest

PART_BYTES = 64 * 2**20  # decoded pixels held by one part, all sizes together


@dataclass(frozen=True)
class IngestOptions:
    """How to ingest. Every field has a default that fits NIH on a laptop."""

    sizes: tuple[int, ...] = (256,)  # shard sides in px; training picks one
    limits: DecodeLimits = DecodeLimits()
    test_share: float = TEST_SHARE  # patients to test when no official list names them
    val_share: float = VAL_SHARE  # patients to validation, out of train/val
    # Images per part on average; None: as many as fit PART_BYTES at every size together, between 8 and 64.
    # Parts end at content-defined boundaries (chunk_images), so one part holds 1 to 4 x this many images.
    part_images: int | None = None
    source_format: str | None = None  # the adapter (cxr.data.adapters); None: recognised from the source's files
    label_policy: LabelPolicy = LabelPolicy()  # what uncertain and blank labels become (CheXpert family)

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
    listed: pa.Table  # label rows whose image a file or zip member holds, sorted by image_id, with source_uri
    unlisted: pa.Table  # label rows no file holds, with row_uri: found in a .tar.gz when decoding, or missing
    named: frozenset[str]  # image ids the label table names (rows accepted or quarantined)
    parts: list[PartSpec]
    archives: list[ArchiveSpec]  # the source's .tar.gz files, one scan each
    split_lists: tuple[tuple[str, ...] | None, tuple[str, ...] | None]  # train_val_list, test_list image ids
    quarantine: list[QuarantineRecord]  # rows and files settled without pixels
    boxes: pa.Table
    box_quarantine: list[QuarantineRecord]
    split_quarantine: list[QuarantineRecord]
    counts: dict[str, int] = field(default_factory=dict)  # label_rows, image_files, inputs, box_rows, split_lines
    source_info: dict[str, Any] = field(default_factory=dict)
    existing: str | None = None  # digest of a version already made from exactly this input
    observed_at: str = field(default_factory=observed_now)  # made just after listing: orders LATEST


def _fingerprint(source: SourceTables, files: list[dict[str, Any]], options: IngestOptions, version: int) -> str:
    h = hashlib.sha256(repr((PIXEL_PIPELINE_VERSION, SCHEMA_VERSION, asdict(options), version)).encode())
    layout = source.layout
    for url in dict.fromkeys((*layout.tables, layout.box_list, layout.train_val_list, layout.test_list)):
        h.update(f"\n{url and posixpath.basename(url)}".encode())
        if url:
            h.update(hashlib.sha256(layout.read(url)).digest())
    for f in files:  # a name that is not UTF-8 arrives with surrogates: hash its bytes
        h.update(f"\n{f['url']}\t{f['size']}\t{f['version']}".encode("utf-8", "surrogateescape"))
    for url in sorted(layout.links.values()) + [q.source_uri for q in layout.quarantine]:
        h.update(f"\nsettled\t{url}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _list_images(source: SourceTables) -> dict[str, dict[str, Any]]:
    """Listing details (size, version) of every image file, by URL."""
    from cxr.data.source import image_folders

    layout = source.layout
    if layout.file_details:  # listed by discovery
        return dict(layout.file_details)
    details: dict[str, dict[str, Any]] = {}
    if layout.zip_members:  # a zip source: its members, each with the zip's own version
        version = storage.file_detail(layout.root)["version"]
        for uri in layout.image_files.values():
            member = layout.zip_members[uri]
            details[uri] = {"url": uri, "size": member.size, "version": f"{version}:{member.crc:08x}"}
        return details
    for folder in image_folders(layout.root):
        for entry in storage.list_files_detail(folder):
            details[entry["url"]] = entry
    for entry in layout.archives:
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


def _where(url: str) -> str:
    """A URL to compare places by: a local path resolved (links, ``..``), a remote one without its trailing slash."""
    import os

    return url.rstrip("/") if storage.is_remote(url) else os.path.realpath(storage.absolute(url))


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_output(source_url: str, out: str, new_source: bool = False) -> None:
    """Refuse, before anything is read, an output inside the source, or a dataset root made from another source.

    A root's versions are snapshots of one source: a grown archive at the same URL is its next version, but
    an archive at another URL would move ``LATEST`` to unrelated data; ``new_source`` allows that.
    """
    source, target = _where(source_url), _where(out)
    if _inside(target, source):
        raise ValueError(
            f"--out {out} is inside the source {source_url}: the dataset would be written into the archive; "
            "choose an output outside it"
        )
    latest = read_latest(out)
    if latest is None or new_source:
        return
    try:
        made_from = open_version(storage.join(storage.absolute(out), latest)).info.get("source", {}).get("root")
    except FileNotFoundError:
        return
    if made_from and _where(made_from) != source:
        raise ValueError(
            f"{out} holds versions of another source ({made_from}; LATEST {latest}), not of {source_url}; "
            "ingest into another --out, or pass --new-source to make this source's version LATEST there"
        )


def plan_ingest(
    source_url: str, out: str, options: IngestOptions = IngestOptions(), new_source: bool = False
) -> IngestPlan:
    """Read and reconcile the archive's tables and files; cut the work into parts.

    The output is checked first (:func:`check_output`): never inside the source, and a root that holds
    versions of another source only with ``new_source``.
    """
    check_output(source_url, out, new_source)
    out = storage.absolute(out)
    reader = adapter(options.source_format or detect_format(source_url))
    options = replace(options, source_format=reader.name, limits=replace(options.limits, formats=reader.formats))
    source = reader.read(source_url, options.label_policy, options.limits)
    layout, labels = source.layout, source.labels
    if labels.rows.num_rows and not (layout.image_files or layout.archives or layout.links or layout.quarantine):
        raise SourceFormatError(
            f"{layout.root}: the label table names {labels.rows.num_rows} images, and there is no image here: "
            "expected images/ or images_NNN/images/ folders, images_*.tar.gz archives, or a .zip holding them"
        )
    details = _list_images(source)
    fingerprint = _fingerprint(source, [details[u] for u in sorted(details)], options, reader.version)

    quarantine: list[QuarantineRecord] = list(labels.quarantine) + list(layout.quarantine)
    # Files no row names are inputs of their own; a file a quarantined row names goes with that row.
    unnamed_files = len(layout.quarantine)
    named = set(labels.rows["image_id"].to_pylist()) | {q.image_id for q in labels.quarantine if q.image_id}
    for name, url in sorted(layout.image_files.items()):
        if name not in named:
            unnamed_files += 1
            quarantine.append(
                QuarantineRecord(url, name, Reason.UNLABELED_IMAGE, "no row in the label table names this file")
            )
    for name, url in sorted(layout.links.items()):
        if name not in named:
            unnamed_files += 1
            quarantine.append(QuarantineRecord(url, name, Reason.SYMLINK, "a symbolic link, never followed"))

    rows = labels.rows
    ids = rows["image_id"].to_pylist()
    has_file = [i in layout.image_files for i in ids]
    unlisted_rows = []
    for index, (image_id, present) in enumerate(zip(ids, has_file, strict=True)):
        if present:
            continue
        if image_id in layout.links:
            uri = labels.row_uri(index)
            detail = f"{layout.links[image_id]} is a symbolic link, never followed"
            quarantine.append(QuarantineRecord(uri, image_id, Reason.SYMLINK, detail))
        else:
            unlisted_rows.append(index)
    listed = rows.filter(pa.array(has_file, pa.bool_())).sort_by("image_id")
    listed = listed.append_column(
        "source_uri", pa.array([layout.image_files[i] for i in listed["image_id"].to_pylist()], pa.string())
    )
    unlisted = rows.take(pa.array(unlisted_rows, pa.int64())).append_column(
        "row_uri", pa.array([labels.row_uri(i) for i in unlisted_rows], pa.string())
    )

    per_part = options.images_per_part
    images = [
        PartImage(i, u, details[u]["size"], details[u]["version"], layout.zip_members.get(u))
        for i, u in zip(listed["image_id"].to_pylist(), listed["source_uri"].to_pylist(), strict=True)
    ]
    parts = []
    for chunk in chunk_images(images, per_part):
        key = part_key(chunk, options.sizes, options.limits, PIXEL_PIPELINE_VERSION)
        parts.append(PartSpec.at(out, key, chunk, options.sizes, options.limits))
    archives = [
        ArchiveSpec(
            e["url"],
            e["size"],
            e["version"],
            archive_key(e["url"], e["size"], e["version"], tuple(options.sizes), options.limits),
            out,
            tuple(options.sizes),
            options.limits,
            per_part,
        )
        for e in layout.archives
    ]

    boxes = source.boxes.rows if source.boxes else pa.Table.from_pylist([], schema=BOX_SCHEMA)
    box_quarantine = list(source.boxes.quarantine) if source.boxes else []
    split_quarantine = [q for s in (source.train_val, source.test) if s for q in s.quarantine]
    counts = {
        "label_rows": labels.n_input_rows,
        "image_files": layout.n_image_files,
        "inputs": labels.n_input_rows + unnamed_files,
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
        source_root=layout.root,
        out=out,
        options=options,
        fingerprint=fingerprint,
        listed=listed,
        unlisted=unlisted,
        named=frozenset(named),
        parts=parts,
        archives=archives,
        split_lists=(
            tuple(source.train_val.image_ids) if source.train_val else None,
            tuple(source.test.image_ids) if source.test else None,
        ),
        quarantine=quarantine,
        boxes=boxes,
        box_quarantine=box_quarantine,
        split_quarantine=split_quarantine,
        counts=counts,
        existing=existing,
        source_info={
            "root": layout.root,
            "format": reader.name,
            "adapter": {"name": reader.name, "version": reader.version},
            "label_policy": asdict(options.label_policy),
            "tables": list(layout.tables),
            "label_table": layout.label_table,
            "edition": labels.edition,
            "box_list": layout.box_list,
            "train_val_list": layout.train_val_list,
            "test_list": layout.test_list,
        },
    )
