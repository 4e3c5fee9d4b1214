"""The dataset store checks what it reads and survives a full disk and killed writes.

A flipped byte in a shard, an edited metadata.parquet, a mismatched manifest pair are refused with the
file named; a part with records but no shard is decoded again; an ingest into a full filesystem leaves
no version and no LATEST change; temp files of a killed write are removed by the next run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cxr import storage
from cxr.data.ingest import ingest, publish, run_parts
from cxr.data.integrity import IntegrityError
from cxr.data.manifest import ManifestConfig, ManifestMismatchError, build_manifest, read_manifest, write_manifest
from cxr.data.plan import IngestOptions, plan_ingest
from cxr.data.stats import dataset_stats
from cxr.data.version import open_version
from cxr.learn.shards import ShardStore
from tests.archives import archive, grow

OPTIONS = IngestOptions(sizes=(32,), part_images=4)
INGEST = (
    "import sys; from cxr.data.ingest import ingest; from cxr.data.plan import IngestOptions; "
    "ingest(sys.argv[1], sys.argv[2], IngestOptions(sizes=(int(sys.argv[3]),), part_images=int(sys.argv[4])))"
)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return archive(tmp_path_factory.mktemp("integrity") / "src", 24, seed=2)


@pytest.fixture
def version(source, tmp_path):
    return open_version(ingest(str(source), str(tmp_path / "ds"), OPTIONS).path)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_shard_is_refused_naming_the_file(version, reliability_record):
    shard = Path(version.shard_path(32, "shard-00000"))
    _flip_last_byte(shard)
    store = ShardStore(version.path, version.digest, 32)
    with pytest.raises(IntegrityError, match="corrupt") as mapped:
        store.array("shard-00000")
    with pytest.raises(IntegrityError) as loaded:
        version.load_shard(32, "shard-00000")
    assert str(shard) in str(mapped.value) and str(shard) in str(loaded.value)
    assert store.array("shard-00001").shape[1:] == (32, 32)  # the others still read
    reliability_record.record(
        "dataset store",
        "a flipped byte in a shard of a local version",
        "refused on first read (memory map and whole read): IntegrityError names the shard file",
    )


@pytest.mark.s3
def test_an_s3_shard_is_checked_before_it_enters_the_cache_and_a_bad_cache_copy_is_fetched_again(
    source, s3_bucket, tmp_path, monkeypatch, reliability_record
):
    monkeypatch.setenv("CXR_CACHE", str(tmp_path / "cache"))
    summary = ingest(str(source), f"{s3_bucket}/ds", OPTIONS)
    version = open_version(summary.path)
    truth = version.load_shard(32, "shard-00000")
    ShardStore(version.path, version.digest, 32).fetch(["shard-00000"])
    cached = tmp_path / "cache" / "shards" / version.digest / "32" / "shard-00000.npy"
    _flip_last_byte(cached)
    assert np.array_equal(ShardStore(version.path, version.digest, 32).array("shard-00000"), truth)
    assert np.array_equal(np.load(cached), truth)  # the damaged copy was replaced by a checked one

    url = version.shard_path(32, "shard-00001")
    data = bytearray(storage.read_bytes(url))
    data[-1] ^= 0xFF
    storage.write_bytes(url, bytes(data))
    with pytest.raises(IntegrityError, match="corrupt") as err:
        ShardStore(version.path, version.digest, 32).fetch(["shard-00001"])
    assert url in str(err.value)
    assert not (cached.parent / "shard-00001.npy").exists()
    reliability_record.record(
        "dataset store",
        "a flipped byte in a shard on S3, and in its cached local copy",
        "the S3 copy refused before it entered the cache (IntegrityError names the s3:// URL); "
        "the damaged cache copy was fetched again and checked",
    )


def test_an_edited_metadata_parquet_is_refused_naming_the_file(version, reliability_record):
    path = version.file("metadata.parquet")
    table = pa.parquet.read_table(path)
    edited = table.set_column(
        table.schema.get_field_index("hernia"), "hernia", pc.invert(table["hernia"]).cast(pa.bool_())
    )
    storage.write_parquet(edited.cast(table.schema), path)
    reopened = open_version(version.path)
    for read in (
        reopened.metadata,
        lambda: build_manifest(reopened, ManifestConfig()),
        lambda: dataset_stats(reopened),
    ):
        with pytest.raises(IntegrityError, match=r"metadata\.parquet") as err:
            read()
        assert path in str(err.value)
    assert reopened.boxes().num_rows >= 0  # the untouched files still read
    reliability_record.record(
        "dataset store",
        "an edited metadata.parquet (one label column flipped)",
        "refused by every reader (metadata, manifest, stats): IntegrityError names the file",
    )


def test_a_mismatched_manifest_pair_is_refused_naming_the_file(version, tmp_path, reliability_record):
    plain, resampled = tmp_path / "none", tmp_path / "resample"
    write_manifest(build_manifest(version, ManifestConfig("none")), str(plain))
    write_manifest(build_manifest(version, ManifestConfig("resample", floor=0.2)), str(resampled))
    assert read_manifest(str(resampled)).info.strategy == "resample"  # a true pair reads
    shutil.copy(resampled / "manifest.parquet", plain / "manifest.parquet")  # a rewrite killed between the two
    with pytest.raises(ManifestMismatchError, match=r"manifest\.json says") as err:
        read_manifest(str(plain))
    assert str(plain / "manifest.parquet") in str(err.value)
    reliability_record.record(
        "dataset store",
        "a manifest.parquet paired with another manifest's manifest.json",
        "refused on read: the digest of the pair does not match; the error names manifest.parquet",
    )


def test_a_part_with_records_but_no_shard_is_decoded_again(source, tmp_path, reliability_record):
    src = tmp_path / "src"
    shutil.copytree(source, src)
    out = tmp_path / "ds"
    ingest(str(src), str(out), OPTIONS)
    damaged = next(spec for spec in plan_ingest(str(src), str(out), OPTIONS).parts if len(spec.images) > 1)
    os.unlink(damaged.shard_url(32))  # records.parquet stays: the state a removal under a writer leaves
    grow(src, 1)
    plan = plan_ingest(str(src), str(out), OPTIONS)
    assert damaged.key in {spec.key for spec in plan.parts}
    decoded = run_parts(plan).decoded
    summary = publish(plan)
    assert decoded >= len(damaged.images) and Path(damaged.shard_url(32)).exists()
    grown = open_version(summary.path)
    store = ShardStore(grown.path, grown.digest, 32)
    assert all(store.array(s).shape[0] > 0 for s in set(grown.metadata(columns=["shard"])["shard"].to_pylist()))
    reliability_record.record(
        "dataset store",
        "a finished part whose shard file was removed (records.parquet left)",
        "the part was not trusted: decoded again, and the next version's shards all pass their hashes",
    )


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".cxr-tmp." in p.name]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (id -u is not 0)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_an_ingest_into_a_full_filesystem_fails_cleanly(small_disk, tmp_path, reliability_record):
    src = archive(tmp_path / "src", 30, seed=3)
    out = small_disk / "ds"
    # 30 images at 192 px (36 KiB each) fit; 60 do not (a version's shards are hard links to its parts)
    first = ingest(str(src), str(out), IngestOptions(sizes=(192,), part_images=8))
    grow(src, 30)
    run = [sys.executable, "-c", INGEST, str(src), str(out), "192", "8"]
    failed = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert f"StorageFullError: [Errno 28] no space left on the device writing {out}/" in failed.stderr
    after = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert after == sorted(["LATEST", first.digest])  # no new version, complete or not
    assert (out / "LATEST").read_text().strip() == first.digest
    assert open_version(str(out)).digest == first.digest
    rerun = subprocess.run(run, capture_output=True, timeout=300)
    assert rerun.returncode != 0  # still no room: fails the same way
    assert (out / "LATEST").read_text().strip() == first.digest and not _temps(small_disk)
    reliability_record.record(
        "dataset store",
        "an ingest into a nearly full filesystem (a 2 MiB tmpfs)",
        "failed with StorageFullError naming the file; no version folder, LATEST unchanged, "
        "no temp files after the next run",
    )


KILLED_WRITE = """
import os, signal, sys
from cxr import local_writes
for path in sys.argv[1:]:
    local_writes.write_temp(path, b"half a write", durable=False)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temp_files_of_a_killed_write_are_removed_by_the_next_run(source, tmp_path, reliability_record):
    out = tmp_path / "ds"
    first = ingest(str(source), str(out), OPTIONS)
    part = next((out / ".work" / "parts").iterdir())
    targets = [out / "LATEST", part / "records.parquet", out / first.digest / "shards" / "32" / "shard-00000.npy"]
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITE, *map(str, targets)], capture_output=True)
    assert killed.returncode == -9 and len(_temps(out)) == 3
    rerun = subprocess.run([sys.executable, "-c", INGEST, str(source), str(out), "32", "4"], capture_output=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _temps(out) == [] and (out / "LATEST").read_text().strip() == first.digest
    assert open_version(str(out)).load_shard(32, "shard-00000").shape[1:] == (32, 32)
    reliability_record.record(
        "dataset store",
        "a write killed (SIGKILL) after its temp file and before the rename, in three folders",
        "the next ingest removed the three temp files; LATEST and the version unchanged",
    )
