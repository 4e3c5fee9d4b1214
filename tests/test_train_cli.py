"""`cxr train` and `cxr lineage` as a user meets them: real `python -m cxr.cli` processes, a real MLflow store.

Interruptions (Ctrl-C to the process group, SIGTERM to `cxr` alone), output folders that are never written
over, one-line errors before any model is built, and a lineage from every model reference `cxr train` prints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from cxr.data.ingest import ingest
from cxr.data.manifest import ManifestConfig, build_manifest, write_manifest
from cxr.data.plan import IngestOptions
from cxr.data.synth import SynthConfig, synthesize
from cxr.data.version import open_version
from tests.terminal import as_at_a_terminal

TINY = ["--model", "small", "--batch-size", "8", "--seed", "0"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A 32 px dataset of 120 images and its manifest (``m``), with a local MLflow store beside them."""
    root = tmp_path_factory.mktemp("train-cli")
    synthesize(SynthConfig(out=str(root / "src"), n_images=120, size=64, seed=0, workers=1))
    version = open_version(ingest(str(root / "src"), str(root / "ds"), IngestOptions(sizes=(32,))).path)
    write_manifest(build_manifest(version, ManifestConfig("none")), str(root / "m"))
    (root / "elsewhere").mkdir()
    return root


def env(root: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": tracking_uri(root)}


def tracking_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def cxr(root: Path, *args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cxr.cli", *args]
    return subprocess.run(command, cwd=cwd or root, env=env(root), capture_output=True, text=True, timeout=timeout)


def mlflow_runs(root: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(root))
    experiment = client.get_experiment_by_name("cxr")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def start(root: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """`python -m cxr.cli train ...` in a session of its own (as a terminal would start it); its stderr file."""
    err = root / f"stderr-{time.monotonic_ns()}.txt"
    command = [sys.executable, "-m", "cxr.cli", "train", *args]
    with open(err, "w") as handle:
        proc = subprocess.Popen(
            command,
            cwd=root,
            env=env(root),
            stdout=subprocess.DEVNULL,
            stderr=handle,
            start_new_session=True,
            preexec_fn=as_at_a_terminal,
        )
    return proc, err


def watch_until(proc: subprocess.Popen, path: Path, timeout: float = 180) -> list[psutil.Process]:
    """Wait for ``path`` to appear while ``proc`` runs; every process it started meanwhile."""
    seen: dict[int, psutil.Process] = {}
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for child in parent.children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        if path.exists():
            break
        time.sleep(0.1)
    assert proc.poll() is None and path.exists(), f"training ended before {path.name} appeared"
    time.sleep(0.5)  # into the next steps
    for child in parent.children(recursive=True):
        seen.setdefault(child.pid, child)
    return list(seen.values())


def survivors(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return alive


def test_ctrl_c_kills_the_mlflow_run_and_resume_goes_on_in_it_and_refuses_another_schedule(root, reliability_record):
    out = root / "interrupted"
    flags = ["--manifest", "m", "--output-dir", str(out), *TINY, "--epochs", "40", "--checkpoint-every", "1"]
    proc, err = start(root, *flags)
    started = watch_until(proc, out / "checkpoint.pt")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert proc.wait(timeout=60) == 130
    lines = err.read_text().strip().splitlines()
    assert lines[-1].startswith("interrupted by SIGINT: ") and "checkpoint.pt is kept" in lines[-1], lines[-3:]
    assert "Traceback" not in err.read_text()
    assert survivors(started) == []
    assert not (out / "model.pt").exists()
    [run] = [r for r in mlflow_runs(root) if r.data.tags.get("cxr.manifest_uri", "").endswith("m")]
    assert run.info.status == "KILLED"

    other = cxr(root, "train", *flags, "--resume", "--epochs", "39")  # another schedule
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert other.stderr.startswith("error: cannot resume") and "--epochs 40 -> 39" in other.stderr

    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    resumed = cxr(root, "train", *flags, "--resume", "--max-steps", str(step + 1))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"MLflow run {run.info.run_id} (resumed)" in resumed.stdout
    assert json.loads((out / "result.json").read_text())["tracked"]["run_id"] == run.info.run_id
    [again] = [r for r in mlflow_runs(root) if r.data.tags.get("cxr.manifest_uri", "").endswith("m")]
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"  # no second run
    reliability_record.record(
        "interruptions",
        "`cxr train` stopped by Ctrl-C mid-training",
        "exit 130, one line naming the kept checkpoint; MLflow run KILLED; a resume with another --epochs refused "
        "in one line; --resume continues the same MLflow run to FINISHED",
    )


def test_sigterm_to_cxr_alone_stops_its_torchrun_processes_and_kills_the_mlflow_run(root, reliability_record):
    out = root / "terminated"
    flags = ["--manifest", "m", "--output-dir", str(out), *TINY, "--epochs", "40", "--experiment", "ddp"]
    proc, err = start(root, *flags, "--nproc", "2", "--checkpoint-every", "1")
    started = watch_until(proc, out / "checkpoint.pt")
    assert len(started) >= 3, [p.cmdline() for p in started]  # torchrun and its two training processes
    proc.send_signal(signal.SIGTERM)  # to `cxr` only: its children must be stopped by it
    assert proc.wait(timeout=90) == 143
    assert err.read_text().strip().splitlines()[-1].startswith("interrupted by SIGTERM: ")
    assert survivors(started) == []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(root))
    [run] = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert run.info.status == "KILLED"
    reliability_record.record(
        "interruptions",
        "`cxr train --nproc 2`: SIGTERM to `cxr` alone (torchrun and its 2 ranks get nothing from outside)",
        "exit 143 with one line; torchrun and both ranks stopped by `cxr`; MLflow run KILLED; checkpoint kept",
    )


def test_plain_trains_get_folders_of_their_own_and_a_run_folder_is_replaced_only_when_asked(root):
    work = root / "plain"
    work.mkdir()
    flags = ["train", "--manifest", str(root / "m"), *TINY, "--epochs", "1", "--max-steps", "1", "--no-tracking"]
    first, second = cxr(root, *flags, cwd=work), cxr(root, *flags, cwd=work)
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    folders = [
        next(line for line in r.stderr.splitlines() if line.startswith("training into ")) for r in (first, second)
    ]
    a, b = (work / line.removeprefix("training into ") for line in folders)
    assert a != b and a.parent == b.parent == work / "runs" and (a / "model.pt").exists() and (b / "model.pt").exists()
    model = (a / "model.pt").read_bytes()

    refused = cxr(root, *flags, "--output-dir", str(a), cwd=work)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert str(a) in refused.stderr and "--resume" in refused.stderr and "--overwrite" in refused.stderr
    assert (a / "model.pt").read_bytes() == model

    replaced = cxr(root, *flags, "--output-dir", str(a), "--overwrite", "--seed", "1", cwd=work)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    params = [json.loads(line)["params"] for line in (a / "metrics.jsonl").read_text().splitlines() if "params" in line]
    assert [p["seed"] for p in params] == [1]  # the earlier run's lines are gone, not mixed in


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--model", "bogus"], "'bogus'"),
        (["--manifest", "no-such-manifest"], "no-such-manifest"),
        (["--model", "resnet50", "--weights", "no-such.pth"], "no-such.pth"),
        (["--init-from", "no-such/model.pt"], "no-such/model.pt"),
    ],
)
def test_a_bad_value_is_one_line_naming_it_before_training_starts(root, flags, named):
    args = ["--manifest", "m", "--output-dir", str(root / "never"), "--model", "small", "--nproc", "2"]
    result = cxr(root, "train", *args, *flags)  # the last --model / --manifest given wins
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert named in result.stderr and "running" not in result.stderr  # refused before torchrun started
    assert not (root / "never").exists()


@pytest.fixture(scope="module")
def tracked(root) -> dict:
    """One tracked run, trained with relative paths from the module folder, on its own manifest copy."""
    version = open_version(str(root / "ds"))
    write_manifest(build_manifest(version, ManifestConfig("none")), str(root / "m-lineage"))
    flags = ["--manifest", "m-lineage", "--output-dir", "r1", *TINY, "--epochs", "1", "--max-steps", "2"]
    result = cxr(root, "train", *flags, "--image-size", "64")
    assert result.returncode == 0, result.stderr[-3000:]
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "result": json.loads((root / "r1/result.json").read_text()),
    }


def test_train_prints_its_mlflow_run_rounded_numbers_and_warns_of_upsampling(tracked):
    run_id = tracked["result"]["tracked"]["run_id"]
    assert f"MLflow run {run_id}" in tracked["stdout"]
    assert "warning: --image-size 64 upsamples the 32 px shards" in tracked["stderr"]
    [line] = [line for line in tracked["stderr"].splitlines() if line.startswith("val mean AUROC ")]
    assert len(line.split()[3].rstrip(";")) == 5, line  # 0.xyz


def test_lineage_reads_every_model_reference_train_prints_from_any_folder(root, tracked, monkeypatch):
    from cxr.learn.checkpoint import ModelBundle
    from cxr.tracking.lineage import format_chain, lineage

    run_id, model_uri = tracked["result"]["tracked"]["run_id"], tracked["result"]["tracked"]["model_uri"]
    assert model_uri.startswith("models:/m-")
    shown = cxr(root, "lineage", str(root / "r1" / "model.pt"), cwd=root / "elsewhere")
    assert shown.returncode == 0, shown.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(root))
    monkeypatch.chdir(root / "elsewhere")
    texts = [shown.stdout] + [format_chain(lineage(ref)) for ref in (str(root / "r1"), model_uri, f"runs:/{run_id}/m")]
    for text in texts:
        assert f"run       {run_id}  (FINISHED" in text
        assert f"at {root / 'm-lineage'}\n" in text and f"at {root / 'ds'}/" in text
        assert "source    unknown" not in text and "{" not in text, text
    assert ModelBundle.read(model_uri).tracking_run_id == run_id  # predict and evaluate read it so


def test_lineage_says_when_the_manifest_was_rewritten_after_training(root, tracked, monkeypatch):
    from cxr.tracking.lineage import format_chain, lineage

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(root))
    assert lineage(str(root / "r1")).manifest.matches_file is True
    version = open_version(str(root / "ds"))
    write_manifest(build_manifest(version, ManifestConfig("weighted")), str(root / "m-lineage"), overwrite=True)
    assert "rewritten after training" in format_chain(lineage(str(root / "r1")))
    after = cxr(root, "lineage", str(root / "r1" / "model.pt"), cwd=root / "elsewhere")
    assert after.returncode == 0, after.stderr
    assert "warning: the manifest.json at" in after.stdout and "rewritten after training" in after.stdout
