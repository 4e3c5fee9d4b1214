"""Launching training as ``torchrun`` processes and reading back what they did: used by ``cxr train
--nproc N`` and by the Prefect train task, so both run the same command.

Before any of that, :func:`preflight` checks what ``cxr train`` was given (the manifest, the weights, the
output folder, a resume's settings) without loading torch's models or MLflow, and places a run without
``--output-dir`` in a new folder of its own: a user error is one line within seconds, not after the
model is built. A folder that holds a run is never written over unless ``--resume`` continues it or
``--overwrite`` replaces it.

A run is named by what decides its result: :func:`run_name` hashes the manifest digest, every
setting that changes the model (:func:`cxr.learn.config.result_settings`) and the number of
processes. The retrain flow names the run's folder so, and caches the run under that folder
(:func:`run_key`): a rerun with any other setting trains into a new folder, the same settings in the
same place reuse the finished run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING

from cxr import storage
from cxr.learn.config import (
    CHECKPOINT_FILE,
    MLFLOW_SCHEMES,
    RESULT_FILE,
    RUN_FILES,
    RUNS_ROOT,
    TrainConfig,
    result_settings,
)

if TYPE_CHECKING:
    from cxr.learn.result import TrainResult

STOP_WAIT_S = 30.0  # how long torchrun gets to stop its processes (they close their MLflow runs) on a signal


@dataclass(frozen=True)
class Checked:
    """What :func:`preflight` found: the config to train with (its output folder placed) and warnings."""

    config: TrainConfig
    warnings: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()  # files of an earlier run that --overwrite removed


def preflight(config: TrainConfig, nproc: int = 1, overwrite: bool = False) -> Checked:
    """Check what training was given before anything expensive starts; raise one clear error.

    The manifest must exist and have the shards asked for; ``--weights`` and ``--init-from`` must
    exist; the output folder must not hold a run unless ``resume`` (whose checkpoint must match the
    settings) or ``overwrite`` (its run files are removed, after every other check passed). Without
    an output folder the run gets a new one under ``runs/``.
    """
    from cxr.data.manifest import read_manifest_info

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if overwrite and config.resume:
        raise ValueError("--resume continues the run in --output-dir and --overwrite replaces it: give one of them")
    config.batches(nproc, cuda=False)  # a global batch the processes cannot share
    if not storage.exists(storage.join(config.manifest, "manifest.json")):
        raise FileNotFoundError(f"--manifest {config.manifest}: no manifest.json there (make one with `cxr manifest`)")
    info = read_manifest_info(config.manifest)
    sizes = info.shard_sizes
    shard = config.shard_size or max(sizes)
    if shard not in sizes:
        raise ValueError(
            f"--shard-size {config.shard_size}: the dataset has shards at {', '.join(map(str, sizes))} px only"
        )
    warnings = []
    if config.image_size and config.image_size > shard:
        warnings.append(
            f"--image-size {config.image_size} upsamples the {shard} px shards: the model sees no more detail than "
            f"{shard} px and trains slower (ingest with --size {config.image_size} for more detail)"
        )
    for flag, source in (("--weights", config.weights), ("--init-from", config.init_from)):
        if source and not source.startswith(MLFLOW_SCHEMES) and not storage.exists(source):
            raise FileNotFoundError(f"{flag} {source}: no such file")
    if config.init_from and config.init_from.startswith(MLFLOW_SCHEMES):
        from cxr.tracking.registry import resolve_run

        resolve_run(config.init_from)  # an unknown model name, version or alias fails here
    if config.output_dir is None:
        return Checked(replace(config, output_dir=new_run_folder(config.run_name)), tuple(warnings))
    held = [name for name in RUN_FILES if storage.exists(storage.join(config.output_dir, name))]
    if held and not (config.resume or overwrite):
        raise ValueError(
            f"--output-dir {config.output_dir} holds a training run ({', '.join(held)}): use --resume to continue "
            "it or --overwrite to replace it, or give another --output-dir"
        )
    if config.resume and CHECKPOINT_FILE in held:
        check_resume(config, info.digest, nproc)
    if overwrite:
        for name in held:
            storage.remove(storage.join(config.output_dir, name))
    return Checked(config, tuple(warnings), tuple(held) if overwrite else ())


def check_resume(config: TrainConfig, manifest_digest: str, nproc: int) -> None:
    """Refuse, before training starts, a resume whose settings differ from its checkpoint's."""
    import torch

    from cxr.learn.checkpoint import TrainingCheckpoint
    from cxr.learn.run import check_resumable

    url = storage.join(config.output_dir, CHECKPOINT_FILE)
    cuda = torch.cuda.is_available() if config.device == "auto" else config.device.startswith("cuda")
    check_resumable(TrainingCheckpoint.read(url), config, manifest_digest, nproc, config.batches(nproc, cuda)[0], url)


def new_run_folder(run_name: str | None, root: str = RUNS_ROOT) -> str:
    """``runs/<run name>``, or a new ``runs/train-<date>-<time>[-N]`` claimed by creating it (two runs started
    in the same second get two folders)."""
    if run_name:
        return storage.join(root, run_name)
    os.makedirs(root, exist_ok=True)
    stem = storage.join(root, time.strftime("train-%Y%m%d-%H%M%S"))
    for n in range(1, 1000):
        folder = stem if n == 1 else f"{stem}-{n}"
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        return folder
    raise RuntimeError(f"no free folder named {stem}-N under {root}")


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
    """Run training under torchrun, pass each line it prints to ``on_line``, and return its ``result.json``.

    Interrupted (Ctrl-C, SIGTERM), it stops torchrun and waits for its processes to stop (rank 0 closes its
    MLflow run as KILLED), then lets the interruption go on.
    """
    from cxr.learn.result import TrainResult

    if config.output_dir is None:
        raise ValueError("training under torchrun needs an --output-dir (every process must write to the same one)")
    storage.remove(storage.join(config.output_dir, RESULT_FILE))  # a result left by an earlier run is not this one's
    command = torchrun_command(config, nproc)
    on_line("running " + " ".join(command[1:]))
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                on_line(line.rstrip())
        proc.wait()
    except BaseException:
        stop(proc)
        if config.tracking:
            end_tracked_run(config.output_dir)
        note_resumable(config.output_dir)
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"training exited with {proc.returncode}: {' '.join(command[1:])}")
    return TrainResult.read(config.output_dir)


def stop(proc: subprocess.Popen, wait_s: float = STOP_WAIT_S) -> None:
    """SIGTERM to torchrun (it passes it on to its processes), SIGKILL if it has not ended after ``wait_s``;
    then SIGKILL to any of its processes still alive, so that none writes anything after this returns.

    What they print meanwhile (torchrun's own traceback of the signal, a rank's view of its peers going
    away) is read and dropped: after an interruption it is noise, and an unread pipe could block them.
    """
    import psutil

    try:
        processes = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        processes = []
    drain = threading.Thread(target=_read_to_end, args=(proc.stdout,), daemon=True)
    drain.start()
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _, alive = psutil.wait_procs(processes, timeout=wait_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=wait_s)
    drain.join(timeout=wait_s)  # every writer is gone: the pipe ends


def _read_to_end(stream: IO[str] | None) -> None:
    with contextlib.suppress(OSError, ValueError):
        while stream is not None and stream.read(65536):
            pass


def end_tracked_run(output_dir: str) -> None:
    """Once torchrun's processes are gone: the MLflow run they logged to ends as KILLED, whatever they
    managed (see :func:`cxr.tracking.mlflow_run.end_as_killed`)."""
    from cxr.learn.result import recorded_run_id

    run_id = recorded_run_id(output_dir)
    if run_id is not None:
        from cxr.tracking.mlflow_run import end_as_killed

        end_as_killed(run_id)


def note_resumable(output_dir: str) -> None:
    """On an interruption: say what is kept, for the one line ``cxr`` prints as it stops."""
    from cxr.signals import note

    if storage.exists(storage.join(output_dir, CHECKPOINT_FILE)):
        note(f"{output_dir}/{CHECKPOINT_FILE} is kept; `cxr train --resume` with the same flags continues it")
    else:
        note(f"no checkpoint yet in {output_dir}; `cxr train --resume` with the same flags starts it again")
