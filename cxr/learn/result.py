"""What a training run returns, and writes as ``result.json`` beside its model for whoever launched it."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from cxr import storage
from cxr.learn.config import RESULT_FILE, TRACKING_FILE
from cxr.records import from_json, to_json
from cxr.tracking.loggers import TrackedModel


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_mean_auroc: float | None
    images_per_s: float
    lr: float


@dataclass(frozen=True)
class TrainResult:
    history: tuple[EpochRecord, ...]
    val_mean_auroc: float | None
    val_auroc: Mapping[str, float | None]
    steps: int
    model_url: str
    rank_fingerprints: tuple[str, ...]
    tracked: TrackedModel | None = None  # rank 0 with tracking on
    resumed_at_step: int = 0  # where this process took over from checkpoint.pt (0: trained from the start)

    @property
    def output_dir(self) -> str:
        """The run's folder: where ``model.pt`` and ``result.json`` are."""
        return posixpath.dirname(self.model_url)

    def write(self, output_dir: str) -> None:
        storage.write_text(storage.join(output_dir, RESULT_FILE), to_json(self) + "\n")

    @classmethod
    def read(cls, output_dir: str) -> TrainResult:
        return from_json(cls, storage.read_text(storage.join(output_dir, RESULT_FILE)))


def recorded_run_id(output_dir: str) -> str | None:
    """The MLflow run a run folder's training logged to (``tracking.json``), if it recorded one."""
    url = storage.join(output_dir, TRACKING_FILE)
    if not storage.exists(url):
        return None
    return json.loads(storage.read_text(url)).get("mlflow_run_id")
