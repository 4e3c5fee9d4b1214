"""What a model card says, computed from one split's predictions: per finding, per subgroup, calibration and
localization. Pure computation on arrays already in hand (inference is done by :mod:`cxr.card.write`), so its
cost is what ``bench/report.py`` measures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cxr.card.provenance import Provenance
from cxr.findings import FINDINGS
from cxr.learn.calibration import Calibration, reliability
from cxr.learn.evaluate import LocalizedSplit, other_version_warning
from cxr.learn.localize import IOBB_THRESHOLDS, LocalizationScore
from cxr.learn.metrics import FindingMetrics, evaluate_predictions
from cxr.learn.subgroups import MIN_CASES, Subgroup, false_no_finding_rate, subgroup_metrics


@dataclass(frozen=True)
class FindingRow:
    finding: str
    metrics: FindingMetrics  # AUROC and AUPRC with patient intervals; sensitivity, specificity at the threshold
    calibration: Calibration


@dataclass(frozen=True)
class GalleryItem:
    """One heatmap overlay: a true (NIH-style) box beside the box the model's map gives, scored by IoBB."""

    image_id: str
    finding: str
    iobb: float
    hits: Mapping[float, bool]  # per T: IoBB > T
    file: str  # the overlay PNG, relative to the card's folder


@dataclass(frozen=True)
class Localization:
    scores: Mapping[str, LocalizationScore]
    random: Mapping[str, LocalizationScore]  # the same procedure on random heatmaps: the floor to beat
    thresholds: tuple[float, ...]
    gallery: tuple[GalleryItem, ...]


@dataclass(frozen=True)
class ModelCard:
    """``card.json``: everything the page shows, as data."""

    model: str
    dataset: str  # the digest of the version scored
    split: str
    generated: str  # when (UTC, ISO 8601)
    code_version: str  # of the code that made the card
    n_images: int
    n_patients: int
    thresholds_from: str  # where the thresholds come from (the model's, chosen on validation)
    mean_auroc: float | None
    findings: tuple[FindingRow, ...]
    with_finding: int  # images with at least one positive label
    false_no_finding: float | None  # the share of those the model calls healthy
    subgroups: tuple[Subgroup, ...]
    min_cases: int  # positives (and negatives) a subgroup cell needs before it is read
    localization: Localization | None  # None: the split has no boxes
    provenance: Provenance
    n_boot: int
    warnings: tuple[str, ...] = ()  # for people, at the top of the page (e.g. a version the model trained on)


@dataclass(frozen=True)
class SplitPredictions:
    """A split's rows as the card needs them: probabilities, labels (NaN: missing), and who each image is of."""

    patients: np.ndarray
    labels: np.ndarray  # [n, 14]
    probs: np.ndarray  # [n, 14]
    groups: Mapping[str, np.ndarray]  # sex, age band, view: one value per row (cxr.learn.subgroups.groups_of)


def build_card(
    model: str,
    dataset: str,
    split: str,
    predictions: SplitPredictions,
    thresholds: Sequence[float],
    thresholds_from: str,
    located: LocalizedSplit | None,
    overlay_files: Mapping[int, str],
    provenance: Provenance,
    generated: str,
    code_version: str,
    n_boot: int = 200,
    seed: int = 0,
) -> ModelCard:
    """The card's numbers. ``located``: the split's true boxes with the model's (None: the split has none);
    ``overlay_files``: the overlay drawn for a box (its index in ``located.boxes``), by file name."""
    labels, probs, patients = predictions.labels, predictions.probs, predictions.patients
    metrics = evaluate_predictions(labels, probs, thresholds, n_boot=n_boot, seed=seed, groups=patients)
    rows = tuple(
        FindingRow(f, metrics.findings[f], reliability(labels[:, i], probs[:, i])) for i, f in enumerate(FINDINGS)
    )
    with_finding, rate = false_no_finding_rate(labels, probs, thresholds)
    groups = subgroup_metrics(labels, probs, thresholds, patients, predictions.groups, n_boot, seed)
    return ModelCard(
        model=model,
        dataset=dataset,
        split=split,
        generated=generated,
        code_version=code_version,
        n_images=len(labels),
        n_patients=len(np.unique(patients)),
        thresholds_from=thresholds_from,
        mean_auroc=metrics.mean_auroc,
        findings=rows,
        with_finding=with_finding,
        false_no_finding=rate,
        subgroups=tuple(groups),
        min_cases=MIN_CASES,
        localization=None if located is None or not located.boxes else card_localization(located, overlay_files),
        provenance=provenance,
        n_boot=n_boot,
        warnings=tuple(w for w in (other_version_warning(dataset, provenance.trained_on, split),) if w),
    )


def card_localization(located: LocalizedSplit, overlay_files: Mapping[int, str]) -> Localization:
    """T(IoBB) accuracy per finding beside the random floor, and a gallery item for each overlay drawn."""
    gallery = []
    for index, file in sorted(overlay_files.items()):
        box = located.boxes[index]
        gallery.append(GalleryItem(box.image_id, box.finding, box.iobb, box.hits(IOBB_THRESHOLDS), file))
    return Localization(located.scores, located.random, IOBB_THRESHOLDS, tuple(gallery))
