"""Train a 14-finding classifier on a manifest, in one process or under torchrun (DDP).

    python -m cxr.learn.train --manifest runs/m1 --output-dir runs/t1 --model small --epochs 3
    torchrun --standalone --nproc-per-node 2 -m cxr.learn.train --manifest runs/m1 --output-dir runs/t1
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m cxr.learn.train --manifest s3://bucket/manifests/m1 --output-dir s3://bucket/runs/t1

Shaped after torchvision's reference script: :func:`main` reads top to bottom and shows the epoch
loop; :func:`train_one_epoch` and :func:`evaluate` are separate and return what they did. Settings
and their help are :class:`cxr.learn.config.TrainConfig`; what the loop reports goes to a
:class:`cxr.tracking.loggers.TrainLogger` (MLflow is one, behind that interface). At the end rank 0
writes ``model.pt`` and ``result.json`` (a :class:`cxr.learn.result.TrainResult`) into the output folder.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cxr import storage
from cxr.findings import FINDINGS
from cxr.learn.augment import apply, epoch_parameters, resize
from cxr.learn.checkpoint import ModelBundle
from cxr.learn.config import TrainConfig
from cxr.learn.distributed import DistInfo, all_gather_rows, barrier, broadcast_buffers, cleanup, init_distributed
from cxr.learn.evaluate import Predictions
from cxr.learn.inference import autocast, predict_rows, to_float
from cxr.learn.launch import note_resumable
from cxr.learn.loader import Prefetcher
from cxr.learn.metrics import mean_defined, per_finding_auroc, youden_threshold
from cxr.learn.result import EpochRecord, TrainResult
from cxr.learn.run import Data, Position, Run, build_run
from cxr.signals import held_back, stopping
from cxr.tracking.loggers import TrainLogger

LOG_EVERY = 10  # steps between train-loss metrics; the loss is read from the device only then


@dataclass(frozen=True)
class EpochStats:
    mean_loss: float
    steps: int  # taken in this call
    end_step: int  # the step within the epoch it stopped before (steps_per_epoch: the epoch is done)
    images: int  # all ranks together
    seconds: float
    stopped: bool  # max_steps reached


@dataclass(frozen=True)
class ValScores:
    mean_auroc: float | None
    auroc: dict[str, float | None]
    probs: np.ndarray | None
    labels: np.ndarray | None


def epoch_plan(run: Run, epoch: int, first_step: int, last_step: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's batches of one epoch, steps ``first_step`` to ``last_step``: row positions and global places."""
    run.sampler.set_epoch(epoch)
    positions = np.fromiter(iter(run.sampler), dtype=np.int64)
    # the sample at this rank's j-th place holds global place rank + j * world in the epoch's order
    places = run.info.rank + np.arange(len(positions)) * run.info.world_size
    b = run.batch_size
    return [(positions[s * b : (s + 1) * b], places[s * b : (s + 1) * b]) for s in range(first_step, last_step)]


def train_one_epoch(run: Run, epoch: int, start: Position) -> EpochStats:
    """This rank's share of one epoch, from ``start.step_in_epoch`` (a resumed epoch) to its end or max_steps."""
    config, info, data = run.config, run.info, run.data
    last = run.steps_per_epoch
    if config.max_steps:
        last = min(last, start.step_in_epoch + max(config.max_steps - start.step, 0))
    params = torch.from_numpy(epoch_parameters(config.augment_config(), run.sampler.total_size, config.seed, epoch))
    run.train_model.train()
    started, step_count = time.perf_counter(), start.step
    total = torch.zeros((), device=info.device)
    with Prefetcher(data.store, data.train, epoch_plan(run, epoch, start.step_in_epoch, last), info.device) as batches:
        for step, batch in enumerate(batches, start=start.step_in_epoch):
            images = resize(to_float(batch.images), data.image_size)  # the one resize path (eval and predict too)
            if config.augment:
                images = apply(images, params[batch.places], data.image_size)
            if config.channels_last and info.device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(info, config.amp):
                logits = run.train_model(images)
            loss = run.loss_fn(logits, batch.targets)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            total += loss.detach()
            step_count += 1
            if config.checkpoint_every and step_count % config.checkpoint_every == 0 and step + 1 < run.steps_per_epoch:
                run.save_checkpoint(Position(epoch, step + 1, step_count))
            if info.is_main and step_count % LOG_EVERY == 0:
                run.logger.log_metrics({"train_loss": loss.item(), "lr": run.scheduler.get_last_lr()[0]}, step_count)
    steps = step_count - start.step
    stopped = bool(config.max_steps) and step_count >= config.max_steps
    seconds = time.perf_counter() - started
    return EpochStats(total.item() / max(steps, 1), steps, last, steps * run.global_batch, seconds, stopped)


def evaluate(model: nn.Module, data: Data, info: DistInfo, config: TrainConfig) -> ValScores:
    """Validation AUROC per finding and their mean (findings with one class in val left out), on every rank."""
    if len(data.val) == 0:
        return ValScores(None, {}, None, None)
    probs, labels = predict_rows(model, data.store, data.val, data.image_size, info, config.amp, config.channels_last)
    per = per_finding_auroc(labels, probs)
    return ValScores(mean_defined(list(per.values())), per, probs, labels)


def rank_fingerprints(model: nn.Module, info: DistInfo) -> list[str]:
    """Each rank's weights reduced to two float64 numbers (a sum and a fixed random projection), as text.

    Bitwise-equal weights give equal fingerprints; any difference shows with near certainty.
    """
    flat = torch.cat(
        [t.detach().reshape(-1).double().cpu() for t in model.state_dict().values() if t.is_floating_point()]
    )
    projection = torch.rand(flat.numel(), generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
    local = torch.stack([flat.sum(), flat @ projection]).to(info.device)
    gathered = all_gather_rows(local.unsqueeze(0), info).cpu().tolist()
    return [f"{a!r}/{b!r}" for a, b in gathered]


@dataclass(frozen=True)
class Trained:
    """What the ranks agree on when training ends; rank 0 tracks it after leaving the process group."""

    bundle: ModelBundle
    model_url: str
    history: tuple[EpochRecord, ...]
    final: ValScores
    resumed_at_step: int


def main(config: TrainConfig, logger: TrainLogger | None = None) -> TrainResult:
    """Train; ``logger`` replaces rank 0's default loggers (metrics.jsonl and MLflow).

    Stopped by an interruption (Ctrl-C, SIGTERM under :mod:`cxr.signals`) or an error, rank 0 closes its
    MLflow run as KILLED or FAILED before the exception goes on; what is on disk stays whole (every file
    is written atomically) and ``--resume`` continues from the last checkpoint.
    """
    if config.output_dir is None:
        if "RANK" in os.environ:
            raise ValueError("training under torchrun needs an --output-dir (every process must write to the same one)")
        from cxr.learn.launch import new_run_folder

        config = dataclasses.replace(config, output_dir=new_run_folder(config.run_name))
        print(f"training into {config.output_dir}", flush=True)
    info = init_distributed(config.device, config.dist_timeout_s)
    run: Run | None = None
    try:
        try:
            run, start = build_run(config, info, logger)
            trained = train_epochs(run, start)
        finally:
            cleanup(info)  # leave the process group: rank 0's tracking below may take long, no rank waits for it
        return track(run, trained)
    except BaseException as err:
        with held_back():  # a signal arriving now waits until the run is closed
            interrupted = isinstance(err, KeyboardInterrupt) or stopping()  # a peer may stop before our signal
            if run is not None and info.is_main:
                run.logger.close("KILLED" if interrupted else "FAILED")
            if interrupted:
                note_resumable(config.output_dir)
        raise


def train_epochs(run: Run, start: Position) -> Trained:
    """The epoch loop, from ``start`` to the last epoch or ``--max-steps``; ``model.pt`` at its end."""
    config, info = run.config, run.info
    if info.is_main:
        run.logger.log_params(run_params(run))
    history, position, val = [], start, None
    for epoch in range(start.epoch, config.epochs):
        run.set_backbone_trainable(epoch >= config.freeze_epochs)  # wraps for DDP what now trains
        stats = train_one_epoch(run, epoch, position)
        done = stats.end_step >= run.steps_per_epoch
        step = position.step + stats.steps
        position = Position(epoch + 1, 0, step) if done else Position(epoch, stats.end_step, step)
        broadcast_buffers(run.model, info)  # every rank evaluates and checkpoints the same model
        val = evaluate(run.model, run.data, info, config)
        record = EpochRecord(
            epoch,
            stats.mean_loss,
            val.mean_auroc,
            stats.images / max(stats.seconds, 1e-9),
            run.scheduler.get_last_lr()[0],
        )
        history.append(record)
        if info.is_main:
            per_finding = {f"val_auroc_{f}": v for f, v in val.auroc.items() if v is not None}
            run.logger.log_metrics({**dataclasses.asdict(record), **per_finding}, position.step)
            print(epoch_line(record, config.epochs), flush=True)
        run.save_checkpoint(position)
        if stats.stopped:
            break
    return finish_training(run, history, position, val or evaluate(run.model, run.data, info, config), start)


def epoch_line(record: EpochRecord, epochs: int) -> str:
    """One epoch as a line a person reads (metrics.jsonl and MLflow keep the full numbers)."""
    auroc = "-" if record.val_mean_auroc is None else f"{record.val_mean_auroc:.3f}"
    return (
        f"epoch {record.epoch + 1}/{epochs}: train loss {record.train_loss:.4f}, val mean AUROC {auroc}, "
        f"{record.images_per_s:.0f} images/s, lr {record.lr:.2e}"
    )


def run_params(run: Run) -> dict[str, object]:
    manifest = run.manifest
    return {
        **dataclasses.asdict(run.config),
        "world_size": run.info.world_size,
        "per_process_batch": run.batch_size,
        "global_batch": run.global_batch,
        "lr_scaled": run.config.scaled_lr(run.global_batch),
        "manifest_digest": manifest.digest,
        "dataset_digest": manifest.info.dataset_digest,
        "strategy": manifest.info.strategy,
    }


def finish_training(
    run: Run, history: list[EpochRecord], position: Position, final: ValScores, start: Position
) -> Trained:
    """Thresholds from the last validation (already on every rank) and ``model.pt`` by rank 0; all ranks wait."""
    config, info = run.config, run.info
    fingerprints = rank_fingerprints(run.model, info)
    if info.is_main and len(set(fingerprints)) > 1:
        print(f"warning: the ranks' weights differ: {fingerprints}", file=sys.stderr, flush=True)
    thresholds = [0.5] * len(FINDINGS)
    if final.probs is not None and final.labels is not None:
        thresholds = [youden_threshold(final.labels[:, i], final.probs[:, i]) for i in range(len(FINDINGS))]
    bundle = ModelBundle(
        run.model.state_dict(),
        config.model,
        run.data.image_size,
        list(FINDINGS),
        thresholds,
        "youden on val",
        run.manifest.digest,
        run.manifest.info.dataset_digest,
        run.manifest.info.strategy,
        dataclasses.asdict(config),
        final.auroc,
        final.mean_auroc,
        info.world_size,
        fingerprints,
        position.step,
        run.data.store.size,
        run.tracking_run_id,
        [f for f, known in zip(FINDINGS, (~np.isnan(run.data.train.labels)).any(axis=0), strict=True) if known],
    )
    model_url = storage.join(config.output_dir, "model.pt")
    if info.is_main:
        bundle.save(model_url)
    barrier(info)
    return Trained(bundle, model_url, tuple(history), final, start.step)


def track(run: Run, trained: Trained) -> TrainResult:
    """Rank 0, outside the process group: final metrics, the model to the logger (figures, registry), result.json."""
    final, tracked = trained.final, None
    if run.info.is_main:
        final_metrics = {"final_val_mean_auroc": final.mean_auroc}
        final_metrics.update({f"final_val_auroc_{f}": v for f, v in final.auroc.items()})
        run.logger.log_metrics({k: v for k, v in final_metrics.items() if v is not None}, trained.bundle.steps)
        validation = None
        if final.probs is not None and final.labels is not None:
            validation = Predictions(run.data.val, final.probs, final.labels)
        tracked = run.logger.log_model(run.model, trained.bundle, trained.model_url, validation)
        run.logger.close()
    result = TrainResult(
        trained.history,
        final.mean_auroc,
        final.auroc,
        trained.bundle.steps,
        trained.model_url,
        tuple(trained.bundle.rank_fingerprints),
        tracked,
        trained.resumed_at_step,
    )
    if run.info.is_main:
        result.write(run.config.output_dir)
    return result


def cli(argv: list[str] | None = None) -> int:
    """``python -m cxr.learn.train`` (what torchrun runs): SIGINT, SIGTERM and SIGHUP stop it as Ctrl-C does,
    so rank 0 closes its MLflow run as KILLED; exit code 128 + the signal's number."""
    from cxr.signals import Interrupted, stopping_on_signals

    with stopping_on_signals():
        try:
            result = main(TrainConfig.from_args(argv))
        except Interrupted as stopped:
            print(f"training stopped by {stopped.name}", file=sys.stderr, flush=True)
            return stopped.exit_code
    if result.tracked is not None and result.tracked.registration is not None:
        r = result.tracked.registration
        print(f"model {r.name} version {r.version}: {r.verdict} ({'; '.join(r.reasons)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
