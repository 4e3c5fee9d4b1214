"""Finding the parts of an NIH archive: both image layouts, both table editions, local and S3."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from cxr.data.labels import NihFormatError
from cxr.data.quarantine import Reason
from cxr.data.source import discover, read_source, summarize
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
    with pytest.raises(NihFormatError, match="no label table"):
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
