"""One MLflow run that survives the tracking server going away, and where MLflow data goes.

- Tracking URI: ``MLFLOW_TRACKING_URI`` when set (a server, with its artifacts wherever the server
  keeps them, e.g. S3); otherwise a local SQLite store, ``.cxr/mlflow.db`` with artifacts in
  ``.cxr/mlartifacts``.
- Every call goes through :meth:`MlflowRun.attempt`: a failure is reported once, loudly, and the run
  goes on; metrics are kept in a backlog and retried on each later call and at the end, so nothing is
  dropped while the server comes back. Nothing from the environment is logged (no credentials).
- A signal (Ctrl-C, SIGTERM) that arrives during a call waits until the call is done
  (:func:`cxr.signals.held_back`; each call is bounded by the HTTP timeout): cut in the middle of a
  write, a SQLite store stays locked and the run could not be closed as KILLED.
- After an interruption, whoever launched the training processes ends their run as KILLED once they are
  gone (:func:`end_as_killed`): a rank may have closed it FAILED as its peers stopped first, or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cxr import __version__, storage
from cxr.offline import set_offline_defaults
from cxr.redact import redact
from cxr.signals import held_back
from cxr.tracking import tags

LOCAL_DIR = Path(".cxr")
T = TypeVar("T")
_FAILED = object()  # what a failed call returned


def tracking_uri() -> str:
    """The tracking URI in force: the environment's, or the local SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(LOCAL_DIR / 'mlflow.db').resolve()}"


def client(uri: str | None = None) -> Any:
    """An ``MlflowClient`` on ``uri`` (default: :func:`tracking_uri`), with the offline defaults set."""
    set_offline_defaults()
    from mlflow import MlflowClient

    return MlflowClient(uri or tracking_uri())


def end_as_killed(run_id: str, uri: str | None = None) -> str | None:
    """End run ``run_id`` as KILLED unless it already ended FINISHED or KILLED; the status it had, or None
    when MLflow did not answer.

    What a launcher does once an interruption has stopped every process that logged to the run: rank 0
    may have been cut short before it closed the run, killed while stuck, or have closed it FAILED because
    its peers went away first (they stopped on the same signal).
    """
    try:
        mlflow_client = client(uri)
        status = mlflow_client.get_run(run_id).info.status
        if status not in ("FINISHED", "KILLED"):
            mlflow_client.set_terminated(run_id, "KILLED")
    except Exception:  # noqa: BLE001 - on the way out of an interruption; the run's own close was the first try
        return None
    return str(status)


def experiment_id(mlflow_client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created if missing (a local store keeps artifacts beside its database)."""
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):  # not in ./mlruns
        artifact_location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts" / name).resolve().as_uri()
    return mlflow_client.create_experiment(name, artifact_location=artifact_location)


def log_to_run(
    run_id: str, folder: str, names: Sequence[str], artifact_path: str, metrics: Mapping[str, float | None]
) -> None:
    """Add files of ``folder`` (local or s3://) and metrics to a finished run (e.g. the test evaluation, the
    model card); a remote file goes through a local copy under its own name."""
    mlflow_client = client()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            url = storage.join(folder, name)
            if storage.is_remote(url):
                local = Path(tmp) / posixpath.basename(name)
                local.write_bytes(storage.read_bytes(url))
                url = str(local)
            mlflow_client.log_artifact(run_id, url, artifact_path)
    for key, value in metrics.items():
        if value is not None:
            mlflow_client.log_metric(run_id, key, value)


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)
    return text[:6000]


class MlflowRun:
    """A new MLflow run; its calls never raise (see the module docstring)."""

    def __init__(
        self,
        experiment: str = "cxr",
        run_name: str | None = None,
        run_tags: Mapping[str, str] | None = None,
        system_metrics: bool = True,
        resume_run_id: str | None = None,
    ) -> None:
        self.uri = tracking_uri()
        self.client = client(self.uri)
        with held_back():  # as for every call below
            if resume_run_id:  # a resumed training run: the same MLflow run, running again
                self.run_id = resume_run_id
                self.client.update_run(resume_run_id, status="RUNNING")
            else:
                experiment_number = experiment_id(self.client, self.uri, experiment)
                all_tags = {**(run_tags or {}), tags.CODE_VERSION: __version__}
                self.run_id = self.client.create_run(experiment_number, run_name=run_name, tags=all_tags).info.run_id
        self.failed = False
        self.closed = False
        self.backlog: list[tuple[Mapping[str, float], int]] = []
        self.monitor = None
        if system_metrics:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self.monitor = SystemMetricsMonitor(
                    self.run_id, sampling_interval=2, samples_before_logging=1, tracking_uri=self.uri
                )
                self.monitor.start()
            except Exception as err:  # noqa: BLE001 - system metrics are optional (psutil, GPU drivers)
                print(f"MLflow system metrics off: {redact(str(err))}", file=sys.stderr)
                self.monitor = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self.attempt(
                "log params", lambda batch=items[start : start + 100]: self.client.log_batch(self.run_id, params=batch)
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.backlog.append((metrics, step))
        self._flush()

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.attempt(f"log {path}", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_bytes(self, name: str, data: bytes, artifact_path: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            target.write_bytes(data)
            self.log_file(target, artifact_path)

    def log_input(self, name: str, digest: str, source: str, context: str) -> None:
        """A run input (dataset version, stats, manifest) carrying our own digest (MLflow's reads 10,000 rows)."""
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        dataset = MetaDataset(source=HTTPDatasetSource(url=source), name=name, digest=digest)
        entity = DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
        self.attempt(f"log input {name}", lambda: self.client.log_inputs(self.run_id, [entity]))

    def close(self, status: str = "FINISHED") -> None:
        """End the run as ``status`` (FINISHED, KILLED on an interruption, FAILED on an error); once."""
        if self.closed:
            return
        self.closed = True
        self._flush()
        if self.monitor is not None:
            with contextlib.suppress(Exception):  # best effort at shutdown
                self.monitor.finish()
        self.attempt("end run", lambda: self.client.set_terminated(self.run_id, status))
        if self.backlog:
            print(
                f"MLflow: {len(self.backlog)} metric batches could not be sent to {redact(self.uri)}; "
                "they are in metrics.jsonl",
                file=sys.stderr,
                flush=True,
            )

    def attempt(self, what: str, call: Callable[[], object]) -> bool:
        """Run one tracking call; on failure say so (once until it works again) and return False."""
        return self._guarded(what, call) is not _FAILED

    def call(self, what: str, call: Callable[[], T]) -> T | None:
        """Like :meth:`attempt`, returning the call's value, or None when it failed."""
        value = self._guarded(what, call)
        return None if value is _FAILED else value

    def _guarded(self, what: str, call: Callable[[], T]) -> T | object:
        try:
            with held_back():  # a signal waits for the call: cut mid-write, a SQLite store would stay locked
                value = call()
        except Exception as err:  # noqa: BLE001 - any tracking failure must not stop training
            if not self.failed:
                print(
                    f"\n*** MLflow tracking at {redact(self.uri)} failed "
                    f"({what}: {type(err).__name__}: {redact(str(err))[:200]}); "
                    "training goes on, metrics stay in metrics.jsonl and are retried ***\n",
                    file=sys.stderr,
                    flush=True,
                )
            self.failed = True
            return _FAILED
        if self.failed:
            print(f"MLflow tracking at {redact(self.uri)} answers again", file=sys.stderr, flush=True)
            self.failed = False
        return value

    def _flush(self) -> None:
        from mlflow.entities import Metric

        while self.backlog:
            metrics, step = self.backlog[0]
            timestamp = int(time.time() * 1000)
            items = [
                Metric(k, float(v), timestamp, step) for k, v in metrics.items() if v is not None and np.isfinite(v)
            ]
            if not self.attempt("log metrics", lambda items=items: self.client.log_batch(self.run_id, metrics=items)):
                return
            self.backlog.pop(0)
