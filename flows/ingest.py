"""The ingest flow: a source (NIH, CheXpert or DICOM layout) becomes a dataset version.

python -c "from flows.ingest import ingest; ingest(source=..., out=...)"
"""

from __future__ import annotations

from prefect import flow

from cxr.data.label_policy import LabelPolicy
from cxr.data.plan import IngestOptions
from cxr.data.splits import TEST_SHARE, VAL_SHARE
from tasks.ingest import decode_parts_task, ingest_summary_artifact, plan_ingest_task, publish_task


@flow(name="ingest", log_prints=True)
def ingest(
    source: str,
    out: str,
    sizes: list[int] = [256],  # noqa: B006 - Prefect parameters are JSON; the list is never mutated
    dask_address: str | None = None,
    workers: int | None = None,
    test_share: float = TEST_SHARE,
    val_share: float = VAL_SHARE,
    source_format: str | None = None,
    uncertain: str = "ignore",
    blank: str = "ignore",
) -> str:
    """Ingest ``source`` (folder or s3://) into a new version under ``out``; returns its digest.

    ``source_format``: nih, chexpert or dicom (None: recognised from its files); ``uncertain`` and ``blank``:
    the label policy of the CheXpert family (:mod:`cxr.data.label_policy`)."""
    options = IngestOptions(
        sizes=tuple(sizes),
        test_share=test_share,
        val_share=val_share,
        source_format=source_format,
        label_policy=LabelPolicy(uncertain, blank),  # type: ignore[arg-type]
    )
    plan = plan_ingest_task(source, out, options)
    decode_parts_task(plan, dask_address, workers)
    summary = publish_task(plan)
    ingest_summary_artifact(summary)
    return summary.digest
