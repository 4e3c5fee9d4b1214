"""The ``cxr`` command line as a user runs it: real processes, exit codes, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CXR = [sys.executable, "-m", "cxr.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CXR, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_synth_then_inspect_reports_the_archive(tmp_path):
    made = run("synth", "--out", str(tmp_path / "nih"), "--n-images", "50", "--size", "64", "--workers", "1", "--json")
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    assert result["n_images"] == 50 and result["out"] == str(tmp_path / "nih")
    inspected = run("inspect", str(tmp_path / "nih"), "--json")
    assert inspected.returncode == 0, inspected.stderr
    summary = json.loads(inspected.stdout)
    assert summary["rows_accepted"] == summary["image_files"] == 50
    assert summary["positives"] == result["positives"]


def test_inspect_prints_a_table_for_people(tmp_path):
    assert run("synth", "--out", str(tmp_path), "--n-images", "20", "--size", "64").returncode == 0
    text = run("inspect", str(tmp_path)).stdout
    assert "Infiltration" in text and "No Finding" in text and "rows: 20 read, 20 accepted" in text
    assert "None" not in text and "train_val_list.txt: " in text
    (tmp_path / "train_val_list.txt").unlink()
    (tmp_path / "test_list.txt").unlink()
    text = run("inspect", str(tmp_path)).stdout
    assert "train_val_list.txt: missing, test_list.txt: missing (splits are made by patient)" in text
    assert "None" not in text


FIXTURE_FILE = Path(__file__).parent / "fixtures" / "nih" / "README.md"
FIXTURE_IMAGE = next((FIXTURE_FILE.parent / "images").glob("*.png"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "/nonexistent/archive"], "does not exist"),
        (["synth", "--out", "x", "--n-images", "0"], "n_images must be >= 1"),
        (["synth", "--out", "x", "--edition", "2019"], "edition must be"),
        (["synth", "--out", "x", "--size", "32"], "size 32 px: ingest rejects images smaller than 64 px"),
        (["synth", "--out", "x", "--workers", "0"], "workers must be >= 1, got 0"),
        (
            ["predict", str(FIXTURE_IMAGE), "--model", "m.pt", "--device", "bogus"],
            "device must be auto, cpu, cuda or cuda:N",
        ),
        (["inspect", str(FIXTURE_FILE)], "is a file, where the archive's folder (or a .zip) was expected"),
        (["gc", "/nonexistent/datasets"], "datasets root '/nonexistent/datasets' does not exist"),
        (
            ["predict", str(FIXTURE_IMAGE), "--model", str(FIXTURE_FILE.parent)],
            "is a folder, where a file was expected",
        ),
    ],
)
def test_bad_input_gives_one_clear_line_and_exit_code_2(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_ingest_prints_the_digest_and_the_accounting(tmp_path):
    assert run("synth", "--out", str(tmp_path / "src"), "--n-images", "30", "--size", "64").returncode == 0
    (tmp_path / "src" / "images_001" / "images" / "00000001_000.png").write_bytes(b"")
    result = run(
        "ingest", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--size", "32", "--workers", "1"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (tmp_path / "ds" / "LATEST").read_text().strip()
    assert "unreadable_image" in result.stderr and "accepted" in result.stderr and "29" in result.stderr


def test_ingest_of_a_folder_without_an_archive_fails_clearly(tmp_path):
    (tmp_path / "src").mkdir()
    result = run("ingest", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "ds"))
    assert result.returncode == 2 and "no label table" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A synthetic archive of 120 images, ingested by the command line."""
    root = tmp_path_factory.mktemp("cli")
    assert run("synth", "--out", str(root / "src"), "--n-images", "120", "--size", "64").returncode == 0
    made = run("ingest", "--source", str(root / "src"), "--out", str(root / "ds"), "--size", "32", "--workers", "1")
    assert made.returncode == 0, made.stderr
    return root / "ds"


def test_stats_json_is_what_stats_json_holds(dataset):
    stats = run("stats", "--dataset", str(dataset), "--json")
    assert stats.returncode == 0, stats.stderr
    parsed = json.loads(stats.stdout)
    assert sum(s["n"] for s in parsed["splits"].values()) == 120
    digest = (dataset / "LATEST").read_text().strip()
    assert json.loads((dataset / digest / "stats.json").read_text()) == parsed


def test_stats_prints_a_table_per_split_for_people(dataset):
    digest = (dataset / "LATEST").read_text().strip()
    table = run("stats", "--dataset", str(dataset / digest))
    assert table.returncode == 0, table.stderr
    assert "freq_pos" in table.stdout and "Infiltration" in table.stdout and "train: " in table.stdout


def test_manifest_prints_its_digest_last_and_takes_a_finding_in_any_case(dataset, tmp_path):
    args = ["--strategy", "resample", "--target", "effusion", "--mode", "under", "--out", str(tmp_path / "m")]
    made = run("manifest", "--dataset", str(dataset), *args)
    assert made.returncode == 0, made.stderr
    info = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert made.stdout.strip().splitlines()[-1] == info["digest"] and info["target"] == "Effusion"
    kept = info["splits"]["train"]["rows"]
    assert f"warning: undersampling keeps {kept} of {kept + info['reuse']['rows_dropped']} training rows" in made.stderr


def test_a_target_without_resampling_is_refused_clearly(dataset, tmp_path):
    args = ["--strategy", "weighted", "--target", "Effusion", "--out", str(tmp_path / "x")]
    bad = run("manifest", "--dataset", str(dataset), *args)
    assert bad.returncode == 2 and "only applies to strategy 'resample'" in bad.stderr and "Traceback" not in bad.stderr


def test_stats_of_a_folder_without_a_dataset_fails_clearly(tmp_path):
    missing = run("stats", "--dataset", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "neither a dataset version" in missing.stderr


def test_the_demo_names_the_uis_of_local_stores_and_of_servers():
    from cxr.cli.pipeline import ui_hints

    mlflow_ui, prefect_ui = ui_hints("sqlite:////x/.cxr/mlflow.db", None)
    assert "mlflow ui --backend-store-uri sqlite:////x/.cxr/mlflow.db --host 127.0.0.1" in mlflow_ui
    assert "prefect server start --host 127.0.0.1" in prefect_ui
    assert ui_hints("http://127.0.0.1:5000", "http://127.0.0.1:4200/api") == (
        "http://127.0.0.1:5000",
        "http://127.0.0.1:4200",
    )


def test_train_help_lists_every_setting_and_the_launcher():
    result = run("train", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: cxr train" in result.stdout and "--nproc" in result.stdout and "--gate-max-drop" in result.stdout


def test_ingest_workers_must_be_at_least_one_and_are_checked_before_the_archive_is_read(dataset, tmp_path):
    args = ["--source", str(dataset.parent / "src"), "--out", str(tmp_path / "ds"), "--size", "32"]
    bad = run("ingest", *args, "--workers", "0")
    assert bad.returncode == 2 and "--workers must be >= 1" in bad.stderr and "got 0" in bad.stderr
    assert "label rows" not in bad.stderr and not (tmp_path / "ds").exists()


def test_ingest_refuses_another_source_into_a_root_unless_new_source_and_an_out_inside_the_source(tmp_path):
    from cxr.data.ingest import ingest
    from cxr.data.plan import IngestOptions
    from cxr.data.synth import SynthConfig, synthesize

    first, other, root = tmp_path / "first", tmp_path / "other", tmp_path / "ds"
    synthesize(SynthConfig(out=str(first), n_images=20, size=64, seed=4))
    synthesize(SynthConfig(out=str(other), n_images=20, size=64, seed=5))
    latest = ingest(str(first), str(root), IngestOptions(sizes=(32,))).digest
    args = ["ingest", "--source", str(other), "--out", str(root), "--size", "32", "--workers", "1"]
    refused = run(*args)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"holds versions of another source ({first}; LATEST {latest}), not of {other}" in refused.stderr
    assert "--new-source" in refused.stderr and (root / "LATEST").read_text().strip() == latest
    inside = run("ingest", "--source", str(other), "--out", str(other / "ds"), "--size", "32", "--workers", "1")
    assert inside.returncode == 2 and f"--out {other / 'ds'} is inside the source" in inside.stderr
    assert not (other / "ds").exists()
    moved = run(*args, "--new-source")
    assert moved.returncode == 0, moved.stderr
    assert (root / "LATEST").read_text().strip() == moved.stdout.strip() != latest


def test_manifest_into_a_folder_holding_another_is_refused_unless_overwrite(dataset, tmp_path):
    out = str(tmp_path / "m")
    first = run("manifest", "--dataset", str(dataset), "--strategy", "none", "--out", out)
    assert first.returncode == 0, first.stderr
    again = run("manifest", "--dataset", str(dataset), "--strategy", "none", "--out", out)
    digest = first.stdout.strip().splitlines()[-1]
    assert again.returncode == 0 and f"unchanged: {out} already holds manifest {digest}" in again.stderr
    other = run("manifest", "--dataset", str(dataset), "--strategy", "weighted", "--out", out)
    assert (
        other.returncode == 2 and f"already holds manifest {digest}" in other.stderr and "--overwrite" in other.stderr
    )
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["digest"] == digest


def test_stats_of_a_version_without_an_accepted_image_is_one_clear_line(tmp_path):
    from cxr.data.ingest import ingest
    from cxr.data.plan import IngestOptions
    from cxr.data.synth import SynthConfig, synthesize

    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=6, size=32))  # all bad_dimensions for ingest
    digest = ingest(str(tmp_path / "src"), str(tmp_path / "ds"), IngestOptions(sizes=(32,))).digest
    stats = run("stats", "--dataset", str(tmp_path / "ds"))
    assert stats.returncode == 2 and "Traceback" not in stats.stderr
    assert stats.stderr.strip().splitlines() == [
        f"error: dataset {digest} has no accepted image (all 6 inputs are quarantined): nothing to "
        "count; see its quarantine.parquet (reasons: bad_dimensions 6)"
    ]
