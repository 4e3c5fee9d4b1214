"""A training run's parts, built once: data, model, loss, optimizer, schedule and sampler, resumed from
``checkpoint.pt`` when asked. :mod:`cxr.learn.train` runs the epochs over them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from cxr import storage
from cxr.data.manifest import Manifest, read_manifest
from cxr.findings import FINDINGS
from cxr.learn.checkpoint import ModelBundle, TrainingCheckpoint
from cxr.learn.config import TrainConfig
from cxr.learn.distributed import DistInfo, barrier
from cxr.learn.loss import WeightedBCE
from cxr.learn.models import Classifier, build_model
from cxr.learn.shards import Rows, ShardStore, split_rows
from cxr.tracking.loggers import JsonlLogger, MlflowTrainLogger, NullLogger, TeeLogger, TrainLogger


@dataclass(frozen=True)
class Data:
    store: ShardStore
    train: Rows
    val: Rows
    image_size: int


@dataclass(frozen=True)
class Position:
    """Where a run stands: the epoch and the step within it to continue at, and the steps done in all."""

    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0


@dataclass
class Run:
    """The parts of one training run that every step touches."""

    config: TrainConfig
    info: DistInfo
    manifest: Manifest
    data: Data
    model: Classifier  # unwrapped: what is saved and evaluated
    train_model: nn.Module  # DDP and/or compiled around ``model``: what takes the steps
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: DistributedSampler
    logger: TrainLogger

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.sampler.num_samples / self.config.batch_size)

    def save_checkpoint(self, position: Position) -> None:
        """``checkpoint.pt`` by rank 0 (atomically); every rank waits for it."""
        if self.info.is_main:
            TrainingCheckpoint(
                self.model.state_dict(),
                self.optimizer.state_dict(),
                self.scheduler.state_dict(),
                position.epoch,
                position.step_in_epoch,
                position.step,
                dataclasses.asdict(self.config),
                list(FINDINGS),
                self.manifest.digest,
                self.manifest.info.dataset.digest,
            ).save(storage.join(self.config.output_dir, "checkpoint.pt"))
        barrier(self.info)


def load_data(manifest: Manifest, config: TrainConfig) -> Data:
    dataset = manifest.info.dataset
    size = config.shard_size or max(dataset.shard_sizes)
    if size not in dataset.shard_sizes:
        raise ValueError(f"the dataset has shards at {list(dataset.shard_sizes)} px, not {size}")
    train = split_rows(manifest.table, "train", expand_repeats=True)
    if len(train) == 0:
        raise ValueError("the manifest has no training rows")
    val = split_rows(manifest.table, "val", expand_repeats=False)
    return Data(ShardStore(dataset.path, dataset.digest, size), train, val, config.image_size or size)


def open_logger(config: TrainConfig, manifest: Manifest, info: DistInfo) -> TrainLogger:
    """Rank 0: metrics.jsonl, and MLflow unless tracking is off. Other ranks: nothing."""
    if not info.is_main:
        return NullLogger()
    jsonl = JsonlLogger(config.output_dir)
    return TeeLogger(MlflowTrainLogger(config, manifest), jsonl) if config.tracking else jsonl


def init_head_bias(model: Classifier, labels: np.ndarray, weights: tuple[list[float], list[float]] | None) -> None:
    """Start each output at the log-odds the loss will pull it to first: the share of positive draws,
    weighted as the loss weighs them. The model then spends no epochs learning the prevalence (with
    rare findings that plateau is long); with balancing weights the start is 0 (even odds).
    """
    p = labels.mean(axis=0).astype(np.float64)  # training draws, repeats included
    if weights:
        w_pos, w_neg = np.array(weights[0]), np.array(weights[1])
        weighted = w_pos * p + w_neg * (1 - p)
        p = np.divide(w_pos * p, weighted, out=p.copy(), where=weighted > 0)  # a finding with no positive: keep 0
    p = np.clip(p, 1e-4, 1 - 1e-4)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.from_numpy(np.log(p / (1 - p))).float())


def prepare_model(config: TrainConfig, manifest: Manifest, data: Data, info: DistInfo) -> Classifier:
    """The model on its device: from scratch (head bias at the prevalence), from --weights, or --init-from."""
    model = build_model(config.model, weights=config.weights)
    if config.init_from:
        bundle = ModelBundle.read(config.init_from)
        if bundle.model_name != config.model:
            raise ValueError(f"{config.init_from} holds a {bundle.model_name} model, not {config.model}")
        model.load_state_dict(bundle.model)
    else:
        init_head_bias(model, data.train.labels, manifest.info.loss_weights())
    model.to(info.device)
    if info.distributed and info.device.type == "cuda" and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if config.channels_last and info.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def resume(url: str, run: Run) -> Position:
    """Load ``checkpoint.pt`` into the run's model, optimizer and scheduler; where to continue."""
    state = TrainingCheckpoint.read(url)
    if state.manifest_digest != run.manifest.digest:
        raise ValueError(f"{url} was trained on manifest {state.manifest_digest}, not {run.manifest.digest}")
    run.model.load_state_dict(state.model)
    run.optimizer.load_state_dict(state.optimizer)
    run.scheduler.load_state_dict(state.scheduler)
    if run.info.is_main:
        print(f"resuming at epoch {state.epoch}, step {state.step_in_epoch} of {run.steps_per_epoch}", flush=True)
    return Position(state.epoch, state.step_in_epoch, state.step)


def build_run(config: TrainConfig, info: DistInfo, logger: TrainLogger | None) -> tuple[Run, Position]:
    """Data, model, loss, optimizer, schedule and sampler; resumed from checkpoint.pt with --resume."""
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(config.seed)
    manifest = read_manifest(config.manifest)
    data = load_data(manifest, config)
    logger = logger or open_logger(config, manifest, info)
    model = prepare_model(config, manifest, data, info)
    loss_fn = WeightedBCE(*(manifest.info.loss_weights() or (None, None))).to(info.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sampler = DistributedSampler(range(len(data.train)), info.world_size, info.rank, shuffle=True, seed=config.seed)
    steps = math.ceil(sampler.num_samples / config.batch_size) * config.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    run = Run(config, info, manifest, data, model, model, loss_fn, optimizer, scheduler, sampler, logger)
    ckpt = storage.join(config.output_dir, "checkpoint.pt")
    start = resume(ckpt, run) if config.resume and storage.exists(ckpt) else Position()
    if info.distributed:
        run.train_model = DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None
        )
    if config.compile:
        run.train_model = torch.compile(run.train_model)
    return run, start
