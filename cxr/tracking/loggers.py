"""What the training loop reports to (MONAI's handler shape): a small :class:`TrainLogger` interface with
three implementations. The loop calls the interface and knows nothing else; a run works with tracking off.

- :class:`JsonlLogger`: metrics as JSON lines in ``<output_dir>/metrics.jsonl`` (always, on rank 0).
- :class:`MlflowTrainLogger`: one MLflow run with lineage tags, the dataset, stats and manifest as
  inputs, per-step and per-epoch metrics, and at the end validation figures, the model (pt2 and the
  ``model.pt`` bundle) and, with ``register``, the registry and its gate. It owns all of MLflow.
- :class:`TeeLogger`: several at once; :class:`NullLogger`: nothing (ranks other than 0).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cxr import storage
from cxr.tracking import registry, tags
from cxr.tracking.registry import Registration

if TYPE_CHECKING:
    from torch import nn

    from cxr.data.manifest import Manifest
    from cxr.learn.checkpoint import ModelBundle
    from cxr.learn.config import TrainConfig
    from cxr.tracking.mlflow_run import MlflowRun


@dataclass(frozen=True)
class TrackedModel:
    """Where a trained model was tracked: its MLflow run and model, and its registration if any."""

    run_id: str
    model_uri: str | None = None
    registration: Registration | None = None


class TrainLogger(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_model(self, model: nn.Module, bundle: ModelBundle, url: str) -> TrackedModel | None: ...
    def close(self) -> None: ...


class NullLogger:
    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_model(self, model: nn.Module, bundle: ModelBundle, url: str) -> TrackedModel | None:
        return None

    def close(self) -> None:
        pass


class JsonlLogger(NullLogger):
    """Metrics as JSON lines in ``<output_dir>/metrics.jsonl`` (rewritten whole: works on S3 too)."""

    def __init__(self, output_dir: str) -> None:
        self.url = storage.join(output_dir, "metrics.jsonl")
        self.lines: list[str] = []
        if storage.exists(self.url):
            self.lines = storage.read_text(self.url).splitlines()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.lines.append(json.dumps({"params": dict(params)}, sort_keys=True))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.lines.append(json.dumps({"step": step, **metrics}, sort_keys=True))
        self.close()

    def close(self) -> None:
        storage.write_text(self.url, "\n".join(self.lines) + "\n")


class TeeLogger:
    """Everything to several loggers; the model is tracked by the first that tracks it."""

    def __init__(self, *loggers: TrainLogger) -> None:
        self.loggers = loggers

    def log_params(self, params: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def log_model(self, model: nn.Module, bundle: ModelBundle, url: str) -> TrackedModel | None:
        tracked = [logger.log_model(model, bundle, url) for logger in self.loggers]
        return next((t for t in tracked if t is not None), None)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def lineage_tags(config: TrainConfig, manifest: Manifest) -> dict[str, str]:
    """What made the model: dataset, manifest, the Prefect flow run, the parent model and run."""
    dataset = manifest.info.dataset
    lineage = {
        tags.DATASET_DIGEST: dataset.digest,
        tags.DATASET_ROOT: dataset.root,
        tags.MANIFEST_DIGEST: manifest.digest,
        tags.MANIFEST_URI: config.manifest,
        tags.MANIFEST_STRATEGY: manifest.info.strategy,
        tags.MODEL_NAME: config.model,
    }
    if config.flow_run_id:
        lineage[tags.PREFECT_FLOW_RUN_ID] = config.flow_run_id
    if config.init_from:
        lineage[tags.PARENT_MODEL] = config.init_from
    if config.parent_run_id:
        lineage[tags.MLFLOW_PARENT_RUN_ID] = config.parent_run_id
    return lineage


class MlflowTrainLogger:
    """A training run in MLflow; see the module docstring."""

    def __init__(self, config: TrainConfig, manifest: Manifest) -> None:
        from cxr.tracking.mlflow_run import MlflowRun

        self.config = config
        self.manifest = manifest
        self.run: MlflowRun = MlflowRun(config.experiment, config.run_name, lineage_tags(config, manifest))
        self._log_inputs()

    def _log_inputs(self) -> None:
        """The dataset version, stats and manifest as run inputs with our digests, and their charts."""
        dataset, manifest_url = self.manifest.info.dataset, self.config.manifest
        self.run.log_input(f"dataset-{dataset.digest}", dataset.digest, dataset.path, "training")
        self.run.log_input(f"manifest-{self.manifest.digest}", self.manifest.digest, manifest_url, "training")
        files = (
            (storage.join(dataset.path, "stats.json"), "stats"),
            (storage.join(dataset.path, "charts", "prevalence.png"), "stats"),
            (storage.join(dataset.path, "charts", "prevalence_log.png"), "stats"),
            (storage.join(manifest_url, "charts", "balance.png"), "manifest"),
            (storage.join(manifest_url, "manifest.json"), "manifest"),
        )
        for url, artifact_path in files:
            if storage.exists(url):
                data = storage.read_bytes(url)
                self.run.log_bytes(url.rsplit("/", 1)[-1], data, artifact_path)
                if url.endswith("stats.json"):
                    self.run.log_input("stats", hashlib.sha256(data).hexdigest()[:16], url, "training")

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log_metrics(metrics, step)

    def log_model(self, model: nn.Module, bundle: ModelBundle, url: str) -> TrackedModel:
        """Validation curves and heatmaps, the model, and (with ``register``) the registry and its gate."""
        self._log_validation_figures(url)
        run, c = self.run, self.config
        model_uri = run.call("log model", lambda: registry.log_model(run, model, bundle.image_size, bundle.to_bytes()))
        registration = None
        if model_uri is not None and c.register:
            registration = run.call(
                "register",
                lambda: registry.register_and_gate(
                    run.run_id, model_uri, c.register, c.gate_margin, c.gate_max_drop, run.uri
                ),
            )
        return TrackedModel(run.run_id, model_uri, registration)

    def _log_validation_figures(self, model_url: str) -> None:
        from cxr.learn.evaluate import evaluate_model

        with tempfile.TemporaryDirectory() as tmp:
            try:
                evaluate_model(
                    model_url, self.manifest.info.dataset.path, split="val", n_boot=100, out_dir=tmp, overlays=6
                )
            except ValueError as err:  # e.g. no val split: nothing to draw
                print(f"no validation figures: {err}", file=sys.stderr)
                return
            self.run.log_file(f"{tmp}/evaluation.json", "val")
            self.run.log_file(f"{tmp}/curves.png", "val")
            for path in sorted(Path(tmp, "heatmaps").glob("*.png")):
                self.run.log_file(path, "val/heatmaps")

    def close(self) -> None:
        self.run.close()
