"""Prefect tasks for training, evaluation and the registry: retries, caching, artifacts, nothing else."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cxr.learn.config import TrainConfig
from cxr.learn.evaluate import Evaluation, evaluate_model
from cxr.learn.launch import launch, run_key
from cxr.learn.result import TrainResult
from cxr.reports import RetrainSummary
from cxr.tracking.mlflow_run import log_to_run
from cxr.tracking.registry import Registration, register_and_gate
from tasks.policy import RETRY


def _train_key(_: Any, parameters: dict[str, Any]) -> str:
    """The run's folder: the manifest digest and every setting that decides the model name it (run_key)."""
    return "train-" + run_key(parameters["config"], parameters["manifest_digest"], parameters["nproc"])


@task(name="train", cache_key_fn=_train_key, persist_result=True, **RETRY)
def train_task(config: TrainConfig, nproc: int, manifest_digest: str) -> TrainResult:
    """Run ``torchrun ... -m cxr.learn.train`` as a subprocess, stream its log, return its result.

    Always with ``--resume``: the run folder is named by the settings, so a checkpoint there is this run's,
    left by a failed try (a retry goes on from it, in the same MLflow run). The Prefect flow run id goes
    into the config (``--flow-run-id``), and from there into the MLflow run's lineage tags.
    """
    from prefect.runtime import flow_run

    config = replace(config, flow_run_id=flow_run.id or None, resume=True)
    return launch(config, nproc, on_line=get_run_logger().info)


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
def register_task(run_id: str, model_uri: str, name: str, margin: float, max_drop: float) -> Registration:
    """Register the model as ``challenger``; promote it to ``champion`` if the gate passes (once per run)."""
    return register_and_gate(run_id, model_uri, name, margin, max_drop)


@task(name="retrain-summary", cache_policy=NO_CACHE)
def summary_artifact(summary: RetrainSummary) -> str:
    """A markdown summary of the retrain: versions, the decision, and per-finding test metrics."""
    text = summary.markdown()
    create_markdown_artifact(text, key="retrain-summary", description="Retrain flow summary")
    return text
