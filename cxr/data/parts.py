"""The worker side of ingest: one part (a few hundred images) read, decoded once, resized, written as shards.

A part's results land in ``<out>/.work/parts/<key>/``: one ``<size>.npy`` (uint8 [n, size, size]) per
size, then ``records.parquet`` (one row per image: accepted with its shard index, or the reason it was
rejected). ``records.parquet`` is written last, so a part counts as done only when it is complete; the
key hashes the part's inputs, so a rerun after a crash reuses every finished part.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from PIL import Image

from cxr import storage
from cxr.data.decode import DecodeLimits, ImageRejected, decode_image, resize_square
from cxr.data.integrity import FileHash, with_part_hashes
from cxr.data.part_files import parts_root, reuse_finished_part
from cxr.data.quarantine import Reason
from cxr.data.source_image import decode_source_image

if TYPE_CHECKING:
    from cxr.data.zip_members import ZipMember

RECORD_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("reason", pa.string()),  # null: accepted
        pa.field("detail", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("png_width", pa.int32()),
        pa.field("png_height", pa.int32()),
        pa.field("shard_index", pa.int32()),
    ]
)


@dataclass(frozen=True)
class PartImage:
    image_id: str
    url: str  # a file, or a member of an archive (cxr.data.archives.member_uri)
    size: int  # bytes, from the listing
    version: str  # mtime or ETag, from the listing (an archive member: the archive's)
    member: ZipMember | None = None  # a zip member: where its bytes are in the zip


@dataclass(frozen=True)
class PartSpec:
    """What one part is: its images, the shard sizes, the limits, and where it writes."""

    key: str
    work_dir: str
    images: tuple[PartImage, ...]
    sizes: tuple[int, ...]
    limits: DecodeLimits

    @classmethod
    def at(
        cls, out: str, key: str, images: tuple[PartImage, ...], sizes: tuple[int, ...], limits: DecodeLimits
    ) -> PartSpec:
        """The part ``key`` of the output ``out``: its folder is ``<out>/.work/parts/<key>/``."""
        return cls(key, storage.join(parts_root(out), key), images, tuple(sizes), limits)

    @property
    def records_url(self) -> str:
        return storage.join(self.work_dir, "records.parquet")

    def shard_url(self, size: int) -> str:
        return storage.join(self.work_dir, f"{size}.npy")


def part_key(images: tuple[PartImage, ...], sizes: tuple[int, ...], limits: DecodeLimits, pipeline_version: int) -> str:
    """A hash of everything that decides a part's output."""
    h = hashlib.sha256(repr((pipeline_version, sorted(sizes), limits)).encode())
    for image in images:
        h.update(f"\n{image.image_id}\t{image.url}\t{image.size}\t{image.version}".encode())
    return h.hexdigest()[:24]


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@dataclass(frozen=True)
class PartResult:
    key: str
    images: int
    accepted: int
    skipped: bool  # finished by an earlier run: nothing decoded now


def decode_one(
    image: PartImage, limits: DecodeLimits, sizes: tuple[int, ...], data: bytes | ImageRejected | None = None
) -> tuple[str, int, int, list[np.ndarray]]:
    """Read and decode one image: its sha256, its size in px and its pixels at each size, or raise ImageRejected.

    ``data``: its bytes already read (an archive member), or why they could not be. A read that is
    refused (no permission) is a reason; a store that cannot be reached is not (it raises).
    """
    if isinstance(data, ImageRejected):
        raise data
    if image.size > limits.max_bytes:
        raise ImageRejected(Reason.TOO_LARGE, f"{image.size} bytes > {limits.max_bytes}")
    if data is None and image.member is not None:
        from cxr.data.zip_members import read_members

        data = _read_or_refuse(lambda: read_members([image.member], limits)[image.member])
    if data is None:
        data = _read_or_refuse(lambda: storage.read_bytes(image.url))
    if isinstance(data, ImageRejected):
        raise data
    gray = decode_source_image(data, limits)
    width, height = gray.size
    return hashlib.sha256(data).hexdigest(), width, height, [resize_square(gray, size) for size in sizes]


def _read_or_refuse(read: Callable[[], bytes | ImageRejected]) -> bytes | ImageRejected:
    try:
        return read()
    except FileNotFoundError:
        raise ImageRejected(Reason.MISSING_IMAGE, "the file disappeared after it was listed") from None
    except PermissionError as err:
        raise ImageRejected(Reason.PERMISSION_DENIED, f"reading it was refused: {err.strerror or err}") from None


def check_one(image: PartImage, limits: DecodeLimits, sizes: tuple[int, ...]) -> str | None:
    """Decode one image and keep nothing: its reason, or None (to find an image that kills its worker)."""
    try:
        decode_one(image, limits, sizes)
    except ImageRejected as rejected:
        return str(rejected.reason)
    return None


def process_part(
    spec: PartSpec, crashed: Mapping[str, str] | None = None, data: Mapping[str, bytes] | None = None
) -> PartResult:
    """Decode a part's images once and write its shards and records; a finished part is skipped.

    ``crashed`` names images (id -> detail) that killed the worker decoding them: they are not read
    again, only recorded as ``decode_crashed``. ``data``: the images' bytes by URL, when they were read
    already (from a ``.tar.gz`` stream); zip members are read here, those close together at once.
    """
    if reuse_finished_part(spec):  # records, and every shard they name with its recorded size
        done = storage.read_parquet(spec.records_url, columns=["reason"])
        return PartResult(spec.key, done.num_rows, done["reason"].null_count, skipped=True)
    crashed = crashed or {}
    known: dict[str, bytes | ImageRejected] = dict(data or {})
    zipped = [i.member for i in spec.images if i.member is not None and i.image_id not in crashed]
    if zipped:
        from cxr.data.zip_members import read_members

        by_member = {i.member: i.url for i in spec.images if i.member is not None}
        for member, content in read_members(zipped, spec.limits).items():
            known[by_member[member]] = content
    n = len(spec.images)
    shards = {size: np.empty((n, size, size), dtype=np.uint8) for size in spec.sizes}
    cols: dict[str, list] = {name: [] for name in RECORD_SCHEMA.names}
    accepted = 0
    for image in spec.images:
        row = {
            "image_id": image.image_id,
            "reason": None,
            "detail": None,
            "sha256": None,
            "png_width": None,
            "png_height": None,
            "shard_index": None,
        }
        try:
            if image.image_id in crashed:
                raise ImageRejected(Reason.DECODE_CRASHED, crashed[image.image_id])
            row["sha256"], row["png_width"], row["png_height"], pixels = decode_one(
                image, spec.limits, spec.sizes, known.get(image.url)
            )
            for shard, resized in zip(shards.values(), pixels, strict=True):
                shard[accepted] = resized
            row["shard_index"] = accepted
            accepted += 1
        except ImageRejected as rejected:
            row["reason"], row["detail"] = str(rejected.reason), rejected.detail
        for name, value in row.items():
            cols[name].append(value)
    hashes = {}
    if accepted:
        for size, shard in shards.items():
            data = _npy_bytes(shard[:accepted])
            storage.write_bytes(spec.shard_url(size), data)
            hashes[size] = FileHash.of(data)
    records = with_part_hashes(pa.Table.from_pydict(cols, schema=RECORD_SCHEMA), hashes)
    storage.write_parquet(records, spec.records_url)
    return PartResult(spec.key, n, accepted, skipped=False)


def warm_up() -> None:
    """Import and exercise the decoding path once (plugins, allocators), e.g. on fresh Dask workers.

    NIH's two layouts (8-bit gray, RGBA) through the default fast path (libpng, loaded on first use), and
    the RGBA one again through Pillow, the fallback.
    """
    for shape in ((64, 64), (64, 64, 4)):
        buf = io.BytesIO()
        Image.fromarray(np.zeros(shape, np.uint8)).save(buf, format="PNG")
        resize_square(decode_image(buf.getvalue()), 32)
    resize_square(decode_image(buf.getvalue(), decoder="pillow"), 32)
    _npy_bytes(np.zeros((1, 2, 2), np.uint8))
    import pyarrow.parquet  # noqa: F401
