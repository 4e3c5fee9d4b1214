"""NIH as it is downloaded: ``images_*.tar.gz`` archives or one ``.zip`` ingest to the digest of the unpacked folder,
locally, on a Dask cluster and from a real S3 server; a killed packed ingest resumes without reading finished
archives again, and a replaced archive is the only one decoded again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr import storage
from cxr.data.cluster import dask_client
from cxr.data.gc import NeededVersions, plan_gc
from cxr.data.ingest import PartsToDo, ingest, publish, run_parts
from cxr.data.plan import IngestOptions, plan_ingest
from cxr.data.synth import SynthConfig, synthesize
from tests.archives import pack_targz, pack_zip

OPTIONS = IngestOptions(sizes=(32,), part_images=8)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """One synthetic archive three ways: unpacked, as 3 .tar.gz files, as one .zip."""
    root = tmp_path_factory.mktemp("packed")
    synthesize(SynthConfig(out=str(root / "unpacked"), n_images=90, size=64, seed=3, per_folder=40, workers=1))
    pack_targz(root / "unpacked", root / "targz", 3)
    pack_zip(root / "unpacked", root / "nih.zip")
    return {"unpacked": root / "unpacked", "targz": root / "targz", "zip": root / "nih.zip"}


@pytest.fixture(scope="module")
def clean_digest(sources, tmp_path_factory) -> str:
    return ingest(str(sources["unpacked"]), str(tmp_path_factory.mktemp("clean") / "ds"), OPTIONS).digest


def test_tar_gz_archives_and_a_zip_give_the_digest_of_the_unpacked_folder(sources, clean_digest, tmp_path):
    for kind in ("targz", "zip"):
        summary = ingest(str(sources[kind]), str(tmp_path / kind), OPTIONS)
        assert summary.digest == clean_digest, kind
        acc = summary.accounting
        assert acc.accepted == acc.inputs == acc.label_rows == acc.image_files == 90, kind
        metadata = storage.read_parquet(storage.join(summary.path, "metadata.parquet"))
        uris = metadata["source_uri"].to_pylist()
        prefix = "tar://images/" if kind == "targz" else "zip://images_00"
        assert all(u.startswith(prefix) and "::" in u for u in uris), uris[:3]
    # nothing was unpacked to disk: the outputs hold no PNG
    assert not list(tmp_path.rglob("*.png"))
    # a version's shards are hard links to its parts' (locally): the pixels are on disk once
    shards = list((tmp_path / "targz").glob("*/shards/32/*.npy"))
    assert shards and all(p.stat().st_nlink == 2 for p in shards)


def test_a_packed_ingest_on_a_dask_cluster_reports_every_byte_and_gives_the_same_digest(
    sources, clean_digest, tmp_path
):
    out = tmp_path / "ds"
    plan = plan_ingest(str(sources["targz"]), str(out), OPTIONS)
    todo = PartsToDo.of(plan)
    assert (todo.archives, todo.reused_archives, todo.parts) == (3, 0, 0)
    assert todo.bytes == sum(p.stat().st_size for p in sources["targz"].glob("*.tar.gz"))
    seen: list[int] = []
    with dask_client(workers=2) as client:
        decoded = run_parts(plan, client, seen.append)
    assert decoded.archives == 3 and decoded.archive_images == 90 and not decoded.damaged_archives
    assert sum(seen) == todo.bytes  # as the archives were read (events from the workers), each byte once
    assert publish(plan).digest == clean_digest


def test_packed_sources_on_a_real_s3_server_give_the_same_digest(sources, clean_digest, s3_bucket, tmp_path):
    fs, _ = storage.filesystem(s3_bucket)
    bucket = s3_bucket[len("s3://") :]
    fs.put(str(sources["targz"]), f"{bucket}/targz", recursive=True)
    fs.put(str(sources["zip"]), f"{bucket}/nih.zip")
    for kind, url in (("targz", f"{s3_bucket}/targz"), ("zip", f"{s3_bucket}/nih.zip")):
        summary = ingest(url, f"{s3_bucket}/out-{kind}", OPTIONS)
        assert summary.digest == clean_digest, kind
        assert summary.accounting.accepted == 90


def test_a_replaced_archive_is_the_only_one_decoded_again(sources, tmp_path, reliability_record):
    src = tmp_path / "src"
    src.mkdir()
    for path in sources["targz"].iterdir():
        os.link(path, src / path.name) if path.suffix == ".gz" else src.joinpath(path.name).write_bytes(
            path.read_bytes()
        )
    out = tmp_path / "ds"
    first = ingest(str(src), str(out), OPTIONS)
    before = {a.name: a.listing_url for a in plan_ingest(str(src), str(out), OPTIONS).archives}
    # images_002.tar.gz replaced: the same members, one image's bytes changed (a re-exported download)
    unpacked = tmp_path / "unpacked"
    import tarfile

    with tarfile.open(src / "images_002.tar.gz") as tar:
        tar.extractall(unpacked, filter="data")
    victim = sorted((unpacked / "images").iterdir())[0]
    from PIL import Image

    Image.open(victim).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim)
    (src / "images_002.tar.gz").unlink()
    with tarfile.open(src / "images_002.tar.gz", "w:gz") as tar:
        for image in sorted((unpacked / "images").iterdir()):
            tar.add(image, arcname=f"images/{image.name}")
    in_archive = len(list((unpacked / "images").iterdir()))

    plan = plan_ingest(str(src), str(out), OPTIONS)
    todo = PartsToDo.of(plan)
    assert (todo.archives, todo.reused_archives) == (3, 2)
    decoded = run_parts(plan)
    assert (decoded.skipped_archives, decoded.archive_images) == (2, in_archive)
    second = publish(plan)
    assert second.digest != first.digest and second.accounting.accepted == 90
    # cxr gc: the replaced archive's old listing names no part of LATEST's version: removed; the others kept
    report = plan_gc(str(out), NeededVersions({}), keep=1, idle_s=0)
    assert [r.url for r in report.removals if r.kind == "archive listing"] == [before["images_002.tar.gz"]]
    reliability_record.record(
        "packed archives",
        "one .tar.gz of the source replaced by a new copy",
        f"only its {in_archive} images decoded again; the other archives were not read",
    )


def test_kill_9_during_a_packed_ingest_then_rerun_reads_only_the_unfinished_archives(tmp_path, reliability_record):
    unpacked = tmp_path / "unpacked"
    synthesize(SynthConfig(out=str(unpacked), n_images=600, size=384, seed=5, workers=2))
    src = tmp_path / "targz"
    pack_targz(unpacked, src, 4)
    options = IngestOptions(sizes=(96,), part_images=10)
    clean = ingest(str(unpacked), str(tmp_path / "clean"), options).digest
    out = tmp_path / "killed"
    args = [str(BIN / "cxr"), "ingest", "--source", str(src), "--out", str(out), "--size", "96", "--part-images", "10"]
    proc = subprocess.Popen(
        [*args, "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    listings = out / ".work" / "archives"
    deadline = time.monotonic() + 180
    finished: dict[str, int] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        finished = {p.name: p.stat().st_mtime_ns for p in listings.glob("*.parquet")} if listings.exists() else {}
        if finished:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"ingest finished before it could be killed: {proc.communicate()}"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Dask worker, all at once
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in listings.glob("*.parquet")}
    assert 1 <= len(finished) < 4 and not (out / "LATEST").exists()

    rerun = subprocess.run([*args, "--workers", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["digest"] == clean == (out / "LATEST").read_text().strip()
    assert f"{len(finished)} of 4 .tar.gz archives read before, reading {4 - len(finished)}" in rerun.stderr
    # the archives finished before the kill were not read again: their listings are the same files
    assert {n: (listings / n).stat().st_mtime_ns for n in finished} == finished
    assert len(list(listings.glob("*.parquet"))) == 4
    reliability_record.record(
        "packed archives",
        "kill -9 of a running ingest of .tar.gz archives",
        f"the rerun gave the unpacked folder's digest; the {len(finished)} archive(s) finished before "
        "were not read again",
    )
