"""Packed sources: NIH's images as they are downloaded, ``images_NNN.tar.gz`` files or one ``.zip``.

Members are streamed, never unpacked to disk. A member is named by fsspec's chained URL,
``tar://images/00000001_000.png::<archive URL>`` or ``zip://images_001/images/00000001_000.png::<zip URL>``.

The rules for members, in one place:

- a member's image id is the last component of its name; its folders do not matter inside an archive;
- a name that is absolute or has a ``..`` component is ``unsafe_path``; symbolic and hard links are
  ``symlink`` (never followed); folders are not inputs; any other member is an image file input;
- a member that inflates to more than :data:`MAX_RATIO` times its packed size (plus :data:`RATIO_SLACK`)
  is a decompression bomb (``too_large``), and so is a ``.tar.gz`` as a whole: it stops there;
- a ``.tar.gz`` that ends early or is corrupt keeps every member read before the damage; the rest is one
  ``damaged_archive`` record (an input of its own), and label rows whose image was not found say so.

A ``.tar.gz`` is read front to back by one task (gzip cannot be entered midway without an index, and
building one costs a second inflate of the whole archive: :mod:`cxr.data.tar_scan`); a zip is random
access, so its members go into parts like files (:mod:`cxr.data.zip_members`).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass

import pyarrow as pa

from cxr import storage
from cxr.data.decode import PIXEL_PIPELINE_VERSION, DecodeLimits

TAR_ARCHIVE = re.compile(r"images_.*\.tar\.gz")  # the twelve archives of the download, any subset, any such name
MAX_RATIO = 100  # inflated bytes per packed byte; PNGs barely compress (NIH's tar.gz: 1.003)
RATIO_SLACK = 64 * 2**20  # bytes an archive may inflate to beyond MAX_RATIO x its packed size (small archives)

LISTING_SCHEMA = pa.schema(
    [
        pa.field("member", pa.string()),  # the name in the archive; null for the record of a damaged tail
        pa.field("image_id", pa.string()),  # null: no image id (a damaged tail)
        pa.field("size", pa.int64()),  # bytes the member declares
        pa.field("part", pa.string()),  # the part its pixels went into; null when it was not decoded
        pa.field("reason", pa.string()),  # why it was not decoded (a quarantine reason), or null
        pa.field("detail", pa.string()),
    ]
)


def member_uri(kind: str, archive: str, member: str) -> str:
    """``tar://<member>::<archive>`` or ``zip://<member>::<archive>``."""
    return f"{kind}://{member}::{archive}"


def is_member_uri(uri: str) -> bool:
    return uri.startswith(("tar://", "zip://")) and "::" in uri


def unsafe_name(name: str) -> str | None:
    """Why a member name would leave the folder it is unpacked into, or None."""
    if not name or "\x00" in name:
        return "an empty name or a NUL byte"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or name.startswith("\\"):
        return "an absolute name"
    if ".." in re.split(r"[/\\]", name):
        return "a '..' component"
    return None


def image_id_of(name: str) -> str:
    return posixpath.basename(name.rstrip("/"))


def find_archives(root: str) -> list[dict]:
    """Listing details (url, size, version) of the ``images_*.tar.gz`` files in ``root``, by name."""
    return [e for e in storage.list_files_detail(root) if TAR_ARCHIVE.fullmatch(posixpath.basename(e["url"]))]


def archive_key(url: str, size: int, version: str, sizes: tuple[int, ...], limits: DecodeLimits) -> str:
    """A hash of everything that decides an archive's scan: grown or replaced, it gets a new key."""
    h = hashlib.sha256(repr((PIXEL_PIPELINE_VERSION, sorted(sizes), limits, url, size, version)).encode())
    return h.hexdigest()[:24]


def archives_root(out: str) -> str:
    return storage.join(out, ".work", "archives")


@dataclass(frozen=True)
class ArchiveSpec:
    """One ``.tar.gz`` of a source and where its scan goes."""

    url: str
    size: int  # bytes, from the listing
    version: str  # mtime or ETag, from the listing
    key: str
    out: str
    sizes: tuple[int, ...]
    limits: DecodeLimits
    images_per_part: int

    @property
    def name(self) -> str:
        return posixpath.basename(self.url)

    @property
    def listing_url(self) -> str:
        """Written last by a scan: the archive counts as scanned only with it (and every part it names)."""
        return storage.join(archives_root(self.out), f"{self.key}.parquet")


def read_listing(spec: ArchiveSpec) -> pa.Table | None:
    """A finished scan's member listing, or None."""
    try:
        return storage.read_parquet(spec.listing_url)
    except FileNotFoundError:
        return None
