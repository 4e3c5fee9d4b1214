"""Prefect tasks for training, evaluation, the registry and the model card: retries, caching, artifacts."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cxr import storage
from cxr.card.write import card_link, log_card, write_card
from cxr.learn.config import TrainConfig
from cxr.learn.evaluate import Evaluation, evaluate_model
from cxr.learn.gate_rule import GateRule
from cxr.learn.launch import launch, run_key
from cxr.learn.result import TrainResult
from cxr.reports import RetrainSummary
from cxr.tracking.gate import Registration, register_and_gate
from cxr.tracking.mlflow_run import log_to_run
from tasks.policy import RETRY


def _train_key(_: Any, parameters: dict[str, Any]) -> str:
    """The run's folder: the manifest digest and every setting that decides the model name it (run_key)."""
    return "train-" + run_key(parameters["config"], parameters["manifest_digest"], parameters["nproc"])


class ModelNotTrackedError(RuntimeError):
    """Training finished but its model is not in MLflow: the result must not be cached."""


class GateFailedClosedError(RuntimeError):
    """The gate could not read the champion; nothing was promoted."""


@task(name="train", cache_key_fn=_train_key, persist_result=True, **RETRY)
def train_task(config: TrainConfig, nproc: int, manifest_digest: str) -> TrainResult:
    """Run ``torchrun ... -m cxr.learn.train`` as a subprocess, stream its log, return its result.

    Each flow run trains in its own folder, ``<run folder>/<flow run id>``, so two flows with the same
    settings at once never share a checkpoint or a ``model.pt``; the cache key is the run folder (the
    settings), so a later flow reuses a finished run's result. Always with ``--resume``: a retry of this
    task (same flow run, same folder) goes on from the checkpoint of the failed try, in the same MLflow
    run. A run whose model did not reach MLflow fails the task, so it is not cached; the retry finds the
    run finished and only logs the model. The Prefect flow run id also goes into the MLflow run's lineage
    tags (``--flow-run-id``).
    """
    from prefect.runtime import flow_run

    attempt = flow_run.id or uuid.uuid4().hex  # outside a flow run: a folder of its own
    config = replace(
        config, output_dir=storage.join(config.output_dir, str(attempt)), flow_run_id=flow_run.id or None, resume=True
    )
    result = launch(config, nproc, on_line=get_run_logger().info)
    if config.tracking and (result.tracked is None or not result.tracked.model_uri):
        raise ModelNotTrackedError(
            f"training in {config.output_dir} finished, but its model was not logged to MLflow "
            "(see the tracking error above); a retry resumes the finished run and logs it"
        )
    return result


def _evaluate_key(_: Any, parameters: dict[str, Any]) -> str:
    return f"evaluate-{parameters['run_id'] or parameters['model_url']}-{parameters['dataset']}"


@task(name="evaluate", cache_key_fn=_evaluate_key, persist_result=True, **RETRY)
def evaluate_task(model_url: str, dataset: str, out_dir: str, run_id: str | None) -> Evaluation:
    """Test-split metrics and CAM localization; written to ``out_dir`` and logged to the model's MLflow run."""
    evaluation = evaluate_model(model_url, dataset, split="test", out_dir=out_dir, device="auto")
    if run_id:
        log_to_run(
            run_id, out_dir, ("evaluation.json", "curves.png"), "test", {"test_mean_auroc": evaluation.mean_auroc}
        )
    return evaluation


def _register_key(_: Any, parameters: dict[str, Any]) -> str:
    return f"register-{parameters['name']}-{parameters['run_id']}"


@task(name="register-and-gate", cache_key_fn=_register_key, persist_result=True, **RETRY)
def register_task(run_id: str, model_uri: str, name: str, dataset: str, rule: GateRule) -> Registration:
    """Register the model as ``challenger`` (once per run); promote it to ``champion`` if the gate passes.

    A gate that failed closed (the champion could not be read) raises after recording why, so the task is
    retried and its answer never cached."""
    registration = register_and_gate(run_id, model_uri, name, dataset, rule)
    if registration.failed_closed:
        raise GateFailedClosedError("; ".join(registration.reasons))
    return registration


def _report_key(_: Any, parameters: dict[str, Any]) -> str:
    return f"report-{parameters['run_id'] or parameters['model_url']}-{parameters['dataset']}"


@task(name="model-card", cache_key_fn=_report_key, persist_result=True, **RETRY)
def report_task(model_url: str, dataset: str, out_dir: str, run_id: str | None) -> str:
    """The model card of the test split into ``out_dir``, logged to the model's MLflow run and linked from this
    flow run's artifacts; the page's URL."""
    files = write_card(model_url, dataset, out_dir, split="test", device="auto")
    if run_id:
        log_card(run_id, files)
    link = card_link(files, run_id)
    create_link_artifact(link, link_text="model card (HTML)", key="model-card", description=files.page)
    return files.page


@task(name="retrain-summary", cache_policy=NO_CACHE)
def summary_artifact(summary: RetrainSummary) -> str:
    """A markdown summary of the retrain: versions, the decision, and per-finding test metrics."""
    text = summary.markdown()
    create_markdown_artifact(text, key="retrain-summary", description="Retrain flow summary")
    return text
