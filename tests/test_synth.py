"""``cxr synth``: NIH layout, real prevalence, learnable signs inside recorded boxes, byte-identical output."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.data.adapters import read_source
from cxr.data.source import summarize
from cxr.data.synth import SynthConfig, SynthOutputExistsError, load_profile, synthesize
from cxr.data.synth_render import render
from cxr.findings import FINDINGS


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("synth") / "nih"
    result = synthesize(SynthConfig(out=str(out), n_images=240, size=64, seed=3, per_folder=100))
    return out, result


def test_layout_is_the_nih_layout(small):
    out, _ = small
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        ".cxr-synth.json",
        "BBox_List_2017.csv",
        "Data_Entry_2017_v2020.csv",
        "images_001",
        "images_002",
        "images_003",
        "test_list.txt",
        "train_val_list.txt",
    ]
    assert len(list((out / "images_001" / "images").glob("*.png"))) == 100
    assert len(list((out / "images_003" / "images").glob("*.png"))) == 40


def test_reads_back_cleanly_with_the_expected_counts(small):
    out, result = small
    source = read_source(str(out))
    summary = summarize(source)
    assert summary.rows_in == summary.rows_accepted == summary.image_files == result.n_images == 240
    assert summary.rows_without_file == summary.files_without_row == 0
    assert summary.patients == result.n_patients and 240 / 30 <= result.n_patients < 240
    assert summary.positives == result.positives
    assert summary.boxes == result.n_boxes == sum(result.positives.values())
    assert summary.train_val_listed + summary.test_listed == 240
    assert source.boxes.quarantine == [] and source.test.quarantine == [] and source.train_val.quarantine == []


def test_split_lists_are_by_patient(small):
    out, _ = small
    rows = read_source(str(out)).labels.rows
    patient = dict(zip(rows["image_id"].to_pylist(), rows["patient_id"].to_pylist(), strict=True))
    test = {patient[i] for i in (out / "test_list.txt").read_text().split()}
    train = {patient[i] for i in (out / "train_val_list.txt").read_text().split()}
    assert test and train and not test & train


def test_each_box_matches_a_label_of_its_image_and_lies_in_1024_px(small):
    out, _ = small
    source = read_source(str(out))
    labels = dict(
        zip(source.labels.rows["image_id"].to_pylist(), source.labels.rows["finding_labels"].to_pylist(), strict=True)
    )
    boxes = source.boxes.rows.to_pylist()
    per_image: dict[str, list[str]] = {}
    for b in boxes:
        per_image.setdefault(b["image_id"], []).append(b["finding"])
        assert b["x"] >= 0 and b["x"] + b["w"] <= 1024 + 1e-6 and b["y"] >= 0 and b["y"] + b["h"] <= 1024 + 1e-6
    assert {k: sorted(v) for k, v in per_image.items()} == {k: sorted(v) for k, v in labels.items() if v}


def test_the_box_list_spells_infiltration_like_the_real_one(small):
    text = (small[0] / "BBox_List_2017.csv").read_text()
    assert text.startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    assert ",Infiltration," not in text


def test_same_seed_same_bytes_whatever_the_workers_other_seed_differs(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    synthesize(SynthConfig(out=str(a), n_images=60, size=48, seed=11, workers=1))
    synthesize(SynthConfig(out=str(b), n_images=60, size=48, seed=11, workers=2))
    synthesize(SynthConfig(out=str(c), n_images=60, size=48, seed=12, workers=1))
    assert digest_tree(a) == digest_tree(b)
    assert digest_tree(a) != digest_tree(c)


def test_prevalence_follows_nih_on_5000_images(tmp_path):
    result = synthesize(SynthConfig(out=str(tmp_path / "big"), n_images=5000, size=16, seed=0, workers=2))
    summary = summarize(read_source(str(tmp_path / "big")))
    assert summary.positives == result.positives
    profile = load_profile()
    real = dict.fromkeys(FINDINGS, 0)
    for labels, count in profile["label_sets"]:
        for f in labels.split("|"):
            if f in real:
                real[f] += count
    checked = 0
    for finding in FINDINGS:
        prevalence = real[finding] / profile["n_images"]
        if prevalence >= 0.01:
            checked += 1
            got = summary.positives[finding] / 5000
            assert abs(got - prevalence) <= 0.2 * prevalence, (finding, got, prevalence)
    assert checked == 13  # all but Hernia (0.2 %)


def test_2017_edition_writes_trailing_commas(tmp_path):
    synthesize(SynthConfig(out=str(tmp_path), n_images=20, size=32, edition="2017"))
    lines = (tmp_path / "Data_Entry_2017.csv").read_text().splitlines()
    assert all(line.endswith(",") for line in lines)
    assert read_source(str(tmp_path)).labels.edition == "2017"


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_sign_changes_pixels_only_inside_its_box(finding):
    plain, _ = render(128, [], np.random.default_rng(5))
    signed, [box] = render(128, [finding], np.random.default_rng(5))
    diff = np.abs(signed.astype(int) - plain.astype(int))
    inside = np.zeros_like(diff, dtype=bool)
    inside[int(box.y) : int(box.y + box.h), int(box.x) : int(box.x + box.w)] = True
    assert diff[~inside].max() == 0
    assert diff[inside].mean() > 8, f"{finding}: sign too faint ({diff[inside].mean():.1f} grey levels)"
    weak, _ = render(128, [finding], np.random.default_rng(5), strength=0.0)
    assert np.array_equal(weak, plain)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_images": 0}, "n_images"),
        ({"size": 8}, "size"),
        ({"edition": "2019"}, "edition"),
        ({"strength": -1}, "strength"),
        ({"workers": 0}, "workers must be >= 1, got 0"),
        ({"fainter_sex": "X"}, "fainter_sex must be 'M', 'F' or None, got 'X'"),
        ({"fainter_strength": 1.5}, r"fainter_strength must be in \[0, 1\], got 1.5"),
        ({"fainter_strength": -0.1}, "fainter_strength"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(out="x", **{"n_images": 10, **kwargs})


def _pixels(root: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in root.glob("images_*/images/*.png")}


def test_fainter_sex_dims_only_that_sex_signs_and_changes_nothing_else(tmp_path):
    base = SynthConfig(out="", n_images=60, size=32, seed=2, workers=1)
    runs = {
        name: replace(base, out=str(tmp_path / name), **kwargs)
        for name, kwargs in {"plain": {}, "faint": {"fainter_sex": "F"}, "blank": {"strength": 0.0}}.items()
    }
    for config in runs.values():
        synthesize(config)
    tables = {name: digest_tree(Path(c.out)) for name, c in runs.items()}
    for name in tables:  # the label table, box list and split lists are the plain synth's, byte for byte
        tables[name] = {k: v for k, v in tables[name].items() if "/" not in k and k != ".cxr-synth.json"}
    assert tables["faint"] == tables["plain"] and len(tables["plain"]) == 4
    settings = json.loads((tmp_path / "faint" / ".cxr-synth.json").read_text())["settings"]
    assert (settings["fainter_sex"], settings["fainter_strength"]) == ("F", 0.3)
    assert "fainter_sex" not in json.loads((tmp_path / "plain" / ".cxr-synth.json").read_text())["settings"]

    rows = read_source(str(tmp_path / "plain")).labels.rows
    sex = dict(zip(rows["image_id"].to_pylist(), rows["sex"].to_pylist(), strict=True))
    found = dict(zip(rows["image_id"].to_pylist(), rows["finding_labels"].to_pylist(), strict=True))
    plain, faint, blank = (_pixels(tmp_path / name) for name in ("plain", "faint", "blank"))
    groups = {(s, bool(found[i])) for i, s in sex.items()}
    assert groups == {("M", True), ("M", False), ("F", True), ("F", False)}  # every case is checked
    for image_id in plain:
        if sex[image_id] == "M" or not found[image_id]:
            assert np.array_equal(faint[image_id], plain[image_id]), image_id
            continue
        # the same sign at 0.3 of its contrast: its difference from the unsigned image (strength 0) shrinks
        # as much, up to rounding to grey levels
        sign, dimmed = (np.abs(x[image_id] - blank[image_id]).sum() for x in (plain, faint))
        assert sign > 0 and abs(dimmed - 0.3 * sign) <= 0.05 * sign, (image_id, dimmed, sign)


def test_the_profile_is_aggregate_counts_of_the_real_table():
    profile = load_profile()
    assert profile["n_images"] == 112_120 and profile["n_patients"] == 30_805
    assert sum(c for _, c in profile["label_sets"]) == 112_120
    assert json.dumps(profile).count("png") == 0  # no image names, no rows


def test_a_folder_holding_another_archive_is_refused_and_overwrite_replaces_it_whole(tmp_path):
    out = tmp_path / "src"
    synthesize(SynthConfig(out=str(out), n_images=250, size=64, seed=1))
    with pytest.raises(SynthOutputExistsError, match=r"n_images 250 -> 100, seed 1 -> 2.*--overwrite"):
        synthesize(SynthConfig(out=str(out), n_images=100, size=64, seed=2))
    assert len(list(out.glob("images_*/images/*.png"))) == 250  # nothing touched
    synthesize(SynthConfig(out=str(out), n_images=100, size=64, seed=2), overwrite=True)
    assert len(list(out.glob("images_*/images/*.png"))) == 100
    assert len((out / "Data_Entry_2017_v2020.csv").read_text().splitlines()) == 1 + 100


def test_a_folder_of_other_files_is_refused_and_the_same_synth_again_is_reused(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SynthOutputExistsError, match="1 files that no synth of these settings wrote"):
        synthesize(SynthConfig(out=str(tmp_path / "other"), n_images=10, size=64))
    config = SynthConfig(out=str(tmp_path / "src"), n_images=40, size=64, seed=4, workers=1)
    first = synthesize(config)
    before = digest_tree(tmp_path / "src")
    again = synthesize(replace(config, workers=2))  # the number of workers changes no byte
    assert again.reused and not first.reused and replace(again, reused=False) == first
    assert digest_tree(tmp_path / "src") == before
