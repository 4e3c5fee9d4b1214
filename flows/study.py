"""The imbalance study as a flow: ingest the source and a shifted synthetic source, then train and
score every strategy with every seed (``cxr study``)."""

from __future__ import annotations

from prefect import flow

from cxr import storage
from cxr.data.plan import IngestOptions
from cxr.study import SIGNAL_STRENGTH, StudyConfig, StudyReport
from tasks.ingest import decode_parts_task, plan_ingest_task, publish_task
from tasks.study import shifted_source_task, study_task


@flow(name="imbalance-study", log_prints=True)
def study(
    source: str,
    workdir: str,
    sizes: list[int] = [64],  # noqa: B006 - Prefect parameters are JSON; never mutated
    shifted_images: int = 600,
    shifted_size: int = 128,
    strategies: list[str] = ["none", "weighted", "resample"],  # noqa: B006
    seeds: list[int] = [0, 1, 2],  # noqa: B006
    model: str = "small",
    epochs: int = 6,
    strength: float = SIGNAL_STRENGTH,
    floor: float = 0.05,
    n_boot: int = 200,
    workers: int | None = None,
    device: str = "auto",
    cross_source: bool = False,
) -> StudyReport:
    """The report lands in ``<workdir>/study/imbalance-study.md`` and in MLflow under one parent run.

    ``epochs``: passes over the unbalanced manifest, which fix every strategy's step budget; ``strength``: the
    sign strength of the shifted synthetic source (make a synthetic ``source`` with the same); ``cross_source``:
    the shifted source is in the CheXpert format, and the report compares in-source and other-source AUROC.
    """
    options = IngestOptions(sizes=tuple(sizes))
    plan = plan_ingest_task(source, storage.join(workdir, "datasets"), options)
    decode_parts_task(plan, None, workers)
    version = publish_task(plan)
    shifted_src = shifted_source_task(
        storage.join(workdir, "other-source" if cross_source else "shifted-source"),
        shifted_images,
        shifted_size,
        0,
        strength,
        "chexpert" if cross_source else "nih",
    )
    shifted_out = storage.join(workdir, "other-datasets" if cross_source else "shifted-datasets")
    shifted_plan = plan_ingest_task(shifted_src, shifted_out, options)
    decode_parts_task(shifted_plan, None, workers)
    shifted = publish_task(shifted_plan)
    config = StudyConfig(
        tuple(strategies),
        tuple(seeds),
        model=model,
        epochs=epochs,
        floor=floor,
        n_boot=n_boot,
        device=device,
        signal_strength=strength,
        cross_source=cross_source,
    )
    return study_task(version.path, shifted.path, storage.join(workdir, "study"), config)
