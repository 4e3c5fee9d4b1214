"""Prefect tasks for the imbalance study: a shifted synthetic source, and the study itself."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cxr.study import SHIFTED_ACQUISITION, SHIFTED_PREVALENCE_POWER, StudyConfig, run_study
from cxr.synth import SynthConfig, synthesize


@task(name="synth-shifted-source", cache_policy=NO_CACHE, retries=1)
def shifted_source_task(out: str, n_images: int, size: int, seed: int) -> str:
    """A second synthetic source: other contrast, noise, scale and position, another prevalence profile."""
    synthesize(SynthConfig(out=out, n_images=n_images, size=size, seed=seed + 1000, acquisition=SHIFTED_ACQUISITION,
                           prevalence_power=SHIFTED_PREVALENCE_POWER))  # fmt: skip
    return out


@task(name="imbalance-study", cache_policy=NO_CACHE)
def study_task(dataset: str, shifted: str, out: str, config: dict[str, Any]) -> dict[str, Any]:
    """Train and score every strategy and seed; publish the report as a markdown artifact."""
    result = run_study(dataset, shifted, out, StudyConfig(**config))
    create_markdown_artifact(result["markdown"], key="imbalance-study", description="Imbalance study report")
    return {"parent_run_id": result["parent_run_id"], "verdict": result["verdict"], "summary": result["summary"]}
