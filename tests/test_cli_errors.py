"""Every ``cxr`` command meets the same bad arguments a new user gives (a missing path, a file where a
folder belongs and a folder where a file belongs, a number out of range, an unknown name, an unknown
option) and answers each the same way: one ``error:`` line on stderr naming the bad value, exit code 2,
no traceback, and quickly: the check comes before any expensive work (decoding, model loading, servers).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cxr.data.ingest import ingest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize

CXR = [sys.executable, "-m", "cxr.cli"]
ARCHIVE = str(Path(__file__).parent / "fixtures" / "nih")  # a real archive
FILE = str(Path(ARCHIVE) / "README.md")  # a file that exists, not an image
IMAGE = str(next((Path(ARCHIVE) / "images").glob("*.png")))  # a real NIH PNG
QUICK_S = 30.0  # a check made before expensive work answers well within this, even on a busy machine


def cases(missing: str, folder: str, dataset: str) -> list[tuple[list[str], str]]:
    """(arguments, a text the error line must contain) for every command; ``missing`` does not exist,
    ``folder`` is an empty folder, ``dataset`` a real dataset root. Only one argument of each case is bad."""
    png = f"{missing}.png"
    return [
        # synth
        (["synth"], "--out"),
        (["synth", "--out", FILE], FILE),
        (["synth", "--out", folder, "--n-images", "0"], "n_images"),
        (["synth", "--out", folder, "--size", "0"], "size"),
        (["synth", "--out", folder, "--workers", "0"], "workers"),
        (["synth", "--out", folder, "--edition", "2019"], "edition"),
        (["synth", "--out", folder, "--n-images", "many"], "--n-images"),
        (["synth", "--out", folder, "--bogus"], "--bogus"),
        (["synth", "--out", folder, "--format", "png"], "format"),
        (["synth", "--out", folder, "--fainter-sex", "X"], "fainter_sex"),
        (["synth", "--out", folder, "--fainter-sex", "F", "--fainter-strength", "2"], "fainter_strength"),
        # inspect
        (["inspect", missing], missing),
        (["inspect", FILE], FILE),
        (["inspect", folder], folder),
        (["inspect", ARCHIVE, "--format", "bogus"], "bogus"),
        # ingest
        (["ingest", "--source", missing, "--out", f"{folder}/out"], missing),
        (["ingest", "--source", FILE, "--out", f"{folder}/out"], FILE),
        (["ingest", "--source", ARCHIVE, "--out", FILE], FILE),
        (["ingest", "--source", folder, "--out", f"{folder}/out", "--size", "0"], "size"),
        (["ingest", "--source", folder, "--out", f"{folder}/out", "--workers", "0"], "workers"),
        (["ingest", "--source", folder, "--out", f"{folder}/out", "--test-share", "1.5"], "test"),
        (["ingest", "--source", folder, "--out", f"{folder}/out", "--worker-memory", "lots"], "lots"),
        (["ingest", "--source", f"{dataset}-tables-only", "--out", f"{folder}/out"], "no image here"),
        (["ingest", "--source", f"{dataset}-broken.zip", "--out", f"{folder}/out"], "not a readable zip"),
        (["ingest", "--source", ARCHIVE, "--out", f"{folder}/out", "--uncertain", "maybe"], "maybe"),
        (["ingest", "--source", ARCHIVE, "--out", f"{folder}/out", "--image-memory", "900MiB"], "--worker-memory"),
        (["ingest", "--source", ARCHIVE, "--out", f"{folder}/out", "--format", "dicom"], "CXR_PATIENT_SALT"),
        # stats
        (["stats", "--dataset", missing], missing),
        (["stats", "--dataset", FILE], FILE),
        (["stats", "--dataset", folder], folder),
        # manifest
        (["manifest", "--dataset", missing, "--strategy", "weighted", "--out", f"{folder}/m"], missing),
        (["manifest", "--dataset", FILE, "--strategy", "weighted", "--out", f"{folder}/m"], FILE),
        (["manifest", "--dataset", dataset, "--strategy", "bogus", "--out", f"{folder}/m"], "bogus"),
        (
            ["manifest", "--dataset", dataset, "--dataset", missing, "--strategy", "none", "--out", f"{folder}/m"],
            missing,
        ),
        (
            ["manifest", "--dataset", dataset, "--dataset", dataset, "--strategy", "none", "--out", f"{folder}/m"],
            "twice",
        ),
        (
            ["manifest", "--dataset", dataset, "--strategy", "resample", "--floor", "0.5", "--out", f"{folder}/m"],
            "floor",
        ),
        (
            ["manifest", "--dataset", dataset, "--strategy", "resample", "--target", "Flu", "--out", f"{folder}/m"],
            "Flu",
        ),
        # gc
        (["gc", missing], missing),
        (["gc", FILE], FILE),
        (["gc", dataset, "--keep", "-1"], "keep"),
        # train, evaluate, predict, lineage: the cases that load torch or MLflow are few (each costs seconds);
        # tests/test_train_cli.py and tests/test_predict.py have more
        # train
        (["train"], "--manifest"),
        (["train", "--manifest", missing], missing),
        (["train", "--manifest", FILE], FILE),  # e.g. DIR/manifest.parquet: NotADirectoryError was a traceback
        (["train", "--manifest", folder, "--model", "bogus"], "bogus"),
        (["train", "--manifest", folder, "--nproc", "0"], "nproc"),
        # evaluate
        (["evaluate", "--model", f"{missing}.pt", "--dataset", dataset], missing),
        (["evaluate", "--model", folder, "--dataset", dataset], folder),
        (["evaluate", "--model", FILE, "--dataset", missing], missing),
        (["evaluate", "--model", FILE, "--dataset", dataset, "--threshold-rule", "bogus"], "bogus"),
        (["evaluate", "--model", FILE, "--dataset", dataset, "--device", "bogus"], "bogus"),
        # report
        (["report", f"{missing}.pt", "--dataset", dataset, "--out", folder], missing),
        (["report", FILE, "--dataset", missing, "--out", folder], missing),
        (["report", FILE, "--dataset", dataset, "--out", FILE], FILE),
        (["report", FILE, "--dataset", dataset, "--out", folder, "--device", "bogus"], "bogus"),
        # predict
        (["predict", png, "--model", FILE], png),
        (["predict", FILE, "--model", FILE], FILE),
        (["predict", IMAGE, "--model", folder], folder),
        (["predict", IMAGE, "--model", FILE, "--device", "bogus"], "bogus"),
        (["predict", IMAGE, "--model", "models:/nope@champion"], "nope"),
        (["predict", IMAGE, "--model", FILE], "cannot be loaded as a model bundle"),  # a file, not a bundle
        # lineage
        (["lineage", f"{missing}.pt"], missing),
        # demo, study, deploy (each costs Prefect's import: a few cases; their settings are the flows' own configs,
        # refused above through the commands that build them)
        (["demo", "--workdir", FILE], FILE),
        (["study", "--workdir", folder, "--source", missing], missing),
        (["deploy", "--source", folder, "--workdir", folder, "--cron", "every night"], "every night"),
        # stack
        (["stack", "up", "--service", "nope"], "nope"),
        (["stack", "up", "--dir", FILE], FILE),
        (["stack", "status", "--dir", FILE], FILE),
        (["stack", "bogus"], "bogus"),
        (["bogus"], "bogus"),
    ]


def _run(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    process = subprocess.Popen(
        [*CXR, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=QUICK_S)
    except subprocess.TimeoutExpired:  # it went on to the expensive work: killed with all it started
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        stdout, stderr = "", f"still running after {QUICK_S:.0f} s"
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr), time.perf_counter() - start


def test_every_command_answers_bad_arguments_with_one_line_and_exit_code_2(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    work = tmp_path / "cwd"  # relative defaults (runs/, .cxr/) land here, not in the repository
    work.mkdir()
    dataset = tmp_path / "dataset"
    synthesize(SynthConfig(out=str(tmp_path / "source"), n_images=40, size=64, seed=0, workers=1))
    ingest(str(tmp_path / "source"), str(dataset), IngestOptions(sizes=(64,)))
    (tmp_path / "dataset-tables-only").mkdir()  # a label table, and no image anywhere
    shutil.copy(tmp_path / "source" / "Data_Entry_2017_v2020.csv", tmp_path / "dataset-tables-only")
    (tmp_path / "dataset-broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    table = cases(str(tmp_path / "missing"), str(folder), str(dataset))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: _run(case[0], work), table))
    wrong = []
    for (args, expected), (done, seconds) in zip(table, results, strict=True):
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        problems = [
            f"exit {done.returncode}" if done.returncode != 2 else "",
            f"{len(lines)} lines on stderr" if len(lines) != 1 else "",
            "no 'error:' line" if not lines or not lines[-1].startswith("error:") else "",
            f"does not name {expected!r}" if expected not in done.stderr else "",
            "a traceback" if "Traceback" in done.stderr else "",
            f"took {seconds:.0f} s" if seconds >= QUICK_S else "",
            "wrote to stdout" if done.stdout.strip() else "",
        ]
        problems = [p for p in problems if p]
        if problems:
            wrong.append(f"cxr {' '.join(args)}: {', '.join(problems)}\n    {done.stderr.strip()[-300:]}")
    assert not wrong, f"{len(wrong)} of {len(table)} cases:\n" + "\n".join(wrong)
    assert not any(folder.iterdir()), "a refused command wrote into the folder it was given"


COMMANDS = ["synth", "inspect", "ingest", "stats", "manifest", "gc", "evaluate", "report", "predict", "lineage", "demo"]
COMMANDS += ["study"]


def test_help_shows_flags_as_flags_and_a_flag_given_a_value_is_one_error_line(tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        helps = list(pool.map(lambda c: _run([*c.split(), "--help"], tmp_path)[0], [*COMMANDS, "stack status"]))
    assert all(h.returncode == 0 for h in helps)
    assert not [c for c, h in zip(COMMANDS, helps, strict=False) if "<bool>" in h.stdout]
    assert "--json" in helps[1].stdout and "--apply" in helps[COMMANDS.index("gc")].stdout
    done, _ = _run(["inspect", str(tmp_path), "--json", "true"], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "true" in done.stderr and "Traceback" not in done.stderr
