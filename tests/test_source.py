"""Finding the parts of an NIH archive: both image layouts, both table editions, local and S3."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import pytest

from cxr.data.adapters import read_source
from cxr.data.csv_text import SourceFormatError
from cxr.data.plan import plan_ingest
from cxr.data.quarantine import Reason
from cxr.data.source import discover, summarize
from cxr.data.synth import SynthConfig, synthesize
from tests.conftest import NIH


def test_flat_images_folder_with_the_real_sample(tmp_path):
    shutil.copy(NIH / "Data_Entry_2017_sample_original_format.csv", tmp_path / "Data_Entry_2017.csv")
    shutil.copytree(NIH / "images", tmp_path / "images")
    source = read_source(str(tmp_path))
    summary = summarize(source)
    assert summary.edition == "2017" and summary.rows_accepted == 28
    assert summary.image_files == 4 and summary.rows_without_file == 24 and summary.files_without_row == 0
    assert source.layout.box_list is None and source.boxes is None and source.test is None


def test_numbered_folders_and_a_file_name_seen_twice(tmp_path):
    synthesize(SynthConfig(out=str(tmp_path), n_images=30, size=32, per_folder=10))
    duplicate = tmp_path / "images_003" / "images" / "00000001_000.png"
    shutil.copy(tmp_path / "images_001" / "images" / "00000001_000.png", duplicate)
    layout = discover(str(tmp_path))
    assert len(layout.image_files) == 30 and layout.n_image_files == 31
    [record] = layout.quarantine
    assert record.reason == Reason.DUPLICATE_IMAGE_ID and record.source_uri == str(duplicate)
    assert layout.image_files["00000001_000.png"].endswith("images_001/images/00000001_000.png")


def test_the_v2020_table_is_preferred_when_both_editions_are_there(tmp_path):
    synthesize(SynthConfig(out=str(tmp_path), n_images=5, size=32))
    (tmp_path / "Data_Entry_2017.csv").write_text("anything")
    assert discover(str(tmp_path)).label_table.endswith("Data_Entry_2017_v2020.csv")


def test_a_folder_without_a_label_table_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SourceFormatError, match="no label table"):
        discover(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(str(tmp_path / "missing"))


@pytest.mark.s3
def test_an_archive_on_s3_reads_like_the_same_archive_on_disk(tmp_path, s3_bucket):
    config = {"n_images": 40, "size": 32, "seed": 9, "per_folder": 16}
    synthesize(SynthConfig(out=str(tmp_path), **config))
    synthesize(SynthConfig(out=f"{s3_bucket}/nih", **config))
    local, remote = summarize(read_source(str(tmp_path))), summarize(read_source(f"{s3_bucket}/nih"))
    assert remote.root == f"{s3_bucket}/nih"
    assert replace(local, root="", label_table="") == replace(remote, root="", label_table="")
    assert remote.image_files == 40


def test_symlinks_are_listed_and_quarantined_and_never_followed(tmp_path):
    src = tmp_path / "nih"
    synthesize(SynthConfig(out=str(src), n_images=8, size=32, per_folder=4))
    outside = tmp_path / "outside"
    outside.mkdir()
    images = src / "images_001" / "images"
    (images / "00000001_000.png").rename(outside / "00000001_000.png")
    (images / "00000001_000.png").symlink_to(outside / "00000001_000.png")  # a labelled image, out of the root
    (images / "notes.png").symlink_to("/nonexistent")  # no row names it, and it points nowhere
    (src / "images_003").symlink_to(outside, target_is_directory=True)  # a linked image folder
    plan = plan_ingest(str(src), str(tmp_path / "out"))
    links = {(q.image_id, q.source_uri) for q in plan.quarantine if q.reason == Reason.SYMLINK}
    assert links == {
        ("00000001_000.png", f"{src}/Data_Entry_2017_v2020.csv#line=2"),
        ("notes.png", str(images / "notes.png")),
        (None, str(src / "images_003")),
    }
    assert plan.quarantine and all(q.reason == Reason.SYMLINK for q in plan.quarantine)
    assert "00000001_000.png" not in plan.listed["image_id"].to_pylist()
    assert plan.counts["image_files"] == 8 + 2 and plan.counts["inputs"] == 8 + 2
    assert plan.listed.num_rows + plan.unlisted.num_rows + len(plan.quarantine) == plan.counts["inputs"]


def test_a_file_name_that_is_not_utf8_is_quarantined_under_a_printable_name(tmp_path):
    synthesize(SynthConfig(out=str(tmp_path), n_images=4, size=32))
    folder = tmp_path / "images_001" / "images"
    try:
        with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as f:  # Latin-1 bytes in the name
            f.write((folder / "00000001_000.png").read_bytes())
    except OSError as err:
        pytest.skip(f"this filesystem refuses names that are not UTF-8: {err}")
    plan = plan_ingest(str(tmp_path), str(tmp_path.parent / f"{tmp_path.name}-out"))
    [record] = plan.quarantine
    assert record.reason == Reason.NON_UTF8_NAME and record.image_id == "caf\\xe9.png"
    assert record.source_uri == f"{folder}/caf\\xe9.png"
    assert plan.counts["inputs"] == 4 + 1 == plan.listed.num_rows + plan.unlisted.num_rows + len(plan.quarantine)


def test_wrong_s3_keys_name_the_variables_to_check_and_never_the_secret(s3_bucket):
    import subprocess
    import sys

    synthesize(SynthConfig(out=f"{s3_bucket}/nih", n_images=3, size=64))
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "not-the-secret-4711"}
    result = subprocess.run(
        [sys.executable, "-m", "cxr.cli", "inspect", f"{s3_bucket}/nih"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: permission denied: {s3_bucket}/nih")
    assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, and AWS_ENDPOINT_URL" in line
    assert os.environ["AWS_ENDPOINT_URL"] in line and "not-the-secret-4711" not in line
