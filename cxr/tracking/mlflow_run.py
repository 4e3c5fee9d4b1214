"""Tracking with MLflow, as a plug-in beside the training loop (the loop only calls a small logger).

- Tracking URI: ``MLFLOW_TRACKING_URI`` when set (a server, with its artifacts wherever the server
  keeps them, e.g. S3); otherwise a local SQLite store, ``.cxr/mlflow.db`` with artifacts in
  ``.cxr/mlartifacts``.
- Only rank 0 tracks. Params are the resolved config (no credentials: nothing from the environment
  is logged); metrics per epoch; system metrics; figures; the stats and the manifest as run inputs
  carrying our own digests; the model with a signature, an input example of batch 2 and explicit pip
  requirements; lineage tags.
- If the server cannot be reached, training goes on: the failure is reported once, loudly, metrics
  keep going to ``metrics.jsonl``, and the logger retries the backlog on each later call and at the
  end, so nothing is dropped while the server comes back.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxr import __version__

LOCAL_DIR = Path(".cxr")
TAG_PREFIX = "cxr."


def tracking_uri() -> str:
    """The tracking URI in force: the environment's, or the local SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(LOCAL_DIR / 'mlflow.db').resolve()}"


def _quiet_defaults() -> None:
    # Fail fast when the server is down (MLflow's own default retries for minutes), no telemetry.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _experiment_id(client: Any, uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):  # a local store: artifacts beside the database, not in ./mlruns
        artifact_location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts" / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
    return text[:6000]


class MlflowLogger:
    """A :class:`cxr.train.TrainLogger` that writes to MLflow and survives the server going away."""

    def __init__(self, experiment: str = "cxr", run_name: str | None = None, tags: dict[str, str] | None = None,
                 system_metrics: bool = True) -> None:  # fmt: skip
        _quiet_defaults()
        from mlflow import MlflowClient

        self.uri = tracking_uri()
        self.client = MlflowClient(self.uri)
        self.experiment_id = _experiment_id(self.client, self.uri, experiment)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={**(tags or {}), f"{TAG_PREFIX}code_version": __version__})
        self.run_id = run.info.run_id
        self.failed = False
        self.backlog: list[tuple[dict[str, float], int]] = []
        self.monitor = None
        if system_metrics:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self.monitor = SystemMetricsMonitor(self.run_id, sampling_interval=2, samples_before_logging=1, tracking_uri=self.uri)
                self.monitor.start()
            except Exception as err:  # noqa: BLE001 - system metrics are optional (psutil, GPU drivers)
                print(f"MLflow system metrics off: {err}", file=sys.stderr)
                self.monitor = None

    # --- the TrainLogger interface -------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        self._safe("log params", lambda: [self.client.log_batch(self.run_id, params=items[i : i + 100]) for i in range(0, len(items), 100)])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.backlog.append((metrics, step))
        self._flush()

    def close(self, status: str = "FINISHED") -> None:
        self._flush()
        if self.monitor is not None:
            try:
                self.monitor.finish()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
        self._safe("end run", lambda: self.client.set_terminated(self.run_id, status))
        if self.backlog:
            print(f"MLflow: {len(self.backlog)} metric batches could not be sent to {self.uri}; they are in metrics.jsonl",
                  file=sys.stderr, flush=True)  # fmt: skip

    # --- more than the loop needs ---------------------------------------------------------------
    def set_tags(self, tags: dict[str, Any]) -> None:
        self._safe("set tags", lambda: [self.client.set_tag(self.run_id, k, str(v)) for k, v in tags.items()])

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._safe(f"log {path}", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_bytes(self, name: str, data: bytes, artifact_path: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            target.write_bytes(data)
            self.log_file(target, artifact_path)

    def log_input(self, name: str, digest: str, source: str, context: str) -> None:
        """A run input (dataset version, stats, manifest) carrying our own digest."""
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        dataset = MetaDataset(source=HTTPDatasetSource(url=source), name=name, digest=digest)
        entity = DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
        self._safe(f"log input {name}", lambda: self.client.log_inputs(self.run_id, [entity]))

    def _flush(self) -> None:
        from mlflow.entities import Metric

        while self.backlog:
            metrics, step = self.backlog[0]
            timestamp = int(time.time() * 1000)
            items = [Metric(k, float(v), timestamp, step) for k, v in metrics.items() if v is not None and np.isfinite(v)]
            if not self._safe("log metrics", lambda items=items: self.client.log_batch(self.run_id, metrics=items)):
                return
            self.backlog.pop(0)

    def _safe(self, what: str, call: Any) -> bool:
        try:
            call()
        except Exception as err:  # noqa: BLE001 - any tracking failure must not stop training
            if not self.failed:
                print(f"\n*** MLflow tracking at {self.uri} failed ({what}: {type(err).__name__}: {str(err)[:200]}); "
                      "training goes on, metrics stay in metrics.jsonl and are retried ***\n", file=sys.stderr, flush=True)  # fmt: skip
            self.failed = True
            return False
        if self.failed:
            print(f"MLflow tracking at {self.uri} answers again", file=sys.stderr, flush=True)
            self.failed = False
        return True


class TeeLogger:
    """Send everything to several loggers (MLflow and the JSON-lines file)."""

    def __init__(self, *loggers: Any) -> None:
        self.loggers = loggers

    def log_params(self, params: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
