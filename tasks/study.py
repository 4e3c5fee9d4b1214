"""Prefect tasks for the imbalance study: a shifted synthetic source, and the study itself."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cxr.data.synth import SynthConfig, synthesize
from cxr.study import SHIFTED_ACQUISITION, SHIFTED_PREVALENCE_POWER, StudyConfig, StudyReport, run_study
from tasks.policy import RETRY


@task(name="synth-shifted-source", cache_policy=NO_CACHE, **RETRY)
def shifted_source_task(
    out: str, n_images: int, size: int, seed: int, strength: float, source_format: str = "nih"
) -> str:
    """A second synthetic source: other contrast, noise, scale and position, another prevalence profile; the
    findings' signs as strong as in the training source (``strength``); in ``source_format``'s layout."""
    config = SynthConfig(
        out=out,
        n_images=n_images,
        size=size,
        seed=seed + 1000,
        strength=strength,
        acquisition=SHIFTED_ACQUISITION,
        prevalence_power=SHIFTED_PREVALENCE_POWER,
        format=source_format,
    )
    synthesize(config, overwrite=True)  # the flow's own folder; the same settings again reuse it
    return out


@task(name="imbalance-study", cache_policy=NO_CACHE)
def study_task(dataset: str, shifted: str, out: str, config: StudyConfig) -> StudyReport:
    """Train and score every strategy and seed; publish the report as a markdown artifact."""
    report = run_study(dataset, shifted, out, config)
    create_markdown_artifact(report.markdown, key="imbalance-study", description="Imbalance study report")
    return report
