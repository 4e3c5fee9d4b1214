"""Intervals that resample patients, and the gate's paired test, on simulated scores with a known truth."""

from __future__ import annotations

import numpy as np
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr.findings import FINDINGS
from cxr.learn.bootstrap import cluster_index, percentile_interval, resample_weights, weighted_auprc, weighted_auroc
from cxr.learn.compare import GateRule, compare, decide
from cxr.learn.metrics import bootstrap_auroc, evaluate_predictions


def test_weighted_auroc_is_scikit_learns_auroc_with_sample_weights_ties_included():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 1)  # many ties
    weights = rng.integers(0, 4, (5, 300)).astype(float)
    ours = weighted_auroc(y, p, weights)
    theirs = [roc_auc_score(y, p, sample_weight=w) for w in weights]
    assert np.allclose(ours, theirs, atol=1e-12)
    assert np.isnan(weighted_auroc(np.zeros(4), np.arange(4.0), np.ones((1, 4))))[0]


def test_weighted_auprc_is_scikit_learns_average_precision_with_sample_weights_ties_and_missing_labels():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300).astype(float)
    p = np.round(rng.random(300), 1)  # many ties
    weights = rng.integers(0, 4, (5, 300)).astype(float)
    ours = weighted_auprc(y, p, weights)
    theirs = [average_precision_score(y, p, sample_weight=w) for w in weights]
    assert np.allclose(ours, theirs, atol=1e-12)
    y[::7] = np.nan  # missing labels weigh nothing: the same as leaving those rows out
    kept = ~np.isnan(y)
    ours = weighted_auprc(y, p, weights)
    theirs = [average_precision_score(y[kept], p[kept], sample_weight=w[kept]) for w in weights]
    assert np.allclose(ours, theirs, atol=1e-12)
    assert np.isnan(weighted_auprc(np.zeros(4), np.arange(4.0), np.ones((1, 4))))[0]


def test_a_resample_draws_whole_patients():
    patients = np.array([7, 7, 7, 3, 3, 9])
    clusters = cluster_index(patients, 6)
    for block in resample_weights(clusters, 50, np.random.default_rng(1), chunk=20):
        assert block.shape[1] == 6 and np.all(block[:, [0, 3, 5]].sum(axis=1) == 3)  # 3 patients drawn each time
        assert np.all(block[:, 0] == block[:, 1]) and np.all(block[:, 1] == block[:, 2])  # a patient's images
        assert np.all(block[:, 3] == block[:, 4])  # go together


def clustered_scores(rng: np.random.Generator, n_patients: int, per_patient: int, effect: float = 1.0):
    """Patients whose images share their label and a strong patient effect on the score (ICC ~0.9)."""
    patient_label = rng.random(n_patients) < 0.3
    patient_effect = rng.normal(0, 1, n_patients)
    patients = np.repeat(np.arange(n_patients), per_patient)
    y = patient_label[patients].astype(int)
    p = effect * y + patient_effect[patients] + rng.normal(0, 0.3, len(patients))
    truth = norm.cdf(effect / np.sqrt(2 * (1 + 0.3**2)))  # P(score of a positive image > a negative one's)
    return y, p, patients, truth


def test_the_patient_interval_is_wider_than_the_image_one_and_covers_the_truth_near_the_nominal_rate():
    rng = np.random.default_rng(42)
    covered = {"patients": 0, "images": 0}
    widths = {"patients": [], "images": []}
    repeats = 150
    for _ in range(repeats):
        y, p, patients, truth = clustered_scores(rng, n_patients=60, per_patient=8)
        for name, groups in (("patients", patients), ("images", None)):
            lo, hi = bootstrap_auroc(y, p, 300, rng, groups=groups)
            covered[name] += lo <= truth <= hi
            widths[name].append(hi - lo)
    coverage = {k: v / repeats for k, v in covered.items()}
    assert 0.88 <= coverage["patients"] <= 0.99, coverage
    assert coverage["images"] < 0.75, coverage  # far too narrow: images of one patient are not independent
    assert np.mean(widths["patients"]) > 2 * np.mean(widths["images"])


def test_evaluate_predictions_reports_the_patient_interval():
    rng = np.random.default_rng(3)
    y, p, patients, _ = clustered_scores(rng, 60, 8)
    labels = np.tile(y[:, None], (1, len(FINDINGS))).astype(float)
    probs = np.tile(p[:, None], (1, len(FINDINGS)))
    by_patient = evaluate_predictions(labels, probs, [0.5] * 14, n_boot=300, groups=patients).findings["Mass"]
    by_image = evaluate_predictions(labels, probs, [0.5] * 14, n_boot=300).findings["Mass"]
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(by_patient.auroc_ci95) > 2 * width(by_image.auroc_ci95)
    assert by_patient.auroc_ci95[0] <= by_patient.auroc <= by_patient.auroc_ci95[1]
    assert width(by_patient.auprc_ci95) > 1.5 * width(by_image.auprc_ci95)  # AUPRC on the same patient resamples
    assert by_patient.auprc_ci95[0] <= by_patient.auprc <= by_patient.auprc_ci95[1]


def two_models(rng: np.random.Generator, n_patients: int, per_patient: int, strength: tuple[float, float]):
    """Labels for 14 findings (a rare one: Hernia) and two models' scores on the same images."""
    patients = np.repeat(np.arange(n_patients), per_patient)
    prevalence = np.full(len(FINDINGS), 0.15)
    prevalence[FINDINGS.index("Hernia")] = 0.02
    patient_labels = rng.random((n_patients, len(FINDINGS))) < prevalence
    labels = patient_labels[patients].astype(float)
    difficulty = rng.normal(0, 0.7, (n_patients, len(FINDINGS)))[patients]  # both models see the same images
    models = []
    for s in strength:
        logits = s * labels + difficulty + rng.normal(0, 1.0, labels.shape)
        models.append(1 / (1 + np.exp(-logits)))
    return labels, models[0], models[1], patients


def test_the_gate_claims_no_difference_between_two_equal_models_in_most_repeats():
    claims = []
    for seed in range(10):
        labels, challenger, champion, patients = two_models(np.random.default_rng(seed), 150, 4, (1.5, 1.5))
        rule = GateRule(n_boot=300, seed=seed)
        comparison = compare(labels, challenger, champion, patients, rule)
        verdict = decide(comparison, rule)
        regressions = [f for f, d in comparison.findings.items() if d.regression]
        claims.append(verdict.promoted or bool(regressions))
    assert sum(claims) <= 2, claims  # at level 0.95 about 5 % of such pairs would be called different


def test_a_clearly_better_model_is_promoted_and_a_clearly_worse_one_is_not():
    rng = np.random.default_rng(7)
    labels, strong, weak, patients = two_models(rng, 150, 4, (3.0, 1.0))
    rule = GateRule(n_boot=300)
    better = compare(labels, strong, weak, patients, rule)
    assert decide(better, rule).promoted and better.mean_gain_lower > 0.05
    worse = compare(labels, weak, strong, patients, rule)
    verdict = decide(worse, rule)
    assert not verdict.promoted and any("regresses" in r for r in verdict.reasons)


def test_a_drop_inside_the_noise_does_not_block_and_a_finding_with_few_positive_patients_is_not_compared():
    rng = np.random.default_rng(11)
    labels, challenger, champion, patients = two_models(rng, 150, 4, (2.0, 2.0))
    mass = FINDINGS.index("Mass")
    challenger[:, mass] = np.clip(challenger[:, mass] + rng.normal(0, 0.03, len(labels)), 0, 1)  # a little worse
    rule = GateRule(n_boot=300)
    comparison = compare(labels, challenger, champion, patients, rule)
    d = comparison.findings["Mass"]
    # a point drop beyond max_drop (the old rule blocked on that), but not significantly beyond it
    assert d.compared and d.gain < -rule.max_drop and not d.regression and d.upper > -rule.max_drop
    hernia = comparison.findings["Hernia"]  # 2 % prevalence: a handful of positive patients
    assert hernia.n_pos_patients < rule.min_patients and not hernia.compared and hernia.upper is None
    assert "not compared, fewer than 10 positive patients: Hernia" in decide(comparison, rule).reasons[-1]


def test_percentile_interval_ignores_undefined_resamples():
    assert percentile_interval(np.array([np.nan, 0.5, 0.7])) == (0.505, 0.695)
    assert percentile_interval(np.array([np.nan])) is None
