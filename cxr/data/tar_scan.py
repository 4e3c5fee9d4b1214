"""One ``.tar.gz`` of a source, read front to back once: its members listed and its images decoded into parts.

The archive is streamed from storage (local or S3), inflated (ISA-L's ``isal_zlib`` when installed, 2.8x
zlib on NIH's archives; else :mod:`zlib`) and read as a tar stream (:mod:`cxr.data.tar_stream`), never
unpacked to disk. Images are decoded as they pass, in chunks of ``images_per_part`` that become ordinary
parts (:func:`cxr.data.parts.process_part`, keyed by the archive's identity and the members), so a scan that
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

import logging
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping
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
from cxr.data.part_files import finished_keys, reuse_finished_part
from cxr.data.parts import PartImage, PartSpec, part_key, process_part
from cxr.data.quarantine import Reason
from cxr.data.tar_stream import TarStream

log = logging.getLogger(__name__)
PROGRESS_TOPIC = "cxr-ingest-progress"  # Dask events: packed bytes an archive's worker has read
_PACKED_READ = 2**16  # packed bytes inflated at a time: a deflate error loses what the last of them gave
_INFLATE_STEP = 2**20  # inflated bytes per call at most


def _inflater() -> Any:
    """An inflater for one gzip member: ISA-L's when installed, else zlib's."""
    try:
        from isal import isal_zlib

        return isal_zlib.decompressobj(31)
    except ImportError:  # ISA-L is optional: zlib is 2.8x slower at inflating, still a small share of decoding
        return zlib.decompressobj(31)


class BombError(Exception):
    """The archive inflates to far more than it holds packed."""


class _WriteFailed(Exception):
    """Writing a part failed: not the archive's fault (the cause is raised)."""


def _inflate_errors() -> tuple[type[BaseException], ...]:
    """What the inflater raises on data that does not inflate."""
    try:
        from isal import isal_zlib

        return (zlib.error, isal_zlib.error)
    except ImportError:
        return (zlib.error,)


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What a damaged archive makes the reader raise (not a store that fails: SourceReadError)."""
    return (BombError, EOFError, tarfile.TarError, *_inflate_errors())


class _Inflated:
    """The inflated stream, counting what it gives and refusing a decompression bomb.

    Inflated here, not by a GzipFile: a GzipFile (zlib's or ISA-L's) that meets damage raises and drops
    the bytes it had inflated before it, and tarfile dropped what it was gathering for the read that
    raised, so members before the damage were lost (three 3 KB images before a cut). Here damage ends
    the stream instead (reads give b""; the tar reader then raises EOFError) and is kept in
    ``damage``: a stream cut short gives every byte it holds; a deflate error loses what the packed
    bytes read since the last :data:`_PACKED_READ` boundary inflated to (the inflater drops the output
    of the call that fails), a part of one NIH image at most.
    """

    def __init__(self, raw: storage._Stream) -> None:
        self.raw, self.given = raw, 0
        self.inflater = _inflater()
        self.packed = b""  # read, not yet inflated
        self.ready, self.at = b"", 0  # inflated; given up to ``at``
        self.raw_ended = False  # the packed file has been read to its end
        self.done = False  # the stream ended, whole or damaged
        self.damage: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (fewer when fewer are inflated yet); b"" at the end, or at damage."""
        while self.at == len(self.ready) and not self.done:
            self.ready, self.at = self._inflate(), 0
        end = len(self.ready) if n < 0 else self.at + n
        data = self.ready[self.at : end]
        self.at += len(data)
        self.given += len(data)
        if self.given > MAX_RATIO * max(self.raw.consumed, 1) + RATIO_SLACK:
            raise BombError(
                f"inflates to more than {MAX_RATIO} times its packed size ({self.given} bytes from "
                f"{self.raw.consumed}): a decompression bomb; nothing after this point is read"
            )
        return data

    def _inflate(self) -> bytes:
        """Inflate a little more, or end the stream (``done``; ``damage`` when it is damaged)."""
        if not self.packed and not self.raw_ended:
            self.packed = self.raw.read(_PACKED_READ)
            self.raw_ended = not self.packed
        if self.inflater.eof:  # another gzip member may follow (concatenated files), after zero padding
            self.packed = self.packed.lstrip(b"\0")
            if not self.packed:
                self.done = self.raw_ended
                return b""
            self.inflater = _inflater()
        try:  # with nothing left to read, this gives what the inflater holds (ISA-L's holds some back)
            out = self.inflater.decompress(self.packed, _INFLATE_STEP)
        except _inflate_errors() as err:
            self.damage, self.done = err, True
            return b""
        self.packed = self.inflater.unused_data if self.inflater.eof else self.inflater.unconsumed_tail
        if self.raw_ended and not (out or self.packed or self.inflater.eof):
            self.damage, self.done = EOFError("the archive ends inside its gzip stream (cut short)"), True
        return out


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
    """Keys of the archives whose listing exists and whose parts are all finished (one listing of the parts)."""
    wanted: dict[str, set[str]] = {}
    parts: list[PartSpec] = []
    for spec in specs:
        listing = read_listing(spec)
        if listing is None:
            continue
        wanted[spec.key] = {k for k in listing["part"].to_pylist() if k}
        parts += [PartSpec.at(spec.out, k, (), spec.sizes, spec.limits) for k in wanted[spec.key]]
    if not wanted:
        return set()
    done = finished_keys(parts, specs[0].out)  # the archives of one plan share its output
    return {key for key, keys in wanted.items() if keys <= done}


def chunk_part(spec: ArchiveSpec, images: tuple[PartImage, ...]) -> PartSpec:
    return PartSpec.at(
        spec.out, part_key(images, spec.sizes, spec.limits, PIXEL_PIPELINE_VERSION), images, spec.sizes, spec.limits
    )


class _Walk:
    """The members of one archive as the scan sees them: (name, image and its bytes) or (name, a listing row)."""

    def __init__(self, spec: ArchiveSpec, tar: TarStream) -> None:
        self.spec, self.tar = spec, tar
        self.current: str | None = None  # the member being read (when the stream fails)
        self.last: str | None = None  # the last member listed

    def __iter__(self) -> Iterator[tuple[str, PartImage | None, bytes | None, dict[str, Any] | None]]:
        spec, seen = self.spec, {}  # image id -> member name, within this archive
        for member in self.tar.members():
            if member.isdir():
                continue
            name, image_id = member.name, image_id_of(member.name)
            self.current = name
            problem = unsafe_name(name)
            row: dict[str, Any] | None = None
            if problem:
                row = _row(name, member.size, Reason.UNSAFE_PATH, f"{problem}; a member may not leave its folder")
            elif member.issym() or member.islnk():
                kind = "a symbolic link" if member.issym() else "a hard link"
                row = _row(name, 0, Reason.SYMLINK, f"{kind} to {member.linkname!r}, never followed")
            elif not member.isreg():
                row = _row(name, member.size, Reason.UNREADABLE_IMAGE, "a tar member that is not a file")
            elif image_id in seen:
                row = _row(name, member.size, Reason.DUPLICATE_IMAGE_ID, f"also at {seen[image_id]} in this archive")
            elif member.size > spec.limits.max_bytes:
                row = _row(name, member.size, Reason.TOO_LARGE, f"{member.size} bytes > {spec.limits.max_bytes}")
            if row is not None:
                yield name, None, None, row
            else:
                content = self.tar.data(member)
                seen[image_id] = name
                yield (
                    name,
                    PartImage(image_id, member_uri("tar", spec.url, name), member.size, spec.version),
                    content,
                    None,
                )
            self.current, self.last = None, name
        if self.tar.stream.damage is not None:  # the stream ended early right at the end-of-archive block
            raise self.tar.stream.damage


def _row(name: str, size: int, reason: Reason, detail: str) -> dict[str, Any]:
    return {"member": name, "size": size, "reason": str(reason), "detail": detail}


def scan_archive(
    spec: ArchiveSpec, report: Callable[[int], None] | None = None, crashed: Mapping[str, str] | None = None
) -> ArchiveResult:
    """List and decode one ``.tar.gz``, or skip it when an earlier run scanned it (module docstring).

    ``report(n)`` is called with the packed bytes read since the last call, after each chunk. ``crashed``
    names images (id -> detail) that killed the worker decoding them (:mod:`cxr.data.isolate`): recorded as
    ``decode_crashed``, not decoded again.
    """
    if spec.key in scanned([spec]):
        listing = read_listing(spec)
        assert listing is not None
        images = sum(1 for p in listing["part"].to_pylist() if p)
        return ArchiveResult(spec.key, spec.name, listing.num_rows, images, 0, skipped=True, damaged=None)
    rows: list[dict[str, Any]] = []
    chunk: list[PartImage] = []
    data: dict[str, bytes] = {}
    members: dict[str, str] = {}  # member URI -> member name, for the chunk being filled
    reported = 0
    decoded = 0
    damaged: str | None = None

    def flush() -> None:
        nonlocal chunk, data, reported, decoded
        if chunk:
            part = chunk_part(spec, tuple(chunk))
            try:
                result = process_part(part, crashed, data=data)
                decoded += 0 if result.skipped else result.images
            except Exception as err:
                raise _WriteFailed() from err
            for image in chunk:
                rows.append({"member": members[image.url], "size": image.size, "part": part.key})
            chunk, data = [], {}
        if report and raw.consumed > reported:
            report(raw.consumed - reported)
            reported = raw.consumed

    raw = storage.open_stream(spec.url)
    inflated = _Inflated(raw)
    walk = _Walk(spec, TarStream(inflated))
    try:
        try:
            for name, image, content, row in walk:
                if image is None:
                    rows.append(row)
                    continue
                chunk.append(image)
                data[image.url] = content
                members[image.url] = name
                if len(chunk) >= spec.images_per_part:
                    flush()
        except _WriteFailed as err:
            raise err.__cause__ from None  # type: ignore[misc]
        except _stream_errors() as err:
            cause = inflated.damage or err  # the tar reader's own error for a stream that ended early says less
            damaged = f"{type(cause).__name__}: {cause}"
            if walk.current is not None:
                detail = f"the archive is damaged inside this member ({damaged})"
                rows.append(_row(walk.current, 0, Reason.DAMAGED_ARCHIVE, detail))
        try:
            flush()
        except _WriteFailed as err:
            raise err.__cause__ from None  # type: ignore[misc]
    finally:
        raw.close()
    if damaged:
        where = f"after member {walk.last}" if walk.last else "before its first member"
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


def unfinished_chunk(spec: ArchiveSpec) -> list[tuple[PartImage, bytes]]:
    """The images, with their bytes, of the archive's first chunk whose part is not finished ([] if none).

    A scan decodes its chunks in order and keeps the finished ones, so when its worker died, the image that
    killed it is in this chunk (:func:`cxr.data.isolate.isolate_archive_crashes`). Nothing is decoded here.
    """
    raw = storage.open_stream(spec.url)
    chunk: list[tuple[PartImage, bytes]] = []
    try:
        for _, image, content, _ in _Walk(spec, TarStream(_Inflated(raw))):
            if image is None:
                continue
            chunk.append((image, content))  # type: ignore[arg-type]
            if len(chunk) >= spec.images_per_part:
                if not reuse_finished_part(chunk_part(spec, tuple(i for i, _ in chunk))):
                    return chunk
                chunk = []
    except _stream_errors():
        pass
    finally:
        raw.close()
    if chunk and not reuse_finished_part(chunk_part(spec, tuple(i for i, _ in chunk))):
        return chunk
    return []


def scan_on_worker(spec: ArchiveSpec, token: str, crashed: Mapping[str, str] | None = None) -> ArchiveResult:
    """:func:`scan_archive` on a Dask worker, telling the client its progress as events (:data:`PROGRESS_TOPIC`)."""
    from distributed import get_worker

    worker = get_worker()

    def report(n: int) -> None:
        worker.log_event(PROGRESS_TOPIC, {"token": token, "key": spec.key, "bytes": n})

    return scan_archive(spec, report, crashed)


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
