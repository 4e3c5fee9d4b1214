"""The whole chain as one Prefect flow: ingest (incremental) -> stats -> manifest -> train (torchrun) ->
evaluate + localize -> register -> gate. Every setting is a typed parameter; the flow only calls tasks.

    python -c "from flows.retrain import retrain; retrain(source='s3://archive/nih', workdir='s3://cxr')"
    # or as a deployment: prefect.yaml (a cron schedule), `cxr deploy`
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from cxr import storage
from tasks.ingest import decode_parts_task, ingest_summary_artifact, plan_ingest_task, publish_task
from tasks.stats import manifest_task, stats_task
from tasks.train import evaluate_task, register_task, summary_artifact, train_task


@flow(name="retrain", log_prints=True)
def retrain(
    source: str,
    workdir: str,
    sizes: list[int] = [64],  # noqa: B006 - Prefect parameters are JSON; never mutated
    strategy: str = "weighted",
    target: str | None = None,
    model: str = "small",
    epochs: int = 5,
    batch_size: int = 32,
    image_size: int | None = None,
    nproc: int = 1,
    seed: int = 0,
    registered_model: str = "cxr-classifier",
    gate_margin: float = 0.0,
    gate_max_drop: float = 0.02,
    experiment: str = "cxr-retrain",
    dask_address: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Retrain on whatever the archive holds now; a rerun with nothing new reuses every finished step."""
    datasets = storage.join(workdir, "datasets")
    plan = plan_ingest_task(source, datasets, sizes, 0.2, 0.1)
    decoded = decode_parts_task(plan, dask_address, workers)
    ingested = publish_task(plan)
    ingest_summary_artifact(ingested)
    version = ingested["path"]
    stats_task(version, dask_address)
    manifest_dir = storage.join(workdir, "manifests", f"{ingested['digest']}-{strategy}-{target or 'all'}-{seed}")
    manifest = manifest_task(version, manifest_dir, strategy, target, seed=seed)
    run_dir = storage.join(workdir, "runs", f"{manifest['digest']}-{model}-{epochs}e-{seed}")
    trained = train_task(manifest_dir, run_dir, model, epochs, batch_size, image_size, nproc, experiment, seed)
    evaluation = evaluate_task(trained["model_url"], version, storage.join(run_dir, "evaluation"), trained["run_id"])
    decision = register_task(trained["run_id"], trained["mlflow_model_uri"], registered_model, gate_margin, gate_max_drop)
    summary = {
        "dataset_digest": ingested["digest"],
        "dataset_created": ingested["created"],
        "images_decoded": decoded["images"] - decoded["skipped_images"],
        "manifest_digest": manifest["digest"],
        "strategy": strategy,
        "run_id": trained["run_id"],
        "val_mean_auroc": trained["val_mean_auroc"],
        "test_mean_auroc": evaluation["mean_auroc"],
        "registered_model": registered_model,
        "model_version": decision["version"],
        "promoted": decision["promoted"],
        "gate_reasons": decision["reasons"],
        "model_url": trained["model_url"],
    }
    summary_artifact(summary, evaluation)
    return summary
