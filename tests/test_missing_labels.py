"""Missing labels (null in the metadata, NaN in cxr/learn): read as NaN, carried to the loss, which ignores them,
and left out of every per-finding metric, the bootstrap and the gate, as if those rows were not there for that
finding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from cxr.charts import roc_pr_chart
from cxr.data.integrity import hash_file
from cxr.findings import FINDING_COLUMNS, FINDINGS
from cxr.learn.bootstrap import cluster_index, percentile_interval, resample_weights, weighted_auroc
from cxr.learn.calibration import expected_calibration_error
from cxr.learn.compare import GateRule, compare, decide
from cxr.learn.loader import Prefetcher
from cxr.learn.loss import WeightedBCE
from cxr.learn.metrics import (
    FindingMetrics,
    auprc,
    auroc,
    auroc_intervals,
    bootstrap_auroc,
    evaluate_predictions,
    mean_defined,
    per_finding_auroc,
    sens_spec,
    sensitivity_at_specificity,
    specificity_threshold,
    youden_threshold,
)
from cxr.learn.run import init_head_bias
from cxr.learn.shards import ShardStore, split_rows

N_PATIENTS, PER_PATIENT = 80, 4
SCATTERED, NOBODY, BY_PATIENT, ONE_CLASS = 0, 1, 2, 3  # findings: how their labels go missing
N_BOOT, SEED = 200, 7


def scored(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels with missing entries, scores that carry signal, and patients (4 images each). Finding 0 misses
    scattered rows but every patient keeps its first one, finding 1 is labelled nowhere, finding 2 misses whole
    patients (a source that does not label it), finding 3's labelled rows are all negative; the rest miss nothing."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(N_PATIENTS), PER_PATIENT)
    n = len(patients)
    labels = (rng.random((n, len(FINDINGS))) < 0.3).astype(np.float32)
    probs = np.clip(0.35 * labels + 0.65 * rng.random(labels.shape), 0, 1).astype(np.float32)
    scattered = rng.random(n) < 0.4
    scattered[::PER_PATIENT] = False
    labels[scattered, SCATTERED] = np.nan
    labels[:, NOBODY] = np.nan
    labels[patients % 3 == 0, BY_PATIENT] = np.nan
    labels[:, ONE_CLASS] = np.where(rng.random(n) < 0.5, np.nan, 0.0)
    return labels, probs, patients


def labelled_rows(labels: np.ndarray, i: int) -> np.ndarray:
    return ~np.isnan(labels[:, i])


def test_each_findings_metrics_are_those_of_its_labelled_rows_alone():
    labels, probs, _ = scored()
    thresholds = [youden_threshold(labels[:, i], probs[:, i]) for i in range(len(FINDINGS))]
    metrics = evaluate_predictions(labels, probs, thresholds, n_boot=0)
    for i, f in enumerate(FINDINGS):
        rows = labelled_rows(labels, i)
        y, p = labels[rows, i], probs[rows, i]
        assert thresholds[i] == youden_threshold(y, p)
        assert specificity_threshold(labels[:, i], probs[:, i], 0.9) == specificity_threshold(y, p, 0.9)
        assert expected_calibration_error(labels[:, i], probs[:, i]) == expected_calibration_error(y, p)
        assert sensitivity_at_specificity(labels[:, i], probs[:, i]) == sensitivity_at_specificity(y, p)
        sens, spec = sens_spec(y, p, thresholds[i])
        alone = FindingMetrics(int(y.sum()), len(y), auroc(y, p), None, auprc(y, p), thresholds[i], sens, spec)
        assert metrics.findings[f] == dataclasses.replace(alone, n_missing=int((~rows).sum()))
    scattered, rows = metrics.findings[FINDINGS[SCATTERED]], labelled_rows(labels, SCATTERED)
    assert 0 < scattered.n_missing < len(labels) and scattered.n == rows.sum()  # and against scikit-learn:
    assert scattered.auroc == pytest.approx(roc_auc_score(labels[rows, SCATTERED], probs[rows, SCATTERED]))
    assert scattered.auprc == pytest.approx(average_precision_score(labels[rows, SCATTERED], probs[rows, SCATTERED]))


def test_a_finding_labelled_nowhere_or_in_one_class_has_no_auroc_and_stays_out_of_the_mean():
    labels, probs, patients = scored()
    metrics = evaluate_predictions(labels, probs, [0.5] * len(FINDINGS), n_boot=N_BOOT, seed=SEED, groups=patients)
    nobody, one_class = metrics.findings[FINDINGS[NOBODY]], metrics.findings[FINDINGS[ONE_CLASS]]
    assert nobody == FindingMetrics(0, 0, None, None, None, 0.5, None, None, n_missing=len(labels))
    assert one_class.auroc is None and one_class.auroc_ci95 is None and one_class.n_pos == 0 and one_class.n > 0
    assert youden_threshold(labels[:, NOBODY], probs[:, NOBODY]) == 0.5
    assert specificity_threshold(labels[:, NOBODY], probs[:, NOBODY], 0.9) == 0.5
    assert sensitivity_at_specificity(labels[:, NOBODY], probs[:, NOBODY]) is None
    defined = [m.auroc for m in metrics.findings.values() if m.auroc is not None]
    assert len(defined) == len(FINDINGS) - 2 and metrics.mean_auroc == pytest.approx(np.mean(defined))
    assert mean_defined(list(per_finding_auroc(labels, probs).values())) == metrics.mean_auroc


def test_the_interval_is_the_labelled_rows_own_bootstrap_when_every_patient_keeps_a_labelled_row():
    labels, probs, patients = scored()
    rows = labelled_rows(labels, SCATTERED)
    assert len(np.unique(patients[rows])) == N_PATIENTS  # so both draw the same patients, by the same seed
    y, p = labels[rows, SCATTERED], probs[rows, SCATTERED]
    alone = bootstrap_auroc(y, p, N_BOOT, np.random.default_rng(SEED), patients[rows])
    ours = bootstrap_auroc(labels[:, SCATTERED], probs[:, SCATTERED], N_BOOT, np.random.default_rng(SEED), patients)
    assert alone is not None and ours == alone
    assert auroc_intervals(labels, probs, patients, N_BOOT, SEED)[SCATTERED] == alone
    metrics = evaluate_predictions(labels, probs, [0.5] * len(FINDINGS), n_boot=N_BOOT, seed=SEED, groups=patients)
    assert metrics.findings[FINDINGS[SCATTERED]].auroc_ci95 == alone


def test_patients_a_source_leaves_unlabelled_are_drawn_but_weigh_nothing():
    """Not the labelled rows' own bootstrap (fewer patients, other draws): every patient is drawn and the rows
    without the label get no weight, so the number of labelled patients varies between resamples."""
    labels, probs, patients = scored()
    rows = labelled_rows(labels, BY_PATIENT)
    y, p = labels[rows, BY_PATIENT], probs[rows, BY_PATIENT]
    draws = resample_weights(cluster_index(patients, len(patients)), N_BOOT, np.random.default_rng(SEED))
    restricted = np.concatenate([weighted_auroc(y, p, w[:, rows]) for w in draws])
    expected = percentile_interval(restricted)
    assert auroc_intervals(labels, probs, patients, N_BOOT, SEED)[BY_PATIENT] == expected
    ours = bootstrap_auroc(labels[:, BY_PATIENT], probs[:, BY_PATIENT], N_BOOT, np.random.default_rng(SEED), patients)
    assert ours == expected and expected != bootstrap_auroc(y, p, N_BOOT, np.random.default_rng(SEED), patients[rows])


RULE = GateRule(n_boot=N_BOOT, min_patients=5)


def two_models(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    noise = np.random.default_rng(1).random(probs.shape).astype(np.float32)
    return probs, np.clip(0.6 * probs + 0.4 * noise, 0, 1)


def test_the_gate_ignores_what_the_models_say_where_a_label_is_missing():
    labels, probs, patients = scored()
    challenger, champion = two_models(labels, probs)
    before = compare(labels, challenger, champion, patients, RULE)
    missing = np.isnan(labels)  # there the challenger now says 1 and the champion 0: were they negatives, the
    after = compare(labels, np.where(missing, 1, challenger), np.where(missing, 0, champion), patients, RULE)  # gap
    assert after == before and decide(after, RULE) == decide(before, RULE)
    scattered = before.findings[FINDINGS[SCATTERED]]
    assert scattered.compared and scattered.n_pos == np.nansum(labels[:, SCATTERED])
    assert not before.findings[FINDINGS[NOBODY]].compared and before.findings[FINDINGS[NOBODY]].n_pos == 0


def test_images_with_no_label_at_all_are_as_if_absent_from_the_gate():
    labels, probs, patients = scored()
    challenger, champion = two_models(labels, probs)
    unlabelled = np.zeros(len(labels), bool)
    unlabelled[1::PER_PATIENT] = True  # each patient keeps other images: the draws stay the same
    labels[unlabelled] = np.nan
    kept = ~unlabelled
    full = compare(labels, challenger, champion, patients, RULE)
    alone = compare(labels[kept], challenger[kept], champion[kept], patients[kept], RULE)
    assert full.n_images == len(labels) and alone.n_images == kept.sum()
    assert dataclasses.replace(full, n_images=alone.n_images) == alone


def test_the_curves_skip_missing_rows_and_leave_out_a_finding_labelled_nowhere():
    labels, probs, _ = scored()
    unlabelled = labels[:, NOBODY].copy()
    labels[5::7] = np.nan  # rows that no finding labels: as if absent
    kept = ~np.isnan(labels).all(axis=1)
    assert not kept.all()
    without = labels[kept].copy()
    without[:, NOBODY] = 0.0  # one class: not drawn either
    assert np.isnan(unlabelled).all()
    assert roc_pr_chart(labels, probs, "val") == roc_pr_chart(without, probs[kept], "val")


def metadata(findings: dict[str, list[bool | None]]) -> pa.Table:
    n = len(next(iter(findings.values())))
    columns = {
        "image_id": [f"{k:03d}.png" for k in range(n)],
        "patient_id": list(range(n)),
        "split": ["train"] * n,
        "shard": ["s0"] * n,
        "shard_index": list(range(n)),
    }
    return pa.table({**columns, **{c: pa.array(findings[c], pa.bool_()) for c in FINDING_COLUMNS}})


def test_null_labels_are_read_as_nan_and_nih_labels_as_before():
    nih = metadata({c: [k % (j + 2) == 0 for k in range(6)] for j, c in enumerate(FINDING_COLUMNS)})
    before = np.column_stack([nih[c].to_numpy(zero_copy_only=False) for c in FINDING_COLUMNS]).astype(np.float32)
    rows = split_rows(nih, "train", expand_repeats=False)
    assert rows.labels.dtype == np.float32 and np.array_equal(rows.labels, before)
    partial = metadata({c: [True, None, False, None, False, True] for c in FINDING_COLUMNS})
    labels = split_rows(partial, None, expand_repeats=False).labels
    assert np.array_equal(labels[:, 0], [1, np.nan, 0, np.nan, 0, 1], equal_nan=True)


def test_missing_labels_reach_the_loss_through_the_batches_and_train_nothing(tmp_path):
    table = metadata({c: [True, None, False, None] if j % 2 else [False] * 4 for j, c in enumerate(FINDING_COLUMNS)})
    rows = split_rows(table, "train", expand_repeats=False)
    shard = tmp_path / "shards" / "8" / "s0.npy"
    shard.parent.mkdir(parents=True)
    np.save(shard, np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8))
    store = ShardStore(str(tmp_path), "digest", 8, hashes={"s0": hash_file(str(shard))})
    with Prefetcher(store, rows, [(np.arange(4), np.arange(4))], torch.device("cpu")) as batches:
        (batch,) = list(batches)
    assert torch.equal(torch.isnan(batch.targets), torch.from_numpy(np.isnan(rows.labels)))
    logits = torch.zeros(4, len(FINDINGS), requires_grad=True)
    loss = WeightedBCE()(logits, batch.targets)
    loss.backward()
    labelled_entries = int((~torch.isnan(batch.targets)).sum())
    assert loss.item() == pytest.approx(labelled_entries * np.log(2) / 4)  # each labelled logit 0 costs log 2
    assert torch.all(logits.grad[torch.isnan(batch.targets)] == 0)


def test_the_head_bias_starts_at_the_share_of_positives_among_the_labelled_draws():
    labels = np.full((6, len(FINDINGS)), np.nan, np.float32)
    labels[:4, 0] = [1, 0, 0, 0]  # one in four labelled draws
    labels[:, 2] = [1, 1, 0, 0, 0, 0]  # no missing draw
    model = nn.Module()
    model.classifier = nn.Linear(2, len(FINDINGS))
    init_head_bias(model, labels, None)  # type: ignore[arg-type]
    bias = model.classifier.bias.detach().numpy()
    assert bias[0] == pytest.approx(np.log(0.25 / 0.75)) and bias[2] == pytest.approx(np.log(2 / 4))
    assert bias[1] == 0  # no draw labels it: even odds
