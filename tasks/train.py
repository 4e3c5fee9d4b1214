"""Prefect tasks for training, evaluation and the registry: retries, caching, artifacts, nothing else."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cxr import storage
from cxr.train import RESULT_PREFIX

RETRY = {"retries": 2, "retry_delay_seconds": [5, 30]}


def _train_key(context: Any, parameters: dict[str, Any]) -> str:
    """Same manifest (by digest) and same settings: the same model, so a rerun reuses it."""
    manifest = json.loads(storage.read_text(storage.join(parameters["manifest"], "manifest.json")))["digest"]
    settings = json.dumps({k: v for k, v in parameters.items() if k != "manifest"}, sort_keys=True, default=str)
    return f"train-{manifest}-{hashlib.sha256(settings.encode()).hexdigest()[:16]}"


@task(name="train", cache_key_fn=_train_key, persist_result=True, **RETRY)
def train_task(
    manifest: str, output_dir: str, model: str, epochs: int, batch_size: int, image_size: int | None, nproc: int,
    experiment: str, seed: int, extra_args: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run ``torchrun ... -m cxr.train`` as a subprocess, stream its log, return its result line.

    The Prefect flow run id goes to the training process (``CXR_FLOW_RUN_ID``) and from there into
    the MLflow run's lineage tags.
    """
    from prefect.runtime import flow_run

    logger = get_run_logger()
    args = ["--manifest", manifest, "--output-dir", output_dir, "--model", model, "--epochs", str(epochs),
            "--batch-size", str(batch_size), "--seed", str(seed), "--experiment", experiment, *(extra_args or [])]  # fmt: skip
    if image_size:
        args += ["--image-size", str(image_size)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "cxr.train", *args]
    env = {**os.environ, "CXR_FLOW_RUN_ID": str(flow_run.id or "")}
    logger.info("running %s", " ".join(command[1:]))
    result: dict[str, Any] | None = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
            elif line:
                logger.info(line)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"training exited with {proc.returncode}" + ("" if result else " and no result line"))
    return result


@task(name="evaluate", cache_key_fn=lambda _, p: f"evaluate-{p['run_id'] or p['model_url']}-{p['dataset']}", persist_result=True, **RETRY)
def evaluate_task(model_url: str, dataset: str, out_dir: str, run_id: str | None) -> dict[str, Any]:
    """Test-split metrics and CAM localization; written to ``out_dir`` and logged to the model's MLflow run."""
    from cxr.evaluate import evaluate_model

    result = evaluate_model(model_url, dataset, split="test", out_dir=out_dir)
    if run_id:
        from mlflow import MlflowClient

        from cxr.tracking import tracking_uri

        client = MlflowClient(tracking_uri())
        for name in ("evaluation.json", "curves.png"):
            local = storage.join(out_dir, name)
            if not storage.is_remote(local):
                client.log_artifact(run_id, local, "test")
        client.log_metric(run_id, "test_mean_auroc", result["mean_auroc"] or 0.0)
    return result


@task(name="register-and-gate", cache_key_fn=lambda _, p: f"register-{p['name']}-{p['run_id']}", persist_result=True, **RETRY)
def register_task(run_id: str, model_uri: str, name: str, margin: float, max_drop: float) -> dict[str, Any]:
    """Register the model as ``challenger``; promote it to ``champion`` if the gate passes (once per run)."""
    from cxr.registry import register_and_gate

    version, decision = register_and_gate(run_id, model_uri, name, margin, max_drop)
    return {"name": name, "version": version, "promoted": decision.promoted, "reasons": decision.reasons}


@task(name="retrain-summary", cache_policy=NO_CACHE)
def summary_artifact(summary: dict[str, Any], evaluation: dict[str, Any]) -> str:
    """A markdown summary of the retrain: versions, the decision, and per-finding test metrics."""
    lines = [
        f"# Retrain: {summary['registered_model']} version {summary['model_version']}",
        "",
        f"- dataset version `{summary['dataset_digest']}` ({'new' if summary['dataset_created'] else 'unchanged'})",
        f"- manifest `{summary['manifest_digest']}` ({summary['strategy']})",
        f"- MLflow run `{summary['run_id']}`; val mean AUROC {summary['val_mean_auroc']}",
        f"- gate: {'promoted to champion' if summary['promoted'] else 'stays challenger'}: {'; '.join(summary['gate_reasons'])}",
        f"- test mean AUROC {evaluation['mean_auroc']}",
        "",
        "| finding | positives | AUROC | 95 % CI | AUPRC | CAM T(IoBB)>0.1 | random |",
        "|---|---|---|---|---|---|---|",
    ]
    for finding, m in evaluation["findings"].items():
        loc, rnd = evaluation["localization"].get(finding, {}), evaluation["localization_random"].get(finding, {})
        ci = "-" if not m["auroc_ci95"] else f"{m['auroc_ci95'][0]:.2f}-{m['auroc_ci95'][1]:.2f}"
        auroc = "-" if m["auroc"] is None else f"{m['auroc']:.3f}"
        auprc = "-" if m["auprc"] is None else f"{m['auprc']:.3f}"
        lines.append(f"| {finding} | {m['n_pos']} | {auroc} | {ci} | {auprc} | {loc.get('T0.1', '-')} | {rnd.get('T0.1', '-')} |")
    text = "\n".join(lines) + "\n"
    create_markdown_artifact(text, key="retrain-summary", description="Retrain flow summary")
    return text
