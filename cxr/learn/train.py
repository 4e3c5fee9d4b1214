"""Train a 14-finding classifier on a manifest, in one process or under torchrun (DDP).

    python -m cxr.train --manifest runs/m1 --output-dir runs/t1 --model small --epochs 3
    torchrun --standalone --nproc-per-node 2 -m cxr.train --manifest runs/m1 --output-dir runs/t1
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m cxr.train --manifest s3://bucket/manifests/m1 --output-dir s3://bucket/runs/t1

Shaped after torchvision's reference script: ``get_args_parser()`` builds the parser from
:class:`TrainConfig`, ``main()`` reads top to bottom, ``train_one_epoch()`` and ``evaluate()`` are
separate. ``--batch-size`` is per process; the global batch is that times the world size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from cxr import checkpoint, storage
from cxr.augment import AugmentConfig, apply, epoch_parameters, resize
from cxr.distributed import DistInfo, all_gather_rows, barrier, broadcast_buffers, cleanup, init_distributed
from cxr.findings import FINDINGS
from cxr.loss import WeightedBCE
from cxr.manifest import Manifest, read_manifest
from cxr.metrics import mean_defined, per_finding_auroc, youden_threshold
from cxr.models import MODEL_NAMES, Classifier, build_model, set_backbone_trainable
from cxr.shards import Rows, ShardStore, gather, split_rows
from cxr.tracking import TeeLogger


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; the defaults explain themselves. Unknown keys are rejected."""

    manifest: str  # folder with manifest.parquet and manifest.json
    output_dir: str  # checkpoint.pt, model.pt, metrics.jsonl (local or s3://)
    model: str = "densenet121"  # densenet121 | resnet50 | efficientnet_b0 | small (CPU demos) | small-gn
    weights: str | None = None  # torchvision state-dict file for the backbone (transfer learning)
    init_from: str | None = None  # a model.pt from an earlier run: start from its weights
    freeze_epochs: int = 0  # epochs with the backbone frozen (only the head learns) after transfer
    epochs: int = 10
    batch_size: int = 32  # per process
    lr: float = 1e-3  # AdamW, cosine decay over all steps
    weight_decay: float = 1e-4
    shard_size: int | None = None  # which shards to read; default: the largest the dataset has
    image_size: int | None = None  # model input side; default: the shard size
    seed: int = 0  # model init, data order, augmentation
    augment: bool = True
    crop_scale_min: float = 0.75
    rotation_deg: float = 7.0
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False  # off: the heart sits on the left
    amp: str = "auto"  # bf16 autocast on GPU ("auto" or "bf16"), never on CPU; "off" disables
    channels_last: bool = True  # on GPU only
    compile: bool = False  # torch.compile the model (GPU runs)
    sync_bn: bool = True  # SyncBatchNorm across GPUs (CPU has none)
    checkpoint_every: int = 0  # also checkpoint every N steps (0: at each epoch's end only)
    resume: bool = False  # continue from output_dir/checkpoint.pt if it exists
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise resumes on CPU)
    max_steps: int = 0  # stop after this many steps in total (0: no limit); for smoke runs
    device: str = "auto"  # auto | cpu | cuda
    tracking: bool = True  # MLflow (MLFLOW_TRACKING_URI, else .cxr/mlflow.db); off: metrics.jsonl only
    experiment: str = "cxr"  # MLflow experiment
    run_name: str | None = None
    register: str | None = None  # register the model under this name as challenger, then gate champion
    gate_margin: float = 0.0  # champion needs mean val AUROC >= the champion's + this
    gate_max_drop: float = 0.02  # and no finding's val AUROC more than this below the champion's

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be auto, bf16 or off, got {self.amp!r}")
        if self.weights and self.init_from:
            raise ValueError("give --weights or --init-from, not both")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**values)

    def augment_config(self) -> AugmentConfig:
        return AugmentConfig(self.augment, self.crop_scale_min, self.rotation_deg, self.brightness, self.contrast, self.hflip)


def get_args_parser() -> argparse.ArgumentParser:
    """The command line, one flag per :class:`TrainConfig` field, each help text with its default."""
    parser = argparse.ArgumentParser(description="Train a chest X-ray classifier (DDP under torchrun).")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f"(default: {default})")
            continue
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        required = f.default is dataclasses.MISSING
        parser.add_argument(flag, type=kind, default=default, required=required, help=f"(default: {default})")
    return parser


class TrainLogger(Protocol):
    """What the loop reports to; MLflow is one implementation, a JSON-lines file another."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


class JsonlLogger:
    """Metrics as JSON lines in ``<output_dir>/metrics.jsonl`` (rewritten whole: works on S3 too)."""

    def __init__(self, output_dir: str) -> None:
        self.url = storage.join(output_dir, "metrics.jsonl")
        self.lines: list[str] = []
        if storage.exists(self.url):
            self.lines = storage.read_text(self.url).splitlines()

    def log_params(self, params: dict[str, Any]) -> None:
        self.lines.append(json.dumps({"params": params}, sort_keys=True))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.lines.append(json.dumps({"step": step, **metrics}, sort_keys=True))
        storage.write_text(self.url, "\n".join(self.lines) + "\n")

    def close(self) -> None:
        storage.write_text(self.url, "\n".join(self.lines) + "\n")


class NullLogger:
    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Data:
    store: ShardStore
    train: Rows
    val: Rows
    image_size: int


def load_data(manifest: Manifest, config: TrainConfig) -> Data:
    dataset = manifest.info["dataset"]
    sizes = dataset["shard_sizes"]
    size = config.shard_size or max(sizes)
    if size not in sizes:
        raise ValueError(f"the dataset has shards at {sizes} px, not {size}")
    store = ShardStore(storage.join(dataset["root"], dataset["digest"]), dataset["digest"], size)
    train = split_rows(manifest.table, "train", expand_repeats=True)
    val = split_rows(manifest.table, "val", expand_repeats=False)
    if len(train) == 0:
        raise ValueError("the manifest has no training rows")
    return Data(store, train, val, config.image_size or size)


def to_device(batch: np.ndarray, info: DistInfo) -> torch.Tensor:
    """uint8 [B, S, S] -> float [B, 1, S, S] in [0, 1] on the device (pinned, non-blocking on GPU)."""
    tensor = torch.from_numpy(batch).unsqueeze(1)
    if info.device.type == "cuda":
        tensor = tensor.pin_memory().to(info.device, non_blocking=True)
    return tensor.float().div_(255.0)


def autocast(config: TrainConfig, info: DistInfo):  # noqa: ANN201 - a context manager
    if info.device.type == "cuda" and config.amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_one_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: Data,
    sampler: DistributedSampler,
    epoch: int,
    start_step: int,
    config: TrainConfig,
    info: DistInfo,
    on_step: Callable[[int, float], None],
) -> float:
    """One pass over this rank's share of the training rows, from ``start_step`` (a resumed epoch)."""
    model.train()
    sampler.set_epoch(epoch)
    positions = np.fromiter(iter(sampler), dtype=np.int64)
    # the sample at this rank's j-th place holds global place rank + j * world in the epoch's order
    global_places = info.rank + np.arange(len(positions)) * info.world_size
    params = epoch_parameters(config.augment_config(), sampler.total_size, config.seed, epoch)
    steps = math.ceil(len(positions) / config.batch_size)
    total, count = 0.0, 0
    for step in range(start_step, steps):
        take = slice(step * config.batch_size, (step + 1) * config.batch_size)
        images = to_device(gather(data.store, data.train, positions[take]), info)
        targets = torch.from_numpy(data.train.labels[positions[take]]).to(info.device, non_blocking=True)
        if config.augment:
            images = apply(images, torch.from_numpy(params[global_places[take]]), data.image_size)
        else:
            images = resize(images, data.image_size)
        if config.channels_last and info.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(config, info):
            logits = model(images)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += float(loss.detach())
        count += 1
        on_step(step, float(loss.detach()))
    return total / max(count, 1)


@torch.no_grad()
def predict_rows(model: nn.Module, store: ShardStore, rows: Rows, image_size: int, info: DistInfo, batch_size: int = 64, config: TrainConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels for ``rows``, split over ranks and gathered back in row order."""
    model.eval()
    mine = np.arange(info.rank, len(rows), info.world_size)
    probs = []
    for start in range(0, len(mine), batch_size):
        batch = mine[start : start + batch_size]
        images = resize(to_device(gather(store, rows, batch), info), image_size)
        if config is not None and config.channels_last and info.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(config, info) if config is not None else nullcontext():
            probs.append(torch.sigmoid(model(images).float()))
    local = torch.cat(probs) if probs else torch.zeros((0, len(FINDINGS)), device=info.device)
    order = torch.from_numpy(mine).to(info.device)
    all_probs = all_gather_rows(local, info)
    all_order = all_gather_rows(order, info)
    result = torch.empty_like(all_probs)
    result[all_order] = all_probs
    return result.cpu().numpy(), rows.labels


def evaluate(model: nn.Module, data: Data, info: DistInfo, config: TrainConfig) -> dict[str, Any]:
    """Validation AUROC per finding and their mean (findings with one class in val left out)."""
    if len(data.val) == 0:
        return {"val_mean_auroc": None, "val_auroc": {}, "probs": None}
    probs, labels = predict_rows(model, data.store, data.val, data.image_size, info, config=config)
    per = per_finding_auroc(labels, probs)
    return {"val_mean_auroc": mean_defined(list(per.values())), "val_auroc": per, "probs": probs, "labels": labels}


def init_head_bias(model: Classifier, labels: np.ndarray, weights: dict[str, dict[str, float]] | None) -> None:
    """Start each output at the log-odds the loss will pull it to first: the share of positive draws,
    weighted as the loss weighs them. The model then spends no epochs learning the prevalence (with
    rare findings that plateau is long); with balancing weights the start is 0 (even odds).
    """
    p = labels.mean(axis=0).astype(np.float64)  # training draws, repeats included
    if weights:
        w_pos = np.array([weights[f]["w_pos"] for f in FINDINGS])
        w_neg = np.array([weights[f]["w_neg"] for f in FINDINGS])
        weighted = w_pos * p + w_neg * (1 - p)
        p = np.divide(w_pos * p, weighted, out=p.copy(), where=weighted > 0)  # a finding with no positive: keep 0
    p = np.clip(p, 1e-4, 1 - 1e-4)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.from_numpy(np.log(p / (1 - p))).float())


def lineage_tags(config: TrainConfig, manifest: Manifest) -> dict[str, str]:
    """What made the model: dataset, manifest, code, the Prefect flow run, the parent model."""
    dataset = manifest.info["dataset"]
    tags = {
        "cxr.dataset_digest": dataset["digest"],
        "cxr.dataset_root": dataset["root"],
        "cxr.manifest_digest": manifest.digest,
        "cxr.manifest_uri": config.manifest,
        "cxr.manifest_strategy": manifest.info["strategy"],
        "cxr.model_name": config.model,
    }
    flow_run = os.environ.get("CXR_FLOW_RUN_ID") or os.environ.get("PREFECT__FLOW_RUN_ID")
    if flow_run:
        tags["cxr.prefect_flow_run_id"] = flow_run
    if config.init_from:
        tags["cxr.parent_model"] = config.init_from
    if os.environ.get("CXR_MLFLOW_PARENT_RUN_ID"):  # a study's child run
        tags["mlflow.parentRunId"] = os.environ["CXR_MLFLOW_PARENT_RUN_ID"]
    return tags


def start_tracking(config: TrainConfig, manifest: Manifest) -> Any:
    """An MLflow run with lineage tags, inputs (dataset, manifest, stats) and their charts."""
    import hashlib

    from cxr.tracking import MlflowLogger

    tracker = MlflowLogger(config.experiment, config.run_name, lineage_tags(config, manifest))
    dataset = manifest.info["dataset"]
    version_path = storage.join(dataset["root"], dataset["digest"])
    tracker.log_input(f"dataset-{dataset['digest']}", dataset["digest"], version_path, "training")
    tracker.log_input(f"manifest-{manifest.digest}", manifest.digest, config.manifest, "training")
    for url, artifact_path in ((storage.join(version_path, "stats.json"), "stats"),
                               (storage.join(version_path, "charts", "prevalence.png"), "stats"),
                               (storage.join(version_path, "charts", "prevalence_log.png"), "stats"),
                               (storage.join(config.manifest, "charts", "balance.png"), "manifest"),
                               (storage.join(config.manifest, "manifest.json"), "manifest")):  # fmt: skip
        if storage.exists(url):
            data = storage.read_bytes(url)
            tracker.log_bytes(url.rsplit("/", 1)[-1], data, artifact_path)
            if url.endswith("stats.json"):
                tracker.log_input("stats", hashlib.sha256(data).hexdigest()[:16], url, "training")
    return tracker


def finish_tracking(tracker: Any, config: TrainConfig, manifest: Manifest, model: Classifier, bundle: dict[str, Any]) -> dict[str, Any]:
    """Validation curves and heatmaps, the model, and (with --register) the registry and its gate."""
    import tempfile

    from cxr.evaluate import evaluate_model
    from cxr.registry import log_model, register_and_gate

    out: dict[str, Any] = {"run_id": tracker.run_id}
    dataset = manifest.info["dataset"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            evaluate_model(storage.join(config.output_dir, "model.pt"), storage.join(dataset["root"], dataset["digest"]),
                           split="val", n_boot=100, out_dir=tmp, overlays=6)  # fmt: skip
            tracker.log_file(f"{tmp}/evaluation.json", "val")
            tracker.log_file(f"{tmp}/curves.png", "val")
            import glob

            for path in sorted(glob.glob(f"{tmp}/heatmaps/*.png")):
                tracker.log_file(path, "val/heatmaps")
        except ValueError as err:  # e.g. no val split: nothing to draw
            print(f"no validation figures: {err}", file=sys.stderr)
    holder: dict[str, Any] = {}
    if tracker._safe("log model", lambda: holder.update(model_uri=log_model(tracker, model, bundle))):
        out["mlflow_model_uri"] = holder["model_uri"]
        if config.register:
            def register() -> None:
                version, decision = register_and_gate(tracker.run_id, holder["model_uri"], config.register,
                                                      config.gate_margin, config.gate_max_drop, tracker.uri)  # fmt: skip
                holder.update(version=version, decision=decision)
            if tracker._safe("register", register):
                out.update(registered=config.register, version=holder["version"], promoted=holder["decision"].promoted,
                           gate_reasons=holder["decision"].reasons)  # fmt: skip
                print(json.dumps({"registered": config.register, "version": holder["version"],
                                  "promoted": holder["decision"].promoted, "reasons": holder["decision"].reasons}), flush=True)  # fmt: skip
    return out


def rank_fingerprints(model: nn.Module, info: DistInfo) -> list[str]:
    """Each rank's weights reduced to two float64 numbers (a sum and a fixed random projection), as text.

    Bitwise-equal weights give equal fingerprints; any difference shows with near certainty.
    """
    flat = torch.cat([t.detach().reshape(-1).double().cpu() for t in model.state_dict().values() if t.is_floating_point()])
    projection = torch.rand(flat.numel(), generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
    local = torch.stack([flat.sum(), flat @ projection]).to(info.device)
    gathered = all_gather_rows(local.unsqueeze(0), info).cpu().tolist()
    return [f"{a!r}/{b!r}" for a, b in gathered]


def _unwrap(model: nn.Module) -> Classifier:
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(inner, "_orig_mod", inner)


def main(config: TrainConfig, logger: TrainLogger | None = None) -> dict[str, Any]:
    info = init_distributed(config.device)
    try:
        return _train(config, info, logger)
    finally:
        cleanup(info)


def _train(config: TrainConfig, info: DistInfo, logger: TrainLogger | None) -> dict[str, Any]:
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)
    manifest = read_manifest(config.manifest)
    data = load_data(manifest, config)
    tracker = None
    if logger is None:
        logger = JsonlLogger(config.output_dir) if info.is_main else NullLogger()
        if info.is_main and config.tracking:
            tracker = start_tracking(config, manifest)
            logger = TeeLogger(tracker, logger)

    model = build_model(config.model, weights=config.weights)
    if config.init_from:
        bundle = checkpoint.load(config.init_from)
        if bundle.get("model_name") != config.model:
            raise ValueError(f"{config.init_from} holds a {bundle.get('model_name')} model, not {config.model}")
        model.load_state_dict(bundle["model"])
    else:
        init_head_bias(model, data.train.labels, manifest.info.get("class_weights"))
    model.to(info.device)
    if info.distributed and info.device.type == "cuda" and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if config.channels_last and info.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    weights = manifest.info.get("class_weights")
    loss_fn = WeightedBCE(
        [weights[f]["w_pos"] for f in FINDINGS] if weights else None,
        [weights[f]["w_neg"] for f in FINDINGS] if weights else None,
    ).to(info.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sampler = DistributedSampler(range(len(data.train)), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=config.seed)
    steps_per_epoch = math.ceil(sampler.num_samples / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)

    start_epoch, start_step, global_step = 0, 0, 0
    ckpt_url = storage.join(config.output_dir, "checkpoint.pt")
    if config.resume and checkpoint.exists(ckpt_url):
        state = checkpoint.load(ckpt_url)
        if state["manifest_digest"] != manifest.digest:
            raise ValueError(f"{ckpt_url} was trained on manifest {state['manifest_digest']}, not {manifest.digest}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["step"]
        if info.is_main:
            print(f"resuming at epoch {start_epoch}, step {start_step} of {steps_per_epoch}", flush=True)

    train_model: nn.Module = model
    if info.distributed:
        train_model = DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)
    if info.is_main:
        logger.log_params({**dataclasses.asdict(config), "world_size": info.world_size, "manifest_digest": manifest.digest,
                           "dataset_digest": manifest.info["dataset"]["digest"], "strategy": manifest.info["strategy"]})  # fmt: skip

    def save_checkpoint(epoch: int, step_in_epoch: int, step: int) -> None:
        if info.is_main:
            checkpoint.save(
                {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": None, "epoch": epoch, "step_in_epoch": step_in_epoch, "step": step,
                 "config": dataclasses.asdict(config), "label_names": list(FINDINGS), "manifest_digest": manifest.digest,
                 "dataset_digest": manifest.info["dataset"]["digest"]},
                ckpt_url,
            )  # fmt: skip
        barrier(info)

    history: list[dict[str, Any]] = []
    stop = False
    for epoch in range(start_epoch, config.epochs):
        set_backbone_trainable(_unwrap(model), epoch >= config.freeze_epochs)
        started, first = time.perf_counter(), (start_step if epoch == start_epoch else 0)
        seen = 0

        def on_step(step: int, loss: float, epoch: int = epoch) -> None:
            nonlocal global_step, seen, stop
            global_step += 1
            seen += config.batch_size * info.world_size
            if config.checkpoint_every and global_step % config.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                save_checkpoint(epoch, step + 1, global_step)
            if info.is_main and global_step % 10 == 0:
                logger.log_metrics({"train_loss": loss, "lr": scheduler.get_last_lr()[0]}, global_step)
            if config.max_steps and global_step >= config.max_steps:
                stop = True
                raise _StopTraining

        try:
            train_loss = train_one_epoch(train_model, loss_fn, optimizer, scheduler, data, sampler, epoch, first, config, info, on_step)
        except _StopTraining:
            train_loss = float("nan")
        seconds = time.perf_counter() - started
        broadcast_buffers(model, info)  # every rank evaluates and checkpoints the same model
        result = evaluate(model, data, info, config)
        row = {"epoch": epoch, "train_loss": train_loss, "val_mean_auroc": result["val_mean_auroc"],
               "images_per_s": seen / seconds if seconds > 0 else 0.0, "lr": scheduler.get_last_lr()[0]}  # fmt: skip
        history.append(row)
        if info.is_main:
            metrics = {k: v for k, v in row.items() if isinstance(v, float) and v == v}
            metrics.update({f"val_auroc_{f}": v for f, v in result["val_auroc"].items() if v is not None})
            logger.log_metrics(metrics, global_step)
            print(json.dumps(row), flush=True)
        save_checkpoint(epoch + 1, 0, global_step)
        if stop:
            break

    fingerprints = rank_fingerprints(_unwrap(model), info)
    if info.is_main and len(set(fingerprints)) > 1:
        print(f"warning: the ranks' weights differ: {fingerprints}", file=sys.stderr, flush=True)
    final = evaluate(model, data, info, config)
    thresholds = [0.5] * len(FINDINGS)
    if final["probs"] is not None:
        thresholds = [youden_threshold(final["labels"][:, i], final["probs"][:, i]) for i in range(len(FINDINGS))]
    bundle = {"model": _unwrap(model).state_dict(), "model_name": config.model, "image_size": data.image_size,
              "label_names": list(FINDINGS), "thresholds": thresholds, "threshold_rule": "youden on val",
              "manifest_digest": manifest.digest, "dataset_digest": manifest.info["dataset"]["digest"],
              "strategy": manifest.info["strategy"], "config": dataclasses.asdict(config),
              "val_auroc": {f: v for f, v in final["val_auroc"].items()}, "val_mean_auroc": final["val_mean_auroc"],
              "world_size": info.world_size, "rank_fingerprints": fingerprints, "steps": global_step}  # fmt: skip
    tracked: dict[str, Any] = {}
    if info.is_main:
        checkpoint.save(bundle, storage.join(config.output_dir, "model.pt"))
        final_metrics = {"final_val_mean_auroc": final["val_mean_auroc"]}
        final_metrics.update({f"final_val_auroc_{f}": v for f, v in final["val_auroc"].items()})
        logger.log_metrics({k: v for k, v in final_metrics.items() if v is not None}, global_step)
        if tracker is not None:
            tracked = finish_tracking(tracker, config, manifest, _unwrap(model), bundle)
        logger.close()
    barrier(info)
    return {"history": history, "val_mean_auroc": final["val_mean_auroc"], "val_auroc": final["val_auroc"],
            "steps": global_step, "model_url": storage.join(config.output_dir, "model.pt"), "rank_fingerprints": fingerprints,
            **tracked}  # fmt: skip


class _StopTraining(Exception):
    """max_steps reached inside an epoch."""


RESULT_PREFIX = "CXR_TRAIN_RESULT "


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    config = TrainConfig.from_dict(vars(args))
    result = main(config)
    if int(os.environ.get("RANK", "0")) == 0:
        # one machine-readable line for whoever launched us (the Prefect train task reads it)
        keys = ("model_url", "run_id", "mlflow_model_uri", "val_mean_auroc", "steps", "registered", "version", "promoted")
        print(RESULT_PREFIX + json.dumps({k: result.get(k) for k in keys}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
