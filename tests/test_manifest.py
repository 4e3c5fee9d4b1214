"""Manifests: strategies, exact balance, untouched val/test, determinism, digests that follow every input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from cxr.data.balance import oversample_to_floor
from cxr.data.ingest import ingest
from cxr.data.manifest import (
    ClassWeight,
    ManifestConfig,
    ManifestExistsError,
    build_manifest,
    manifest_warnings,
    read_manifest,
    write_manifest,
)
from cxr.data.plan import IngestOptions
from cxr.data.stats import dataset_stats
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version
from cxr.findings import FINDING_COLUMNS, FINDINGS


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    synthesize(SynthConfig(out=str(root / "src"), n_images=800, size=64, seed=0, workers=2))
    ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(32,)))
    return open_version(str(root / "ds"))


def split_rows(table, split: str) -> list[dict]:
    return table.filter(pc.equal(table["split"], split)).to_pylist()


def draws(table, finding: str) -> tuple[int, int]:
    train = table.filter(pc.equal(table["split"], "train"))
    repeat = train["repeat"].to_numpy()
    y = train[finding.lower()].to_numpy(zero_copy_only=False)
    return int(repeat[y].sum()), int(repeat[~y].sum())


def untouched(version, table) -> bool:
    metadata = version.metadata()
    for split in ("val", "test"):
        rows = split_rows(table, split)
        expected = metadata.filter(pc.equal(metadata["split"], split))
        if [r["image_id"] for r in rows] != sorted(expected["image_id"].to_pylist()) or any(
            r["repeat"] != 1 for r in rows
        ):
            return False
    return True


def test_none_reads_every_row_once(version):
    m = build_manifest(version, ManifestConfig("none"))
    assert m.table.num_rows == version.metadata().num_rows
    assert pc.all(pc.equal(m.table["repeat"], 1)).as_py() and m.info.class_weights is None


def test_weighted_carries_the_training_weights_and_changes_no_row(version):
    m = build_manifest(version, ManifestConfig("weighted"))
    train = dataset_stats(version).splits["train"].findings
    assert m.info.class_weights == {f: ClassWeight(train[f].w_pos, train[f].w_neg) for f in FINDINGS}
    for f, w in m.info.class_weights.items():
        assert w.w_pos * train[f].freq_pos == pytest.approx(w.w_neg * train[f].freq_neg, abs=1e-12)
    assert pc.all(pc.equal(m.table["repeat"], 1)).as_py() and untouched(version, m.table)


@pytest.mark.parametrize("mode", ["over", "under"])
def test_binary_resampling_is_exactly_one_to_one(version, mode):
    m = build_manifest(version, ManifestConfig("resample", target="Pneumonia", mode=mode, seed=3))
    pos, neg = draws(m.table, "Pneumonia")
    assert pos == neg > 0
    assert m.info.train_prevalence["after"]["Pneumonia"] == 0.5
    assert untouched(version, m.table)
    if mode == "under":
        assert m.info.reuse.max_repeat == 1 and m.info.reuse.rows_dropped > 0
    else:
        assert m.info.reuse.max_repeat > 1 and m.info.reuse.rows_dropped == 0


def test_the_multi_label_floor_is_reached_and_the_reuse_is_reported(version):
    m = build_manifest(version, ManifestConfig("resample", floor=0.06, seed=1))
    after = m.info.train_prevalence["after"]
    assert all(share >= 0.06 for share in after.values()), after
    train = m.table.filter(pc.equal(m.table["split"], "train"))
    repeat = train["repeat"].to_numpy()
    labels = np.column_stack([train[c].to_numpy(zero_copy_only=False) for c in FINDING_COLUMNS])
    assert np.allclose((repeat @ labels) / repeat.sum(), [after[f] for f in FINDINGS])
    reuse = m.info.reuse
    most = train.filter(pc.equal(train["image_id"], reuse.most_repeated_image))["repeat"][0].as_py()
    assert most == reuse.max_repeat == repeat.max() > 1
    assert untouched(version, m.table)


def test_no_patient_is_in_two_splits(version):
    table = build_manifest(version, ManifestConfig("resample", floor=0.05)).table
    seen: dict[int, str] = {}
    for patient, split in zip(table["patient_id"].to_pylist(), table["split"].to_pylist(), strict=True):
        assert seen.setdefault(patient, split) == split


def test_same_inputs_and_seed_give_byte_identical_manifests(version, tmp_path):
    config = ManifestConfig("resample", floor=0.05, seed=7)
    write_manifest(build_manifest(version, config), str(tmp_path / "a"))
    write_manifest(build_manifest(version, config), str(tmp_path / "b"))
    for name in ("manifest.parquet", "manifest.json", "charts/balance.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    back = read_manifest(str(tmp_path / "a"))
    assert back.digest == back.info.digest and back.table.num_rows > 0


def test_the_digest_changes_with_any_input(version, tmp_path):
    base = build_manifest(version, ManifestConfig("resample", target="Pneumonia", seed=0)).digest
    variants = [
        ManifestConfig("resample", target="Pneumonia", seed=1),
        ManifestConfig("resample", target="Pneumonia", mode="under", seed=0),
        ManifestConfig("resample", target="Effusion", seed=0),
        ManifestConfig("resample", seed=0),
        ManifestConfig("weighted"),
        ManifestConfig("none"),
    ]
    digests = {build_manifest(version, c).digest for c in variants}
    assert base not in digests and len(digests) == len(variants)
    # the same settings on a dataset with one image fewer
    src = tmp_path / "src"
    shutil.copytree(Path(version.info["source"]["root"]), src)
    next(src.rglob("*.png")).unlink()
    smaller = open_version(ingest(str(src), str(tmp_path / "ds"), IngestOptions(sizes=(32,))).path)
    assert build_manifest(smaller, ManifestConfig("resample", target="Pneumonia", seed=0)).digest != base
    assert build_manifest(version, ManifestConfig("resample", target="Pneumonia", seed=0)).digest == base


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "smote"}, "strategy must be"),
        ({"strategy": "weighted", "target": "Pneumonia"}, "only applies to strategy 'resample'"),
        ({"strategy": "resample", "target": "Pneumonitis"}, "unknown finding"),
        ({"strategy": "resample", "floor": 0.7}, "floor must be"),
        ({"strategy": "resample", "target": "Mass", "mode": "sideways"}, "mode must be"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ManifestConfig(**kwargs)


def test_oversampling_reaches_the_floor_on_independent_labels_and_says_when_it_cannot():
    rng = np.random.default_rng(0)
    labels = (rng.random((2000, len(FINDINGS))) < np.linspace(0.002, 0.04, len(FINDINGS))).astype(np.int64)
    repeat = oversample_to_floor(labels, 0.05, rng)
    assert (((repeat @ labels) / repeat.sum()) >= 0.05).all() and repeat.min() == 1
    with pytest.raises(ValueError, match="choose a lower --floor"):
        oversample_to_floor(labels, 0.5, rng, max_rounds=50)
    three = np.zeros((6, len(FINDINGS)), dtype=np.int64)  # three findings, one per row: no floor above 1/3
    three[0, 0] = three[1, 1] = three[2, 2] = 1
    for floor in (0.34, 0.45, 0.49, 0.5):  # the repeats grew past int64 (OverflowError) before they were bounded
        with pytest.raises(ValueError, match="choose a lower --floor"):
            oversample_to_floor(three, floor, rng)


def test_a_finding_without_training_positives_is_reported_and_the_others_reach_the_floor(tmp_path):
    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=120, size=64, seed=0))
    small = open_version(ingest(str(tmp_path / "src"), str(tmp_path / "ds"), IngestOptions(sizes=(32,))).path)
    m = build_manifest(small, ManifestConfig("resample", floor=0.05))
    unreachable = m.info.floor_unreachable
    assert "Hernia" in unreachable
    after = m.info.train_prevalence["after"]
    assert all(after[f] >= 0.05 for f in FINDINGS if f not in unreachable)
    assert all(after[f] == 0.0 for f in unreachable)


def test_a_folder_holding_another_manifest_is_refused_unless_overwrite_and_the_same_one_is_unchanged(version, tmp_path):
    out = str(tmp_path / "m")
    plain, weighted = (
        build_manifest(version, ManifestConfig("none")),
        build_manifest(version, ManifestConfig("weighted")),
    )
    assert write_manifest(plain, out) is True
    written = (tmp_path / "m" / "manifest.json").stat().st_mtime_ns
    assert write_manifest(plain, out) is False  # the same manifest: unchanged, not rewritten
    assert (tmp_path / "m" / "manifest.json").stat().st_mtime_ns == written
    with pytest.raises(ManifestExistsError, match=f"already holds manifest {plain.digest} .*--overwrite"):
        write_manifest(weighted, out)
    assert read_manifest(out).digest == plain.digest
    assert write_manifest(weighted, out, overwrite=True) is True
    assert read_manifest(out).digest == weighted.digest


def test_balancing_that_leaves_findings_without_a_positive_is_warned_about(tmp_path):
    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=160, size=64, seed=0))
    small = open_version(ingest(str(tmp_path / "src"), str(tmp_path / "ds"), IngestOptions(sizes=(32,))).path)
    under = build_manifest(small, ManifestConfig("resample", target="Pneumonia", mode="under"))
    [warning] = manifest_warnings(under.info)
    kept, dropped = under.info.splits["train"].rows, under.info.reuse.rows_dropped
    assert warning.startswith(f"undersampling keeps {kept} of {kept + dropped} training rows and leaves ")
    assert "without a positive" in warning and "--mode over" in warning
    floor = build_manifest(small, ManifestConfig("resample", floor=0.05))
    assert any(w.startswith("resampling skips ") and "Hernia" in w for w in manifest_warnings(floor.info))
    assert manifest_warnings(build_manifest(small, ManifestConfig("none")).info) == []
