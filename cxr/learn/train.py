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
import json
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
from cxr.learn.inference import autocast, predict_rows, to_device
from cxr.learn.metrics import mean_defined, per_finding_auroc, youden_threshold
from cxr.learn.models import set_backbone_trainable
from cxr.learn.result import EpochRecord, TrainResult
from cxr.learn.run import Data, Position, Run, build_run
from cxr.learn.shards import gather
from cxr.tracking.loggers import TrainLogger

LOG_EVERY = 10  # steps between train-loss metrics


@dataclass(frozen=True)
class EpochStats:
    mean_loss: float
    steps: int  # taken in this call
    images: int  # all ranks together
    seconds: float
    stopped: bool  # max_steps reached


@dataclass(frozen=True)
class ValScores:
    mean_auroc: float | None
    auroc: dict[str, float | None]
    probs: np.ndarray | None
    labels: np.ndarray | None


def train_one_epoch(run: Run, epoch: int, start: Position) -> EpochStats:
    """This rank's share of one epoch, from ``start.step_in_epoch`` (a resumed epoch) to its end or max_steps."""
    config, info, data = run.config, run.info, run.data
    run.train_model.train()
    run.sampler.set_epoch(epoch)
    positions = np.fromiter(iter(run.sampler), dtype=np.int64)
    # the sample at this rank's j-th place holds global place rank + j * world in the epoch's order
    global_places = info.rank + np.arange(len(positions)) * info.world_size
    params = epoch_parameters(config.augment_config(), run.sampler.total_size, config.seed, epoch)
    started, total, steps, step_count = time.perf_counter(), 0.0, 0, start.step
    for step in range(start.step_in_epoch, run.steps_per_epoch):
        take = slice(step * config.batch_size, (step + 1) * config.batch_size)
        images = to_device(gather(data.store, data.train, positions[take]), info)
        targets = torch.from_numpy(data.train.labels[positions[take]]).to(info.device, non_blocking=True)
        if config.augment:
            images = apply(images, torch.from_numpy(params[global_places[take]]), data.image_size)
        else:
            images = resize(images, data.image_size)
        if config.channels_last and info.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(info, config.amp):
            logits = run.train_model(images)
        loss = run.loss_fn(logits, targets)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        total, steps, step_count = total + float(loss.detach()), steps + 1, step_count + 1
        if config.checkpoint_every and step_count % config.checkpoint_every == 0 and step + 1 < run.steps_per_epoch:
            run.save_checkpoint(Position(epoch, step + 1, step_count))
        if info.is_main and step_count % LOG_EVERY == 0:
            run.logger.log_metrics(
                {"train_loss": float(loss.detach()), "lr": run.scheduler.get_last_lr()[0]}, step_count
            )
        if config.max_steps and step_count >= config.max_steps:
            break
    stopped = bool(config.max_steps) and step_count >= config.max_steps
    images = steps * config.batch_size * info.world_size
    return EpochStats(total / max(steps, 1), steps, images, time.perf_counter() - started, stopped)


def evaluate(model: nn.Module, data: Data, info: DistInfo, config: TrainConfig) -> ValScores:
    """Validation AUROC per finding and their mean (findings with one class in val left out)."""
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


def main(config: TrainConfig, logger: TrainLogger | None = None) -> TrainResult:
    info = init_distributed(config.device)
    try:
        run, start = build_run(config, info, logger)
        if info.is_main:
            run.logger.log_params(
                {
                    **dataclasses.asdict(config),
                    "world_size": info.world_size,
                    "manifest_digest": run.manifest.digest,
                    "dataset_digest": run.manifest.info.dataset.digest,
                    "strategy": run.manifest.info.strategy,
                }
            )
        history, position = [], start
        for epoch in range(start.epoch, config.epochs):
            set_backbone_trainable(run.model, epoch >= config.freeze_epochs)
            stats = train_one_epoch(run, epoch, position)
            position = Position(epoch + 1, 0, position.step + stats.steps)
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
                print(json.dumps(dataclasses.asdict(record)), flush=True)
            run.save_checkpoint(position)
            if stats.stopped:
                break
        return finish(run, history, position.step)
    finally:
        cleanup(info)


def finish(run: Run, history: list[EpochRecord], steps: int) -> TrainResult:
    """Final validation, thresholds and ``model.pt``; the logger tracks the model; ``result.json``."""
    config, info = run.config, run.info
    fingerprints = rank_fingerprints(run.model, info)
    if info.is_main and len(set(fingerprints)) > 1:
        print(f"warning: the ranks' weights differ: {fingerprints}", file=sys.stderr, flush=True)
    final = evaluate(run.model, run.data, info, config)
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
        run.manifest.info.dataset.digest,
        run.manifest.info.strategy,
        dataclasses.asdict(config),
        final.auroc,
        final.mean_auroc,
        info.world_size,
        fingerprints,
        steps,
    )
    model_url = storage.join(config.output_dir, "model.pt")
    tracked = None
    if info.is_main:
        bundle.save(model_url)
        final_metrics = {
            "final_val_mean_auroc": final.mean_auroc,
            **{f"final_val_auroc_{f}": v for f, v in final.auroc.items()},
        }
        run.logger.log_metrics({k: v for k, v in final_metrics.items() if v is not None}, steps)
        tracked = run.logger.log_model(run.model, bundle, model_url)
        run.logger.close()
    barrier(info)
    result = TrainResult(tuple(history), final.mean_auroc, final.auroc, steps, model_url, tuple(fingerprints), tracked)
    if info.is_main:
        result.write(config.output_dir)
    return result


def cli(argv: list[str] | None = None) -> int:
    result = main(TrainConfig.from_args(argv))
    if result.tracked is not None and result.tracked.registration is not None:
        r = result.tracked.registration
        print(f"model {r.name} version {r.version}: {r.verdict} ({'; '.join(r.reasons)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
