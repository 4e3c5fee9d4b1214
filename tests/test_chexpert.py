"""The CheXpert / MIMIC-CXR-JPG label family: uncertainty policies by hand, missing labels kept missing, a
synthetic CheXpert-layout source through ingest, stats and a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cxr.data.adapters import detect_format, read_source
from cxr.data.finding_map import finding_map, mapping_text
from cxr.data.ingest import ingest
from cxr.data.label_policy import LabelPolicy
from cxr.data.manifest import ManifestConfig, build_manifest
from cxr.data.plan import IngestOptions
from cxr.data.quarantine import Reason
from cxr.data.stats import dataset_stats
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version
from cxr.findings import FINDING_COLUMNS, FINDINGS

OBSERVATIONS = [label for label, _ in finding_map("chexpert").labels]
HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding," + ",".join(OBSERVATIONS)
UNLABELLED = ("Infiltration", "Mass", "Nodule", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")


def line(path: str, values: dict[str, str], no_finding: str = "", sex: str = "Female", age: str = "40") -> str:
    cells = [values.get(label, "") for label in OBSERVATIONS]
    return ",".join([f"CheXpert-v1.0-small/{path}", sex, age, "Frontal", "PA", no_finding, *cells])


# Row a: Cardiomegaly 1.0, Edema -1.0, Pleural Effusion 0.0, the others blank.
# Row b: No Finding 1.0, Pneumonia -1.0, the others blank (a No Finding row: blanks are negative).
# Row c: Atelectasis -1.0, Pneumothorax 1.0, Lung Opacity 1.0 (not one of the 14), the others blank.
ROWS = [
    line(
        "train/patient00001/study1/view1_frontal.jpg",
        {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0"},
    ),
    line("train/patient00002/study1/view1_frontal.jpg", {"Pneumonia": "-1.0"}, no_finding="1.0"),
    line(
        "train/patient00002/study2/view1_frontal.jpg",
        {"Atelectasis": "-1.0", "Pneumothorax": "1.0", "Lung Opacity": "1"},
    ),
]
# (uncertain, blank) -> per row, the labels of the 7 findings CheXpert labels, in the order of SEVEN:
# 1 true, 0 false, . missing. Hand-computed from the rows above.
SEVEN = ("Cardiomegaly", "Edema", "Effusion", "Atelectasis", "Pneumonia", "Pneumothorax", "Consolidation")
EXPECTED = {
    ("ignore", "ignore"): ("1.0....", "0000.00", ".....1."),
    ("ones", "ignore"): ("110....", "0000100", "...1.1."),
    ("zeros", "ignore"): ("100....", "0000000", "...0.1."),
    ("ignore", "zeros"): ("1.00000", "0000.00", "000.010"),
    ("ones", "zeros"): ("1100000", "0000100", "0001010"),
    ("zeros", "zeros"): ("1000000", "0000000", "0000010"),
}
_VALUE = {"1": True, "0": False, ".": None}


def write_source(root: Path, rows: list[str], valid: list[str] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    if valid:
        (root / "valid.csv").write_text("\n".join([HEADER, *valid]) + "\n")
    (root / "train").mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize(("uncertain", "blank"), sorted(EXPECTED))
def test_every_policy_gives_the_hand_computed_labels(tmp_path, uncertain, blank):
    source = read_source(str(write_source(tmp_path, ROWS)), LabelPolicy(uncertain, blank))
    rows = source.labels.rows.to_pylist()
    assert [r["image_id"] for r in rows] == [r.split(",")[0].split("/", 1)[1] for r in ROWS]
    for row, expected in zip(rows, EXPECTED[(uncertain, blank)], strict=True):
        assert [row[f.lower()] for f in SEVEN] == [_VALUE[c] for c in expected]
        assert all(row[f.lower()] is None for f in UNLABELLED)  # never labelled: missing under every policy
        assert row["finding_labels"] == [f for f in FINDINGS if row[f.lower()]]
        assert row["source_format"] == "chexpert"
    assert [(r["patient_id"], r["follow_up"], r["sex"], r["view"]) for r in rows] == [
        (1, 1, "F", "PA"),
        (2, 1, "F", "PA"),
        (2, 2, "F", "PA"),
    ]


def test_bad_rows_are_quarantined_with_their_reasons(tmp_path):
    bad = [
        line("train/patient00003/study1/view1_frontal.jpg", {"Edema": "2.0"}),
        line("../outside/patient00004/study1/view1_frontal.jpg", {}),
        line("train/patient00005/study1/view1_frontal.jpg", {"Edema": "1.0"}, no_finding="1.0"),
        line("train/nobody/study1/view1_frontal.jpg", {}),
        line("train/patient00006/study1/view1_frontal.jpg", {}, age="old"),
        ROWS[0],
    ]
    source = read_source(str(write_source(tmp_path, [ROWS[0], *bad])), LabelPolicy())
    reasons = [(q.source_uri.rsplit("#", 1)[1], q.reason) for q in source.labels.quarantine]
    assert reasons == [
        ("line=3", Reason.BAD_ROW),
        ("line=4", Reason.UNSAFE_PATH),
        ("line=5", Reason.BAD_ROW),
        ("line=6", Reason.BAD_ROW),
        ("line=7", Reason.BAD_ROW),
        ("line=8", Reason.DUPLICATE_IMAGE_ID),
    ]
    assert source.labels.rows.num_rows == 1 and source.labels.n_input_rows == 7


def test_the_mapping_table_names_what_chexpert_does_not_label():
    assert finding_map("chexpert").unlabelled == UNLABELLED
    assert finding_map("nih").unlabelled == ()
    text = mapping_text("chexpert")
    assert "Pleural Effusion            ->  Effusion" in text and "Support Devices             ->  (not used)" in text
    assert "unlabelled (missing, not negative): " + ", ".join(UNLABELLED) in text


def test_a_masked_label_changes_nothing_in_the_stats_weights_or_manifest(tmp_path):
    """Under U-Ignore, an uncertain label and a blank one are both missing: swapping them changes nothing."""
    images = [f"train/patient{p:05d}/study1/view1_frontal.jpg" for p in range(1, 41)]
    base = [
        line(p, {"Edema": "1.0" if i % 4 == 0 else "0.0", "Atelectasis": "1.0" if i % 3 == 0 else ""})
        for i, p in enumerate(images)
    ]
    changed = list(base)
    changed[1] = line(images[1], {"Edema": "-1.0", "Atelectasis": "-1.0"})  # was Edema 0.0: now missing
    changed[2] = line(images[2], {"Edema": "0.0", "Atelectasis": "-1.0"})  # Atelectasis blank -> uncertain
    results = []
    for name, rows in (("base", base), ("changed", changed)):
        root = synth_images(tmp_path / name, images)
        write_source(root, rows)
        version = open_version(ingest(str(root), str(tmp_path / f"{name}-ds"), IngestOptions(sizes=(64,))).path)
        results.append((dataset_stats(version), build_manifest(version, ManifestConfig("weighted"))))
    (s1, m1), (s2, m2) = results
    at1, at2 = s1.splits["train"].findings["Atelectasis"], s2.splits["train"].findings["Atelectasis"]
    assert (at1.n_pos, at1.n_neg, at1.w_pos, at1.w_neg) == (at2.n_pos, at2.n_neg, at2.w_pos, at2.w_neg)
    assert at1.n_missing == at2.n_missing == s1.splits["train"].n - at1.n_pos  # blank: missing, not negative
    assert m1.info.class_weights["Atelectasis"] == m2.info.class_weights["Atelectasis"]
    e1, e2 = s1.splits["train"].findings["Edema"], s2.splits["train"].findings["Edema"]
    assert e2.n_missing == e1.n_missing + (1 if split_of(tmp_path / "changed-ds", images[1]) == "train" else 0)


def split_of(dataset: Path, image_id: str) -> str:
    metadata = open_version(str(dataset)).metadata(columns=["image_id", "split"]).to_pylist()
    return next(r["split"] for r in metadata if r["image_id"] == image_id)


def synth_images(root: Path, images: list[str]) -> Path:
    """Small JPEGs at the given paths (the pixels do not matter here)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for image in images:
        path = root / image
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(path, format="JPEG")
    return root


def test_a_synthetic_chexpert_source_ingests_with_its_adapter_and_missing_labels(tmp_path):
    result = synthesize(SynthConfig(out=str(tmp_path / "cx"), n_images=60, size=64, seed=3, format="chexpert"))
    assert detect_format(result.out) == "chexpert"
    summary = ingest(result.out, str(tmp_path / "ds"), IngestOptions(sizes=(64,), label_policy=LabelPolicy("ones")))
    version = open_version(summary.path)
    assert summary.accounting.accepted == 60 and summary.accounting.quarantined == 0
    info = json.loads((Path(summary.path) / "dataset.json").read_text())
    assert info["source"]["adapter"] == {"name": "chexpert", "version": 1}
    assert info["source"]["label_policy"] == {"uncertain": "ones", "blank": "ignore"}
    assert info["limits"]["formats"] == ["jpeg", "png"]
    metadata = pq.read_table(Path(summary.path) / "metadata.parquet")
    assert set(metadata["source_format"].to_pylist()) == {"chexpert"}
    for finding, column in zip(FINDINGS, FINDING_COLUMNS, strict=True):
        assert (metadata[column].null_count == 60) == (finding in UNLABELLED)
    valid = (tmp_path / "cx" / "valid.csv").read_text().splitlines()[1:]
    test_ids = {r.split(",")[0].split("/", 1)[1] for r in valid}
    rows = metadata.select(["image_id", "split"]).to_pylist()
    assert {r["image_id"] for r in rows if r["split"] == "test"} == test_ids
    stats = dataset_stats(version)
    for name, split in stats.splits.items():
        for finding, s in split.findings.items():
            assert s.n_pos + s.n_neg + s.n_missing == split.n, (name, finding)
            labelled = s.n_pos + s.n_neg
            assert s.freq_pos == (s.n_pos / labelled if labelled else 0.0)
        assert split.sources == {"chexpert": split.n}
