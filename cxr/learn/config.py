"""Every setting of a training run: :class:`TrainConfig`, its command line, and which settings decide
the result.

Each field carries its help text (what it means and why its default is what it is) in its metadata,
once; the command line of ``python -m cxr.learn.train`` and ``cxr train`` is built from it, as
torchvision's reference script states every flag's meaning beside its default. Fields marked
``result=False`` (paths, lineage ids, how a run is resumed or named) do not change the trained model:
:func:`result_settings` leaves them out, and a run's cache key and folder name are made of the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from cxr.learn.gate_rule import GATE_MARGIN, GATE_MAX_DROP

if TYPE_CHECKING:
    from cxr.learn.augment import AugmentConfig

# light to import (no torch, torchvision or MLflow): `cxr train` checks its flags before it loads them
MODEL_NAMES = ("densenet121", "resnet50", "efficientnet_b0", "small", "small-gn")
AMP_MODES = ("auto", "bf16", "off")
RUNS_ROOT = "runs"  # where a run without --output-dir gets a new folder of its own
# what a run writes into its folder; a folder holding any of them holds a run
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
TRACKING_FILE = "tracking.json"  # the MLflow run id, written as soon as the run exists (a resume goes on in it)
RUN_FILES = (CHECKPOINT_FILE, MODEL_FILE, METRICS_FILE, RESULT_FILE, TRACKING_FILE)
MLFLOW_SCHEMES = ("models:/", "runs:/")  # a model given by MLflow URI rather than a file
PREDICT_BATCH = 16  # images `cxr predict` (folders, patterns) and `cxr serve` score in one pass of the model
CPU_BATCH = 32  # the demo's small CNN at 64 px; what the tests and docs/imbalance-study.md measured
GPU_BATCH = 128  # DenseNet-121 at 224 px in bf16 takes about 20 GiB at this batch: fits 24 GiB cards and up


def setting(default: Any, help: str, *, result: bool = True, choices: tuple[str, ...] | None = None) -> Any:
    """A field with its help text (and its choices, if any); ``result=False``: it does not change the model."""
    return field(default=default, metadata={"help": help, "result": result, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; unknown keys are rejected."""

    manifest: str = field(metadata={"help": "manifest folder (manifest.parquet + manifest.json), local or s3://"})
    output_dir: str | None = setting(
        None,
        "where checkpoint.pt, model.pt, metrics.jsonl and result.json go (local or s3://); default: a new folder "
        f"per run, {RUNS_ROOT}/<--run-name> or {RUNS_ROOT}/train-<date>-<time>",
        result=False,
    )
    model: str = setting(
        "densenet121",
        "the architecture; small is a 5-layer CNN for CPU demos, small-gn the same with GroupNorm",
        choices=MODEL_NAMES,
    )
    weights: str | None = setting(
        None, "torchvision state-dict file for the backbone (transfer learning; head replaced)"
    )
    init_from: str | None = setting(
        None, "start from the weights of a model.pt, s3:// URL or MLflow URI (models:/NAME@ALIAS)"
    )
    freeze_epochs: int = setting(0, "epochs with the backbone frozen (only the head learns) after --weights")
    epochs: int = setting(10, "passes over the manifest's training draws")
    batch_size: int | None = setting(
        None,
        "images per process and step; the global batch is this times the number of processes "
        f"(default: {CPU_BATCH} on CPU, {GPU_BATCH} per GPU, or --global-batch-size / processes)",
    )
    global_batch_size: int | None = setting(
        None, "images per step over all processes; each takes an equal share, so 1 and 8 GPUs train the same way"
    )
    lr: float = setting(
        1e-3, "AdamW learning rate for a global batch of --lr-batch images, scaled linearly with the global batch"
    )
    lr_batch: int = setting(CPU_BATCH, "the global batch --lr is meant for (linear scaling: Goyal et al., 2017)")
    warmup_epochs: float = setting(
        0.0, "epochs over which the learning rate rises linearly from 0 (use ~1 with large global batches)"
    )
    weight_decay: float = setting(1e-4, "AdamW weight decay (decoupled from the gradient step)")
    shard_size: int | None = setting(None, "which shards to read (px); default: the largest the dataset has")
    image_size: int | None = setting(None, "model input side (px); default: the shard size")
    seed: int = setting(0, "seeds model init, data order and augmentation; the same seed repeats a run")
    augment: bool = setting(True, "random resized crop, small rotation, brightness and contrast, on the batch")
    crop_scale_min: float = setting(0.75, "least share of the image area a random crop keeps")
    rotation_deg: float = setting(7.0, "largest rotation either way, in degrees (films are taken upright)")
    brightness: float = setting(0.1, "multiplicative brightness change, 1 +- this")
    contrast: float = setting(0.1, "contrast change around the image mean, 1 +- this")
    hflip: bool = setting(False, "random horizontal flip; off because the heart sits on the left")
    amp: str = setting("auto", "bf16 autocast on GPU (auto or bf16), never on CPU; off disables it", choices=AMP_MODES)
    channels_last: bool = setting(True, "channels-last memory format on GPU (faster convolutions with bf16)")
    compile: bool = setting(False, "torch.compile the model (GPU runs; the first steps compile)")
    sync_bn: bool = setting(
        False, "SyncBatchNorm across GPUs (BatchNorm over the global batch; two collectives per layer and step)"
    )
    checkpoint_every: int = setting(
        0, "also checkpoint every N steps (0: at each epoch's end only); for preemptible machines", result=False
    )
    resume: bool = setting(False, "continue from OUTPUT_DIR/checkpoint.pt if it exists", result=False)
    deterministic: bool = setting(False, "torch.use_deterministic_algorithms: bitwise-repeatable runs and resumes")
    max_steps: int = setting(0, "stop after this many steps in total (0: no limit); for smoke runs")
    device: str = setting("auto", "auto (this rank's GPU if there is one, else the CPU), cpu or cuda", result=False)
    dist_timeout_s: int = setting(
        1800,
        "seconds a rank waits in a collective before the run fails (torch's own default is 10-30 min)",
        result=False,
    )
    tracking: bool = setting(
        True, "log to MLflow (MLFLOW_TRACKING_URI, else .cxr/mlflow.db); off: metrics.jsonl only", result=False
    )
    experiment: str = setting("cxr", "the MLflow experiment the run is logged under")
    run_name: str | None = setting(None, "a name for the MLflow run (default: MLflow makes one up)", result=False)
    register: str | None = setting(None, "register the model under this name as challenger, then gate champion")
    gate_margin: float = setting(
        GATE_MARGIN, "promote only if the mean val AUROC gain over the champion is above this, beyond noise"
    )
    gate_max_drop: float = setting(
        GATE_MAX_DROP, "and no finding's val AUROC significantly more than this below the champion's"
    )
    flow_run_id: str | None = setting(None, "the Prefect flow run that launched this run (lineage tag)", result=False)
    parent_run_id: str | None = setting(
        None, "an MLflow run to nest this run under (the imbalance study)", result=False
    )

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        if self.epochs < 1 or self.lr <= 0 or self.lr_batch < 1:
            raise ValueError("epochs and lr_batch must be >= 1 and lr > 0")
        if any(b is not None and b < 1 for b in (self.batch_size, self.global_batch_size)):
            raise ValueError("batch_size and global_batch_size must be >= 1")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if self.dist_timeout_s < 1:
            raise ValueError(f"dist_timeout_s must be >= 1, got {self.dist_timeout_s}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be auto, bf16 or off, got {self.amp!r}")
        if self.weights and self.init_from:
            raise ValueError("give --weights or --init-from, not both")
        self.augment_config()  # checks the augmentation ranges

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> TrainConfig:
        """A config from command-line flags (``--batch-size 64 --no-augment ...``)."""
        return cls.from_dict(vars(get_args_parser().parse_args(argv)))

    def to_args(self) -> list[str]:
        """The flags that rebuild this config (defaults left out): ``TrainConfig.from_args(c.to_args()) == c``."""
        args: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + f.name.replace("_", "-"))
            else:
                args += [flag, str(value)]
        return args

    def batches(self, world_size: int, cuda: bool) -> tuple[int, int]:
        """(per-process batch, global batch) for ``world_size`` processes; refuses a global batch they cannot share."""
        if self.global_batch_size is not None:
            per, rest = divmod(self.global_batch_size, world_size)
            if rest or per < 1:
                raise ValueError(
                    f"--global-batch-size {self.global_batch_size} does not split evenly over {world_size} processes"
                )
            if self.batch_size is not None and self.batch_size != per:
                raise ValueError(
                    f"--batch-size {self.batch_size} and --global-batch-size {self.global_batch_size} disagree "
                    f"for {world_size} processes; give one of them"
                )
            return per, self.global_batch_size
        per = self.batch_size or (GPU_BATCH if cuda else CPU_BATCH)
        return per, per * world_size

    def scaled_lr(self, global_batch: int) -> float:
        """--lr scaled linearly from --lr-batch to the global batch."""
        return self.lr * global_batch / self.lr_batch

    def augment_config(self) -> AugmentConfig:
        from cxr.learn.augment import AugmentConfig

        return AugmentConfig(
            self.augment, self.crop_scale_min, self.rotation_deg, self.brightness, self.contrast, self.hflip
        )


def result_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings that decide the trained model (everything but paths, lineage ids and run handling)."""
    return {
        f.name: getattr(config, f.name)
        for f in fields(config)
        if f.metadata.get("result", True) and f.name != "manifest"
    }


class _HelpWithDefaults(argparse.HelpFormatter):
    """Each flag's help with its default, where it has one (a None default is explained in the help)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "%(default)" in text:
            return text
        return text + " (default: %(default)s)"


def get_args_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line, one flag per :class:`TrainConfig` field, each with its meaning and default."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m cxr.learn.train",
        description="Train a 14-finding chest X-ray classifier on a manifest (DDP under torchrun).",
        formatter_class=_HelpWithDefaults,
    )
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, default=argparse.SUPPRESS, help=help_text + " (required)")
        elif f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata["choices"], help=help_text)
    return parser
