"""One ingest of a source holding every kind of bad input that used to stop a whole ingest.

It runs the real CLI on a real Dask LocalCluster of worker processes. As root, chmod 000 stops no read
(CAP_DAC_OVERRIDE), so the CLI then runs under ``setpriv`` with that capability dropped from its bounding
set: a root process that honours file modes, as any other user does.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from cxr.data.plan import IngestOptions, plan_ingest
from cxr.data.version import open_version
from tests.test_decode import with_chunk_after_pixels
from tests.test_ingest import HEADER, png, row

CXR = Path(sys.executable).parent / "cxr"
WORKER_MEMORY = "256MiB"  # the worker: ~100 MB of its own; the large image: 192 MiB more (in its budget)
DROP_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def zeros_png(side: int) -> bytes:
    """A black 16-bit side x side PNG, 130 KB at 8192 px; decoding it takes 128 MiB, converting it 64 more."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    rows = (b"\0" * (1 + 2 * side)) * 256  # filter byte + 16-bit samples, 256 rows at a time
    pixels = b"".join(packer.compress(rows) for _ in range(side // 256)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def unreadable_runner(probe: Path) -> list[str]:
    """The command prefix under which ``probe`` (chmod 000) cannot be read, or skip."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv"):
        tried = subprocess.run([*DROP_DAC, sys.executable, "-c", f"open({str(probe)!r}, 'rb')"], capture_output=True)
        if tried.returncode != 0 and b"PermissionError" in tried.stderr:
            return DROP_DAC
    pytest.skip("running as root without a working setpriv: a chmod 000 file stays readable, no real EACCES")


@pytest.fixture
def faulty_source(tmp_path: Path) -> Path:
    """Three good images, and one of each bad input; each would have stopped the ingest before."""
    src = tmp_path / "faulty"
    images = src / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(1)

    def good() -> bytes:
        return png(rng.integers(0, 256, (96, 96), dtype=np.uint8))

    for i in (1, 2, 3, 4, 5, 9):
        (images / f"0000000{i}_000.png").write_bytes(good())
    (images / "00000004_000.png").chmod(0)
    (images / "00000006_000.png").write_bytes(with_chunk_after_pixels(good(), b"iCCP", b""))  # IndexError
    (images / "00000007_000.png").write_bytes(zeros_png(8192))  # kills a worker of WORKER_MEMORY
    (tmp_path / "outside.png").write_bytes(good())
    (images / "00000008_000.png").symlink_to(tmp_path / "outside.png")
    with open(os.fsencode(images) + b"/caf\xe9.png", "wb") as f:  # a Latin-1 name
        f.write(good())
    rows = [row(f"0000000{i}_000.png", i) for i in range(1, 10)]
    rows[1] = rows[1].replace("No Finding", "No Fin\rding")  # a stray CR inside a field
    rows[2] = rows[2].replace("No Finding", "X" * 200_000)  # a 200 KB field
    (src / "Data_Entry_2017_v2020.csv").write_bytes(("\n".join([HEADER, *rows]) + "\n").encode())
    return src


EXPECTED = {  # image id -> reason, and the fault as docs/reliability.md states it
    "00000002_000.png": ("malformed_row", "a label row with a stray CR inside a field"),
    "00000003_000.png": ("field_too_large", "a label row with a 200 KB field (over csv's 128 KiB limit)"),
    "00000004_000.png": ("permission_denied", "an image the ingest may not read (chmod 000)"),
    "caf\\xe9.png": ("non_utf8_name", "an image file whose name is Latin-1, not UTF-8"),
    "00000006_000.png": ("decode_error", "a PNG on which Pillow raises IndexError (an empty iCCP chunk)"),
    "00000007_000.png": ("decode_crashed", "a PNG whose decoding goes over the Dask worker's memory limit"),
    "00000008_000.png": ("symlink", "a symbolic link to an image outside the source"),
}


def test_one_ingest_quarantines_every_bad_input_with_its_own_reason_and_completes(
    faulty_source, tmp_path, reliability_record
):
    prefix = unreadable_runner(faulty_source / "images" / "00000004_000.png")
    # the worker killer shares its part with good images: they must still land
    [part] = plan_ingest(str(faulty_source), str(tmp_path / "plan"), IngestOptions(sizes=(64,))).parts
    assert {"00000001_000.png", "00000007_000.png", "00000009_000.png"} <= {i.image_id for i in part.images}

    out = tmp_path / "out"
    args = ["ingest", "--source", str(faulty_source), "--out", str(out), "--size", "64", "--workers", "2"]
    done = subprocess.run(
        [*prefix, str(CXR), *args, "--worker-memory", WORKER_MEMORY, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 worker processes of 256 MiB each" in done.stderr
    version = open_version(str(out / json.loads(done.stdout)["digest"]))
    metadata, quarantine = version.metadata(), version.quarantine()
    assert metadata["image_id"].to_pylist() == ["00000001_000.png", "00000005_000.png", "00000009_000.png"]
    fate = {r["image_id"]: r["reason"] for r in quarantine.to_pylist()}
    assert fate == {image_id: reason for image_id, (reason, _) in EXPECTED.items()}
    details = {r["image_id"]: r["detail"] for r in quarantine.to_pylist()}
    assert details["00000006_000.png"].startswith("IndexError")
    assert "KilledWorker" in details["00000007_000.png"]
    accounting = version.accounting
    assert accounting.inputs == 9 + 1  # nine label rows and one file no row names
    assert accounting.accepted + accounting.quarantined == accounting.inputs == metadata.num_rows + quarantine.num_rows

    for reason, fault in EXPECTED.values():
        outcome = f"quarantined: {reason}; the ingest completed"
        if reason == "decode_crashed":
            outcome += "; its worker died in its part, then alone; the other images of its part landed"
        reliability_record.record("ingest", fault, outcome)


def test_local_workers_get_the_default_memory_limit_and_one_retry():
    from cxr.data.cluster import ALLOWED_FAILURES, WORKER_MEMORY_LIMIT, dask_client

    with dask_client(workers=1) as client:
        limits = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
        retries = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    assert list(limits.values()) == [WORKER_MEMORY_LIMIT] and retries == ALLOWED_FAILURES == 1


def test_an_image_that_kills_its_worker_inside_a_targz_is_isolated_and_the_rest_of_its_chunk_lands(
    tmp_path, reliability_record
):
    import io
    import tarfile

    rng = np.random.default_rng(2)
    images = {f"0000000{i}_000.png": png(rng.integers(0, 256, (96, 96), dtype=np.uint8)) for i in (1, 2, 3, 4, 5)}
    images["00000007_000.png"] = zeros_png(8192)  # kills a worker of WORKER_MEMORY, in the first archive's only chunk
    src = tmp_path / "packed"
    src.mkdir()
    for archive, ids in (
        ("images_001.tar.gz", ["00000001_000.png", "00000007_000.png", "00000002_000.png"]),
        ("images_002.tar.gz", ["00000003_000.png", "00000004_000.png", "00000005_000.png"]),
    ):
        with tarfile.open(src / archive, "w:gz") as tar:
            for image_id in ids:
                info = tarfile.TarInfo(f"images/{image_id}")
                info.size = len(images[image_id])
                tar.addfile(info, io.BytesIO(images[image_id]))
    rows = [row(image_id, k + 1) for k, image_id in enumerate(sorted(images))]
    (src / "Data_Entry_2017_v2020.csv").write_text("\n".join([HEADER, *rows]) + "\n")

    out = tmp_path / "out"
    args = ["ingest", "--source", str(src), "--out", str(out), "--size", "64", "--workers", "2"]
    done = subprocess.run(
        [str(CXR), *args, "--worker-memory", WORKER_MEMORY, "--json"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    version = open_version(str(out / json.loads(done.stdout)["digest"]))
    assert version.metadata()["image_id"].to_pylist() == sorted(set(images) - {"00000007_000.png"})
    [record] = version.quarantine().to_pylist()
    assert record["image_id"] == "00000007_000.png" and record["reason"] == "decode_crashed"
    assert "KilledWorker" in record["detail"] and record["source_uri"].startswith("tar://images/00000007_000.png::")
    assert version.accounting.accepted + version.accounting.quarantined == version.accounting.inputs == 6
    reliability_record.record(
        "packed archives",
        "a PNG inside a .tar.gz whose decoding goes over the Dask worker's memory limit",
        "decode_crashed: the scan's worker died; its first unfinished chunk was decoded image by image, and the "
        "archive scanned again without it; the other images of its chunk and archive landed",
    )
