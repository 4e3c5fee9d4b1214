"""Launching training as ``torchrun`` processes and reading back what they did: used by ``cxr train
--nproc N`` and by the Prefect train task, so both run the same command.

A run is named by what decides its result: :func:`run_name` hashes the manifest digest, every
setting that changes the model (:func:`cxr.learn.config.result_settings`) and the number of
processes. The retrain flow names the run's folder so, and caches the run under that folder
(:func:`run_key`): a rerun with any other setting trains into a new folder, the same settings in the
same place reuse the finished run.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace

from cxr import storage
from cxr.learn.config import TrainConfig, result_settings
from cxr.learn.result import RESULT_FILE, TrainResult


def torchrun_command(config: TrainConfig, nproc: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m cxr.learn.train <flags>``."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*launcher, "-m", "cxr.learn.train", *config.to_args()]


def run_name(config: TrainConfig, manifest_digest: str, nproc: int) -> str:
    """``<manifest digest>-<model>-<hash of the result settings and nproc>``: a run's folder and cache key."""
    settings = {**result_settings(config), "nproc": nproc}
    text = json.dumps(settings, sort_keys=True, default=str)
    return f"{manifest_digest}-{config.model}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def in_runs_folder(config: TrainConfig, runs_root: str, manifest_digest: str, nproc: int) -> TrainConfig:
    """``config`` with its output folder set to ``runs_root/<run name>``."""
    return replace(config, output_dir=storage.join(runs_root, run_name(config, manifest_digest, nproc)))


def run_key(config: TrainConfig, manifest_digest: str, nproc: int) -> str:
    """A placed run's identity for caching: its name and where its folder is (another workdir is another run).

    Raises ``ValueError`` for a config whose output folder is not named by its settings.
    """
    name = run_name(config, manifest_digest, nproc)
    if posixpath.basename(config.output_dir.rstrip("/")) != name:
        raise ValueError(f"{config.output_dir} is not named by its settings ({name}): place it with in_runs_folder")
    return f"{name}-{hashlib.sha256(config.output_dir.encode()).hexdigest()[:12]}"


def launch(config: TrainConfig, nproc: int, on_line: Callable[[str], None] = print) -> TrainResult:
    """Run training under torchrun, pass each line it prints to ``on_line``, and return its ``result.json``."""
    storage.remove(storage.join(config.output_dir, RESULT_FILE))  # a result left by an earlier run is not this one's
    command = torchrun_command(config, nproc)
    on_line("running " + " ".join(command[1:]))
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                on_line(line.rstrip())
    if proc.returncode != 0:
        raise RuntimeError(f"training exited with {proc.returncode}: {' '.join(command[1:])}")
    return TrainResult.read(config.output_dir)
