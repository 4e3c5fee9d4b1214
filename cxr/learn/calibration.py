"""How well a model's probabilities are calibrated: a reliability diagram's bins and the calibration error.

Probabilities are cut into :data:`BINS` equal-width bins over [0, 1]. For each bin the diagram shows the
mean predicted probability against the share of its images that are positive; a calibrated model lies on
the diagonal. The expected calibration error (ECE) is the mean gap between the two, each bin weighted by
its share of the images. Rows whose label is missing (NaN) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr.learn.metrics import known

BINS = 10


@dataclass(frozen=True)
class ReliabilityBin:
    lo: float
    hi: float
    n: int
    mean_predicted: float | None  # None: no image fell in the bin
    observed: float | None  # the share of the bin's images that are positive


@dataclass(frozen=True)
class Calibration:
    """One finding's reliability diagram and its expected calibration error (None: no labelled row)."""

    n: int
    bins: tuple[ReliabilityBin, ...]
    ece: float | None


def reliability(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> Calibration:
    y, p = known(y, p)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    predicted = np.bincount(which, weights=p, minlength=bins)
    positive = np.bincount(which, weights=y, minlength=bins)
    out, gap = [], 0.0
    for b in range(bins):
        n = int(counts[b])
        mean_p = float(predicted[b] / n) if n else None
        observed = float(positive[b] / n) if n else None
        if n:
            gap += n * abs(mean_p - observed)  # type: ignore[operator]
        out.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), n, mean_p, observed))
    return Calibration(len(y), tuple(out), float(gap / len(y)) if len(y) else None)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> float:
    """Mean |predicted - observed| over equal-width probability bins, weighted by the bins' sizes (0 when
    no row is labelled)."""
    ece = reliability(y, p, bins).ece
    return 0.0 if ece is None else ece
