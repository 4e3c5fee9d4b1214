"""The imbalance study flow on a tiny synthetic dataset: every strategy, both sources, a report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr.data.finding_map import finding_map
from cxr.data.manifest import read_manifest
from cxr.data.synth import SynthConfig, synthesize
from cxr.findings import FINDINGS
from cxr.learn.calibration import expected_calibration_error
from cxr.learn.checkpoint import ModelBundle
from cxr.learn.metrics import auroc_intervals, sensitivity_at_specificity
from cxr.learn.result import TrainResult
from cxr.study import SIGNAL_STRENGTH, ValThresholds, split_metrics

STRATEGIES = ("none", "weighted", "resample")


def test_the_cross_source_study_flow_reports_every_strategy_on_both_sources(prefect_api, tmp_path):
    from mlflow import MlflowClient

    from flows.study import study

    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=300, size=64, seed=2, strength=SIGNAL_STRENGTH))
    result = study(
        source=str(tmp_path / "src"),
        workdir=str(tmp_path / "work"),
        sizes=[32],
        shifted_images=120,
        shifted_size=64,
        seeds=[0, 1],
        epochs=1,
        n_boot=20,
        workers=1,
        cross_source=True,
    )
    report = (tmp_path / "work" / "study" / "imbalance-study.md").read_text()
    data = json.loads((tmp_path / "work" / "study" / "study.json").read_text())
    for strategy in STRATEGIES:
        assert f"| {strategy} |" in report
        for source in ("in_distribution", "shifted"):
            assert data["summary"][strategy][source]["mean_auroc"] is not None
    assert "Hernia (rare)" in report and "Pneumonia (rare)" in report and "## Verdict" in report
    # the other source is CheXpert-format: scored over the 7 findings it labels, in-source vs. other-source per seed
    cross = data["cross_source"]
    assert set(cross["shared_findings"]) <= set(finding_map("chexpert").labelled) and cross["shared_findings"]
    assert "## Cross-source: does a balanced model generalise worse to another source?" in report
    for strategy in STRATEGIES:
        mine = [r for r in cross["runs"] if r["strategy"] == strategy]
        assert {r["seed"] for r in mine} == {0, 1} and all(r["drop"] is not None for r in mine)
        for r in mine:
            assert r["drop"] == pytest.approx(r["in_source"] - r["other_source"])
            assert f"| {strategy} | {r['seed']} | {r['in_source']:.3f} | {r['other_source']:.3f} |" in report
        drop = cross["strategies"][strategy]["drop"][0]
        assert drop == pytest.approx(np.mean([r["drop"] for r in mine]))
    assert any(line.startswith("Across sources, over the ") for line in data["verdict"])
    for f in FINDINGS:  # a finding the other source does not label is not scored there
        scored = data["results"][0]["shifted"]["findings"][f]
        assert (scored["n"] == 0) == (f not in finding_map("chexpert").labelled)
        assert scored["n"] > 0 or scored["auroc"] is None
    assert any("other source" in line for line in result.verdict) and list(result.verdict) == data["verdict"]
    assert len(data["results"]) == 6 and {r["seed"] for r in data["results"]} == {0, 1}
    assert data["summary"]["resample"]["max_repeat"] > 1 == data["summary"]["none"]["max_repeat"]
    client = MlflowClient()
    children = client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    assert len(children) == 6
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert {"report/imbalance-study.md", "report/auroc_by_strategy.png", "report/rare_findings.png"} <= artifacts

    # one step budget: resampling draws more training images per pass, yet every run took the same steps
    study_dir = tmp_path / "work" / "study"
    draws = {s: read_manifest(str(study_dir / "manifests" / f"{s}-0")).info.splits["train"].draws for s in STRATEGIES}
    assert draws["resample"] > draws["none"] == draws["weighted"]
    taken = {
        (r["strategy"], r["seed"]): TrainResult.read(str(study_dir / "runs" / f"{r['strategy']}-{r['seed']}")).steps
        for r in data["results"]
    }
    assert set(taken.values()) == {data["budget"]["steps"]}, taken
    assert data["budget"]["steps"] == -(-draws["none"] // 32)  # one pass over the unbalanced rows, batch 32
    # the thresholds applied to both sources are the ones chosen on val, kept in each model's bundle
    for r in data["results"]:
        assert r["thresholds"]["youden"] == list(ModelBundle.read(r["model_url"]).thresholds)


def test_calibration_error_and_sensitivity_at_specificity():
    y = np.array([0] * 90 + [1] * 10)
    assert expected_calibration_error(y, y.astype(float)) == 0.0
    assert expected_calibration_error(y, np.full(100, 0.1)) < 1e-12  # says 10 %, and 10 % are positive
    assert abs(expected_calibration_error(y, np.full(100, 0.6)) - 0.5) < 1e-12
    p = np.concatenate([np.linspace(0, 0.5, 90), np.linspace(0.4, 1.0, 10)])
    assert sensitivity_at_specificity(y, p, 0.9) == 0.9  # the one positive below the 90 % threshold is missed


def test_the_shifted_source_is_scored_at_the_thresholds_chosen_on_val_with_patient_intervals():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(100), 4)  # 4 images per patient, who share their label and a score offset
    labels = np.repeat(rng.random((100, 14)) < 0.3, 4, axis=0).astype(float)
    val = labels * 0.3 + np.repeat(rng.normal(0.3, 0.1, (100, 14)), 4, axis=0) + rng.normal(0, 0.05, labels.shape)
    thresholds = ValThresholds(
        youden=tuple([0.45] * 14),
        specificity=tuple(float(np.quantile(val[labels[:, i] == 0, i], 0.9)) for i in range(14)),
    )
    shifted = val + 0.1  # another scanner: every score drifts up
    m = split_metrics(labels, shifted, patients, thresholds, n_boot=200, seed=0)
    mass = m["findings"]["Mass"]
    negatives, positives = shifted[labels[:, 4] == 0, 4], shifted[labels[:, 4] == 1, 4]
    assert mass["spec_spec90"] == np.mean(negatives < thresholds.specificity[4]) < 0.7  # not re-picked at 0.90
    assert mass["sens_spec90"] == np.mean(positives >= thresholds.specificity[4])
    assert mass["spec_youden"] == np.mean(negatives < 0.45)
    assert m["mean_spec_spec90"] < 0.7
    by_image = auroc_intervals(labels, shifted, None, 200, 0)[4]
    assert mass["auroc_ci95"][1] - mass["auroc_ci95"][0] > 1.5 * (by_image[1] - by_image[0])  # patients resampled
