"""The tar reader ingest streams archives with gives the members Python's tarfile gives, in every tar format."""

from __future__ import annotations

import io
import tarfile

import pytest

from cxr.data.tar_stream import TarStream

LONG = "images/" + "deep/" * 30 + "00000001_000.png"  # over ustar's 100 + 155 characters


def _tar(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in (("images/00000002_000.png", b"a" * 700), (LONG, b"b" * 513), ("images/ü.png", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("images/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../" * 40 + "etc/passwd"
        tar.addfile(link)
        folder = tarfile.TarInfo("images")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["ustar", "gnu", "pax"]
)
def test_members_names_types_and_data_match_tarfile(fmt):
    if fmt == tarfile.USTAR_FORMAT:
        with pytest.raises(ValueError):
            _tar(fmt)  # ustar cannot hold the long names: nothing to compare
        return
    raw = _tar(fmt)
    expected = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for m in tar:
            expected.append((m.name, m.type, m.linkname, tar.extractfile(m).read() if m.isreg() else None))
    stream = TarStream(io.BytesIO(raw))
    got = [(m.name, m.type, m.linkname, stream.data(m) if m.isreg() else None) for m in stream.members()]
    assert got == expected and got[1][0] == LONG


def test_a_bad_header_or_data_after_the_end_raises_instead_of_stopping_quietly():
    raw = _tar(tarfile.GNU_FORMAT)
    second_header = 512 + 1024  # 700 bytes of data take two blocks
    bad = raw[:second_header] + b"garbage" * 73 + b"g" + raw[second_header + 512 :]
    with pytest.raises(tarfile.ReadError, match=f"unreadable tar header at byte {second_header}"):
        list(TarStream(io.BytesIO(bad)).members())
    early_end = raw[:second_header] + b"\0" * 512 + raw[second_header:]
    with pytest.raises(tarfile.ReadError, match="after the end-of-archive block"):
        list(TarStream(io.BytesIO(early_end)).members())
    with pytest.raises(EOFError):
        list(TarStream(io.BytesIO(raw[: second_header + 100])).members())
