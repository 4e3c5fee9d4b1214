"""Prefect tasks around :mod:`cxr.ingest`: retries and artifacts, nothing else."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from cxr.cluster import dask_client
from cxr.ingest import IngestOptions, IngestPlan, plan_ingest, publish, run_parts

# Storage hiccups are retried inside cxr.storage; these retries cover longer outages.
RETRY = {"retries": 2, "retry_delay_seconds": [5, 30]}


@task(name="plan-ingest", cache_policy=NO_CACHE, **RETRY)
def plan_ingest_task(source: str, out: str, sizes: list[int], test_share: float, val_share: float) -> IngestPlan:
    """Read the archive's tables, list its images, settle what needs no pixels, cut the rest into parts."""
    return plan_ingest(source, out, IngestOptions(sizes=tuple(sizes), test_share=test_share, val_share=val_share))


@task(name="decode-parts", cache_policy=NO_CACHE, **RETRY)
def decode_parts_task(plan: IngestPlan, dask_address: str | None, workers: int | None) -> dict[str, int]:
    """Decode every unfinished part on Dask; finished parts survive a failed try, so a retry resumes."""
    if plan.existing or not plan.parts:
        images = sum(len(p.images) for p in plan.parts)
        return {"parts": len(plan.parts), "images": images, "skipped": len(plan.parts), "skipped_images": images}
    with dask_client(dask_address, workers, announce=print) as client:
        results = run_parts(plan, client)
    return {
        "parts": len(results),
        "images": sum(int(r["images"]) for r in results),
        "skipped": sum(int(r["skipped"]) for r in results),
        "skipped_images": sum(int(r["images"]) for r in results if r["skipped"]),
    }


@task(name="publish-version", cache_policy=NO_CACHE, **RETRY)
def publish_task(plan: IngestPlan) -> dict[str, Any]:
    """Write the version folder, then LATEST; returns the digest, path, splits and accounting."""
    result = publish(plan)
    return {
        "digest": result.version.digest,
        "path": result.version.path,
        "created": result.created,
        "splits": result.version.info["splits"],
        "accounting": result.accounting,
    }


@task(name="ingest-summary-artifact", cache_policy=NO_CACHE)
def ingest_summary_artifact(result: dict[str, Any]) -> None:
    """Publish the accounting as a table artifact: accepted, quarantined by reason, splits."""
    acc = result["accounting"]
    rows = [
        {"item": "version", "count": result["digest"]},
        {"item": "inputs (label rows + files no row names)", "count": acc["inputs"]},
        {"item": "accepted", "count": acc["accepted"]},
        {"item": "quarantined", "count": acc["quarantined"]},
        *({"item": f"quarantined: {reason}", "count": n} for reason, n in acc["quarantined_by_reason"].items()),
        {"item": "boxes kept", "count": acc["boxes"]["accepted"]},
        *({"item": f"split: {name}", "count": n} for name, n in result["splits"].items()),
    ]
    create_table_artifact(rows, key="ingest-summary", description=f"Ingest of dataset version {result['digest']}")
