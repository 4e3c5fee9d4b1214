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
    made = run("synth", "--out", str(tmp_path / "nih"), "--n-images", "50", "--size", "32", "--workers", "1", "--json")
    assert made.returncode == 0, made.stderr
    result = json.loads(made.stdout)
    assert result["n_images"] == 50 and result["out"] == str(tmp_path / "nih")
    inspected = run("inspect", str(tmp_path / "nih"), "--json")
    assert inspected.returncode == 0, inspected.stderr
    summary = json.loads(inspected.stdout)
    assert summary["rows_accepted"] == summary["image_files"] == 50
    assert summary["positives"] == result["positives"]


def test_inspect_prints_a_table_for_people(tmp_path):
    assert run("synth", "--out", str(tmp_path), "--n-images", "20", "--size", "32").returncode == 0
    text = run("inspect", str(tmp_path)).stdout
    assert "Infiltration" in text and "No Finding" in text and "rows: 20 read, 20 accepted" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "/nonexistent/archive"], "does not exist"),
        (["synth", "--out", "x", "--n-images", "0"], "n_images must be >= 1"),
        (["synth", "--out", "x", "--edition", "2019"], "edition must be"),
    ],
)
def test_bad_input_gives_one_clear_line_and_exit_code_2(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_demo_runs_the_retrain_flow_then_reuses_what_it_made(tmp_path):
    args = ["demo", "--workdir", str(tmp_path / "demo"), "--n-images", "150", "--size", "64", "--shard-size", "32",
            "--epochs", "1", "--workers", "1"]  # fmt: skip
    result = run(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    digest = (tmp_path / "demo" / "datasets" / "LATEST").read_text().strip()
    assert "retrain flow (Prefect)" in result.stderr
    assert f"dataset {digest} (new, 150 images decoded)" in result.stdout
    assert "positives per split" in result.stdout and "test split (n = " in result.stdout
    assert "model cxr-demo version" in result.stdout and "lineage models:/cxr-demo@champion" in result.stdout
    assert "Prefect UI:" in result.stdout and "MLflow UI:" in result.stdout
    again = run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the synthetic archive" in again.stderr and f"dataset {digest} (unchanged, 0 images decoded)" in again.stdout


def test_ingest_prints_the_digest_and_the_accounting(tmp_path):
    assert run("synth", "--out", str(tmp_path / "src"), "--n-images", "30", "--size", "64").returncode == 0
    (tmp_path / "src" / "images_001" / "images" / "00000001_000.png").write_bytes(b"")
    result = run("ingest", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--size", "32", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (tmp_path / "ds" / "LATEST").read_text().strip()
    assert "unreadable_image" in result.stderr and "accepted" in result.stderr and "29" in result.stderr


def test_ingest_of_a_folder_without_an_archive_fails_clearly(tmp_path):
    result = run("ingest", "--source", str(tmp_path), "--out", str(tmp_path / "ds"))
    assert result.returncode == 2 and "no label table" in result.stderr and "Traceback" not in result.stderr


def test_stats_and_manifest_from_the_command_line(tmp_path):
    assert run("synth", "--out", str(tmp_path / "src"), "--n-images", "120", "--size", "64").returncode == 0
    assert run("ingest", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--size", "32", "--workers", "1").returncode == 0
    stats = run("stats", "--dataset", str(tmp_path / "ds"), "--json")
    assert stats.returncode == 0, stats.stderr
    parsed = json.loads(stats.stdout)
    assert sum(s["n"] for s in parsed["splits"].values()) == 120
    digest = (tmp_path / "ds" / "LATEST").read_text().strip()
    assert json.loads((tmp_path / "ds" / digest / "stats.json").read_text()) == parsed
    table = run("stats", "--dataset", str(tmp_path / "ds" / digest))
    assert "freq_pos" in table.stdout and "Infiltration" in table.stdout
    made = run("manifest", "--dataset", str(tmp_path / "ds"), "--strategy", "resample", "--target", "effusion",
               "--mode", "under", "--out", str(tmp_path / "m"))  # fmt: skip
    assert made.returncode == 0, made.stderr
    info = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert made.stdout.strip().splitlines()[-1] == info["digest"] and info["target"] == "Effusion"
    bad = run("manifest", "--dataset", str(tmp_path / "ds"), "--strategy", "weighted", "--target", "Effusion", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "only applies to strategy 'resample'" in bad.stderr
    missing = run("stats", "--dataset", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "neither a dataset version" in missing.stderr
