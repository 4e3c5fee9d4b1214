"""A DICOM source through ingest: every file accounted for with its reason, the pixels by the window rule,
patients as salted keys, and no identifying value anywhere in the dataset version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom import dcmread

from cxr.data.dicom_decode import SALT_ENV, patient_key
from cxr.data.ingest import ingest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version
from cxr.findings import FINDING_COLUMNS

SALT = "a-test-salt-of-some-length"
PACKAGED = Path(pydicom.__file__).parent / "data" / "test_files"  # read from disk: never downloaded
EXTRA = {  # files added beside the synthetic ones: name -> (pydicom's test file, the reason it gets)
    "other/report.dcm": ("test-SR.dcm", "not_an_image"),
    "other/plan.dcm": ("rtplan.dcm", "not_an_image"),
    "other/ecg.dcm": ("waveform_ecg.dcm", "not_an_image"),
    "other/colour.dcm": ("SC_rgb_small_odd.dcm", "colour_image"),
    "other/ybr.dcm": ("SC_ybr_full_422_uncompressed.dcm", "colour_image"),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = Path(
        synthesize(
            SynthConfig(out=str(tmp_path_factory.mktemp("dcm") / "src"), n_images=30, size=64, seed=5, format="dicom")
        ).out
    )
    for name, (packaged, _) in EXTRA.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGED / packaged, root / name)
    (root / "other" / "notes.dcm").write_text("not a DICOM file\n")
    # a row names a file that turns out to be a structured report: the row takes its reason
    named = sorted(root.glob("images/*/*.dcm"))[0]
    shutil.copyfile(PACKAGED / "test-SR.dcm", named)
    return root


@pytest.fixture(scope="module")
def version(source, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SALT_ENV, SALT)
        summary = ingest(str(source), str(tmp_path_factory.mktemp("out") / "ds"), IngestOptions(sizes=(64,)))
    return open_version(summary.path)


def test_every_file_and_row_is_accounted_for_with_its_reason(source, version):
    quarantine = {r["image_id"]: r["reason"] for r in version.quarantine().to_pylist()}
    assert {name: quarantine.get(name) for name in EXTRA} == {name: reason for name, (_, reason) in EXTRA.items()}
    assert quarantine["other/notes.dcm"] == "unreadable_image"
    first = sorted(source.glob("images/*/*.dcm"))[0].relative_to(source).as_posix()
    assert quarantine[first] == "not_an_image"  # the row that names it, quarantined with the file's reason
    acc = version.accounting
    assert acc.label_rows == 30 and acc.inputs == 30 + len(EXTRA) + 1
    assert acc.accepted == 29 and acc.accepted + acc.quarantined == acc.inputs
    info = version.info["source"]
    assert info["adapter"] == {"name": "dicom", "version": 1} and version.info["limits"]["formats"] == ["dicom"]


def test_pixels_are_the_window_of_the_stored_values_and_the_header_fills_the_row(source, version):
    metadata = version.metadata().to_pylist()
    for row in metadata[:8]:
        ds = dcmread(source / row["image_id"])
        stored = ds.pixel_array.astype(np.float64)
        c, w = float(ds.WindowCenter), float(ds.WindowWidth)
        expected = np.floor(np.clip(((stored - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255) + 0.5)
        shard = version.load_shard(64, row["shard"])[row["shard_index"]]
        assert np.abs(shard.astype(int) - expected.astype(int)).max() <= 1
        assert row["patient_id"] == patient_key(str(ds.PatientID), SALT)
        assert (row["sex"], row["view"], row["age"]) == (ds.PatientSex, ds.ViewPosition, int(ds.PatientAge[:3]))
        assert (row["pixel_spacing_x"], row["pixel_spacing_y"]) == tuple(float(v) for v in ds.PixelSpacing)
        assert (row["orig_width"], row["orig_height"], row["source_format"]) == (64, 64, "dicom")
        assert all(row[c] is not None for c in FINDING_COLUMNS)  # Finding Labels: every finding labelled


def test_no_identifying_value_of_any_file_is_anywhere_in_the_version(source, version):
    values = set()
    for path in source.rglob("*.dcm"):
        try:
            ds = dcmread(path)
        except Exception:  # noqa: BLE001 - the unreadable one has none
            continue
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "InstitutionName"):
            value = str(ds.get(keyword) or "").strip()
            if len(value) >= 4:
                values.add(value)
    assert len(values) >= 30  # the synthetic files' names, IDs and birth dates, and the packaged files' own
    folder = Path(version.path)
    files = [p for p in folder.rglob("*") if p.is_file()]
    texts = [p.read_bytes() for p in files]
    for table in folder.glob("*.parquet"):  # compressed: compare the values too
        texts.append(json.dumps(pq.read_table(table).to_pylist(), default=str).encode())
    leaks = {v for v in values for t in texts if v.encode() in t}
    assert not leaks


def test_without_the_salt_a_dicom_source_is_refused_before_reading(source, tmp_path, monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    with pytest.raises(ValueError, match=f"{SALT_ENV} is not set"):
        ingest(str(source), str(tmp_path / "ds"), IngestOptions(sizes=(64,)))
    assert not (tmp_path / "ds").exists()


def test_labels_by_sop_instance_uid_with_a_column_per_finding(source, tmp_path, monkeypatch):
    root = tmp_path / "src"
    shutil.copytree(source / "images", root / "images")
    files = sorted(root.glob("images/*/*.dcm"))[1:6]
    uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    values = ["1", "0", "-1", "", "1.0"]
    lines = ["SOPInstanceUID,Effusion,Pneumonia"] + [f"{u},{v},0" for u, v in zip(uids, values, strict=True)]
    lines.append("1.2.3.4.5.6.7.8.9,1,1")  # a UID no file has
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv(SALT_ENV, SALT)
    version = open_version(ingest(str(root), str(tmp_path / "ds"), IngestOptions(sizes=(64,))).path)
    rows = {r["image_id"]: r for r in version.metadata().to_pylist()}
    got = [rows[f.relative_to(root).as_posix()]["effusion"] for f in files]
    assert got == [True, False, None, None, True]  # U-Ignore and a blank: missing
    assert all(r["pneumonia"] is False and r["mass"] is None for r in rows.values())  # no Mass column: missing
    reasons = [r["reason"] for r in version.quarantine().to_pylist()]
    assert reasons.count("missing_image") == 1 and reasons.count("not_an_image") == 1  # the report among them
    assert reasons.count("unlabeled_image") == len(list(root.rglob("*.dcm"))) - 5 - 1
