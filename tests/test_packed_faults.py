"""Packed sources with bad archives: each one quarantined with its own reason, in bounded time, nothing else lost.

Every case builds its source in ``tmp_path`` from a small synthetic archive (12 images of 64 px, 20 for the
corrupt deflate stream), packed by hand: ``images_*.tar.gz`` files beside the tables, or one ``.zip``
holding both. The ingest runs in this process (no Dask client). Each case checks the exact reason and a
telling part of its detail, that ``accepted + quarantined == inputs``, and that every image the damage
did not touch is accepted.

A ``.tar.gz`` is compressed here with a sync flush at chosen points (:func:`gzip_marked`): the gzip stream up
to such a point inflates to exactly the tar up to it, and a deflate block starts there, so a cut or an
overwrite lands in a known member.
"""

from __future__ import annotations

import io
import shutil
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxr.data import tar_scan, zip_members
from cxr.data.decode import DecodeLimits
from cxr.data.ingest import ingest
from cxr.data.plan import IngestOptions
from cxr.data.version import open_version
from tests.archives import LABELS, archive

pytestmark = pytest.mark.timeout(120)  # a hang fails the test, it does not stall the run

AREA = "packed archives"
N = 12  # images in the synthetic archive
BOX_LIST = "BBox_List_2017.csv"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """Twelve 64 px images (about 3.2 KB each) in ``images_001/images/``, with their tables."""
    return archive(tmp_path / "src", N, seed=3, size=64)


def pngs(src: Path) -> dict[str, bytes]:
    """The source's images by image id, in id order (the order NIH packs them)."""
    return {p.name: p.read_bytes() for p in sorted(src.rglob("images/*.png"), key=lambda p: p.name)}


def add_row(src: Path, image_id: str) -> None:
    """A label row for ``image_id`` (``PPPPPPPP_FFF.png``), copied from the first row."""
    table = src / LABELS
    lines = table.read_text().splitlines()
    fields = lines[1].split(",")
    fields[0], fields[2], fields[3] = image_id, str(int(image_id[9:12])), str(int(image_id[:8]))
    table.write_text("\n".join([*lines, ",".join(fields)]) + "\n")


# --- .tar.gz sources -------------------------------------------------------------------------------------


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)  # set by hand: tarfile keeps it as it is ("../", a leading "/")
    info.size = len(data)
    return info, data


def link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


def tar_bytes(members: Sequence[tuple[tarfile.TarInfo, bytes]]) -> tuple[bytes, list[tarfile.TarInfo]]:
    """An uncompressed tar of ``members``, and its members as read back (``offset``: header, ``offset_data``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return raw, tar.getmembers()


def images_tar(images: Mapping[str, bytes]) -> tuple[bytes, list[tarfile.TarInfo]]:
    return tar_bytes([regular(f"images/{name}", data) for name, data in images.items()])


def gzip_marked(raw: bytes, marks: Sequence[int] = ()) -> tuple[bytes, list[int]]:
    """``raw`` gzipped, with a sync flush at each mark (an offset in ``raw``); where each mark is in the result.

    The gzip bytes before a mark's position inflate to exactly ``raw[:mark]``, and a new deflate block
    starts at it (byte-aligned).
    """
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    out: list[bytes] = []
    at: list[int] = []
    previous = 0
    for mark in marks:
        out += [packer.compress(raw[previous:mark]), packer.flush(zlib.Z_SYNC_FLUSH)]
        at.append(sum(map(len, out)))
        previous = mark
    out += [packer.compress(raw[previous:]), packer.flush()]
    return b"".join(out), at


def packed(src: Path, dst: Path, archives: Mapping[str, bytes], loose: Mapping[str, bytes] | None = None) -> Path:
    """A source folder: ``src``'s tables, ``archives`` (name -> bytes) written in the order given, and
    ``loose`` images as files in ``images_001/images/``."""
    dst.mkdir(parents=True)
    for table in src.iterdir():
        if table.is_file():
            shutil.copy(table, dst / table.name)
    for name, data in archives.items():
        (dst / name).write_bytes(data)
    if loose:
        folder = dst / "images_001" / "images"
        folder.mkdir(parents=True)
        for name, data in loose.items():
            (folder / name).write_bytes(data)
    return dst


# --- .zip sources ----------------------------------------------------------------------------------------


def zip_source(
    src: Path,
    dst: Path,
    replace: Mapping[str, bytes] | None = None,
    extra: Mapping[str, bytes] | None = None,
    stored: bool = False,
) -> Path:
    """``src`` as one zip (tables at its top, ``images_001/images/``), members replaced or added (level 9)."""
    replace = replace or {}
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                name = path.relative_to(src).as_posix()
                z.writestr(name, replace.get(name, path.read_bytes()))
        for name, data in (extra or {}).items():
            z.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return dst


def member_name(image_id: str) -> str:
    return f"images_001/images/{image_id}"


def data_offset(path: Path, name: str) -> tuple[int, int]:
    """Where a zip member's packed bytes start, and how many there are."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    assert header[:4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def set_encrypted(path: Path, name: str) -> None:
    """Set the 'encrypted' flag (general purpose bit 0) of one member, in its local header and its directory entry."""
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(name).header_offset
    data = bytearray(path.read_bytes())
    assert data[local : local + 4] == b"PK\x03\x04"
    data[local + 6] |= 0x1  # flags follow the signature and 'version needed'
    central = data.find(b"PK\x01\x02")
    while central != -1:
        (name_len,) = struct.unpack_from("<H", data, central + 28)
        if data[central + 46 : central + 46 + name_len] == name.encode():
            data[central + 8] |= 0x1  # flags follow the signature, 'version made by' and 'version needed'
            break
        central = data.find(b"PK\x01\x02", central + 4)
    else:
        raise AssertionError(f"no central directory entry for {name}")
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as z:
        assert z.getinfo(name).flag_bits & 0x1 and not z.getinfo(member_name("00000001_000.png")).flag_bits & 0x1


# --- the ingest and its accounting -----------------------------------------------------------------------


@dataclass
class Outcome:
    accepted: dict[str, str]  # image id -> source_uri
    records: list[dict[str, Any]]  # the quarantine, less the box list's records
    inputs: int
    seconds: float

    def fate(self, image_id: str) -> dict[str, Any]:
        """The one quarantine record of ``image_id``."""
        [record] = [r for r in self.records if r["image_id"] == image_id]
        return record

    def tails(self) -> list[dict[str, Any]]:
        """The records of damaged archives' unread tails (no image id)."""
        return [r for r in self.records if r["image_id"] is None]


def box_record(uri: str) -> bool:
    """A record of the box list (``.../BBox_List_2017.csv#line=3``, or ``zip://BBox_List_2017.csv::...``)."""
    return uri.split("::")[0].split("#")[0].endswith(BOX_LIST)


def ingest_packed(source: Path, out: Path, limits: DecodeLimits | None = None) -> Outcome:
    """Ingest in this process; the accounting must balance, record for record."""
    started = time.monotonic()
    summary = ingest(str(source), str(out), IngestOptions(sizes=(32,), limits=limits or DecodeLimits()))
    seconds = time.monotonic() - started
    version = open_version(summary.path)
    metadata = version.metadata()
    records = [r for r in version.quarantine().to_pylist() if not box_record(r["source_uri"])]
    acc = summary.accounting
    assert acc.accepted + acc.quarantined == acc.inputs
    assert (acc.accepted, acc.quarantined) == (metadata.num_rows, len(records))
    accepted = dict(zip(metadata["image_id"].to_pylist(), metadata["source_uri"].to_pylist(), strict=True))
    return Outcome(accepted, records, acc.inputs, seconds)


# --- 1, 2, 9: a .tar.gz that ends early or is corrupt ------------------------------------------------


def test_a_truncated_targz_keeps_the_images_before_the_cut(src, tmp_path, reliability_record):
    images = pngs(src)
    ids = list(images)
    raw, members = images_tar(images)
    cut = members[5].offset_data + members[5].size // 2  # in the middle of the sixth image
    data, [at] = gzip_marked(raw, [cut])
    source = packed(src, tmp_path / "packed", {"images_001.tar.gz": data[:at]})

    out = ingest_packed(source, tmp_path / "out")

    assert set(out.accepted) == set(ids[:5])
    cut_in_half = out.fate(ids[5])
    assert cut_in_half["reason"] == "damaged_archive"
    assert cut_in_half["source_uri"].startswith(f"tar://images/{ids[5]}::")
    assert "damaged inside this member" in cut_in_half["detail"]
    [tail] = out.tails()
    assert tail["reason"] == "damaged_archive" and tail["source_uri"].endswith("images_001.tar.gz")
    assert "images after that point are missing" in tail["detail"]
    for image_id in ids[6:]:
        after = out.fate(image_id)
        assert after["reason"] == "missing_image", after
        assert "damaged, read only in part: images_001.tar.gz" in after["detail"]
    assert out.inputs == N + 1  # the unread tail is an input of its own
    reliability_record.record(
        AREA,
        "a .tar.gz cut in the middle of a member",
        "images before the cut accepted; the member cut in half and the unread tail damaged_archive; "
        "rows after the cut missing_image, naming the damaged archive",
    )


def test_a_corrupt_gzip_stream_is_a_damaged_archive(tmp_path, monkeypatch, reliability_record):
    # Inflating stops at the first bad block, and the inflater drops what the packed read it was in had
    # given: 64 KiB of packed bytes (a part of one NIH image), 4 KiB here, so that 3 KB images show the bound.
    read = 2**12
    monkeypatch.setattr(tar_scan, "_PACKED_READ", read)
    src = archive(tmp_path / "src", 20, seed=3, size=64)
    images = pngs(src)
    ids = list(images)
    raw, members = images_tar(images)
    k = 16
    data, ends = gzip_marked(raw, [m.offset for m in members[1:]])  # ends[i]: where member i ends, packed
    at = ends[k - 1]  # a deflate block starts there, with member k's header
    corrupt = data[:at] + b"\xff" * 64 + data[at + 64 :]  # BFINAL 1, BTYPE 11: an invalid block type
    with pytest.raises(zlib.error, match="invalid block type"):
        zlib.decompress(corrupt, 31)
    assert zlib.decompressobj(31).decompress(corrupt[:at]) == raw[: members[k].offset]
    source = packed(src, tmp_path / "packed", {"images_001.tar.gz": corrupt})

    out = ingest_packed(source, tmp_path / "out")

    kept = {ids[i] for i in range(k) if ends[i] <= at - read}
    assert len(kept) >= k - 2
    assert kept <= set(out.accepted) <= set(ids[:k])
    for image_id in set(ids) - set(out.accepted):
        assert out.fate(image_id)["reason"] in ("missing_image", "damaged_archive")
    [tail] = out.tails()
    assert tail["reason"] == "damaged_archive" and tail["source_uri"].endswith("images_001.tar.gz")
    assert "Invalid deflate block" in tail["detail"] or "invalid block type" in tail["detail"]
    assert out.inputs == 20 + 1
    assert out.seconds < 30
    reliability_record.record(
        AREA,
        "a .tar.gz whose deflate stream is overwritten in the middle (an invalid block)",
        f"the images before it accepted ({len(out.accepted)} of {k}; those in the last packed read before the "
        "damage may go with it); the rest of the archive one damaged_archive record, its rows missing_image; "
        "no exception escapes",
        lost="what the last packed read before the damage inflated to (64 KiB packed, part of one NIH image)",
    )


@pytest.mark.parametrize("k", [6, N - 1], ids=["middle", "last"])
def test_a_corrupt_tar_header_does_not_drop_the_members_after_it(k, src, tmp_path, reliability_record):
    images = pngs(src)
    ids = list(images)
    raw, members = images_tar(images)
    header = members[k].offset
    garbage = np.random.default_rng(k).integers(0, 256, 512, dtype=np.uint8).tobytes()
    raw = raw[:header] + garbage + raw[header + 512 :]
    data, _ = gzip_marked(raw)  # a valid gzip stream of a tar with one bad header
    source = packed(src, tmp_path / "packed", {"images_001.tar.gz": data})

    out = ingest_packed(source, tmp_path / "out")

    assert set(out.accepted) == set(ids[:k])
    [tail] = out.tails()
    assert tail["reason"] == "damaged_archive" and f"an unreadable tar header at byte {header}" in tail["detail"]
    for image_id in ids[k:]:
        after = out.fate(image_id)
        assert after["reason"] == "missing_image" and "images_001.tar.gz" in after["detail"]
    assert out.inputs == N + 1
    where = "in the middle" if k < N - 1 else "of its last member"
    reliability_record.record(
        AREA,
        f"a .tar.gz (valid gzip) with a garbage tar header {where}",
        "the members before it accepted; a damaged_archive record, and the rows after it missing_image "
        "(not silently dropped)",
    )


# --- 3, 4: names and links ---------------------------------------------------------------------------


def test_tar_members_that_would_leave_their_folder_are_unsafe_path(src, tmp_path, reliability_record):
    images = pngs(src)
    ids = list(images)
    entries = [regular(f"images/{name}", data) for name, data in images.items()]
    entries[4:4] = [regular("../evil.png", images[ids[0]]), regular("/abs/evil.png", images[ids[1]])]
    raw, _ = tar_bytes(entries)
    source = packed(src, tmp_path / "packed", {"images_001.tar.gz": gzip_marked(raw)[0]})
    before = set(tmp_path.rglob("*"))

    out = ingest_packed(source, tmp_path / "out")

    assert set(out.accepted) == set(ids)
    unsafe = {r["source_uri"].split("::")[0]: r for r in out.records}
    assert set(unsafe) == {"tar://../evil.png", "tar:///abs/evil.png"}
    assert {r["reason"] for r in unsafe.values()} == {"unsafe_path"}
    assert "'..' component" in unsafe["tar://../evil.png"]["detail"]
    assert "absolute name" in unsafe["tar:///abs/evil.png"]["detail"]
    assert out.inputs == N + 2  # each an input of its own
    written = set(tmp_path.rglob("*")) - before
    assert written and all(p.is_relative_to(tmp_path / "out") for p in written)
    assert not list((tmp_path / "out").rglob("evil.png"))
    for outside in (tmp_path / "evil.png", Path.cwd().parent / "evil.png", Path("/abs/evil.png")):
        assert not outside.exists()
    reliability_record.record(
        AREA,
        "tar members named ../evil.png and /abs/evil.png",
        "unsafe_path, each an input of its own; the other members accepted; nothing written outside the output",
    )


def test_tar_links_are_never_followed(src, tmp_path, reliability_record):
    images = pngs(src)
    ids = list(images)
    entries = [regular(f"images/{name}", images[name]) for name in ids[:-1]]
    entries[3:3] = [
        link(f"images/{ids[-1]}", "/etc/passwd", tarfile.SYMTYPE),  # its row's only image: a symbolic link
        link("images/copy.png", f"images/{ids[0]}", tarfile.LNKTYPE),  # a hard link to a member, no row
    ]
    raw, _ = tar_bytes(entries)
    source = packed(src, tmp_path / "packed", {"images_001.tar.gz": gzip_marked(raw)[0]})

    out = ingest_packed(source, tmp_path / "out")

    assert set(out.accepted) == set(ids[:-1])
    symbolic, hard = out.fate(ids[-1]), out.fate("copy.png")
    assert symbolic["reason"] == hard["reason"] == "symlink"
    assert "a symbolic link to '/etc/passwd', never followed" in symbolic["detail"]
    assert f"a hard link to 'images/{ids[0]}', never followed" in hard["detail"]
    assert out.inputs == N + 1  # the row of the symbolic link, and the hard link no row names
    reliability_record.record(
        AREA,
        "tar members that are a symbolic link (to /etc/passwd, named by a row) and a hard link (to another member)",
        "symlink, never followed; the other members accepted",
    )


# --- 5, 6: bombs and oversized members -----------------------------------------------------------------


def member_file(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info, _ = regular(name, data)
    return info, io.BytesIO(data)


class Zeros(io.RawIOBase):
    """``size`` zero bytes, read in pieces: never held in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def test_a_targz_decompression_bomb_stops_the_scan_early(src, tmp_path, reliability_record):
    images = pngs(src)
    ids = list(images)
    source = packed(src, tmp_path / "packed", {})
    bomb = tarfile.TarInfo("images/bomb.png")
    bomb.size = 2**30  # 1 GiB of zeros: about 4.7 MB packed at level 1
    with (
        open(source / "images_001.tar.gz", "wb") as f,
        tarfile.open(fileobj=f, mode="w:gz", compresslevel=1, copybufsize=2**20) as tar,
    ):
        for name in ids[:6]:
            tar.addfile(*member_file(f"images/{name}", images[name]))
        tar.addfile(bomb, Zeros(bomb.size))
        for name in ids[6:]:
            tar.addfile(*member_file(f"images/{name}", images[name]))

    out = ingest_packed(source, tmp_path / "out")

    assert out.seconds < 10  # inflating the whole GiB and reading on would take far longer
    assert set(out.accepted) == set(ids[:6])
    oversized = out.fate("bomb.png")
    # no row names it: unlabeled, as a file would be, and the detail says it was too large (never read)
    assert oversized["reason"] == "unlabeled_image"
    assert f"too_large: {2**30} bytes > {DecodeLimits().max_bytes}" in oversized["detail"]
    [tail] = out.tails()
    assert tail["reason"] == "damaged_archive" and "decompression bomb" in tail["detail"]
    assert "after member images/bomb.png" in tail["detail"]
    assert {out.fate(i)["reason"] for i in ids[6:]} == {"missing_image"}
    assert out.inputs == N + 2  # the bomb (no row names it) and the unread tail
    reliability_record.record(
        AREA,
        "a .tar.gz holding a member of 1 GiB of zeros (a decompression bomb)",
        f"the scan stops early ({out.seconds:.1f} s): the member unlabeled (too large, never read), the rest one "
        "damaged_archive record ('a decompression bomb'); images before it accepted, rows after it missing_image",
    )


def test_an_oversized_tar_member_is_too_large(src, tmp_path, reliability_record):
    images = pngs(src)
    ids = list(images)
    big = ids[3]
    images[big] = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    raw, _ = images_tar(images)
    source = packed(src, tmp_path / "packed", {"images_001.tar.gz": gzip_marked(raw)[0]})

    out = ingest_packed(source, tmp_path / "out", DecodeLimits(max_bytes=100_000))

    assert set(out.accepted) == set(ids) - {big}
    assert out.fate(big)["reason"] == "too_large" and "200000 bytes > 100000" in out.fate(big)["detail"]
    assert not out.tails() and out.inputs == N
    reliability_record.record(
        AREA,
        "a .tar.gz member that declares more bytes than the decode limit",
        "too_large, not read into memory; the other members accepted",
    )


def test_a_zip_member_over_the_size_limit_is_too_large(src, tmp_path, reliability_record):
    ids = list(pngs(src))
    big = ids[3]
    noise = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    source = zip_source(src, tmp_path / "nih.zip", replace={member_name(big): noise})

    out = ingest_packed(source, tmp_path / "out", DecodeLimits(max_bytes=100_000))

    assert set(out.accepted) == set(ids) - {big}
    oversized = out.fate(big)
    assert oversized["reason"] == "too_large" and "200000 bytes" in oversized["detail"]
    assert "> 100000" in oversized["detail"]
    assert out.inputs == N
    reliability_record.record(
        AREA,
        "a zip member that declares more bytes than the decode limit",
        "too_large from its directory entry, never read; the other members accepted",
    )


def test_a_zip_bomb_member_is_too_large_and_never_inflated(src, tmp_path, monkeypatch, reliability_record):
    ids = list(pngs(src))
    bomb = "00000099_000.png"
    add_row(src, bomb)  # a row names it: it goes to decoding, where its directory entry refuses it
    source = zip_source(src, tmp_path / "nih.zip", extra={member_name(bomb): bytes(2 * 10**6)})
    with zipfile.ZipFile(source) as z:
        info = z.getinfo(member_name(bomb))
        assert info.file_size > 100 * info.compress_size  # 2 MB from about 2 KB
    inflated: list[str] = []
    real_inflate = zip_members._inflate

    def spy(member: zip_members.ZipMember, packed_bytes: bytes) -> bytes:
        inflated.append(member.name)
        return real_inflate(member, packed_bytes)

    monkeypatch.setattr(zip_members, "_inflate", spy)

    out = ingest_packed(source, tmp_path / "out")

    assert set(out.accepted) == set(ids)
    refused = out.fate(bomb)
    assert refused["reason"] == "too_large" and "zip bomb" in refused["detail"]
    assert refused["source_uri"] == f"zip://{member_name(bomb)}::{source}"
    assert member_name(bomb) not in inflated and member_name(ids[0]) in inflated
    assert out.inputs == N + 1  # its row
    reliability_record.record(
        AREA,
        "a zip member of 2 MB of zeros (inflates to about 1000 times its packed size), named by a row",
        "too_large ('a zip bomb') from its directory entry, never inflated; the other members accepted",
    )


# --- 7, 10: zip members that cannot be read ------------------------------------------------------------


def test_an_encrypted_zip_member_is_encrypted(src, tmp_path, reliability_record):
    ids = list(pngs(src))
    locked = ids[2]
    source = zip_source(src, tmp_path / "nih.zip")
    set_encrypted(source, member_name(locked))

    out = ingest_packed(source, tmp_path / "out")

    assert set(out.accepted) == set(ids) - {locked}
    assert out.fate(locked)["reason"] == "encrypted" and "encrypted zip member" in out.fate(locked)["detail"]
    assert out.inputs == N
    reliability_record.record(
        AREA,
        "a zip member flagged encrypted (general purpose bit 0, local header and directory)",
        "encrypted, no password asked for; the other members accepted",
    )


def test_a_zip_member_with_a_crc_mismatch_is_unreadable(src, tmp_path, reliability_record):
    ids = list(pngs(src))
    flipped = ids[4]
    source = zip_source(src, tmp_path / "nih.zip", stored=True)
    start, packed_size = data_offset(source, member_name(flipped))
    data = bytearray(source.read_bytes())
    data[start + packed_size // 2] ^= 0xFF
    source.write_bytes(bytes(data))

    out = ingest_packed(source, tmp_path / "out")

    assert set(out.accepted) == set(ids) - {flipped}
    assert out.fate(flipped)["reason"] == "unreadable_image" and "CRC" in out.fate(flipped)["detail"]
    assert out.inputs == N
    reliability_record.record(
        AREA,
        "a stored zip member with one byte flipped (its CRC no longer matches)",
        "unreadable_image ('CRC mismatch'), not decoded; the other members accepted",
    )


# --- 8: the same image in two places -------------------------------------------------------------------


def test_the_same_image_in_two_archives_is_kept_from_the_first_by_name(src, tmp_path, reliability_record):
    images = pngs(src)
    ids = list(images)
    both = ids[0]
    first, _ = images_tar({i: images[i] for i in ids[:6]})
    second, _ = images_tar({**{i: images[i] for i in ids[6:]}, both: images[both]})
    # images_002 is written first: the order is by name, not by when a file was made or listed
    archives = {"images_002.tar.gz": gzip_marked(second)[0], "images_001.tar.gz": gzip_marked(first)[0]}
    source = packed(src, tmp_path / "packed", archives)

    out = ingest_packed(source, tmp_path / "out")

    assert set(out.accepted) == set(ids)
    assert out.accepted[both] == f"tar://images/{both}::{source / 'images_001.tar.gz'}"
    [again] = out.records
    assert again["reason"] == "duplicate_image_id" and again["image_id"] == both
    assert again["source_uri"] == f"tar://images/{both}::{source / 'images_002.tar.gz'}"
    assert f"also at tar://images/{both}::{source / 'images_001.tar.gz'}" in again["detail"]
    assert out.inputs == N + 1
    reliability_record.record(
        AREA,
        "the same image (same member name) in images_001.tar.gz and images_002.tar.gz",
        "the first archive by name holds it; the other duplicate_image_id, naming the first",
    )


def test_a_loose_file_wins_over_the_same_image_in_an_archive(src, tmp_path, reliability_record):
    images = pngs(src)
    ids = list(images)
    both = ids[7]
    raw, _ = images_tar(images)
    source = packed(src, tmp_path / "packed", {"images_001.tar.gz": gzip_marked(raw)[0]}, {both: images[both]})
    loose = source / "images_001" / "images" / both

    out = ingest_packed(source, tmp_path / "out")

    assert set(out.accepted) == set(ids)
    assert out.accepted[both] == str(loose)
    [again] = out.records
    assert again["reason"] == "duplicate_image_id" and again["source_uri"].startswith(f"tar://images/{both}::")
    assert f"also at {loose}" in again["detail"]
    assert out.inputs == N + 1
    reliability_record.record(
        AREA,
        "the same image as a file in images_001/images/ and as a member of a .tar.gz",
        "the file holds it; the member duplicate_image_id, naming the file",
    )


def test_the_same_member_twice_in_one_archive_keeps_the_first(src, tmp_path, reliability_record):
    images = pngs(src)
    ids = list(images)
    twice = ids[2]
    entries = [regular(f"images/{name}", data) for name, data in images.items()]
    entries.insert(8, regular(f"other/{twice}", images[ids[9]]))  # the same image id, other bytes, later
    raw, _ = tar_bytes(entries)
    source = packed(src, tmp_path / "packed", {"images_001.tar.gz": gzip_marked(raw)[0]})

    out = ingest_packed(source, tmp_path / "out")

    assert set(out.accepted) == set(ids)
    assert out.accepted[twice].startswith(f"tar://images/{twice}::")
    [again] = out.records
    assert again["reason"] == "duplicate_image_id" and again["source_uri"].startswith(f"tar://other/{twice}::")
    assert f"also at images/{twice} in this archive" in again["detail"]
    assert out.inputs == N + 1
    reliability_record.record(
        AREA,
        "one image id twice in one .tar.gz (images/X and other/X)",
        "the first member holds it; the second duplicate_image_id",
    )
