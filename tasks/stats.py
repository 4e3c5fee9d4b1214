"""Prefect tasks around :mod:`cxr.data.stats` and :mod:`cxr.data.manifest`: retries and artifacts, nothing else."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE

from cxr.data.cluster import dask_client
from cxr.data.manifest import ManifestConfig, ManifestInfo, build_manifest, write_manifest
from cxr.data.stats import LabelStats, dataset_stats, write_stats
from cxr.data.version import open_version
from cxr.reports import manifest_table, stats_tables
from tasks.policy import RETRY


@task(name="label-stats", cache_policy=INPUTS, persist_result=True, **RETRY)
def stats_task(dataset: str, dask_address: str | None = None) -> LabelStats:
    """Compute and write stats.json and the prevalence charts; publish them as a table.

    Cached on its inputs: give it a version folder (immutable), not a root whose LATEST moves.
    """
    version = open_version(dataset)
    if dask_address:
        with dask_client(dask_address) as client:
            stats = dataset_stats(version, client)
    else:
        stats = dataset_stats(version)
    write_stats(version, stats)
    records = [record for name, table in stats_tables(stats).items() for record in table.records(split=name)]
    create_table_artifact(records, key="label-stats", description=f"Label statistics of dataset {version.digest}")
    return stats


@task(name="manifest", cache_policy=NO_CACHE, **RETRY)
def manifest_task(dataset: str, out: str, config: ManifestConfig) -> ManifestInfo:
    """Build and write a manifest (deterministic and fast: rebuilt byte-identical, not cached); publish a table."""
    built = build_manifest(open_version(dataset), config)
    write_manifest(built, out)
    info = built.info
    description = f"Manifest {info.digest} ({info.strategy}); most reused image x{info.reuse.max_repeat}"
    create_table_artifact(manifest_table(info).records(), key="manifest", description=description)
    return info
