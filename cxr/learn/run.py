"""A training run's parts, built once: data, model, loss, optimizer, schedule and sampler, resumed from
``checkpoint.pt`` when asked. :mod:`cxr.learn.train` runs the epochs over them.

- What trains is decided before the model is wrapped for DDP, and the wrapper is rebuilt when it
  changes (``--freeze-epochs``): DDP's reducer expects a gradient for every parameter it was given.
- Batches: ``--global-batch-size`` is shared equally by the processes (else ``--batch-size`` each);
  the learning rate is ``--lr`` scaled linearly from ``--lr-batch`` to the global batch, after a linear
  warmup of ``--warmup-epochs``, then a cosine decay to 0.
- A resume continues exactly where the checkpoint stands, or refuses: the settings that decide the
  model, the number of processes and the per-process batch must be the ones the checkpoint was made
  with; each rank's random generators are restored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from cxr import storage
from cxr.data.manifest import Manifest, ManifestInfo, read_manifest
from cxr.findings import FINDINGS
from cxr.learn.checkpoint import ModelBundle, TrainingCheckpoint
from cxr.learn.config import CHECKPOINT_FILE, TRACKING_FILE, TrainConfig, result_settings
from cxr.learn.distributed import DistInfo, all_gather_rows, barrier
from cxr.learn.loss import WeightedBCE
from cxr.learn.metrics import labelled
from cxr.learn.models import Classifier, build_model, set_backbone_trainable
from cxr.learn.result import recorded_run_id
from cxr.learn.shards import AnyShardStore, MixedShardStore, Rows, ShardStore, split_rows
from cxr.tracking.loggers import JsonlLogger, MlflowTrainLogger, NullLogger, TeeLogger, TrainLogger

# May differ on a resume: they change neither the model nor the order of the samples.
RESUMABLE_CHANGES = ("max_steps", "compile")


@dataclass(frozen=True)
class Data:
    store: AnyShardStore
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
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: DistributedSampler
    logger: TrainLogger
    batch_size: int  # per process
    global_batch: int
    train_model: nn.Module | None = None  # DDP and/or compiled around ``model``: what takes the steps
    backbone_trainable: bool | None = None
    tracking_run_id: str | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.sampler.num_samples / self.batch_size)

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze or unfreeze the backbone, and (re)wrap the model for what now trains."""
        if trainable == self.backbone_trainable and self.train_model is not None:
            return
        set_backbone_trainable(self.model, trainable)
        wrapped: nn.Module = self.model
        if self.info.distributed:
            device_ids = [self.info.local_rank] if self.info.device.type == "cuda" else None
            wrapped = DistributedDataParallel(self.model, device_ids=device_ids)
        if self.config.compile:
            wrapped = torch.compile(wrapped)
        self.train_model, self.backbone_trainable = wrapped, trainable

    def save_checkpoint(self, position: Position) -> None:
        """``checkpoint.pt`` by rank 0 (atomically), with every rank's random generators; all ranks wait for it."""
        rng = _gather_rng(torch.get_rng_state(), self.info)
        cuda_rng = _gather_rng(torch.cuda.get_rng_state(), self.info) if self.info.device.type == "cuda" else None
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
                world_size=self.info.world_size,
                batch_size=self.batch_size,
                rng_states=rng,
                cuda_rng_states=cuda_rng,
                tracking_run_id=self.tracking_run_id,
            ).save(storage.join(self.config.output_dir, CHECKPOINT_FILE))
        barrier(self.info)


def _gather_rng(state: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's generator state (uint8), in rank order."""
    rows = all_gather_rows(state.to(info.device).unsqueeze(0), info)
    return [row.cpu().clone() for row in rows]


def manifest_store(info: ManifestInfo, size: int) -> AnyShardStore:
    """The shards a manifest's rows name: of its version, or of each of a mixed manifest's versions."""
    if info.mixed:
        return MixedShardStore(((d.path, d.digest) for d in info.versions), size)
    return ShardStore(info.dataset.path, info.dataset.digest, size)


def load_data(manifest: Manifest, config: TrainConfig) -> Data:
    sizes = manifest.info.shard_sizes
    size = config.shard_size or max(sizes)
    if size not in sizes:
        raise ValueError(f"the dataset has shards at {list(sizes)} px, not {size}")
    train = split_rows(manifest.table, "train", expand_repeats=True)
    if len(train) == 0:
        raise ValueError("the manifest has no training rows")
    val = split_rows(manifest.table, "val", expand_repeats=False)
    return Data(manifest_store(manifest.info, size), train, val, config.image_size or size)


def open_logger(config: TrainConfig, manifest: Manifest, resume_run_id: str | None) -> TrainLogger:
    """Rank 0's loggers: metrics.jsonl, and MLflow unless tracking is off (the same MLflow run on a resume).

    The MLflow run's id goes into the run folder (``tracking.json``) as soon as the run exists, and is
    printed: a run interrupted before its first checkpoint still resumes in the same MLflow run.
    """
    jsonl = JsonlLogger(config.output_dir)
    if not config.tracking:
        return jsonl
    tracked = MlflowTrainLogger(config, manifest, resume_run_id)
    storage.write_text(
        storage.join(config.output_dir, TRACKING_FILE), json.dumps({"mlflow_run_id": tracked.run_id}) + "\n"
    )
    print(f"MLflow run {tracked.run_id}{' (resumed)' if resume_run_id else ''}", flush=True)
    return TeeLogger(tracked, jsonl)


def init_head_bias(model: Classifier, labels: np.ndarray, weights: tuple[list[float], list[float]] | None) -> None:
    """Start each output at the log-odds the loss will pull it to first: the share of positive draws,
    weighted as the loss weighs them. The model then spends no epochs learning the prevalence (with
    rare findings that plateau is long); with balancing weights the start is 0 (even odds). The share is
    taken over the draws where the finding is labelled; a finding no draw labels starts at even odds (before
    the weights).
    """
    rows = labelled(labels)
    count = rows.sum(axis=0)
    share = np.full(labels.shape[1], 0.5, dtype=np.float32)  # in float32 like the labels: NIH starts as before
    np.divide(np.where(rows, labels, 0).sum(axis=0), count, out=share, where=count > 0)  # draws, repeats included
    p = share.astype(np.float64)
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


def lr_schedule(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The factor on the scaled learning rate at each step: linear warmup, then a cosine to 0."""
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return factor


def check_resumable(
    state: TrainingCheckpoint, config: TrainConfig, manifest_digest: str, world_size: int, batch_size: int, url: str
) -> None:
    """Refuse a resume whose settings would give another model or another order of samples (one line,
    naming each changed setting: the schedule's too, e.g. ``--epochs``)."""
    if state.manifest_digest != manifest_digest:
        raise ValueError(
            f"cannot resume {url}: it was trained on manifest {state.manifest_digest}, not {manifest_digest}; "
            "train into another --output-dir"
        )
    saved = {k: v for k, v in state.config.items() if k in result_settings(config)}
    now = {k: v for k, v in result_settings(config).items() if k in saved and k not in RESUMABLE_CHANGES}
    changed = [f"--{k.replace('_', '-')} {saved[k]!r} -> {v!r}" for k, v in now.items() if saved[k] != v]
    if state.world_size is not None and state.world_size != world_size:
        changed.append(f"processes {state.world_size} -> {world_size}")
    if state.batch_size is not None and state.batch_size != batch_size:
        changed.append(f"per-process batch {state.batch_size} -> {batch_size}")
    if changed:
        raise ValueError(
            f"cannot resume {url}: {'; '.join(changed)}. A resume keeps the settings, the number of processes and "
            "the per-process batch of the run it continues (only --max-steps and --compile may change); "
            "train into another --output-dir to change them"
        )


def resume(url: str, run: Run) -> Position:
    """Load ``checkpoint.pt`` into the run's model, optimizer, scheduler and random generators."""
    state = TrainingCheckpoint.read(url)
    check_resumable(state, run.config, run.manifest.digest, run.info.world_size, run.batch_size, url)
    run.model.load_state_dict(state.model)
    run.optimizer.load_state_dict(state.optimizer)
    run.scheduler.load_state_dict(state.scheduler)
    if state.rng_states is not None:
        torch.set_rng_state(state.rng_states[run.info.rank])
    if state.cuda_rng_states is not None and run.info.device.type == "cuda":
        torch.cuda.set_rng_state(state.cuda_rng_states[run.info.rank])
    run.tracking_run_id = state.tracking_run_id
    if run.info.is_main:
        print(f"resuming at epoch {state.epoch}, step {state.step_in_epoch} of {run.steps_per_epoch}", flush=True)
    return Position(state.epoch, state.step_in_epoch, state.step)


def build_run(config: TrainConfig, info: DistInfo, logger: TrainLogger | None) -> tuple[Run, Position]:
    """Data, model, loss, optimizer, schedule and sampler; resumed from checkpoint.pt with --resume.

    ``logger`` (rank 0 only; default: :func:`open_logger`) receives what the run reports.
    """
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    elif info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels once
    torch.manual_seed(config.seed)
    manifest = read_manifest(config.manifest)
    data = load_data(manifest, config)
    if data.store.remote:  # each node copies the shards it reads once, before the first step
        if info.local_rank == 0:
            data.store.fetch([*data.train.shards, *data.val.shards])
        barrier(info)
    batch_size, global_batch = config.batches(info.world_size, info.device.type == "cuda")
    model = prepare_model(config, manifest, data, info)
    loss_fn = WeightedBCE(*(manifest.info.loss_weights() or (None, None))).to(info.device)
    lr = config.scaled_lr(global_batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    sampler = DistributedSampler(range(len(data.train)), info.world_size, info.rank, shuffle=True, seed=config.seed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(config, math.ceil(sampler.num_samples / batch_size))
    )
    run = Run(
        config,
        info,
        manifest,
        data,
        model,
        loss_fn,
        optimizer,
        scheduler,
        sampler,
        NullLogger(),
        batch_size,
        global_batch,
    )
    ckpt = storage.join(config.output_dir, CHECKPOINT_FILE)
    start = resume(ckpt, run) if config.resume and storage.exists(ckpt) else Position()
    if config.resume and run.tracking_run_id is None:  # stopped before its first checkpoint
        run.tracking_run_id = recorded_run_id(config.output_dir)
    if info.is_main:
        run.logger = logger or open_logger(config, manifest, run.tracking_run_id)
        run.tracking_run_id = run.logger.run_id
    return run, start
