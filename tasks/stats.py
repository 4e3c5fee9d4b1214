"""Prefect tasks around :mod:`cxr.stats` and :mod:`cxr.manifest`: retries and artifacts, nothing else."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE

from cxr.dataset import open_version
from cxr.manifest import ManifestConfig, build_manifest, write_manifest
from cxr.stats import dataset_stats, write_stats

RETRY = {"retries": 2, "retry_delay_seconds": [5, 30]}


@task(name="label-stats", cache_policy=INPUTS, persist_result=True, **RETRY)
def stats_task(dataset: str, dask_address: str | None = None) -> dict[str, Any]:
    """Compute and write stats.json and the prevalence charts; publish the training split as a table.

    Cached on its inputs: give it a version folder (immutable), not a root whose LATEST moves.
    """
    version = open_version(dataset)
    if dask_address:
        from cxr.cluster import dask_client

        with dask_client(dask_address) as client:
            stats = dataset_stats(version, client)
    else:
        stats = dataset_stats(version)
    write_stats(version, stats)
    rows = [
        {"split": name, "finding": finding, **values}
        for name, split in stats["splits"].items()
        for finding, values in split["findings"].items()
    ]
    create_table_artifact(rows, key="label-stats", description=f"Label statistics of dataset {version.digest}")
    return stats


@task(name="manifest", cache_policy=NO_CACHE, **RETRY)  # deterministic and fast: rebuilt, byte-identical
def manifest_task(
    dataset: str, out: str, strategy: str, target: str | None = None, mode: str = "over", floor: float = 0.05, seed: int = 0
) -> dict[str, Any]:
    """Build and write a manifest; publish its before/after prevalence and reuse as a table."""
    built = build_manifest(open_version(dataset), ManifestConfig(strategy, target, mode, floor, seed))
    write_manifest(built, out)
    info = built.info
    rows = [
        {"finding": f, "train share before": info["train_prevalence"]["before"][f],
         "after": info["train_prevalence"]["after"][f], "distinct positive images": info["reuse"]["distinct_positive_images"][f]}
        for f in info["findings"]
    ]  # fmt: skip
    create_table_artifact(rows, key="manifest", description=f"Manifest {info['digest']} ({strategy}); most reused image x{info['reuse']['max_repeat']}")
    return info
