"""The whole chain as one Prefect flow: ingest (incremental) -> stats -> manifest -> train (torchrun) ->
evaluate + localize -> register -> gate -> model card. Every setting is a typed parameter; the flow only calls tasks.

    python -c "from flows.retrain import retrain; retrain(source='s3://archive/nih', workdir='s3://cxr')"
    # or as a deployment: prefect.yaml (a cron schedule), `cxr deploy`

Defaults fit a laptop CPU (the small model at 64 px); a deployment's defaults are in flows/deploy.py.
A run trains into ``<workdir>/runs/<run name>/<flow run id>``: the run name (the manifest digest and every
setting that decides the model, :func:`cxr.learn.launch.run_name`) is the train task's cache key, and each
flow run has a folder of its own under it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any

from prefect import flow

from cxr import storage
from cxr.data.manifest import ManifestConfig
from cxr.data.plan import IngestOptions
from cxr.data.splits import TEST_SHARE, VAL_SHARE
from cxr.learn.config import TrainConfig
from cxr.learn.gate_rule import GATE_LEVEL, GATE_MARGIN, GATE_MAX_DROP, GateRule
from cxr.learn.launch import in_runs_folder
from cxr.reports import RetrainSummary
from tasks.ingest import decode_parts_task, ingest_summary_artifact, plan_ingest_task, publish_task
from tasks.stats import manifest_task, stats_task
from tasks.train import evaluate_task, register_task, report_task, summary_artifact, train_task


@dataclass(frozen=True)
class RetrainSettings:
    """What the flow's parameters set, built and checked before any work (each config refuses bad values)."""

    ingest: IngestOptions
    manifest: ManifestConfig
    train: TrainConfig  # its manifest folder is set once the dataset's digest is known
    gate: GateRule

    @classmethod
    def of(cls, parameters: dict[str, Any]) -> RetrainSettings:
        p = parameters
        if p["nproc"] < 1 or (p["workers"] is not None and p["workers"] < 1):
            raise ValueError(f"nproc and workers must be >= 1, got {p['nproc']} and {p['workers']}")
        return cls(
            ingest=IngestOptions(sizes=tuple(p["sizes"]), test_share=p["test_share"], val_share=p["val_share"]),
            manifest=ManifestConfig(p["strategy"], p["target"], seed=p["seed"]),
            train=TrainConfig(
                manifest="",
                model=p["model"],
                epochs=p["epochs"],
                batch_size=None if p["global_batch_size"] else p["batch_size"],
                global_batch_size=p["global_batch_size"],
                warmup_epochs=p["warmup_epochs"],
                image_size=p["image_size"],
                weights=p["weights"],
                freeze_epochs=p["freeze_epochs"],
                init_from=p["init_from"],
                seed=p["seed"],
                experiment=p["experiment"],
            ),
            gate=GateRule(p["gate_margin"], p["gate_max_drop"], p["gate_level"], seed=p["seed"]),
        )


def check_parameters(**parameters: Any) -> RetrainSettings:
    """The settings :func:`retrain` would build from these parameters (its defaults for the rest): a
    ValueError naming the bad one, before any work."""
    bound = inspect.signature(retrain.fn).bind(**parameters)
    bound.apply_defaults()
    return RetrainSettings.of(bound.arguments)


@flow(name="retrain", log_prints=True)
def retrain(
    source: str,
    workdir: str,
    sizes: list[int] = [64],  # noqa: B006 - Prefect parameters are JSON; never mutated
    strategy: str = "weighted",
    target: str | None = None,
    model: str = "small",
    epochs: int = 5,
    batch_size: int | None = 32,
    global_batch_size: int | None = None,
    warmup_epochs: float = 0.0,
    image_size: int | None = None,
    weights: str | None = None,
    freeze_epochs: int = 0,
    init_from: str | None = None,
    nproc: int = 1,
    seed: int = 0,
    registered_model: str = "cxr-classifier",
    gate_margin: float = GATE_MARGIN,
    gate_max_drop: float = GATE_MAX_DROP,
    gate_level: float = GATE_LEVEL,
    experiment: str = "cxr-retrain",
    dask_address: str | None = None,
    workers: int | None = None,
    test_share: float = TEST_SHARE,
    val_share: float = VAL_SHARE,
) -> RetrainSummary:
    """Retrain on whatever the archive holds now; a rerun with nothing new reuses every finished step."""
    settings = RetrainSettings.of(locals())
    plan = plan_ingest_task(source, storage.join(workdir, "datasets"), settings.ingest)
    decoded = decode_parts_task(plan, dask_address, workers)
    ingested = publish_task(plan)
    ingest_summary_artifact(ingested)
    stats_task(ingested.path, dask_address)
    manifest_dir = storage.join(workdir, "manifests", f"{ingested.digest}-{strategy}-{target or 'all'}-{seed}")
    manifest = manifest_task(ingested.path, manifest_dir, settings.manifest)
    config = replace(settings.train, manifest=manifest_dir)
    config = in_runs_folder(config, storage.join(workdir, "runs"), manifest.digest, nproc)
    trained = train_task(config, nproc, manifest.digest)
    run_id = trained.tracked.run_id if trained.tracked else None
    evaluation = evaluate_task(trained.model_url, ingested.path, storage.join(trained.output_dir, "evaluation"), run_id)
    model_uri = trained.tracked.model_uri if trained.tracked else None
    registration = register_task(run_id, model_uri, registered_model, ingested.path, settings.gate)
    card = report_task(trained.model_url, ingested.path, storage.join(trained.output_dir, "model_card"), run_id)
    summary = RetrainSummary(ingested, decoded, manifest, trained, evaluation, registration, card)
    summary_artifact(summary)
    return summary
