"""Flows under Prefect's real (temporary) API; task logic through ``.fn()``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cxr.data.ingest import ingest as ingest_library
from cxr.data.manifest import ManifestConfig, ManifestInfo
from cxr.data.plan import IngestOptions
from cxr.data.stats import LabelStats
from cxr.data.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flowsrc") / "nih"
    synthesize(SynthConfig(out=str(out), n_images=40, size=64, seed=2))
    return out


def test_plan_task_fn_plans_without_prefect(tiny_source, tmp_path):
    from tasks.ingest import plan_ingest_task

    plan = plan_ingest_task.fn(str(tiny_source), str(tmp_path / "out"), IngestOptions(sizes=(32,)))
    assert plan.counts["inputs"] == 40 and sum(len(p.images) for p in plan.parts) == 40 and plan.existing is None


def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> list:
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    return asyncio.run(read())


def test_ingest_flow_makes_the_same_version_as_the_library_and_publishes_a_summary(prefect_api, tiny_source, tmp_path):
    from flows.ingest import ingest

    digest = ingest(source=str(tiny_source), out=str(tmp_path / "flow"), sizes=[32], workers=1)
    expected = ingest_library(str(tiny_source), str(tmp_path / "lib"), IngestOptions(sizes=(32,))).digest
    assert digest == expected
    assert (tmp_path / "flow" / "LATEST").read_text().strip() == digest
    [artifact] = [a for a in _artifacts("ingest-summary") if digest in str(a.data)]  # other flows publish theirs too
    assert artifact.type == "table" and "accepted" in str(artifact.data)


def test_stats_and_manifest_tasks_write_their_files_and_publish_tables(prefect_api, tiny_source, tmp_path):
    from prefect import flow

    from tasks.stats import manifest_task, stats_task

    ingest_library(str(tiny_source), str(tmp_path / "ds"), IngestOptions(sizes=(32,)))

    @flow
    def stats_then_manifest() -> tuple[LabelStats, ManifestInfo]:
        stats = stats_task(str(tmp_path / "ds"))
        info = manifest_task(str(tmp_path / "ds"), str(tmp_path / "m"), ManifestConfig("resample", target="Effusion"))
        return stats, info

    stats, info = stats_then_manifest()
    digest = (tmp_path / "ds" / "LATEST").read_text().strip()
    assert (tmp_path / "ds" / digest / "stats.json").exists() and (
        tmp_path / "ds" / digest / "charts" / "prevalence.png"
    ).exists()
    assert (tmp_path / "m" / "manifest.json").exists() and info.train_prevalence["after"]["Effusion"] == 0.5
    assert stats.splits["train"].n == info.splits["train"].rows
    [label_stats] = [a for a in _artifacts("label-stats") if digest in (a.description or "")]
    [manifest] = [a for a in _artifacts("manifest") if info.digest in (a.description or "")]
    assert "Hernia" in str(label_stats.data) and manifest.type == "table"
