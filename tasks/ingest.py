"""Prefect tasks around :mod:`cxr.data.ingest`: retries and artifacts, nothing else."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from cxr.data.cluster import dask_client
from cxr.data.ingest import DecodeSummary, IngestSummary, publish, run_parts
from cxr.data.plan import IngestOptions, IngestPlan, plan_ingest
from cxr.reports import accounting_table
from tasks.policy import RETRY


@task(name="plan-ingest", cache_policy=NO_CACHE, **RETRY)
def plan_ingest_task(source: str, out: str, options: IngestOptions) -> IngestPlan:
    """Read the archive's tables, list its images, settle what needs no pixels, cut the rest into parts."""
    return plan_ingest(source, out, options)


@task(name="decode-parts", cache_policy=NO_CACHE, **RETRY)
def decode_parts_task(plan: IngestPlan, dask_address: str | None, workers: int | None) -> DecodeSummary:
    """Read every .tar.gz not yet read and decode every unfinished part on Dask; finished work survives a failed
    try, so a retry resumes."""
    if plan.existing or not (plan.parts or plan.archives):
        return DecodeSummary.nothing_to_do(plan)
    with dask_client(dask_address, workers, announce=print) as client:
        return run_parts(plan, client)


@task(name="publish-version", cache_policy=NO_CACHE, **RETRY)
def publish_task(plan: IngestPlan) -> IngestSummary:
    """Write the version folder, then LATEST."""
    return publish(plan)


@task(name="ingest-summary-artifact", cache_policy=NO_CACHE)
def ingest_summary_artifact(summary: IngestSummary) -> None:
    """Publish the accounting as a table artifact: accepted, quarantined by reason, splits."""
    table = accounting_table(summary)
    create_table_artifact(
        table.records(), key="ingest-summary", description=f"Ingest of dataset version {summary.digest}"
    )
