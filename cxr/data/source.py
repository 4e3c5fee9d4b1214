"""A source archive in the NIH layout, on a local path or ``s3://``: find its files and read its tables.

Layout (DESIGN.md): ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv`` (either may be gzipped),
optional ``BBox_List_2017.csv``, optional ``train_val_list.txt`` / ``test_list.txt``, and PNGs under
``images/`` or ``images_001/images/`` ... ``images_012/images/``.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow.compute as pc

from cxr import storage
from cxr.data.archives import find_archives, image_id_of, is_member_uri, member_uri, unsafe_name
from cxr.data.csv_text import SourceFormatError
from cxr.data.labels import BoxList, LabelTable, SplitList, read_box_list, read_label_table, read_split_list
from cxr.data.quarantine import QuarantineRecord, Reason, count_by_reason
from cxr.data.zip_members import ZipMember, list_zip, read_member
from cxr.findings import FINDING_COLUMNS, FINDINGS

LABEL_TABLE_NAMES = (
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017.csv",
    "Data_Entry_2017.csv.gz",
)
BOX_LIST_NAMES = ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")
SPLIT_LIST_NAMES = ("train_val_list.txt", "test_list.txt")
_NUMBERED_FOLDER = re.compile(r"images_\d{3}")


@dataclass
class SourceLayout:
    """Where the parts of a source archive are."""

    root: str
    label_table: str
    box_list: str | None
    train_val_list: str | None
    test_list: str | None
    image_files: dict[str, str]  # image id (file name) -> URL, first occurrence
    # Image files settled here, each an input of its own: a name seen twice, a name that is not UTF-8,
    # a linked image folder (not followed), a link whose name is also a file's.
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # symbolic links in image folders: name -> URL, never read
    # A zip source: its members by URI (tables and images; image_files names the images' URIs).
    zip_members: dict[str, ZipMember] = field(default_factory=dict)
    # ``images_*.tar.gz`` files in the root, by name: listing details (url, size, version), read when decoding.
    archives: list[dict] = field(default_factory=list)
    tables: tuple[str, ...] = ()  # every label table (NIH: one); the fingerprint hashes them all
    file_details: dict[str, dict] = field(default_factory=dict)  # listing details by URL, where discovery has them

    def __post_init__(self) -> None:
        self.tables = self.tables or (self.label_table,)

    @property
    def n_image_files(self) -> int:
        """Image files known before decoding (the members of ``.tar.gz`` archives are counted when they are read)."""
        return len(self.image_files) + len(self.links) + len(self.quarantine)

    def read(self, url: str) -> bytes:
        """A table's bytes, from a file or from a member of the zip source."""
        if is_member_uri(url):
            return read_member(self.zip_members[url])
        return storage.read_bytes(url)


def printable(url: str) -> str:
    """A local path as valid UTF-8 text: bytes of a name that is not UTF-8 become ``\\xNN`` escapes."""
    return url.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir hands undecodable bytes over as surrogates
        return False
    return True


def _first_existing(root: str, names: tuple[str, ...], present: set[str]) -> str | None:
    for name in names:
        if name in present:
            return storage.join(root, name)
    return None


def is_image_folder(url: str) -> bool:
    """Whether a folder of an archive's root is one of its image folders (``images``, ``images_NNN``)."""
    base = posixpath.basename(url.rstrip("/"))
    return base == "images" or _NUMBERED_FOLDER.fullmatch(base) is not None


def image_folders(root: str) -> list[str]:
    """The image folders of an archive: ``images/`` and ``images_NNN/images/``, in that order."""
    folders = []
    for d in storage.list_dirs(root):
        base = posixpath.basename(d.rstrip("/"))
        if base == "images":
            folders.insert(0, d)
        elif _NUMBERED_FOLDER.fullmatch(base):
            folders.append(storage.join(d, "images"))
    return folders


def discover(root: str) -> SourceLayout:
    """Find the label table, box list, split lists and image files of an archive at ``root``."""
    root = root.rstrip("/") if storage.is_remote(root) else root
    if storage.is_file(root):
        if root.lower().endswith(".zip"):
            return discover_zip(root)
        raise SourceFormatError(
            f"{root}: is a file, where the archive's folder (or a .zip) was expected (the folder that holds it)"
        )
    present = {posixpath.basename(p) for p in storage.list_files(root)}
    label_table = _first_existing(root, LABEL_TABLE_NAMES, present)
    if label_table is None:
        if not storage.exists(root):
            raise FileNotFoundError(f"source {root!r} does not exist")
        raise SourceFormatError(f"{root}: no label table; expected one of {', '.join(LABEL_TABLE_NAMES)}")
    images: dict[str, str] = {}
    links: dict[str, str] = {}
    settled: list[QuarantineRecord] = []
    for url in storage.list_links(root):
        base = posixpath.basename(url)
        if base == "images" or _NUMBERED_FOLDER.fullmatch(base):
            settled.append(
                QuarantineRecord(
                    printable(url), None, Reason.SYMLINK, "a linked image folder; links are never followed"
                )
            )
    folders = image_folders(root)
    for folder in folders:
        for url in storage.list_files(folder):
            name = posixpath.basename(url)
            if not _is_utf8(name):
                shown = printable(url)
                settled.append(
                    QuarantineRecord(
                        shown, posixpath.basename(shown), Reason.NON_UTF8_NAME, "the file name is not UTF-8"
                    )
                )
            elif name in images:
                settled.append(
                    QuarantineRecord(
                        url, name, Reason.DUPLICATE_IMAGE_ID, f"the same file name is also at {images[name]}"
                    )
                )
            else:
                images[name] = url
    for folder in folders:
        for url in storage.list_links(folder):
            shown = printable(url)
            name = posixpath.basename(shown)
            if _is_utf8(url) and name not in images and name not in links:
                links[name] = url  # settled when planning, with the label row that names it, if any
                continue
            also = images.get(name) or links.get(name)
            detail = "a symbolic link, never followed" + (f"; the same name is also at {also}" if also else "")
            settled.append(QuarantineRecord(shown, name, Reason.SYMLINK, detail))
    return SourceLayout(
        root=root,
        label_table=label_table,
        box_list=_first_existing(root, BOX_LIST_NAMES, present),
        train_val_list=_first_existing(root, ("train_val_list.txt",), present),
        test_list=_first_existing(root, ("test_list.txt",), present),
        image_files=images,
        quarantine=settled,
        links=links,
        archives=find_archives(root),
    )


def _in_image_folder(name: str) -> bool:
    """``images/<file>`` or ``images_NNN/images/<file>``, as in the release."""
    parts = name.split("/")
    if len(parts) == 2:
        return parts[0] == "images"
    return len(parts) == 3 and _NUMBERED_FOLDER.fullmatch(parts[0]) is not None and parts[1] == "images"


def discover_zip(url: str) -> SourceLayout:
    """The layout of a ``.zip`` holding the release's folders (tables at its top, or else beside the zip)."""
    members = list_zip(url)
    by_uri = {member_uri("zip", url, m.name): m for m in members}
    top = {m.name for m in members if "/" not in m.name}

    def table(names: tuple[str, ...]) -> str | None:
        for name in names:
            if name in top:
                return member_uri("zip", url, name)
        beside = posixpath.dirname(url) if storage.is_remote(url) else os.path.dirname(url)
        present = {posixpath.basename(p) for p in storage.list_files(beside)}
        return _first_existing(beside, names, present)

    label_table = table(LABEL_TABLE_NAMES)
    if label_table is None:
        raise SourceFormatError(
            f"{url}: no label table in the zip or beside it; expected one of {', '.join(LABEL_TABLE_NAMES)}"
        )
    images: dict[str, str] = {}
    settled: list[QuarantineRecord] = []
    for member in members:
        if member.is_dir:
            continue
        uri = member_uri("zip", url, member.name)
        problem = unsafe_name(member.name)
        if problem:
            detail = f"{problem}; a member may not leave its folder"
            settled.append(QuarantineRecord(uri, image_id_of(member.name), Reason.UNSAFE_PATH, detail))
            continue
        if not _in_image_folder(member.name):
            continue
        name = image_id_of(member.name)
        if member.link:
            settled.append(QuarantineRecord(uri, name, Reason.SYMLINK, "a symbolic link, never followed"))
        elif name in images:
            detail = f"the same file name is also at {images[name]}"
            settled.append(QuarantineRecord(uri, name, Reason.DUPLICATE_IMAGE_ID, detail))
        else:
            images[name] = uri
    return SourceLayout(
        root=url,
        label_table=label_table,
        box_list=table(BOX_LIST_NAMES),
        train_val_list=table(("train_val_list.txt",)),
        test_list=table(("test_list.txt",)),
        image_files=images,
        quarantine=settled,
        zip_members=by_uri,
    )


@dataclass
class SourceTables:
    """A source's layout and its parsed tables, in the common form every format's adapter reads into."""

    layout: SourceLayout
    labels: LabelTable
    boxes: BoxList | None
    train_val: SplitList | None
    test: SplitList | None


def read_nih(root: str) -> SourceTables:
    """Discover an archive and parse its label table, box list and split lists."""
    layout = discover(root)
    labels = read_label_table(layout.read(layout.label_table), layout.label_table)
    boxes = read_box_list(layout.read(layout.box_list), layout.box_list) if layout.box_list else None
    train_val = (
        read_split_list(layout.read(layout.train_val_list), layout.train_val_list) if layout.train_val_list else None
    )
    test = read_split_list(layout.read(layout.test_list), layout.test_list) if layout.test_list else None
    return SourceTables(layout, labels, boxes, train_val, test)


@dataclass(frozen=True)
class SourceSummary:
    """Counts a person checks first (``cxr inspect``): rows, patients, findings, files, what did not match."""

    root: str
    label_table: str
    edition: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: Mapping[str, int]
    patients: int
    no_finding: int
    positives: Mapping[str, int]
    image_files: int
    rows_without_file: int
    files_without_row: int
    boxes: int
    train_val_listed: int | None  # images train_val_list.txt names; None: the archive has no such file
    test_listed: int | None  # images test_list.txt names; None: the archive has no such file
    archives: int = 0  # images_*.tar.gz files: their members are known only once ingest reads them
    archive_bytes: int = 0
    source_format: str = "nih"
    unlabelled: Mapping[str, int] = field(default_factory=dict)  # rows whose finding is null (missing), by finding
    split_list_names: tuple[str, str] = SPLIT_LIST_NAMES  # what names the train/val and the test images


def split_lists_text(summary: SourceSummary) -> str:
    """The split lists as a person reads them, and what a missing one means for the splits (:mod:`.splits`)."""
    if summary.source_format != "nih" and summary.train_val_listed is None and summary.test_listed is None:
        return "splits are made by patient"  # a format without split lists (DICOM)
    names = summary.split_list_names
    listed = ((names[0], summary.train_val_listed), (names[1], summary.test_listed))
    text = ", ".join(f"{name}: {n} images" if n is not None else f"{name}: missing" for name, n in listed)
    missing = sum(n is None for _, n in listed)
    if missing == 2:
        return f"split lists: {text} (splits are made by patient)"
    if missing == 1:
        return f"split lists: {text} (images no list names are split by patient)"
    return f"split lists: {text}"


def summarize(source: SourceTables) -> SourceSummary:
    """What an archive holds, before anything is decoded."""
    rows = source.labels.rows
    ids = set(rows["image_id"].to_pylist())
    files = set(source.layout.image_files)
    return SourceSummary(
        root=source.layout.root,
        label_table=source.layout.label_table,
        edition=source.labels.edition,
        rows_in=source.labels.n_input_rows,
        rows_accepted=rows.num_rows,
        rows_quarantined=count_by_reason(source.labels.quarantine),
        patients=len(set(rows["patient_id"].to_pylist())),
        no_finding=int(sum(1 for labels in rows["finding_labels"].to_pylist() if not labels)),
        positives={f: int(pc.sum(rows[c]).as_py() or 0) for f, c in zip(FINDINGS, FINDING_COLUMNS, strict=True)},
        image_files=source.layout.n_image_files,
        rows_without_file=len(ids - files),
        files_without_row=len(files - ids),
        boxes=source.boxes.rows.num_rows if source.boxes else 0,
        train_val_listed=len(source.train_val.image_ids) if source.train_val else None,
        test_listed=len(source.test.image_ids) if source.test else None,
        archives=len(source.layout.archives),
        archive_bytes=sum(a["size"] for a in source.layout.archives),
        source_format=source.labels.rows["source_format"][0].as_py() if rows.num_rows else "nih",
        unlabelled={
            f: rows[c].null_count for f, c in zip(FINDINGS, FINDING_COLUMNS, strict=True) if rows[c].null_count
        },
        split_list_names=tuple(  # type: ignore[arg-type]
            posixpath.basename(u) if u else n
            for u, n in zip((source.layout.train_val_list, source.layout.test_list), SPLIT_LIST_NAMES, strict=True)
        ),
    )
