"""The imbalance study flow on a tiny synthetic dataset: every strategy, both sources, a report."""

from __future__ import annotations

import json

import numpy as np

from cxr.data.synth import SynthConfig, synthesize
from cxr.learn.metrics import expected_calibration_error, sensitivity_at_specificity


def test_the_study_flow_reports_every_strategy_on_both_sources(prefect_api, tmp_path):
    from mlflow import MlflowClient

    from flows.study import study

    synthesize(SynthConfig(out=str(tmp_path / "src"), n_images=300, size=64, seed=2))
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
    )
    report = (tmp_path / "work" / "study" / "imbalance-study.md").read_text()
    data = json.loads((tmp_path / "work" / "study" / "study.json").read_text())
    for strategy in ("none", "weighted", "resample"):
        assert f"| {strategy} |" in report
        for source in ("in_distribution", "shifted"):
            assert data["summary"][strategy][source]["mean_auroc"] is not None
    assert "Hernia (rare)" in report and "Pneumonia (rare)" in report and "## Verdict" in report
    assert any("shift" in line for line in result.verdict) and list(result.verdict) == data["verdict"]
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


def test_calibration_error_and_sensitivity_at_specificity():
    y = np.array([0] * 90 + [1] * 10)
    assert expected_calibration_error(y, y.astype(float)) == 0.0
    assert expected_calibration_error(y, np.full(100, 0.1)) < 1e-12  # says 10 %, and 10 % are positive
    assert abs(expected_calibration_error(y, np.full(100, 0.6)) - 0.5) < 1e-12
    p = np.concatenate([np.linspace(0, 0.5, 90), np.linspace(0.4, 1.0, 10)])
    assert sensitivity_at_specificity(y, p, 0.9) == 0.9  # the one positive below the 90 % threshold is missed
