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
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cxr import storage
from cxr.learn.config import MLFLOW_SCHEMES
from cxr.learn.gate_rule import GateRule
from cxr.tracking import registry, tags
from cxr.tracking.gate import Registration, register_and_gate

if TYPE_CHECKING:
    from torch import nn

    from cxr.data.manifest import Manifest
    from cxr.learn.checkpoint import ModelBundle
    from cxr.learn.config import TrainConfig
    from cxr.learn.evaluate import Predictions
    from cxr.tracking.mlflow_run import MlflowRun


@dataclass(frozen=True)
class TrackedModel:
    """Where a trained model was tracked: its MLflow run and model, and its registration if any."""

    run_id: str
    model_uri: str | None = None
    registration: Registration | None = None


class TrainLogger(Protocol):
    run_id: str | None  # the tracking run, where there is one (a resumed run goes on logging to it)

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_model(
        self, model: nn.Module, bundle: ModelBundle, url: str, validation: Predictions | None = None
    ) -> TrackedModel | None: ...
    def close(self, status: str = "FINISHED") -> None: ...  # KILLED: interrupted, FAILED: an error


class NullLogger:
    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_model(
        self, model: nn.Module, bundle: ModelBundle, url: str, validation: Predictions | None = None
    ) -> TrackedModel | None:
        return None

    def close(self, status: str = "FINISHED") -> None:
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

    def close(self, status: str = "FINISHED") -> None:
        storage.write_text(self.url, "\n".join(self.lines) + "\n")


class TeeLogger:
    """Everything to several loggers; the model is tracked by the first that tracks it."""

    def __init__(self, *loggers: TrainLogger) -> None:
        self.loggers = loggers
        self.run_id = next((logger.run_id for logger in loggers if logger.run_id), None)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def log_model(
        self, model: nn.Module, bundle: ModelBundle, url: str, validation: Predictions | None = None
    ) -> TrackedModel | None:
        tracked = [logger.log_model(model, bundle, url, validation) for logger in self.loggers]
        return next((t for t in tracked if t is not None), None)

    def close(self, status: str = "FINISHED") -> None:
        for logger in self.loggers:
            logger.close(status)


def lineage_tags(config: TrainConfig, manifest: Manifest) -> dict[str, str]:
    """What made the model: dataset, manifest, the Prefect flow run, the parent model and run.

    Local paths are stored absolute and normalised (as the training process resolved them), so the
    lineage reads the same from any folder.
    """
    info = manifest.info
    lineage = {
        tags.DATASET_DIGEST: "+".join(d.digest for d in info.versions),
        tags.DATASET_ROOT: storage.absolute(info.dataset.root),
        tags.MANIFEST_DIGEST: manifest.digest,
        tags.MANIFEST_URI: storage.absolute(config.manifest),
        tags.MANIFEST_STRATEGY: manifest.info.strategy,
        tags.MODEL_NAME: config.model,
    }
    if info.mixed:
        versions = [{"digest": d.digest, "root": storage.absolute(d.root)} for d in info.versions]
        lineage[tags.DATASETS] = json.dumps(versions, separators=(",", ":"))
    if config.flow_run_id:
        lineage[tags.PREFECT_FLOW_RUN_ID] = config.flow_run_id
    if config.init_from:
        parent = config.init_from
        lineage[tags.PARENT_MODEL] = parent if parent.startswith(MLFLOW_SCHEMES) else storage.absolute(parent)
    if config.parent_run_id:
        lineage[tags.MLFLOW_PARENT_RUN_ID] = config.parent_run_id
    return lineage


class MlflowTrainLogger:
    """A training run in MLflow; see the module docstring."""

    def __init__(self, config: TrainConfig, manifest: Manifest, resume_run_id: str | None = None) -> None:
        from cxr.tracking.mlflow_run import MlflowRun

        self.config = config
        self.manifest = manifest
        tags_ = lineage_tags(config, manifest)
        self.run: MlflowRun = MlflowRun(config.experiment, config.run_name, tags_, resume_run_id=resume_run_id)
        self.run_id: str | None = self.run.run_id
        self.resumed = resume_run_id is not None
        if not self.resumed:
            self._log_inputs()

    def _log_inputs(self) -> None:
        """The dataset version, stats and manifest as run inputs with our digests, and their charts."""
        info, manifest_url = self.manifest.info, self.config.manifest
        for dataset in info.versions:
            self.run.log_input(f"dataset-{dataset.digest}", dataset.digest, dataset.path, "training")
        self.run.log_input(f"manifest-{self.manifest.digest}", self.manifest.digest, manifest_url, "training")
        stats = "stats" if not info.mixed else None  # a mixed manifest's: one folder per version
        files = [
            (storage.join(d.path, *name), stats or f"stats/{d.digest}")
            for d in info.versions
            for name in (("stats.json",), ("charts", "prevalence.png"), ("charts", "prevalence_log.png"))
        ]
        files.append((storage.join(manifest_url, "charts", "balance.png"), "manifest"))
        files.append((storage.join(manifest_url, "manifest.json"), "manifest"))
        for url, artifact_path in files:
            if storage.exists(url):
                data = storage.read_bytes(url)
                self.run.log_bytes(url.rsplit("/", 1)[-1], data, artifact_path)
                if url.endswith("stats.json"):
                    name = artifact_path.replace("/", "-")  # stats, or stats-<digest> for each mixed version
                    self.run.log_input(name, hashlib.sha256(data).hexdigest()[:16], url, "training")

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.resumed:  # a resumed run keeps the parameters it started with (MLflow refuses changed ones)
            self.run.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log_metrics(metrics, step)

    def log_model(
        self, model: nn.Module, bundle: ModelBundle, url: str, validation: Predictions | None = None
    ) -> TrackedModel:
        """Validation curves and heatmaps (from the probabilities training already has), the model, and (with
        ``register``) the registry and its gate."""
        if validation is not None:
            self._log_validation(model, bundle, validation)
        run, c = self.run, self.config
        model_uri = run.call("log model", lambda: registry.log_model(run, model, bundle.image_size, bundle.to_bytes()))
        registration = None
        if model_uri is not None and c.register:
            registration = run.call(
                "register",
                lambda: register_and_gate(
                    run.run_id,
                    model_uri,
                    c.register,
                    self.manifest.info.dataset.path,
                    GateRule(c.gate_margin, c.gate_max_drop),
                    run.uri,
                ),
            )
        return TrackedModel(run.run_id, model_uri, registration)

    def _log_validation(self, model: nn.Module, bundle: ModelBundle, validation: Predictions) -> None:
        from cxr.data.version import open_version
        from cxr.learn.evaluate import report
        from cxr.learn.inference import single_process

        info = single_process(next(model.parameters()).device)
        version = open_version(self.manifest.info.dataset.path)
        with tempfile.TemporaryDirectory() as tmp:
            report(
                self.config.model,
                model,
                bundle,
                version,
                "val",
                validation,
                list(bundle.thresholds),
                bundle.threshold_rule,
                None,
                100,
                0,
                tmp,
                6,
                info,
                mixed=self.manifest.info.dataset_digest if self.manifest.info.mixed else None,
            )
            self.run.log_file(f"{tmp}/evaluation.json", "val")
            self.run.log_file(f"{tmp}/curves.png", "val")
            for path in sorted(Path(tmp, "heatmaps").glob("*.png")):
                self.run.log_file(path, "val/heatmaps")

    def close(self, status: str = "FINISHED") -> None:
        self.run.close(status)
