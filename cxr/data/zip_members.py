"""A ``.zip`` source: its directory read once, its members read by range like files (random access).

The central directory (a few MB for NIH's 112,120 members) is read when planning; a worker reads a
member's local header and packed bytes with ranged reads (members of a part that lie close together in
one request), inflates them (stored or deflated; anything else is refused with its method), and checks
their CRC. Encrypted members are ``encrypted``; a member that declares more than the size limit, or
more than :data:`cxr.data.archives.MAX_RATIO` times its packed size, or inflates to more than it
declares, is ``too_large`` (a zip bomb), never inflated past the limit.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cxr import storage
from cxr.data.archives import MAX_RATIO
from cxr.data.csv_text import SourceFormatError
from cxr.data.decode import DecodeLimits, ImageRejected
from cxr.data.quarantine import Reason

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_MAGIC = b"PK\x03\x04"
_NEAR = 2**20  # members closer than this in the file are read in one request
_STORED, _DEFLATED = 0, 8


@dataclass(frozen=True)
class ZipMember:
    """Where one member's bytes are, from the central directory."""

    archive: str  # the zip's URL
    name: str
    offset: int  # of its local header
    packed: int  # compressed bytes
    size: int  # bytes it declares, inflated
    method: int
    crc: int
    flags: int
    link: bool = False  # a symbolic link (Unix mode in its external attributes)

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")


def list_zip(url: str) -> list[ZipMember]:
    """Every member of the zip at ``url``, from its central directory (the data is not read)."""
    try:
        with storage.open_random(url) as handle, zipfile.ZipFile(handle) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as err:
        raise SourceFormatError(f"{url}: not a readable zip file ({err})") from None
    return [
        ZipMember(
            url,
            i.filename,
            i.header_offset,
            i.compress_size,
            i.file_size,
            i.compress_type,
            i.CRC,
            i.flag_bits,
            link=(i.external_attr >> 16) & 0o170000 == 0o120000,
        )
        for i in infos
    ]


def read_member(member: ZipMember) -> bytes:
    """One member's bytes (a table inside the zip); a member that cannot be read raises SourceFormatError."""
    content = read_members([member], DecodeLimits())[member]
    if isinstance(content, ImageRejected):
        raise SourceFormatError(f"zip://{member.name}::{member.archive}: {content.detail}")
    return content


def refusal(member: ZipMember, limits: DecodeLimits) -> ImageRejected | None:
    """Why a member is not read at all, from its directory entry alone, or None."""
    if member.flags & 0x1:
        return ImageRejected(Reason.ENCRYPTED, "an encrypted zip member; the ingest reads no passwords")
    if member.size > limits.max_bytes:
        return ImageRejected(Reason.TOO_LARGE, f"declares {member.size} bytes inflated > {limits.max_bytes}")
    if member.size > MAX_RATIO * max(member.packed, 1):
        return ImageRejected(
            Reason.TOO_LARGE,
            f"a zip bomb: declares {member.size} bytes from {member.packed} packed (more than {MAX_RATIO} times)",
        )
    if member.method not in (_STORED, _DEFLATED):
        return ImageRejected(Reason.UNREADABLE_IMAGE, f"zip compression method {member.method} is not supported")
    return None


def _span(member: ZipMember) -> tuple[int, int]:
    # Local headers may carry a longer extra field than the directory says: leave room, checked below.
    return member.offset, member.offset + _LOCAL_HEADER.size + len(member.name.encode()) + 1024 + member.packed


def _inflate(member: ZipMember, packed: bytes) -> bytes:
    if member.method == _STORED:
        data = packed
    else:
        inflater = zlib.decompressobj(-15)
        data = inflater.decompress(packed, member.size + 1)  # never more than it declares, plus one byte
        if len(data) > member.size or inflater.unconsumed_tail:
            raise ImageRejected(Reason.TOO_LARGE, f"inflates to more than the {member.size} bytes it declares")
    if len(data) != member.size:
        raise ImageRejected(
            Reason.UNREADABLE_IMAGE, f"inflates to {len(data)} bytes, its directory entry says {member.size}"
        )
    if zlib.crc32(data) != member.crc:
        raise ImageRejected(Reason.UNREADABLE_IMAGE, "CRC mismatch: the zip member is corrupt")
    return data


def _member_from(member: ZipMember, block: bytes, start: int) -> bytes:
    at = member.offset - start
    header = block[at : at + _LOCAL_HEADER.size]
    if len(header) < _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
        raise ImageRejected(Reason.UNREADABLE_IMAGE, "no local header where the zip's directory points")
    fields = _LOCAL_HEADER.unpack(header)
    begin = at + _LOCAL_HEADER.size + fields[9] + fields[10]
    packed = block[begin : begin + member.packed]
    if len(packed) < member.packed:
        raise _ShortRead(begin + start)
    try:
        return _inflate(member, packed)
    except zlib.error as err:
        raise ImageRejected(Reason.UNREADABLE_IMAGE, f"the zip member does not inflate: {err}") from None


class _ShortRead(Exception):
    """The local header's extra field was longer than the room left for it."""


def read_members(members: Iterable[ZipMember], limits: DecodeLimits) -> Mapping[ZipMember, bytes | ImageRejected]:
    """The bytes of each member, or why it cannot be read; members close together come in one request."""
    out: dict[ZipMember, bytes | ImageRejected] = {}
    todo = []
    for member in members:
        refused = refusal(member, limits)
        if refused:
            out[member] = refused
        else:
            todo.append(member)
    todo.sort(key=lambda m: (m.archive, m.offset))
    groups: list[list[ZipMember]] = []
    for member in todo:
        last = groups[-1][-1] if groups else None
        if last and last.archive == member.archive and member.offset - _span(last)[1] < _NEAR:
            groups[-1].append(member)
        else:
            groups.append([member])
    for group in groups:
        start, end = group[0].offset, max(_span(m)[1] for m in group)
        block = storage.read_range(group[0].archive, start, end)
        for member in group:
            try:
                out[member] = _member_from(member, block, start)
            except _ShortRead:
                alone = storage.read_range(member.archive, member.offset, _span(member)[1] + 2**16)
                try:
                    out[member] = _member_from(member, alone, member.offset)
                except (_ShortRead, ImageRejected) as err:
                    out[member] = (
                        err if isinstance(err, ImageRejected) else ImageRejected(Reason.UNREADABLE_IMAGE, "truncated")
                    )
            except ImageRejected as rejected:
                out[member] = rejected
    return out
