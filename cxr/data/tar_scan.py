"""One ``.tar.gz`` of a source, read front to back once: its members listed and its images decoded into parts.

The archive is streamed from storage (local or S3), inflated (ISA-L's ``igzip`` when installed, 2.8x
zlib on NIH's archives; else :mod:`gzip`) and read as a tar stream, never unpacked to disk. Images are
decoded as they pass, in chunks of ``images_per_part`` that become ordinary parts
(:func:`cxr.data.parts.process_part`, keyed by the archive's identity and the members), so a scan that
was killed and is run again decodes only the chunks it had not finished (the stream is read again).
The listing (``<out>/.work/archives/<key>.parquet``) is written last: with it, and every part it names,
the archive counts as scanned and a rerun does not read it again. Every member gets one listing row;
rules for members are in :mod:`cxr.data.archives`.

Why one task per archive: gzip has no entry points, so splitting an archive over workers needs an index
of the stream (rapidgzip, indexed_gzip), which costs a full extra inflate of the archive before any
decoding can be spread; inflating once here costs 4 to 10 % of decoding (bench/ingest.py), and NIH's
download comes as twelve archives, which spreads over twelve workers.
"""

from __future__ import annotations

import gzip
import logging
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from cxr import storage
from cxr.data.archives import (
    LISTING_SCHEMA,
    MAX_RATIO,
    RATIO_SLACK,
    ArchiveSpec,
    image_id_of,
    member_uri,
    read_listing,
    unsafe_name,
)
from cxr.data.decode import PIXEL_PIPELINE_VERSION
from cxr.data.part_files import finished_keys, parts_root
from cxr.data.parts import PartImage, PartSpec, part_key, process_part
from cxr.data.quarantine import Reason

log = logging.getLogger(__name__)
PROGRESS_TOPIC = "cxr-ingest-progress"  # Dask events: packed bytes an archive's worker has read
_CHECK_TAIL = 2**20  # bytes read at a time when checking that nothing follows the tar's last member


def _gzip_reader(stream: Any) -> Any:
    try:
        from isal import igzip

        return igzip.GzipFile(fileobj=stream, mode="rb")
    except ImportError:  # ISA-L is optional: zlib is 2.8x slower at inflating, still a small share of decoding
        return gzip.GzipFile(fileobj=stream, mode="rb")


class BombError(Exception):
    """The archive inflates to far more than it holds packed."""


class _WriteFailed(Exception):
    """Writing a part failed: not the archive's fault (the cause is raised)."""


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What a damaged archive makes the reader raise (not a store that fails: SourceReadError)."""
    errors: list[type[BaseException]] = [BombError, EOFError, gzip.BadGzipFile, zlib.error, tarfile.TarError]
    try:
        from isal import isal_zlib

        errors.append(isal_zlib.error)
    except ImportError:
        pass
    return tuple(errors)


class _Inflated:
    """The inflated stream, counting what it gives and refusing a decompression bomb."""

    def __init__(self, raw: storage._Stream, inner: Any, packed_size: int) -> None:
        self.raw, self.inner, self.packed_size, self.given = raw, inner, packed_size, 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.given += len(data)
        if self.given > MAX_RATIO * max(self.raw.consumed, 1) + RATIO_SLACK:
            raise BombError(
                f"inflates to more than {MAX_RATIO} times its packed size ({self.given} bytes from "
                f"{self.raw.consumed}): a decompression bomb; nothing after this point is read"
            )
        return data


@dataclass(frozen=True)
class ArchiveResult:
    key: str
    name: str
    members: int
    images: int  # image members passed to decoding (by this run or before)
    decoded: int  # images this run decoded (a chunk finished before a kill is not decoded again)
    skipped: bool  # scanned by an earlier run: nothing read now
    damaged: str | None  # what went wrong in the stream, if anything


def scanned(specs: list[ArchiveSpec]) -> set[str]:
    """Keys of the archives whose listing exists and whose parts are all finished."""
    done = set()
    for spec in specs:
        listing = read_listing(spec)
        if listing is None:
            continue
        keys = {k for k in listing["part"].to_pylist() if k}
        parts = [_part_files(spec, k) for k in keys]
        if finished_keys(parts, spec.out) >= keys:
            done.add(spec.key)
    return done


def _part_files(spec: ArchiveSpec, key: str) -> PartSpec:
    return PartSpec(key, storage.join(parts_root(spec.out), key), (), spec.sizes, spec.limits)


def chunk_part(spec: ArchiveSpec, images: tuple[PartImage, ...]) -> PartSpec:
    key = part_key(images, spec.sizes, spec.limits, PIXEL_PIPELINE_VERSION)
    return PartSpec(key, storage.join(parts_root(spec.out), key), images, spec.sizes, spec.limits)


def scan_archive(spec: ArchiveSpec, report: Callable[[int], None] | None = None) -> ArchiveResult:
    """List and decode one ``.tar.gz``, or skip it when an earlier run scanned it (module docstring).

    ``report(n)`` is called with the packed bytes read since the last call, after each chunk.
    """
    if spec.key in scanned([spec]):
        listing = read_listing(spec)
        assert listing is not None
        images = sum(1 for p in listing["part"].to_pylist() if p)
        return ArchiveResult(spec.key, spec.name, listing.num_rows, images, 0, skipped=True, damaged=None)
    rows: list[dict[str, Any]] = []
    chunk: list[PartImage] = []
    data: dict[str, bytes] = {}
    seen: dict[str, str] = {}  # image id -> member name, within this archive
    members: dict[str, str] = {}  # member URI -> member name, for the chunk being filled
    reported = 0
    decoded = 0
    damaged: str | None = None
    current: str | None = None  # the member being read when the stream failed

    def flush() -> None:
        nonlocal chunk, data, reported, decoded
        if chunk:
            part = chunk_part(spec, tuple(chunk))
            try:
                result = process_part(part, data=data)
                decoded += 0 if result.skipped else result.images
            except Exception as err:
                raise _WriteFailed() from err
            for image in chunk:
                rows.append({"member": members[image.url], "size": image.size, "part": part.key})
            chunk, data = [], {}
        if report and raw.consumed > reported:
            report(raw.consumed - reported)
            reported = raw.consumed

    def settle(name: str, size: int, reason: Reason, detail: str) -> None:
        rows.append({"member": name, "size": size, "reason": str(reason), "detail": detail})

    raw = storage.open_stream(spec.url)
    try:
        inflated = _Inflated(raw, _gzip_reader(raw), spec.size)
        try:
            with tarfile.open(fileobj=inflated, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    current = member.name
                    tar.members = []  # stream mode keeps every header it read: hold none
                    if member.isdir():
                        continue
                    name, image_id = member.name, image_id_of(member.name)
                    problem = unsafe_name(name)
                    if problem:
                        settle(name, member.size, Reason.UNSAFE_PATH, f"{problem}; a member may not leave its folder")
                    elif member.issym() or member.islnk():
                        kind = "a symbolic link" if member.issym() else "a hard link"
                        settle(name, 0, Reason.SYMLINK, f"{kind} to {member.linkname!r}, never followed")
                    elif not member.isreg():
                        settle(name, member.size, Reason.UNREADABLE_IMAGE, "a tar member that is not a file")
                    elif image_id in seen:
                        settle(
                            name, member.size, Reason.DUPLICATE_IMAGE_ID, f"also at {seen[image_id]} in this archive"
                        )
                    elif member.size > spec.limits.max_bytes:
                        settle(name, member.size, Reason.TOO_LARGE, f"{member.size} bytes > {spec.limits.max_bytes}")
                    else:
                        seen[image_id] = name
                        handle = tar.extractfile(member)
                        assert handle is not None
                        content = handle.read()
                        if len(content) != member.size:
                            raise EOFError(f"the archive ends inside {name}")
                        image = PartImage(image_id, member_uri("tar", spec.url, name), member.size, spec.version)
                        chunk.append(image)
                        data[image.url] = content
                        members[image.url] = name
                        if len(chunk) >= spec.images_per_part:
                            flush()
                    current = None
                current = None
                _check_end(inflated)
        except _WriteFailed as err:
            raise err.__cause__ from None  # type: ignore[misc]
        except _stream_errors() as err:
            damaged = f"{type(err).__name__}: {err}"
            if current is not None:
                settle(current, 0, Reason.DAMAGED_ARCHIVE, f"the archive is damaged inside this member ({damaged})")
        try:
            flush()
        except _WriteFailed as err:
            raise err.__cause__ from None  # type: ignore[misc]
    finally:
        raw.close()
    if damaged:
        last = next((r["member"] for r in reversed(rows) if r.get("member")), None)
        where = f"after member {last}" if last else "before its first member"
        rows.append(
            {
                "member": None,
                "size": max(spec.size - reported, 0),
                "reason": str(Reason.DAMAGED_ARCHIVE),
                "detail": f"the archive could not be read {where}: {damaged}; images after that point are missing",
            }
        )
        log.warning("%s: damaged, %s", spec.url, damaged)
    listing = _listing_table(rows, spec)
    storage.write_parquet(listing, spec.listing_url)
    images = sum(1 for r in rows if r.get("part"))
    return ArchiveResult(spec.key, spec.name, listing.num_rows, images, decoded, skipped=False, damaged=damaged)


def scan_on_worker(spec: ArchiveSpec, token: str) -> ArchiveResult:
    """:func:`scan_archive` on a Dask worker, telling the client its progress as events (:data:`PROGRESS_TOPIC`)."""
    from distributed import get_worker

    worker = get_worker()
    return scan_archive(spec, lambda n: worker.log_event(PROGRESS_TOPIC, {"token": token, "key": spec.key, "bytes": n}))


def _check_end(inflated: _Inflated) -> None:
    """Raise if anything but zero blocks follows the tar's end: Python's tarfile stops quietly at a bad header."""
    while True:
        block = inflated.read(_CHECK_TAIL)
        if not block:
            return
        if block.count(0) != len(block):
            raise tarfile.ReadError(f"an unreadable tar header at about byte {inflated.given - len(block)}")


def _listing_table(rows: list[dict[str, Any]], spec: ArchiveSpec) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in LISTING_SCHEMA.names}
    for row in rows:
        member = row.get("member")
        columns["member"].append(member)
        columns["image_id"].append(image_id_of(member) if member else None)
        columns["size"].append(row.get("size", 0))
        columns["part"].append(row.get("part"))
        columns["reason"].append(row.get("reason"))
        columns["detail"].append(row.get("detail"))
    return pa.Table.from_pydict(columns, schema=LISTING_SCHEMA).replace_schema_metadata(
        {"archive": spec.url, "version": spec.version, "bytes": str(spec.size)}
    )
