"""Ingest end to end: accounting of a bad-file set, real NIH images, idempotence, splits, S3, resumption."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from cxr import storage
from cxr.data.ingest import ingest
from cxr.data.plan import IngestOptions, plan_ingest
from cxr.data.splits import SplitConflictError
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import METADATA_SCHEMA, open_version
from tests.conftest import NIH
from tests.test_decode import bomb_header

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def row(image_id: str, patient: int, labels: str = "No Finding") -> str:
    return f"{image_id},{labels},0,{patient},40,F,PA,2500,2048,0.143,0.143"


@pytest.fixture
def bad_source(tmp_path: Path) -> Path:
    """Twelve kinds of input, each with a known fate."""
    src = tmp_path / "bad"
    images = src / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    good = png(rng.integers(0, 256, (128, 128), dtype=np.uint8))
    files = {
        "00000001_000.png": good,  # fine
        "00000002_000.png": b"",  # zero bytes
        "00000003_000.png": good[: len(good) // 2],  # truncated
        "00000004_000.png": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200),  # a JPEG named .png
        "00000005_000.png": b"radiology report, not an image\n",  # a text file
        "00000006_000.png": png((rng.integers(0, 4096, (128, 128))).astype(np.uint16)),  # 16-bit
        "00000007_000.png": png(
            np.dstack([rng.integers(0, 256, (128, 128), dtype=np.uint8)] * 3 + [np.full((128, 128), 255, np.uint8)])
        ),  # RGBA
        "00000008_000.png": png(np.zeros((12, 12), np.uint8)),  # tiny
        "00000009_000.png": bomb_header(90_000, 90_000),  # decompression bomb header
        "00000010_000.png": good,  # its row appears twice
        "00000012_000.png": good,  # no row names it
    }
    for name, data in files.items():
        (images / name).write_bytes(data)
    rows = [row(f"{i:08d}_000.png", i) for i in range(1, 11)]
    rows += [row("00000010_000.png", 10), row("00000011_000.png", 11), row("../00000013_000.png", 13)]
    (src / "Data_Entry_2017_v2020.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return src


def test_a_bad_file_set_is_fully_accounted_for(bad_source, tmp_path, reliability_record):
    result = ingest(str(bad_source), str(tmp_path / "out"), IngestOptions(sizes=(64,)))
    version = open_version(result.path)
    metadata, quarantine = version.metadata(), version.quarantine()
    assert sorted(metadata["image_id"].to_pylist()) == [
        "00000001_000.png",
        "00000006_000.png",
        "00000007_000.png",
        "00000010_000.png",
    ]
    fate = {(r["image_id"], r["reason"]) for r in quarantine.to_pylist()}
    assert fate == {
        ("00000002_000.png", "unreadable_image"),
        ("00000003_000.png", "unreadable_image"),
        ("00000004_000.png", "unreadable_image"),
        ("00000005_000.png", "unreadable_image"),
        ("00000008_000.png", "bad_dimensions"),
        ("00000009_000.png", "too_large"),
        ("00000010_000.png", "duplicate_image_id"),
        ("00000011_000.png", "missing_image"),
        ("00000012_000.png", "unlabeled_image"),
        ("../00000013_000.png", "unsafe_path"),
    }
    details = {r["image_id"]: r["detail"] for r in quarantine.to_pylist()}
    assert "JPEG" in details["00000004_000.png"] and "text" in details["00000005_000.png"]
    acc = result.accounting
    assert acc.inputs == 14 == acc.label_rows + 1  # 13 rows + 1 file no row names
    assert acc.accepted + acc.quarantined == acc.inputs == metadata.num_rows + quarantine.num_rows
    assert acc.image_files == 11
    reliability_record.record(
        "ingest",
        "an archive with unreadable, too small, too large, duplicate, missing, unlabeled and path-escaping images",
        "each quarantined with its reason; accepted + quarantined = inputs",
    )


def test_shards_hold_the_converted_pixels(bad_source, tmp_path):
    version = open_version(ingest(str(bad_source), str(tmp_path / "out"), IngestOptions(sizes=(64, 128))).path)
    metadata = version.metadata().to_pylist()
    for r in metadata:
        shard = version.load_shard(128, r["shard"])
        pixels = shard[r["shard_index"]]
        source = np.asarray(Image.open(bad_source / "images" / r["image_id"]))
        if source.dtype == np.uint8 and source.ndim == 2:
            assert np.array_equal(pixels, source)  # 128 px in, 128 px shard: untouched
        assert version.load_shard(64, r["shard"]).shape[1:] == (64, 64)
    sixteen = next(r for r in metadata if r["image_id"] == "00000006_000.png")
    assert version.load_shard(128, sixteen["shard"])[sixteen["shard_index"]].max() > 200  # 12-bit scaled up


def test_the_real_nih_images_ingest_with_nothing_quarantined(tmp_path):
    src = tmp_path / "nih"
    shutil.copytree(NIH / "images", src / "images")
    names = sorted(p.name for p in (src / "images").iterdir())
    lines = (NIH / "Data_Entry_2017_sample_original_format.csv").read_text().splitlines()
    (src / "Data_Entry_2017.csv").write_text(
        "\n".join([lines[0], *[ln for ln in lines[1:] if ln.split(",")[0] in names]]) + "\n"
    )
    boxes = [ln for ln in _gunzip(NIH / "BBox_List_2017.csv.gz").splitlines() if ln.split(",")[0] in names]
    (src / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n" + "\n".join(boxes) + "\n")
    result = ingest(str(src), str(tmp_path / "out"), IngestOptions(sizes=(224,)))
    assert result.accounting.accepted == 4 and result.accounting.quarantined == 0
    assert open_version(result.path).metadata()["png_width"].to_pylist() == [1024] * 4
    assert open_version(result.path).boxes().num_rows == 2  # Cardiomegaly on 00001369_000, Pneumonia on 00001933_000
    assert open_version(result.path).metadata().schema.equals(METADATA_SCHEMA)


def _gunzip(path: Path) -> str:
    import gzip

    return gzip.decompress(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src") / "nih"
    synthesize(SynthConfig(out=str(out), n_images=120, size=96, seed=5, per_folder=50))
    return out


def test_a_rerun_on_an_unchanged_source_adds_nothing(synthetic, tmp_path):
    out = tmp_path / "out"
    first = ingest(str(synthetic), str(out), IngestOptions(sizes=(64,)))
    assert first.created
    before = sorted(str(p) for p in out.rglob("*"))
    plan = plan_ingest(str(synthetic), str(out), IngestOptions(sizes=(64,)))
    assert plan.existing == first.digest
    second = ingest(str(synthetic), str(out), IngestOptions(sizes=(64,)))
    assert not second.created and second.digest == first.digest
    assert sorted(str(p) for p in out.rglob("*")) == before
    kept = sorted(p.name for p in (out / ".work" / "parts").iterdir())
    assert kept == sorted(spec.key for spec in plan.parts)  # the newest version's parts, for the next ingest


def test_a_grown_archive_decodes_only_the_parts_its_new_images_fall_in(synthetic, tmp_path):
    from cxr.data.ingest import publish, run_parts

    src = tmp_path / "src"
    shutil.copytree(synthetic, src)
    out = tmp_path / "out"
    options = IngestOptions(sizes=(64,), part_images=8)
    first = ingest(str(src), str(out), options)
    # a new follow-up image of an existing patient, in the middle of the sorted ids
    image_id = "00000010_099.png"
    shutil.copy(src / "images_001" / "images" / "00000010_000.png", src / "images_003" / "images" / image_id)
    table = src / "Data_Entry_2017_v2020.csv"
    row = next(r for r in table.read_text().splitlines() if r.startswith("00000010_000.png"))
    table.write_text(table.read_text() + row.replace("00000010_000.png", image_id).replace(",0,10,", ",99,10,") + "\n")
    plan = plan_ingest(str(src), str(out), options)
    decoded = run_parts(plan).decoded
    # the part it falls in, and the next one if that part was cut at its size cap (4 x 8)
    assert 1 <= decoded <= 2 * 4 * 8 and decoded < first.accounting.accepted / 3
    second = publish(plan)
    assert second.digest != first.digest and second.accounting.accepted == first.accounting.accepted + 1


def test_a_changed_source_makes_a_new_version_and_moves_latest(synthetic, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synthetic, src)
    out = tmp_path / "out"
    first = ingest(str(src), str(out), IngestOptions(sizes=(64,))).digest
    (src / "images_001" / "images" / "00000001_000.png").unlink()
    second = ingest(str(src), str(out), IngestOptions(sizes=(64,)))
    assert second.digest != first and (out / "LATEST").read_text().strip() == second.digest
    assert open_version(str(out)).digest == second.digest and (out / first / "dataset.json").exists()
    assert second.accounting.quarantined_by_reason == {"missing_image": 1}


def test_splits_come_from_the_official_lists_and_keep_patients_apart(synthetic, tmp_path):
    metadata = open_version(ingest(str(synthetic), str(tmp_path / "out"), IngestOptions(sizes=(32,))).path).metadata()
    test_list = set((synthetic / "test_list.txt").read_text().split())
    split = dict(zip(metadata["image_id"].to_pylist(), metadata["split"].to_pylist(), strict=True))
    assert {i for i, s in split.items() if s == "test"} == test_list
    patients: dict[int, set[str]] = {}
    for p, s in zip(metadata["patient_id"].to_pylist(), metadata["split"].to_pylist(), strict=True):
        patients.setdefault(p, set()).add(s)
    assert all(len(s) == 1 for s in patients.values()) and {"train", "val", "test"} == set(split.values())


def test_a_patient_listed_in_two_splits_stops_the_ingest(synthetic, tmp_path, reliability_record):
    src = tmp_path / "src"
    shutil.copytree(synthetic, src)
    test_ids = (src / "test_list.txt").read_text().split()
    train_val = (src / "train_val_list.txt").read_text().split()
    moved = next(i for i in test_ids if any(t.startswith(i[:8]) and t != i for t in test_ids))
    (src / "test_list.txt").write_text("\n".join(i for i in test_ids if i != moved) + "\n")
    (src / "train_val_list.txt").write_text("\n".join([*train_val, moved]) + "\n")
    with pytest.raises(SplitConflictError, match="would be in two splits"):
        ingest(str(src), str(tmp_path / "out"), IngestOptions(sizes=(32,)))
    assert not (tmp_path / "out" / "LATEST").exists()
    reliability_record.record(
        "ingest",
        "official split lists that put one patient in two splits",
        "the ingest stops with SplitConflictError (the patient named); LATEST not written",
    )


@pytest.mark.s3
def test_s3_to_s3_gives_the_same_digest_as_local_to_local(synthetic, s3_bucket, tmp_path):
    fs, _ = storage.filesystem(s3_bucket)
    fs.put(str(synthetic), f"{s3_bucket[5:]}/src", recursive=True)
    local = ingest(str(synthetic), str(tmp_path / "out"), IngestOptions(sizes=(64,)))
    remote = ingest(f"{s3_bucket}/src", f"{s3_bucket}/datasets", IngestOptions(sizes=(64,)))
    assert remote.digest == local.digest
    assert storage.read_text(f"{s3_bucket}/datasets/LATEST").strip() == local.digest
    opened = open_version(f"{s3_bucket}/datasets")
    assert opened.metadata()["source_uri"][0].as_py().startswith(f"{s3_bucket}/src/images_001/images/")
    row = opened.metadata().to_pylist()[7]
    assert np.array_equal(
        opened.load_shard(64, row["shard"])[row["shard_index"]],
        open_version(local.path).load_shard(64, row["shard"])[row["shard_index"]],
    )
    assert len(storage.list_dirs(f"{s3_bucket}/datasets/.work/parts")) == len(
        plan_ingest(f"{s3_bucket}/src", f"{s3_bucket}/datasets", IngestOptions(sizes=(64,))).parts
    )


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="sizes"):
        IngestOptions(sizes=(8,))
    with pytest.raises(ValueError, match="sizes"):
        IngestOptions(sizes=(64, 64))


def test_metadata_finding_columns_agree_with_finding_labels(synthetic, tmp_path):
    metadata = open_version(ingest(str(synthetic), str(tmp_path / "out"), IngestOptions(sizes=(32,))).path).metadata()
    for r in metadata.to_pylist():
        assert {c for c in ("mass", "nodule", "hernia", "effusion") if r[c]} == {
            f.lower() for f in r["finding_labels"] if f.lower() in ("mass", "nodule", "hernia", "effusion")
        }
    assert pc.all(pc.equal(metadata["png_width"], 96)).as_py()


def test_an_output_given_as_a_relative_path_ingests_like_an_absolute_one(synthetic, tmp_path, monkeypatch):
    absolute = ingest(str(synthetic), str(tmp_path / "abs"), IngestOptions(sizes=(32,)))
    monkeypatch.chdir(tmp_path)
    relative = ingest(str(synthetic), "rel", IngestOptions(sizes=(32,)))  # publish once found no shard of it
    assert relative.digest == absolute.digest and (tmp_path / "rel" / "LATEST").read_text().strip() == relative.digest


def test_the_part_size_rule_the_readme_states_holds_on_nih_scale_ids():
    """README: parts of N images on average (64 MiB of pixels at all sizes, 8 to 64; 64 at 256 px), one part
    up to 4 N (NIH: up to 256). The docs said "parts of at most 64 images", while NIH's had 207 and 256."""
    from cxr.data.parts import PartImage
    from cxr.data.plan import IngestOptions, chunk_images

    root = Path(__file__).parents[1]
    readme, architecture = (root / "README.md").read_text(), (root / "docs" / "architecture.md").read_text()
    assert "at most 64" not in readme + architecture  # "one file per part of at most 64 images" was false
    assert "up to `4 N` (NIH: up to 256)" in readme and "1 to `4 N` images (NIH at 256 px: up to 256)" in architecture
    assert IngestOptions(sizes=(256,)).images_per_part == 64
    assert IngestOptions(sizes=(2048,)).images_per_part == 16 and IngestOptions(sizes=(16,)).images_per_part == 64
    ids = [f"{p:08d}_{k:03d}.png" for p in range(1, 30_806) for k in range(4)][:112_120]  # NIH's count and names
    parts = chunk_images([PartImage(i, i, 0, "") for i in ids], 64)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == len(ids) and max(sizes) == 4 * 64 and 55 <= len(ids) / len(parts) <= 73
